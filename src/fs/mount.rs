//! Mount lifecycle: resolve the reference once, build the view, serve it over FUSE until
//! unmounted or signalled, and a control socket per mountpoint for `sync` and `unmount`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::cache::{BlobCache, CacheOptions};
use super::filesystem::{MountStatus, OrasFs, Snapshot, SyncOptions};
use super::fuse::FuseAdapter;
use crate::content::{self, Target};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::manifest::MAX_MANIFEST_SIZE;

/// Resolves and fetches what a mount shows.
pub async fn snapshot(target: &dyn Target, display_ref: &str, reference: &str) -> Result<Snapshot> {
    let (descriptor, manifest_bytes, manifest) = content::fetch_manifest(target, reference).await?;
    let config_bytes = if manifest.config.size <= MAX_MANIFEST_SIZE {
        content::read_all(target, &manifest.config, MAX_MANIFEST_SIZE).await?
    } else {
        Bytes::new()
    };
    Ok(Snapshot {
        reference: display_ref.to_string(),
        descriptor,
        manifest_bytes,
        manifest,
        config_bytes,
    })
}

/// Where a user's mount control sockets live (the path only; see [`private_runtime_dir`]).
pub fn runtime_dir() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| std::env::temp_dir().join(format!("oras-fs-{}", uid())));
    base.join("oras-fs-mounts")
}

fn uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// The runtime directory, checked to be private to this user: whoever can write there can
/// answer for a mount (a fake "Pushed" to `sync`) or block mounts. With `create`, missing
/// directories are made (mode 0700); without, a missing one gives `None` (no mounts).
pub fn private_runtime_dir(create: bool) -> Result<Option<PathBuf>> {
    let dir = runtime_dir();
    let parent = dir
        .parent()
        .expect("runtime dir has a parent")
        .to_path_buf();
    // `$XDG_RUNTIME_DIR` is the system's and trusted; `/tmp/oras-fs-UID` is ours to check.
    let mut chain = Vec::new();
    if parent.file_name().and_then(|n| n.to_str()) == Some(&format!("oras-fs-{}", uid())) {
        chain.push(parent);
    }
    chain.push(dir.clone());
    for d in chain {
        match std::fs::symlink_metadata(&d) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => make_private_dir(&d)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("checking {}", d.display()), e)),
            Ok(_) => {}
        }
        check_private_dir(&d, uid())?;
    }
    Ok(Some(dir))
}

fn make_private_dir(d: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).create(d) {
        Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
            .ctx(|| format!("making {} private", d.display())),
        // Someone else made it meanwhile: the check that follows judges it.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(format!("creating {}", d.display()), e)),
    }
}

/// Refuses a control directory that is a symlink, not a directory, owned by another user, or
/// open to others (checked with lstat, so a symlink is never followed).
fn check_private_dir(d: &Path, uid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(d).ctx(|| format!("checking {}", d.display()))?;
    let takeover = "another user may have made it to answer for your mounts: remove it (as its \
                    owner or root), or set XDG_RUNTIME_DIR to a private directory";
    let problem = if meta.file_type().is_symlink() {
        format!("it is a symbolic link; {takeover}")
    } else if !meta.is_dir() {
        format!("it is not a directory; {takeover}")
    } else if meta.uid() != uid {
        format!(
            "it is owned by uid {}, not by you (uid {uid}); {takeover}",
            meta.uid()
        )
    } else if meta.mode() & 0o777 != 0o700 {
        format!(
            "its mode is {:o}, open to other users; run `chmod 700 {}`",
            meta.mode() & 0o777,
            d.display()
        )
    } else {
        return Ok(());
    };
    Err(Error::Usage(format!(
        "refusing to use {} for the mount control sockets: {problem}",
        d.display()
    )))
}

/// `path` made absolute without resolving its last component (a dead FUSE mount cannot be
/// resolved: every lookup in it fails with ENOTCONN).
pub fn absolute(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(abs.clone()),
        _ => abs,
    }
}

/// The control socket of the mount at `mountpoint`.
pub fn control_socket(mountpoint: &Path) -> PathBuf {
    let key = Digest::of(absolute(mountpoint).as_os_str().as_encoded_bytes());
    runtime_dir().join(format!("{}.sock", &key.hex()[..16]))
}

