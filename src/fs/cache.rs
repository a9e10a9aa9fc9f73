//! The block cache of remote blobs: an in-memory LRU of blocks over an on-disk cache keyed by
//! digest (so it is never stale and later mounts share it), filled by HTTP Range requests.
//!
//! - A blob is cut into aligned blocks of [`BLOCK`] bytes; a read waits only for its blocks.
//! - Concurrent readers of one block share one fetch (in-flight blocks carry a channel).
//! - Small blobs (≤ [`SMALL_BLOB`]) are fetched whole and verified before any byte is served.
//!   Large blobs are verified as soon as every block has arrived; until then, bytes are served
//!   unverified (a range cannot be checked against a whole-blob digest). A mismatch evicts the
//!   blob everywhere and every later read of it fails with EIO.
//! - Disk use is bounded by evicting least recently used complete blobs (not those being filled).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

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
}

/// A block to wait for, and the request bringing it.
type Wait = (watch::Receiver<Fill>, u64);

async fn wait_block((mut rx, b): Wait) -> Result<(), Errno> {
    let fill = *rx
        .wait_for(|f| f.upto > b || f.failed)
        .await
        .map_err(|_| libc::EIO)?;
    if fill.upto > b {
        Ok(())
    } else {
        Err(libc::EIO)
    }
}

struct BlobState {
    /// One bit per block.
    present: Vec<u8>,
    present_count: u64,
    complete: bool,
    inflight: HashMap<u64, watch::Receiver<Fill>>,
    /// Hashes the blob in order as blocks arrive, so a sequential read is verified the moment
    /// its last block lands (no second pass). `None` while a thread is feeding it.
    hasher: Option<Digester>,
    /// Blocks fed to `hasher` so far (a prefix of the blob).
    hashed: u64,
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
    file: File,
    partial_path: PathBuf,
    map_path: PathBuf,
    complete_path: PathBuf,
    state: Mutex<BlobState>,
}

pub struct BlobCache {
    source: Arc<dyn Target>,
    options: CacheOptions,
    blobs: Mutex<HashMap<Digest, Arc<Blob>>>,
    memory: Mutex<LruCache<(u64, u64), Bytes>>,
    poisoned: Mutex<HashSet<Digest>>,
    next_id: AtomicU64,
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
        if now.saturating_sub(self.touched.load(Ordering::Relaxed)) >= 10
            && self.state.lock().unwrap().complete
        {
            self.touched.store(now, Ordering::Relaxed);
            let _ = self.file.set_modified(SystemTime::now());
        }
    }
}

