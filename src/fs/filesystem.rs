//! The filesystem semantics of a mount, independent of FUSE: what lookup, getattr, readdir,
//! open and read do (see docs/SEMANTICS.md). The FUSE adapter in `fuse.rs` only translates.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use bytes::Bytes;

use super::cache::{BlobCache, Errno};
use super::tree::{empty_dir, AddError, Ino, Kind, Node, Source, Tree, ROOT};
use crate::manifest::{annotation, Descriptor, Manifest};
use crate::oras::LayerFilter;

/// First prefetch window of a sequential reader; it doubles up to `MAX_WINDOW`.
const INITIAL_WINDOW: u64 = 1024 * 1024;
const MAX_WINDOW: u64 = 32 * 1024 * 1024;
/// Reads this close to the previous one still count as sequential (the kernel reorders).
const SEQUENTIAL_SLACK: u64 = 1024 * 1024;

/// What is mounted: one manifest, resolved once.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The reference as given (`registry/repo:tag`).
    pub reference: String,
    pub descriptor: Descriptor,
    pub manifest_bytes: Bytes,
    pub manifest: Manifest,
    pub config_bytes: Bytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    File,
    Symlink,
}

#[derive(Clone, Debug)]
pub struct Attr {
    pub ino: Ino,
    pub size: u64,
    pub kind: FileKind,
    pub perm: u16,
    pub mtime: SystemTime,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Debug)]
pub struct MountOptions {
    pub filter: LayerFilter,
    pub read_only: bool,
}

/// Per-open-file state: where reads go, and the sequential-read detector.
struct Handle {
    source: Source,
    last_end: u64,
    frontier: u64,
    window: u64,
}

impl Handle {
    /// The byte range to prefetch after a read of `offset..offset+len`, growing the window
    /// while the reader stays sequential (as mountpoint-s3's prefetcher does).
    fn prefetch(&mut self, offset: u64, len: u64, size: u64) -> std::ops::Range<u64> {
        let end = offset + len;
        let sequential = offset + SEQUENTIAL_SLACK >= self.last_end
            && offset <= self.last_end + SEQUENTIAL_SLACK;
        if !sequential {
            self.window = INITIAL_WINDOW;
            self.last_end = end;
            self.frontier = end;
            return 0..0;
        }
        self.last_end = self.last_end.max(end);
        if end + self.window / 2 < self.frontier || self.frontier >= size {
            return 0..0;
        }
        let start = self.frontier.max(end);
        let stop = (start + self.window).min(size);
        self.frontier = stop;
        self.window = (self.window * 2).min(MAX_WINDOW);
        start..stop
    }
}

pub struct OrasFs {
    cache: Arc<BlobCache>,
    tree: RwLock<Tree>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    snapshot: RwLock<Snapshot>,
    options: MountOptions,
    uid: u32,
    gid: u32,
    runtime: tokio::runtime::Handle,
}

fn file_perm(read_only: bool) -> u16 {
    if read_only {
        0o444
    } else {
        0o644
    }
}

fn dir_perm(read_only: bool) -> u16 {
    if read_only {
        0o555
    } else {
        0o755
    }
}

impl OrasFs {
    /// Builds the view of a snapshot. Layers the filter leaves out are not shown; layers with
    /// unsafe or conflicting titles are skipped with a warning.
    pub fn new(
        cache: Arc<BlobCache>,
        snapshot: Snapshot,
        options: MountOptions,
        runtime: tokio::runtime::Handle,
    ) -> crate::Result<OrasFs> {
        let tree = build_tree(&snapshot, &options)?;
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(OrasFs {
            cache,
            tree: RwLock::new(tree),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            snapshot: RwLock::new(snapshot),
            options,
            uid,
            gid,
            runtime,
        })
    }

    pub fn cache(&self) -> &Arc<BlobCache> {
        &self.cache
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.read().unwrap().clone()
    }

    pub fn read_only(&self) -> bool {
        self.options.read_only
    }

