//! A remote repository as a [`Target`], speaking the OCI distribution protocol.

mod chunked;
pub mod client;
pub mod mirrors;
mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE,
};
use reqwest::{Method, Response, StatusCode};

pub use client::{
    header_map, Access, Client, ClientOptions, ReferrersCapability, Request, ResolveOverride,
    RetryPolicy, SpeedLimit, BULK_MIN,
};

use crate::content::{ByteStream, OpenContent, Target, Upload, Way};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{media_type, Descriptor, Index, Manifest, MAX_MANIFEST_SIZE};
use crate::reference::Reference;
use mirrors::Lookup;

/// Blobs up to this size are asked for with a mount request that also opens their upload
/// (see `push_missing`); a registry that ignores mounts re-sends at most this much per blob.
const ASK_BY_MOUNT_MAX: u64 = 256 << 10;

/// How many chunks a blob download buffers ahead of its consumer. Each chunk can pin one of
/// hyper's receive buffers (up to ~400 KiB), and a mount runs several downloads at once: 16
/// cost the mount daemon ~18 MiB of peak memory and bought no speed.
const FETCH_QUEUE: usize = 4;

/// A part of a blob downloaded by `download_in_parts`: held whole, or (the rest of a blob
/// whose registry ignores Range) streamed.
enum Part {
    Bytes(Vec<Bytes>),
    Stream(ByteStream),
}

/// A part downloading: the part, and how long its body took (zero for a stream).
type PartTask = tokio::task::JoinHandle<Result<(Part, Duration)>>;

/// Parts downloading, oldest first, each with its share of `PART_MEMORY`; dropped, they stop.
#[derive(Default)]
struct Parts(std::collections::VecDeque<(PartTask, tokio::sync::SemaphorePermit<'static>)>);

impl Drop for Parts {
    fn drop(&mut self) {
        for (p, _) in &self.0 {
            p.abort();
        }
    }
}

/// How one `download_in_parts` goes on: the parts it runs and what it learned.
struct PartPlan {
    repo: Repository,
    desc: Descriptor,
    /// Where the next part starts.
    next: u64,
    pace: Pace,
    running: Parts,
}

/// What the first part told of one connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// The first part is on its way, alone.
    Probing,
    /// It came fast enough: the rest comes in one request.
    OneRequest,
    /// It came slower: the rest comes in parts, `PARTS_AT_ONCE` at a time.
    InParts,
}

impl PartPlan {
    /// Starts parts until as many run as the pace allows or the blob is asked for.
    async fn start_more(&mut self) {
        let at_once = match self.pace {
            Pace::InParts => PARTS_AT_ONCE,
            Pace::Probing | Pace::OneRequest => 1,
        };
        while self.running.0.len() < at_once && self.next < self.desc.size {
            let room = if self.running.0.is_empty() {
                PART_MEMORY.acquire().await.expect("never closed")
            } else {
                match PART_MEMORY.try_acquire() {
                    Ok(room) => room,
                    Err(_) => break,
                }
            };
            // A registry that sends whole blobs to Range requests gets one request for the
            // rest, as does one whose first part came fast.
            let whole = self.pace == Pace::OneRequest
                || self
                    .repo
                    .ignores_ranges
                    .load(std::sync::atomic::Ordering::Relaxed);
            let (start, size) = (self.next, self.desc.size);
            let end = if whole {
                size
            } else {
                (start + PART).min(size)
            };
            let (repo, desc) = (self.repo.clone(), self.desc.clone());
            let part = tokio::spawn(async move {
                let mut part = repo.download(&desc, start, end).await?;
                if whole {
                    return Ok((Part::Stream(part), Duration::ZERO));
                }
                // Timed from the answer's head: the request's round trip says nothing of
                // how fast the connection streams.
                let began = Instant::now();
                let mut chunks = Vec::new();
                while let Some(chunk) = part.next().await {
                    chunks.push(chunk?);
                }
                Ok((Part::Bytes(chunks), began.elapsed()))
            });
            self.running.0.push_back((part, room));
            self.next = end;
        }
    }

    /// After the first part (`PART` bytes in `took`): one stream for the rest, or parts.
    fn decide(&mut self, took: Duration) {
        let rate = (self.next as f64 / took.as_secs_f64().max(1e-6)) as u64;
        self.pace = if rate >= ONE_IS_ENOUGH {
            Pace::OneRequest
        } else {
            Pace::InParts
        };
        tracing::debug!(
            "{}: first {} bytes at {} MiB/s: the rest {}",
            self.desc.digest,
            self.next,
            rate >> 20,
            match self.pace {
                Pace::OneRequest => "in one request",
                _ => "in parts",
            }
        );
    }
}

/// What the parts held by all downloads in the process may take at once, in parts: a pull of
/// many big blobs at `--concurrency` cannot hold `--concurrency` × 3 parts. A download waits
/// for room only for its oldest part and takes more only if there is room at once, so it never
/// waits while holding a part it has not handed on (no deadlock between downloads).
static PART_MEMORY: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);

/// Whole blobs from this size on start with a Range GET of their first `PART` bytes, and go
/// on in parts, `PARTS_AT_ONCE` at a time, if that part came slower than `ONE_IS_ENOUGH`
/// (see `download_in_parts`).
const PARTS_MIN: u64 = 64 << 20;
/// As big as `BULK_MIN`, so each part goes on an HTTP/1.1 connection of its own.
const PART: u64 = BULK_MIN;
const PARTS_AT_ONCE: usize = 2;
/// Bytes a second at which one connection is not what limits a download: the first part
/// came at least this fast, so the rest comes in one request. A nearby registry sends one
/// stream as fast as the two sides' CPUs decrypt, hash and write it; a second connection then
/// only takes CPU from the first (512 MiB over TLS on a 2-core loopback: slower in parts). A
/// registry far away, or one whose blob store caps each connection, sends one stream slower.
const ONE_IS_ENOUGH: u64 = 256 << 20;

