//! The HTTP session with one registry host: authentication (anonymous, basic, bearer tokens
//! per scope), bounded retries with backoff, and errors that say what the registry said.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use tokio::sync::OnceCell;

use crate::auth::{
    parse_challenge, Challenge, Credential, CredentialSource, TokenCache, TokenResponse,
};
use crate::error::{Error, Result};

/// How often and how patiently transient failures (connection errors, 429, 5xx) are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.base_delay.saturating_mul(1 << attempt.min(16));
        retry_after.unwrap_or(backoff).min(self.max_delay)
    }
}

/// The low-speed limit of a download attempt, as curl's `--speed-limit`/`--speed-time`: an
/// attempt that receives fewer than `bytes_per_sec` on average over `window` of waiting for
/// the network fails, and the download resumes on a new connection. The read timeout alone
/// lets a registry that sends a byte now and then hold a download forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpeedLimit {
    /// 0: no limit.
    pub bytes_per_sec: u64,
    pub window: Duration,
}

impl Default for SpeedLimit {
    /// 1 KiB/s over 30 s: far below any usable link (even 16 downloads sharing 128 kbit/s
    /// get 1 KiB/s each), so only a registry that has all but stopped trips it.
    fn default() -> Self {
        SpeedLimit {
            bytes_per_sec: 1024,
            window: Duration::from_secs(30),
        }
    }
}

impl SpeedLimit {
    /// `BYTES_PER_SEC/SECONDS`, or `off`.
    pub const ENV: &'static str = "ORAS_FS_SPEED_LIMIT";

    pub fn off() -> Self {
        SpeedLimit {
            bytes_per_sec: 0,
            window: Duration::ZERO,
        }
    }

    pub fn is_off(&self) -> bool {
        self.bytes_per_sec == 0 || self.window.is_zero()
    }

    /// The fewest bytes a full window must bring.
    pub fn min_bytes(&self) -> u64 {
        (self.bytes_per_sec as f64 * self.window.as_secs_f64()) as u64
    }

    /// Parses `BYTES_PER_SEC/SECONDS` (e.g. `1024/30`, seconds may be fractional) or `off`.
    pub fn parse(s: &str) -> Result<Self> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(SpeedLimit::off());
        }
        let bad = || {
            Error::Usage(format!(
                "{}={s:?}: expected BYTES_PER_SEC/SECONDS (e.g. 1024/30) or off",
                Self::ENV
            ))
        };
        let (rate, secs) = s.split_once('/').ok_or_else(bad)?;
        let bytes_per_sec = rate.trim().parse().map_err(|_| bad())?;
        let secs: f64 = secs.trim().parse().map_err(|_| bad())?;
        let window = Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
        Ok(SpeedLimit {
            bytes_per_sec,
            window,
        })
    }

    /// The limit `ORAS_FS_SPEED_LIMIT` sets, else the default.
    pub fn from_env() -> Result<Self> {
        match std::env::var(Self::ENV) {
            Ok(v) if !v.trim().is_empty() => Self::parse(&v),
            _ => Ok(SpeedLimit::default()),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Speak HTTP instead of HTTPS. The CLI sets it for `--plain-http` and for localhost.
    pub plain_http: bool,
    /// `plain_http` was chosen because the registry is on localhost, not by `--plain-http`:
    /// hints must not tell the user to drop a flag they never gave.
    pub plain_http_by_default: bool,
    /// Accept any TLS certificate.
    pub insecure: bool,
    /// Extra trusted CA certificates (PEM).
    pub ca_files: Vec<PathBuf>,
    pub credentials: CredentialSource,
    pub retry: RetryPolicy,
    /// Timeout for connecting, and for a stalled read of a response.
    pub timeout: Option<Duration>,
    /// When a download attempt is too slow to go on with.
    pub speed_limit: SpeedLimit,
    /// Headers sent with every request (`-H`): to the registry and to its token service, as
    /// oras sends them.
    pub headers: HeaderMap,
    /// A client certificate and its private key (PEM files), for registries that require
    /// mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Addresses to connect to instead of asking DNS (`--resolve`).
    pub resolve: Vec<ResolveOverride>,
    /// How referrers are listed and recorded (`--distribution-spec`).
    pub referrers: ReferrersCapability,
    /// Upload blobs in `PATCH` chunks of this many bytes (`--chunk-size`) instead of one
    /// request each; without it, chunks are used only once the registry answers 413.
    pub chunk_size: Option<u64>,
    /// Speak HTTP/1.1 only, never HTTP/2 (`--http1.1`, `ORAS_FS_HTTP1=1`): for comparisons,
    /// and for registries or proxies whose HTTP/2 is broken.
    pub http1_only: bool,
}

/// How a registry lists referrers: `Auto` asks the referrers API and falls back to the tag
/// schema (`sha256-<hex>` index) on 404, keeping that index when a pushed manifest's subject
/// was not processed; `--distribution-spec` forces one of the two, as in oras.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReferrersCapability {
    #[default]
    Auto,
    /// `v1.1-referrers-api`: the API only; no tag-schema index is written.
    Api,
    /// `v1.1-referrers-tag`: the tag schema only; the API is never asked.
    Tag,
}

impl std::str::FromStr for ReferrersCapability {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "v1.1-referrers-api" => Ok(ReferrersCapability::Api),
            "v1.1-referrers-tag" => Ok(ReferrersCapability::Tag),
            _ => Err(Error::Usage(format!(
                "--distribution-spec {s:?}: expected v1.1-referrers-api or v1.1-referrers-tag"
            ))),
        }
    }
}

/// `--resolve host:port:address[:address_port]`, as curl and oras take it: connections to
/// `host:port` go to `address` instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolveOverride {
    pub host: String,
    pub port: u16,
    pub address: std::net::IpAddr,
}

