//! Chunked uploads: a blob's bytes in `PATCH` requests of bounded size, each with its inclusive
//! `Content-Range`, each to the newest `Location`, none shorter than the registry's
//! `OCI-Chunk-Min-Length` (but the last). Used with `--chunk-size`, or once a registry refused
//! a whole blob as too large (413).
//!
//! A chunk is read from the content once and held until the registry took it, so a failed
//! `PATCH` (a dropped connection, a 5xx) is resumed from the offset the registry reports
//! (`GET` of the session, its `Range`) without reading the content again: the bytes still to
//! send are in hand, and whoever hashes the content (the caller) saw each byte once. Memory is
//! one chunk per upload, and at most `CHUNK_MEMORY` (256 MiB) for all uploads together.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode, Url};

use super::client::{is_transient_status, Access, Request};
use super::{header, Repository};
use crate::content::ByteStream;
use crate::error::{Error, Result};

/// Chunk size once a registry refused a whole blob (413) and none was asked for.
pub const DEFAULT_CHUNK: u64 = 16 << 20;
/// The largest chunk held in memory, whatever the flag or a registry's minimum says.
const MAX_CHUNK: u64 = 256 << 20;
/// What the chunks of all uploads in the process may hold at once, in KiB: an upload waits for
/// room before it reads its next chunk, so `--concurrency` × `--chunk-size` cannot exhaust
/// memory. At least `MAX_CHUNK`, so that any one chunk fits.
const CHUNK_MEMORY_KIB: usize = (MAX_CHUNK >> 10) as usize;
static CHUNK_MEMORY: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CHUNK_MEMORY_KIB);

impl Repository {
    /// Bytes per chunk, if uploads go in chunks.
    pub(super) fn chunking(&self) -> Option<u64> {
        Some(self.chunk_size.load(Ordering::Relaxed)).filter(|&c| c > 0)
    }

    /// Keeps the `OCI-Chunk-Min-Length` an upload answer announces (sessions and chunks).
    pub(super) fn learn_chunk_min(&self, resp: &Response) {
        if let Some(m) =
            header(resp, "oci-chunk-min-length").and_then(|v| v.trim().parse::<u64>().ok())
        {
            self.chunk_min.store(m, Ordering::Relaxed);
        }
    }

    /// Turns a 413 answer to a whole-blob request into an error that has the blob sent again
    /// (`copy_blob` retries it), in chunks from now on for this repository.
    pub(super) async fn too_large(&self, answer: Result<Response>) -> Result<Response> {
        match answer {
            Ok(resp) if resp.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                let _ = self.chunk_size.compare_exchange(
                    0,
                    DEFAULT_CHUNK,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                let mut e = self.client.error_for(resp, "upload").await;
                if let Error::Registry { detail, .. } = &mut e {
                    detail.push_str(" (the blob is sent again in chunks)");
                }
                tracing::warn!("{e}");
                Err(e)
            }
            other => other,
        }
    }