/// A download that got this far since its last failure has its count of failures reset: long
/// transfers over flaky links go on while they progress, and one that does not still ends.
const RESUME_PROGRESS: u64 = 8 << 20;

/// One repository (`registry/name`) of a registry.
#[derive(Clone)]
pub struct Repository {
    client: Arc<Client>,
    name: String,
    /// Bytes per upload chunk; 0: one request per blob. Set by `--chunk-size`, or once the
    /// registry refused a blob as too large (shared by clones: one push learns it once).
    chunk_size: Arc<std::sync::atomic::AtomicU64>,
    /// The registry's `OCI-Chunk-Min-Length`, as its last upload session announced it.
    chunk_min: Arc<std::sync::atomic::AtomicU64>,
    /// The registry answered a Range request with the whole blob: no more downloads in parts.
    ignores_ranges: Arc<std::sync::atomic::AtomicBool>,
    /// Where reads go when `registries.conf` names mirrors or another location; `None`: here.
    reads: Option<Arc<mirrors::Reads>>,
}

impl Repository {
    pub fn new(client: Arc<Client>, name: impl Into<String>) -> Self {
        let chunk = client.chunk_size().unwrap_or(0);
        Repository {
            client,
            name: name.into(),
            chunk_size: Arc::new(chunk.into()),
            chunk_min: Arc::new(0.into()),
            ignores_ranges: Arc::new(false.into()),
            reads: None,
        }
    }

    /// Connects to the repository a reference names.
    pub fn for_reference(reference: &Reference, options: ClientOptions) -> Result<Self> {
        Ok(Repository::new(
            Client::new(&reference.registry, options)?,
            reference.repository.clone(),
        ))
    }

    /// The same repository without mirrors: where writes go, and where a read that decides a
    /// write (the tag about to move) must look.
    pub fn origin(&self) -> Repository {
        Repository {
            reads: None,
            ..self.clone()
        }
    }

    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    pub fn repository(&self) -> &str {
        &self.name
    }

