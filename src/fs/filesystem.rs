//! The filesystem semantics of a mount, independent of FUSE: what lookup, getattr, readdir,
//! open and read do (see docs/SEMANTICS.md). The FUSE adapter in `fuse.rs` only translates.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use bytes::Bytes;

use super::cache::{BlobCache, Errno};
use super::staging::{Entry, Journal, Staging};
use super::tree::{empty_dir, AddError, Ino, Kind, Node, Source, Tree, ROOT};
use crate::content::{FileStore, Overlay, Target};
use crate::manifest::{annotation, Descriptor, Manifest};
use crate::oras::LayerFilter;
use crate::oras::{self, CopyOptions};

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
    ino: Ino,
    source: Source,
    /// Open for local files (staged or unpacked); written through when `writable`.
    file: Option<Arc<std::fs::File>>,
    writable: bool,
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

/// What a writable mount needs besides the view: where changes are staged and pushed.
pub struct Writer {
    /// The mounted repository (unchanged blobs come from here).
    pub target: Arc<dyn Target>,
    /// The mounted tag, which a sync moves.
    pub tag: String,
    pub staging: Staging,
    /// Media type of new and changed files.
    pub media_type: String,
}

/// Where a sync pushes, and whether it may overwrite a tag someone else moved.
#[derive(Clone, Default)]
pub struct SyncOptions {
    /// Push the new manifest here (target and tag) instead of the mounted tag.
    pub push_to: Option<(Arc<dyn Target>, String)>,
    pub force: bool,
}

pub struct OrasFs {
    cache: Arc<BlobCache>,
    tree: RwLock<Tree>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    snapshot: RwLock<Snapshot>,
    options: MountOptions,
    writer: Option<Writer>,
    sync_lock: tokio::sync::Mutex<()>,
    /// Something changed since the last push (or an earlier mount left changes).
    changed: std::sync::atomic::AtomicBool,
    uid: u32,
    gid: u32,
    runtime: tokio::runtime::Handle,
    /// What the user should know about this mount (why it is read-only, hidden layers, ...),
    /// said at mount time, in `.oras/notes` and by `oras-fs status`.
    notices: Vec<String>,
    /// The last error a user could not see (a failed fetch or push in the background).
    last_error: Mutex<Option<String>>,
}

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

