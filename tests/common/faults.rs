//! A fault-injecting HTTP/1.1 proxy between `oras-fs` and a registry, for the fault tests.
//!
//! Every client connection carries one request: the proxy reads the request head, picks the
//! first [`Rule`] whose method and path match (and whose occurrence count says so), forwards the
//! request to the registry with `Connection: close`, streams the answer back (possibly changed)
//! with `Connection: close`, then closes. reqwest opens a new connection for the next request.
//! Request bodies are forwarded by `Content-Length` or chunked framing.
//!
//! Besides faults on the wire ([`Fault`]), the proxy can play a bearer-token registry in front
//! of an anonymous one ([`FaultProxy::start_bearer`]): it answers 401 with a `Bearer` challenge,
//! serves tokens at `/token`, and checks them, so tests can expire a token mid-transfer.
//!
//! Everything the proxy saw is recorded ([`FaultProxy::requests`]). Threads end with their
//! connection (sockets have timeouts), and the accept loop stops when the proxy is dropped.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// Socket read/write timeout: no proxy thread outlives a stuck peer by more than this.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// What to do to one request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Forward; send the response head and the first `n` body bytes, then close the connection.
    DropAfter(u64),
    /// Hold the request this long before forwarding it.
    Stall(Duration),
    /// Forward; send the response head and `n` body bytes, wait, then send the rest.
    StallAfter(u64, Duration),
    /// Forward; flip every bit of the response body byte at this offset.
    Corrupt(u64),
    /// Forward; send the response head and `n` body bytes, then one byte every `every` (a
    /// registry that never quite stops).
    Trickle(u64, Duration),
    /// Answer with this status (nothing is forwarded), with `Retry-After: secs` if given.
    Status(u16, Option<u64>),
    /// Forward without the `Range` header: the registry answers 200 with the whole body.
    IgnoreRange,
    /// Forward, sending the body at this many bytes a second: a registry far away, or one
    /// whose blob store caps each connection.
    Pace(u64),
    /// Answer `307` to the same path and query on `origin` (`http://127.0.0.1:PORT`).
    Redirect(String),
    /// Forward, but answer with this `Docker-Content-Digest`.
    WrongDigest(String),
    /// Forward, but move the answer's `Location` (e.g. of an upload) to this origin.
    RewriteLocation(String),
    /// Read `n` bytes of the request body, then close without answering.
    DropRequestAfter(u64),
    /// Flip every bit of the request body byte at this offset before forwarding.
    CorruptRequest(u64),
    /// Forward, then close the connection without passing the answer on: the registry acted,
    /// the client never hears of it (as when a connection drops just after a commit).
    LoseAnswer,
    /// Answer without asking the registry: this status, `Content-Type` and body, with the
    /// body's `Docker-Content-Digest` and `Content-Length` (a HEAD gets the headers only).
    Serve {
        status: u16,
        content_type: String,
        body: Arc<Vec<u8>>,
    },
    /// Answer 200 with this JSON body and, if given, `Link: <next>; rel="next"`: one page of a
    /// listing (`tags/list`, `_catalog`) that goes on at `next`.
    ServePage {
        body: Arc<Vec<u8>>,
        next: Option<String>,
    },
    /// Answer 200 with `len` bytes of `{"x":` followed by spaces (generated, never held in
    /// memory), to check that a reader caps what it reads. No digest header.
    ServeHuge { content_type: String, len: u64 },
    /// Bearer mode: revoke the token the request carries and answer 401 with a fresh
    /// challenge, as a registry does when a token expired.
    ExpireToken,
}

/// When a fault applies: to requests whose method matches (`"*"`: any) and whose path and
/// query contain `needle`, after `skip` matching requests went through untouched, for `times`
/// matching requests (all of them when `None`).
#[derive(Clone, Debug)]
pub struct Rule {
    method: String,
    needle: String,
    skip: usize,
    times: Option<usize>,
    fault: Fault,
    matched: usize,
}

impl Rule {
    pub fn new(method: &str, needle: &str, fault: Fault) -> Rule {
        Rule {
            method: method.to_ascii_uppercase(),
            needle: needle.to_string(),
            skip: 0,
            times: None,
            fault,
            matched: 0,
        }
    }

