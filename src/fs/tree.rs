//! The inode table of a mount: what `ls` and `stat` see, built once from the manifest so that
//! they never touch the network. No FUSE types here.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;

use crate::manifest::Descriptor;

pub type Ino = u64;
pub const ROOT: Ino = 1;

/// Where a file's bytes come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A layer blob in the registry, read lazily through the block cache.
    Blob(std::sync::Arc<Descriptor>),
    /// A file unpacked from a directory layer into the cache (read-only).
    Unpacked(PathBuf),
    /// A new or changed file, staged by a write (see `staging`).
    Staged(PathBuf),
    /// Small generated content (the `.oras/` files).
    Inline(Bytes),
    /// A file inside a seekable or indexed layer, read chunk by chunk (see `layer`).
    Layer(std::sync::Arc<LayerFile>),
}

/// A file inside a layer: which layer, and where its verified pieces are.
#[derive(Debug)]
pub struct LayerFile {
    pub layer: std::sync::Arc<Descriptor>,
    pub chunks: Vec<crate::archive::Chunk>,
    /// Where chunks at offsets of the layer's uncompressed stream are read from; `None`: the
    /// layer is an uncompressed tar, and they are ranges of its blob.
    pub stream: Option<Stream>,
}

/// A compressed layer's uncompressed stream, as a file inside it reads it.
#[derive(Clone, Debug)]
pub enum Stream {
    /// A gzip layer's, decompressed from the checkpoint of its seek index before the chunk.
    Indexed(std::sync::Arc<crate::archive::gzindex::Index>),
    /// A zstd layer's, decompressed whole into the cache (this file) when it was listed.
    Decoded(std::sync::Arc<std::path::PathBuf>),
}

/// What a directory shows once it is first looked into. Compared when filled: a refresh may
/// have put another in its place meanwhile (see `OrasFs::expand`).
#[derive(Clone, Debug, PartialEq)]
pub enum Pending {
    /// A directory layer of an artifact: its entries below the title.
    Layer(Descriptor),
    /// A container image's root filesystem: these layers merged, whiteouts applied.
    Image(Vec<Descriptor>),
    /// One layer of an image on its own (the side-by-side view).
    Rootfs(Descriptor),
    /// A repository's tags, one directory each (a registry mount; see `repository`).
    Tags,
    /// What a tag (or `@digest`) of a repository shows, loaded on first access.
    Manifest,
}

#[derive(Clone, Debug)]
pub enum Kind {
    Dir {
        children: BTreeMap<OsString, Ino>,
        /// Contents that appear on first access (a layer's, an image's).
        pending: Option<Box<Pending>>,
    },
    File(Source),
    Symlink(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Node {
    pub ino: Ino,
    pub parent: Ino,
    pub name: OsString,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    /// Permission bits (`0o644`, ...).
    pub perm: u16,
    /// Not part of what a sync pushes (the `.oras/` directory).
    pub internal: bool,
    /// The directory layer this directory shows (kept as one layer on sync).
    pub layer: Option<Descriptor>,
    /// Inside a directory layer: read-only even on a writable mount.
    pub frozen: bool,
    /// Bumped by every write, so a sync knows whether a file changed while it was pushed.
    pub version: u64,
    /// The index of the base manifest's layer this node shows: a sync keeps it in that place.
    pub origin: Option<usize>,
    /// Staged, but its writer did not close it before an earlier mount ended: possibly
    /// incomplete, so it is held back from pushes until it is written again.
    pub incomplete: bool,
    /// Owner as recorded in a layer's tar (`None`: the mounting user).
    pub owner: Option<(u32, u32)>,
    /// Found by lookup but not listed (a repository mount's `@sha256:<hex>` directories).
    pub unlisted: bool,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir { .. })
    }
}

#[derive(Debug)]
pub struct Tree {
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
    /// The times new nodes get when none is given.
    pub default_mtime: SystemTime,
}

/// Why a path could not be added.
#[derive(Debug, PartialEq, Eq)]
pub enum AddError {
    /// `..`, absolute, empty or otherwise not a plain relative path.
    Unsafe,
    /// A file stands where a directory is needed, or the name is taken.
    Conflict,
}

impl Tree {
    pub fn new(mtime: SystemTime, dir_perm: u16) -> Self {
        let root = Node {
            ino: ROOT,
            parent: ROOT,
            name: OsString::new(),
            kind: Kind::Dir {
                children: BTreeMap::new(),
                pending: None,
            },
            size: 0,
            mtime,
            perm: dir_perm,
            internal: false,
            layer: None,
            frozen: false,
            version: 0,
            origin: None,
            incomplete: false,
            owner: None,
            unlisted: false,
        };
        Tree {
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            default_mtime: mtime,
        }
    }

    pub fn get(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: Ino) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Option<&Node> {
        match &self.nodes.get(&parent)?.kind {
            Kind::Dir { children, .. } => self.nodes.get(children.get(name)?),
            _ => None,
        }
    }

    /// Children of a directory, in name order.
    pub fn children(&self, ino: Ino) -> Vec<&Node> {
        match self.nodes.get(&ino).map(|n| &n.kind) {
            Some(Kind::Dir { children, .. }) => children
                .values()
                .filter_map(|i| self.nodes.get(i))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Adds a node under `parent`; fails if the name is taken.
    pub fn add_child(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        size: u64,
        perm: u16,
        mtime: SystemTime,
    ) -> Result<Ino, AddError> {
        let ino = self.next_ino;
        match self.nodes.get_mut(&parent).map(|n| &mut n.kind) {
            Some(Kind::Dir { children, .. }) => {
                if children.contains_key(name) {
                    return Err(AddError::Conflict);
                }
                children.insert(name.to_os_string(), ino);
            }
            _ => return Err(AddError::Conflict),
        }
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                ino,
                parent,
                name: name.to_os_string(),
                kind,
                size,
                mtime,
                perm,
                internal: false,
                layer: None,
                frozen: false,
                version: 0,
                origin: None,
                incomplete: false,
                owner: None,
                unlisted: false,
            },
        );
        Ok(ino)
    }