impl BlobCache {
    pub fn new(source: Arc<dyn Target>, options: CacheOptions) -> std::io::Result<Arc<BlobCache>> {
        for sub in ["blobs/sha256", "partial/sha256", "unpacked/sha256"] {
            mkdir_private(&options.dir.join(sub))?;
        }
        let slots = (options.memory_limit / BLOCK).max(1) as usize;
        let cache = Arc::new(BlobCache {
            source,
            memory: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(slots).expect("max(1)"),
            )),
            options,
            blobs: Mutex::new(HashMap::new()),
            poisoned: Mutex::new(HashSet::new()),
            next_id: AtomicU64::new(1),
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

    fn paths(&self, digest: &Digest) -> (PathBuf, PathBuf, PathBuf) {
        let alg = digest.algorithm();
        let hex = digest.hex();
        let dir = &self.options.dir;
        (
            dir.join("blobs").join(alg).join(hex),
            dir.join("partial").join(alg).join(hex),
            dir.join("partial").join(alg).join(format!("{hex}.map")),
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
        let (complete_path, partial_path, map_path) = self.paths(&desc.digest);
        let blocks = desc.size.div_ceil(BLOCK);
        let map_len = blocks.div_ceil(8).max(1) as usize;
        let io = |e: std::io::Error| {
            tracing::error!("cache for {}: {e}", desc.digest);
            libc::EIO
        };
        let (file, state) = match File::open(&complete_path) {
            Ok(f) if f.metadata().map(|m| m.len()).ok() == Some(desc.size) => {
                // Mark it recently used for eviction.
                let _ = f.set_modified(SystemTime::now());
                let state = BlobState {
                    present: vec![0xff; map_len],
                    present_count: blocks,
                    complete: true,
                    inflight: HashMap::new(),
                    hasher: None,
                    hashed: blocks,
                };
                (f, state)
            }
            _ => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&partial_path)
                    .map_err(io)?;
                f.set_len(desc.size).map_err(io)?;
                let mut present = vec![0u8; map_len];
                if let Ok(mut m) = File::open(&map_path) {
                    let mut buf = Vec::new();
                    if m.read_to_end(&mut buf).is_ok() && buf.len() == map_len {
                        present = buf;
                    }
                }
                let mut state = BlobState {
                    present: vec![0u8; map_len],
                    present_count: 0,
                    complete: false,
                    inflight: HashMap::new(),
                    hasher: Some(desc.digest.digester()),
                    hashed: 0,
                };
                for b in 0..blocks {
                    if present[(b / 8) as usize] & (1 << (b % 8)) != 0 {
                        state.set(b);
                    }
                }
                (f, state)
            }
        };
        let blob = Arc::new(Blob {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            touched: AtomicU64::new(0),
            desc: desc.clone(),
            blocks,
            file,
            partial_path,
            map_path,
            complete_path,
            state: Mutex::new(state),
        });
        blobs.insert(desc.digest.clone(), blob.clone());
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
        let pre =
            prefetch.start.min(desc.size) / BLOCK..prefetch.end.min(desc.size).div_ceil(BLOCK);
        for wait in self.ensure(&blob, need.clone(), pre) {
            wait_block(wait).await?;
        }
        // Once every block of a large blob is in, reads wait for its verification, so a
        // whole-file reader (cat, cp) of corrupt content gets EIO before EOF, whichever of
        // its concurrent reads completes the blob.
        if desc.size > SMALL_BLOB {
            self.verify_if_complete(&blob).await?;
        }
        if self.poisoned.lock().unwrap().contains(&desc.digest) {
            return Err(libc::EIO);
        }
        self.assemble(&blob, offset, end)
    }

    /// Once every block of a blob is in, waits until it is verified: at once for a blob whose
    /// blocks all arrived in an earlier mount, else when the thread hashing it is done.
    async fn verify_if_complete(self: &Arc<Self>, blob: &Arc<Blob>) -> Result<(), Errno> {
        let pending = {
            let st = blob.state.lock().unwrap();
            !st.complete && st.present_count == blob.blocks
        };
        if pending {
            self.finish_hash(blob).await?;
        }
        Ok(())
    }