    fn request(&self, method: Method, path: &str, access: Access) -> Request<'_> {
        Request::new(
            method,
            self.client.url(&format!("{}/{path}", self.name)),
            Some(&self.name),
            access,
        )
    }

    fn content_path(desc: &Descriptor) -> String {
        if desc.is_manifest() {
            format!("manifests/{}", desc.digest)
        } else {
            format!("blobs/{}", desc.digest)
        }
    }

    /// GETs bytes `offset..end` of a blob or manifest, following redirects; the number returned
    /// is how many leading bytes of the body to skip (a registry that ignores Range sends the
    /// whole blob with a 200).
    async fn get_from(&self, desc: &Descriptor, offset: u64, end: u64) -> Result<(Response, u64)> {
        let mut req = self.request(Method::GET, &Self::content_path(desc), Access::Pull);
        if desc.is_manifest() {
            req = req.header(ACCEPT, &desc.media_type);
        }
        if offset > 0 || end < desc.size {
            req = req.header(RANGE, &format!("bytes={offset}-{}", end - 1));
        }
        let req = req.size(end - offset);
        let resp = self.client.send(&req).await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let start = content_range_start(&resp).unwrap_or(offset);
                if start != offset {
                    return Err(Error::Protocol(format!(
                        "asked for {} from byte {offset}, the registry answered from byte {start}",
                        desc.digest
                    )));
                }
                Ok((resp, 0))
            }
            StatusCode::OK => {
                if offset > 0 || end < desc.size {
                    self.ignores_ranges
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        "{} ignored a Range request: skipping {offset} bytes of {}",
                        self.client.host(),
                        desc.digest
                    );
                }
                Ok((resp, offset))
            }
            _ => Err(self.client.error_for(resp, &desc.digest.to_string()).await),
        }
    }

    /// Streams a whole blob of `PARTS_MIN` bytes or more. Its first `PART` bytes come in one
    /// Range GET, timed. If they came at `ONE_IS_ENOUGH` or faster, the rest comes in one more;
    /// if slower, in consecutive parts, each a Range GET on a connection of its own,
    /// `PARTS_AT_ONCE` of them downloading while the consumer hashes and writes the one before,
    /// in order. One connection can be bound by the round trip (TCP's window) or by a blob
    /// store's per-connection rate; two then bring nearly twice as much.
    /// Memory: the parts downloading and the one being handed on, ≤ 2 × `PART`, and all such
    /// downloads together ≤ `PART_MEMORY`.
    fn download_in_parts(&self, desc: &Descriptor) -> ByteStream {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(FETCH_QUEUE);
        let mut parts = PartPlan {
            repo: self.clone(),
            desc: desc.clone(),
            next: 0,
            pace: Pace::Probing,
            running: Parts::default(),
        };
        tokio::spawn(async move {
            loop {
                parts.start_more().await;
                // Its room goes once it is handed on.
                let Some((first, _room)) = parts.running.0.pop_front() else {
                    return;
                };
                let part = first.await.unwrap_or_else(|e| {
                    Err(Error::Other(format!(
                        "downloading {}: {e}",
                        parts.desc.digest
                    )))
                });
                let mut items: ByteStream = match part {
                    Ok((Part::Bytes(chunks), took)) => {
                        if parts.pace == Pace::Probing {
                            parts.decide(took);
                            // The next parts download while this one is handed on.
                            parts.start_more().await;
                        }
                        Box::pin(futures_util::stream::iter(chunks.into_iter().map(Ok)))
                    }
                    Ok((Part::Stream(stream), _)) => stream,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                while let Some(item) = items.next().await {
                    if tx.send(item).await.is_err() {
                        return; // Dropping `parts` stops the other parts.
                    }
                }
            }
        });
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }

    /// Streams bytes `start..end` of a blob. The download runs as its own task, a little ahead
    /// of the consumer; when a connection drops mid-body it resumes with a Range request from
    /// the byte where it stopped. Whole-blob fetches and the mount's range reads share it.
    async fn download(&self, desc: &Descriptor, start: u64, end: u64) -> Result<ByteStream> {
        let (first, skip) = self.get_from(desc, start, end).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(FETCH_QUEUE);
        let repo = self.clone();
        let desc = desc.clone();
        tokio::spawn(async move {
            let policy = repo.client.retry_policy().clone();
            let mut resp = first;
            let mut skip = skip;
            let mut pos = start;
            let mut failures = 0u32;
            // Where the last failure happened: a connection that delivered a good stretch
            // since then starts the count of failures afresh.
            let mut failed_at = start;
            let limit = repo.client.speed_limit();
            // The low-speed window: time spent waiting for the network (not for the
            // consumer) since it began, and the bytes that time brought.
            let (mut waited, mut got) = (Duration::ZERO, 0u64);
            loop {
                let asked = Instant::now();
                let next = if limit.is_off() {
                    Some(resp.chunk().await)
                } else {
                    // `chunk` is cancel-safe: a timeout loses no bytes.
                    let left = limit.window.saturating_sub(waited);
                    tokio::time::timeout(left, resp.chunk()).await.ok()
                };
                waited += asked.elapsed();
                if let Some(Ok(Some(chunk))) = &next {
                    got += chunk.len() as u64;
                }
                let slow = !limit.is_off() && waited >= limit.window && got < limit.min_bytes();
                if !limit.is_off() && waited >= limit.window && !slow {
                    (waited, got) = (Duration::ZERO, 0);
                }
                let err = match next {
                    // The window is not over yet, or it brought enough.
                    None if !slow => continue,
                    None => slow_error(&repo, &desc, got, waited, limit),
                    Some(Ok(Some(mut chunk))) => {
                        if skip > 0 {
                            let n = skip.min(chunk.len() as u64);
                            skip -= n;
                            chunk = chunk.slice(n as usize..);
                        }
                        // A 200 to a Range request goes on past `end`.
                        chunk.truncate(chunk.len().min((end - pos) as usize));
                        pos += chunk.len() as u64;
                        if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                            return; // The consumer is gone.
                        }
                        if pos == end {
                            return;
                        }
                        if !slow {
                            continue;
                        }
                        slow_error(&repo, &desc, got, waited, limit)
                    }
                    Some(Ok(None)) => Error::Protocol(format!(
                        "{} ended at byte {pos}, expected {end} (of {})",
                        desc.digest, desc.size
                    )),
                    Some(Err(e)) => repo.client.connect_error(e),
                };
                // The next attempt starts a window of its own.
                (waited, got) = (Duration::ZERO, 0);
                if tx.is_closed() {
                    // The consumer is gone (and the connection with it, at exit): no resume.
                    return;
                }
                if pos >= failed_at + RESUME_PROGRESS {
                    failures = 0;
                }
                failed_at = pos;
                failures += 1;
                if failures >= policy.attempts {
                    let _ = tx
                        .send(Err(Error::Other(format!(
                            "downloading {} from {}: gave up after {failures} tries, at byte {pos} of {}: {err}",
                            desc.digest,
                            repo.client.host(),
                            desc.size
                        ))))
                        .await;
                    return;
                }
                tracing::warn!("{err}; resuming {} at byte {pos}", desc.digest);
                tokio::time::sleep(policy.delay(failures - 1, None)).await;
                match repo.get_from(&desc, pos, end).await {
                    Ok((r, s)) => {
                        resp = r;
                        skip = s;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        )))
    }

    /// Lists the repository's tags, following `Link` pagination; with `last`, only those after
    /// it in lexical order (`?last=`, checked here too: Distribution 2.8 ignores it).
    pub async fn tags(&self, last: Option<&str>) -> Result<Vec<String>> {
        let last = last.map(str::to_string);
        self.read(Lookup::Tag, &format!("tags of {}", self.name), |r| {
            let last = last.clone();
            Box::pin(async move { r.tags_here(last.as_deref()).await })
        })
        .await
    }

    async fn tags_here(&self, last: Option<&str>) -> Result<Vec<String>> {
        let mut url = self.client.url(&format!("{}/tags/list", self.name));
        if let Some(l) = last {
            url.query_pairs_mut().append_pair("last", l);
        }
        let what = format!("tags of {}", self.name);
        let mut tags = list_pages(&self.client, url, Some(&self.name), "tags", &what).await?;
        if let Some(l) = last {
            tags.retain(|t| t.as_str() > l);
        }
        Ok(tags)
    }

    /// The size of a blob, by HEAD, as a descriptor of `media_type`.
    pub async fn blob_descriptor(&self, digest: &Digest, media_type: &str) -> Result<Descriptor> {
        let req = self.request(Method::HEAD, &format!("blobs/{digest}"), Access::Pull);
        let resp = self.client.send(&req).await?;
        if !resp.status().is_success() {
            return Err(self.client.error_for(resp, &format!("blob {digest}")).await);
        }
        let size = header(&resp, CONTENT_LENGTH.as_str())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Protocol(format!("no Content-Length for blob {digest}")))?;
        Ok(Descriptor::new(media_type, digest.clone(), size))
    }

    /// Deletes a manifest (by digest) or a blob.
    pub async fn delete(&self, desc: &Descriptor) -> Result<()> {
        let req = self.request(Method::DELETE, &Self::content_path(desc), Access::Delete);
        let resp = self.client.send(&req).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.client.error_for(resp, &desc.digest.to_string()).await)
        }
    }

    /// Opens an upload session; with `mount`, first asks the registry to mount that blob from
    /// that repository instead. Returns `None` when the mount succeeded.
    async fn start_upload(&self, mount: Option<(&Digest, &str)>) -> Result<Option<reqwest::Url>> {
        let mut req = self.request(Method::POST, "blobs/uploads/", Access::Push);
        if let Some((digest, from)) = mount {
            req.url
                .query_pairs_mut()
                .append_pair("mount", digest.as_str())
                .append_pair("from", from);
        }
        let resp = self.client.send(&req).await?;
        match resp.status() {
            StatusCode::CREATED if mount.is_some() => Ok(None),
            StatusCode::ACCEPTED => {
                self.learn_chunk_min(&resp);
                let location = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| Error::Protocol("upload started without a Location".into()))?;
                Ok(Some(self.client.upload_url(location)?))
            }
            _ => {
                let what = match mount {
                    Some((d, _)) => format!("upload of {d}"),
                    None => "upload".to_string(),
                };
                Err(self.client.error_for(resp, &what).await)
            }
        }
    }

    /// Sends a blob's bytes to an upload session `url` in one streaming request: a `PUT` that
    /// also commits under `desc` (`digest` known), or a `PATCH` that leaves the session open.
    async fn send_upload(
        &self,
        method: Method,
        mut url: reqwest::Url,
        digest: Option<&Digest>,
        content: ByteStream,
        size: u64,
    ) -> Result<Response> {
        if let Some(d) = digest {
            url.query_pairs_mut().append_pair("digest", d.as_str());
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
        if method == Method::PATCH && size > 0 {
            // One chunk from the start: the spec's chunked upload wants its range.
            if let Ok(v) = HeaderValue::from_str(&format!("0-{}", size - 1)) {
                headers.insert(CONTENT_RANGE, v);
            }
        }
        let body = reqwest::Body::wrap_stream(content);
        self.client
            .send_stream(method, url, &self.name, headers, body)
            .await
    }

    /// Uploads a blob into a session: one streaming PUT of the whole content, or chunks (see
    /// `chunked`) and an empty PUT that commits them.
    async fn put_upload(
        &self,
        url: reqwest::Url,
        desc: &Descriptor,
        content: ByteStream,
    ) -> Result<()> {
        if let Some(chunk) = self.chunking() {
            let (session, sent) = self.send_chunks(url, content, desc.size, chunk).await;
            let answer = match sent {
                Ok(()) => self.commit_upload(session.clone(), desc).await,
                Err(e) => Err(e),
            };
            return self.settle_commit(session, desc, answer).await;
        }
        let answer = self
            .send_upload(
                Method::PUT,
                url.clone(),
                Some(&desc.digest),
                content,
                desc.size,
            )
            .await;
        let answer = self.too_large(answer).await;
        self.settle_commit(url, desc, answer).await
    }

    /// Commits what an upload session received as `desc` (an empty `PUT ?digest=`).
    async fn commit_upload(&self, session: reqwest::Url, desc: &Descriptor) -> Result<Response> {
        let mut url = session;
        url.query_pairs_mut()
            .append_pair("digest", desc.digest.as_str());
        let req = Request::new(Method::PUT, url, Some(&self.name), Access::Push).body(Bytes::new());
        self.client.send(&req).await
    }

    /// Judges the answer to a commit (`PUT ?digest=`) of the upload `session`. A failed commit
    /// is not the end of the story: the registry may have stored the blob all the same (a 5xx
    /// or a dropped connection after the commit, then a retry that finds the session gone), so
    /// ask. Otherwise the session is cancelled, so the registry drops its partial data now
    /// rather than at its upload purge, days later.
    async fn settle_commit(
        &self,
        session: reqwest::Url,
        desc: &Descriptor,
        answer: Result<Response>,
    ) -> Result<()> {
        let error = match answer {
            Ok(resp) if [StatusCode::CREATED, StatusCode::NO_CONTENT].contains(&resp.status()) => {
                return Ok(())
            }
            Ok(resp) => {
                self.client
                    .error_for(resp, &format!("upload of {}", desc.digest))
                    .await
            }
            Err(e) => e,
        };
        if self.exists(desc).await.unwrap_or(false) {
            tracing::debug!("{error}; but the registry has {}", desc.digest);
            return Ok(());
        }
        RegistryUpload::cancel(self, session).await;
        Err(error)
    }

    /// The referrers of `subject` by the tag schema (`sha256-<hex>`), for registries without
    /// the referrers API (such as Distribution 2.8).
    async fn fallback_referrers(
        &self,
        subject: &Descriptor,
    ) -> Result<Option<(Descriptor, Index)>> {
        let tag = referrers_tag(&subject.digest);
        let desc = match self.resolve(&tag).await {
            Ok(d) => d,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let bytes = crate::content::read_manifest(self, &desc).await?;
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| Error::InvalidManifest {
            context: format!(" referrers index {tag}"),
            reason: e.to_string(),
        })?;
        Ok(Some((desc, index)))
    }

    /// Adds `referrer` to the tag-schema referrers index of `subject`.
    async fn add_fallback_referrer(
        &self,
        subject: &Descriptor,
        referrer: Descriptor,
    ) -> Result<()> {
        // The index is rewritten from what the origin holds: a mirror's copy may be stale.
        let mut index = match self.origin().fallback_referrers(subject).await? {
            Some((_, index)) => index,
            None => Index::new(),
        };
        if index.manifests.iter().any(|m| m.digest == referrer.digest) {
            return Ok(());
        }
        index.manifests.push(referrer);
        let bytes = Bytes::from(serde_json::to_vec(&index).expect("index serializes"));
        let desc = Descriptor::of(media_type::OCI_INDEX, &bytes);
        self.put_manifest(&desc, bytes, &referrers_tag(&subject.digest))
            .await
            .map(|_| ())
    }

    /// PUTs a manifest; returns whether the registry said it processed its subject.
    async fn put_manifest(&self, desc: &Descriptor, bytes: Bytes, target: &str) -> Result<bool> {
        desc.digest.verify(&bytes)?;
        let req = self
            .request(Method::PUT, &format!("manifests/{target}"), Access::Push)
            .header(CONTENT_TYPE, &desc.media_type)
            .body(bytes);
        let resp = self.client.send(&req).await?;
        if !resp.status().is_success() {
            return Err(self
                .client
                .error_for(resp, &format!("manifest {target}"))
                .await);
        }
        if let Some(d) =
            header(&resp, "docker-content-digest").and_then(|d| d.parse::<Digest>().ok())
        {
            if d != desc.digest {
                return Err(Error::Protocol(format!(
                    "pushed manifest {} but the registry stored it as {d}",
                    desc.digest
                )));
            }
        }
        Ok(resp.headers().contains_key("oci-subject"))
    }

    /// Lists the repositories of the registry (`_catalog`), following `Link` pagination.
    pub async fn catalog(client: &Arc<Client>, last: Option<&str>) -> Result<Vec<String>> {
        let mut url = client.url("_catalog");
        if let Some(l) = last {
            url.query_pairs_mut().append_pair("last", l);
        }
        list_pages(client, url, None, "repositories", "the repository catalog").await
    }
}

