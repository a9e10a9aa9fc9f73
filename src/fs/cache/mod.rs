//! The block cache of remote blobs: an in-memory LRU of blocks over an on-disk cache keyed by
//! digest (so it is never stale and later mounts share it), filled by HTTP Range requests.
//!
//! - A blob is cut into aligned blocks of [`BLOCK`] bytes; a read waits only for its blocks.
//! - Concurrent readers of one block share one fetch (in-flight blocks carry a channel).
//! - Small blobs (≤ [`SMALL_BLOB`]) are fetched whole and verified before any byte is served.
//!   Large blobs are verified as soon as every block has arrived; until then, bytes are served
//!   unverified (a range cannot be checked against a whole-blob digest). A mismatch evicts the
//!   blob everywhere and every later read of it fails with EIO.
//! - Disk use, partial files included, is bounded by evicting least recently used files (not
//!   those being filled). A blob larger than the bound, or one that cannot be stored (disk
//!   full), is served from the network and the memory LRU without being cached on disk.
//! - Several processes may share one cache directory: see [`disk`].
//! - A block whose request makes no progress for [`read_deadline`] fails its readers, and
//!   later readers of it fail at once until that request ends (the kernel retries a failed
//!   read at once: it must not wait the whole deadline again).
//!
//! Here: the cache and its entry points (`read`, `materialize`, `copy_to`). One blob's state
//! and bitmap, and reading its bytes: `blob`. Range requests and blocks landing: `fetch`.
//! Hashing, publishing and poisoning: `verify`. Writing within the disk bound and eviction:
//! `store`. The cache directory shared by processes: `disk`. Its complete blobs as `pull`
//! reads and fills them: `stash`.

mod blob;
mod disk;
mod fetch;
mod stash;
mod store;
mod verify;

pub use stash::DiskBlobs;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use lru::LruCache;

use crate::content::{ByteStream, Target, Way};
use crate::digest::Digest;
use crate::fs::paths::{private_dir, private_options};
use crate::manifest::Descriptor;
use blob::{wait_block, Blob};

/// The unit of fetching and caching.
/// Small, so a random reader's miss costs little more than its page (64 KiB per 4 KiB read);
/// sequential readers are not slowed by it: their runs of blocks still go as one request.
pub const BLOCK: u64 = 64 * 1024;
/// Blobs up to this size are fetched whole and verified before use.
pub const SMALL_BLOB: u64 = 4 * 1024 * 1024;
/// The largest single Range request; larger windows become several concurrent requests.
pub const MAX_REQUEST: u64 = 8 * 1024 * 1024;
/// Room kept below the disk bound for block maps and the filesystem's own blocks, which
/// blocks written are not counted with.
const BOUND_SLACK: u64 = 64 * 1024;
/// The documented bound of a read, unless `ORAS_FS_READ_DEADLINE_SECS` says otherwise.
pub const DEFAULT_READ_DEADLINE: Duration = Duration::from_secs(60);

/// The longest a read may wait: `ORAS_FS_READ_DEADLINE_SECS` (for tests), else 60 s. Read once.
pub fn read_deadline() -> Duration {
    static DEADLINE: OnceLock<Duration> = OnceLock::new();
    *DEADLINE.get_or_init(|| {
        std::env::var("ORAS_FS_READ_DEADLINE_SECS")
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(DEFAULT_READ_DEADLINE)
    })
}

pub use super::error::Errno;

#[derive(Clone, Debug)]
pub struct CacheOptions {
    pub dir: PathBuf,
    /// Bound of the disk cache, in bytes.
    pub disk_limit: u64,
    /// Bound of the in-memory block cache, in bytes.
    pub memory_limit: u64,
}

pub struct BlobCache {
    source: Arc<dyn Target>,
    options: CacheOptions,
    blobs: Mutex<HashMap<Digest, Arc<Blob>>>,
    memory: Mutex<LruCache<(u64, u64), Bytes>>,
    memory_slots: u64,
    poisoned: Mutex<HashSet<Digest>>,
    next_id: AtomicU64,
    /// Bytes on disk as last counted, plus blocks written since: when a write would cross
    /// the bound, the cache evicts, and stops storing that blob if that is not enough.
    usage: AtomicU64,
    /// `usage` as the last count of the directory found it (see `recount_if_due`).
    counted: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// See [`read_deadline`]; in milliseconds, settable for tests.
    deadline_ms: AtomicU64,
    /// Bytes fetched from the source, for statistics and tests.
    pub fetched: AtomicU64,
    /// Background fetches of whole files a tree walk reads next: at most this many at once,
    /// as many as `pull` runs from the source (more over HTTP/2); set by the first of them.
    walk_permits: tokio::sync::OnceCell<(Arc<tokio::sync::Semaphore>, usize)>,
}