    /// Sends `content` (`size` bytes) into the upload session at `url` in chunks of about
    /// `chunk` bytes. Returns the session's newest location (to commit, or to cancel after a
    /// failure) and the outcome.
    pub(super) async fn send_chunks(
        &self,
        url: Url,
        mut content: ByteStream,
        size: u64,
        chunk: u64,
    ) -> (Url, Result<()>) {
        let mut session = url;
        let mut carry = Bytes::new();
        // What the registry has; the chunk in hand is bytes `start..start + data.len()`.
        let mut at = 0u64;
        let (mut start, mut data) = (0u64, Bytes::new());
        // The chunk in hand's share of `CHUNK_MEMORY`.
        let mut held = None;
        let mut failures = 0u32;
        // The chunk in hand was refused once for an expired token (401): sent again once.
        let mut reauthed = false;
        while at < size {
            let end = start + data.len() as u64;
            if at >= end {
                let min = self.chunk_min.load(Ordering::Relaxed);
                let want = chunk.max(min).min(MAX_CHUNK).min(size - at);
                // The last chunk's room is given back first: an upload never waits holding some.
                drop((std::mem::take(&mut data), held.take()));
                let kib = want.div_ceil(1024) as u32;
                held = Some(CHUNK_MEMORY.acquire_many(kib).await.expect("never closed"));
                data = match take(&mut content, &mut carry, want, at).await {
                    Ok(d) => d,
                    Err(e) => return (session, Err(e)),
                };
                start = at;
                continue;
            }
            if at < start {
                let e = Error::Protocol(format!(
                    "the registry lost bytes of an upload it had accepted (it has {at}, had \
                     {start}); push again"
                ));
                return (session, Err(e));
            }
            let body = data.slice((at - start) as usize..);
            let failed = match self.send_chunk(&session, body, at).await {
                Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                    let Some(location) = header(&resp, "location") else {
                        let e = Error::Protocol("upload chunk accepted without a Location".into());
                        return (session, Err(e));
                    };
                    session = match self.client.upload_url(&location) {
                        Ok(u) => u,
                        Err(e) => return (session, Err(e)),
                    };
                    self.learn_chunk_min(&resp);
                    at = end;
                    failures = 0;
                    reauthed = false;
                    continue;
                }
                Ok(resp) if resp.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    let mut e = self.client.error_for(resp, "upload chunk").await;
                    if let Error::Registry { detail, .. } = &mut e {
                        detail.push_str(&format!(
                            " (a chunk of {} bytes is too large for it: use a smaller \
                             --chunk-size)",
                            end - at
                        ));
                    }
                    return (session, Err(e));
                }
                Ok(resp)
                    if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE
                        || is_transient_status(resp.status()) =>
                {
                    self.client.error_for(resp, "upload chunk").await
                }
                Ok(resp) => {
                    let e = self.client.error_for(resp, "upload chunk").await;
                    return (session, Err(e));
                }
                Err(e) if e.is_transient() => e,
                // A token that expired mid-upload (`send_stream` forgot it): the chunk is in
                // hand, so it goes again with a new token instead of the whole blob.
                Err(e @ Error::Unauthorized { .. }) if !reauthed => {
                    tracing::debug!("{e}; sending the chunk again with a new token");
                    reauthed = true;
                    continue;
                }
                Err(e) => return (session, Err(e)),
            };
            // Resume from what the registry has, after the usual back-off.
            let policy = self.client.retry_policy();
            failures += 1;
            if failures >= policy.attempts {
                return (session, Err(failed));
            }
            let wait = policy.delay(failures - 1, None);
            tracing::warn!("{failed}; resuming the upload at what the registry has in {wait:?}");
            tokio::time::sleep(wait).await;
            match self.upload_status(&session).await {
                Ok((has, location)) => {
                    if has > end {
                        let e = Error::Protocol(format!(
                            "the registry claims {has} bytes of an upload sent up to {end}"
                        ));
                        return (session, Err(e));
                    }
                    at = has;
                    if let Some(l) = location {
                        session = l;
                    }
                }
                // A session the registry gave up (Distribution cancels one whose PATCH broke
                // off mid-body): the failure stands, and the caller sends the blob again.
                Err(e) => {
                    tracing::debug!("{e}");
                    return (session, Err(failed));
                }
            }
        }
        (session, Ok(()))
    }

    /// One `PATCH` of `body`, the bytes from `at` on.
    async fn send_chunk(&self, session: &Url, body: Bytes, at: u64) -> Result<Response> {
        let len = body.len() as u64;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        let range = format!("{at}-{}", at + len - 1);
        headers.insert(
            CONTENT_RANGE,
            HeaderValue::from_str(&range).expect("digits and a dash"),
        );
        self.client
            .send_stream(
                Method::PATCH,
                session.clone(),
                &self.name,
                headers,
                reqwest::Body::from(body),
            )
            .await
    }

    /// How many bytes an upload session holds (its `Range: 0-<last>`), and its new location.
    async fn upload_status(&self, session: &Url) -> Result<(u64, Option<Url>)> {
        let req = Request::new(Method::GET, session.clone(), Some(&self.name), Access::Push);
        let resp = self.client.send(&req).await?;
        if !resp.status().is_success() {
            return Err(self.client.error_for(resp, "upload status").await);
        }
        let has = header(&resp, "range")
            .and_then(|r| {
                let (_, last) = r.trim().trim_start_matches("bytes=").split_once('-')?;
                last.trim().parse::<u64>().ok()
            })
            // `0-0` is how Distribution says "nothing yet" (one byte cannot be told apart).
            .map_or(0, |last| if last == 0 { 0 } else { last + 1 });
        let location = match header(&resp, "location") {
            Some(l) => Some(self.client.upload_url(&l)?),
            None => None,
        };
        Ok((has, location))
    }
}

/// The next `want` bytes of `content` (after what `carry` holds from its last item), in one
/// buffer; `at` is where they start, for the message if the content ends early.
async fn take(content: &mut ByteStream, carry: &mut Bytes, want: u64, at: u64) -> Result<Bytes> {
    let want = want as usize;
    if carry.len() >= want {
        return Ok(carry.split_to(want));
    }
    let mut buf = BytesMut::with_capacity(want);
    buf.extend_from_slice(carry);
    *carry = Bytes::new();
    while buf.len() < want {
        match content.next().await {
            Some(Ok(mut b)) => {
                let need = want - buf.len();
                if b.len() > need {
                    *carry = b.split_off(need);
                }
                buf.extend_from_slice(&b);
            }
            Some(Err(e)) => return Err(e),
            None => {
                return Err(Error::Other(format!(
                    "the content ended after {} bytes, short of its size (did the file \
                     change while it was pushed?)",
                    at + buf.len() as u64
                )))
            }
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(parts: &[&'static [u8]]) -> ByteStream {
        let items: Vec<Result<Bytes>> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures_util::stream::iter(items))
    }

    #[tokio::test]
    async fn take_cuts_chunks_across_stream_items() {
        let mut s = stream_of(&[b"abc", b"defgh", b"ij"]);
        let mut carry = Bytes::new();
        assert_eq!(take(&mut s, &mut carry, 4, 0).await.unwrap(), "abcd");
        assert_eq!(take(&mut s, &mut carry, 2, 4).await.unwrap(), "ef");
        assert_eq!(take(&mut s, &mut carry, 4, 6).await.unwrap(), "ghij");
        let short = take(&mut s, &mut carry, 1, 10).await.unwrap_err();
        assert!(short.to_string().contains("after 10 bytes"), "{short}");
    }
}