/// Default cache directory: `$XDG_CACHE_HOME/oras-fs` or `~/.cache/oras-fs`.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("oras-fs")
}

pub struct MountConfig {
    pub mountpoint: PathBuf,
    pub allow_other: bool,
}

/// Makes the target a `sync --push-to REF` pushes to: (target, tag).
pub type PushToResolver = Box<dyn Fn(&str) -> Result<(Arc<dyn Target>, String)> + Send + Sync>;

/// A request on the control socket: one JSON line, `{"op": "sync", ...}`.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    Ping,
    /// Push the pending changes now.
    Sync {
        #[serde(default)]
        force: bool,
        #[serde(default)]
        push_to: Option<String>,
    },
    /// Push and unmount. Refused while files are open for writing, unless `lazy`: then the
    /// mount is detached at once and the files are pushed once the last one is closed.
    Unmount {
        #[serde(default)]
        lazy: bool,
    },
    /// What `oras-fs status` shows.
    Status,
}

/// The answer (one JSON line).
#[derive(serde::Serialize, serde::Deserialize, Debug, Default)]
pub struct ControlResponse {
    pub ok: bool,
    /// The digest pushed, if anything was.
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub message: String,
    /// Files open for writing (paths in the mount): why an unmount was refused, or, after a
    /// lazy unmount, what the mount process pushes once they are closed.
    #[serde(default)]
    pub open_for_writing: Vec<String>,
    /// The unmount only detached the mount: it lives on until its open files are closed.
    #[serde(default)]
    pub detached: bool,
    #[serde(default)]
    pub status: Option<StatusReport>,
}

/// One mount as `oras-fs status` shows it.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct StatusReport {
    pub mountpoint: String,
    pub pid: u32,
    #[serde(flatten)]
    pub mount: MountStatus,
    pub cache_dir: String,
    /// Bytes the blob cache takes on disk, and its bound (`--cache-size`).
    pub cache_bytes: u64,
    pub cache_limit: u64,
}

/// Builds the filesystem of a mount: the cache, and for a writable mount the staging area with
/// any pending changes of an earlier mount of the same reference.
pub fn open_cache(options: CacheOptions, target: Arc<dyn Target>) -> Result<Arc<BlobCache>> {
    let dir = options.dir.clone();
    BlobCache::new(target, options).ctx(|| format!("cache directory {}", dir.display()))
}

/// How long a signal (SIGTERM, SIGINT) waits for files open for writing before the final push.
const SIGNAL_WRITER_WAIT: Duration = Duration::from_secs(10);

/// Set to `1` to mount through `fusermount3` even where `/dev/fuse` could be opened.
pub const VIA_FUSERMOUNT_ENV: &str = "ORAS_FS_MOUNT_VIA_FUSERMOUNT";

