//! Writing fetched blocks to disk within the disk bound: the block itself, the block map
//! that lets a later process resume, going memory-only when the disk cannot take a blob, and
//! eviction of least recently used files.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::blob::Blob;
use super::{disk, BlobCache, BLOCK, BOUND_SLACK};
use crate::fs::paths::private_file;

/// Why a block was not written to its cache file (it is still served, from memory).
#[derive(Debug)]
pub(super) enum NotStored {
    /// The blob is kept in memory only already, or is verified (nothing more goes to it).
    MemoryOnly,
    /// Eviction cannot make room under the bound: other blobs are in use.
    Full,
    /// The write failed (most likely the disk is full).
    Write(std::io::Error),
}

impl BlobCache {
    /// Writes one fetched block to the cache file, within the disk bound.
    pub(super) fn store_block(&self, blob: &Blob, b: u64, data: &Bytes) -> Result<(), NotStored> {
        let Some(file) = &blob.file else {
            return Err(NotStored::MemoryOnly);
        };
        {
            let st = blob.state.lock().unwrap();
            if st.uncached || st.verified || st.has(b) {
                return if !st.uncached && st.has(b) {
                    Ok(())
                } else {
                    Err(NotStored::MemoryOnly)
                };
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
                return Err(NotStored::Full);
            }
        }
        file.write_all_at(data, b * BLOCK).map_err(|e| {
            self.usage.fetch_sub(len, Ordering::Relaxed);
            NotStored::Write(e)
        })
    }

    /// Handles a block that was not stored: a blob the disk cannot take goes uncached (and
    /// the user hears why, once).
    pub(super) fn not_stored(&self, blob: &Blob, why: NotStored) {
        match why {
            NotStored::MemoryOnly => {}
            NotStored::Full => self.go_uncached(
                blob,
                format!(
                    "the cache is full (bound {} bytes, other blobs in use)",
                    self.options.disk_limit
                ),
            ),
            NotStored::Write(e) => {
                self.go_uncached(blob, format!("writing the cache: {e}"));
                // Whatever room eviction makes serves the next blobs.
                self.enforce_disk_limit();
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

    /// Saves which blocks of an incomplete blob are present. The map is written after the
    /// data, so a crash never marks unwritten blocks present.
    pub(super) fn save_map(&self, blob: &Blob) -> std::io::Result<()> {
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
        let mut f = private_file(&tmp, false)?;
        if let Err(e) = f.write_all(&st.present) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &path)
    }

    /// (bytes on disk, bound) of the cache, unpacked directory layers included, for
    /// `oras-fs status`.
    pub fn disk_usage(&self) -> (u64, u64) {
        let dir = &self.options.dir;
        let total = disk::usage_of(&dir.join("blobs/sha256"))
            + disk::usage_of(&dir.join("partial/sha256"))
            + self.unpacked_usage();
        (total, self.options.disk_limit)
    }

    /// The bound of the disk cache (`--cache-size`).
    pub fn disk_limit(&self) -> u64 {
        self.options.disk_limit
    }

    /// Bytes of the unpacked directory layers. They are never evicted (a mount reads their
    /// files by path), so what is left of the bound for another unpack is the bound less
    /// these; blobs make room by eviction as usual.
    pub fn unpacked_usage(&self) -> u64 {
        disk::tree_usage(&self.options.dir.join("unpacked"))
    }

    /// Counts the directory again (evicting if it is over the bound) once this process has
    /// stored a sixteenth of the bound since the last count. Its own writes are counted as
    /// they go (`store_block` evicts before crossing the bound); a count picks up what other
    /// processes sharing the directory stored. Counting at every published blob read the
    /// whole directory per blob: a walk through 5,000 small files spent 44 s of CPU on it.
    pub(super) fn recount_if_due(&self) {
        let since = self
            .usage
            .load(Ordering::Relaxed)
            .saturating_sub(self.counted.load(Ordering::Relaxed));
        if since >= self.options.disk_limit / 16 {
            self.enforce_disk_limit();
        }
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
        self.counted.store(total, Ordering::Relaxed);
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