impl BlobCache {
    pub fn new(source: Arc<dyn Target>, options: CacheOptions) -> std::io::Result<Arc<BlobCache>> {
        for sub in [
            "blobs/sha256",
            "partial/sha256",
            "unpacked/sha256",
            "indexes/sha256",
        ] {
            private_dir(&options.dir.join(sub))?;
        }
        let slots = (options.memory_limit / BLOCK).max(1);
        let cache = Arc::new(BlobCache {
            source,
            memory: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(slots as usize).expect("max(1)"),
            )),
            memory_slots: slots,
            options,
            blobs: Mutex::new(HashMap::new()),
            poisoned: Mutex::new(HashSet::new()),
            next_id: AtomicU64::new(1),
            usage: AtomicU64::new(0),
            counted: AtomicU64::new(0),
            last_error: Mutex::new(None),
            deadline_ms: AtomicU64::new(read_deadline().as_millis() as u64),
            fetched: AtomicU64::new(0),
            walk_permits: tokio::sync::OnceCell::new(),
        });
        cache.enforce_disk_limit();
        disk::remove_stale_temporaries(&cache.options.dir.join("unpacked/sha256"));
        Ok(cache)
    }

    pub fn source(&self) -> &Arc<dyn Target> {
        &self.source
    }

    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    /// The last problem the cache met that the user should hear of (a blob served without
    /// caching, a verification failure), for `oras-fs status`.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }

    /// Overrides [`read_deadline`] for this cache (tests).
    pub fn set_read_deadline(&self, deadline: Duration) {
        self.deadline_ms
            .store(deadline.as_millis() as u64, Ordering::Relaxed);
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms.load(Ordering::Relaxed))
    }

    /// Logs a problem and keeps it as the last error.
    fn note(&self, message: String) {
        // Kept first: on a full disk the log may not take it.
        *self.last_error.lock().unwrap() = Some(message.clone());
        tracing::warn!("{message}");
    }

    fn paths(&self, digest: &Digest) -> (PathBuf, PathBuf) {
        let alg = digest.algorithm();
        let hex = digest.hex();
        let dir = &self.options.dir;
        (
            dir.join("blobs").join(alg).join(hex),
            dir.join("partial").join(alg).join(hex),
        )
    }

    /// Reads `len` bytes at `offset` of a blob. `prefetch` is a byte range the caller expects
    /// to read next; it is fetched in the background.
    pub async fn read(
        self: &Arc<Self>,
        desc: &Descriptor,
        offset: u64,
        len: u64,
        prefetch: Range<u64>,
    ) -> Result<Bytes, Errno> {
        let end = offset.saturating_add(len).min(desc.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let blob = self.blob(desc)?;
        self.verify_if_complete(&blob).await?;
        blob.touch();
        let need = if desc.size <= SMALL_BLOB {
            0..blob.blocks
        } else {
            offset / BLOCK..(end - 1) / BLOCK + 1
        };
        let pre = self.prefetch_blocks(&blob, prefetch, need.end);
        // A block of an uncached blob may fall out of memory between its arrival and this
        // read's copy of it: then it is fetched again.
        for _ in 0..3 {
            for wait in self.ensure(&blob, need.clone(), pre.clone()) {
                wait_block(wait, self.deadline()).await?;
            }
            // Once every block of a large blob is in, reads wait for its verification, so a
            // whole-file reader (cat, cp) of corrupt content gets EIO before EOF, whichever of
            // its concurrent reads completes the blob.
            if desc.size > SMALL_BLOB {
                self.verify_if_complete(&blob).await?;
                if need.end == blob.blocks && blob.uncached() {
                    // Without a disk copy, the blob can be checked only while its blocks are
                    // in memory: a sequential reader is checked before it sees EOF.
                    self.finish_hash(&blob).await?;
                }
            }
            if self.poisoned.lock().unwrap().contains(&desc.digest) {
                return Err(libc::EIO.into());
            }
            if let Some(bytes) = self.assemble(&blob, offset, end)? {
                return Ok(bytes);
            }
        }
        tracing::error!("reading {}: blocks keep falling out of memory", desc.digest);
        Err(libc::EIO.into())
    }

    /// Starts fetching `range` of a blob in the background (a reader expects to read it
    /// soon; nothing waits for it here).
    pub fn prefetch(self: &Arc<Self>, desc: &Descriptor, range: Range<u64>) -> Result<(), Errno> {
        let blob = self.blob(desc)?;
        let first = range.start.min(desc.size) / BLOCK;
        let pre = self.prefetch_blocks(&blob, range, first);
        drop(self.ensure(&blob, pre.start..pre.start, pre));
        Ok(())
    }

    /// Whether a blob is kept in memory only (its disk copy failed or would not fit), so
    /// that what is fetched ahead of a reader may be gone again before it gets there.
    pub fn is_uncached(&self, desc: &Descriptor) -> bool {
        let blobs = self.blobs.lock().unwrap();
        blobs.get(&desc.digest).is_some_and(|b| b.uncached())
    }

    /// Fetches a whole small blob in the background (a tree walk will read it next), once a
    /// walk permit is free; a reader that gets there first fetches it itself, and this then
    /// finds it present or on its way.
    pub fn prefetch_whole(self: &Arc<Self>, desc: &Descriptor) {
        if self.is_verified(desc) {
            return;
        }
        let (cache, desc) = (self.clone(), desc.clone());
        tokio::spawn(async move {
            let (permits, _) = cache
                .walk_permits
                .get_or_init(|| async {
                    let n = (cache.source)
                        .transfers_at_once(Way::Read, crate::oras::DEFAULT_CONCURRENCY)
                        .await
                        .max(1);
                    (Arc::new(tokio::sync::Semaphore::new(n)), n)
                })
                .await;
            let Ok(_permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let Ok(blob) = cache.blob(&desc) else {
                return;
            };
            // Prefetched blocks of an uncached blob would push out the ones being read; a
            // stored one (a reader got there first) needs nothing.
            if blob.uncached() || blob.stored() {
                return;
            }
            for wait in cache.ensure(&blob, 0..blob.blocks, 0..0) {
                if wait_block(wait, cache.deadline()).await.is_err() {
                    return;
                }
            }
        });
    }

    /// How many whole files a tree walk fetches at once (see `prefetch_whole`).
    pub fn walk_width(&self) -> usize {
        self.walk_permits
            .get()
            .map_or(crate::oras::DEFAULT_CONCURRENCY, |p| p.1)
    }

    /// The blocks of `prefetch` to ask for, for a reader whose blocks end at `need_end`.
    fn prefetch_blocks(&self, blob: &Blob, prefetch: Range<u64>, need_end: u64) -> Range<u64> {
        let size = blob.desc.size;
        let mut pre = prefetch.start.min(size) / BLOCK..prefetch.end.min(size).div_ceil(BLOCK);
        if blob.uncached() {
            // Prefetched blocks live in memory only: don't let them push out the ones read
            // now.
            pre.end = pre.end.min(need_end + (self.memory_slots / 4).max(1));
        }
        pre
    }

    /// Fetches every block of a blob and waits for its verification.
    async fn fill(self: &Arc<Self>, blob: &Arc<Blob>) -> Result<(), Errno> {
        for wait in self.ensure(blob, 0..blob.blocks, 0..0) {
            wait_block(wait, self.deadline()).await?;
        }
        if self.finish_hash(blob).await? {
            Ok(())
        } else {
            Err(libc::EIO.into())
        }
    }

    /// Fetches a whole blob into the cache (verified) and returns the path of its file.
    /// `ENOSPC` if the blob cannot be cached on disk (larger than the bound, or the disk is
    /// full): see [`BlobCache::copy_to`].
    pub async fn materialize(self: &Arc<Self>, desc: &Descriptor) -> Result<PathBuf, Errno> {
        for _ in 0..3 {
            let blob = self.blob(desc)?;
            if blob.uncached() {
                return Err(libc::ENOSPC.into());
            }
            // Request everything at once (in MAX_REQUEST runs), then wait for verification.
            self.fill(&blob).await?;
            if blob.uncached() {
                return Err(libc::ENOSPC.into());
            }
            if blob.complete_path.exists() {
                return Ok(blob.complete_path.clone());
            }
            // Evicted (by another mount sharing the cache) or never published: fetch again.
            self.forget(&blob);
        }
        Err(libc::EIO.into())
    }

    /// Copies a whole blob, verified, to `dest` (created or truncated): from the cache, else
    /// streamed from the source when the blob cannot be cached on disk. Never holds the blob
    /// in memory.
    pub async fn copy_to(self: &Arc<Self>, desc: &Descriptor, dest: &Path) -> Result<(), Errno> {
        let blob = self.blob(desc)?;
        if !blob.uncached() {
            let filled = self.fill(&blob).await;
            // A blob that could not be stored after all is streamed below.
            if filled.is_err() && !blob.uncached() {
                return filled;
            }
        }
        let mut out = private_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(dest)
            .map_err(Errno::from)?;
        if blob.stored() {
            return copy_stored(&blob, out).await;
        }
        let stream = self.source.fetch(desc).await.map_err(|e| {
            tracing::error!("fetching {}: {e}", desc.digest);
            Errno::from(libc::EIO)
        })?;
        let streamed = self.stream_to(&blob, stream, &mut out).await;
        if streamed.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        streamed
    }

    /// Writes what `stream` brings of a blob to `out`, checking it is the blob.
    async fn stream_to(
        &self,
        blob: &Arc<Blob>,
        mut stream: ByteStream,
        out: &mut File,
    ) -> Result<(), Errno> {
        let desc = &blob.desc;
        let mut hasher = desc.digest.digester();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                tracing::error!("fetching {}: {e}", desc.digest);
                Errno::from(libc::EIO)
            })?;
            size += chunk.len() as u64;
            if size > desc.size {
                tracing::error!("fetching {}: more than {} bytes", desc.digest, desc.size);
                return Err(libc::EIO.into());
            }
            hasher.update(&chunk);
            out.write_all(&chunk).map_err(Errno::from)?;
        }
        if size != desc.size {
            tracing::error!("fetching {}: {size} of {} bytes", desc.digest, desc.size);
            return Err(libc::EIO.into());
        }
        if let Err(e) = hasher.check(&desc.digest) {
            self.poison(blob, &e.to_string());
            return Err(libc::EIO.into());
        }
        Ok(())
    }

    /// Takes a local file whose content is known to match `desc` (a staged file just pushed)
    /// into the cache as a complete blob.
    pub fn adopt(&self, desc: &Descriptor, path: &Path) -> std::io::Result<()> {
        let (complete, _) = self.paths(&desc.digest);
        if complete.exists() {
            std::fs::remove_file(path)
        } else {
            std::fs::rename(path, complete)
        }
    }

    /// Whether every byte of a blob is in the cache and verified (the kernel may then keep
    /// its pages across opens).
    pub fn is_verified(&self, desc: &Descriptor) -> bool {
        if self.is_poisoned(&desc.digest) {
            return false;
        }
        if let Some(b) = self.blobs.lock().unwrap().get(&desc.digest) {
            let st = b.state.lock().unwrap();
            // An uncached blob's blocks may be fetched again, unchecked.
            return st.verified && !st.uncached;
        }
        self.paths(&desc.digest).0.exists()
    }

    pub fn is_poisoned(&self, digest: &Digest) -> bool {
        self.poisoned.lock().unwrap().contains(digest)
    }
}

/// Copies a stored blob to `out`, from our descriptor: the file may have been evicted by
/// another mount.
async fn copy_stored(blob: &Arc<Blob>, mut out: File) -> Result<(), Errno> {
    let b = blob.clone();
    tokio::task::spawn_blocking(move || {
        let src = b.file.as_ref().expect("a stored blob has a file");
        let mut buf = vec![0u8; BLOCK as usize];
        let mut at = 0u64;
        while at < b.desc.size {
            let n = (b.desc.size - at).min(BLOCK) as usize;
            src.read_exact_at(&mut buf[..n], at).map_err(Errno::from)?;
            out.write_all(&buf[..n]).map_err(Errno::from)?;
            at += n as u64;
        }
        Ok(())
    })
    .await
    .map_err(|_| Errno::from(libc::EIO))?
}

#[cfg(test)]
mod tests;
