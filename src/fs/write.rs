//! The writing calls of a mount: copy-on-write, create, mkdir, unlink, rmdir, rename,
//! setattr, write and fsync, with every errno decision they make (docs/SEMANTICS.md).

use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use super::cache::Errno;
use super::filesystem::{Attr, OrasFs, RenameHow, SetAttr, Writer};
use super::handle::TensorHint;
use super::paths::{private_file, private_options};
use super::staging::Record;
use super::tree::{empty_dir, Ino, Kind, Node, Source, Tree};

impl OrasFs {
    pub(super) fn writer(&self) -> Result<&Writer, Errno> {
        match (&self.writer, self.options.read_only) {
            (Some(w), false) => Ok(w),
            _ => Err(libc::EROFS.into()),
        }
    }

    /// Refuses changes to the `.oras/` files and inside directory layers.
    pub(super) fn check_mutable(node: &Node) -> Result<(), Errno> {
        if node.internal || node.frozen {
            Err(libc::EROFS.into())
        } else {
            Ok(())
        }
    }

    /// A directory that may receive new entries.
    pub(super) fn mutable_dir(&self, tree: &Tree, ino: Ino) -> Result<(), Errno> {
        let node = tree.get(ino).ok_or(Errno::from(libc::ENOENT))?;
        if !node.is_dir() {
            return Err(libc::ENOTDIR.into());
        }
        if node.layer.is_some() {
            return Err(libc::EROFS.into());
        }
        Self::check_mutable(node)
    }

    /// Turns a file into a staged local copy (fetching and verifying a blob first, unless
    /// the copy starts empty).
    pub(super) async fn make_local(&self, ino: Ino, truncate: bool) -> Result<PathBuf, Errno> {
        let w = self.writer()?;
        let desc = {
            let tree = self.tree.read().unwrap();
            let node = tree.get(ino).ok_or(Errno::from(libc::ENOENT))?;
            Self::check_mutable(node)?;
            match &node.kind {
                Kind::File(Source::Staged(p)) => {
                    let p = p.clone();
                    if truncate {
                        // Under the tree lock, as every change of a staged file's bytes
                        // outside a handle: a sync adopts files into the cache under it.
                        set_len(&p, 0)?;
                    }
                    drop(tree);
                    if truncate {
                        let mut tree = self.tree.write().unwrap();
                        if let Some(n) = tree.get_mut(ino) {
                            n.size = 0;
                            n.version += 1;
                        }
                    }
                    return Ok(p);
                }
                Kind::File(Source::Blob(d)) => d.as_ref().clone(),
                Kind::File(_) | Kind::Symlink(_) => return Err(libc::EROFS.into()),
                Kind::Dir { .. } => return Err(libc::EISDIR.into()),
            }
        };
        let (_name, path) = w.staging.new_file();
        if truncate {
            private_file(&path, false).map_err(Errno::from)?;
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
            return Err(libc::ENOENT.into());
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
            return Err(libc::EEXIST.into());
        }
        let (_file, path) = w.staging.new_file();
        let file = private_options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(Errno::from)?;
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
            .map_err(|_| Errno::from(libc::EEXIST))?;
        let attr = self.attr_of(tree.get(ino).expect("just added"));
        let fh = self.add_handle(ino, source, Some(Arc::new(file)), true, TensorHint::None);
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
            .map_err(|_| Errno::from(libc::EEXIST))?;
        let record = self.put(&tree, ino);
        self.record(&tree, record)?;
        Ok(self.attr_of(tree.get(ino).expect("just added")))
    }