impl std::str::FromStr for ResolveOverride {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "--resolve {s:?}: {why} (expected host:port:address[:address_port])"
            ))
        };
        let parts: Vec<&str> = s.splitn(3, ':').collect();
        let [host, port, rest] = parts.as_slice() else {
            return Err(bad("too few parts"));
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
        // ADDRESS[:ADDRESS_PORT], an IPv6 address in brackets ([::1]:443) or bare (::1).
        let (address, address_port) = match rest.strip_prefix('[') {
            Some(r) => match r.split_once(']') {
                Some((a, "")) => (a, None),
                Some((a, p)) => (
                    a,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("text after ]"))?),
                ),
                None => return Err(bad("no ] after [")),
            },
            None if rest.parse::<std::net::IpAddr>().is_ok() => (*rest, None),
            None => match rest.rsplit_once(':') {
                Some((a, p)) => (a, Some(p)),
                None => (*rest, None),
            },
        };
        let address = address
            .parse()
            .map_err(|_| bad("the address is not an IP address"))?;
        if let Some(p) = address_port {
            let other: u16 = p
                .parse()
                .map_err(|_| bad("the address port is not a number"))?;
            // The HTTP client connects to the URL's port, so a different one cannot be kept.
            if other != port {
                return Err(bad("a different address port is not supported"));
            }
        }
        Ok(ResolveOverride {
            host: host.to_string(),
            port,
            address,
        })
    }
}

/// The HTTP client for `base`: TLS settings, timeouts, `-H` headers and `--resolve`.
/// `http1_only`: ALPN offers only HTTP/1.1; otherwise h2 first, then HTTP/1.1.
fn http_client(options: &ClientOptions, base: &Url, http1_only: bool) -> Result<reqwest::Client> {
    let tls = super::tls::client_config(
        options.insecure,
        &options.ca_files,
        options.client_cert.as_ref(),
        http1_only,
    )?;
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .user_agent(concat!("oras-fs/", env!("CARGO_PKG_VERSION")))
        // Keep enough idle connections for concurrent layer transfers (HTTP/1.1).
        .pool_max_idle_per_host(32)
        .tcp_nodelay(true);
    builder = if http1_only {
        builder.http1_only()
    } else {
        tune_http2(builder)
    };
    // reqwest's default redirect policy follows up to 10 hops and drops `Authorization`
    // (and cookies) when the origin changes: blob GETs that redirect to storage never
    // carry registry credentials there.
    if let Some(t) = options.timeout {
        builder = builder.connect_timeout(t).read_timeout(t);
    }
    if !options.headers.is_empty() {
        // After `user_agent`: a `-H User-Agent:` replaces ours.
        builder = builder.default_headers(options.headers.clone());
    }
    let port = base.port_or_known_default();
    for r in &options.resolve {
        // An override for this host at another port is not for this registry (the client
        // keys overrides by name only). Others may be the token service's host.
        if base.host_str() == Some(r.host.as_str()) && port != Some(r.port) {
            continue;
        }
        builder = builder.resolve(&r.host, std::net::SocketAddr::new(r.address, r.port));
    }
    builder
        .build()
        .map_err(|e| Error::Tls(format!("cannot set up the HTTP client: {e}")))
}

/// Transfers of at least this many bytes go on HTTP/1.1 connections (`Client::bulk`). Above
/// the mount's largest read-ahead request (8 MiB), so a mount's reads share the connection
/// it resolved the manifest on.
pub const BULK_MIN: u64 = 16 << 20;

/// Values of `Client::protocol`.
const UNKNOWN: u8 = 0;
const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

/// Transfers at once per `--concurrency` over HTTP/2. A transfer costs a stream there, not a
/// connection and its handshake, and pushing or pulling many small blobs is bound by round
/// trips: 16 × 4 = 64 at once is what curl's `--parallel-max 64` uses, well under the 100–250
/// streams servers allow a connection (more are queued, not refused).
const STREAMS_PER_TRANSFER: usize = 4;

/// HTTP/2 flow control for blob reads over one connection. hyper's defaults (2 MiB a stream,
/// 5 MiB the connection) cap a connection at 5 MiB per round trip: 100 MB/s at 50 ms, below
/// what a mount's 8 MiB read-ahead requests want. The windows are also what the registry may
/// send before we read, so they bound the memory a slow reader leaves buffered.
fn tune_http2(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    builder
        .http2_initial_stream_window_size(H2_STREAM_WINDOW)
        .http2_initial_connection_window_size(H2_CONNECTION_WINDOW)
}

const H2_STREAM_WINDOW: u32 = 8 << 20;
const H2_CONNECTION_WINDOW: u32 = 32 << 20;

/// HTTP/2 connections that carry upload bodies (the shared one included). Flow control runs
/// the other way for uploads: the registry's windows bound them, and Go's HTTP/2 server (so
/// Distribution and registries built on it) allows 1 MiB in flight per connection: at 50 ms
/// RTT, 20 MB/s however many streams run. 16 MiB in one PUT took 1.2–1.9 s over one HTTP/2
/// connection and 0.25 s over HTTP/1.1 here. Each connection brings its own window.
const UPLOAD_CONNECTIONS: usize = 4;

/// Parses `-H "Name: value"`.
pub fn parse_header(s: &str) -> Result<(reqwest::header::HeaderName, HeaderValue)> {
    // Only the name is echoed: the value may be a token.
    let named = s.split_once(':').map_or("", |(n, _)| n.trim());
    let bad = |why: String| {
        Error::Usage(format!(
            "invalid header {named:?} (-H): {why} (expected \"Name: value\")"
        ))
    };
    let (name, value) = s.split_once(':').ok_or_else(|| bad("no ':'".into()))?;
    let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|e| bad(e.to_string()))?;
    let value = HeaderValue::from_str(value.trim()).map_err(|e| bad(e.to_string()))?;
    Ok((name, value))
}

