//! What a mount tells its user: notices (why it is read-only, hidden layers, held-back
//! files), the last error nobody saw, files open for writing, pending changes, and the
//! `oras-fs status` report that gathers them.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use super::cache::Errno;
use super::filesystem::OrasFs;
use super::tree::{Ino, Kind, Source, Tree};
use super::view;

/// What `oras-fs status` shows of a mount.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MountStatus {
    pub reference: String,
    pub digest: String,
    pub read_only: bool,
    /// Why it is read-only, layers it hides, files held back from a push, ...
    pub notices: Vec<String>,
    /// Changes not yet pushed, one line each (`+ new`, `M changed`, `- removed`).
    pub pending: Vec<String>,
    /// Files open for writing now (paths in the mount).
    pub open_for_writing: Vec<String>,
    pub last_error: Option<String>,
}

impl OrasFs {
    /// What the user should know about this mount (one sentence each).
    pub fn notices(&self) -> Vec<String> {
        self.notices_in(&self.tree.read().unwrap())
    }

    /// [`OrasFs::notices`] for a caller that holds the tree.
    pub(super) fn notices_in(&self, tree: &Tree) -> Vec<String> {
        let mut out = self.notices.clone();
        out.extend(self.browsing_notices());
        out.extend(
            tree.nodes()
                .filter(|n| n.incomplete)
                .map(|n| view::incomplete_notice(&tree.path_of(n.ino))),
        );
        let mut seen = HashSet::new();
        out.retain(|n| seen.insert(n.clone()));
        out
    }

    /// Keeps an error for `oras-fs status` (the log may be unwritable, e.g. on a full disk).
    pub fn record_error(&self, error: impl std::fmt::Display) {
        *self.last_error.lock().unwrap() = Some(error.to_string());
    }

    /// `EIO` for a failure the user sees only as that errno: its reason goes to `status`.
    pub(super) fn eio(&self, what: String) -> Errno {
        self.record_error(&what);
        Errno::new(libc::EIO, what)
    }

    /// Inodes with a handle open for writing.
    pub(super) fn writable_inos(&self) -> HashSet<Ino> {
        self.handles
            .lock()
            .unwrap()
            .values()
            .filter(|h| h.writable)
            .map(|h| h.ino)
            .collect()
    }

    /// Paths (in the mount) of the files open for writing now.
    pub fn open_writers(&self) -> Vec<String> {
        let inos = self.writable_inos();
        let tree = self.tree.read().unwrap();
        let mut out: Vec<String> = inos
            .into_iter()
            .filter(|&i| tree.get(i).is_some())
            .map(|i| tree.path_of(i))
            .collect();
        out.sort();
        out
    }

    /// The changes not yet pushed, one line each: `+` new, `M` changed, `R` renamed (with the
    /// old path), `-` removed.
    pub fn pending_changes(&self) -> Vec<String> {
        if self.writer.is_none() || !self.changed.load(Ordering::SeqCst) {
            return Vec::new();
        }
        // A copy: the tree is locked first everywhere (a sync holds it while it replaces the
        // snapshot).
        let snap = self.snapshot();
        let tree = self.tree.read().unwrap();
        let mut present = HashSet::new();
        let mut out = Vec::new();
        for n in tree.nodes().filter(|n| !n.internal && !n.frozen) {
            let path = tree.path_of(n.ino);
            let was = n
                .origin
                .and_then(|i| snap.manifest.layers.get(i))
                .and_then(|l| l.title())
                .map(|t| t.trim_end_matches('/').to_string());
            if let Some(i) = n.origin {
                present.insert(i);
            }
            let staged = matches!(n.kind, Kind::File(Source::Staged(_)));
            match (was, staged) {
                (None, true) => out.push(format!("+ {path}")),
                (Some(_), true) => out.push(format!("M {path}")),
                (Some(old), false) if old != path => out.push(format!("R {old} -> {path}")),
                _ => {}
            }
        }
        let hidden = self.hidden.read().unwrap();
        for (i, l) in snap.manifest.layers.iter().enumerate() {
            if !present.contains(&i) && !hidden.contains(&i) {
                out.push(format!("- {}", l.title().unwrap_or("(untitled)")));
            }
        }
        out.sort();
        out
    }

    pub fn status(&self) -> MountStatus {
        let snap = self.snapshot();
        MountStatus {
            reference: snap.reference,
            // A repository or registry mount shows no one manifest.
            digest: if self.shows_many() {
                String::new()
            } else {
                snap.descriptor.digest.to_string()
            },
            read_only: self.read_only(),
            notices: self.notices(),
            pending: self.pending_changes(),
            open_for_writing: self.open_writers(),
            last_error: self
                .last_error
                .lock()
                .unwrap()
                .clone()
                .or_else(|| self.cache.last_error()),
        }
    }
}
