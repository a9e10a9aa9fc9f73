//! The filesystem semantics of a mount, independent of FUSE (see docs/SEMANTICS.md): the
//! `OrasFs` type, its options, and the reading calls (lookup, getattr, readdir, open, read).
//! The writing calls are in `write`, how changes reach the journal in `journaling`, what
//! `oras-fs status` shows in `status`, what is shown in `view`, and pushes in `sync`. The FUSE
//! adapter in `fuse.rs` only translates.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use bytes::Bytes;

use super::cache::{BlobCache, Errno};
use super::handle::{Handle, Pattern, TensorHint};
use super::layer::{self, LayerState};
use super::siblings::SiblingWalks;
use super::staging::{Journal, Staging};
pub use super::status::MountStatus;
use super::tensors;
use super::tree::{Ino, Kind, Node, Pending, Source, Tree, ROOT};
use super::view;
pub use super::view::Snapshot;
use crate::archive::{self, seekable};
use crate::content::Target;
use crate::manifest::Descriptor;
use crate::oras::LayerFilter;

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
    /// An image shows its layers side by side (`0/`, `1/`, ...) instead of merged.
    pub layers_apart: bool,
}

/// What a directory's first access found: files unpacked on disk, or entries of layers.
enum Filled {
    Dir(PathBuf),
    Entries(Vec<LayerEntry>),
}

