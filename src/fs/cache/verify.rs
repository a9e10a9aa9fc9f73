//! Verification of a blob against its digest: hashed in order as its blocks arrive, published
//! for later mounts once it matches, poisoned (forgotten, and failing every read) if not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::Digest as _;

use super::blob::Blob;
use super::{disk, BlobCache, Errno};

impl BlobCache {
    /// Once every block of a blob is on disk, waits until it is verified: at once for a blob
    /// whose blocks all arrived in an earlier mount, else when the thread hashing it is done.
    pub(super) async fn verify_if_complete(
        self: &Arc<Self>,
        blob: &Arc<Blob>,
    ) -> Result<(), Errno> {
        let pending = {
            let st = blob.state.lock().unwrap();
            !st.verified && st.present_count == blob.blocks
        };
        if pending && !self.finish_hash(blob).await? {
            return Err(libc::EIO.into());
        }
        Ok(())
    }

    /// Hashes what is left of a blob (from memory or the file) and waits until it is
    /// verified, whichever thread does the hashing. `Ok(false)`: blocks it needs are neither
    /// on disk nor in memory (an uncached blob read out of order), so it stays unverified.
    pub(super) async fn finish_hash(self: &Arc<Self>, blob: &Arc<Blob>) -> Result<bool, Errno> {
        // Bounded like a read: a hasher that never comes back must not hold readers forever.
        let until = Instant::now() + self.deadline();
        while Instant::now() < until {
            let (cache, b) = (self.clone(), blob.clone());
            tokio::task::spawn_blocking(move || cache.advance_hash(&b, (0, &[])))
                .await
                .map_err(|_| Errno::from(libc::EIO))??;
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
                return Err(libc::EIO.into());
            }
            // Another thread holds the hasher: it finishes the job.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(libc::EIO.into())
    }

    /// Feeds the hasher every block that is at hand next in order: in `fresh` (blocks just
    /// stored, from block `fresh.0`), else from the memory LRU, else from the file. When the last block is in, the
    /// blob is verified.
    pub(super) fn advance_hash(
        self: &Arc<Self>,
        blob: &Arc<Blob>,
        fresh: (u64, &[Bytes]),
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
                        record_sum(blob, next, &data);
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
                        return Err(libc::EIO.into());
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
                        Err(libc::EIO.into())
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
    pub(super) fn complete(&self, blob: &Arc<Blob>) {
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
            Ok(()) => self.recount_if_due(),
            Err(e) => tracing::warn!(
                "keeping verified {} in the cache: {e}; it stays readable in this mount",
                blob.desc.digest
            ),
        }
    }

    /// Forgets every cached byte of a blob that failed verification; reads of it fail from now
    /// on. Only the partial file this process filled is deleted, never a published blob.
    pub(super) fn poison(&self, blob: &Arc<Blob>, why: &str) {
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
}

/// Keeps the sum of a block of an uncached blob as it is hashed (see `BlobState::sums`).
fn record_sum(blob: &Blob, b: u64, data: &[u8]) {
    let mut st = blob.state.lock().unwrap();
    if !st.uncached {
        return;
    }
    if st.sums.is_empty() {
        st.sums = vec![[0u8; 32]; blob.blocks as usize];
    }
    st.sums[b as usize] = sha2::Sha256::digest(data).into();
}

/// Checks a block fetched again against what was hashed when the blob was verified; the error
/// says what differs. A block with nothing recorded passes: it is as unchecked as any range.
pub(super) fn check_sum(blob: &Blob, b: u64, data: &[u8]) -> Result<(), String> {
    let st = blob.state.lock().unwrap();
    match st.sums.get(b as usize) {
        Some(sum) if st.verified && *sum != [0u8; 32] => {
            let got: [u8; 32] = sha2::Sha256::digest(data).into();
            if got == *sum {
                Ok(())
            } else {
                Err(format!(
                    "{}: block {b} fetched again differs from the verified blob",
                    blob.desc.digest
                ))
            }
        }
        _ => Ok(()),
    }
}