    /// A fault on the GETs of the blob `digest` (any repository).
    pub fn blob_get(digest: &str, fault: Fault) -> Rule {
        Rule::new("GET", &blob_path_of(digest), fault)
    }

    /// Let the first `n` matching requests through.
    pub fn skip(mut self, n: usize) -> Rule {
        self.skip = n;
        self
    }

    /// Apply to `n` matching requests only (after the skipped ones).
    pub fn times(mut self, n: usize) -> Rule {
        self.times = Some(n);
        self
    }

    /// Apply to the first matching request only.
    pub fn once(self) -> Rule {
        self.times(1)
    }

    /// Matches the path and query as sent, or percent-decoded (`digest=sha256%3A...`).
    fn matches(&self, method: &str, path: &str) -> bool {
        (self.method == "*" || self.method == method)
            && (path.contains(&self.needle) || percent_decode(path).contains(&self.needle))
    }
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The request headers as received (names as sent).
    pub headers: Vec<(String, String)>,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
    /// The status sent to the client (0 if none was).
    pub status: u16,
    /// Response body bytes sent to the client.
    pub body_sent: u64,
    /// Request body bytes received from the client.
    pub body_received: u64,
    /// Whether the exchange completed (false while in flight or when the connection broke).
    pub done: bool,
    pub started: Instant,
}

impl Seen {
    /// A request header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request to the bearer token endpoint.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub query: String,
    pub authorization: Option<String>,
    /// The token issued (None when refused).
    pub issued: Option<String>,
    /// The POSTed form of a refresh-token grant (empty for a GET).
    pub form: String,
}

#[derive(Default)]
struct Bearer {
    /// `(user, password)` the token endpoint demands (Basic), if any.
    credentials: Option<(String, String)>,
    /// The OAuth2 refresh token (a Docker identity token) the endpoint demands instead, if any.
    refresh_token: Option<String>,
    valid: HashSet<String>,
    /// Tokens allow reads only: writes get 401 `error="insufficient_scope"`.
    pull_only: bool,
    issued: usize,
    requests: Vec<TokenRequest>,
}

struct Shared {
    upstream: String,
    addr: String,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Seen>>,
    bearer: Option<Mutex<Bearer>>,
    /// An `Authorization` value to send upstream instead of the client's (a storage origin
    /// that takes "signed URLs").
    inject_authorization: Option<String>,
    stop: AtomicBool,
    connections: AtomicUsize,
}

