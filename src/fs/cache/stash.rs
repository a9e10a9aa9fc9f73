//! The disk cache's complete blobs as `pull` uses them ([`crate::oras::BlobStash`]): the same
//! directory, locking and eviction as mounts (see [`disk`]), without a mount's block cache.
//!
//! A pull reads a kept blob through its usual digest check, and adds a download by writing a
//! private partial file beside it (locked, so eviction spares it) while the bytes pass by,
//! hashing them; it is published (renamed into `blobs/`) only if they match the digest. A pull
//! never evicts (see [`DiskBlobs`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};

use super::{disk, BOUND_SLACK};
use crate::content::ByteStream;
use crate::digest::{Digest, Verifier};
use crate::fs::paths::private_dir;
use crate::manifest::Descriptor;
use crate::oras::{BlobStash, Kept};

/// Chunks on their way to the cache file: a small queue, so a slow cache disk slows the
/// download rather than filling memory.
const QUEUE: usize = 16;

/// Complete blobs of a cache directory. A pull never evicts: a mount sharing the directory
/// may have a larger bound, and its complete blobs are not the pull's to drop. So a download
/// is kept only if it fits under the pull's own bound as the cache stands.
pub struct DiskBlobs {
    dir: PathBuf,
    /// Bound of the disk cache (`--cache-size`).
    limit: u64,
    /// Bytes of this pull's downloads being written (their files are sparse until then).
    reserved: Arc<AtomicU64>,
    /// The directory's size when last counted, and what this pull published since. It is
    /// counted again once a sixteenth of the bound was published, not for every blob: that
    /// made a pull of 5,000 small files quadratic, as it did a mount's walk.
    usage: Arc<Mutex<Usage>>,
}

#[derive(Default)]
struct Usage {
    counted: Option<u64>,
    since: u64,
}

impl DiskBlobs {
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<DiskBlobs> {
        for sub in ["blobs/sha256", "partial/sha256"] {
            private_dir(&dir.join(sub))?;
        }
        Ok(DiskBlobs {
            dir: dir.to_path_buf(),
            limit,
            reserved: Arc::default(),
            usage: Arc::default(),
        })
    }

    fn complete(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    fn partial(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("partial")
            .join(digest.algorithm())
            .join(digest.hex())
    }
}

impl BlobStash for DiskBlobs {
    fn open(&self, desc: &Descriptor) -> Option<(std::fs::File, PathBuf)> {
        let path = self.complete(&desc.digest);
        let file = std::fs::File::open(&path).ok()?;
        // Recently used: eviction goes by modification time, as for mounts.
        let _ = file.set_modified(std::time::SystemTime::now());
        Some((file, path))
    }

    fn reject(&self, desc: &Descriptor, file: &std::fs::File) {
        let path = self.complete(&desc.digest);
        // Only the copy that failed: another process may have published a good one since.
        if disk::same_file(file, &path) {
            let _ = std::fs::remove_file(&path);
        }
    }

    fn keep(&self, desc: &Descriptor, content: ByteStream) -> (ByteStream, Kept) {
        let (blobs, partials) = (
            self.dir.join("blobs/sha256"),
            self.dir.join("partial/sha256"),
        );
        let room = self.limit.saturating_sub(BOUND_SLACK);
        // Reserved first, then checked: concurrent downloads of one pull cannot both fit.
        let reserved = self.reserved.fetch_add(desc.size, Ordering::SeqCst) + desc.size;
        let used = {
            let mut u = self.usage.lock().unwrap();
            let counted = match u.counted {
                Some(c) if u.since < self.limit / 16 => c,
                _ => {
                    let c = disk::usage_of(&blobs) + disk::usage_of(&partials);
                    *u = Usage {
                        counted: Some(c),
                        since: 0,
                    };
                    c
                }
            };
            counted + u.since
        };
        if used.saturating_add(reserved) > room {
            self.reserved.fetch_sub(desc.size, Ordering::SeqCst);
            tracing::debug!(
                "not caching {}: it does not fit in --cache-size {} beside what the cache \
                 holds, and a pull evicts nothing",
                desc.digest,
                self.limit
            );
            return (content, futures_util::future::ready(()).boxed());
        }
        let (file, partial) = match disk::open_private(&self.partial(&desc.digest), desc.size) {
            Ok(opened) => opened,
            Err(e) => {
                self.reserved.fetch_sub(desc.size, Ordering::SeqCst);
                tracing::warn!("not caching {}: {e}", desc.digest);
                return (content, futures_util::future::ready(()).boxed());
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(QUEUE);
        let (desc, complete) = (desc.clone(), self.complete(&desc.digest));
        let (reservation, usage) = (self.reserved.clone(), self.usage.clone());
        let writer = tokio::task::spawn_blocking(move || {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, &file);
            let mut verifier = Verifier::new(&desc.digest, desc.size);
            let mut failed = None;
            while let Some(chunk) = rx.blocking_recv() {
                if failed.is_none() {
                    failed = verifier
                        .update(&chunk)
                        .err()
                        .map(|e| e.to_string())
                        .or_else(|| out.write_all(&chunk).err().map(|e| e.to_string()));
                }
            }
            let done = match failed {
                Some(e) => Err(e),
                None => out
                    .flush()
                    .map_err(|e| e.to_string())
                    .and_then(|()| verifier.finish().map_err(|e| e.to_string())),
            };
            drop(out);
            match done
                .and_then(|()| disk::publish(&file, &partial, &complete).map_err(|e| e.to_string()))
            {
                // Published: its blocks now count in `blobs/`.
                Ok(()) => usage.lock().unwrap().since += desc.size,
                Err(e) => {
                    // An interrupted or failed download: nothing to keep.
                    tracing::debug!("not caching {}: {e}", desc.digest);
                    disk::discard(&file, &partial);
                }
            }
            reservation.fetch_sub(desc.size, Ordering::SeqCst);
        });
        // The copy gets each chunk before the puller does; a closed queue (the writer gave
        // up) never stops the pull.
        let content = content.then(move |item| {
            let tx = tx.clone();
            async move {
                if let Ok(chunk) = &item {
                    let _ = tx.send(chunk.clone()).await;
                }
                item
            }
        });
        let kept = async move {
            let _ = writer.await;
        };
        (Box::pin(content), kept.boxed())
    }
}