/// A new empty file only the user can read (staged data may be private).
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn os_errno(e: std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl OrasFs {
    /// Builds the view of a snapshot, or of an earlier mount's pending changes (`journal`).
    /// Layers the filter leaves out are not shown; layers with unsafe or conflicting titles are
    /// skipped with a warning.
    pub fn new(
        cache: Arc<BlobCache>,
        snapshot: Snapshot,
        options: MountOptions,
        writer: Option<Writer>,
        journal: Option<Journal>,
        runtime: tokio::runtime::Handle,
    ) -> crate::Result<OrasFs> {
        let read_only = options.read_only || writer.is_none();
        let options = MountOptions {
            read_only,
            ..options
        };
        let changed = journal.is_some() && writer.is_some();
        let mut tree = match (&journal, &writer) {
            (Some(j), Some(w)) => tree_from_journal(&snapshot, j, &w.staging),
            _ => build_tree(&snapshot, &options)?,
        };
        add_meta_dir(&mut tree, &snapshot)?;
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(OrasFs {
            cache,
            tree: RwLock::new(tree),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            snapshot: RwLock::new(snapshot),
            options,
            writer,
            sync_lock: tokio::sync::Mutex::new(()),
            changed: std::sync::atomic::AtomicBool::new(changed),
            uid,
            gid,
            runtime,
            notices: Vec::new(),
            last_error: Mutex::new(None),
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

    /// What the user should know about this mount (one sentence each).
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    /// Keeps an error for `oras-fs status` (the log may be unwritable, e.g. on a full disk).
    pub fn record_error(&self, error: impl std::fmt::Display) {
        *self.last_error.lock().unwrap() = Some(error.to_string());
    }

    /// Paths (in the mount) of the files open for writing now.
    pub fn open_writers(&self) -> Vec<String> {
        let inos: std::collections::BTreeSet<Ino> = self
            .handles
            .lock()
            .unwrap()
            .values()
            .filter(|h| h.writable)
            .map(|h| h.ino)
            .collect();
        let tree = self.tree.read().unwrap();
        inos.into_iter()
            .filter(|&i| tree.get(i).is_some())
            .map(|i| tree.path_of(i))
            .collect()
    }

    /// The changes not yet pushed, one line each.
    pub fn pending_changes(&self) -> Vec<String> {
        let Some(w) = &self.writer else {
            return Vec::new();
        };
        let tree = self.tree.read().unwrap();
        let mut out: Vec<String> = tree
            .nodes()
            .filter(|n| {
                matches!(&n.kind, Kind::File(Source::Local(p)) if p.starts_with(w.staging.dir()))
            })
            .map(|n| format!("M {}", tree.path_of(n.ino)))
            .collect();
        out.sort();
        out
    }

    pub fn status(&self) -> MountStatus {
        let snap = self.snapshot();
        MountStatus {
            reference: snap.reference,
            digest: snap.descriptor.digest.to_string(),
            read_only: self.read_only(),
            notices: self.notices.clone(),
            pending: self.pending_changes(),
            open_for_writing: self.open_writers(),
            last_error: self.last_error.lock().unwrap().clone(),
        }
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

    /// The parent directory of `ino` (the root is its own parent).
    pub fn parent_of(&self, ino: Ino) -> Ino {
        self.tree
            .read()
            .unwrap()
            .get(ino)
            .map(|n| n.parent)
            .unwrap_or(ROOT)
    }

    pub fn readlink(&self, ino: Ino) -> Result<PathBuf, Errno> {
        match &self.tree.read().unwrap().get(ino).ok_or(libc::ENOENT)?.kind {
            Kind::Symlink(t) => Ok(t.clone()),
            _ => Err(libc::EINVAL),
        }
    }

    /// Opens a file. Opening for writing first makes a local copy (copy-on-write; with
    /// `truncate`, an empty one).
    pub fn open(&self, ino: Ino, write: bool, truncate: bool) -> Result<u64, Errno> {
        if write {
            self.make_local(ino, truncate)?;
        }
        let source = {
            let tree = self.tree.read().unwrap();
            match &tree.get(ino).ok_or(libc::ENOENT)?.kind {
                Kind::File(s) => s.clone(),
                Kind::Dir { .. } => return Err(libc::EISDIR),
                Kind::Symlink(_) => return Err(libc::ELOOP),
            }
        };
        let file = match &source {
            Source::Local(p) => Some(Arc::new(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(write)
                    .open(p)
                    .map_err(os_errno)?,
            )),
            _ => None,
        };
        Ok(self.add_handle(ino, source, file, write))
    }

    fn add_handle(
        &self,
        ino: Ino,
        source: Source,
        file: Option<Arc<std::fs::File>>,
        writable: bool,
    ) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(
            fh,
            Handle {
                ino,
                source,
                file,
                writable,
                last_end: 0,
                frontier: 0,
                window: INITIAL_WINDOW,
            },
        );
        fh
    }

    pub fn release(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    /// Reads from an open file: cached blocks, else Range requests (with prefetch when the
    /// reader is sequential).
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, Errno> {
        let (source, file, prefetch) = {
            let mut handles = self.handles.lock().unwrap();
            let h = handles.get_mut(&fh).ok_or(libc::EBADF)?;
            let pre = match &h.source {
                Source::Blob(d) => h.prefetch(offset, size as u64, d.size),
                _ => 0..0,
            };
            (h.source.clone(), h.file.clone(), pre)
        };
        match (source, file) {
            (Source::Blob(desc), _) => self.cache.read(&desc, offset, size as u64, prefetch).await,
            (Source::Inline(b), _) => {
                let start = (offset as usize).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                Ok(b.slice(start..end))
            }
            (Source::Local(_), Some(file)) => {
                let mut buf = vec![0u8; size as usize];
                let mut n = 0;
                while n < buf.len() {
                    match file.read_at(&mut buf[n..], offset + n as u64) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) => return Err(os_errno(e)),
                    }
                }
                buf.truncate(n);
                Ok(buf.into())
            }
            (Source::Local(_), None) => Err(libc::EBADF),
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

    // ---- Writes -------------------------------------------------------------------------

    fn writer(&self) -> Result<&Writer, Errno> {
        match (&self.writer, self.options.read_only) {
            (Some(w), false) => Ok(w),
            _ => Err(libc::EROFS),
        }
    }

    /// Refuses changes to the `.oras/` files and inside directory layers.
    fn check_mutable(node: &Node) -> Result<(), Errno> {
        if node.internal || node.frozen {
            Err(libc::EROFS)
        } else {
            Ok(())
        }
    }

    /// A directory that may receive new entries.
    fn mutable_dir(&self, tree: &Tree, ino: Ino) -> Result<(), Errno> {
        let node = tree.get(ino).ok_or(libc::ENOENT)?;
        if !node.is_dir() {
            return Err(libc::ENOTDIR);
        }
        if node.layer.is_some() {
            return Err(libc::EROFS);
        }
        Self::check_mutable(node)
    }

    /// Writes the journal: after this, the change survives a crash.
    fn save_journal(&self, tree: &Tree) -> Result<(), Errno> {
        self.changed.store(true, Ordering::SeqCst);
        self.write_journal(tree)
    }

    /// Writes the journal without marking a change (after a push that left files staged).
    fn write_journal(&self, tree: &Tree) -> Result<(), Errno> {
        let w = self.writer()?;
        let journal = Journal {
            version: 1,
            reference: self.snapshot.read().unwrap().reference.clone(),
            base: self.snapshot.read().unwrap().descriptor.digest.clone(),
            entries: journal_entries(tree, &w.staging),
        };
        w.staging.save(&journal).map_err(|e| {
            tracing::error!("writing the journal: {e}");
            os_errno(e)
        })
    }

    /// Turns a file into a staged local copy (fetching and verifying a blob first, unless
    /// the copy starts empty).
    fn make_local(&self, ino: Ino, truncate: bool) -> Result<PathBuf, Errno> {
        let w = self.writer()?;
        let desc = {
            let tree = self.tree.read().unwrap();
            let node = tree.get(ino).ok_or(libc::ENOENT)?;
            Self::check_mutable(node)?;
            match &node.kind {
                Kind::File(Source::Local(p)) if p.starts_with(w.staging.dir()) => {
                    let p = p.clone();
                    drop(tree);
                    if truncate {
                        std::fs::OpenOptions::new()
                            .write(true)
                            .open(&p)
                            .and_then(|f| f.set_len(0))
                            .map_err(os_errno)?;
                        let mut tree = self.tree.write().unwrap();
                        if let Some(n) = tree.get_mut(ino) {
                            n.size = 0;
                            n.version += 1;
                        }
                    }
                    return Ok(p);
                }
                Kind::File(Source::Blob(d)) => d.as_ref().clone(),
                Kind::File(_) | Kind::Symlink(_) => return Err(libc::EROFS),
                Kind::Dir { .. } => return Err(libc::EISDIR),
            }
        };
        let (_name, path) = w.staging.new_file();
        if truncate {
            private_file(&path).map_err(os_errno)?;
        } else {
            let cache = self.cache.clone();
            let d = desc.clone();
            let src = self
                .runtime
                .block_on(async move { cache.materialize(&d).await })?;
            std::fs::copy(&src, &path).map_err(os_errno)?;
        }
        let mut tree = self.tree.write().unwrap();
        let node = tree.get_mut(ino).ok_or(libc::ENOENT)?;
        node.kind = Kind::File(Source::Local(path.clone()));
        node.size = if truncate { 0 } else { desc.size };
        node.version += 1;
        self.save_journal(&tree)?;
        Ok(path)
    }

    /// Creates and opens a new, empty file.
    pub fn create(&self, parent: Ino, name: &OsStr, mode: u32) -> Result<(Attr, u64), Errno> {
        let w = self.writer()?;
        check_name(name)?;
        let mut tree = self.tree.write().unwrap();
        self.mutable_dir(&tree, parent)?;
        if tree.lookup(parent, name).is_some() {
            return Err(libc::EEXIST);
        }
        let (_file, path) = w.staging.new_file();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(os_errno)?;
        let source = Source::Local(path);
        let ino = tree
            .add_child(
                parent,
                name,
                Kind::File(source.clone()),
                0,
                (mode & 0o7777) as u16,
                SystemTime::now(),
            )
            .map_err(|_| libc::EEXIST)?;
        self.save_journal(&tree)?;
        let attr = self.attr_of(tree.get(ino).expect("just added"));
        drop(tree);
        let fh = self.add_handle(ino, source, Some(Arc::new(file)), true);
        Ok((attr, fh))
    }

    pub fn mkdir(&self, parent: Ino, name: &OsStr, mode: u32) -> Result<Attr, Errno> {
        self.writer()?;
        check_name(name)?;
        let mut tree = self.tree.write().unwrap();
        self.mutable_dir(&tree, parent)?;
        let ino = tree
            .add_child(
                parent,
                name,
                empty_dir(),
                0,
                (mode & 0o7777) as u16,
                SystemTime::now(),
            )
            .map_err(|_| libc::EEXIST)?;
        self.save_journal(&tree)?;
        Ok(self.attr_of(tree.get(ino).expect("just added")))
    }

    pub fn unlink(&self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        self.writer()?;
        self.expand(parent)?;
        let mut tree = self.tree.write().unwrap();
        self.mutable_dir(&tree, parent)?;
        let node = tree.lookup(parent, name).ok_or(libc::ENOENT)?;
        if node.is_dir() {
            return Err(libc::EISDIR);
        }
        Self::check_mutable(node)?;
        let ino = node.ino;
        let removed = tree.remove(ino);
        self.save_journal(&tree)?;
        self.drop_staged(removed);
        Ok(())
    }

    pub fn rmdir(&self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        self.writer()?;
        let ino = self.lookup(parent, name)?.ino;
        self.expand(ino)?;
        let mut tree = self.tree.write().unwrap();
        self.mutable_dir(&tree, parent)?;
        let node = tree.get(ino).ok_or(libc::ENOENT)?;
        if !node.is_dir() {
            return Err(libc::ENOTDIR);
        }
        Self::check_mutable(node)?;
        if !tree.children(ino).is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        tree.remove(ino);
        self.save_journal(&tree)?;
        Ok(())
    }

    /// Renames within the mount. A renamed unchanged file stays the same blob: only its title
    /// changes on the next push.
    pub fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        noreplace: bool,
    ) -> Result<(), Errno> {
        self.writer()?;
        check_name(new_name)?;
        self.expand(parent)?;
        self.expand(new_parent)?;
        let mut tree = self.tree.write().unwrap();
        self.mutable_dir(&tree, parent)?;
        self.mutable_dir(&tree, new_parent)?;
        let src = tree.lookup(parent, name).ok_or(libc::ENOENT)?;
        Self::check_mutable(src)?;
        if src.layer.is_some() && (parent != new_parent || name != new_name) {
            // A directory layer's tar names its top directory: a new name would need a new
            // tar. EXDEV makes `mv` copy it instead (into files of their own).
            return Err(libc::EXDEV);
        }
        let (ino, src_dir) = (src.ino, src.is_dir());
        if src_dir && tree.is_within(new_parent, ino) {
            return Err(libc::EINVAL);
        }
        if let Some(dst) = tree.lookup(new_parent, new_name) {
            if dst.ino == ino {
                return Ok(());
            }
            if noreplace {
                return Err(libc::EEXIST);
            }
            Self::check_mutable(dst)?;
            match (src_dir, dst.is_dir()) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if !tree.children(dst.ino).is_empty() || dst.layer.is_some() => {
                    return Err(libc::ENOTEMPTY)
                }
                _ => {}
            }
        }
        let replaced = tree.rename(ino, new_parent, new_name);
        self.save_journal(&tree)?;
        self.drop_staged(replaced);
        Ok(())
    }

    /// Deletes the staged file of a node that left the tree (once the journal no longer names it).
    fn drop_staged(&self, node: Option<Node>) {
        if let (
            Some(Node {
                kind: Kind::File(Source::Local(p)),
                ..
            }),
            Some(w),
        ) = (node, &self.writer)
        {
            if p.starts_with(w.staging.dir()) {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// chmod, truncate, utimes. Ownership cannot change (EPERM).
    pub fn setattr(
        &self,
        ino: Ino,
        mode: Option<u32>,
        size: Option<u64>,
        mtime: Option<SystemTime>,
        chown: bool,
    ) -> Result<Attr, Errno> {
        if chown {
            return Err(libc::EPERM);
        }
        if mode.is_none() && size.is_none() && mtime.is_none() {
            return self.getattr(ino);
        }
        self.writer()?;
        if let Some(size) = size {
            let path = self.make_local(ino, size == 0)?;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(size))
                .map_err(os_errno)?;
        }
        let mut tree = self.tree.write().unwrap();
        let node = tree.get_mut(ino).ok_or(libc::ENOENT)?;
        Self::check_mutable(node)?;
        if let Some(size) = size {
            node.size = size;
            node.version += 1;
        }
        if let Some(m) = mode {
            node.perm = (m & 0o7777) as u16;
        }
        if let Some(t) = mtime {
            node.mtime = t;
        }
        let attr = self.attr_of(node);
        self.save_journal(&tree)?;
        Ok(attr)
    }

    /// Writes to a file opened for writing (its staged copy).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let (ino, file) = {
            let handles = self.handles.lock().unwrap();
            let h = handles.get(&fh).ok_or(libc::EBADF)?;
            if !h.writable {
                return Err(libc::EBADF);
            }
            (h.ino, h.file.clone().ok_or(libc::EBADF)?)
        };
        file.write_all_at(data, offset).map_err(os_errno)?;
        self.changed.store(true, Ordering::SeqCst);
        let mut tree = self.tree.write().unwrap();
        if let Some(n) = tree.get_mut(ino) {
            n.size = n.size.max(offset + data.len() as u64);
            n.mtime = SystemTime::now();
            n.version += 1;
        }
        Ok(data.len() as u32)
    }

    /// fsync: staged data reaches the disk.
    pub fn fsync(&self, fh: u64) -> Result<(), Errno> {
        let file = self
            .handles
            .lock()
            .unwrap()
            .get(&fh)
            .and_then(|h| h.file.clone());
        match file {
            Some(f) => f.sync_data().map_err(os_errno),
            None => Ok(()),
        }
    }

    /// Whether there are changes not yet pushed.
    pub fn is_dirty(&self) -> bool {
        self.writer.is_some() && self.changed.load(Ordering::SeqCst)
    }

    /// Pushes the pending changes as one new manifest. `Ok(None)`: nothing to push.
    pub async fn sync(&self, opts: &SyncOptions) -> crate::Result<Option<Descriptor>> {
        let w = self.writer.as_ref().ok_or_else(|| {
            crate::Error::Usage("this mount is read-only: nothing to sync".into())
        })?;
        let _guard = self.sync_lock.lock().await;
        // Cleared before the plan is taken: a change made during the push sets it again.
        if !self.changed.swap(false, Ordering::SeqCst) {
            return Ok(None);
        }
        let result = self.push_changes(w, opts).await;
        if result.is_err() {
            self.changed.store(true, Ordering::SeqCst);
        }
        result
    }

    async fn push_changes(
        &self,
        w: &Writer,
        opts: &SyncOptions,
    ) -> crate::Result<Option<Descriptor>> {
        let base = self.snapshot();
        // A consistent view of what to push, with each staged file's version.
        let plan: Vec<(String, Node)> = {
            let tree = self.tree.read().unwrap();
            let mut out = Vec::new();
            collect_files(&tree, ROOT, &mut out);
            out
        };
        let (dst, tag): (Arc<dyn Target>, String) = match &opts.push_to {
            Some((t, tag)) => (t.clone(), tag.clone()),
            None => (w.target.clone(), w.tag.clone()),
        };
        if opts.push_to.is_none() && !opts.force {
            let current = match w.target.resolve(&w.tag).await {
                Ok(d) => Some(d.digest),
                Err(crate::Error::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            if current.as_ref() != Some(&base.descriptor.digest) {
                return Err(crate::Error::Other(format!(
                    "{} moved since it was mounted (mounted {}, now {}); nothing was overwritten and \
                     the changes stay staged. Push them elsewhere with `oras-fs sync --push-to REF`, \
                     or overwrite with `oras-fs sync --force`",
                    base.reference,
                    base.descriptor.digest,
                    current.map(|d| d.to_string()).unwrap_or_else(|| "deleted".into())
                )));
            }
        }
        // Send the changed files first (large ones hash while they upload), a few at once.
        let store = Arc::new(FileStore::new(w.staging.dir(), Default::default()));
        let locals: Vec<(&String, &Node, &PathBuf)> = plan
            .iter()
            .filter_map(|(path, node)| match &node.kind {
                Kind::File(Source::Local(p)) => Some((path, node, p)),
                _ => None,
            })
            .collect();
        let copy_opts = CopyOptions::default();
        use futures_util::{StreamExt, TryStreamExt};
        let sent: Vec<Descriptor> =
            futures_util::stream::iter(locals.iter().map(|(path, _, p)| {
                oras::send_file(
                    &store,
                    dst.as_ref(),
                    path,
                    Some(&w.media_type),
                    p,
                    &copy_opts,
                )
            }))
            .buffered(copy_opts.concurrency)
            .try_collect()
            .await?;
        let mut staged = Vec::new();
        let mut sent_by_ino = HashMap::new();
        for ((_, node, p), d) in locals.iter().zip(sent) {
            staged.push((node.ino, node.version, (*p).clone(), d.clone()));
            sent_by_ino.insert(node.ino, d);
        }
        let mut layers = Vec::new();
        for (path, node) in &plan {
            match (&node.kind, &node.layer) {
                (Kind::Dir { .. }, Some(layer)) => {
                    let mut d = layer.clone();
                    d.set_annotation(annotation::TITLE, path.clone());
                    layers.push(d);
                }
                (Kind::File(Source::Blob(d)), _) => {
                    let mut d = d.as_ref().clone();
                    d.set_annotation(annotation::TITLE, path.clone());
                    layers.push(d);
                }
                (Kind::File(Source::Local(_)), _) => {
                    layers.extend(sent_by_ino.get(&node.ino).cloned())
                }
                _ => {}
            }
        }
        let mut manifest = base.manifest.clone();
        manifest.layers = layers;
        let mut annotations = manifest.annotations.clone().unwrap_or_default();
        annotations.insert(
            annotation::CREATED.to_string(),
            humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        );
        manifest.annotations = Some(annotations);
        let bytes = Bytes::from(manifest.to_bytes());
        let desc = Descriptor::of(manifest.media_type().to_string(), &bytes);
        let src = Overlay {
            upper: store.clone(),
            lower: w.target.clone(),
        };
        oras::copy_graph(&src, dst.as_ref(), &desc, bytes.clone(), &[tag], &copy_opts).await?;
        // The pushed files become cached blobs, unless they changed while being pushed.
        {
            let mut tree = self.tree.write().unwrap();
            for (ino, version, path, d) in staged {
                let open_for_write = self
                    .handles
                    .lock()
                    .unwrap()
                    .values()
                    .any(|h| h.ino == ino && h.writable);
                let unchanged = tree.get(ino).is_some_and(|n| n.version == version);
                if !unchanged || open_for_write {
                    continue;
                }
                if self.cache.adopt(&d, &path).is_ok() {
                    if let Some(n) = tree.get_mut(ino) {
                        let mut plain = d.clone();
                        plain.annotations = None;
                        n.kind = Kind::File(Source::Blob(Arc::new(plain)));
                    }
                }
            }
            let mut snap = self.snapshot.write().unwrap();
            snap.descriptor = desc.clone();
            snap.manifest = manifest;
            snap.manifest_bytes = bytes;
            drop(snap);
            refresh_meta_dir(&mut tree, &self.snapshot());
            let still_staged = plan_has_staged(&tree, &w.staging);
            if still_staged {
                drop(tree);
                let tree = self.tree.read().unwrap();
                self.write_journal(&tree)
                    .map_err(|e| crate::Error::Other(format!("writing the journal: errno {e}")))?;
            } else {
                w.staging
                    .clear()
                    .map_err(|e| crate::Error::io("clearing the journal", e))?;
            }
        }
        Ok(Some(desc))
    }
}

/// Names the mount cannot store.
fn check_name(name: &OsStr) -> Result<(), Errno> {
    if name.len() > 255 {
        return Err(libc::ENAMETOOLONG);
    }
    if name == ".oras" {
        return Err(libc::EPERM);
    }
    Ok(())
}

/// Every file and directory layer below `ino`, with its path, in path order.
fn collect_files(tree: &Tree, ino: Ino, out: &mut Vec<(String, Node)>) {
    for n in tree.children(ino) {
        if n.internal {
            continue;
        }
        match (&n.kind, &n.layer) {
            (Kind::Dir { .. }, Some(_)) | (Kind::File(_), _) => {
                out.push((tree.path_of(n.ino), n.clone()))
            }
            (Kind::Dir { .. }, None) => collect_files(tree, n.ino, out),
            _ => {}
        }
    }
}

fn plan_has_staged(tree: &Tree, staging: &Staging) -> bool {
    tree.nodes()
        .any(|n| matches!(&n.kind, Kind::File(Source::Local(p)) if p.starts_with(staging.dir())))
}

/// The journal's picture of the tree.
fn journal_entries(tree: &Tree, staging: &Staging) -> Vec<Entry> {
    let mut out = Vec::new();
    fn walk(tree: &Tree, ino: Ino, staging: &Staging, out: &mut Vec<Entry>) {
        for n in tree.children(ino) {
            if n.internal {
                continue;
            }
            let path = tree.path_of(n.ino);
            match (&n.kind, &n.layer) {
                (Kind::Dir { .. }, Some(d)) => out.push(Entry::Layer {
                    path,
                    descriptor: d.clone(),
                }),
                (Kind::Dir { .. }, None) => {
                    out.push(Entry::Dir { path, mode: n.perm });
                    walk(tree, n.ino, staging, out);
                }
                (Kind::File(Source::Blob(d)), _) => out.push(Entry::Blob {
                    path,
                    descriptor: d.as_ref().clone(),
                    mode: n.perm,
                }),
                (Kind::File(Source::Local(p)), _) if p.starts_with(staging.dir()) => {
                    let file = p
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    out.push(Entry::Staged {
                        path,
                        file,
                        mode: n.perm,
                    });
                }
                _ => {}
            }
        }
    }
    walk(tree, ROOT, staging, &mut out);
    out
}

fn tree_from_journal(snapshot: &Snapshot, journal: &Journal, staging: &Staging) -> Tree {
    let mut tree = Tree::new(created_time(&snapshot.manifest), dir_perm(false));
    for e in &journal.entries {
        let r = match e {
            Entry::Blob {
                path,
                descriptor,
                mode,
            } => tree.add_path(
                path,
                Kind::File(Source::Blob(Arc::new(descriptor.clone()))),
                descriptor.size,
                *mode,
                dir_perm(false),
            ),
            Entry::Staged { path, file, mode } => {
                let p = staging.path_of(file);
                let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                tree.add_path(
                    path,
                    Kind::File(Source::Local(p)),
                    size,
                    *mode,
                    dir_perm(false),
                )
            }
            Entry::Dir { path, mode } => {
                match tree.add_path(path, empty_dir(), 0, *mode, dir_perm(false)) {
                    Err(AddError::Conflict) => Ok(0),
                    r => r,
                }
            }
            Entry::Layer { path, descriptor } => add_layer_dir(&mut tree, path, descriptor, false),
        };
        if let Err(err) = r {
            tracing::warn!("journal entry {e:?} could not be restored: {err:?}");
        }
    }
    tree
}

fn add_layer_dir(
    tree: &mut Tree,
    path: &str,
    layer: &Descriptor,
    ro: bool,
) -> Result<Ino, AddError> {
    let kind = Kind::Dir {
        children: Default::default(),
        pending_layer: Some(Box::new(layer.clone())),
    };
    let ino = tree.add_path(path, kind, 0, dir_perm(ro), dir_perm(ro))?;
    tree.get_mut(ino).expect("just added").layer = Some(layer.clone());
    Ok(ino)
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
    // Clashing titles are skipped below with a warning, not fatal: the rest stays readable.
    let (layers, _skipped) = options.filter.split(&snapshot.manifest);
    for layer in layers {
        let title = layer
            .title()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_string();
        let added = if layer.is_directory() {
            add_layer_dir(&mut tree, &title, &layer, ro)
        } else {
            let mut plain = layer.clone();
            // The title lives in the tree; a rename must not keep the old one.
            plain
                .annotations
                .as_mut()
                .map(|a| a.remove(annotation::TITLE));
            tree.add_path(
                &title,
                Kind::File(Source::Blob(Arc::new(plain))),
                layer.size,
                file_perm(ro),
                dir_perm(ro),
            )
        };
        match added {
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
    Ok(tree)
}

/// `.oras/`: what is mounted, for scripts.
fn add_meta_dir(tree: &mut Tree, snapshot: &Snapshot) -> crate::Result<()> {
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
    for (name, data) in meta_files(snapshot) {
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
    Ok(())
}

fn meta_files(snapshot: &Snapshot) -> [(&'static str, Bytes); 3] {
    [
        ("manifest.json", snapshot.manifest_bytes.clone()),
        ("config.json", snapshot.config_bytes.clone()),
        (
            "digest",
            Bytes::from(format!("{}\n", snapshot.descriptor.digest)),
        ),
    ]
}

/// After a push, the `.oras/` files describe the new snapshot.
fn refresh_meta_dir(tree: &mut Tree, snapshot: &Snapshot) {
    let Some(meta) = tree.lookup(ROOT, OsStr::new(".oras")).map(|n| n.ino) else {
        return;
    };
    for (name, data) in meta_files(snapshot) {
        let Some(ino) = tree.lookup(meta, OsStr::new(name)).map(|n| n.ino) else {
            continue;
        };
        let n = tree.get_mut(ino).expect("looked up");
        n.size = data.len() as u64;
        n.kind = Kind::File(Source::Inline(data));
        n.mtime = SystemTime::now();
    }
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