/// GETs `url` and each page its `Link: <...>; rel="next"` points to, and collects the list of
/// strings under `field` of each JSON page (missing or null: none). `scope` is the repository
/// the token is for; `what` names the list in errors.
async fn list_pages(
    client: &Client,
    mut url: reqwest::Url,
    scope: Option<&str>,
    field: &str,
    what: &str,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut pages = Pages::new(client.url(""));
    loop {
        let req = Request::new(Method::GET, url.clone(), scope, Access::Pull);
        let resp = client.send(&req).await?;
        if !resp.status().is_success() {
            return Err(client.error_for(resp, what).await);
        }
        let link = next_link(&resp);
        let body = client::read_capped(resp, 16 << 20)
            .await
            .map_err(|e| client.connect_error(e))?;
        let not_json = |e: serde_json::Error| Error::Protocol(format!("{what}: not JSON: {e}"));
        let mut page: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&body).map_err(not_json)?;
        let items = page.remove(field).unwrap_or_default();
        let items: Option<Vec<String>> = serde_json::from_value(items).map_err(not_json)?;
        out.extend(items.unwrap_or_default());
        match pages.next(&url, link.as_deref(), out.len(), what)? {
            Some(u) => url = u,
            None => return Ok(out),
        }
    }
}

/// Most pages one listing follows, and most names it collects: a registry that paginates
/// forever ends in an error rather than in memory exhaustion.
const MAX_PAGES: usize = 100_000;
const MAX_NAMES: usize = 1_000_000;

