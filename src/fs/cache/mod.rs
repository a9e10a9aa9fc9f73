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

mod disk;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use lru::LruCache;
use tokio::sync::watch;

use crate::content::Target;
use crate::digest::{Digest, Digester};
use crate::manifest::Descriptor;

/// The unit of fetching and caching.
pub const BLOCK: u64 = 256 * 1024;
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

/// An errno for the filesystem layer.
pub type Errno = i32;

#[derive(Clone, Debug)]
pub struct CacheOptions {
    pub dir: PathBuf,
    /// Bound of the disk cache, in bytes.
    pub disk_limit: u64,
    /// Bound of the in-memory block cache, in bytes.
    pub memory_limit: u64,
}

/// Progress of one Range request: its blocks land in order, so one number says which are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fill {
    /// Blocks before this index are stored (and readable).
    upto: u64,
    /// The request ended before `upto` reached its end: later blocks will not come.
    failed: bool,
    /// When the request started or last brought a block: the deadline of its readers runs
    /// from here, so a retry of a read that timed out fails at once if nothing came since.
    since: Instant,
}

/// A block to wait for, and the request bringing it.
type Wait = (watch::Receiver<Fill>, u64);

async fn wait_block((mut rx, b): Wait, deadline: Duration) -> Result<(), Errno> {
    loop {
        let since = rx.borrow().since;
        let left = (since + deadline).saturating_duration_since(Instant::now());
        let waited = tokio::time::timeout(left, rx.wait_for(|f| f.upto > b || f.failed))
            .await
            .map(|r| r.map(|fill| *fill));
        let fill = match waited {
            Ok(Ok(fill)) => fill,
            Ok(Err(_)) => return Err(libc::EIO),
            Err(_) => {
                if rx.borrow().since != since {
                    continue;
                }
                tracing::error!("block {b}: no progress for {deadline:?}; the read fails");
                return Err(libc::EIO);
            }
        };
        return if fill.upto > b {
            Ok(())
        } else {
            Err(libc::EIO)
        };
    }
}

struct BlobState {
    /// One bit per block stored in the file.
    present: Vec<u8>,
    present_count: u64,
    /// The whole blob matched its digest.
    verified: bool,
    /// Blocks go to memory only from now on (disk bound reached, disk full, or no file).
    uncached: bool,
    inflight: HashMap<u64, watch::Receiver<Fill>>,
    /// Hashes the blob in order as blocks arrive, so a sequential read is verified the moment
    /// its last block lands (no second pass). `None` while a thread is feeding it.
    hasher: Option<Digester>,
    /// Blocks fed to `hasher` so far (a prefix of the blob).
    hashed: u64,
    /// sha256 of each block hashed while uncached (zeros: not recorded): once the blob is
    /// verified, a block fetched again (it fell out of memory) is checked against it.
    sums: Vec<[u8; 32]>,
}

impl BlobState {
    fn has(&self, b: u64) -> bool {
        self.present[(b / 8) as usize] & (1 << (b % 8)) != 0
    }
    fn set(&mut self, b: u64) {
        if !self.has(b) {
            self.present[(b / 8) as usize] |= 1 << (b % 8);
            self.present_count += 1;
        }
    }
}

struct Blob {
    id: u64,
    /// When the file's mtime (the eviction order) was last set, in seconds since the epoch.
    touched: AtomicU64,
    desc: Descriptor,
    blocks: u64,
    /// The cache file: complete, or a partial one this process fills. `None`: memory only.
    file: Option<File>,
    /// The partial file (open as `file`) while this process fills it (`None` for a blob
    /// found complete).
    partial: Option<disk::Partial>,
    complete_path: PathBuf,
    state: Mutex<BlobState>,
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
    last_error: Mutex<Option<String>>,
    /// See [`read_deadline`]; in milliseconds, settable for tests.
    deadline_ms: AtomicU64,
    /// Bytes fetched from the source, for statistics and tests.
    pub fetched: AtomicU64,
}