/// `-H` values as one header map. A name given twice gets its values joined with ", " (one
/// field, as HTTP allows), since the client's default headers keep one value per name.
pub fn header_map(items: &[String]) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for item in items {
        let (name, value) = parse_header(item)?;
        let value = match map.get(&name) {
            Some(old) => {
                let mut joined = old.as_bytes().to_vec();
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(value.as_bytes());
                HeaderValue::from_bytes(&joined).expect("joined valid header values")
            }
            None => value,
        };
        map.insert(name, value);
    }
    Ok(map)
}

/// What a request needs the token to allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Pull,
    Push,
    /// `DELETE` needs its own action on most registries.
    Delete,
}

/// A request that can be built again (for a retry or after authenticating).
pub struct Request<'a> {
    pub method: Method,
    pub url: Url,
    /// `repository:<name>:<actions>` scope, or `None` for registry-level calls.
    pub repository: Option<&'a str>,
    pub access: Access,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// Body bytes the request moves, either way, when known: `BULK_MIN` and more go on an
    /// HTTP/1.1 connection of their own.
    pub size: Option<u64>,
}

impl<'a> Request<'a> {
    pub fn new(method: Method, url: Url, repository: Option<&'a str>, access: Access) -> Self {
        Request {
            method,
            url,
            repository,
            access,
            headers: HeaderMap::new(),
            body: None,
            size: None,
        }
    }

    /// Says how many body bytes the request moves (a Range GET's length).
    pub fn size(mut self, bytes: u64) -> Self {
        self.size = Some(bytes);
        self
    }

    pub fn header(mut self, name: reqwest::header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }

    pub fn body(mut self, body: Bytes) -> Self {
        self.body = Some(body);
        self
    }

    fn scope(&self) -> Option<String> {
        let actions = match self.access {
            Access::Pull => "pull",
            Access::Push => "pull,push",
            Access::Delete => "delete",
        };
        self.repository.map(|r| format!("repository:{r}:{actions}"))
    }
}

/// One registry host. Cheap to share: repositories hold an `Arc` of it.
pub struct Client {
    host: String,
    base: Url,
    /// Offers HTTP/2 on TLS: every request shares one multiplexed connection.
    http: reqwest::Client,
    /// HTTP/1.1 only, for transfers of `BULK_MIN` bytes and more when `http` may speak
    /// HTTP/2: a stream of one HTTP/2 connection measured ~1.7× slower than an HTTP/1.1
    /// connection for a 512 MiB blob (Distribution's Go HTTP/2 server spends ~3× the CPU
    /// per byte), while the extra handshake is nothing next to such a transfer.
    bulk: Option<reqwest::Client>,
    /// What `http` speaks with the registry: `UNKNOWN` until its first answer.
    protocol: AtomicU8,
    /// More HTTP/2 connections for upload bodies besides `http`'s (see `UPLOAD_CONNECTIONS`),
    /// opened by `open_upload_connections`; empty when the registry does not speak HTTP/2.
    uploads: OnceCell<Vec<reqwest::Client>>,
    /// Round robin over `http` and `uploads`.
    next_upload: AtomicUsize,
    options: ClientOptions,
    credential: OnceCell<Option<Credential>>,
    tokens: TokenCache,
    /// The registry asked for Basic auth: send it on every request.
    basic: AtomicBool,
    /// The registry's bearer challenge, so later scopes get tokens before their first request.
    bearer: Mutex<Option<(String, Option<String>)>>,
    /// Serializes token requests, so concurrent transfers share one token.
    token_fetch: tokio::sync::Mutex<()>,
}