/// The pages a listing has read, to vet where its `Link` sends it next.
struct Pages {
    /// The registry's base URL: the next page must be on its origin (the request carries the
    /// registry's credentials).
    base: reqwest::Url,
    seen: std::collections::HashSet<reqwest::Url>,
}

impl Pages {
    fn new(base: reqwest::Url) -> Self {
        Pages {
            base,
            seen: Default::default(),
        }
    }

    /// The page after `current` (which `link`, its `rel="next"`, points to) once `names` were
    /// collected; `None` at the end. Refuses another origin, a page already read (a loop) and
    /// a listing past the caps.
    fn next(
        &mut self,
        current: &reqwest::Url,
        link: Option<&str>,
        names: usize,
        what: &str,
    ) -> Result<Option<reqwest::Url>> {
        self.seen.insert(current.clone());
        let Some(link) = link else {
            return Ok(None);
        };
        let Ok(next) = current.join(link) else {
            tracing::debug!("{what}: ignoring a next link that is not a URL: {link:?}");
            return Ok(None);
        };
        if next.origin() != self.base.origin() {
            return Err(Error::Protocol(format!(
                "{what}: the registry's next page is on another origin ({}); refusing to send \
                 credentials there",
                client::redact(&next)
            )));
        }
        if self.seen.contains(&next) {
            return Err(Error::Protocol(format!(
                "{what}: the registry's next page is one already read ({}): its pagination loops",
                client::redact(&next)
            )));
        }
        if self.seen.len() >= MAX_PAGES || names >= MAX_NAMES {
            return Err(Error::Protocol(format!(
                "{what}: more than {MAX_PAGES} pages or {MAX_NAMES} names; stopped (pass --last \
                 to list from a later name)"
            )));
        }
        Ok(Some(next))
    }
}

/// The tag that holds the referrers of `digest` where the referrers API is missing.
pub fn referrers_tag(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm(), digest.hex())
}