/// Serves a mount until it is unmounted (`fusermount3 -u`, `oras-fs unmount`) or the process
/// gets SIGTERM/SIGINT; a writable mount pushes its pending changes before the process ends.
/// `ready` is called once the mount is usable.
pub async fn serve(
    fs: Arc<OrasFs>,
    config: MountConfig,
    push_to: PushToResolver,
    ready: impl FnOnce(),
) -> Result<()> {
    let meta = std::fs::metadata(&config.mountpoint)
        .ctx(|| format!("mountpoint {}", config.mountpoint.display()))?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "mountpoint {} is not a directory",
            config.mountpoint.display()
        )));
    }
    // Buffers of a MiB and more (multi-block reads, receive buffers) come and go all the
    // time: have glibc return them to the system (a fixed mmap threshold) instead of growing
    // per-thread arenas, so the daemon's memory stays near its cache bound.
    // SAFETY: mallopt only tunes the allocator; called before the FUSE threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = vec![
        fuser::MountOption::FSName("oras-fs".into()),
        fuser::MountOption::Subtype("oras-fs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        if fs.read_only() {
            fuser::MountOption::RO
        } else {
            fuser::MountOption::RW
        },
    ];
    if config.allow_other {
        fuse_config.acl = fuser::SessionACL::All;
    }
    fuse_config.n_threads = Some(4);
    let socket = control_socket(&config.mountpoint);
    let listener = listen(&socket, &config.mountpoint)?;
    let session = start_session(&fs, &config, &fuse_config)?;
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<StopRequest>(1);
    {
        let fs = fs.clone();
        let runtime = tokio::runtime::Handle::current();
        let server = ControlServer {
            fs,
            runtime,
            push_to,
            stop: stop_tx,
            mountpoint: absolute(&config.mountpoint),
        };
        std::thread::spawn(move || control_loop(listener, Arc::new(server)));
    }
    ready();

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ctx(|| "installing a SIGTERM handler".into())?;
    let mut int = signal(SignalKind::interrupt()).ctx(|| "installing a SIGINT handler".into())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    enum Why {
        Signal,
        Control(StopRequest),
        Unmounted,
    }
    let why = loop {
        tokio::select! {
            _ = term.recv() => break Why::Signal,
            _ = int.recv() => break Why::Signal,
            Some(done) = stop_rx.recv() => break Why::Control(done),
            _ = tick.tick() => if session.guard.is_finished() { break Why::Unmounted },
        }
    };
    // The control request already synced; otherwise push what is pending now. The control
    // socket stays until then, so a new mount here waits for this push (see `listen`).
    let mut synced = match &why {
        Why::Control(_) => Ok(()),
        Why::Signal => signal_sync(&fs).await,
        // The session has ended: no file is open any more.
        Why::Unmounted => {
            note_lost_releases(&fs);
            final_sync(&fs, false).await
        }
    };
    let mut detached = false;
    if !matches!(why, Why::Unmounted) {
        tracing::info!("unmounting {}", config.mountpoint.display());
        let lazy = matches!(&why, Why::Control(s) if s.lazy);
        match unmount_with(&config.mountpoint, lazy) {
            Ok(d) => detached = d,
            Err(e) => {
                tracing::error!("{e}");
                if synced.is_ok() {
                    synced = Err(e);
                }
            }
        }
        // A plain unmount ends the session at once; a lazy one when the last file closes,
        // which may be now (nothing open) or later (below). Busy detached: something is open.
        let wait = match (lazy, detached) {
            (true, _) => Duration::from_secs(1),
            (false, true) => Duration::ZERO,
            (false, false) => Duration::from_secs(3),
        };
        let deadline = Instant::now() + wait;
        while !session.guard.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        detached = detached && !session.guard.is_finished();
    }
    let _ = std::fs::remove_file(&socket);
    let signalled = matches!(why, Why::Signal);
    // The control thread left the push to now: files were open for writing (`--lazy`).
    let deferred = matches!(&why, Why::Control(s) if s.deferred);
    if let Why::Control(stop) = why {
        let _ = stop.done.send(detached);
        // Let the control thread answer before the process ends.
        let _ = stop.replied.recv_timeout(Duration::from_secs(2));
    }
    if (detached || deferred) && !signalled {
        // Serve the files still open until the last one is closed (the kernel then ends the
        // session), and push what they wrote: ending now would cut their writers off.
        let mut signalled = false;
        if !session.guard.is_finished() {
            tracing::info!(
                "{} is detached; serving its open files until they are closed",
                config.mountpoint.display()
            );
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            signalled = loop {
                tokio::select! {
                    _ = term.recv() => break true,
                    _ = int.recv() => break true,
                    _ = tick.tick() => if session.guard.is_finished() { break false },
                }
            };
        }
        synced = if signalled {
            signal_sync(&fs).await
        } else {
            note_lost_releases(&fs);
            final_sync(&fs, false).await
        };
    }
    // A session still running (files open on a lazily detached mount) ends with the process.
    if session.guard.is_finished() {
        let _ = session.join();
    } else {
        std::mem::forget(session);
    }
    synced
}