    /// Hashes what is left of a fully fetched blob (from the file) and waits until it is
    /// verified, whichever thread does the hashing.
    async fn finish_hash(self: &Arc<Self>, blob: &Arc<Blob>) -> Result<(), Errno> {
        // Bounded like a read: a hasher that never comes back must not hold readers forever.
        for _ in 0..6000 {
            let (cache, b) = (self.clone(), blob.clone());
            tokio::task::spawn_blocking(move || cache.advance_hash(&b, None))
                .await
                .map_err(|_| libc::EIO)??;
            if blob.state.lock().unwrap().complete {
                return Ok(());
            }
            if self.is_poisoned(&blob.desc.digest) {
                return Err(libc::EIO);
            }
            // Another thread holds the hasher: it finishes the job.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Err(libc::EIO)
    }

    /// Fetches a whole blob into the cache (verified) and returns the path of its file.
    pub async fn materialize(self: &Arc<Self>, desc: &Descriptor) -> Result<PathBuf, Errno> {
        let blob = self.blob(desc)?;
        // Request everything at once (in MAX_REQUEST runs), then wait for verification.
        for wait in self.ensure(&blob, 0..blob.blocks, 0..0) {
            wait_block(wait).await?;
        }
        self.finish_hash(&blob).await?;
        Ok(blob.complete_path.clone())
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
            if st.complete {
                return waits;
            }
            let all = if prefetch.is_empty() {
                need.clone()
            } else {
                need.start.min(prefetch.start)..need.end.max(prefetch.end)
            };
            for b in all {
                let needed = need.contains(&b);
                let wanted = needed || prefetch.contains(&b);
                if !wanted || st.has(b) {
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
                    if let Some(prev) = storing.take() {
                        if !prev.await.unwrap_or(false) {
                            failed = true;
                            break 'receive;
                        }
                    }
                    let (cache, blob, fill) = (self.clone(), blob.clone(), fill.clone());
                    let b = next;
                    storing = Some(tokio::task::spawn_blocking(move || {
                        if !cache.write_block(&blob, b, &data) {
                            return false;
                        }
                        cache.publish_block(&blob, b, data.clone(), &fill);
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
                for (b, data) in (run.start..).zip(&held) {
                    if !cache.write_block(&blob, b, data) {
                        return false;
                    }
                }
                for (b, data) in (run.start..).zip(held) {
                    cache.publish_block(&blob, b, data, &fill);
                }
                return match cache.complete(&blob) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!("keeping {}: {e}", blob.desc.digest);
                        false
                    }
                };
            }
            // Record what landed, even of a failed request, for the next mount.
            if let Err(e) = cache.save_map(&blob) {
                tracing::error!("writing the block map of {}: {e}", blob.desc.digest);
            }
            !failed
        })
        .await
        .unwrap_or(false)
    }

    /// Writes one fetched block to the cache file.
    fn write_block(&self, blob: &Blob, b: u64, data: &Bytes) -> bool {
        match blob.file.write_all_at(data, b * BLOCK) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("writing the cache of {}: {e}", blob.desc.digest);
                false
            }
        }
    }

    /// Makes a written block readable: into the memory LRU (its own buffer, so the LRU holds
    /// exactly what it counts), marked present, and its readers told.
    fn publish_block(&self, blob: &Blob, b: u64, data: Bytes, fill: &watch::Sender<Fill>) {
        self.memory.lock().unwrap().put((blob.id, b), data);
        blob.state.lock().unwrap().set(b);
        fill.send_modify(|f| f.upto = b + 1);
    }

    /// Saves which blocks of an incomplete blob are present. The map is written after the
    /// data, so a crash never marks unwritten blocks present.
    fn save_map(&self, blob: &Blob) -> std::io::Result<()> {
        let map = {
            let st = blob.state.lock().unwrap();
            if st.complete || st.present_count == blob.blocks {
                return Ok(());
            }
            st.present.clone()
        };
        let tmp = blob.map_path.with_extension("map.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&map)?;
        std::fs::rename(&tmp, &blob.map_path)
    }

    /// Feeds the hasher every block that is present next in order: `fresh` (a block just
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
                if st.complete {
                    return Ok(());
                }
                match st.hasher.take() {
                    Some(h) => (h, st.hashed),
                    // Another thread is hashing; it picks up our blocks before it lets go.
                    None => return Ok(()),
                }
            };
            let mut buf = Vec::new();
            while next < blob.blocks && blob.state.lock().unwrap().has(next) {
                let off = next * BLOCK;
                let len = BLOCK.min(blob.desc.size - off) as usize;
                let cached = match fresh {
                    Some((b, data)) if b == next => Some(data.clone()),
                    _ => self.memory.lock().unwrap().peek(&(blob.id, next)).cloned(),
                };
                match cached {
                    Some(data) if data.len() == len => hasher.update(&data),
                    _ => {
                        buf.resize(len, 0);
                        if let Err(e) = blob.file.read_exact_at(&mut buf, off) {
                            // The hasher is lost with this error: the blob cannot be verified.
                            self.poison(
                                blob,
                                &format!("reading the cache file of {}: {e}", blob.desc.digest),
                            );
                            return Err(libc::EIO);
                        }
                        hasher.update(&buf);
                    }
                }
                next += 1;
            }
            if next == blob.blocks {
                blob.state.lock().unwrap().hashed = next;
                return match hasher.check(&blob.desc.digest) {
                    Ok(()) => self.complete(blob).map_err(|e| {
                        self.poison(blob, &format!("keeping verified {}: {e}", blob.desc.digest));
                        libc::EIO
                    }),
                    Err(e) => {
                        self.poison(blob, &e.to_string());
                        Err(libc::EIO)
                    }
                };
            }
            let mut st = blob.state.lock().unwrap();
            st.hashed = next;
            st.hasher = Some(hasher);
            // A block stored while we held the hasher found it gone: take it up now.
            if !st.has(next) {
                return Ok(());
            }
        }
    }

    fn complete(&self, blob: &Arc<Blob>) -> std::io::Result<()> {
        let mut st = blob.state.lock().unwrap();
        if st.complete {
            return Ok(());
        }
        std::fs::rename(&blob.partial_path, &blob.complete_path)?;
        let _ = std::fs::remove_file(&blob.map_path);
        st.complete = true;
        drop(st);
        self.enforce_disk_limit();
        Ok(())
    }

    /// Forgets every cached byte of a blob that failed verification; reads of it fail from now on.
    fn poison(&self, blob: &Arc<Blob>, why: &str) {
        tracing::error!("{why}: evicted from the cache; reads of it fail with EIO");
        self.poisoned
            .lock()
            .unwrap()
            .insert(blob.desc.digest.clone());
        self.blobs.lock().unwrap().remove(&blob.desc.digest);
        {
            let mut mem = self.memory.lock().unwrap();
            for b in 0..blob.blocks {
                mem.pop(&(blob.id, b));
            }
        }
        for p in [&blob.partial_path, &blob.map_path, &blob.complete_path] {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Takes a local file whose content is known to match `desc` (a staged file just pushed)
    /// into the cache as a complete blob.
    pub fn adopt(&self, desc: &Descriptor, path: &Path) -> std::io::Result<()> {
        let (complete, _, _) = self.paths(&desc.digest);
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
            return b.state.lock().unwrap().complete;
        }
        self.paths(&desc.digest).0.exists()
    }

    pub fn is_poisoned(&self, digest: &Digest) -> bool {
        self.poisoned.lock().unwrap().contains(digest)
    }

    fn assemble(&self, blob: &Blob, offset: u64, end: u64) -> Result<Bytes, Errno> {
        let first = offset / BLOCK;
        let last = (end - 1) / BLOCK;
        if first == last {
            if let Some(b) = self.memory.lock().unwrap().get(&(blob.id, first)) {
                let s = (offset - first * BLOCK) as usize;
                let e = (end - first * BLOCK) as usize;
                if e <= b.len() {
                    return Ok(b.slice(s..e));
                }
            }
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        blob.file.read_exact_at(&mut buf, offset).map_err(|e| {
            tracing::error!("reading the cache of {}: {e}", blob.desc.digest);
            libc::EIO
        })?;
        Ok(buf.into())
    }

    /// (bytes on disk, bound) of the blob cache, for `oras-fs status`.
    pub fn disk_usage(&self) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let mut total = 0;
        for sub in ["blobs/sha256", "partial/sha256"] {
            if let Ok(rd) = std::fs::read_dir(self.options.dir.join(sub)) {
                total += rd
                    .flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.blocks() * 512)
                    .sum::<u64>();
            }
        }
        (total, self.options.disk_limit)
    }

    /// Deletes least recently used cache files until the disk cache fits its bound, sparing
    /// blobs this process has open.
    pub fn enforce_disk_limit(&self) {
        // Blobs being filled stay; complete ones may go even while open (their readers keep the
        // file through its descriptor; the next open fetches again).
        let in_use: HashSet<String> = self
            .blobs
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, b)| !b.state.lock().unwrap().complete)
            .map(|(d, _)| d.hex().to_string())
            .collect();
        let mut files = Vec::new();
        let mut total = 0u64;
        for sub in ["blobs/sha256", "partial/sha256"] {
            let Ok(rd) = std::fs::read_dir(self.options.dir.join(sub)) else {
                continue;
            };
            for e in rd.flatten() {
                let Ok(m) = e.metadata() else { continue };
                use std::os::unix::fs::MetadataExt;
                let used = m.blocks() * 512;
                total += used;
                let name = e.file_name().to_string_lossy().into_owned();
                let hex = name.split('.').next().unwrap_or("").to_string();
                files.push((
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    e.path(),
                    used,
                    hex,
                ));
            }
        }
        if total <= self.options.disk_limit {
            return;
        }
        files.sort_by_key(|f| f.0);
        for (_, path, used, hex) in files {
            if total <= self.options.disk_limit {
                break;
            }
            if in_use.contains(&hex) {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                tracing::debug!("cache: evicted {}", path.display());
                self.blobs.lock().unwrap().retain(|d, _| d.hex() != hex);
                total = total.saturating_sub(used);
            }
        }
    }
}