#[async_trait]
impl Target for Repository {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        match self
            .blob_descriptor(digest, "application/octet-stream")
            .await
        {
            Ok(d) => Ok(Some(d.size)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn name(&self) -> String {
        format!("{}/{}", self.client.host(), self.name)
    }

    async fn resolve(&self, reference: &str) -> Result<Descriptor> {
        if self.reads.is_some() {
            return self.resolve_by_endpoints(reference).await;
        }
        let req = self
            .request(
                Method::HEAD,
                &format!("manifests/{reference}"),
                Access::Pull,
            )
            .header(ACCEPT, media_type::MANIFEST_ACCEPT);
        let resp = self.client.send(&req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(Error::NotFound {
                what: "manifest",
                name: format!("{}:{reference}", self.name()),
            });
        }
        if !resp.status().is_success() {
            return Err(self
                .client
                .error_for(resp, &format!("manifest {reference}"))
                .await);
        }
        let media = header(&resp, CONTENT_TYPE.as_str())
            .map(|m| m.split(';').next().unwrap_or("").trim().to_string())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| media_type::OCI_MANIFEST.to_string());
        let digest = header(&resp, "docker-content-digest").and_then(|d| d.parse::<Digest>().ok());
        let size = header(&resp, CONTENT_LENGTH.as_str()).and_then(|s| s.parse::<u64>().ok());
        let pinned = reference.parse::<Digest>().ok();
        match (digest, size) {
            (Some(d), Some(size)) => {
                if let Some(p) = &pinned {
                    if p != &d {
                        return Err(Error::DigestMismatch {
                            expected: p.clone(),
                            actual: d,
                        });
                    }
                }
                Ok(Descriptor::new(media, d, size))
            }
            // Without the headers, fetch the manifest and hash it ourselves.
            _ => {
                let req = self
                    .request(Method::GET, &format!("manifests/{reference}"), Access::Pull)
                    .header(ACCEPT, media_type::MANIFEST_ACCEPT);
                let resp = self.client.send(&req).await?;
                if !resp.status().is_success() {
                    return Err(self
                        .client
                        .error_for(resp, &format!("manifest {reference}"))
                        .await);
                }
                let body = client::read_capped(resp, MAX_MANIFEST_SIZE as usize + 1)
                    .await
                    .map_err(|e| self.client.connect_error(e))?;
                if body.len() as u64 > MAX_MANIFEST_SIZE {
                    return Err(Error::InvalidManifest {
                        context: format!(" {reference}"),
                        reason: "over the 4 MiB limit".into(),
                    });
                }
                let d = Descriptor::of(media, &body);
                if let Some(p) = pinned {
                    if p != d.digest {
                        return Err(Error::DigestMismatch {
                            expected: p,
                            actual: d.digest,
                        });
                    }
                }
                Ok(d)
            }
        }
    }

    async fn resolve_for_write(&self, reference: &str) -> Result<Descriptor> {
        self.origin().resolve(reference).await
    }

    async fn fetch(&self, desc: &Descriptor) -> Result<ByteStream> {
        if desc.size == 0 {
            return Ok(crate::content::once(Bytes::new()));
        }
        self.read_blob(desc, 0, desc.size).await
    }

    async fn fetch_manifest(&self, desc: &Descriptor) -> Result<ByteStream> {
        if self.reads.is_some() {
            return self.fetch_manifest_by_endpoints(desc).await;
        }
        let req = self
            .request(
                Method::GET,
                &format!("manifests/{}", desc.digest),
                Access::Pull,
            )
            .header(ACCEPT, &desc.media_type);
        let resp = self.client.send(&req).await?;
        if !resp.status().is_success() {
            return Err(self
                .client
                .error_for(resp, &format!("manifest {}", desc.digest))
                .await);
        }
        let client = self.client.clone();
        Ok(Box::pin(
            resp.bytes_stream()
                .map(move |r| r.map_err(|e| client.connect_error(e))),
        ))
    }

    async fn fetch_range(&self, desc: &Descriptor, offset: u64, len: u64) -> Result<ByteStream> {
        let end = offset.saturating_add(len).min(desc.size);
        if offset >= end {
            return Ok(crate::content::once(Bytes::new()));
        }
        self.read_blob(desc, offset, end).await
    }

    async fn exists(&self, desc: &Descriptor) -> Result<bool> {
        let req = self.request(Method::HEAD, &Self::content_path(desc), Access::Pull);
        let resp = self.client.send(&req).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.client.error_for(resp, &desc.digest.to_string()).await),
        }
    }

    async fn push(&self, desc: &Descriptor, content: ByteStream) -> Result<()> {
        if desc.is_manifest() {
            let bytes = crate::content::collect(desc, content, MAX_MANIFEST_SIZE).await?;
            return self.push_manifest(desc, bytes, None).await;
        }
        let url = self
            .start_upload(None)
            .await?
            .expect("a plain upload start is a session");
        self.put_upload(url, desc, content).await
    }

    /// For a small blob, one request both asks whether it is here and opens the upload if
    /// not: a mount from this very repository is answered 201 when the blob is here and 202
    /// with a session otherwise (what the spec asks of registries that cannot mount). That
    /// saves a HEAD per blob, which is most of the cost of pushing many small files. Larger
    /// blobs are asked for with a HEAD first: a registry that answers every mount with 202
    /// must not make us upload them again.
    async fn push_missing(
        &self,
        desc: &Descriptor,
        mount_from: Option<&str>,
        content: OpenContent<'_>,
    ) -> Result<bool> {
        if desc.is_manifest() {
            if self.exists(desc).await? {
                return Ok(true);
            }
            return self.push(desc, content().await?).await.map(|()| false);
        }
        let ask_by_mount = mount_from.is_none() && desc.size <= ASK_BY_MOUNT_MAX;
        if !ask_by_mount && self.exists(desc).await? {
            return Ok(true);
        }
        let mount = if ask_by_mount {
            Some(self.name.as_str())
        } else {
            mount_from
        };
        let url = match mount {
            None => None,
            Some(from) => match self.start_upload(Some((&desc.digest, from))).await {
                Ok(None) => {
                    if mount_from.is_some() {
                        tracing::debug!("mounted {} from {from}", desc.digest);
                    }
                    return Ok(true);
                }
                Ok(Some(url)) => Some(url),
                // Another repository: any failure (e.g. no pull access there) means copying.
                Err(e) if mount_from.is_some() => {
                    tracing::debug!("mounting {} from {from} failed ({e}); copying", desc.digest);
                    None
                }
                // A registry that refuses mount requests outright: ask, then upload plainly.
                Err(e) if refuses_mount(&e) => {
                    if self.exists(desc).await? {
                        return Ok(true);
                    }
                    None
                }
                Err(e) => return Err(e),
            },
        };
        let url = match url {
            Some(url) => url,
            None => self
                .start_upload(None)
                .await?
                .expect("a plain upload start is a session"),
        };
        self.put_upload(url, desc, content().await?).await?;
        Ok(false)
    }

    async fn transfers_at_once(&self, way: Way, requested: usize) -> usize {
        // Asked of where the transfers go: reads may never touch the origin (it may be down).
        let at = match (way, &self.reads) {
            (Way::Read, Some(reads)) => reads.first_blob_endpoint(),
            _ => self,
        };
        if way == Way::Write {
            let (at_once, ()) = tokio::join!(
                at.client.transfers_at_once(requested),
                at.client.open_upload_connections()
            );
            return at_once;
        }
        at.client.transfers_at_once(requested).await
    }

    async fn begin_upload(&self) -> Result<Option<Box<dyn Upload>>> {
        let url = self
            .start_upload(None)
            .await?
            .expect("a plain upload start is a session");
        Ok(Some(Box::new(RegistryUpload {
            repo: self.clone(),
            url: Some(url),
        })))
    }

    async fn push_manifest(
        &self,
        desc: &Descriptor,
        bytes: Bytes,
        tag: Option<&str>,
    ) -> Result<()> {
        let target = tag
            .map(str::to_string)
            .unwrap_or_else(|| desc.digest.to_string());
        let subject = if bytes.windows(10).any(|w| w == b"\"subject\":") {
            Manifest::parse(&bytes, Some(&desc.media_type)).ok()
        } else {
            None
        };
        let processed = self.put_manifest(desc, bytes, &target).await?;
        let keep_index = match self.client.referrers_capability() {
            ReferrersCapability::Auto => !processed,
            ReferrersCapability::Api => false,
            ReferrersCapability::Tag => true,
        };
        if let Some(m) = subject {
            if let (Some(subject), true) = (&m.subject, keep_index) {
                // No referrers API: keep the tag-schema index up to date instead.
                let mut referrer = desc.clone();
                referrer.artifact_type = m
                    .artifact_type
                    .clone()
                    .or(Some(m.config.media_type.clone()));
                referrer.annotations = m.annotations.clone();
                self.add_fallback_referrer(subject, referrer).await?;
            }
        }
        Ok(())
    }

    async fn tag(&self, desc: &Descriptor, tag: &str) -> Result<()> {
        let bytes = crate::content::read_manifest(self, desc).await?;
        self.put_manifest(desc, bytes, tag).await.map(|_| ())
    }

    async fn referrers(&self, subject: &Descriptor) -> Result<Vec<Descriptor>> {
        if self.reads.is_some() {
            let subject = subject.clone();
            let what = format!("referrers of {}", subject.digest);
            return self
                .read(Lookup::Tag, &what, |r| {
                    let subject = subject.clone();
                    Box::pin(async move { r.referrers(&subject).await })
                })
                .await;
        }
        let capability = self.client.referrers_capability();
        if capability == ReferrersCapability::Tag {
            return Ok(self
                .fallback_referrers(subject)
                .await?
                .map(|(_, i)| i.manifests)
                .unwrap_or_default());
        }
        let req = self
            .request(
                Method::GET,
                &format!("referrers/{}", subject.digest),
                Access::Pull,
            )
            .header(ACCEPT, media_type::OCI_INDEX);
        let resp = self.client.send(&req).await?;
        if resp.status().is_success() {
            let body = client::read_capped(resp, MAX_MANIFEST_SIZE as usize)
                .await
                .map_err(|e| self.client.connect_error(e))?;
            let index: Index = serde_json::from_slice(&body)
                .map_err(|e| Error::Protocol(format!("referrers answer is not an index: {e}")))?;
            return Ok(index.manifests);
        }
        if resp.status() != StatusCode::NOT_FOUND {
            return Err(self
                .client
                .error_for(resp, &format!("referrers of {}", subject.digest))
                .await);
        }
        if capability == ReferrersCapability::Api {
            return Err(Error::Registry {
                registry: self.client.host().to_string(),
                what: format!("referrers of {}", subject.digest),
                path: resp.url().path().to_string(),
                status: 404,
                detail: ": the registry has no referrers API (drop --distribution-spec \
                         v1.1-referrers-api, or use v1.1-referrers-tag)"
                    .into(),
            });
        }
        Ok(self
            .fallback_referrers(subject)
            .await?
            .map(|(_, i)| i.manifests)
            .unwrap_or_default())
    }

    fn location(&self) -> Option<(String, String)> {
        Some((self.client.host().to_string(), self.name.clone()))
    }
}