    fn attr_of(&self, n: &Node) -> Attr {
        let kind = match n.kind {
            Kind::Dir { .. } => FileKind::Dir,
            Kind::File(_) => FileKind::File,
            Kind::Symlink(_) => FileKind::Symlink,
        };
        Attr {
            ino: n.ino,
            size: n.size,
            kind,
            perm: n.perm,
            mtime: n.mtime,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
        }
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr, Errno> {
        let tree = self.tree.read().unwrap();
        tree.get(ino).map(|n| self.attr_of(n)).ok_or(libc::ENOENT)
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Attr, Errno> {
        self.expand(parent)?;
        let tree = self.tree.read().unwrap();
        tree.lookup(parent, name)
            .map(|n| self.attr_of(n))
            .ok_or(libc::ENOENT)
    }

    /// Directory entries (without `.` and `..`).
    pub fn readdir(&self, ino: Ino) -> Result<Vec<(Ino, FileKind, std::ffi::OsString)>, Errno> {
        self.expand(ino)?;
        let tree = self.tree.read().unwrap();
        let node = tree.get(ino).ok_or(libc::ENOENT)?;
        if !node.is_dir() {
            return Err(libc::ENOTDIR);
        }
        Ok(tree
            .children(ino)
            .into_iter()
            .map(|n| (n.ino, self.attr_of(n).kind, n.name.clone()))
            .collect())
    }

    pub fn readlink(&self, ino: Ino) -> Result<PathBuf, Errno> {
        match &self.tree.read().unwrap().get(ino).ok_or(libc::ENOENT)?.kind {
            Kind::Symlink(t) => Ok(t.clone()),
            _ => Err(libc::EINVAL),
        }
    }

    /// Opens a file for reading. Writes are refused on a read-only mount.
    pub fn open(&self, ino: Ino, write: bool) -> Result<u64, Errno> {
        if write && self.options.read_only {
            return Err(libc::EROFS);
        }
        let tree = self.tree.read().unwrap();
        let node = tree.get(ino).ok_or(libc::ENOENT)?;
        let source = match &node.kind {
            Kind::File(s) => s.clone(),
            Kind::Dir { .. } => return Err(libc::EISDIR),
            Kind::Symlink(_) => return Err(libc::ELOOP),
        };
        if write {
            return Err(libc::EROFS);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(
            fh,
            Handle {
                source,
                last_end: 0,
                frontier: 0,
                window: INITIAL_WINDOW,
            },
        );
        Ok(fh)
    }

    pub fn release(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    /// Reads from an open file: cached blocks, else Range requests (with prefetch when the
    /// reader is sequential).
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, Errno> {
        let (source, prefetch) = {
            let mut handles = self.handles.lock().unwrap();
            let h = handles.get_mut(&fh).ok_or(libc::EBADF)?;
            let pre = match &h.source {
                Source::Blob(d) => h.prefetch(offset, size as u64, d.size),
                _ => 0..0,
            };
            (h.source.clone(), pre)
        };
        match source {
            Source::Blob(desc) => self.cache.read(&desc, offset, size as u64, prefetch).await,
            Source::Inline(b) => {
                let start = (offset as usize).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                Ok(b.slice(start..end))
            }
            Source::Local(path) => {
                let file = std::fs::File::open(&path)
                    .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
                let mut buf = vec![0u8; size as usize];
                let mut n = 0;
                while n < buf.len() {
                    match file.read_at(&mut buf[n..], offset + n as u64) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
                    }
                }
                buf.truncate(n);
                Ok(buf.into())
            }
        }
    }

    /// (total bytes, files) for statfs.
    pub fn usage(&self) -> (u64, u64) {
        let tree = self.tree.read().unwrap();
        let bytes = tree.nodes().map(|n| n.size).sum();
        (bytes, tree.len() as u64)
    }

    /// Fills in a directory layer's contents on first access: fetches (verified) and unpacks
    /// it into the cache once per digest.
    fn expand(&self, ino: Ino) -> Result<(), Errno> {
        let pending = match &self.tree.read().unwrap().get(ino).ok_or(libc::ENOENT)?.kind {
            Kind::Dir {
                pending_layer: Some(d),
                ..
            } => d.clone(),
            _ => return Ok(()),
        };
        let dir = self.unpacked_dir(&pending)?;
        let mut tree = self.tree.write().unwrap();
        if let Some(Node {
            kind: Kind::Dir { pending_layer, .. },
            ..
        }) = tree.get_mut(ino)
        {
            if pending_layer.take().is_none() {
                return Ok(()); // Another thread got here first.
            }
        }
        add_local_tree(&mut tree, ino, &dir, self.options.read_only);
        Ok(())
    }

    fn unpacked_dir(&self, desc: &Descriptor) -> Result<PathBuf, Errno> {
        let dest = self
            .cache
            .dir()
            .join("unpacked")
            .join(desc.digest.algorithm())
            .join(desc.digest.hex());
        if dest.exists() {
            return Ok(dest);
        }
        let cache = self.cache.clone();
        let d = desc.clone();
        let tgz = self
            .runtime
            .block_on(async move { cache.materialize(&d).await })?;
        let opts = crate::content::file::FileStoreOptions::default();
        crate::content::file::unpack_directory(&tgz, &dest, desc, &opts).map_err(|e| {
            tracing::error!("unpacking directory layer {}: {e}", desc.digest);
            libc::EIO
        })?;
        Ok(dest)
    }
}

fn created_time(manifest: &Manifest) -> SystemTime {
    manifest
        .annotation(annotation::CREATED)
        .and_then(|c| humantime::parse_rfc3339_weak(c).ok())
        .unwrap_or_else(SystemTime::now)
}

fn build_tree(snapshot: &Snapshot, options: &MountOptions) -> crate::Result<Tree> {
    let ro = options.read_only;
    let mut tree = Tree::new(created_time(&snapshot.manifest), dir_perm(ro));
    let (layers, _skipped) = options.filter.select(&snapshot.manifest)?;
    for layer in layers {
        let title = layer
            .title()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_string();
        let (kind, size, perm) = if layer.is_directory() {
            (
                Kind::Dir {
                    children: Default::default(),
                    pending_layer: Some(layer.clone()),
                },
                0,
                dir_perm(ro),
            )
        } else {
            (
                Kind::File(Source::Blob(layer.clone())),
                layer.size,
                file_perm(ro),
            )
        };
        match tree.add_path(&title, kind, size, perm, dir_perm(ro)) {
            Ok(_) => {}
            Err(AddError::Unsafe) => {
                tracing::warn!("skipping layer {}: unsafe title {title:?}", layer.digest)
            }
            Err(AddError::Conflict) => tracing::warn!(
                "skipping layer {}: title {title:?} conflicts with another",
                layer.digest
            ),
        }
    }
    // `.oras/`: what is mounted, for scripts.
    let meta = tree
        .add_child(
            ROOT,
            OsStr::new(".oras"),
            empty_dir(),
            0,
            0o555,
            tree.default_mtime,
        )
        .map_err(|_| {
            crate::Error::Other("a layer is titled .oras, which the mount reserves".into())
        })?;
    tree.get_mut(meta).expect("just added").internal = true;
    for (name, data) in [
        ("manifest.json", snapshot.manifest_bytes.clone()),
        ("config.json", snapshot.config_bytes.clone()),
        (
            "digest",
            Bytes::from(format!("{}\n", snapshot.descriptor.digest)),
        ),
    ] {
        let len = data.len() as u64;
        let ino = tree
            .add_child(
                meta,
                OsStr::new(name),
                Kind::File(Source::Inline(data)),
                len,
                0o444,
                tree.default_mtime,
            )
            .expect("fresh directory");
        tree.get_mut(ino).expect("just added").internal = true;
    }
    Ok(tree)
}

/// Mirrors an unpacked directory on disk into the tree below `parent`.
fn add_local_tree(tree: &mut Tree, parent: Ino, dir: &Path, read_only: bool) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let mtime = meta.modified().unwrap_or(tree.default_mtime);
        let mut perm = (meta.permissions().mode() & 0o777) as u16;
        if read_only {
            perm &= !0o222;
        }
        let name = e.file_name();
        if meta.is_dir() {
            if let Ok(ino) = tree.add_child(parent, &name, empty_dir(), 0, perm, mtime) {
                add_local_tree(tree, ino, &e.path(), read_only);
            }
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            let len = target.as_os_str().len() as u64;
            let _ = tree.add_child(parent, &name, Kind::Symlink(target), len, 0o777, mtime);
        } else if meta.is_file() {
            let _ = tree.add_child(
                parent,
                &name,
                Kind::File(Source::Local(e.path())),
                meta.len(),
                perm,
                mtime,
            );
        }
    }
}

impl OrasFs {
    /// The parent directory of `ino` (the root is its own parent).
    pub fn parent_of(&self, ino: Ino) -> Ino {
        self.tree
            .read()
            .unwrap()
            .get(ino)
            .map(|n| n.parent)
            .unwrap_or(ROOT)
    }
}
