//! The filesystem semantics of a mount, independent of FUSE: what lookup, getattr, readdir,
//! open, read and the writing calls do (see docs/SEMANTICS.md). The FUSE adapter in `fuse.rs`
//! only translates; what is shown comes from `view`, and pushes from `sync`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use bytes::Bytes;

use super::cache::{BlobCache, Errno};
use super::staging::{private_file, Journal, Record, Staging};
use super::tree::{empty_dir, Ino, Kind, Node, Source, Tree, ROOT};
use super::view;
pub use super::view::Snapshot;
use crate::content::Target;
use crate::manifest::Descriptor;
use crate::oras::LayerFilter;

/// First prefetch window of a sequential reader; it doubles up to `MAX_WINDOW`.
const INITIAL_WINDOW: u64 = 1024 * 1024;
const MAX_WINDOW: u64 = 32 * 1024 * 1024;
/// Reads this close to the previous one still count as sequential (the kernel reorders).
const SEQUENTIAL_SLACK: u64 = 1024 * 1024;

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

/// An open file.
#[derive(Clone, Copy, Debug)]
pub struct Opened {
    pub fh: u64,
    /// The content can't change and is verified: the kernel may keep its pages across opens.
    pub keep_cache: bool,
}

/// How a rename may treat an existing target (`renameat2` flags).
#[derive(Clone, Copy, Debug, Default)]
pub struct RenameHow {
    /// `RENAME_NOREPLACE`: fail with EEXIST rather than replace.
    pub noreplace: bool,
    /// `RENAME_EXCHANGE`: swap the two (not supported: EINVAL).
    pub exchange: bool,
}

/// A `setattr`: what the caller asks to change.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime: Option<SystemTime>,
}

/// What `statfs` (`df`) reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsStats {
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
}

/// Per-open-file state: where reads go, and the sequential-read detector.
struct Handle {
    ino: Ino,
    source: Source,
    /// The local file (staged or unpacked); for a writable handle of a remote file it is
    /// opened on the first write (copy-on-write), not at open.
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
    /// Keep files open for writing staged instead of pushing them as they are now (the
    /// final push of a mount that must end while a writer is still busy).
    pub hold_open_files: bool,
}