/// An upload session whose digest comes at the end: the bytes go in one streaming `PATCH`,
/// then an empty `PUT ?digest=` commits them (the registry verifies the digest).
struct RegistryUpload {
    repo: Repository,
    /// The session's current location; `None` once committed.
    url: Option<reqwest::Url>,
}

#[async_trait]
impl Upload for RegistryUpload {
    async fn send(&mut self, content: ByteStream, size: u64) -> Result<()> {
        let url = self.url.clone().expect("not committed yet");
        if let Some(chunk) = self.repo.chunking() {
            let (session, sent) = self.repo.send_chunks(url, content, size, chunk).await;
            self.url = Some(session);
            return sent;
        }
        let resp = self
            .repo
            .send_upload(Method::PATCH, url, None, content, size)
            .await;
        let resp = self.repo.too_large(resp).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.repo.client.error_for(resp, "upload").await);
        }
        let location = header(&resp, LOCATION.as_str())
            .ok_or_else(|| Error::Protocol("upload chunk accepted without a Location".into()))?;
        self.url = Some(self.repo.client.upload_url(&location)?);
        Ok(())
    }

    async fn commit(mut self: Box<Self>, desc: &Descriptor) -> Result<()> {
        let session = self.url.take().expect("committed once");
        let answer = self.repo.commit_upload(session.clone(), desc).await;
        self.repo.settle_commit(session, desc, answer).await
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(url) = self.url.take() {
            RegistryUpload::cancel(&self.repo, url).await;
        }
    }
}