    /// Adds `path` (`a/b/c.txt`) with the given leaf, creating the directories on the way.
    pub fn add_path(
        &mut self,
        path: &str,
        kind: Kind,
        size: u64,
        perm: u16,
        dir_perm: u16,
    ) -> Result<Ino, AddError> {
        let comps = plain_components(path).ok_or(AddError::Unsafe)?;
        let (leaf, dirs) = comps.split_last().ok_or(AddError::Unsafe)?;
        let mtime = self.default_mtime;
        let mut cur = ROOT;
        for d in dirs {
            cur = match self.lookup(cur, d) {
                Some(n) if n.is_dir() => n.ino,
                Some(_) => return Err(AddError::Conflict),
                None => self.add_child(cur, d, empty_dir(), 0, dir_perm, mtime)?,
            };
        }
        self.add_child(cur, leaf, kind, size, perm, mtime)
    }

    /// Removes a node and everything below it.
    pub fn remove(&mut self, ino: Ino) -> Option<Node> {
        let node = self.nodes.remove(&ino)?;
        if let Some(Kind::Dir { children, .. }) =
            self.nodes.get_mut(&node.parent).map(|p| &mut p.kind)
        {
            children.remove(&node.name);
        }
        if let Kind::Dir { children, .. } = &node.kind {
            for c in children.values().copied().collect::<Vec<_>>() {
                self.remove_subtree(c);
            }
        }
        Some(node)
    }

    fn remove_subtree(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.remove(&ino) {
            if let Kind::Dir { children, .. } = node.kind {
                for c in children.into_values() {
                    self.remove_subtree(c);
                }
            }
        }
    }

    /// Moves `ino` to `new_parent` as `new_name`, replacing what was there (the caller checks
    /// that a replaced directory is empty).
    pub fn rename(&mut self, ino: Ino, new_parent: Ino, new_name: &OsStr) -> Option<Node> {
        let replaced = self
            .lookup(new_parent, new_name)
            .map(|n| n.ino)
            .filter(|&i| i != ino);
        let replaced = replaced.and_then(|r| self.remove(r));
        let node = self.nodes.get(&ino)?.clone();
        if let Some(Kind::Dir { children, .. }) =
            self.nodes.get_mut(&node.parent).map(|p| &mut p.kind)
        {
            children.remove(&node.name);
        }
        if let Some(Kind::Dir { children, .. }) =
            self.nodes.get_mut(&new_parent).map(|p| &mut p.kind)
        {
            children.insert(new_name.to_os_string(), ino);
        }
        let n = self.nodes.get_mut(&ino)?;
        n.parent = new_parent;
        n.name = new_name.to_os_string();
        replaced
    }

    /// The path of a node from the root, `/`-separated (its title).
    pub fn path_of(&self, mut ino: Ino) -> String {
        let mut parts = Vec::new();
        while ino != ROOT {
            let Some(n) = self.nodes.get(&ino) else { break };
            parts.push(n.name.to_string_lossy().into_owned());
            ino = n.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// Whether `ino` is `ancestor` or lies below it.
    pub fn is_within(&self, mut ino: Ino, ancestor: Ino) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            if ino == ROOT {
                return false;
            }
            match self.nodes.get(&ino) {
                Some(n) => ino = n.parent,
                None => return false,
            }
        }
    }

    /// Every node, for walks over the whole tree.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }
}

pub fn empty_dir() -> Kind {
    Kind::Dir {
        children: BTreeMap::new(),
        pending: None,
    }
}

/// The components of a plain relative path (`a/b`, `./a`), or `None` for `..`, absolute
/// paths, NUL bytes and the like.
fn plain_components(path: &str) -> Option<Vec<&OsStr>> {
    if path.contains('\0') {
        return None;
    }
    let mut out = Vec::new();
    for c in Path::new(path).components() {
        match c {
            // NAME_MAX: the kernel could list such a name but never open it.
            Component::Normal(n) if n.len() > 255 => return None,
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_nested_paths_and_refuses_bad_ones() {
        let mut t = Tree::new(SystemTime::UNIX_EPOCH, 0o755);
        let f = t
            .add_path(
                "a/b/c.txt",
                Kind::File(Source::Inline(Bytes::from_static(b"x"))),
                1,
                0o644,
                0o755,
            )
            .unwrap();
        assert_eq!(t.path_of(f), "a/b/c.txt");
        let a = t.lookup(ROOT, OsStr::new("a")).unwrap().ino;
        assert!(t.is_within(f, a));
        assert_eq!(
            t.add_path("../x", empty_dir(), 0, 0o644, 0o755),
            Err(AddError::Unsafe)
        );
        assert_eq!(
            t.add_path("/etc/x", empty_dir(), 0, 0o644, 0o755),
            Err(AddError::Unsafe)
        );
        assert_eq!(
            t.add_path("a/b/c.txt/d", empty_dir(), 0, 0o644, 0o755),
            Err(AddError::Conflict)
        );
        assert_eq!(
            t.add_path("a/b/c.txt", empty_dir(), 0, 0o644, 0o755),
            Err(AddError::Conflict)
        );
        t.rename(f, ROOT, OsStr::new("moved"));
        assert_eq!(t.path_of(f), "moved");
        t.remove(a);
        assert_eq!(t.children(ROOT).len(), 1);
    }
}