/// Mounts and starts the FUSE session: directly through `/dev/fuse`, or where the user may not
/// open it (`crw------- root`, as on some CI machines), through the setuid `fusermount3`.
fn start_session(
    fs: &Arc<OrasFs>,
    config: &MountConfig,
    fuse_config: &fuser::Config,
) -> Result<fuser::BackgroundSession> {
    let adapter = || FuseAdapter::new(fs.clone(), tokio::runtime::Handle::current());
    let forced = std::env::var_os(VIA_FUSERMOUNT_ENV).is_some_and(|v| v == "1");
    let mut direct_error = None;
    if !forced {
        match fuser::spawn_mount(adapter(), &config.mountpoint, fuse_config) {
            Ok(s) => return Ok(s),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
                tracing::info!("cannot mount through /dev/fuse ({e}); using fusermount3");
                direct_error = Some(e);
            }
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "mounting on {} (is /dev/fuse usable and fusermount3 installed?)",
                        config.mountpoint.display()
                    ),
                    e,
                ))
            }
        }
    }
    let mut options = vec![
        "fsname=oras-fs",
        "subtype=oras-fs",
        "default_permissions",
        "nodev",
        "nosuid",
        if fs.read_only() { "ro" } else { "rw" },
    ];
    if config.allow_other {
        options.push("allow_other");
    }
    let fd = mount_via_fusermount(&config.mountpoint, &options.join(",")).map_err(|e| {
        match direct_error {
            // fusermount3 opens /dev/fuse as the calling user too.
            Some(direct) => Error::Other(format!(
                "cannot mount on {}: opening /dev/fuse failed ({direct}), and so did the \
                 fallback through fusermount3 ({e}). /dev/fuse must be open to you: ask an \
                 administrator to make it mode 0666 (the usual setting)",
                config.mountpoint.display()
            )),
            None => e,
        }
    })?;
    let session = fuser::Session::from_fd(adapter(), fd, fuse_config.acl, fuse_config.clone())
        .and_then(fuser::Session::spawn);
    session.map_err(|e| {
        // Don't leave a mount nobody serves.
        let _ = unmount_with(&config.mountpoint, true);
        Error::io(
            format!(
                "starting the FUSE session on {}",
                config.mountpoint.display()
            ),
            e,
        )
    })
}

