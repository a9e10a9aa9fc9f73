//! One blob in the cache: which of its blocks are stored (the bitmap), its cache file, the
//! requests in flight and how readers wait for them, and how its bytes are put together for
//! a read.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;

use super::{disk, BlobCache, Errno, BLOCK};
use crate::digest::Digester;
use crate::manifest::Descriptor;

/// Progress of one Range request: its blocks land in order, so one number says which are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Fill {
    /// Blocks before this index are stored (and readable).
    pub upto: u64,
    /// The request ended before `upto` reached its end: later blocks will not come.
    pub failed: bool,
    /// When the request started or last brought a block: the deadline of its readers runs
    /// from here, so a retry of a read that timed out fails at once if nothing came since.
    pub since: Instant,
}

/// A block to wait for, and the request bringing it.
pub(super) type Wait = (watch::Receiver<Fill>, u64);

pub(super) async fn wait_block((mut rx, b): Wait, deadline: Duration) -> Result<(), Errno> {
    loop {
        let since = rx.borrow().since;
        let left = (since + deadline).saturating_duration_since(Instant::now());
        let waited = tokio::time::timeout(left, rx.wait_for(|f| f.upto > b || f.failed))
            .await
            .map(|r| r.map(|fill| *fill));
        let fill = match waited {
            Ok(Ok(fill)) => fill,
            Ok(Err(_)) => return Err(libc::EIO.into()),
            Err(_) => {
                if rx.borrow().since != since {
                    continue;
                }
                tracing::error!("block {b}: no progress for {deadline:?}; the read fails");
                return Err(libc::EIO.into());
            }
        };
        return if fill.upto > b {
            Ok(())
        } else {
            Err(libc::EIO.into())
        };
    }
}

pub(super) struct BlobState {
    /// One bit per block stored in the file.
    pub present: Vec<u8>,
    pub present_count: u64,
    /// The whole blob matched its digest.
    pub verified: bool,
    /// Blocks go to memory only from now on (disk bound reached, disk full, or no file).
    pub uncached: bool,
    pub inflight: HashMap<u64, watch::Receiver<Fill>>,
    /// Hashes the blob in order as blocks arrive, so a sequential read is verified the moment
    /// its last block lands (no second pass). `None` while a thread is feeding it.
    pub hasher: Option<Digester>,
    /// Blocks fed to `hasher` so far (a prefix of the blob).
    pub hashed: u64,
    /// sha256 of each block hashed while uncached (zeros: not recorded): once the blob is
    /// verified, a block fetched again (it fell out of memory) is checked against it.
    pub sums: Vec<[u8; 32]>,
}

impl BlobState {
    fn empty(desc: &Descriptor, blocks: u64) -> BlobState {
        BlobState {
            present: vec![0u8; map_len(blocks)],
            present_count: 0,
            verified: false,
            uncached: false,
            inflight: HashMap::new(),
            hasher: Some(desc.digest.digester()),
            hashed: 0,
            sums: Vec::new(),
        }
    }

    pub fn has(&self, b: u64) -> bool {
        self.present[(b / 8) as usize] & (1 << (b % 8)) != 0
    }

    pub fn set(&mut self, b: u64) {
        if !self.has(b) {
            self.present[(b / 8) as usize] |= 1 << (b % 8);
            self.present_count += 1;
        }
    }
}

/// Bytes of the block bitmap of a blob of `blocks` blocks (as saved in its map file).
fn map_len(blocks: u64) -> usize {
    blocks.div_ceil(8).max(1) as usize
}

pub(super) struct Blob {
    pub id: u64,
    /// When the file's mtime (the eviction order) was last set, in seconds since the epoch.
    pub touched: AtomicU64,
    pub desc: Descriptor,
    pub blocks: u64,
    /// The cache file: complete, or a partial one this process fills. `None`: memory only.
    pub file: Option<File>,
    /// The partial file (open as `file`) while this process fills it (`None` for a blob
    /// found complete).
    pub partial: Option<disk::Partial>,
    pub complete_path: PathBuf,
    pub state: Mutex<BlobState>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Blob {
    /// Marks a complete blob recently used (at most every 10 s: it costs a syscall).
    pub fn touch(&self) {
        let now = now_secs();
        if now.saturating_sub(self.touched.load(Ordering::Relaxed)) >= 10 && self.stored() {
            self.touched.store(now, Ordering::Relaxed);
            if let Some(f) = &self.file {
                let _ = f.set_modified(SystemTime::now());
            }
        }
    }

    /// Verified and every block on disk: nothing left to fetch.
    pub fn stored(&self) -> bool {
        let st = self.state.lock().unwrap();
        st.verified && st.present_count == self.blocks
    }

    pub fn uncached(&self) -> bool {
        self.state.lock().unwrap().uncached
    }

    /// Bytes of block `b` (the last one may be short).
    pub fn block_len(&self, b: u64) -> usize {
        BLOCK.min(self.desc.size - b * BLOCK) as usize
    }
}

/// Where a blob's blocks are kept, as found when it is first opened.
struct Opened {
    file: Option<File>,
    partial: Option<disk::Partial>,
    /// Why it is kept in memory only, to tell the user.
    why_uncached: Option<String>,
}

impl BlobCache {
    /// The blob of `desc`, opened (and its cache file found or created) on first use.
    pub(super) fn blob(&self, desc: &Descriptor) -> Result<Arc<Blob>, Errno> {
        if self.poisoned.lock().unwrap().contains(&desc.digest) {
            return Err(libc::EIO.into());
        }
        let mut blobs = self.blobs.lock().unwrap();
        if let Some(b) = blobs.get(&desc.digest) {
            return Ok(b.clone());
        }
        let blocks = desc.size.div_ceil(BLOCK);
        let mut state = BlobState::empty(desc, blocks);
        let (complete_path, partial_path) = self.paths(&desc.digest);
        let opened = self.open_file(desc, &complete_path, &partial_path, &mut state);
        let blob = Arc::new(Blob {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            touched: AtomicU64::new(0),
            desc: desc.clone(),
            blocks,
            file: opened.file,
            partial: opened.partial,
            complete_path,
            state: Mutex::new(state),
        });
        blobs.insert(desc.digest.clone(), blob.clone());
        drop(blobs);
        // Said once the table is unlocked: logging may fail (and panic) on a full disk.
        if let Some(why) = opened.why_uncached {
            self.note(why);
        }
        Ok(blob)
    }

