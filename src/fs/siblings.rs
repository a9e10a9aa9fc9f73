//! Tree walks over files that are blobs of their own: a reader opening a directory's files one
//! after another in readdir order (`cp -r`, `tar c`, `grep -r`, `cat DIR/*`) would otherwise
//! wait for one fetch per file, while `pull` runs several at once. When the file opened is
//! the one after the last opened in its directory, the next small files are fetched in the
//! background, concurrently (as many at once as `pull` runs: more over HTTP/2), a window of
//! files at a time as the layer walk and the kernel's readahead do.

use std::collections::HashMap;
use std::ffi::OsString;
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::sync::{Arc, Mutex};

use super::cache::SMALL_BLOB;
use super::filesystem::OrasFs;
use super::tree::{Ino, Kind, Source, Tree};
use crate::manifest::Descriptor;

/// Files fetched ahead: the first window, doubled on every step up to this many times the
/// files fetched at once (`BlobCache::walk_width`), so that they stay busy between batches.
const FILES_AHEAD: (usize, usize) = (4, 4);
/// Bytes of small files fetched ahead at most (they land on disk, in the cache; with a small
/// `--cache-size`, an eighth of it, so they are not evicted before they are read).
const BYTES_AHEAD: u64 = 32 << 20;
/// Directories whose walks are remembered; past this the memory starts over.
const DIRS_KEPT: usize = 4096;

/// Per directory: the last file opened, the window, and the last file asked for ahead.
#[derive(Default)]
pub(super) struct SiblingWalks {
    dirs: Mutex<HashMap<Ino, DirWalk>>,
}

#[derive(Default)]
struct DirWalk {
    last: OsString,
    window: usize,
    ahead_to: Option<OsString>,
}

/// A file whose bytes are a blob of their own.
fn blob_of(tree: &Tree, ino: Ino) -> Option<Arc<Descriptor>> {
    match tree.get(ino).map(|n| &n.kind) {
        Some(Kind::File(Source::Blob(d))) => Some(d.clone()),
        _ => None,
    }
}

impl OrasFs {
    /// Records that `ino` is being opened for reading, and fetches the files after it in the
    /// background if this continues a walk through its directory.
    pub(super) fn walk_siblings(&self, ino: Ino) {
        let ahead = {
            let tree = self.tree.read().unwrap();
            self.siblings_ahead(&tree, ino)
        };
        for d in ahead {
            self.cache.prefetch_whole(&d);
        }
    }

    fn siblings_ahead(&self, tree: &Tree, ino: Ino) -> Vec<Arc<Descriptor>> {
        let Some(node) = tree.get(ino) else {
            return Vec::new();
        };
        let Some(Kind::Dir { children, .. }) = tree.get(node.parent).map(|n| &n.kind) else {
            return Vec::new();
        };
        let name = &node.name;
        let files_after = |from: &OsString| {
            children
                .range::<OsString, _>((Excluded(from), Unbounded))
                .filter_map(|(n, &c)| Some((n, blob_of(tree, c)?)))
        };
        let mut dirs = self.siblings.dirs.lock().unwrap();
        if dirs.len() >= DIRS_KEPT && !dirs.contains_key(&node.parent) {
            dirs.clear();
        }
        let w = dirs.entry(node.parent).or_default();
        if *name == w.last {
            return Vec::new();
        }
        let in_order =
            !w.last.is_empty() && files_after(&w.last).next().is_some_and(|(n, _)| n == name);
        w.last = name.clone();
        if !in_order {
            w.window = 0;
            w.ahead_to = None;
            return Vec::new();
        }
        let widest = FILES_AHEAD.1 * self.cache.walk_width();
        w.window = (w.window * 2).clamp(FILES_AHEAD.0, widest.max(FILES_AHEAD.0));
        let ahead_to = w.ahead_to.clone().filter(|a| a > name);
        let remaining = ahead_to.as_ref().map_or(0, |a| {
            children
                .range::<OsString, _>((Excluded(name), Included(a)))
                .filter(|(_, &c)| blob_of(tree, c).is_some())
                .count()
        });
        if remaining > w.window / 2 {
            return Vec::new();
        }
        let budget = BYTES_AHEAD.min(self.cache.disk_limit() / 8);
        let mut picked = Vec::new();
        let mut bytes = 0;
        for (n, d) in files_after(ahead_to.as_ref().unwrap_or(name)) {
            if remaining + picked.len() >= w.window {
                break;
            }
            // Large files are read with their own growing window; here they only count as
            // a step, so that the walk goes on past them.
            if d.size <= SMALL_BLOB {
                if bytes + d.size > budget && !picked.is_empty() {
                    break;
                }
                bytes += d.size;
            }
            w.ahead_to = Some(n.clone());
            picked.push(d);
        }
        picked.retain(|d| d.size <= SMALL_BLOB);
        picked
    }
}