/// An entry of a layer, the layer, and where its uncompressed stream is read from.
pub(super) type LayerEntry = (archive::Entry, Arc<Descriptor>, Option<super::tree::Stream>);

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
    pub(super) handles: Mutex<HashMap<u64, Handle>>,
    pub(super) next_fh: AtomicU64,
    pub(super) snapshot: RwLock<Snapshot>,
    /// Indexes of the snapshot's layers the mount does not show; a sync keeps them.
    pub(super) hidden: RwLock<Vec<usize>>,
    pub(super) options: MountOptions,
    pub(super) writer: Option<Writer>,
    pub(super) sync_lock: tokio::sync::Mutex<()>,
    /// Something changed since the last push (or an earlier mount left changes).
    pub(super) changed: AtomicBool,
    /// Staged files the journal says are being written (until a close: see `flush`).
    pub(super) writing: Mutex<HashSet<Ino>>,
    /// A journal append failed (a full disk?): the next change rewrites it whole.
    pub(super) journal_stale: AtomicBool,
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// What the user should know about this mount (why it is read-only, hidden layers, ...),
    /// said at mount time, in `.oras/notes` and by `oras-fs status`.
    pub(super) notices: Vec<String>,
    /// The last error a user could not see (a failed fetch or push in the background).
    pub(super) last_error: Mutex<Option<String>>,
    /// Listings of layers and recently decompressed chunks of files inside them.
    pub(super) layers: LayerState,
    /// Readers going through directories of files that are blobs of their own.
    pub(super) siblings: SiblingWalks,
    /// A repository or registry mount, or a tag mount that follows its tag (`repository`).
    pub(super) browsing: Option<super::repository::Browsing>,
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
        let reason = view::read_only_reason(&snapshot);
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
                    v.hidden = view::build(&snapshot, &options.filter, false, false).hidden;
                }
                v
            }
            _ => view::build(&snapshot, &options.filter, read_only, options.layers_apart),
        };
        let notices: Vec<String> = reason.into_iter().chain(v.notices).collect();
        view::add_meta_dir(&mut v.tree, &snapshot, &notices)?;
        let layers = LayerState::default();
        layers.note_subjects(&snapshot);
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
            layers,
            siblings: SiblingWalks::default(),
            browsing: None,
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

    pub(super) fn attr_of(&self, n: &Node) -> Attr {
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
            uid: n.owner.map_or(self.uid, |o| o.0),
            gid: n.owner.map_or(self.gid, |o| o.1),
        }
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr, Errno> {
        self.with_node(ino, |n| self.attr_of(n))
            .or_else(|e| self.detached_attr(ino).ok_or(e))
    }

    pub async fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Attr, Errno> {
        // `.oras/` never waits for (or fails with) the contents of an image's root.
        let internal = {
            let tree = self.tree.read().unwrap();
            tree.lookup(parent, name)
                .filter(|n| n.internal)
                .map(|n| self.attr_of(n))
        };
        if let Some(attr) = internal {
            return Ok(attr);
        }
        self.expand(parent).await?;
        self.check_loaded(parent)?;
        self.add_digest_dir(parent, name).await?;
        let tree = self.tree.read().unwrap();
        tree.lookup(parent, name)
            .map(|n| self.attr_of(n))
            .ok_or(Errno::from(libc::ENOENT))
    }

    /// Directory entries (without `.` and `..`).
    pub async fn readdir(
        &self,
        ino: Ino,
    ) -> Result<Vec<(Ino, FileKind, std::ffi::OsString)>, Errno> {
        self.expand(ino).await?;
        let tree = self.tree.read().unwrap();
        let node = tree.get(ino).ok_or(Errno::from(libc::ENOENT))?;
        if !node.is_dir() {
            return Err(libc::ENOTDIR.into());
        }
        Ok(tree
            .children(ino)
            .into_iter()
            .filter(|n| !n.unlisted)
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

    /// Runs `f` on the node `ino` (ENOENT if there is none).
    fn with_node<T>(&self, ino: Ino, f: impl FnOnce(&Node) -> T) -> Result<T, Errno> {
        let tree = self.tree.read().unwrap();
        tree.get(ino).map(f).ok_or(Errno::from(libc::ENOENT))
    }

    pub fn readlink(&self, ino: Ino) -> Result<PathBuf, Errno> {
        self.with_node(ino, |n| match &n.kind {
            Kind::Symlink(t) => Ok(t.clone()),
            _ => Err(libc::EINVAL.into()),
        })?
    }

    /// Opens a file. Opening for writing fetches nothing: a remote file is copied to a staged
    /// file on the first write or truncate (with `truncate`, an empty one at once).
    pub async fn open(&self, ino: Ino, write: bool, truncate: bool) -> Result<Opened, Errno> {
        // The local file is opened and the handle added under the tree lock: a sync adopting a
        // staged file into the cache (under the write lock) then sees the new writer.
        let (fh, source) = {
            let tree = self.tree.read().unwrap();
            let node = tree.get(ino).ok_or(Errno::from(libc::ENOENT))?;
            let source = match &node.kind {
                Kind::File(s) => s.clone(),
                Kind::Dir { .. } => return Err(libc::EISDIR.into()),
                Kind::Symlink(_) => return Err(libc::ELOOP.into()),
            };
            if write {
                self.writer()?;
                Self::check_mutable(node)?;
                if matches!(
                    source,
                    Source::Unpacked(_) | Source::Inline(_) | Source::Layer(_)
                ) {
                    return Err(libc::EROFS.into());
                }
            }
            let file = match &source {
                Source::Unpacked(p) | Source::Staged(p) => Some(Arc::new(
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(write)
                        .open(p)
                        .map_err(Errno::from)?,
                )),
                _ => None,
            };
            let tensors =
                if !write && matches!(source, Source::Blob(_)) && tensors::is_candidate(&node.name)
                {
                    TensorHint::Unread
                } else {
                    TensorHint::None
                };
            (
                self.add_handle(ino, source.clone(), file, write, tensors),
                source,
            )
        };
        if !write && matches!(source, Source::Blob(_)) {
            self.walk_siblings(ino);
        }
        let keep_cache = self.read_only()
            && match &source {
                Source::Blob(d) => self.cache.is_verified(d),
                // Every chunk is verified before it is served.
                Source::Inline(_) | Source::Unpacked(_) | Source::Layer(_) => true,
                Source::Staged(_) => false,
            };
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

    pub(super) fn add_handle(
        &self,
        ino: Ino,
        source: Source,
        file: Option<Arc<std::fs::File>>,
        writable: bool,
        tensors: TensorHint,
    ) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(
            fh,
            Handle {
                ino,
                source,
                file,
                writable,
                pattern: Pattern::default(),
                tensors,
            },
        );
        fh
    }

    /// The staged file of an open writable handle, copied from the remote file first if this
    /// is the handle's first write.
    pub(super) async fn writable_file(&self, fh: u64) -> Result<(Ino, Arc<std::fs::File>), Errno> {
        let ino = {
            let handles = self.handles.lock().unwrap();
            let h = handles.get(&fh).ok_or(Errno::from(libc::EBADF))?;
            if !h.writable {
                return Err(libc::EBADF.into());
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
                .map_err(Errno::from)?,
        );
        let mut handles = self.handles.lock().unwrap();
        let h = handles.get_mut(&fh).ok_or(Errno::from(libc::EBADF))?;
        h.source = Source::Staged(path);
        Ok((ino, h.file.get_or_insert(file).clone()))
    }

    /// Reads from an open file: cached blocks, else Range requests (with prefetch when the
    /// reader is sequential).
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, Errno> {
        if offset >= 8 {
            self.read_tensor_extents(fh).await;
        }
        let (ino, writable, mut source, mut file, prefetch) = {
            let mut handles = self.handles.lock().unwrap();
            let h = handles.get_mut(&fh).ok_or(Errno::from(libc::EBADF))?;
            let pre = match &h.source {
                Source::Blob(d) => {
                    let tensors = h.tensors.extents();
                    h.pattern.prefetch(offset, size as u64, d.size, tensors)
                }
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
            (Source::Blob(desc), _) => {
                tracing::trace!("read {offset}+{size}, fetch ahead {prefetch:?}");
                self.cache.read(&desc, offset, size as u64, prefetch).await
            }
            (Source::Layer(f), _) => self.read_layer_file(&f, offset, size as u64).await,
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
                        Err(e) => return Err(Errno::from(e)),
                    }
                }
                buf.truncate(n);
                Ok(buf.into())
            }
            (_, None) => Err(libc::EBADF.into()),
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

    /// Fills in a directory's contents on first access: a directory layer's (from its TOC or
    /// seek index, else unpacked into the cache once per digest), an image's root filesystem
    /// (its layers' listings merged), or one image layer's.
    pub(super) async fn expand(&self, ino: Ino) -> Result<(), Errno> {
        let pending = self.with_node(ino, |n| match &n.kind {
            Kind::Dir {
                pending: Some(p), ..
            } => Some(p.as_ref().clone()),
            _ => None,
        })?;
        let Some(pending) = pending else {
            return Ok(());
        };
        let filled = match &pending {
            Pending::Tags | Pending::Manifest => {
                self.load_browsed(ino).await?;
                // A tag's image shows its root filesystem: its layers are listed now too.
                return Box::pin(self.expand(ino)).await;
            }
            Pending::Layer(desc) if layer::lazy_format(desc).is_some() => {
                match self.listing(desc).await {
                    Ok(l) => Filled::Entries(self.layer_entries(desc, &l, desc.title())?),
                    // A gzip layer that cannot be indexed may still unpack (a TOC that
                    // fails its checks is never used; unpacking knows only gzip).
                    Err(e)
                        if desc.annotation(seekable::TOC_DIGEST_ANNOTATION).is_none()
                            && matches!(
                                layer::lazy_format(desc),
                                Some(layer::LazyFormat::Gzip)
                            ) =>
                    {
                        tracing::warn!("{}: {e}; unpacking it whole instead", desc.digest);
                        Filled::Dir(self.unpacked_dir(desc).await?)
                    }
                    Err(e) => return Err(e),
                }
            }
            Pending::Layer(desc) => Filled::Dir(self.unpacked_dir(desc).await?),
            Pending::Rootfs(desc) => {
                let l = self.listing(desc).await?;
                Filled::Entries(self.layer_entries(desc, &l, None)?)
            }
            Pending::Image(layers) => {
                let listings =
                    futures_util::future::try_join_all(layers.iter().map(|l| self.listing(l)))
                        .await?;
                let lists: Vec<&[archive::Entry]> = listings.iter().map(|l| l.entries()).collect();
                let (merged, skipped) = archive::merge::merge(&lists);
                if skipped.dangling_links > 0 {
                    tracing::warn!(
                        "{} hard link(s) of the image point nowhere and are not shown",
                        skipped.dangling_links
                    );
                }
                let descs: Vec<Arc<Descriptor>> =
                    layers.iter().map(|l| Arc::new(l.clone())).collect();
                let files = merged
                    .into_iter()
                    .map(|m| (m.entry, descs[m.layer].clone(), listings[m.layer].stream()))
                    .collect();
                Filled::Entries(files)
            }
        };
        let stale = {
            let mut tree = self.tree.write().unwrap();
            let now = match tree.get_mut(ino) {
                Some(Node {
                    kind: Kind::Dir { pending: now, .. },
                    ..
                }) => now,
                _ => return Ok(()),
            };
            match now.as_deref() {
                None => return Ok(()), // Another thread got here first.
                // A refresh showed another manifest here while this one was listed.
                Some(p) if *p != pending => true,
                Some(_) => {
                    *now = None;
                    self.fill(&mut tree, ino, &pending, filled);
                    false
                }
            }
        };
        if stale {
            // What was listed is gone: list what is there now.
            return Box::pin(self.expand(ino)).await;
        }
        Ok(())
    }

    /// Puts what `expand` listed for `pending` into the directory `ino`.
    fn fill(&self, tree: &mut Tree, ino: Ino, pending: &Pending, filled: Filled) {
        match filled {
            Filled::Dir(dir) => view::add_local_tree(tree, ino, &dir, self.options.read_only),
            Filled::Entries(files) => {
                let owners = !matches!(pending, Pending::Layer(_));
                let skipped = view::add_entries(tree, ino, files, owners);
                if skipped > 0 {
                    tracing::warn!("{skipped} entries of {} are not shown", tree.path_of(ino));
                }
            }
        }
    }

    /// A layer's entries as the mount shows them: below `title/` for an artifact's directory
    /// layer (the oras layout; refused whole, as `pull` refuses it, if an entry would leave the
    /// directory), whole for an image layer.
    fn layer_entries(
        &self,
        desc: &Descriptor,
        listing: &Arc<layer::Listing>,
        title: Option<&str>,
    ) -> Result<Vec<LayerEntry>, Errno> {
        if title.is_some() {
            archive::check_contained(listing.entries())
                .map_err(|e| self.eio(format!("directory layer {}: {e}", desc.digest)))?;
        }
        let (entries, _) = archive::merge::single(listing.entries());
        let layer = Arc::new(view::untitled_copy(desc));
        let prefix = title.map(|t| format!("{}/", t.trim_end_matches('/')));
        let under_title = prefix
            .as_deref()
            .is_some_and(|p| entries.iter().any(|m| m.entry.path.starts_with(p)));
        Ok(entries
            .into_iter()
            .filter_map(|m| {
                let mut e = m.entry;
                if under_title {
                    e.path = e.path.strip_prefix(prefix.as_deref()?)?.to_string();
                }
                Some((e, layer.clone(), listing.stream()))
            })
            .collect())
    }

    pub(super) async fn unpacked_dir(&self, desc: &Descriptor) -> Result<PathBuf, Errno> {
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
        // What layers unpack to lives in the cache and is never evicted: all of it together
        // stays within --cache-size (a gzip bomb stops here).
        let room = self
            .cache
            .disk_limit()
            .saturating_sub(self.cache.unpacked_usage());
        let opts = FileStoreOptions {
            max_unpacked_size: UnpackLimit::Bytes(room),
            ..Default::default()
        };
        let unpacked = unpack_directory(&tgz, &dest, desc, &opts);
        if unpacked.is_err() && dest.is_dir() {
            // Another mount sharing the cache unpacked it first.
            return Ok(dest);
        }
        unpacked.map_err(|e| {
            let what = format!("unpacking directory layer {}: {e}", desc.digest);
            self.record_error(&what);
            match e {
                crate::Error::UnpackTooLarge { .. } => Errno::new(libc::ENOSPC, what),
                _ => Errno::new(libc::EIO, what),
            }
        })?;
        Ok(dest)
    }

    // ---- Writes -------------------------------------------------------------------------

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
