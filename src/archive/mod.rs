//! Layer archive formats, as bytes: what is in a tar+gzip layer and which byte ranges hold
//! one file. No FUSE and no network here: `push`/`pull` (through `content::file`), `index`
//! and the mount all ask this module, and it is unit-tested on bytes.
//!
//! - [`seekable`]: the seekable (eStargz-compatible) layer: writer, footer and TOC reader.
//! - [`gzindex`]: a seek index for any gzip stream (zran checkpoints) and the tar listing
//!   built in the same streaming pass, for layers other tools pushed.
//! - [`merge`]: container image layers applied in order, with OCI whiteouts.
//!
//! Both seekable layers and indexed layers describe a file the same way: a list of
//! [`Chunk`]s, each with its own sha256, so that nothing is served before it is verified
//! even though the layer's own digest can only be checked on a whole download.

pub mod gzindex;
pub mod merge;
pub mod seekable;

use crate::digest::Digest;

/// One entry of a layer's tar, checked: `path` is relative, `/`-separated, without `.`,
/// `..`, empty or NUL components (readers refuse entries that are not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits with setuid/setgid/sticky (`0o7777` at most).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    /// A regular file of `size` bytes whose data is in `chunks` (in order, covering
    /// `0..size` exactly; empty for an empty file).
    File {
        size: u64,
        chunks: Vec<Chunk>,
    },
    Symlink {
        target: String,
    },
    /// A hard link to the entry at `target` (a path as checked as `Entry::path`).
    Hardlink {
        target: String,
    },
    /// Character and block devices, FIFOs: listed, never read.
    Special,
}

/// A piece of a file's data and where to find it in the layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Where the piece starts within the file.
    pub file_offset: u64,
    pub len: u64,
    /// The sha256 of the piece's bytes: checked before they are served.
    pub digest: Digest,
    pub at: ChunkAt,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkAt {
    /// A gzip member of the layer blob at `offset..end` (compressed bytes) whose output
    /// starts with this piece (seekable layers).
    Member { offset: u64, end: u64 },
    /// At `offset` in the layer's uncompressed stream; a [`gzindex::Index`] says where to
    /// start decompressing (indexed layers).
    Stream { offset: u64 },
}

/// Why a TOC, an index or a tar could not be used (a clean refusal, never a panic).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

impl FormatError {
    pub fn new(msg: impl Into<String>) -> Self {
        FormatError(msg.into())
    }
}

impl From<FormatError> for crate::Error {
    fn from(e: FormatError) -> Self {
        crate::Error::Other(e.0)
    }
}

/// Checks and normalises a path from a tar or TOC: strips a leading `./` and a trailing `/`,
/// refuses absolute paths, `..`, NUL and empty results.
pub fn clean_path(raw: &str) -> Result<String, FormatError> {
    if raw.contains('\0') {
        return Err(FormatError::new(format!("entry name {raw:?} contains NUL")));
    }
    if raw.starts_with('/') {
        return Err(FormatError::new(format!("entry name {raw:?} is absolute")));
    }
    let mut parts = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(FormatError::new(format!(
                    "entry name {raw:?} climbs out with '..'"
                )))
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(FormatError::new(format!("entry name {raw:?} is empty")));
    }
    Ok(parts.join("/"))
}

/// The checks `pull` makes on a directory layer, for a layer listed rather than unpacked:
/// no device or FIFO, no symlink out of the tree (absolute, or climbing above the root), and
/// no entry reached through a symlink of the same layer. The first offending entry, named.
pub fn check_contained(entries: &[Entry]) -> Result<(), FormatError> {
    let mut links = std::collections::HashSet::new();
    for e in entries {
        let mut ancestor = e.path.as_str();
        while let Some(i) = ancestor.rfind('/') {
            ancestor = &ancestor[..i];
            if links.contains(ancestor) {
                return Err(FormatError::new(format!(
                    "{}: leads through the symlink {ancestor} of the layer",
                    e.path
                )));
            }
        }
        match &e.kind {
            EntryKind::Special => {
                return Err(FormatError::new(format!(
                    "{}: a device or FIFO, which a directory layer may not hold",
                    e.path
                )))
            }
            EntryKind::Symlink { target } => {
                let dir = e.path.rsplit_once('/').map_or("", |(d, _)| d);
                if leaves(dir, target) {
                    return Err(FormatError::new(format!(
                        "{}: link to {target} points outside the directory",
                        e.path
                    )));
                }
                // A target that goes through another symlink could leave by it (`l1 -> .`,
                // `l2 -> l1/../..`): refused, as unpacking refuses it.
                let mut lexical: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
                let mut moved = false;
                for c in target.split('/').filter(|c| !c.is_empty() && *c != ".") {
                    // A symlink in the middle of the target is followed; at its end it is
                    // only named (and checked on its own).
                    if moved && links.contains(lexical.join("/").as_str()) {
                        return Err(FormatError::new(format!(
                            "{}: link to {target} leads through a symlink of the layer",
                            e.path
                        )));
                    }
                    if c == ".." {
                        lexical.pop();
                    } else {
                        lexical.push(c);
                    }
                    moved = true;
                }
                links.insert(e.path.as_str());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether a symlink in `dir` (a path inside the layer) to `target` points outside it.
fn leaves(dir: &str, target: &str) -> bool {
    escapes(&std::path::Path::new(dir).join(target))
}

/// Whether a path climbs above its start (or is absolute), judged lexically.
pub fn escapes(path: &std::path::Path) -> bool {
    use std::path::Component;
    let mut depth = 0i64;
    for c in path.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::RootDir | Component::Prefix(_) => return true,
            Component::CurDir => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_normalises_and_refuses() {
        assert_eq!(clean_path("./a//b/").unwrap(), "a/b");
        assert!(clean_path("/etc/passwd").is_err());
        assert!(clean_path("a/../../x").is_err());
        assert!(clean_path("a\0b").is_err());
        assert!(clean_path("./").is_err());
    }

    fn link(path: &str, target: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Symlink {
                target: target.into(),
            },
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }

    #[test]
    fn contained_layers_keep_their_links_inside() {
        assert!(check_contained(&[link("d/a", "b"), link("d/c", "../d/b")]).is_ok());
        assert!(check_contained(&[link("d/a", "b"), link("d/c", "a")]).is_ok());
        assert!(check_contained(&[link("d/up", "../../x")]).is_err());
        assert!(check_contained(&[link("d/etc", "/etc")]).is_err());
        let through = [link("t/l1", "."), link("t/l2", "l1/../..")];
        assert!(check_contained(&through)
            .unwrap_err()
            .0
            .contains("through a symlink"));
        let chain = [link("d/dot", "."), link("d/dot/dot/x", "../..")];
        assert!(check_contained(&chain)
            .unwrap_err()
            .0
            .contains("through the symlink d/dot"));
    }
}