    /// Opens the complete file of a blob, else its partial file (resuming what an earlier
    /// process stored), else none; sets `state` to match.
    fn open_file(
        &self,
        desc: &Descriptor,
        complete: &std::path::Path,
        partial: &std::path::Path,
        state: &mut BlobState,
    ) -> Opened {
        let blocks = desc.size.div_ceil(BLOCK);
        let memory_only = |why| Opened {
            file: None,
            partial: None,
            why_uncached: Some(why),
        };
        match File::open(complete) {
            Ok(f) if f.metadata().map(|m| m.len()).ok() == Some(desc.size) => {
                // Mark it recently used for eviction.
                let _ = f.set_modified(SystemTime::now());
                state.present = vec![0xff; map_len(blocks)];
                state.present_count = blocks;
                state.verified = true;
                state.hasher = None;
                state.hashed = blocks;
                return Opened {
                    file: Some(f),
                    partial: None,
                    why_uncached: None,
                };
            }
            _ => {}
        }
        if desc.size > self.options.disk_limit {
            state.uncached = true;
            return memory_only(format!(
                "{} ({} bytes) is larger than the cache bound ({} bytes): it is read from \
                 the registry without being cached on disk",
                desc.digest, desc.size, self.options.disk_limit
            ));
        }
        match disk::open_partial(partial, desc.size) {
            Ok((f, p)) => {
                if p.shared {
                    resume(&p, blocks, state);
                }
                Opened {
                    file: Some(f),
                    partial: Some(p),
                    why_uncached: None,
                }
            }
            Err(e) => {
                state.uncached = true;
                memory_only(format!(
                    "cannot cache {} in {}: {e}; it is read from the registry without \
                     being cached on disk",
                    desc.digest,
                    self.options.dir.display()
                ))
            }
        }
    }

    /// Whether block `b` is on disk or in memory.
    pub(super) fn available(&self, blob: &Blob, b: u64) -> bool {
        blob.state.lock().unwrap().has(b) || self.memory.lock().unwrap().contains(&(blob.id, b))
    }

    /// The bytes of block `b` if at hand: in `fresh` (blocks just fetched, from block
    /// `fresh.0`), the memory LRU, or the file.
    pub(super) fn block_data(
        &self,
        blob: &Blob,
        b: u64,
        fresh: (u64, &[Bytes]),
    ) -> std::io::Result<Option<Bytes>> {
        let len = blob.block_len(b);
        let just_fetched = b.checked_sub(fresh.0).and_then(|i| fresh.1.get(i as usize));
        let cached = match just_fetched {
            Some(data) => Some(data.clone()),
            None => self.memory.lock().unwrap().peek(&(blob.id, b)).cloned(),
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

    /// The bytes `offset..end` of a blob whose blocks have all arrived; `None` if one of them
    /// (of an uncached blob) is no longer in memory.
    pub(super) fn assemble(
        &self,
        blob: &Blob,
        offset: u64,
        end: u64,
    ) -> Result<Option<Bytes>, Errno> {
        let first = offset / BLOCK;
        let last = (end - 1) / BLOCK;
        let io = |e: std::io::Error| {
            tracing::error!("reading the cache of {}: {e}", blob.desc.digest);
            Errno::from(libc::EIO)
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
            let data = match self.block_data(blob, b, (0, &[])) {
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

    /// Drops a blob from this process's tables (memory blocks included).
    pub(super) fn forget(&self, blob: &Arc<Blob>) {
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
}

/// Marks present the blocks an earlier process stored in a shared partial file, as its block
/// map says (a map missing or of the wrong size: none).
fn resume(p: &disk::Partial, blocks: u64, state: &mut BlobState) {
    let mut present = vec![0u8; map_len(blocks)];
    if let Ok(mut m) = File::open(disk::map_of(&p.path)) {
        let mut buf = Vec::new();
        if m.read_to_end(&mut buf).is_ok() && buf.len() == present.len() {
            present = buf;
        }
    }
    for b in 0..blocks {
        if present[(b / 8) as usize] & (1 << (b % 8)) != 0 {
            state.set(b);
        }
    }
}
