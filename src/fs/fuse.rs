//! The FUSE adapter: translates fuser callbacks into [`OrasFs`] calls and back. Reads are
//! answered from tokio tasks, so a slow blob never blocks other requests.

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

use super::cache::read_deadline;
use super::error::Errno;
use super::filesystem::{Attr, FileKind, OrasFs, RenameHow, SetAttr};
use super::repository::Invalidation;

/// The only place that blocks on the filesystem's async calls: fuser calls in on its own
/// threads, outside the runtime. Reads are spawned instead, so a slow blob holds no thread.
pub struct FuseAdapter {
    fs: Arc<OrasFs>,
    runtime: tokio::runtime::Handle,
    /// How long the kernel may cache names and attributes.
    ttl: Duration,
}

impl FuseAdapter {
    pub fn new(fs: Arc<OrasFs>, runtime: tokio::runtime::Handle) -> Self {
        // A read-only snapshot never changes: let the kernel cache it for long. A refreshing
        // mount (a repository, `--follow`) tells the kernel what changed (`notify`); the short
        // TTL bounds how long a name it could not reach stays cached.
        let ttl = if fs.read_only() && fs.refresh_interval().is_none() {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(1)
        };
        FuseAdapter { fs, runtime, ttl }
    }
}

/// Tells the kernel to forget what a refresh changed (names and attributes it may cache for
/// the TTL). Failures only mean the kernel had nothing cached.
pub fn notify(notifier: &fuser::Notifier, changes: &[Invalidation]) {
    for c in changes {
        let r = match c {
            Invalidation::Entry { parent, name } => notifier.inval_entry(INodeNo(*parent), name),
            Invalidation::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
        };
        if let Err(e) = r {
            tracing::debug!("invalidating {c:?}: {e}");
        }
    }
}

fn errno(e: i32) -> fuser::Errno {
    fuser::Errno::from_i32(e)
}

/// The errno of a failed call, its context logged here, once.
fn failed(e: Errno) -> fuser::Errno {
    if let Some(context) = &e.context {
        tracing::warn!(
            "{context}: answering {}",
            std::io::Error::from_raw_os_error(e.errno)
        );
    }
    errno(e.errno)
}

/// Answers a request with the result of a filesystem call: `$ok` with its value, or its errno
/// (every fuser reply has `error`).
macro_rules! answer {
    ($reply:ident, $result:expr, |$v:pat_param| $ok:expr) => {
        match $result {
            Ok($v) => $ok,
            Err(e) => $reply.error(failed(e)),
        }
    };
}

fn to_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: to_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 128 * 1024,
        flags: 0,
    }
}

fn to_type(k: FileKind) -> FileType {
    match k {
        FileKind::Dir => FileType::Directory,
        FileKind::File => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1024 * 1024);
        // Without it the kernel opens without O_TRUNC and truncates afterwards, so an
        // overwrite (`>`, `cp` over a file, an editor's save) of a remote file would download
        // it first, only to throw it away.
        if config
            .add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC)
            .is_err()
        {
            tracing::warn!("the kernel lacks atomic O_TRUNC: overwrites fetch the old content");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        answer!(
            reply,
            self.runtime.block_on(self.fs.lookup(parent.0, name)),
            |a| reply.entry(&self.ttl, &to_attr(&a), Generation(0))
        )
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        answer!(reply, self.fs.getattr(ino.0), |a| reply
            .attr(&self.ttl, &to_attr(&a)))
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        use std::os::unix::ffi::OsStrExt;
        answer!(reply, self.fs.readlink(ino.0), |t| reply
            .data(t.as_os_str().as_bytes()))
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        let truncate = flags.0 & libc::O_TRUNC != 0;
        // Content that cannot change and is verified may stay in the kernel's page cache
        // across opens; anything else is dropped at open, so pages of a blob that later fails
        // verification are never served again.
        answer!(
            reply,
            self.runtime.block_on(self.fs.open(ino.0, write, truncate)),
            |o| reply.opened(
                FileHandle(o.fh),
                if o.keep_cache {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                },
            )
        )
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        let mut read = Box::pin(async move {
            // fuser cannot interrupt a request: bound it, so a killed reader is never stuck
            // for longer than this.
            let deadline = read_deadline();
            match tokio::time::timeout(deadline, fs.read(fh.0, offset, size)).await {
                Ok(r) => answer!(reply, r, |data| reply.data(&data)),
                Err(_) => {
                    tracing::error!("read at {offset} timed out after {deadline:?}");
                    reply.error(errno(libc::EIO))
                }
            }
        });
        // Most reads find their blocks at hand (fetched ahead): answered here on the FUSE
        // thread, they skip two thread hops, which measured a quarter of the mount's CPU on a
        // sequential read. A read that has to wait moves to the runtime, which polls it again.
        let _runtime = self.runtime.enter();
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        if read.as_mut().poll(&mut cx).is_pending() {
            self.runtime.spawn(read);
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.runtime.block_on(self.fs.readdir(ino.0)) {
            Ok(e) => e,
            Err(e) => return reply.error(failed(e)),
        };
        let parent = self.fs.parent_of(ino.0);
        let all = [
            (ino.0, FileKind::Dir, ".".into()),
            (parent, FileKind::Dir, "..".into()),
        ]
        .into_iter()
        .chain(entries);
        for (i, (ino, kind, name)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, to_type(kind), &name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks,
            s.blocks_free,
            s.blocks_available,
            s.files,
            0,
            s.block_size as u32,
            255,
            s.block_size as u32,
        );
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        answer!(
            reply,
            self.fs.create(parent.0, name, mode & !umask),
            |(a, fh)| reply.created(
                &self.ttl,
                &to_attr(&a),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            )
        )
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        answer!(reply, self.fs.mkdir(parent.0, name, mode & !umask), |a| {
            reply.entry(&self.ttl, &to_attr(&a), Generation(0))
        })
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer!(
            reply,
            self.runtime.block_on(self.fs.unlink(parent.0, name)),
            |()| reply.ok()
        )
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer!(
            reply,
            self.runtime.block_on(self.fs.rmdir(parent.0, name)),
            |()| reply.ok()
        )
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let how = RenameHow {
            noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
        };
        answer!(
            reply,
            self.runtime
                .block_on(self.fs.rename(parent.0, name, newparent.0, newname, how)),
            |()| reply.ok()
        )
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime: mtime.map(|t| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            }),
        };
        answer!(
            reply,
            self.runtime.block_on(self.fs.setattr(ino.0, change)),
            |a| reply.attr(&self.ttl, &to_attr(&a))
        )
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        answer!(
            reply,
            self.runtime.block_on(self.fs.write(fh.0, offset, data)),
            |n| reply.written(n)
        )
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        self.fs.flush(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        answer!(reply, self.fs.fsync(fh.0), |()| reply.ok())
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(failed(self.fs.unsupported_node()))
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(failed(self.fs.unsupported_node()))
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(failed(self.fs.unsupported_node()))
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(failed(self.fs.xattr_unsupported()));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(failed(self.fs.xattr_unsupported()));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(failed(self.fs.xattr_unsupported()));
    }
}