fn mkdir_private(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Blob {
    /// Marks a complete blob recently used (at most every 10 s: it costs a syscall).
    fn touch(&self) {
        let now = now_secs();
        if now.saturating_sub(self.touched.load(Ordering::Relaxed)) >= 10 && self.stored() {
            self.touched.store(now, Ordering::Relaxed);
            if let Some(f) = &self.file {
                let _ = f.set_modified(SystemTime::now());
            }
        }
    }

    /// Verified and every block on disk: nothing left to fetch.
    fn stored(&self) -> bool {
        let st = self.state.lock().unwrap();
        st.verified && st.present_count == self.blocks
    }

    fn uncached(&self) -> bool {
        self.state.lock().unwrap().uncached
    }
}

impl BlobCache {
    pub fn new(source: Arc<dyn Target>, options: CacheOptions) -> std::io::Result<Arc<BlobCache>> {
        for sub in ["blobs/sha256", "partial/sha256", "unpacked/sha256"] {
            mkdir_private(&options.dir.join(sub))?;
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
            last_error: Mutex::new(None),
            deadline_ms: AtomicU64::new(read_deadline().as_millis() as u64),
            fetched: AtomicU64::new(0),
        });
        cache.enforce_disk_limit();
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

    fn blob(&self, desc: &Descriptor) -> Result<Arc<Blob>, Errno> {
        if self.poisoned.lock().unwrap().contains(&desc.digest) {
            return Err(libc::EIO);
        }
        let mut blobs = self.blobs.lock().unwrap();
        if let Some(b) = blobs.get(&desc.digest) {
            return Ok(b.clone());
        }
        let (complete_path, partial_path) = self.paths(&desc.digest);
        let blocks = desc.size.div_ceil(BLOCK);
        let map_len = blocks.div_ceil(8).max(1) as usize;
        // Said once the table is unlocked: logging may fail (and panic) on a full disk.
        let mut why_uncached = None;
        let mut state = BlobState {
            present: vec![0u8; map_len],
            present_count: 0,
            verified: false,
            uncached: false,
            inflight: HashMap::new(),
            hasher: Some(desc.digest.digester()),
            hashed: 0,
            sums: Vec::new(),
        };
        let (file, partial) = match File::open(&complete_path) {
            Ok(f) if f.metadata().map(|m| m.len()).ok() == Some(desc.size) => {
                // Mark it recently used for eviction.
                let _ = f.set_modified(SystemTime::now());
                state.present = vec![0xff; map_len];
                state.present_count = blocks;
                state.verified = true;
                state.hasher = None;
                state.hashed = blocks;
                (Some(f), None)
            }
            _ if desc.size > self.options.disk_limit => {
                why_uncached = Some(format!(
                    "{} ({} bytes) is larger than the cache bound ({} bytes): it is read from \
                     the registry without being cached on disk",
                    desc.digest, desc.size, self.options.disk_limit
                ));
                state.uncached = true;
                (None, None)
            }
            _ => match disk::open_partial(&partial_path, desc.size) {
                Ok((f, p)) => {
                    if p.shared {
                        let mut present = vec![0u8; map_len];
                        if let Ok(mut m) = File::open(disk::map_of(&p.path)) {
                            let mut buf = Vec::new();
                            if m.read_to_end(&mut buf).is_ok() && buf.len() == map_len {
                                present = buf;
                            }
                        }
                        for b in 0..blocks {
                            if present[(b / 8) as usize] & (1 << (b % 8)) != 0 {
                                state.set(b);
                            }
                        }
                    }
                    (Some(f), Some(p))
                }
                Err(e) => {
                    why_uncached = Some(format!(
                        "cannot cache {} in {}: {e}; it is read from the registry without \
                         being cached on disk",
                        desc.digest,
                        self.options.dir.display()
                    ));
                    state.uncached = true;
                    (None, None)
                }
            },
        };
        let blob = Arc::new(Blob {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            touched: AtomicU64::new(0),
            desc: desc.clone(),
            blocks,
            file,
            partial,
            complete_path,
            state: Mutex::new(state),
        });
        blobs.insert(desc.digest.clone(), blob.clone());
        drop(blobs);
        if let Some(why) = why_uncached {
            self.note(why);
        }
        Ok(blob)
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
        let mut pre =
            prefetch.start.min(desc.size) / BLOCK..prefetch.end.min(desc.size).div_ceil(BLOCK);
        if blob.uncached() {
            // Prefetched blocks live in memory only: don't let them push out the ones read
            // now.
            pre.end = pre.end.min(need.end + (self.memory_slots / 4).max(1));
        }
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
                return Err(libc::EIO);
            }
            if let Some(bytes) = self.assemble(&blob, offset, end)? {
                return Ok(bytes);
            }
        }
        tracing::error!("reading {}: blocks keep falling out of memory", desc.digest);
        Err(libc::EIO)
    }

    /// Once every block of a blob is on disk, waits until it is verified: at once for a blob
    /// whose blocks all arrived in an earlier mount, else when the thread hashing it is done.
    async fn verify_if_complete(self: &Arc<Self>, blob: &Arc<Blob>) -> Result<(), Errno> {
        let pending = {
            let st = blob.state.lock().unwrap();
            !st.verified && st.present_count == blob.blocks
        };
        if pending && !self.finish_hash(blob).await? {
            return Err(libc::EIO);
        }
        Ok(())
    }

    /// Hashes what is left of a blob (from memory or the file) and waits until it is
    /// verified, whichever thread does the hashing. `Ok(false)`: blocks it needs are neither
    /// on disk nor in memory (an uncached blob read out of order), so it stays unverified.
    async fn finish_hash(self: &Arc<Self>, blob: &Arc<Blob>) -> Result<bool, Errno> {
        // Bounded like a read: a hasher that never comes back must not hold readers forever.
        let until = Instant::now() + self.deadline();
        while Instant::now() < until {
            let (cache, b) = (self.clone(), blob.clone());
            tokio::task::spawn_blocking(move || cache.advance_hash(&b, None))
                .await
                .map_err(|_| libc::EIO)??;
            {
                let st = blob.state.lock().unwrap();
                if st.verified {
                    return Ok(true);
                }
                if st.hasher.is_some() {
                    // Idle, yet not done: the next block is not available.
                    return Ok(false);
                }
            }
            if self.is_poisoned(&blob.desc.digest) {
                return Err(libc::EIO);
            }
            // Another thread holds the hasher: it finishes the job.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(libc::EIO)
    }

    /// Fetches every block of a blob and waits for its verification.
    async fn fill(self: &Arc<Self>, blob: &Arc<Blob>) -> Result<(), Errno> {
        for wait in self.ensure(blob, 0..blob.blocks, 0..0) {
            wait_block(wait, self.deadline()).await?;
        }
        if self.finish_hash(blob).await? {
            Ok(())
        } else {
            Err(libc::EIO)
        }
    }

    /// Fetches a whole blob into the cache (verified) and returns the path of its file.
    /// `ENOSPC` if the blob cannot be cached on disk (larger than the bound, or the disk is
    /// full): see [`BlobCache::copy_to`].
    pub async fn materialize(self: &Arc<Self>, desc: &Descriptor) -> Result<PathBuf, Errno> {
        for _ in 0..3 {
            let blob = self.blob(desc)?;
            if blob.uncached() {
                return Err(libc::ENOSPC);
            }
            // Request everything at once (in MAX_REQUEST runs), then wait for verification.
            self.fill(&blob).await?;
            if blob.uncached() {
                return Err(libc::ENOSPC);
            }
            if blob.complete_path.exists() {
                return Ok(blob.complete_path.clone());
            }
            // Evicted (by another mount sharing the cache) or never published: fetch again.
            self.forget(&blob);
        }
        Err(libc::EIO)
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
        let os = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dest)
            .map_err(os)?;
        if blob.stored() {
            let b = blob.clone();
            return tokio::task::spawn_blocking(move || {
                // From our descriptor: the file may have been evicted by another mount.
                let src = b.file.as_ref().expect("a stored blob has a file");
                let mut buf = vec![0u8; BLOCK as usize];
                let mut at = 0u64;
                while at < b.desc.size {
                    let n = (b.desc.size - at).min(BLOCK) as usize;
                    src.read_exact_at(&mut buf[..n], at).map_err(os)?;
                    out.write_all(&buf[..n]).map_err(os)?;
                    at += n as u64;
                }
                Ok(())
            })
            .await
            .map_err(|_| libc::EIO)?;
        }
        let mut stream = self.source.fetch(desc).await.map_err(|e| {
            tracing::error!("fetching {}: {e}", desc.digest);
            libc::EIO
        })?;
        let mut hasher = desc.digest.digester();
        let mut size = 0u64;
        let fail = |errno| {
            let _ = std::fs::remove_file(dest);
            Err(errno)
        };
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("fetching {}: {e}", desc.digest);
                    return fail(libc::EIO);
                }
            };
            size += chunk.len() as u64;
            if size > desc.size {
                tracing::error!("fetching {}: more than {} bytes", desc.digest, desc.size);
                return fail(libc::EIO);
            }
            hasher.update(&chunk);
            if let Err(e) = out.write_all(&chunk) {
                return fail(os(e));
            }
        }
        if size != desc.size {
            tracing::error!("fetching {}: {size} of {} bytes", desc.digest, desc.size);
            return fail(libc::EIO);
        }
        if let Err(e) = hasher.check(&desc.digest) {
            self.poison(&blob, &e.to_string());
            return fail(libc::EIO);
        }
        Ok(())
    }

    /// Starts fetches for missing blocks of `need` and `prefetch`; returns what to wait for.
    fn ensure(
        self: &Arc<Self>,
        blob: &Arc<Blob>,
        need: Range<u64>,
        prefetch: Range<u64>,
    ) -> Vec<Wait> {
        let mut waits = Vec::new();
        let mut missing: Vec<u64> = Vec::new();
        {
            let mut st = blob.state.lock().unwrap();
            if st.verified && st.present_count == blob.blocks {
                return waits;
            }
            let all = if prefetch.is_empty() {
                need.clone()
            } else {
                need.start.min(prefetch.start)..need.end.max(prefetch.end)
            };
            let mem = st.uncached.then(|| self.memory.lock().unwrap());
            let in_memory = |b: u64| mem.as_ref().is_some_and(|m| m.contains(&(blob.id, b)));
            for b in all {
                let needed = need.contains(&b);
                let wanted = needed || prefetch.contains(&b);
                if !wanted || st.has(b) || in_memory(b) {
                    continue;
                }
                if let Some(rx) = st.inflight.get(&b) {
                    if needed {
                        waits.push((rx.clone(), b));
                    }
                    continue;
                }
                missing.push(b);
            }
            drop(mem);
            // A small blob is always fetched whole, so it is verified before use (an uncached
            // one may have lost only some of its blocks from memory).
            if blob.desc.size <= SMALL_BLOB && !missing.is_empty() {
                missing = (0..blob.blocks)
                    .filter(|b| !st.inflight.contains_key(b))
                    .collect();
            }
            // Group contiguous missing blocks into requests of at most MAX_REQUEST (a small
            // blob is always one request, so it can be verified before use).
            let per_request = if blob.desc.size <= SMALL_BLOB {
                u64::MAX
            } else {
                MAX_REQUEST / BLOCK
            };
            let mut i = 0;
            while i < missing.len() {
                let start = missing[i];
                let mut j = i + 1;
                while j < missing.len()
                    && missing[j] == missing[j - 1] + 1
                    && (j - i) < per_request as usize
                {
                    j += 1;
                }
                let run = start..missing[j - 1] + 1;
                let (tx, rx) = watch::channel(Fill {
                    upto: run.start,
                    failed: false,
                    since: Instant::now(),
                });
                for b in run.clone() {
                    st.inflight.insert(b, rx.clone());
                    if need.contains(&b) {
                        waits.push((rx.clone(), b));
                    }
                }
                let cache = self.clone();
                let blob = blob.clone();
                let tx = Arc::new(tx);
                tokio::spawn(async move {
                    let ok = cache.fetch_run(&blob, run.clone(), &tx).await;
                    let mut st = blob.state.lock().unwrap();
                    for b in run {
                        st.inflight.remove(&b);
                    }
                    drop(st);
                    if !ok {
                        tx.send_modify(|f| f.failed = true);
                    }
                });
                i = j;
            }
        }
        waits
    }

    /// Fetches a run of blocks with one Range request and stores each block as it arrives, so
    /// a reader waits for its block, not for the whole request. Returns whether all landed.
    async fn fetch_run(
        self: &Arc<Self>,
        blob: &Arc<Blob>,
        run: Range<u64>,
        fill: &Arc<watch::Sender<Fill>>,
    ) -> bool {
        let size = blob.desc.size;
        let start = run.start * BLOCK;
        let end = (run.end * BLOCK).min(size);
        let block_len = |b: u64| (BLOCK.min(size - b * BLOCK)) as usize;
        // Small blobs are fetched whole and verified before a single byte is served.
        let whole = start == 0 && end == size;
        let mut whole_hash = whole.then(|| blob.desc.digest.digester());
        let mut held = Vec::new();
        let mut storing: Option<tokio::task::JoinHandle<bool>> = None;
        let mut next = run.start;
        let mut block = bytes::BytesMut::with_capacity(block_len(next));
        let mut stream = match self
            .source
            .fetch_range(&blob.desc, start, end - start)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("reading {} at {start}..{end}: {e}", blob.desc.digest);
                return false;
            }
        };
        let mut failed = false;
        'receive: while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("reading {} at {start}..{end}: {e}", blob.desc.digest);
                    failed = true;
                    break;
                }
            };
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                if next == run.end {
                    tracing::error!("reading {}: more than {start}..{end}", blob.desc.digest);
                    failed = true;
                    break 'receive;
                }
                let n = (block_len(next) - block.len()).min(rest.len());
                block.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                if block.len() < block_len(next) {
                    continue;
                }
                let data = std::mem::take(&mut block).freeze();
                self.fetched.fetch_add(data.len() as u64, Ordering::Relaxed);
                if next + 1 < run.end {
                    block.reserve(block_len(next + 1));
                }
                if let Some(h) = whole_hash.as_mut() {
                    h.update(&data);
                    held.push(data);
                } else {
                    // One block stores while the next arrives; they land in order.
                    // A store that panicked published nothing: its readers must hear of it.
                    if let Some(prev) = storing.take() {
                        if !prev.await.unwrap_or(false) {
                            failed = true;
                            break 'receive;
                        }
                    }
                    let (cache, blob, fill) = (self.clone(), blob.clone(), fill.clone());
                    let b = next;
                    storing = Some(tokio::task::spawn_blocking(move || {
                        // A block that cannot be stored is still served, from memory.
                        if !cache.matches_sum(&blob, b, &data) {
                            let why = format!(
                                "{}: block {b} fetched again differs from the verified blob",
                                blob.desc.digest
                            );
                            cache.poison(&blob, &why);
                            return false;
                        }
                        let stored = cache.store_block(&blob, b, &data);
                        cache.publish_block(&blob, b, data.clone(), stored, &fill);
                        // Hashing, the slowest stage, runs as a task of its own so it never
                        // delays the next block; its errors poison the blob, which every
                        // later read sees.
                        let (cache, blob) = (cache.clone(), blob.clone());
                        tokio::task::spawn_blocking(move || {
                            cache.advance_hash(&blob, Some((b, &data)))
                        });
                        true
                    }));
                }
                next += 1;
            }
        }
        if let Some(prev) = storing.take() {
            failed |= !prev.await.unwrap_or(false);
        }
        if !failed && next < run.end {
            tracing::error!(
                "reading {}: the range {start}..{end} ended early",
                blob.desc.digest
            );
            failed = true;
        }
        let cache = self.clone();
        let blob = blob.clone();
        let fill = fill.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(h) = whole_hash {
                if failed {
                    return false;
                }
                if let Err(e) = h.check(&blob.desc.digest) {
                    cache.poison(&blob, &e.to_string());
                    return false;
                }
                // Every block is on disk before any is marked present: a failure halfway must
                // not leave blocks of a small blob that a later, partial request would serve
                // unverified.
                let stored = (run.start..)
                    .zip(&held)
                    .all(|(b, data)| cache.store_block(&blob, b, data));
                for (b, data) in (run.start..).zip(held) {
                    cache.publish_block(&blob, b, data, stored, &fill);
                }
                cache.complete(&blob);
                return true;
            }
            // Record what landed, even of a failed request, for the next mount.
            if let Err(e) = cache.save_map(&blob) {
                // Only the next mount's resume is lost. Not a warning: on a full disk the log
                // (often on the same disk) cannot take it either.
                tracing::debug!("writing the block map of {}: {e}", blob.desc.digest);
            }
            !failed
        })
        .await
        .unwrap_or(false)
    }

    /// Writes one fetched block to the cache file, unless the blob is (or now goes) uncached:
    /// over the disk bound, or the write failed (disk full). Returns whether it was stored.
    fn store_block(&self, blob: &Blob, b: u64, data: &Bytes) -> bool {
        let Some(file) = &blob.file else {
            return false;
        };
        {
            let st = blob.state.lock().unwrap();
            if st.uncached || st.verified || st.has(b) {
                return !st.uncached && st.has(b);
            }
        }
        let len = data.len() as u64;
        // Block maps and the filesystem's own blocks take a little beyond the data.
        let limit = self.options.disk_limit.saturating_sub(BOUND_SLACK);
        if self.usage.fetch_add(len, Ordering::Relaxed) + len > limit {
            // Make room (least recently used blobs, orphaned partial files) and count again.
            self.enforce_disk_limit();
            if self.usage.fetch_add(len, Ordering::Relaxed) + len > limit {
                self.usage.fetch_sub(len, Ordering::Relaxed);
                self.go_uncached(
                    blob,
                    format!(
                        "the cache is full (bound {} bytes, other blobs in use)",
                        self.options.disk_limit
                    ),
                );
                return false;
            }
        }
        match file.write_all_at(data, b * BLOCK) {
            Ok(()) => true,
            Err(e) => {
                self.usage.fetch_sub(len, Ordering::Relaxed);
                self.go_uncached(blob, format!("writing the cache: {e}"));
                // Whatever room eviction makes serves the next blobs.
                self.enforce_disk_limit();
                false
            }
        }
    }

    /// From now on, the blocks of `blob` are kept in memory only, and its partial file is
    /// emptied: it would hold disk space (under the bound, or on a full disk) for nothing.
    fn go_uncached(&self, blob: &Blob, why: String) {
        {
            let mut st = blob.state.lock().unwrap();
            if st.uncached {
                return;
            }
            st.uncached = true;
            // Readers stop using the file before it is emptied; one already reading it sees a
            // short read and fetches again (see `assemble`).
            st.present.iter_mut().for_each(|b| *b = 0);
            st.present_count = 0;
        }
        if let (Some(p), Some(f)) = (&blob.partial, &blob.file) {
            disk::discard(f, p);
            let _ = f.set_len(0);
        }
        self.note(format!(
            "{}: {why}; it is read from the registry without being cached on disk",
            blob.desc.digest
        ));
    }

    /// Makes a fetched block readable: into the memory LRU (its own buffer, so the LRU holds
    /// exactly what it counts), marked present if it was stored, and its readers told.
    fn publish_block(
        &self,
        blob: &Blob,
        b: u64,
        data: Bytes,
        stored: bool,
        fill: &watch::Sender<Fill>,
    ) {
        self.memory.lock().unwrap().put((blob.id, b), data);
        if stored {
            blob.state.lock().unwrap().set(b);
        }
        fill.send_modify(|f| {
            f.upto = b + 1;
            f.since = Instant::now();
        });
    }

    /// Saves which blocks of an incomplete blob are present. The map is written after the
    /// data, so a crash never marks unwritten blocks present.
    fn save_map(&self, blob: &Blob) -> std::io::Result<()> {
        let Some(partial) = blob.partial.as_ref().filter(|p| p.shared) else {
            return Ok(());
        };
        // Written under the lock: `complete` (which deletes the map) must not run meanwhile,
        // or a map would outlive its blob.
        let st = blob.state.lock().unwrap();
        if st.verified || st.uncached || st.present_count == blob.blocks || st.present_count == 0 {
            return Ok(());
        }
        let path = disk::map_of(&partial.path);
        let tmp = path.with_extension("map.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        if let Err(e) = f.write_all(&st.present) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &path)
    }

    /// Keeps the sum of a block of an uncached blob as it is hashed (see `BlobState::sums`).
    fn record_sum(&self, blob: &Blob, b: u64, data: &[u8]) {
        use sha2::Digest as _;
        let mut st = blob.state.lock().unwrap();
        if !st.uncached {
            return;
        }
        if st.sums.is_empty() {
            st.sums = vec![[0u8; 32]; blob.blocks as usize];
        }
        st.sums[b as usize] = sha2::Sha256::digest(data).into();
    }

    /// Whether a block fetched again matches what was hashed when the blob was verified
    /// (true when nothing was recorded for it: such a block is as unchecked as any range).
    fn matches_sum(&self, blob: &Blob, b: u64, data: &[u8]) -> bool {
        use sha2::Digest as _;
        let st = blob.state.lock().unwrap();
        match st.sums.get(b as usize) {
            Some(sum) if st.verified && *sum != [0u8; 32] => {
                let got: [u8; 32] = sha2::Sha256::digest(data).into();
                got == *sum
            }
            _ => true,
        }
    }

    /// Whether block `b` is on disk or in memory.
    fn available(&self, blob: &Blob, b: u64) -> bool {
        blob.state.lock().unwrap().has(b) || self.memory.lock().unwrap().contains(&(blob.id, b))
    }

    /// The bytes of block `b` if at hand: `fresh` (just fetched), the memory LRU, or the file.
    fn block_data(
        &self,
        blob: &Blob,
        b: u64,
        fresh: Option<(u64, &Bytes)>,
    ) -> std::io::Result<Option<Bytes>> {
        let len = BLOCK.min(blob.desc.size - b * BLOCK) as usize;
        let cached = match fresh {
            Some((f, data)) if f == b => Some(data.clone()),
            _ => self.memory.lock().unwrap().peek(&(blob.id, b)).cloned(),
        };
        if let Some(data) = cached.filter(|d| d.len() == len) {
            return Ok(Some(data));
        }
        if !blob.state.lock().unwrap().has(b) {
            return Ok(None);
        }
        let mut buf = vec![0u8; len];
        let file = blob.file.as_ref().expect("present blocks are in a file");
        file.read_exact_at(&mut buf, b * BLOCK)?;
        Ok(Some(buf.into()))
    }

    /// Feeds the hasher every block that is at hand next in order: `fresh` (a block just
    /// stored), else from the memory LRU, else from the file. When the last block is in, the
    /// blob is verified.
    fn advance_hash(
        self: &Arc<Self>,
        blob: &Arc<Blob>,
        fresh: Option<(u64, &Bytes)>,
    ) -> Result<(), Errno> {
        loop {
            let (mut hasher, mut next) = {
                let mut st = blob.state.lock().unwrap();
                if st.verified {
                    return Ok(());
                }
                match st.hasher.take() {
                    Some(h) => (h, st.hashed),
                    // Another thread is hashing; it picks up our blocks before it lets go.
                    None => return Ok(()),
                }
            };
            while next < blob.blocks {
                match self.block_data(blob, next, fresh) {
                    Ok(Some(data)) => {
                        hasher.update(&data);
                        self.record_sum(blob, next, &data);
                    }
                    Ok(None) => break,
                    // Emptied meanwhile (the blob went uncached): hashing waits for memory.
                    Err(_) if blob.uncached() => break,
                    Err(e) => {
                        // The hasher is lost with this error: the blob cannot be verified.
                        self.poison(
                            blob,
                            &format!("reading the cache file of {}: {e}", blob.desc.digest),
                        );
                        return Err(libc::EIO);
                    }
                }
                next += 1;
            }
            if next == blob.blocks {
                blob.state.lock().unwrap().hashed = next;
                return match hasher.check(&blob.desc.digest) {
                    Ok(()) => {
                        self.complete(blob);
                        Ok(())
                    }
                    Err(e) => {
                        self.poison(blob, &e.to_string());
                        Err(libc::EIO)
                    }
                };
            }
            {
                let mut st = blob.state.lock().unwrap();
                st.hashed = next;
                st.hasher = Some(hasher);
            }
            // A block that arrived while we held the hasher found it gone: take it up now.
            if !self.available(blob, next) {
                return Ok(());
            }
        }
    }

    /// Marks a blob verified and, if all of it is on disk, publishes it for later mounts. A
    /// failure to publish costs only the disk copy: the verified bytes stay readable here.
    fn complete(&self, blob: &Arc<Blob>) {
        // Published under the lock: whoever sees the blob verified finds its file in place
        // (`materialize` returns its path).
        let mut st = blob.state.lock().unwrap();
        if st.verified {
            return;
        }
        st.verified = true;
        st.hasher = None;
        // Every block hashed was stored first, unless the blob went uncached (then its partial
        // copy helps nobody). Blocks may be hashed before they are marked present.
        let Some(partial) = blob.partial.as_ref().filter(|_| !st.uncached) else {
            return;
        };
        let file = blob.file.as_ref().expect("a partial file is open");
        let published = disk::publish(file, partial, &blob.complete_path);
        if partial.shared {
            let _ = std::fs::remove_file(disk::map_of(&partial.path));
        }
        drop(st);
        match published {
            Ok(()) => self.enforce_disk_limit(),
            Err(e) => tracing::warn!(
                "keeping verified {} in the cache: {e}; it stays readable in this mount",
                blob.desc.digest
            ),
        }
    }

    /// Forgets every cached byte of a blob that failed verification; reads of it fail from now
    /// on. Only the partial file this process filled is deleted, never a published blob.
    fn poison(&self, blob: &Arc<Blob>, why: &str) {
        // Everything is done before the log line, which a full disk may refuse.
        self.poisoned
            .lock()
            .unwrap()
            .insert(blob.desc.digest.clone());
        self.forget(blob);
        if let (Some(p), Some(f)) = (&blob.partial, &blob.file) {
            disk::discard(f, p);
        }
        *self.last_error.lock().unwrap() = Some(format!("{why}; reads of it fail with EIO"));
        tracing::error!("{why}: evicted from the cache; reads of it fail with EIO");
    }

    /// Drops a blob from this process's tables (memory blocks included).
    fn forget(&self, blob: &Arc<Blob>) {
        {
            let mut blobs = self.blobs.lock().unwrap();
            if blobs
                .get(&blob.desc.digest)
                .is_some_and(|b| b.id == blob.id)
            {
                blobs.remove(&blob.desc.digest);
            }
        }
        let mut mem = self.memory.lock().unwrap();
        for b in 0..blob.blocks {
            mem.pop(&(blob.id, b));
        }
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

    /// The bytes `offset..end` of a blob whose blocks have all arrived; `None` if one of them
    /// (of an uncached blob) is no longer in memory.
    fn assemble(&self, blob: &Blob, offset: u64, end: u64) -> Result<Option<Bytes>, Errno> {
        let first = offset / BLOCK;
        let last = (end - 1) / BLOCK;
        let io = |e: std::io::Error| {
            tracing::error!("reading the cache of {}: {e}", blob.desc.digest);
            libc::EIO
        };
        if first == last {
            if let Some(b) = self.memory.lock().unwrap().get(&(blob.id, first)) {
                let s = (offset - first * BLOCK) as usize;
                let e = (end - first * BLOCK) as usize;
                if e <= b.len() {
                    return Ok(Some(b.slice(s..e)));
                }
            }
        }
        let on_disk = {
            let st = blob.state.lock().unwrap();
            (first..=last).all(|b| st.has(b))
        };
        let mut buf = vec![0u8; (end - offset) as usize];
        if on_disk {
            let file = blob.file.as_ref().expect("present blocks are in a file");
            return match file.read_exact_at(&mut buf, offset) {
                Ok(()) => Ok(Some(buf.into())),
                // Emptied meanwhile (the blob went uncached): fetch again.
                Err(_) if blob.uncached() => Ok(None),
                Err(e) => Err(io(e)),
            };
        }
        for b in first..=last {
            let data = match self.block_data(blob, b, None) {
                Ok(Some(data)) => data,
                Ok(None) => return Ok(None),
                Err(_) if blob.uncached() => return Ok(None),
                Err(e) => return Err(io(e)),
            };
            let s = offset.max(b * BLOCK);
            let e = end.min(b * BLOCK + data.len() as u64);
            buf[(s - offset) as usize..(e - offset) as usize]
                .copy_from_slice(&data[(s - b * BLOCK) as usize..(e - b * BLOCK) as usize]);
        }
        Ok(Some(buf.into()))
    }

    /// (bytes on disk, bound) of the blob cache, for `oras-fs status`.
    pub fn disk_usage(&self) -> (u64, u64) {
        let dir = &self.options.dir;
        let total =
            disk::usage_of(&dir.join("blobs/sha256")) + disk::usage_of(&dir.join("partial/sha256"));
        (total, self.options.disk_limit)
    }

    /// Deletes least recently used cache files until the disk cache fits its bound, sparing
    /// partial files being filled (by any process sharing the cache).
    pub fn enforce_disk_limit(&self) {
        let dir = &self.options.dir;
        let (total, evicted) = disk::evict(
            &dir.join("blobs/sha256"),
            &dir.join("partial/sha256"),
            self.options.disk_limit,
        );
        self.usage.store(total, Ordering::Relaxed);
        if !evicted.is_empty() {
            // Readers of an evicted blob keep its file through its descriptor; the next open
            // fetches it again.
            let evicted: HashSet<String> = evicted.into_iter().collect();
            self.blobs
                .lock()
                .unwrap()
                .retain(|d, b| !(evicted.contains(d.hex()) && b.stored()));
        }
    }
}

#[cfg(test)]
mod tests;
