//! A [`Target`] for tests: an in-memory store that counts what is asked of it and can fail,
//! stall or lie on request. The filesystem's semantics are tested over it without a registry
//! or a kernel mount (as mountpoint-s3 tests over its mock client). Part of the library so
//! that integration tests and other crates' tests can use it; nothing else does.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{ByteStream, MemoryStore, Target};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::Descriptor;

/// The operations counted and open to failure injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Resolve,
    Fetch,
    FetchRange,
    Exists,
    Push,
    PushManifest,
    Tag,
}

/// Calls made, and blob bytes served.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: HashMap<Op, u64>,
    /// Bytes served by `fetch` and `fetch_range` (manifests included).
    pub bytes_served: u64,
}

impl Counts {
    pub fn calls(&self, op: Op) -> u64 {
        self.calls.get(&op).copied().unwrap_or(0)
    }
}

#[derive(Default)]
struct Faults {
    /// Fail the next N calls of an operation.
    fail: HashMap<Op, u64>,
    /// Serve these blobs with one byte flipped.
    corrupt: HashSet<Digest>,
    /// Wait this long before answering a fetch.
    delay: Option<Duration>,
    /// What `transfers_at_once` answers, if not what was asked.
    at_once: Option<usize>,
    /// Fetches waiting out `delay` now, and the most at once so far.
    waiting: (usize, usize),
}

/// The store under test doubles: see the module doc.
#[derive(Clone, Default)]
pub struct TestTarget {
    store: Arc<MemoryStore>,
    counts: Arc<Mutex<Counts>>,
    faults: Arc<Mutex<Faults>>,
    bytes: Arc<AtomicU64>,
}

impl TestTarget {
    pub fn new() -> Self {
        Self::default()
    }

    /// The store behind it (to add content without counting).
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// What has been asked so far.
    pub fn counts(&self) -> Counts {
        let mut c = self.counts.lock().unwrap().clone();
        c.bytes_served = self.bytes.load(Ordering::SeqCst);
        c
    }

    /// Forgets the counts (e.g. after setting up).
    pub fn reset_counts(&self) {
        *self.counts.lock().unwrap() = Counts::default();
        self.bytes.store(0, Ordering::SeqCst);
    }

    /// The next `n` calls of `op` fail with a transient error.
    pub fn fail_next(&self, op: Op, n: u64) {
        self.faults.lock().unwrap().fail.insert(op, n);
    }

    /// Serves `digest` with a byte flipped (a registry that lies).
    pub fn corrupt(&self, digest: &Digest) {
        self.faults.lock().unwrap().corrupt.insert(digest.clone());
    }

    /// Delays every fetch and every manifest push by `delay`.
    pub fn delay_fetches(&self, delay: Option<Duration>) {
        self.faults.lock().unwrap().delay = delay;
    }

    /// Answers `transfers_at_once` with `n` (as a registry over HTTP/2 answers more).
    pub fn set_transfers_at_once(&self, n: usize) {
        self.faults.lock().unwrap().at_once = Some(n);
    }

    /// The most fetches that waited out their delay (`delay_fetches`) at once: how many were
    /// in flight together.
    pub fn most_fetches_at_once(&self) -> usize {
        self.faults.lock().unwrap().waiting.1
    }

    /// Counts a call and applies the faults set for it.
    fn call(&self, op: Op) -> Result<()> {
        *self.counts.lock().unwrap().calls.entry(op).or_default() += 1;
        let mut f = self.faults.lock().unwrap();
        match f.fail.get_mut(&op) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(Error::Other(format!("injected failure of {op:?}")))
            }
            _ => Ok(()),
        }
    }

    /// Counts what a stream serves and corrupts it if asked (the first byte of the content).
    async fn serve(&self, desc: &Descriptor, offset: u64, stream: ByteStream) -> ByteStream {
        let (delay, corrupt) = {
            let f = self.faults.lock().unwrap();
            (f.delay, f.corrupt.contains(&desc.digest) && offset == 0)
        };
        if let Some(d) = delay {
            // Counted down when the wait ends, or when a caller gives up on it.
            struct Waiting<'a>(&'a Mutex<Faults>);
            impl Drop for Waiting<'_> {
                fn drop(&mut self) {
                    self.0.lock().unwrap().waiting.0 -= 1;
                }
            }
            let _waiting = {
                let mut f = self.faults.lock().unwrap();
                f.waiting.0 += 1;
                f.waiting.1 = f.waiting.1.max(f.waiting.0);
                Waiting(&self.faults)
            };
            tokio::time::sleep(d).await;
        }
        let bytes = self.bytes.clone();
        let mut first = corrupt;
        Box::pin(stream.map(move |chunk| {
            let chunk = chunk?;
            bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            if first && !chunk.is_empty() {
                first = false;
                let mut v = chunk.to_vec();
                v[0] ^= 0xff;
                return Ok(Bytes::from(v));
            }
            Ok(chunk)
        }))
    }
}

#[async_trait]
impl Target for TestTarget {
    fn name(&self) -> String {
        "test target".into()
    }

    async fn resolve(&self, reference: &str) -> Result<Descriptor> {
        self.call(Op::Resolve)?;
        self.store.resolve(reference).await
    }

    async fn transfers_at_once(&self, _way: super::Way, requested: usize) -> usize {
        self.faults.lock().unwrap().at_once.unwrap_or(requested)
    }

    async fn fetch(&self, desc: &Descriptor) -> Result<ByteStream> {
        self.call(Op::Fetch)?;
        let s = self.store.fetch(desc).await?;
        Ok(self.serve(desc, 0, s).await)
    }

    async fn fetch_range(&self, desc: &Descriptor, offset: u64, len: u64) -> Result<ByteStream> {
        self.call(Op::FetchRange)?;
        let s = self.store.fetch_range(desc, offset, len).await?;
        Ok(self.serve(desc, offset, s).await)
    }

    async fn exists(&self, desc: &Descriptor) -> Result<bool> {
        self.call(Op::Exists)?;
        self.store.exists(desc).await
    }

    async fn push(&self, desc: &Descriptor, content: ByteStream) -> Result<()> {
        self.call(Op::Push)?;
        self.store.push(desc, content).await
    }

    async fn push_manifest(
        &self,
        desc: &Descriptor,
        bytes: Bytes,
        tag: Option<&str>,
    ) -> Result<()> {
        self.call(Op::PushManifest)?;
        let delay = self.faults.lock().unwrap().delay;
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        self.store.push_manifest(desc, bytes, tag).await
    }

    async fn tag(&self, desc: &Descriptor, tag: &str) -> Result<()> {
        self.call(Op::Tag)?;
        self.store.tag(desc, tag).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_fails_and_corrupts_on_request() {
        let t = TestTarget::new();
        let d = t.store().add("application/octet-stream", &b"hello"[..]);
        let got = super::super::read_all(&t, &d, 100).await.unwrap();
        assert_eq!(&got[..], b"hello");
        assert_eq!(t.counts().calls(Op::Fetch), 1);
        assert_eq!(t.counts().bytes_served, 5);
        t.fail_next(Op::Fetch, 1);
        assert!(t.fetch(&d).await.is_err());
        assert!(t.fetch(&d).await.is_ok());
        t.corrupt(&d.digest);
        assert!(super::super::read_all(&t, &d, 100).await.is_err());
    }
}