impl Client {
    pub fn new(host: &str, options: ClientOptions) -> Result<Arc<Client>> {
        let scheme = if options.plain_http { "http" } else { "https" };
        // `host` names the registry (credentials, messages); `docker.io` is served elsewhere.
        let endpoint = crate::reference::endpoint(host);
        let base = Url::parse(&format!("{scheme}://{endpoint}/")).map_err(|e| {
            Error::InvalidReference {
                reference: host.to_string(),
                reason: format!("not a registry host: {e}"),
            }
        })?;
        let http = http_client(&options, &base, options.http1_only)?;
        // Only a TLS registry can speak HTTP/2 (ALPN): then big transfers get HTTP/1.1
        // connections of their own.
        let bulk = if options.plain_http || options.http1_only {
            None
        } else {
            Some(http_client(&options, &base, true)?)
        };
        Ok(Arc::new(Client {
            host: host.to_string(),
            base,
            http,
            bulk,
            protocol: AtomicU8::new(UNKNOWN),
            uploads: OnceCell::new(),
            next_upload: AtomicUsize::new(0),
            options,
            credential: OnceCell::new(),
            tokens: TokenCache::default(),
            basic: AtomicBool::new(false),
            bearer: Mutex::new(None),
            token_fetch: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.options.retry
    }

    pub fn speed_limit(&self) -> SpeedLimit {
        self.options.speed_limit
    }

    pub fn referrers_capability(&self) -> ReferrersCapability {
        self.options.referrers
    }

    pub fn chunk_size(&self) -> Option<u64> {
        self.options.chunk_size
    }

    /// `https://host/v2/<path>`.
    pub fn url(&self, path: &str) -> Url {
        self.base
            .join(&format!("v2/{path}"))
            .expect("registry paths are valid URL paths")
    }

    /// Resolves an upload `Location`, refusing one on another origin or downgraded to HTTP:
    /// the upload would carry our credentials there.
    pub fn upload_url(&self, location: &str) -> Result<Url> {
        let url = self.base.join(location).map_err(|e| {
            Error::Protocol(format!(
                "upload location {:?} is not a URL: {e}",
                location.split('?').next().unwrap_or_default()
            ))
        })?;
        if url.origin() != self.base.origin() {
            return Err(Error::Protocol(format!(
                "upload location {} is on another origin than {}; refusing to send data there",
                redact(&url),
                self.base
            )));
        }
        Ok(url)
    }

    async fn credential(&self) -> Result<Option<Credential>> {
        self.credential
            .get_or_try_init(|| async {
                let source = self.options.credentials.clone();
                let host = self.host.clone();
                tokio::task::spawn_blocking(move || source.lookup(&host))
                    .await
                    .expect("credential lookup panicked")
            })
            .await
            .cloned()
    }

    /// Sends with retries for transient failures. The body, if any, is resent from memory.
    pub async fn send(&self, req: &Request<'_>) -> Result<Response> {
        let policy = &self.options.retry;
        let mut attempt = 0;
        loop {
            let last = attempt + 1 >= policy.attempts;
            match self.send_authenticated(req).await {
                Ok(resp) if !last && is_transient_status(resp.status()) => {
                    let wait = policy.delay(attempt, retry_after(&resp));
                    tracing::warn!(
                        "{} {} answered {}; retrying in {wait:?}",
                        req.method,
                        req.url.path(),
                        resp.status()
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(e) if !last && e.is_transient() => {
                    let wait = policy.delay(attempt, None);
                    tracing::warn!("{e}; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
            attempt += 1;
        }
    }

    /// Sends once, authenticating on a 401 and replaying the request once.
    async fn send_authenticated(&self, req: &Request<'_>) -> Result<Response> {
        let scope = req.scope();
        let auth = self.authorization(scope.as_deref(), false).await?;
        let resp = self.send_raw(req, auth.clone()).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        self.learn(challenge).await?;
        // Forget the token only if it is the one refused: a concurrent request may already
        // have fetched a fresh one.
        if let (Some(used), Some(s)) = (&auth, &scope) {
            if self
                .tokens
                .get(s)
                .is_some_and(|t| bearer_header(&t) == used)
            {
                self.tokens.forget(s);
            }
        }
        let auth = self.authorization(scope.as_deref(), true).await?;
        if auth.is_none() {
            return Err(self.unauthorized(" (credentials are required; none are configured)"));
        }
        let resp = self.send_raw(req, auth).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            if let Some(s) = &scope {
                self.tokens.forget(s);
            }
            if let (Some(repository), true) = (req.repository, insufficient_scope(&resp)) {
                return Err(self.insufficient_scope(repository, req.access).await);
            }
            return Err(self.unauthorized(""));
        }
        Ok(resp)
    }

    /// A fresh token was refused with `insufficient_scope`: the credentials are good but may
    /// not do this, and no retry will change that.
    async fn insufficient_scope(&self, repository: &str, access: Access) -> Error {
        let access = match access {
            Access::Pull => "pull",
            Access::Push => "push",
            Access::Delete => "delete",
        };
        let anonymous = matches!(self.credential().await, Ok(None));
        let (who, hint) = if anonymous {
            (
                "anonymous access lacks",
                format!(
                    "log in with credentials that may {access} there (`oras-fs login {}`)",
                    self.host
                ),
            )
        } else {
            (
                "the credentials lack",
                format!(
                    "use credentials that may {access} there (`oras-fs login {}`, or \
                     -u/--password-stdin)",
                    self.host
                ),
            )
        };
        Error::InsufficientScope {
            who,
            registry: self.host.clone(),
            repository: repository.to_string(),
            access,
            hint,
        }
    }

    /// Sends a request whose body cannot be replayed (a streamed upload). Call it after a
    /// request of the same scope succeeded, so the credentials are already known.
    pub async fn send_stream(
        &self,
        method: Method,
        url: Url,
        repository: &str,
        headers: HeaderMap,
        body: reqwest::Body,
    ) -> Result<Response> {
        let scope = format!("repository:{repository}:pull,push");
        let auth = self.authorization(Some(&scope), false).await?;
        let size = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let http = self.upload_http(size);
        let mut rb = http
            .request(method.clone(), url.clone())
            .headers(headers)
            .body(body);
        if let Some(a) = auth {
            rb = rb.header(AUTHORIZATION, a);
        }
        let resp = self.execute(rb, &method, &url).await?;
        self.learn_protocol(http, &resp);
        if resp.status() == StatusCode::UNAUTHORIZED {
            if insufficient_scope(&resp) {
                return Err(self.insufficient_scope(repository, Access::Push).await);
            }
            // A token that expired mid-upload: forget it so the caller's retry gets a new one.
            self.tokens.forget(&scope);
            return Err(self.unauthorized(" (during an upload; the token may have expired)"));
        }
        Ok(resp)
    }

    /// The client for a request moving `size` body bytes.
    fn http_for(&self, size: Option<u64>) -> &reqwest::Client {
        match (&self.bulk, size) {
            (Some(bulk), Some(n)) if n >= BULK_MIN => bulk,
            _ => &self.http,
        }
    }

    /// The client for an upload body of `size` bytes: over HTTP/2, the shared connection
    /// and the upload connections take turns.
    fn upload_http(&self, size: Option<u64>) -> &reqwest::Client {
        let http = self.http_for(size);
        match self.uploads.get() {
            Some(more) if !more.is_empty() && std::ptr::eq(http, &self.http) => {
                let turn = self.next_upload.fetch_add(1, Ordering::Relaxed) % (more.len() + 1);
                more.get(turn).unwrap_or(&self.http)
            }
            _ => http,
        }
    }

    async fn send_raw(&self, req: &Request<'_>, auth: Option<HeaderValue>) -> Result<Response> {
        let http = self.http_for(req.size);
        let mut rb: RequestBuilder = http
            .request(req.method.clone(), req.url.clone())
            .headers(req.headers.clone());
        if let Some(a) = auth {
            rb = rb.header(AUTHORIZATION, a);
        }
        if let Some(b) = &req.body {
            rb = rb.body(b.clone());
        }
        let resp = self.execute(rb, &req.method, &req.url).await?;
        self.learn_protocol(http, &resp);
        Ok(resp)
    }

    /// Notes which protocol `http` speaks, from an answer of the registry itself to a request
    /// that went on `http` (not on `bulk` or an upload connection, not redirected to storage).
    fn learn_protocol(&self, used: &reqwest::Client, resp: &Response) {
        if !std::ptr::eq(used, &self.http) || resp.url().origin() != self.base.origin() {
            return;
        }
        let p = if resp.version() == reqwest::Version::HTTP_2 {
            HTTP2
        } else {
            HTTP1
        };
        self.protocol.store(p, Ordering::Relaxed);
    }

    /// Whether requests to the registry share one HTTP/2 connection, as far as known.
    pub fn multiplexes(&self) -> bool {
        self.protocol.load(Ordering::Relaxed) == HTTP2
    }

    /// How many transfers to run at once for `--concurrency requested`: more over HTTP/2
    /// (see `STREAMS_PER_TRANSFER`). Before a burst, the connection must exist: requests
    /// started together while ALPN is still unknown would each open a connection of their
    /// own. So if nothing has been asked yet, one `GET /v2/` opens it (its status does not
    /// matter; a failure shows again on the real requests).
    pub async fn transfers_at_once(&self, requested: usize) -> usize {
        if self.bulk.is_none() {
            return requested;
        }
        if self.protocol.load(Ordering::Relaxed) == UNKNOWN {
            let url = self.url("");
            if let Ok(resp) = self.http.get(url).send().await {
                self.learn_protocol(&self.http, &resp);
            }
        }
        if self.multiplexes() {
            requested.saturating_mul(STREAMS_PER_TRANSFER)
        } else {
            requested
        }
    }

    /// Opens the upload connections (see `UPLOAD_CONNECTIONS`) once, each with a `GET /v2/`,
    /// keeping those that speak HTTP/2. Call it with `transfers_at_once` before uploads: the
    /// handshakes then overlap the first one's instead of delaying the first bodies. Nothing
    /// happens when the registry is known to speak HTTP/1.1 (its connections are many anyway);
    /// while that is unknown the handshakes are a bet on HTTP/2, which registries speak.
    pub async fn open_upload_connections(&self) {
        if self.bulk.is_none() || self.protocol.load(Ordering::Relaxed) == HTTP1 {
            return;
        }
        self.uploads
            .get_or_init(|| async {
                let url = self.url("");
                let open = (1..UPLOAD_CONNECTIONS).map(|_| async {
                    let http = http_client(&self.options, &self.base, false).ok()?;
                    let resp = http.get(url.clone()).send().await.ok()?;
                    // A failure here shows again, if it matters, on the real requests.
                    (resp.version() == reqwest::Version::HTTP_2).then_some(http)
                });
                futures_util::future::join_all(open)
                    .await
                    .into_iter()
                    .flatten()
                    .collect()
            })
            .await;
    }

    async fn execute(&self, rb: RequestBuilder, method: &Method, url: &Url) -> Result<Response> {
        let resp = rb.send().await.map_err(|e| self.connect_error(e))?;
        // Credentials never reach this trace: only the method, path and status.
        tracing::debug!(
            target: "oras_fs::http",
            "{method} {} -> {}{}",
            url.path(),
            resp.status(),
            if resp.url().origin() != url.origin() {
                format!(" (redirected to {})", resp.url().host_str().unwrap_or("?"))
            } else {
                String::new()
            }
        );
        Ok(resp)
    }

    pub(crate) fn connect_error(&self, mut source: reqwest::Error) -> Error {
        // reqwest's message names the URL: an upload's carries the registry's `_state` token.
        if let Some(url) = source.url_mut() {
            strip_url(url);
        }
        let hint = if source.is_connect() {
            if self.options.plain_http {
                "; is the registry running at this address?"
            } else {
                "; is the registry running, and does it speak HTTPS? (use --plain-http for HTTP)"
            }
        } else {
            ""
        };
        let mut text = source.to_string();
        let mut cause = std::error::Error::source(&source);
        while let Some(c) = cause {
            text = format!("{text}: {c}");
            cause = c.source();
        }
        tracing::debug!("{text}");
        if text.contains("alert: BadCertificate") || text.contains("alert: CertificateRequired") {
            // The server refused the handshake over our (missing) client certificate.
            let ours = if self.options.client_cert.is_some() {
                "refused the client certificate of --cert-file"
            } else {
                "wants a client certificate: give --cert-file FILE --key-file FILE"
            };
            return Error::Tls(format!("{} {ours} ({})", self.host, innermost(&source)));
        }
        if text.contains("certificate")
            || text.contains("InvalidCertificate")
            || text.contains("UnknownIssuer")
        {
            // Not transient: retrying will not change the certificate.
            return Error::Tls(format!(
                "cannot verify the certificate of {}: {}; trust its CA with --ca-file FILE, or \
                 skip verification with --insecure",
                self.host,
                innermost(&source)
            ));
        }
        // Over TLS 1.3 a server checks the client certificate after our side of the handshake
        // is done: its alert can reach us only as a closed connection (always so over HTTP/2,
        // whose connection task swallows it), so name that cause too.
        let closed = [
            "channel closed",
            "connection closed",
            "broken pipe",
            "stream closed",
        ];
        let hint = if !self.options.plain_http
            && self.options.client_cert.is_none()
            && closed.iter().any(|c| text.contains(c))
        {
            "; if the registry requires a client certificate, give --cert-file FILE --key-file FILE"
        } else {
            hint
        };
        if source.is_connect() || source.is_timeout() || source.is_request() {
            Error::Connect {
                registry: self.host.clone(),
                hint: format!("{hint} ({})", innermost(&source)),
                source,
            }
        } else {
            Error::Transfer {
                registry: self.host.clone(),
                source,
            }
        }
    }

    /// What to do when plain HTTP reached an HTTPS registry, by how plain HTTP was chosen.
    fn https_hint(&self) -> &'static str {
        if self.options.plain_http_by_default {
            " (the registry speaks HTTPS, and oras-fs speaks plain HTTP to localhost unless told \
             otherwise: trust its CA with --ca-file FILE, or skip verification with --insecure)"
        } else {
            " (the registry speaks HTTPS: drop --plain-http, and use --ca-file or --insecure for \
             a private CA)"
        }
    }

    fn unauthorized(&self, detail: &str) -> Error {
        Error::Unauthorized {
            registry: self.host.clone(),
            detail: detail.to_string(),
        }
    }

    /// The `Authorization` header for a scope: Basic if the registry asked for it, a cached
    /// bearer token, or (when the registry's token service is known) a fresh token.
    async fn authorization(&self, scope: Option<&str>, fetch: bool) -> Result<Option<HeaderValue>> {
        if self.basic.load(Ordering::Relaxed) {
            return Ok(match self.credential().await? {
                Some(Credential::Basic { username, password }) => {
                    Some(basic_header(&username, &password))
                }
                _ => None,
            });
        }
        let key = scope.unwrap_or("");
        if let Some(t) = self.tokens.get(key) {
            return Ok(Some(bearer_header(&t)));
        }
        let known = self.bearer.lock().unwrap().clone();
        match known {
            Some((realm, service)) if fetch || scope.is_some() => {
                // One token request per scope at a time: concurrent requests wait for it.
                let _one = self.token_fetch.lock().await;
                if let Some(t) = self.tokens.get(key) {
                    return Ok(Some(bearer_header(&t)));
                }
                let token = self.fetch_token(&realm, service.as_deref(), scope).await?;
                Ok(Some(bearer_header(&token)))
            }
            _ => Ok(None),
        }
    }

    /// Records what a 401 asked for.
    async fn learn(&self, challenge: Option<Challenge>) -> Result<()> {
        match challenge {
            Some(Challenge::Basic) => {
                self.basic.store(true, Ordering::Relaxed);
                Ok(())
            }
            Some(Challenge::Bearer { realm, service, .. }) => {
                *self.bearer.lock().unwrap() = Some((realm, service));
                Ok(())
            }
            None => {
                Err(self.unauthorized(" (the registry sent no usable WWW-Authenticate challenge)"))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String> {
        let mut url = Url::parse(realm).map_err(|e| {
            Error::Protocol(format!(
                "token realm {:?} is not a URL: {e}",
                realm.split('?').next().unwrap_or_default()
            ))
        })?;
        let realm = &redact(&url);
        // A registry reached over TLS that sends us to a plain-HTTP token service would get
        // our credentials (and its tokens) sent in cleartext.
        if self.base.scheme() == "https" && url.scheme() != "https" && !self.options.insecure {
            return Err(Error::Protocol(format!(
                "{} is HTTPS but its token service {realm} is plain HTTP; refusing to send \
                 credentials there in cleartext (--insecure allows it)",
                self.host
            )));
        }
        let credential = self.credential().await?;
        let rb = match &credential {
            Some(Credential::IdentityToken(refresh)) => {
                // OAuth2 refresh-token grant, as docker and oras do with identity tokens.
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", refresh)
                    .append_pair("client_id", "oras-fs");
                if let Some(s) = service {
                    form.append_pair("service", s);
                }
                if let Some(s) = scope {
                    form.append_pair("scope", s);
                }
                self.http
                    .post(url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(form.finish())
            }
            other => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    if let Some(s) = scope {
                        q.append_pair("scope", s);
                    }
                }
                let rb = self.http.get(url);
                match other {
                    Some(Credential::Basic { username, password }) => {
                        rb.basic_auth(username, Some(password))
                    }
                    _ => rb,
                }
            }
        };
        let resp = rb.send().await.map_err(|e| self.connect_error(e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.unauthorized(&format!(" (the token service answered {status})")));
        }
        if !status.is_success() {
            return Err(Error::Protocol(format!(
                "token service {realm} answered {status}"
            )));
        }
        let body = read_capped(resp, 1 << 20)
            .await
            .map_err(|e| self.connect_error(e))?;
        let (token, ttl) = serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(TokenResponse::into_token)
            .ok_or_else(|| Error::Protocol(format!("token service {realm} sent no token")))?;
        self.tokens.put(scope.unwrap_or(""), token.clone(), ttl);
        Ok(token)
    }

    /// Turns an unexpected answer into an error naming what the registry said.
    pub async fn error_for(&self, resp: Response, what: &str) -> Error {
        let status = resp.status();
        let method_path = resp.url().path().to_string();
        let body = read_capped(resp, 64 * 1024).await.unwrap_or_default();
        let mut detail = registry_error_detail(&body);
        if detail.is_empty() {
            // Not an OCI error body: show the start of a text answer, which often says it all.
            let text = String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_string();
            if !text.is_empty() && !text.starts_with('<') {
                detail = format!(": {text}");
            }
            // A HEAD answer has no body to say it: a bare 400 over plain HTTP is the same case.
            let bare_400 =
                text.is_empty() && status == StatusCode::BAD_REQUEST && self.options.plain_http;
            if bare_400 || text.contains("HTTP request to an HTTPS server") {
                detail.push_str(self.https_hint());
            }
        }
        if detail.contains("DIGEST_INVALID") {
            detail.push_str(
                " (the bytes changed on the way, or the file changed while it was read; \
                 the registry stored nothing: push again)",
            );
        }
        match status {
            StatusCode::NOT_FOUND => Error::NotFound {
                what: "content",
                name: format!("{what}{detail}"),
            },
            StatusCode::UNAUTHORIZED => self.unauthorized(&detail),
            StatusCode::FORBIDDEN => Error::Forbidden {
                what: what.to_string(),
            },
            _ => Error::Registry {
                registry: self.host.clone(),
                what: what.to_string(),
                path: method_path,
                status: status.as_u16(),
                detail,
            },
        }
    }
}

/// A URL as messages may show it: no query (upload URLs carry the registry's `_state`
/// token, token URLs scopes and secrets), no fragment, no user or password.
pub fn redact(url: &Url) -> String {
    let mut url = url.clone();
    strip_url(&mut url);
    url.to_string()
}

fn strip_url(url: &mut Url) {
    url.set_query(None);
    url.set_fragment(None);
    let _ = url.set_username("");
    let _ = url.set_password(None);
}

/// Whether a 401 says `error="insufficient_scope"`.
fn insufficient_scope(resp: &Response) -> bool {
    resp.headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(parse_challenge)
        .any(|c| c.insufficient_scope())
}

fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn basic_header(username: &str, password: &str) -> HeaderValue {
    let mut v = {
        use base64::Engine;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a valid header value")
    };
    v.set_sensitive(true);
    v
}

fn bearer_header(token: &str) -> HeaderValue {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
    v.set_sensitive(true);
    v
}

pub fn is_transient_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS
        || (s.is_server_error()
            && s != StatusCode::NOT_IMPLEMENTED
            && s != StatusCode::HTTP_VERSION_NOT_SUPPORTED)
}

/// `Retry-After` in seconds (the HTTP-date form is rare from registries and is ignored).
pub fn retry_after(resp: &Response) -> Option<Duration> {
    let secs: u64 = resp
        .headers()
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// Reads a response body into memory, at most `cap + 1` bytes (more than `cap`: too large).
pub async fn read_capped(
    mut resp: Response,
    cap: usize,
) -> std::result::Result<Vec<u8>, reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > cap {
            // Keep one byte past the cap, so the caller can tell the body was too large.
            buf.extend_from_slice(&chunk[..cap + 1 - buf.len()]);
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The `errors` of an OCI error body, as `: CODE message; ...`.
fn registry_error_detail(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) if !b.errors.is_empty() => {
            let items: Vec<String> = b
                .errors
                .iter()
                .map(|e| format!("{} {}", e.code, e.message).trim().to_string())
                .collect();
            format!(": {}", items.join("; "))
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(plain_http: bool, http1_only: bool) -> ClientOptions {
        ClientOptions {
            plain_http,
            http1_only,
            insecure: true,
            ..Default::default()
        }
    }

    #[test]
    fn only_big_transfers_take_an_http1_connection_of_their_own() {
        let c = Client::new("registry.example", options(false, false)).unwrap();
        let bulk = c
            .bulk
            .as_ref()
            .expect("a TLS registry gets an HTTP/1.1 client");
        assert!(std::ptr::eq(c.http_for(None), &c.http));
        assert!(std::ptr::eq(c.http_for(Some(BULK_MIN - 1)), &c.http));
        assert!(std::ptr::eq(c.http_for(Some(BULK_MIN)), bulk));
        // Upload bodies too, until upload connections are open.
        assert!(std::ptr::eq(c.upload_http(Some(1)), &c.http));
        assert!(std::ptr::eq(c.upload_http(Some(BULK_MIN)), bulk));
        // Forced HTTP/1.1, or plain HTTP: one client, nothing to choose.
        assert!(Client::new("registry.example", options(false, true))
            .unwrap()
            .bulk
            .is_none());
        assert!(Client::new("localhost:5000", options(true, false))
            .unwrap()
            .bulk
            .is_none());
    }

    #[tokio::test]
    async fn without_http2_as_many_transfers_run_as_asked() {
        // No request is sent: plain HTTP never multiplexes.
        let c = Client::new("localhost:5000", options(true, false)).unwrap();
        assert_eq!(c.transfers_at_once(16).await, 16);
        assert!(!c.multiplexes());
    }
    use std::io::{Read, Write};

    fn with_password(insecure: bool) -> ClientOptions {
        ClientOptions {
            insecure,
            credentials: CredentialSource {
                explicit: Some(Credential::Basic {
                    username: "u".into(),
                    password: "secret-password".into(),
                }),
                config_file: None,
            },
            ..Default::default()
        }
    }

    /// Answers one token request on `listener`; returns the request head it read.
    fn token_server(listener: std::net::TcpListener) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            listener.set_nonblocking(false).unwrap();
            let (mut s, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap() == 1 {
                head.push(b[0]);
            }
            let body = r#"{"token":"t"}"#;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            String::from_utf8_lossy(&head).into_owned()
        })
    }

    #[tokio::test]
    async fn a_tls_registry_cannot_send_credentials_to_a_plain_http_token_realm() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let realm = format!("http://{}/token?x=1", listener.local_addr().unwrap());
        let challenge = || {
            Some(Challenge::Bearer {
                realm: realm.clone(),
                service: None,
                scope: None,
                error: None,
            })
        };
        let client = Client::new("registry.invalid", with_password(false)).unwrap();
        client.learn(challenge()).await.unwrap();
        let err = client
            .authorization(Some("repository:a:pull"), true)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("plain HTTP") && text.contains("--insecure"),
            "{text}"
        );
        assert!(!text.contains("x=1"), "{text}");
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "the token service was contacted"
        );

        // --insecure: the user accepted an unsafe network.
        let server = token_server(listener);
        let client = Client::new("registry.invalid", with_password(true)).unwrap();
        client.learn(challenge()).await.unwrap();
        let auth = client
            .authorization(Some("repository:a:pull"), true)
            .await
            .unwrap();
        assert_eq!(auth, Some(bearer_header("t")));
        assert!(server.join().unwrap().contains("Basic "));
    }

    #[test]
    fn resolve_overrides_parse_as_oras_takes_them() {
        let r: ResolveOverride = "reg.example:5000:127.0.0.1".parse().unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.address.to_string()),
            ("reg.example", 5000, "127.0.0.1".into())
        );
        assert!("reg.example:443:10.0.0.1:443"
            .parse::<ResolveOverride>()
            .is_ok());
        // IPv6, bare or in brackets (with a port after them).
        for v6 in [
            "reg.example:443:::1",
            "reg.example:443:[::1]",
            "reg.example:443:[::1]:443",
        ] {
            let r: ResolveOverride = v6.parse().unwrap();
            assert_eq!(r.address.to_string(), "::1", "{v6}");
        }
        for (bad, why) in [
            ("reg.example:5000", "too few"),
            ("reg.example:x:127.0.0.1", "port"),
            ("reg.example:5000:not-an-ip", "IP address"),
            ("reg.example:5000:127.0.0.1:6000", "not supported"),
            (":5000:127.0.0.1", "no host"),
            ("reg.example:443:[::1", "no ]"),
            ("reg.example:443:[::1]:6000", "not supported"),
        ] {
            let e = bad.parse::<ResolveOverride>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn headers_parse_and_repeat() {
        let map = header_map(&["X-One: a".into(), "x-one:b ".into(), "X-Two:".into()]).unwrap();
        assert_eq!(map.get("x-one").unwrap(), "a, b");
        assert_eq!(map.get("x-two").unwrap(), "");
        for bad in ["no colon", ": empty name", "bad name: x"] {
            let e = header_map(&[bad.into()]).unwrap_err().to_string();
            assert!(e.contains("invalid header"), "{bad}: {e}");
        }
        // A bad value is not echoed: it may be a token.
        let e = header_map(&["Authorization: Bearer sec\u{7f}ret".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"Authorization\"") && !e.contains("sec"), "{e}");
    }

    /// `-H` headers go to the registry and to its token service (as oras sends them), and
    /// `--resolve` sends a name that does not exist to a listener of ours.
    #[tokio::test]
    async fn headers_and_resolve_reach_the_registry_and_its_token_service() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut heads = Vec::new();
            for _ in 0..2 {
                heads.push(token_server(listener.try_clone().unwrap()).join().unwrap());
            }
            heads
        });
        let options = ClientOptions {
            plain_http: true,
            headers: header_map(&["X-Test: yes".into(), "User-Agent: mine".into()]).unwrap(),
            resolve: vec![format!("reg.invalid:{port}:127.0.0.1").parse().unwrap()],
            retry: RetryPolicy {
                attempts: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        let client = Client::new(&format!("reg.invalid:{port}"), options).unwrap();
        let req = Request::new(Method::GET, client.url(""), None, Access::Pull);
        client.send(&req).await.unwrap();
        client
            .learn(Some(Challenge::Bearer {
                realm: format!("http://reg.invalid:{port}/token"),
                service: None,
                scope: None,
                error: None,
            }))
            .await
            .unwrap();
        client
            .authorization(Some("repository:a:pull"), true)
            .await
            .unwrap();
        let heads = server.join().unwrap();
        assert!(heads[0].starts_with("GET /v2/ "), "{}", heads[0]);
        assert!(heads[1].starts_with("GET /token?"), "{}", heads[1]);
        for head in heads {
            let head = head.to_ascii_lowercase();
            assert!(head.contains("\r\nx-test: yes\r\n"), "{head}");
            assert!(head.contains("\r\nuser-agent: mine\r\n"), "{head}");
            assert!(
                head.contains(&format!("\r\nhost: reg.invalid:{port}\r\n")),
                "{head}"
            );
        }
    }

    #[test]
    fn docker_hub_is_reached_at_its_api_host() {
        let client = Client::new("docker.io", ClientOptions::default()).unwrap();
        assert_eq!(client.host(), "docker.io");
        assert_eq!(
            client.url("library/alpine/manifests/3").as_str(),
            "https://registry-1.docker.io/v2/library/alpine/manifests/3"
        );
        let client = Client::new("localhost:5000", ClientOptions::default()).unwrap();
        assert_eq!(client.url("").as_str(), "https://localhost:5000/v2/");
    }

    #[test]
    fn speed_limits_parse() {
        let l = SpeedLimit::parse("1000/2.5").unwrap();
        assert_eq!(
            (l.bytes_per_sec, l.window),
            (1000, Duration::from_millis(2500))
        );
        assert_eq!(l.min_bytes(), 2500);
        assert!(SpeedLimit::parse("off").unwrap().is_off());
        for bad in ["1000", "x/2", "1/-1", ""] {
            assert!(SpeedLimit::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(SpeedLimit::default().min_bytes(), 30 * 1024);
    }

    #[test]
    fn redacted_urls_keep_no_query_or_user() {
        let url =
            Url::parse("https://u:p@reg:5000/v2/r/blobs/uploads/x?_state=abc&digest=d#f").unwrap();
        assert_eq!(redact(&url), "https://reg:5000/v2/r/blobs/uploads/x");
    }

    #[tokio::test]
    async fn connection_errors_do_not_show_the_upload_state() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = Client::new(&format!("127.0.0.1:{port}"), ClientOptions::default()).unwrap();
        let url = format!("http://127.0.0.1:{port}/v2/r/blobs/uploads/u?_state=SECRETSTATE");
        let e = client.http.put(&url).send().await.unwrap_err();
        assert!(
            e.to_string().contains("SECRETSTATE"),
            "reqwest changed: {e}"
        );
        let text = client.connect_error(e).to_string();
        assert!(!text.contains("SECRETSTATE"), "{text}");
        assert!(text.contains("/v2/r/blobs/uploads/u"), "{text}");
    }
}