pub struct OrasFs {
    pub(super) cache: Arc<BlobCache>,
    pub(super) tree: RwLock<Tree>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    pub(super) snapshot: RwLock<Snapshot>,
    /// Indexes of the snapshot's layers the mount does not show; a sync keeps them.
    pub(super) hidden: RwLock<Vec<usize>>,
    options: MountOptions,
    writer: Option<Writer>,
    sync_lock: tokio::sync::Mutex<()>,
    /// Something changed since the last push (or an earlier mount left changes).
    pub(super) changed: AtomicBool,
    /// Staged files the journal says are being written (until a close: see `flush`).
    writing: Mutex<HashSet<Ino>>,
    /// A journal append failed (a full disk?): the next change rewrites it whole.
    journal_stale: AtomicBool,
    uid: u32,
    gid: u32,
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

fn os_errno(e: std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl OrasFs {
    /// Builds the view of a snapshot, or of an earlier mount's pending changes (`journal`).
    /// A manifest the mount would break by pushing files (a container image) mounts
    /// read-only, whatever was asked; the reason is among the notices.
    pub fn new(
        cache: Arc<BlobCache>,
        snapshot: Snapshot,
        options: MountOptions,
        writer: Option<Writer>,
        journal: Option<Journal>,
    ) -> crate::Result<OrasFs> {
        let reason = view::read_only_reason(&snapshot.manifest);
        let writer = if reason.is_some() { None } else { writer };
        let read_only = options.read_only || writer.is_none();
        let options = MountOptions {
            read_only,
            ..options
        };
        let changed = journal.is_some() && writer.is_some();
        let mut v = match (&journal, &writer) {
            (Some(j), Some(w)) => {
                let mut v = view::from_journal(&snapshot, j, &w.staging);
                if j.hidden.is_none() {
                    // An older journal did not record them: what this filter hides.
                    v.hidden = view::build(&snapshot, &options.filter, false).hidden;
                }
                v
            }
            _ => view::build(&snapshot, &options.filter, read_only),
        };
        let notices: Vec<String> = reason.into_iter().chain(v.notices).collect();
        view::add_meta_dir(&mut v.tree, &snapshot, &notices)?;
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(OrasFs {
            cache,
            tree: RwLock::new(v.tree),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            snapshot: RwLock::new(snapshot),
            hidden: RwLock::new(v.hidden),
            options,
            writer,
            sync_lock: tokio::sync::Mutex::new(()),
            changed: AtomicBool::new(changed),
            journal_stale: AtomicBool::new(false),
            writing: Mutex::new(HashSet::new()),
            uid,
            gid,
            notices,
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
    pub fn notices(&self) -> Vec<String> {
        self.notices_in(&self.tree.read().unwrap())
    }

    /// [`OrasFs::notices`] for a caller that holds the tree.
    pub(super) fn notices_in(&self, tree: &Tree) -> Vec<String> {
        let mut out = self.notices.clone();
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
        let snap = self.snapshot.read().unwrap();
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
            digest: snap.descriptor.digest.to_string(),
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

    pub async fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Attr, Errno> {
        self.expand(parent).await?;
        let tree = self.tree.read().unwrap();
        tree.lookup(parent, name)
            .map(|n| self.attr_of(n))
            .ok_or(libc::ENOENT)
    }

    /// Directory entries (without `.` and `..`).
    pub async fn readdir(
        &self,
        ino: Ino,
    ) -> Result<Vec<(Ino, FileKind, std::ffi::OsString)>, Errno> {
        self.expand(ino).await?;
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

    /// Opens a file. Opening for writing fetches nothing: a remote file is copied to a staged
    /// file on the first write or truncate (with `truncate`, an empty one at once).
    pub async fn open(&self, ino: Ino, write: bool, truncate: bool) -> Result<Opened, Errno> {
        let source = {
            let tree = self.tree.read().unwrap();
            let node = tree.get(ino).ok_or(libc::ENOENT)?;
            let source = match &node.kind {
                Kind::File(s) => s.clone(),
                Kind::Dir { .. } => return Err(libc::EISDIR),
                Kind::Symlink(_) => return Err(libc::ELOOP),
            };
            if write {
                self.writer()?;
                Self::check_mutable(node)?;
                if matches!(source, Source::Unpacked(_) | Source::Inline(_)) {
                    return Err(libc::EROFS);
                }
            }
            source
        };
        let file = match &source {
            Source::Unpacked(p) | Source::Staged(p) => Some(Arc::new(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(write)
                    .open(p)
                    .map_err(os_errno)?,
            )),
            _ => None,
        };
        let keep_cache = self.read_only()
            && match &source {
                Source::Blob(d) => self.cache.is_verified(d),
                Source::Inline(_) | Source::Unpacked(_) => true,
                Source::Staged(_) => false,
            };
        let fh = self.add_handle(ino, source.clone(), file, write);
        if write {
            let r = if truncate {
                self.make_local(ino, true).await.map(|_| ())
            } else if matches!(source, Source::Staged(_)) {
                self.mark_writing(ino)
            } else {
                Ok(())
            };
            if let Err(e) = r {
                self.handles.lock().unwrap().remove(&fh);
                return Err(e);
            }
        }
        Ok(Opened { fh, keep_cache })
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

    /// Closes a handle (see [`OrasFs::flush`]).
    pub fn release(&self, fh: u64) {
        self.flush(fh);
        self.handles.lock().unwrap().remove(&fh);
    }

    /// Forgets every open handle: after a lazy unmount the kernel may never send the last
    /// releases, and a file nobody can write any more must not count as open.
    pub fn release_all(&self) {
        let fhs: Vec<u64> = self.handles.lock().unwrap().keys().copied().collect();
        for fh in fhs {
            self.release(fh);
        }
    }

    /// A close of a writable file (`close` waits for this, not for the release): the journal
    /// says the file is complete. A crash while a file is being written leaves it marked, and
    /// the next mount holds it back from pushes; a later write marks it again.
    pub fn flush(&self, fh: u64) {
        let ino = match self.handles.lock().unwrap().get(&fh) {
            Some(h) if h.writable => h.ino,
            _ => return,
        };
        if !self.writing.lock().unwrap().remove(&ino) {
            return;
        }
        let mut tree = self.tree.write().unwrap();
        let Some(n) = tree.get_mut(ino) else { return };
        n.incomplete = false;
        let record = self.put(&tree, ino);
        if let Err(e) = self.record(&tree, record) {
            tracing::error!("recording that {} was closed: errno {e}", tree.path_of(ino));
        }
    }

    /// The staged file of an open writable handle, copied from the remote file first if this
    /// is the handle's first write.
    async fn writable_file(&self, fh: u64) -> Result<(Ino, Arc<std::fs::File>), Errno> {
        let ino = {
            let handles = self.handles.lock().unwrap();
            let h = handles.get(&fh).ok_or(libc::EBADF)?;
            if !h.writable {
                return Err(libc::EBADF);
            }
            if let Some(f) = &h.file {
                return Ok((h.ino, f.clone()));
            }
            h.ino
        };
        let path = self.make_local(ino, false).await?;
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(os_errno)?,
        );
        let mut handles = self.handles.lock().unwrap();
        let h = handles.get_mut(&fh).ok_or(libc::EBADF)?;
        h.source = Source::Staged(path);
        Ok((ino, h.file.get_or_insert(file).clone()))
    }

    /// Reads from an open file: cached blocks, else Range requests (with prefetch when the
    /// reader is sequential).
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, Errno> {
        let (ino, writable, mut source, mut file, prefetch) = {
            let mut handles = self.handles.lock().unwrap();
            let h = handles.get_mut(&fh).ok_or(libc::EBADF)?;
            let pre = match &h.source {
                Source::Blob(d) => h.prefetch(offset, size as u64, d.size),
                _ => 0..0,
            };
            (h.ino, h.writable, h.source.clone(), h.file.clone(), pre)
        };
        // A writable handle that has not written reads what the file is now (another handle
        // may have made it a staged copy).
        if writable && file.is_none() {
            let now = self.tree.read().unwrap().get(ino).map(|n| n.kind.clone());
            if let Some(Kind::File(s @ Source::Staged(_))) = now {
                source = s;
                file = Some(self.writable_file(fh).await?.1);
            }
        }
        match (source, file) {
            (Source::Blob(desc), _) => self.cache.read(&desc, offset, size as u64, prefetch).await,
            (Source::Inline(b), _) => {
                let start = (offset as usize).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                Ok(b.slice(start..end))
            }
            (Source::Unpacked(_) | Source::Staged(_), Some(file)) => {
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
            (_, None) => Err(libc::EBADF),
        }
    }

    /// What `df` shows: the files' total size, and on a writable mount the free space of the
    /// disk that stages writes (what can still be written).
    pub fn statfs(&self) -> FsStats {
        let bsize = 4096u64;
        let (bytes, files) = {
            let tree = self.tree.read().unwrap();
            (tree.nodes().map(|n| n.size).sum::<u64>(), tree.len() as u64)
        };
        let mut stats = FsStats {
            block_size: bsize,
            blocks: bytes.div_ceil(bsize),
            files,
            ..Default::default()
        };
        if let (Some(w), false) = (&self.writer, self.read_only()) {
            if let Some((free, avail)) = free_space(w.staging.dir()) {
                stats.blocks_free = free / bsize;
                stats.blocks_available = avail / bsize;
                stats.blocks += stats.blocks_free;
            }
        }
        stats
    }

    /// Fills in a directory layer's contents on first access: fetches (verified) and unpacks
    /// it into the cache once per digest.
    async fn expand(&self, ino: Ino) -> Result<(), Errno> {
        let pending = match &self.tree.read().unwrap().get(ino).ok_or(libc::ENOENT)?.kind {
            Kind::Dir {
                pending_layer: Some(d),
                ..
            } => d.clone(),
            _ => return Ok(()),
        };
        let dir = self.unpacked_dir(&pending).await?;
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
        view::add_local_tree(&mut tree, ino, &dir, self.options.read_only);
        Ok(())
    }

    async fn unpacked_dir(&self, desc: &Descriptor) -> Result<PathBuf, Errno> {
        let dest = self
            .cache
            .dir()
            .join("unpacked")
            .join(desc.digest.algorithm())
            .join(desc.digest.hex());
        if dest.exists() {
            return Ok(dest);
        }
        let tgz = self.cache.materialize(desc).await?;
        use crate::content::file::{unpack_directory, FileStoreOptions, UnpackLimit};
        // What a layer unpacks to lives in the cache: bounded like it (a gzip bomb stops here).
        let opts = FileStoreOptions {
            max_unpacked_size: UnpackLimit::Bytes(self.cache.disk_usage().1),
            ..Default::default()
        };
        let unpacked = unpack_directory(&tgz, &dest, desc, &opts);
        if unpacked.is_err() && dest.is_dir() {
            // Another mount sharing the cache unpacked it first.
            return Ok(dest);
        }
        unpacked.map_err(|e| {
            tracing::error!("unpacking directory layer {}: {e}", desc.digest);
            self.record_error(format!("unpacking directory layer {}: {e}", desc.digest));
            match e {
                crate::Error::UnpackTooLarge { .. } => libc::ENOSPC,
                _ => libc::EIO,
            }
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

    /// Records a change in the journal: after this, it survives a crash of the mount.
    fn record(&self, tree: &Tree, records: impl IntoIterator<Item = Record>) -> Result<(), Errno> {
        self.changed.store(true, Ordering::SeqCst);
        let w = self.writer()?;
        let records: Vec<Record> = records.into_iter().collect();
        if !w.staging.has_log() || self.journal_stale.load(Ordering::SeqCst) {
            return self.rewrite_journal(tree);
        }
        match w.staging.append(&records) {
            Ok(false) => Ok(()),
            Ok(true) => self.rewrite_journal(tree),
            Err(e) => {
                self.journal_stale.store(true, Ordering::SeqCst);
                tracing::error!("writing the journal: {e}");
                self.record_error(format!("writing the journal: {e}"));
                Err(os_errno(e))
            }
        }
    }

    /// Writes the whole journal anew (its base is the mounted manifest).
    pub(super) fn rewrite_journal(&self, tree: &Tree) -> Result<(), Errno> {
        let w = self.writer()?;
        let writing = self.writing.lock().unwrap().clone();
        let snap = self.snapshot.read().unwrap();
        let journal = Journal {
            version: 2,
            reference: snap.reference.clone(),
            base: snap.descriptor.digest.clone(),
            hidden: Some(self.hidden.read().unwrap().clone()),
            entries: view::journal_entries(tree, &|i| writing.contains(&i)),
        };
        drop(snap);
        match w.staging.save(&journal) {
            Ok(()) => {
                self.journal_stale.store(false, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                self.journal_stale.store(true, Ordering::SeqCst);
                tracing::error!("writing the journal: {e}");
                self.record_error(format!("writing the journal: {e}"));
                Err(os_errno(e))
            }
        }
    }

    /// The journal entry of `ino` as it is now.
    fn put(&self, tree: &Tree, ino: Ino) -> Option<Record> {
        let writing = self.writing.lock().unwrap().contains(&ino);
        view::entry_of(tree, ino, writing).map(|entry| Record::Put { entry })
    }

    /// Records that a staged file is open for writing (until its last writer closes it).
    fn mark_writing(&self, ino: Ino) -> Result<(), Errno> {
        if !self.writing.lock().unwrap().insert(ino) {
            return Ok(());
        }
        let tree = self.tree.read().unwrap();
        let record = self.put(&tree, ino);
        self.record(&tree, record)
    }

    /// Turns a file into a staged local copy (fetching and verifying a blob first, unless
    /// the copy starts empty).
    async fn make_local(&self, ino: Ino, truncate: bool) -> Result<PathBuf, Errno> {
        let w = self.writer()?;
        let desc = {
            let tree = self.tree.read().unwrap();
            let node = tree.get(ino).ok_or(libc::ENOENT)?;
            Self::check_mutable(node)?;
            match &node.kind {
                Kind::File(Source::Staged(p)) => {
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
            private_file(&path, false).map_err(os_errno)?;
        } else {
            // Streams the verified blob, so it works for blobs the disk cache cannot hold.
            if let Err(e) = self.cache.copy_to(&desc, &path).await {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        }
        let mut tree = self.tree.write().unwrap();
        let Some(node) = tree.get_mut(ino) else {
            let _ = std::fs::remove_file(&path);
            return Err(libc::ENOENT);
        };
        if let Kind::File(Source::Staged(p)) = &node.kind {
            // Another handle made the copy first: use that one.
            let p = p.clone();
            drop(tree);
            let _ = std::fs::remove_file(&path);
            return Ok(p);
        }
        node.kind = Kind::File(Source::Staged(path.clone()));
        node.size = if truncate { 0 } else { desc.size };
        node.version += 1;
        // Being written only while a handle is open for it (not for a plain `truncate`).
        if self.writable_inos().contains(&ino) {
            self.writing.lock().unwrap().insert(ino);
        }
        let record = self.put(&tree, ino);
        self.record(&tree, record)?;
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
        let source = Source::Staged(path);
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
        let attr = self.attr_of(tree.get(ino).expect("just added"));
        let fh = self.add_handle(ino, source, Some(Arc::new(file)), true);
        self.writing.lock().unwrap().insert(ino);
        let record = self.put(&tree, ino);
        if let Err(e) = self.record(&tree, record) {
            self.handles.lock().unwrap().remove(&fh);
            return Err(e);
        }
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
        let record = self.put(&tree, ino);
        self.record(&tree, record)?;
        Ok(self.attr_of(tree.get(ino).expect("just added")))
    }

    pub async fn unlink(&self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        self.writer()?;
        self.expand(parent).await?;
        let mut tree = self.tree.write().unwrap();
        self.mutable_dir(&tree, parent)?;
        let node = tree.lookup(parent, name).ok_or(libc::ENOENT)?;
        if node.is_dir() {
            return Err(libc::EISDIR);
        }
        Self::check_mutable(node)?;
        let ino = node.ino;
        let path = tree.path_of(ino);
        let removed = tree.remove(ino);
        self.record(&tree, [Record::Remove { path }])?;
        self.drop_staged(removed);
        Ok(())
    }

    pub async fn rmdir(&self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        self.writer()?;
        let ino = self.lookup(parent, name).await?.ino;
        self.expand(ino).await?;
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
        let path = tree.path_of(ino);
        tree.remove(ino);
        self.record(&tree, [Record::Remove { path }])
    }

    /// Renames within the mount. A renamed unchanged file stays the same blob: only its title
    /// changes on the next push.
    pub async fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        how: RenameHow,
    ) -> Result<(), Errno> {
        if how.exchange {
            return Err(libc::EINVAL);
        }
        let noreplace = how.noreplace;
        self.writer()?;
        check_name(new_name)?;
        self.expand(parent).await?;
        self.expand(new_parent).await?;
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
        let from = tree.path_of(ino);
        let replaced = tree.rename(ino, new_parent, new_name);
        let to = tree.path_of(ino);
        self.record(&tree, [Record::Rename { from, to }])?;
        self.drop_staged(replaced);
        Ok(())
    }

    /// Deletes the staged file of a node that left the tree (once the journal no longer names it).
    fn drop_staged(&self, node: Option<Node>) {
        if let Some(Node {
            kind: Kind::File(Source::Staged(p)),
            ..
        }) = node
        {
            let _ = std::fs::remove_file(p);
        }
    }

    /// chmod, truncate, utimes. Ownership cannot change (EPERM); a "change" to the current
    /// owner is no change.
    pub async fn setattr(&self, ino: Ino, change: SetAttr) -> Result<Attr, Errno> {
        let SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime,
        } = change;
        let now = self.getattr(ino)?;
        if uid.is_some_and(|u| u != now.uid) || gid.is_some_and(|g| g != now.gid) {
            return Err(libc::EPERM);
        }
        if mode.is_none() && size.is_none() && mtime.is_none() {
            return Ok(now);
        }
        self.writer()?;
        if let Some(size) = size {
            let path = self.make_local(ino, size == 0).await?;
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
        if mode.is_some() {
            let record = self.put(&tree, ino);
            self.record(&tree, record)?;
        } else {
            self.changed.store(true, Ordering::SeqCst);
        }
        Ok(attr)
    }

    /// Writes to a file opened for writing (its staged copy, made on the first write).
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        if data.is_empty() {
            // POSIX: writing nothing changes nothing, not even the size past EOF.
            return Ok(0);
        }
        let (ino, file) = self.writable_file(fh).await?;
        self.mark_writing(ino)?;
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

    /// fsync: staged data (and the journal naming it) reaches the disk.
    pub fn fsync(&self, fh: u64) -> Result<(), Errno> {
        let file = self
            .handles
            .lock()
            .unwrap()
            .get(&fh)
            .and_then(|h| h.file.clone());
        if let Some(f) = file {
            f.sync_data().map_err(os_errno)?;
        }
        match &self.writer {
            Some(w) => w.staging.flush().map_err(os_errno),
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
        if let Err(e) = &result {
            self.changed.store(true, Ordering::SeqCst);
            self.record_error(e);
        }
        result
    }
}

impl OrasFs {
    /// `symlink`, `link`, `mknod`: OCI layers cannot store them.
    pub fn unsupported_node(&self) -> Errno {
        libc::EPERM
    }
}

/// (free, available to this user) bytes of the filesystem holding `dir`.
fn free_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the struct we pass; the path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let f = s.f_frsize as u64;
    Some((s.f_bfree as u64 * f, s.f_bavail as u64 * f))
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