/// The proxy. Listens on `127.0.0.1:PORT` until dropped.
pub struct FaultProxy {
    /// `127.0.0.1:PORT`: use it as the registry host of references.
    pub addr: String,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// A proxy forwarding to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        Self::start_with(upstream, None, None)
    }

    /// A proxy that plays a bearer-token registry in front of an anonymous `upstream`: requests
    /// without a valid token get 401 with `Bearer realm="http://ADDR/token"`; `/token` issues
    /// tokens, to anyone when `credentials` is `None`, else only to that user (Basic auth).
    /// Tokens are never forwarded.
    /// A bearer-mode proxy whose token endpoint only takes the OAuth2 refresh-token grant with
    /// `refresh_token` (what a Docker `identitytoken` is).
    pub fn start_bearer_refresh(upstream: &str, refresh_token: &str) -> FaultProxy {
        let proxy = Self::start_bearer(upstream, None);
        if let Some(b) = &proxy.shared.bearer {
            b.lock().unwrap().refresh_token = Some(refresh_token.to_string());
        }
        proxy
    }

    pub fn start_bearer(upstream: &str, credentials: Option<(&str, &str)>) -> FaultProxy {
        let bearer = Bearer {
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
            ..Default::default()
        };
        Self::start_with(upstream, Some(bearer), None)
    }

    /// A proxy that replaces the client's `Authorization` with `authorization` (e.g. a storage
    /// origin that blob GETs are redirected to, accepting them as if signed). The header the
    /// client sent is still recorded.
    pub fn start_injecting(upstream: &str, authorization: &str) -> FaultProxy {
        Self::start_with(upstream, None, Some(authorization.to_string()))
    }

    fn start_with(
        upstream: &str,
        bearer: Option<Bearer>,
        inject_authorization: Option<String>,
    ) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fault proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            addr: addr.clone(),
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            bearer: bearer.map(Mutex::new),
            inject_authorization,
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
        });
        let s = shared.clone();
        std::thread::spawn(move || accept_loop(listener, s));
        FaultProxy { addr, shared }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ADDR/repo:tag`.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.addr)
    }

    /// Adds a rule after the existing ones (the first applicable rule wins).
    pub fn add(&self, rule: Rule) -> &Self {
        self.shared.rules.lock().unwrap().push(rule);
        self
    }

    /// Removes every rule: from now on everything is forwarded as is.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// Every request seen so far, in the order they arrived.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Requests whose method matches (`"*"`: any) and whose path contains `needle`.
    pub fn matching(&self, method: &str, needle: &str) -> Vec<Seen> {
        let method = method.to_ascii_uppercase();
        self.requests()
            .into_iter()
            .filter(|s| (method == "*" || s.method == method) && s.path.contains(needle))
            .collect()
    }

    /// The GETs of the blob `digest` seen so far.
    pub fn blob_gets(&self, digest: &str) -> Vec<Seen> {
        self.matching("GET", &blob_path_of(digest))
    }

    /// How many requests a fault was applied to.
    pub fn faults_applied(&self) -> usize {
        self.requests().iter().filter(|s| s.fault.is_some()).count()
    }

    /// Forgets the requests seen so far.
    pub fn clear_log(&self) {
        self.shared.log.lock().unwrap().clear();
    }

    /// Requests to the token endpoint (bearer mode).
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.shared
            .bearer
            .as_ref()
            .map(|b| b.lock().unwrap().requests.clone())
            .unwrap_or_default()
    }

    /// Bearer mode: tokens allow GET and HEAD only; anything else is answered 401 with
    /// `error="insufficient_scope"`, as a registry does for credentials without push access.
    pub fn grant_pull_only(&self) {
        if let Some(b) = &self.shared.bearer {
            b.lock().unwrap().pull_only = true;
        }
    }

    /// Bearer mode: every token issued so far stops being valid.
    pub fn expire_tokens(&self) {
        if let Some(b) = &self.shared.bearer {
            b.lock().unwrap().valid.clear();
        }
    }

    /// Waits until no connection is being served (or `limit` passed): the log is then final.
    pub fn settle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.shared.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let s = shared.clone();
                s.connections.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = serve_connection(client, &s);
                    s.connections.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

// --- HTTP plumbing ------------------------------------------------------------------------------

struct Head {
    /// Request line or status line.
    first: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn remove(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.headers.push((name.to_string(), value.to_string()));
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut s = format!("{}\r\n", self.first);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    fn framing(&self) -> Framing {
        if self
            .get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            Framing::Chunked
        } else if let Some(n) = self
            .get("content-length")
            .and_then(|v| v.trim().parse().ok())
        {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
    None,
}

/// Reads a head (up to the blank line); `None` on a clean EOF before any byte.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed inside a head",
            ));
        }
        total += n;
        if total > MAX_HEAD {
            return Err(std::io::Error::other("head too large"));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue; // Tolerate stray CRLFs before a request.
            }
            break;
        }
        lines.push(line);
    }
    let first = lines.remove(0);
    let headers = lines
        .into_iter()
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Ok(Some(Head { first, headers }))
}

/// What happens to body bytes on their way: faults at body offsets.
struct BodyFault {
    /// Close after this many bytes.
    drop_after: Option<u64>,
    /// Wait once when this many bytes went by.
    stall_after: Option<(u64, Duration)>,
    /// Flip the byte at this offset.
    corrupt_at: Option<u64>,
    /// From this offset on, one byte per interval.
    trickle: Option<(u64, Duration)>,
    /// Bytes a second, and when the body began.
    pace: Option<(u64, Instant)>,
}

impl BodyFault {
    fn none() -> Self {
        BodyFault {
            drop_after: None,
            stall_after: None,
            corrupt_at: None,
            trickle: None,
            pace: None,
        }
    }
}

/// Writes body data with the given framing, applying a [`BodyFault`]. Returns `Ok(false)`
/// once the fault says to drop the connection.
struct BodyWriter<'a, W: Write> {
    w: &'a mut W,
    chunked: bool,
    offset: u64,
    fault: BodyFault,
    stop: &'a AtomicBool,
}

impl<'a, W: Write> BodyWriter<'a, W> {
    fn new(w: &'a mut W, chunked: bool, fault: BodyFault, stop: &'a AtomicBool) -> Self {
        BodyWriter {
            w,
            chunked,
            offset: 0,
            fault,
            stop,
        }
    }

    fn emit(&mut self, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.chunked {
            self.w
                .write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
            self.w.write_all(data)?;
            self.w.write_all(b"\r\n")?;
        } else {
            self.w.write_all(data)?;
        }
        Ok(())
    }

    /// Sends `data` (the body bytes from `self.offset` on); false: stop and drop now.
    fn data(&mut self, data: &mut [u8]) -> std::io::Result<bool> {
        let start = self.offset;
        let end = start + data.len() as u64;
        if let Some(at) = self.fault.corrupt_at {
            if at >= start && at < end {
                data[(at - start) as usize] ^= 0xff;
            }
        }
        let mut data: &[u8] = data;
        if let Some((at, delay)) = self.fault.stall_after {
            if at >= start && at < end {
                let k = (at - start) as usize;
                self.emit(&data[..k])?;
                self.w.flush()?;
                self.offset += k as u64;
                data = &data[k..];
                let until = Instant::now() + delay;
                while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                self.fault.stall_after = None;
            }
        }
        if let Some(at) = self.fault.drop_after {
            let start = self.offset;
            if start + data.len() as u64 >= at {
                let k = (at.saturating_sub(start)) as usize;
                self.emit(&data[..k])?;
                self.w.flush()?;
                self.offset += k as u64;
                return Ok(false);
            }
        }
        if let Some((at, every)) = self.fault.trickle {
            let start = self.offset;
            if start + data.len() as u64 > at {
                let k = (at.saturating_sub(start) as usize).min(data.len());
                self.emit(&data[..k])?;
                self.offset += k as u64;
                for byte in data[k..].chunks(1) {
                    self.w.flush()?;
                    let until = Instant::now() + every;
                    while Instant::now() < until {
                        if self.stop.load(Ordering::SeqCst) {
                            return Ok(false);
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    // Fails once the client gave up and closed: the relay ends there.
                    self.emit(byte)?;
                    self.offset += 1;
                }
                return Ok(true);
            }
        }
        self.emit(data)?;
        self.offset += data.len() as u64;
        if let Some((rate, began)) = self.fault.pace {
            let due = began + Duration::from_secs_f64(self.offset as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                self.w.flush()?;
                std::thread::sleep(wait);
            }
        }
        Ok(true)
    }

    fn finish(&mut self) -> std::io::Result<()> {
        if self.chunked {
            self.w.write_all(b"0\r\n\r\n")?;
        }
        self.w.flush()
    }
}

/// Copies a body framed as `framing` from `r` to `out`. Returns false if the fault dropped it.
fn relay_body<R: BufRead, W: Write>(
    r: &mut R,
    framing: Framing,
    out: &mut BodyWriter<'_, W>,
) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    match framing {
        Framing::None => {}
        Framing::Length(len) => {
            if !relay_exact(r, len, "body", &mut buf, out)? {
                return Ok(false);
            }
        }
        Framing::UntilClose => loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if !out.data(&mut buf[..n])? {
                return Ok(false);
            }
        },
        Framing::Chunked => loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "chunked body ended early",
                ));
            }
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // Trailers, up to the blank line.
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            if !relay_exact(r, size, "chunk", &mut buf, out)? {
                return Ok(false);
            }
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        },
    }
    out.finish()?;
    Ok(true)
}

/// Copies the next `len` bytes from `r` to `out` through `buf`; an error naming `what` if `r`
/// ends first. Returns false if the fault dropped them.
fn relay_exact<R: Read, W: Write>(
    r: &mut R,
    len: u64,
    what: &str,
    buf: &mut [u8],
    out: &mut BodyWriter<'_, W>,
) -> std::io::Result<bool> {
    let mut left = len;
    while left > 0 {
        let want = (left as usize).min(buf.len());
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{what} ended early"),
            ));
        }
        left -= n as u64;
        if !out.data(&mut buf[..n])? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Reads and discards a request body (bounded), so an answer sent early is not lost to a reset.
fn drain_body<R: BufRead>(r: &mut R, framing: Framing) -> u64 {
    let mut sink = std::io::sink();
    let stop = AtomicBool::new(false);
    let mut out = BodyWriter::new(&mut sink, false, BodyFault::none(), &stop);
    let framing = match framing {
        Framing::UntilClose => Framing::None, // A request without framing has no body.
        f => f,
    };
    let _ = relay_body(r, framing, &mut out);
    out.offset
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sends a whole small answer and closes. Returns the body bytes sent.
fn respond(
    w: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<u64> {
    let mut h = Head {
        first: format!("HTTP/1.1 {status} {}", reason(status)),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    };
    if h.get("content-length").is_none() {
        h.set("Content-Length", &body.len().to_string());
    }
    h.set("Connection", "close");
    w.write_all(&h.to_bytes())?;
    if !head_only {
        w.write_all(body)?;
    }
    w.flush()?;
    Ok(if head_only { 0 } else { body.len() as u64 })
}

/// Answers 401 with the `Bearer` challenge `challenge` and a registry error `body` (JSON).
fn respond_unauthorized(
    w: &mut TcpStream,
    challenge: String,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<u64> {
    let headers = [
        ("WWW-Authenticate", challenge),
        ("Content-Type", "application/json".into()),
    ];
    respond(w, 401, &headers, body, head_only)
}

/// Closes our side gracefully: FIN after the data, then a short wait for the client's FIN so
/// that unread input does not turn the close into a reset that destroys data in flight.
fn close_gracefully(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut s = stream;
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

// --- One connection -----------------------------------------------------------------------------

fn serve_connection(client: TcpStream, shared: &Arc<Shared>) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = client.set_nodelay(true);
    let mut reader = BufReader::with_capacity(64 * 1024, client.try_clone()?);
    let mut out = client;
    let Some(mut head) = read_head(&mut reader)? else {
        return Ok(());
    };
    let mut parts = head.first.split_whitespace();
    let method = parts.next().unwrap_or("").to_ascii_uppercase();
    let path = parts.next().unwrap_or("").to_string();
    let head_only = method == "HEAD";

    // Pick the fault.
    let fault = {
        let mut rules = shared.rules.lock().unwrap();
        let mut chosen = None;
        for rule in rules.iter_mut() {
            if !rule.matches(&method, &path) {
                continue;
            }
            rule.matched += 1;
            let n = rule.matched;
            if n > rule.skip && rule.times.is_none_or(|t| n - rule.skip <= t) {
                chosen = Some(rule.fault.clone());
                break;
            }
        }
        chosen
    };
    let index = {
        let mut log = shared.log.lock().unwrap();
        log.push(Seen {
            method: method.clone(),
            path: path.clone(),
            headers: head.headers.clone(),
            fault: fault.clone(),
            status: 0,
            body_sent: 0,
            body_received: 0,
            done: false,
            started: Instant::now(),
        });
        log.len() - 1
    };
    let record = |status: u16, sent: u64, received: u64, done: bool| {
        let mut log = shared.log.lock().unwrap();
        if let Some(s) = log.get_mut(index) {
            s.status = status;
            s.body_sent = sent;
            s.body_received = received;
            s.done = done;
        }
    };
    let request_framing = match head.framing() {
        Framing::UntilClose => Framing::None,
        f => f,
    };

    // Bearer mode: the token endpoint, and the token check.
    if let Some(bearer) = &shared.bearer {
        if path.starts_with("/token") {
            // An OAuth2 refresh-token grant is a POSTed form: keep it (small) to check it.
            let mut form = String::new();
            let received = if method == "POST" {
                let len: usize = head
                    .get("content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                let mut buf = vec![0u8; len.min(64 * 1024)];
                reader.read_exact(&mut buf)?;
                form = String::from_utf8_lossy(&buf).into_owned();
                len as u64
            } else {
                drain_body(&mut reader, request_framing)
            };
            let authorization = head.get("authorization").map(str::to_string);
            let query = path
                .split_once('?')
                .map(|(_, q)| q.to_string())
                .unwrap_or_default();
            let (status, body) = {
                let mut b = bearer.lock().unwrap();
                let allowed = match (&b.refresh_token, &b.credentials) {
                    (Some(rt), _) => {
                        method == "POST"
                            && form.split('&').any(|kv| kv == "grant_type=refresh_token")
                            && form
                                .split('&')
                                .any(|kv| kv == format!("refresh_token={rt}"))
                    }
                    (None, None) => true,
                    (None, Some((u, p))) => authorization.as_deref() == Some(&basic(u, p)),
                };
                let issued = allowed.then(|| {
                    b.issued += 1;
                    format!("fault-proxy-token-{}-{}", b.issued, std::process::id())
                });
                if let Some(t) = &issued {
                    b.valid.insert(t.clone());
                }
                b.requests.push(TokenRequest {
                    query,
                    authorization,
                    issued: issued.clone(),
                    form: form.clone(),
                });
                match issued {
                    Some(t) => (
                        200,
                        format!(r#"{{"token":"{t}","access_token":"{t}","expires_in":300}}"#),
                    ),
                    None => (401, r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_string()),
                }
            };
            let sent = respond(
                &mut out,
                status,
                &[("Content-Type", "application/json".into())],
                body.as_bytes(),
                head_only,
            )?;
            record(status, sent, received, true);
            close_gracefully(&out);
            return Ok(());
        }
        let presented = head
            .get("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let valid = presented
            .as_ref()
            .is_some_and(|t| bearer.lock().unwrap().valid.contains(t));
        let expire = matches!(fault, Some(Fault::ExpireToken));
        let refused_write =
            valid && method != "GET" && method != "HEAD" && bearer.lock().unwrap().pull_only;
        if refused_write {
            let received = drain_body(&mut reader, request_framing);
            let repo = path
                .strip_prefix("/v2/")
                .and_then(|p| {
                    ["/blobs/", "/manifests/", "/tags/"]
                        .iter()
                        .find_map(|k| p.split_once(k).map(|(r, _)| r))
                })
                .unwrap_or("");
            let challenge = format!(
                r#"Bearer realm="http://{}/token",service="fault-proxy",scope="repository:{repo}:pull,push",error="insufficient_scope""#,
                shared.addr
            );
            let sent = respond_unauthorized(
                &mut out,
                challenge,
                br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
                head_only,
            )?;
            record(401, sent, received, true);
            close_gracefully(&out);
            return Ok(());
        }
        if !valid || expire {
            if expire {
                if let Some(t) = &presented {
                    bearer.lock().unwrap().valid.remove(t);
                }
            }
            let received = drain_body(&mut reader, request_framing);
            let challenge = format!(
                r#"Bearer realm="http://{}/token",service="fault-proxy""#,
                shared.addr
            );
            let sent = respond_unauthorized(
                &mut out,
                challenge,
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                head_only,
            )?;
            record(401, sent, received, true);
            close_gracefully(&out);
            return Ok(());
        }
        head.remove("authorization");
    }

    // Faults answered here.
    match &fault {
        Some(Fault::Status(status, retry_after)) => {
            let received = drain_body(&mut reader, request_framing);
            let mut headers = vec![("Content-Type", "application/json".to_string())];
            if let Some(s) = retry_after {
                headers.push(("Retry-After", s.to_string()));
            }
            let body =
                format!(r#"{{"errors":[{{"code":"FAULT","message":"injected HTTP {status}"}}]}}"#);
            let sent = respond(&mut out, *status, &headers, body.as_bytes(), head_only)?;
            record(*status, sent, received, true);
            close_gracefully(&out);
            return Ok(());
        }
        Some(Fault::Redirect(origin)) => {
            let received = drain_body(&mut reader, request_framing);
            let sent = respond(
                &mut out,
                307,
                &[("Location", format!("{origin}{path}"))],
                b"",
                head_only,
            )?;
            record(307, sent, received, true);
            close_gracefully(&out);
            return Ok(());
        }
        Some(Fault::Serve {
            status,
            content_type,
            body,
        }) => {
            let received = drain_body(&mut reader, request_framing);
            let sent = respond(
                &mut out,
                *status,
                &[
                    ("Content-Type", content_type.clone()),
                    (
                        "Docker-Content-Digest",
                        format!("sha256:{}", sha256_hex(body)),
                    ),
                ],
                body,
                head_only,
            )?;
            record(*status, sent, received, true);
            close_gracefully(&out);
            return Ok(());
        }
        Some(Fault::ServePage { body, next }) => {
            let received = drain_body(&mut reader, request_framing);
            let mut headers = vec![("Content-Type", "application/json".to_string())];
            if let Some(next) = next {
                headers.push(("Link", format!("<{next}>; rel=\"next\"")));
            }
            let sent = respond(&mut out, 200, &headers, body, head_only)?;
            record(200, sent, received, true);
            close_gracefully(&out);
            return Ok(());
        }
        Some(Fault::ServeHuge { content_type, len }) => {
            let received = drain_body(&mut reader, request_framing);
            let h = Head {
                first: "HTTP/1.1 200 OK".into(),
                headers: vec![
                    ("Content-Type".into(), content_type.clone()),
                    ("Content-Length".into(), len.to_string()),
                    ("Connection".into(), "close".into()),
                ],
            };
            out.write_all(&h.to_bytes())?;
            let mut sent = 0u64;
            if !head_only {
                let block = vec![b' '; 64 * 1024];
                let prefix = b"{\"x\":";
                while sent < *len && !shared.stop.load(Ordering::SeqCst) {
                    let n = ((*len - sent) as usize).min(block.len());
                    let chunk: &[u8] = if sent == 0 {
                        &prefix[..n.min(prefix.len())]
                    } else {
                        &block[..n]
                    };
                    if out.write_all(chunk).is_err() {
                        break;
                    }
                    sent += chunk.len() as u64;
                    record(200, sent, received, false);
                }
            }
            record(200, sent, received, sent >= *len);
            close_gracefully(&out);
            return Ok(());
        }
        Some(Fault::Stall(d)) => {
            let until = Instant::now() + *d;
            while Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        _ => {}
    }

    // Forward.
    let upstream = TcpStream::connect(&shared.upstream)?;
    upstream.set_read_timeout(Some(IO_TIMEOUT))?;
    upstream.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = upstream.set_nodelay(true);
    let mut up_w = upstream.try_clone()?;
    for h in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        head.remove(h);
    }
    head.set("Connection", "close");
    if matches!(fault, Some(Fault::IgnoreRange)) {
        head.remove("range");
    }
    if let Some(a) = &shared.inject_authorization {
        head.set("Authorization", a);
    }
    up_w.write_all(&head.to_bytes())?;
    let req_fault = match &fault {
        Some(Fault::DropRequestAfter(n)) => BodyFault {
            drop_after: Some(*n),
            ..BodyFault::none()
        },
        Some(Fault::CorruptRequest(at)) => BodyFault {
            corrupt_at: Some(*at),
            ..BodyFault::none()
        },
        _ => BodyFault::none(),
    };
    let chunked = matches!(request_framing, Framing::Chunked);
    let mut body_out = BodyWriter::new(&mut up_w, chunked, req_fault, &shared.stop);
    let completed = relay_body(&mut reader, request_framing, &mut body_out)?;
    let received = body_out.offset;
    if !completed {
        // Dropped mid-request: close both sides without an answer.
        record(0, 0, received, false);
        let _ = upstream.shutdown(Shutdown::Both);
        let _ = out.shutdown(Shutdown::Both);
        return Ok(());
    }
    let mut up_r = BufReader::with_capacity(64 * 1024, upstream.try_clone()?);
    let Some(mut resp) = read_head(&mut up_r)? else {
        record(0, 0, received, false);
        return Ok(());
    };
    let status: u16 = resp
        .first
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if matches!(fault, Some(Fault::LoseAnswer)) {
        record(status, 0, received, false);
        let _ = upstream.shutdown(Shutdown::Both);
        let _ = out.shutdown(Shutdown::Both);
        return Ok(());
    }
    let framing = if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::None
    } else {
        resp.framing()
    };
    for h in ["connection", "keep-alive"] {
        resp.remove(h);
    }
    resp.set("Connection", "close");
    if let Some(Fault::WrongDigest(d)) = &fault {
        resp.set("Docker-Content-Digest", d);
    }
    if let Some(Fault::RewriteLocation(origin)) = &fault {
        if let Some(loc) = resp.get("location").map(str::to_string) {
            // Keep the path and query, change the scheme, host and port.
            let path = match loc.split_once("://") {
                Some((_, rest)) => rest
                    .find('/')
                    .map(|i| rest[i..].to_string())
                    .unwrap_or_default(),
                None => loc,
            };
            resp.set("Location", &format!("{origin}{path}"));
        }
    }
    out.write_all(&resp.to_bytes())?;
    let resp_fault = match &fault {
        Some(Fault::DropAfter(n)) => BodyFault {
            drop_after: Some(*n),
            ..BodyFault::none()
        },
        Some(Fault::StallAfter(n, d)) => BodyFault {
            stall_after: Some((*n, *d)),
            ..BodyFault::none()
        },
        Some(Fault::Corrupt(at)) => BodyFault {
            corrupt_at: Some(*at),
            ..BodyFault::none()
        },
        Some(Fault::Trickle(n, every)) => BodyFault {
            trickle: Some((*n, *every)),
            ..BodyFault::none()
        },
        Some(Fault::Pace(rate)) => BodyFault {
            pace: Some((*rate, Instant::now())),
            ..BodyFault::none()
        },
        _ => BodyFault::none(),
    };
    let chunked = matches!(framing, Framing::Chunked);
    let mut body_out = BodyWriter::new(&mut out, chunked, resp_fault, &shared.stop);
    let result = relay_body(&mut up_r, framing, &mut body_out);
    let sent = body_out.offset;
    let _ = upstream.shutdown(Shutdown::Both);
    match result {
        Ok(true) => {
            record(status, sent, received, true);
            close_gracefully(&out);
        }
        Ok(false) => {
            // The injected drop: FIN right after the bytes sent, before the promised length.
            record(status, sent, received, false);
            close_gracefully(&out);
        }
        Err(e) => {
            record(status, sent, received, false);
            let _ = out.shutdown(Shutdown::Both);
            return Err(e);
        }
    }
    Ok(())
}

/// A file for a push through a fault proxy: `size` random bytes (seeded by the name of a new
/// repository of its own, from `prefix`) as `name` in a directory of its own, and a proxy in
/// front of the registry. Returns (repository, bytes, digest, directory, proxy).
pub fn to_push_through_proxy(
    prefix: &str,
    name: &str,
    size: usize,
) -> (String, Vec<u8>, String, tempfile::TempDir, FaultProxy) {
    let repo = unique_repo(prefix);
    let data = random_bytes(&repo, size);
    let src = temp_dir();
    write_file(&src.path().join(name), &data);
    let digest = sha256_bytes(&data);
    let proxy = FaultProxy::start(&registry());
    (repo, data, digest, src, proxy)
}

/// The same file pushed as `REPO:v1` straight to the registry, for a pull or a mount through
/// the proxy. Returns (repository, bytes, digest, proxy).
pub fn pushed_behind_proxy(
    prefix: &str,
    name: &str,
    size: usize,
) -> (String, Vec<u8>, String, FaultProxy) {
    let (repo, data, digest, src, proxy) = to_push_through_proxy(prefix, name, size);
    push_files(src.path(), &reference(&repo, "v1"), &[name]);
    (repo, data, digest, proxy)
}

/// What a blob request's path contains, whatever the repository: `/blobs/<digest>`.
pub fn blob_path_of(digest: &str) -> String {
    format!("/blobs/{digest}")
}

/// `Basic base64(user:pass)`.
pub fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}