impl RegistryUpload {
    async fn cancel(repo: &Repository, url: reqwest::Url) {
        let req = Request::new(Method::DELETE, url, Some(&repo.name), Access::Push);
        if let Err(e) = repo.client.send(&req).await {
            tracing::debug!("cancelling an upload session: {e}");
        }
    }
}

impl Drop for RegistryUpload {
    fn drop(&mut self) {
        // Abandoned on an error: cancel the session in the background so the registry drops
        // the partial data now rather than at its upload purge (days later).
        let (Some(url), Ok(rt)) = (self.url.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let repo = self.repo.clone();
        rt.spawn(async move { RegistryUpload::cancel(&repo, url).await });
    }
}

/// Why a download attempt was given up: its window brought fewer bytes than the limit asks.
fn slow_error(
    repo: &Repository,
    desc: &Descriptor,
    got: u64,
    waited: Duration,
    limit: SpeedLimit,
) -> Error {
    Error::Other(format!(
        "{} sent {got} bytes of {} in {:.1} s, below the low-speed limit of {} bytes/s \
         (set {} to BYTES_PER_SEC/SECONDS or off to change it)",
        repo.client.host(),
        desc.digest,
        waited.as_secs_f64(),
        limit.bytes_per_sec,
        SpeedLimit::ENV
    ))
}

/// Whether a failed mount request means "this registry does not do mounts" (a 4xx other than
/// auth and rate limiting) rather than a failure to report.
fn refuses_mount(e: &Error) -> bool {
    match e {
        Error::NotFound { .. } => true,
        Error::Registry { status, .. } => {
            (400..500).contains(status) && ![401, 403, 429].contains(status)
        }
        _ => false,
    }
}

fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers().get(name)?.to_str().ok().map(str::to_string)
}

/// The first byte of a `Content-Range: bytes a-b/n` answer.
fn content_range_start(resp: &Response) -> Option<u64> {
    let v = header(resp, CONTENT_RANGE.as_str())?;
    v.strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The `rel="next"` target of a `Link` header.
fn next_link(resp: &Response) -> Option<String> {
    let link = header(resp, "link")?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        s.parse().unwrap()
    }

    #[test]
    fn pagination_follows_relative_links_and_refuses_other_origins_loops_and_floods() {
        let base = url("https://reg.example/v2/");
        let first = url("https://reg.example/v2/r/tags/list");
        let mut pages = Pages::new(base.clone());
        let next = pages
            .next(&first, Some("/v2/r/tags/list?last=a&n=1"), 1, "tags")
            .unwrap()
            .unwrap();
        assert_eq!(
            next.as_str(),
            "https://reg.example/v2/r/tags/list?last=a&n=1"
        );
        assert!(pages.next(&next, None, 2, "tags").unwrap().is_none());

        // Another origin (host, scheme or port) would get the registry's credentials.
        for evil in [
            "https://evil.example/x",
            "http://reg.example/v2/r/tags/list?last=b",
            "https://reg.example:444/v2/r/tags/list?last=b",
        ] {
            let err = Pages::new(base.clone())
                .next(&first, Some(evil), 1, "tags of r")
                .unwrap_err()
                .to_string();
            assert!(err.contains("another origin"), "{evil}: {err}");
        }

        // A page that points to itself, or back to an earlier one, loops.
        let mut pages = Pages::new(base.clone());
        let err = pages
            .next(&first, Some("/v2/r/tags/list"), 1, "tags of r")
            .unwrap_err()
            .to_string();
        assert!(err.contains("loops"), "{err}");
        let mut pages = Pages::new(base.clone());
        let second = pages
            .next(&first, Some("?last=a"), 1, "t")
            .unwrap()
            .unwrap();
        let err = pages.next(&second, Some("list"), 2, "t").unwrap_err();
        assert!(err.to_string().contains("loops"), "{err}");

        // Past the caps.
        let err = Pages::new(base.clone())
            .next(&first, Some("?last=z"), MAX_NAMES, "t")
            .unwrap_err();
        assert!(err.to_string().contains("--last"), "{err}");
        let mut pages = Pages::new(base);
        pages.seen = (0..MAX_PAGES)
            .map(|i| url(&format!("https://reg.example/v2/r/tags/list?last={i}")))
            .collect();
        assert!(pages.next(&first, Some("?last=new"), 5, "t").is_err());
    }
}
