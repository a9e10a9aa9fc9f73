//! The cache directory as several processes share it (mounts of one `--cache-dir`).
//!
//! - `blobs/<alg>/<hex>`: complete, verified blobs. Published by rename, so a reader sees a
//!   whole file or none; publishing what is already there is success (same verified bytes).
//! - `partial/<alg>/<hex>` (+ `<hex>.map`): the shared, resumable partial file of a blob. Only
//!   the process holding an exclusive `flock` on it writes it; the lock dies with the process,
//!   so a partial left by a crash is taken over by the next process that wants the blob.
//! - `partial/<alg>/<hex>.<pid>-<n>`: a private partial of a process that found the shared one
//!   locked by another; also locked while in use, never resumed, deleted once unlocked.
//!
//! Eviction deletes a partial file only while holding its lock, so it never pulls a file from
//! under the process filling it. Complete blobs may go while open: open descriptors keep their
//! bytes.

use crate::fs::paths::private_options;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Takes an exclusive lock on `f` without waiting; `Ok(false)` if another open file holds it.
pub(super) fn try_lock(f: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Whether `path` still names the file open as `f` (it may have been renamed or deleted).
pub(super) fn same_file(f: &File, path: &Path) -> bool {
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// A partial file this process holds the lock of (through the `File` opened with it).
pub(super) struct Partial {
    pub path: PathBuf,
    /// The shared, resumable file (with a block map), not a private one.
    pub shared: bool,
}

/// Distinguishes private partials of one process (tests run several caches in one process).
static PRIVATE: AtomicU64 = AtomicU64::new(0);

/// Opens the partial file of a blob for filling: the shared one if no other process fills it,
/// else a private one. Either way this process holds its lock until the file is closed.
pub(super) fn open_partial(shared: &Path, size: u64) -> io::Result<(File, Partial)> {
    for _ in 0..3 {
        let file = private_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(shared)?;
        if !try_lock(&file)? {
            break;
        }
        // Locked, but the name may have moved on meanwhile (published or evicted): then the
        // lock is on a file nobody fills any more; open the name again.
        if same_file(&file, shared) {
            file.set_len(size)?;
            return Ok((
                file,
                Partial {
                    path: shared.to_path_buf(),
                    shared: true,
                },
            ));
        }
    }
    open_private(shared, size)
}

/// Opens a new private partial file of a blob (next to its shared one), locked by this
/// process: eviction spares it while in use and deletes it once unlocked (after a crash).
pub(super) fn open_private(shared: &Path, size: u64) -> io::Result<(File, Partial)> {
    let name = shared.file_name().unwrap_or_default().to_string_lossy();
    let n = PRIVATE.fetch_add(1, Ordering::Relaxed);
    let path = shared.with_file_name(format!("{name}.{}-{n}", std::process::id()));
    let file = private_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    try_lock(&file)?;
    file.set_len(size)?;
    Ok((
        file,
        Partial {
            path,
            shared: false,
        },
    ))
}

/// Publishes a verified partial file as the complete blob. Another process having published
/// the same blob first is success: our copy is dropped.
pub(super) fn publish(file: &File, p: &Partial, complete: &Path) -> io::Result<()> {
    if !same_file(file, &p.path) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} was removed while being filled", p.path.display()),
        ));
    }
    if complete.exists() {
        return std::fs::remove_file(&p.path);
    }
    std::fs::rename(&p.path, complete)
}

/// Removes a partial file this process filled and holds the lock of (if the name is still it).
pub(super) fn discard(file: &File, p: &Partial) {
    if same_file(file, &p.path) {
        let _ = std::fs::remove_file(&p.path);
    }
    if p.shared {
        let _ = std::fs::remove_file(map_of(&p.path));
    }
}

/// The block map of a partial file.
pub(super) fn map_of(partial: &Path) -> PathBuf {
    let mut name = partial.file_name().unwrap_or_default().to_os_string();
    name.push(".map");
    partial.with_file_name(name)
}

/// Bytes the files directly in `dir` occupy.
pub(super) fn usage_of(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Bytes used by the files below `dir` (unpacked directory layers).
pub(super) fn tree_usage(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| Some((e.path(), std::fs::symlink_metadata(e.path()).ok()?)))
        // Files' blocks only: directories' own blocks would make an empty cache look used.
        .map(|(p, m)| {
            if m.is_dir() {
                tree_usage(&p)
            } else {
                m.blocks() * 512
            }
        })
        .sum()
}

/// One file of the cache that eviction may delete.
struct Entry {
    modified: SystemTime,
    path: PathBuf,
    used: u64,
    /// A partial data file: deleted only under its lock, with its map.
    partial: bool,
    /// A private partial: garbage as soon as nobody holds it.
    private: bool,
}

/// Deletes least recently used files until `blobs` and `partial` together fit in `limit`,
/// never a partial file another (or this) process is filling. Returns the bytes left and the
/// names of the complete blobs deleted.
pub(super) fn evict(blobs: &Path, partial: &Path, limit: u64) -> (u64, Vec<String>) {
    let mut entries = Vec::new();
    let mut total = 0u64;
    for (dir, is_partial) in [(blobs, false), (partial, true)] {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            let used = m.blocks() * 512;
            total += used;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_partial && (name.ends_with(".map") || name.ends_with(".tmp")) {
                // Goes with its data file; one left alone (its data file gone) is garbage.
                let data = name.trim_end_matches(".tmp").trim_end_matches(".map");
                if !partial.join(data).exists() && std::fs::remove_file(e.path()).is_ok() {
                    total = total.saturating_sub(used);
                }
                continue;
            }
            entries.push(Entry {
                modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                path: e.path(),
                used,
                partial: is_partial,
                private: is_partial && name.contains('.'),
            });
        }
    }
    entries.sort_by_key(|e| (!e.private, e.modified));
    let mut evicted = Vec::new();
    for e in entries {
        if total <= limit && !e.private {
            break;
        }
        if e.partial {
            let Ok(f) = File::open(&e.path) else {
                continue;
            };
            // Held by the process filling it (maybe this one): not ours to delete.
            if !matches!(try_lock(&f), Ok(true)) || !same_file(&f, &e.path) {
                continue;
            }
            if std::fs::remove_file(&e.path).is_ok() {
                let map = map_of(&e.path);
                let map_used = std::fs::metadata(&map).map(|m| m.blocks() * 512);
                if std::fs::remove_file(&map).is_ok() {
                    total = total.saturating_sub(map_used.unwrap_or(0));
                }
                total = total.saturating_sub(e.used);
                tracing::debug!("cache: evicted {}", e.path.display());
            }
        } else if std::fs::remove_file(&e.path).is_ok() {
            total = total.saturating_sub(e.used);
            tracing::debug!("cache: evicted {}", e.path.display());
            if let Some(name) = e.path.file_name() {
                evicted.push(name.to_string_lossy().into_owned());
            }
        }
    }
    (total, evicted)
}

/// Removes what decompressions killed midway left in `dir` (`.oras-fs-*` temporaries not
/// written to for 10 minutes: a live one is written to all the time), so that it stops
/// counting against the bound. Best effort.
pub(super) fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let stale = SystemTime::now() - std::time::Duration::from_secs(600);
    for e in entries.flatten() {
        let temporary = e.file_name().to_string_lossy().starts_with(".oras-fs-");
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < stale);
        if temporary && old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