    pub async fn unlink(&self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        self.writer()?;
        self.expand(parent).await?;
        let mut tree = self.tree.write().unwrap();
        self.mutable_dir(&tree, parent)?;
        let node = tree.lookup(parent, name).ok_or(Errno::from(libc::ENOENT))?;
        if node.is_dir() {
            return Err(libc::EISDIR.into());
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
        let node = tree.get(ino).ok_or(Errno::from(libc::ENOENT))?;
        if !node.is_dir() {
            return Err(libc::ENOTDIR.into());
        }
        Self::check_mutable(node)?;
        if !tree.children(ino).is_empty() {
            return Err(libc::ENOTEMPTY.into());
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
            return Err(libc::EINVAL.into());
        }
        let noreplace = how.noreplace;
        self.writer()?;
        check_name(new_name)?;
        self.expand(parent).await?;
        self.expand(new_parent).await?;
        let mut tree = self.tree.write().unwrap();
        self.mutable_dir(&tree, parent)?;
        self.mutable_dir(&tree, new_parent)?;
        let src = tree.lookup(parent, name).ok_or(Errno::from(libc::ENOENT))?;
        Self::check_mutable(src)?;
        if src.layer.is_some() && (parent != new_parent || name != new_name) {
            // A directory layer's tar names its top directory: a new name would need a new
            // tar. EXDEV makes `mv` copy it instead (into files of their own).
            return Err(libc::EXDEV.into());
        }
        let (ino, src_dir) = (src.ino, src.is_dir());
        if src_dir && tree.is_within(new_parent, ino) {
            return Err(libc::EINVAL.into());
        }
        if let Some(dst) = tree.lookup(new_parent, new_name) {
            if dst.ino == ino {
                return Ok(());
            }
            if noreplace {
                return Err(libc::EEXIST.into());
            }
            Self::check_mutable(dst)?;
            match (src_dir, dst.is_dir()) {
                (true, false) => return Err(libc::ENOTDIR.into()),
                (false, true) => return Err(libc::EISDIR.into()),
                (true, true) if !tree.children(dst.ino).is_empty() || dst.layer.is_some() => {
                    return Err(libc::ENOTEMPTY.into())
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
    pub(super) fn drop_staged(&self, node: Option<Node>) {
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
            return Err(libc::EPERM.into());
        }
        if mode.is_none() && size.is_none() && mtime.is_none() {
            return Ok(now);
        }
        self.writer()?;
        if let Some(size) = size {
            self.truncate_staged(ino, size).await?;
        }
        let mut tree = self.tree.write().unwrap();
        let node = tree.get_mut(ino).ok_or(Errno::from(libc::ENOENT))?;
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
        file.write_all_at(data, offset).map_err(Errno::from)?;
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
            f.sync_data().map_err(Errno::from)?;
        }
        match &self.writer {
            Some(w) => w.staging.flush().map_err(Errno::from),
            None => Ok(()),
        }
    }

    /// Extended attributes are not kept. ENOSYS (not ENOTSUP) tells the kernel once for all:
    /// it then answers EOPNOTSUPP itself, instead of asking for `security.capability` before
    /// every write (which doubled the requests of a `cp` into a writable mount).
    pub fn xattr_unsupported(&self) -> Errno {
        libc::ENOSYS.into()
    }

    /// `symlink`, `link`, `mknod`: OCI layers cannot store them.
    pub fn unsupported_node(&self) -> Errno {
        Errno::from(libc::EPERM)
    }
}

/// Sets the length of a local file.
fn set_len(path: &std::path::Path, size: u64) -> Result<(), Errno> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(size))
        .map_err(|e| Errno::io(&e, "truncating a staged file"))
}

impl OrasFs {
    /// Truncates a file's staged copy (made first, copying nothing when `size` is 0). The
    /// length is set under the tree lock, after checking the copy is still staged: a sync may
    /// have adopted it into the cache meanwhile, and then the copy is made again.
    async fn truncate_staged(&self, ino: Ino, size: u64) -> Result<(), Errno> {
        for _ in 0..3 {
            let path = self.make_local(ino, size == 0).await?;
            let tree = self.tree.read().unwrap();
            match tree.get(ino).map(|n| &n.kind) {
                Some(Kind::File(Source::Staged(p))) if *p == path => return set_len(&path, size),
                None => return Err(libc::ENOENT.into()),
                _ => continue,
            }
        }
        Err(Errno::new(
            libc::EAGAIN,
            "truncating a file that syncs keep adopting",
        ))
    }
}

/// Names the mount cannot store.
fn check_name(name: &OsStr) -> Result<(), Errno> {
    if name.len() > 255 {
        return Err(libc::ENAMETOOLONG.into());
    }
    if name == ".oras" {
        return Err(libc::EPERM.into());
    }
    Ok(())
}