/// Mounts `mountpoint` with the setuid `fusermount3`, which passes the opened `/dev/fuse`
/// back over the socket named by `_FUSE_COMMFD` (as libfuse does).
fn mount_via_fusermount(mountpoint: &Path, options: &str) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| Error::io("creating a socket for fusermount3", e))?;
    let their_fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-o")
        .arg(options)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", their_fd.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only fcntl, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The socket must survive the exec: it is fusermount3's way back to us.
            let flags = libc::fcntl(their_fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(their_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("running fusermount3 (install the fuse3 package)", e))?;
    drop(theirs);
    let received = receive_fd(&ours);
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("waiting for fusermount3", e))?;
    match received {
        Ok(Some(fd)) if out.status.success() => Ok(fd),
        other => {
            let why = match other {
                Err(e) => format!(": {e}"),
                _ => String::new(),
            };
            Err(Error::Other(format!(
                "fusermount3 could not mount {}{why}: {}",
                mountpoint.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

/// Receives one file descriptor (SCM_RIGHTS) from `sock`; `None` if the peer sent none.
fn receive_fd(sock: &UnixStream) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    // u64 words: control messages need their header's alignment.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is valid (no name, no buffers); the buffers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    loop {
        // SAFETY: msg points to live buffers of the sizes it states.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n > 0 {
            break;
        }
        if n == 0 {
            return Ok(None);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // SAFETY: the kernel filled msg's control buffer; the macros walk it within its length.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Ok(None);
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
        Ok(Some(std::os::fd::OwnedFd::from_raw_fd(fd)))
    }
}

/// After the session ended every file is closed, whatever the handle table says: the kernel
/// may drop a last RELEASE when it tears the connection down.
fn note_lost_releases(fs: &OrasFs) {
    let stale = fs.open_writers();
    if !stale.is_empty() {
        tracing::warn!(
            "the session ended with files still listed open for writing (their close was \
             lost): {}; they are complete",
            stale.join(", ")
        );
        fs.release_all();
    }
}

/// The push at the end of a writable mount's life.
async fn final_sync(fs: &OrasFs, hold_open_files: bool) -> Result<()> {
    if fs.read_only() {
        return Ok(());
    }
    let opts = SyncOptions {
        hold_open_files,
        ..Default::default()
    };
    match fs.sync(&opts).await {
        Ok(Some(d)) => {
            tracing::info!("pushed {d:?}");
            eprintln!("Pushed {} as {}", fs.snapshot().reference, d.digest);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            let e = staged_hint(e, fs);
            tracing::error!("{e}");
            fs.record_error(&e);
            Err(e)
        }
    }
}

/// The push when a signal ends the mount: first waits (bounded) for files open for writing to
/// be closed; if some still are, pushes nothing, so no file goes out half-written.
async fn signal_sync(fs: &OrasFs) -> Result<()> {
    if fs.read_only() {
        return Ok(());
    }
    let open = wait_for_writers(fs, SIGNAL_WRITER_WAIT).await;
    if open.is_empty() {
        return final_sync(fs, false).await;
    }
    let e = Error::Other(format!(
        "not pushing what is still open for writing after {} s: {}. The rest is pushed; these \
         changes stay staged: mount {} again (same --cache-dir) and they are there, to be \
         pushed by `oras-fs sync` or unmount",
        SIGNAL_WRITER_WAIT.as_secs(),
        open.join(", "),
        fs.snapshot().reference
    ));
    tracing::error!("{e}");
    fs.record_error(&e);
    // Everything else goes out now.
    final_sync(fs, true).await.and(Err(e))
}

/// Waits until no file is open for writing, or `limit`; returns those still open.
async fn wait_for_writers(fs: &OrasFs, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut said = Vec::new();
    loop {
        let open = fs.open_writers();
        if open.is_empty() || Instant::now() >= deadline {
            return open;
        }
        if open != said {
            tracing::warn!(
                "waiting up to {} s for files open for writing: {}",
                limit.as_secs(),
                open.join(", ")
            );
            said = open;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Adds where the unpushed changes are and how to push them.
fn staged_hint(e: Error, fs: &OrasFs) -> Error {
    Error::Other(format!(
        "{e}\nThe changes stay staged; mount {} again and run `oras-fs sync MOUNTPOINT` to push them.",
        fs.snapshot().reference
    ))
}

fn listen(socket: &Path, mountpoint: &Path) -> Result<UnixListener> {
    private_runtime_dir(true)?;
    if UnixStream::connect(socket).is_ok() {
        return Err(another_mount(mountpoint));
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .ctx(|| format!("creating the control socket {}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .ctx(|| format!("making {} private", socket.display()))?;
    Ok(listener)
}

fn another_mount(mountpoint: &Path) -> Error {
    Error::Usage(format!(
        "another oras-fs mount serves {}",
        mountpoint.display()
    ))
}

/// Before a mount resolves its reference: if the daemon of an earlier mount of `mountpoint` is
/// still alive though unmounted (after `umount` it pushes the staged changes first), waits a
/// little for it to end, so that `umount; mount` shows what it pushed.
pub fn wait_for_previous(mountpoint: &Path) -> Result<()> {
    if private_runtime_dir(false)?.is_none() {
        return Ok(());
    }
    let socket = control_socket(mountpoint);
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&socket).is_ok() {
        if is_mounted(mountpoint) {
            return Err(another_mount(mountpoint));
        }
        if Instant::now() >= deadline {
            return Err(Error::Usage(format!(
                "the previous oras-fs mount of {} is still finishing (pushing its changes after \
                 the unmount?); mount again once it has exited",
                mountpoint.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A mountpoint left by a mount process that died (`kill -9`) answers every access with
/// ENOTCONN. If it is a dead oras-fs mount of this user, detach it (lazily: something may
/// still hold it) so the new mount can go there; otherwise say what to do.
pub fn clear_dead_mount(mountpoint: &Path) -> Result<()> {
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
        _ => return Ok(()),
    }
    let abs = absolute(mountpoint);
    let entry = mount_entry(&abs);
    if !entry.as_ref().is_some_and(|e| e.is_oras_fs_of(uid())) {
        return Err(Error::Usage(format!(
            "{} is a dead mount (Transport endpoint is not connected: the process that served \
             it is gone); run `oras-fs unmount {}` (or `fusermount3 -uz {}`), then mount again",
            mountpoint.display(),
            mountpoint.display(),
            mountpoint.display()
        )));
    }
    eprintln!(
        "Note: {} was left mounted by an oras-fs process that is gone (killed?); unmounting it",
        mountpoint.display()
    );
    unmount_with(&abs, true).map(|_| ())
}

/// A line of `/proc/mounts`.
#[derive(Debug, PartialEq, Eq)]
struct MountEntry {
    source: String,
    fstype: String,
    options: String,
}

impl MountEntry {
    /// An oras-fs FUSE mount made by `uid`.
    fn is_oras_fs_of(&self, uid: u32) -> bool {
        // fusermount3 records the subtype (`fuse.oras-fs`); a direct mount only the source.
        let oras_fs =
            self.fstype == "fuse.oras-fs" || (self.fstype == "fuse" && self.source == "oras-fs");
        let user = format!("user_id={uid}");
        oras_fs && self.options.split(',').any(|o| o == user)
    }
}

/// The `/proc/mounts` entry of the (absolute) `path`, the last one if mounted over.
fn mount_entry(path: &Path) -> Option<MountEntry> {
    let want = mounts_escape(path);
    let table = std::fs::read_to_string("/proc/mounts").ok()?;
    table.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() >= 4 && f[1] == want).then(|| MountEntry {
            source: f[0].to_string(),
            fstype: f[2].to_string(),
            options: f[3].to_string(),
        })
    })
}

/// `/proc/mounts` escapes blanks and backslashes in paths as octal.
fn mounts_escape(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\t' => out.push_str("\\011"),
            '\n' => out.push_str("\\012"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

/// What the control thread needs.
struct ControlServer {
    fs: Arc<OrasFs>,
    runtime: tokio::runtime::Handle,
    push_to: PushToResolver,
    stop: tokio::sync::mpsc::Sender<StopRequest>,
    mountpoint: PathBuf,
}

/// Answers requests on the control socket, one JSON line each way, each connection on a
/// thread of its own (a `status` must not wait for a long push).
fn control_loop(listener: UnixListener, server: Arc<ControlServer>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { return };
        let server = server.clone();
        std::thread::spawn(move || answer(conn, &server));
    }
}

fn answer(mut conn: UnixStream, server: &ControlServer) {
    let fs = &server.fs;
    let mut line = String::new();
    if BufReader::new(&conn).read_line(&mut line).is_err() {
        return;
    }
    let req: ControlRequest = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            reply(&mut conn, failure(format!("bad request: {e}")));
            return;
        }
    };
    let sync =
        |force: bool, push_to: Option<&str>| -> Result<Option<crate::manifest::Descriptor>> {
            let push_to = push_to.map(&server.push_to).transpose()?;
            server.runtime.block_on(fs.sync(&SyncOptions {
                push_to,
                force,
                ..Default::default()
            }))
        };
    let outcome = |result: Result<Option<crate::manifest::Descriptor>>| match result {
        Ok(Some(d)) => ControlResponse {
            ok: true,
            digest: Some(d.digest.to_string()),
            ..Default::default()
        },
        Ok(None) => ControlResponse {
            ok: true,
            message: "nothing to push".into(),
            ..Default::default()
        },
        Err(e) => {
            let e = staged_hint(e, fs);
            fs.record_error(&e);
            failure(e.to_string())
        }
    };
    match req {
        ControlRequest::Ping => reply(&mut conn, ControlResponse::ok()),
        ControlRequest::Status => {
            let (cache_bytes, cache_limit) = fs.cache().disk_usage();
            let report = StatusReport {
                mountpoint: server.mountpoint.display().to_string(),
                pid: std::process::id(),
                mount: fs.status(),
                cache_dir: fs.cache().dir().display().to_string(),
                cache_bytes,
                cache_limit,
            };
            reply(
                &mut conn,
                ControlResponse {
                    status: Some(report),
                    ..ControlResponse::ok()
                },
            );
        }
        ControlRequest::Sync { .. } if fs.read_only() => reply(
            &mut conn,
            failure(format!(
                "{} is mounted read-only: there is nothing to sync",
                server.mountpoint.display()
            )),
        ),
        ControlRequest::Sync { force, push_to } => {
            let r = outcome(sync(force, push_to.as_deref()));
            reply(&mut conn, r);
        }
        ControlRequest::Unmount { lazy } => {
            let open = fs.open_writers();
            if !lazy && !open.is_empty() {
                // The client waits and asks again, or gives up: the mount stays as it is.
                let r = ControlResponse {
                    open_for_writing: open,
                    ..failure("files are open for writing".into())
                };
                reply(&mut conn, r);
                return;
            }
            // Push now unless a file is still being written: then the push waits until the
            // session ends, after the last file is closed (see `serve`).
            let deferred = !fs.read_only() && !open.is_empty();
            let mut r = if fs.read_only() || deferred {
                ControlResponse::ok()
            } else {
                outcome(sync(false, None))
            };
            let (done, done_rx) = std::sync::mpsc::channel();
            let (replied_tx, replied) = std::sync::mpsc::channel();
            if server
                .stop
                .blocking_send(StopRequest {
                    lazy,
                    deferred,
                    done,
                    replied,
                })
                .is_ok()
            {
                r.detached = done_rx
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap_or(false);
            }
            if r.detached {
                r.open_for_writing = fs.open_writers();
            }
            reply(&mut conn, r);
            let _ = replied_tx.send(());
        }
    }
}

impl ControlResponse {
    fn ok() -> ControlResponse {
        ControlResponse {
            ok: true,
            ..Default::default()
        }
    }
}

fn failure(message: String) -> ControlResponse {
    ControlResponse {
        ok: false,
        message,
        ..Default::default()
    }
}

/// An `unmount` request from the control thread to the serving loop: `done` when unmounted
/// (true: only detached, files are still open), then the control thread answers its client
/// and says `replied`, so the process does not exit before the answer is out.
struct StopRequest {
    lazy: bool,
    /// Nothing was pushed yet (files were open for writing): push once the session ends.
    deferred: bool,
    done: std::sync::mpsc::Sender<bool>,
    replied: std::sync::mpsc::Receiver<()>,
}

fn reply(conn: &mut UnixStream, r: ControlResponse) {
    let _ = writeln!(conn, "{}", serde_json::to_string(&r).expect("JSON"));
}

/// Unmounts, falling back to a lazy unmount when files are still open.
/// Returns whether the mount was only detached (busy: it lives on until its files close).
pub fn unmount(mountpoint: &Path) -> Result<bool> {
    unmount_with(mountpoint, false)
}

/// Unmounts; `lazy` detaches at once (`fusermount3 -uz`), busy or not. Returns whether the
/// mount was only detached.
pub fn unmount_with(mountpoint: &Path, lazy: bool) -> Result<bool> {
    let run = |args: &[&str]| {
        std::process::Command::new("fusermount3")
            .args(args)
            .arg(mountpoint)
            .stderr(std::process::Stdio::piped())
            .output()
    };
    if !lazy {
        let out = run(&["-u"]).ctx(|| "running fusermount3 (install the fuse3 package)".into())?;
        if out.status.success() {
            return Ok(false);
        }
        let msg = String::from_utf8_lossy(&out.stderr).to_string();
        if !msg.contains("busy") {
            return Err(Error::Other(format!(
                "fusermount3 -u {}: {}",
                mountpoint.display(),
                msg.trim()
            )));
        }
        tracing::warn!("{} is busy; detaching it lazily", mountpoint.display());
    }
    let out = run(&["-uz"]).ctx(|| "running fusermount3 (install the fuse3 package)".into())?;
    if out.status.success() {
        return Ok(true);
    }
    Err(Error::Other(format!(
        "fusermount3 -uz {}: {}",
        mountpoint.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Sends one request to a mount's control socket; `None` if no mount answers there.
pub fn control(mountpoint: &Path, request: &ControlRequest) -> Result<Option<ControlResponse>> {
    if private_runtime_dir(false)?.is_none() {
        return Ok(None);
    }
    request_at(&control_socket(mountpoint), request, None)
}

/// One request to the socket at `socket`; `None` if nothing listens there.
fn request_at(
    socket: &Path,
    request: &ControlRequest,
    timeout: Option<Duration>,
) -> Result<Option<ControlResponse>> {
    let Ok(mut conn) = UnixStream::connect(socket) else {
        return Ok(None);
    };
    let _ = conn.set_read_timeout(timeout);
    writeln!(conn, "{}", serde_json::to_string(request).expect("JSON"))
        .ctx(|| "talking to the mount".into())?;
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .ctx(|| "waiting for the mount".into())?;
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|e| Error::Other(format!("the mount process answered {line:?}: {e}")))
}

/// The status of the mount at `mountpoint`, or of every mount of this user (those whose
/// process answers; in mountpoint order).
pub fn statuses(mountpoint: Option<&Path>) -> Result<Vec<StatusReport>> {
    let Some(dir) = private_runtime_dir(false)? else {
        return match mountpoint {
            Some(m) => Err(no_mount(m)),
            None => Ok(Vec::new()),
        };
    };
    let sockets: Vec<PathBuf> = match mountpoint {
        Some(m) => vec![control_socket(m)],
        None => std::fs::read_dir(&dir)
            .ctx(|| format!("listing {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sock"))
            .collect(),
    };
    let mut out = Vec::new();
    for socket in sockets {
        // A mount too busy to answer in time is left out rather than hanging the listing.
        let answer = match request_at(
            &socket,
            &ControlRequest::Status,
            Some(Duration::from_secs(10)),
        ) {
            Ok(a) => a,
            Err(e) if mountpoint.is_some() => return Err(e),
            Err(e) => {
                tracing::warn!("{}: {e}", socket.display());
                None
            }
        };
        match answer.and_then(|a| a.status) {
            Some(s) => out.push(s),
            None if mountpoint.is_some() => return Err(no_mount(mountpoint.unwrap())),
            None => {}
        }
    }
    out.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    Ok(out)
}

fn no_mount(mountpoint: &Path) -> Error {
    Error::Usage(format!("no oras-fs mount at {}", mountpoint.display()))
}

/// Whether `path` is a mountpoint now (per /proc/mounts).
pub fn is_mounted(path: &std::path::Path) -> bool {
    mount_entry(&absolute(path)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn private(d: &Path) {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn a_private_directory_of_ours_is_accepted() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("mine");
        private(&d);
        check_private_dir(&d, uid()).unwrap();
    }

    #[test]
    fn a_directory_open_to_others_is_refused_with_the_fix() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("open");
        private(&d);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = check_private_dir(&d, uid()).unwrap_err().to_string();
        assert!(e.contains(&d.display().to_string()), "{e}");
        assert!(e.contains("mode is 755") && e.contains("chmod 700"), "{e}");
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("theirs");
        private(&d);
        if uid() == 0 {
            // As root, hand it to `nobody`, as another user's directory would be.
            std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
            let e = check_private_dir(&d, 0).unwrap_err().to_string();
            assert!(
                e.contains("owned by uid 65534") && e.contains("remove it"),
                "{e}"
            );
        }
        // Whatever our uid: a directory owned by us is not owned by another uid.
        let e = check_private_dir(&t.path().join("theirs"), uid() + 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not by you"), "{e}");
    }

    #[test]
    fn a_symlink_is_refused_even_to_a_private_directory() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        private(&real);
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = check_private_dir(&link, uid()).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn a_missing_directory_is_made_private() {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = t.path().join("new");
        // SAFETY: umask only affects this process's new files; restored at once.
        let old = unsafe { libc::umask(0o022) };
        let made = make_private_dir(&d);
        unsafe { libc::umask(old) };
        made.unwrap();
        check_private_dir(&d, uid()).unwrap();
    }

    #[test]
    fn control_requests_are_tagged_json() {
        let r: ControlRequest = serde_json::from_str(r#"{"op":"sync","force":true}"#).unwrap();
        assert_eq!(
            r,
            ControlRequest::Sync {
                force: true,
                push_to: None
            }
        );
        let r: ControlRequest = serde_json::from_str(r#"{"op":"unmount"}"#).unwrap();
        assert_eq!(r, ControlRequest::Unmount { lazy: false });
        assert_eq!(
            serde_json::to_string(&ControlRequest::Status).unwrap(),
            r#"{"op":"status"}"#
        );
        assert!(serde_json::from_str::<ControlRequest>(r#"{"op":"format"}"#).is_err());
    }

    #[test]
    fn dead_mounts_of_oras_fs_and_this_user_are_recognised() {
        let e = |source: &str, fstype: &str, options: &str| MountEntry {
            source: source.into(),
            fstype: fstype.into(),
            options: options.into(),
        };
        let opts = "rw,nosuid,nodev,relatime,user_id=1000,group_id=1000";
        assert!(e("oras-fs", "fuse.oras-fs", opts).is_oras_fs_of(1000));
        assert!(e("oras-fs", "fuse", opts).is_oras_fs_of(1000));
        assert!(!e("oras-fs", "fuse.oras-fs", opts).is_oras_fs_of(1001));
        assert!(!e("sshfs#host:", "fuse.sshfs", opts).is_oras_fs_of(1000));
        assert!(!e("oras-fs", "fuse", "rw,user_id=10000").is_oras_fs_of(1000));
    }
}
