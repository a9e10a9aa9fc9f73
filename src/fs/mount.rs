//! Mount lifecycle: resolve the reference once, build the view, serve it over FUSE until
//! unmounted or signalled, and a control socket per mountpoint for `sync` and `unmount`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::cache::{BlobCache, CacheOptions};
use super::filesystem::{OrasFs, Snapshot, SyncOptions};
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

/// Where a user's mount control sockets live.
pub fn runtime_dir() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| {
            // SAFETY: getuid cannot fail.
            let uid = unsafe { libc::getuid() };
            std::env::temp_dir().join(format!("oras-fs-{uid}"))
        });
    base.join("oras-fs-mounts")
}

/// The control socket of the mount at `mountpoint`.
pub fn control_socket(mountpoint: &Path) -> PathBuf {
    let canon = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let key = Digest::of(canon.as_os_str().as_encoded_bytes());
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

/// A request on the control socket (one JSON line).
#[derive(serde::Serialize, serde::Deserialize, Debug, Default)]
pub struct ControlRequest {
    /// `sync`, `unmount` or `ping`.
    pub op: String,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub push_to: Option<String>,
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
}

/// Builds the filesystem of a mount: the cache, and for a writable mount the staging area with
/// any pending changes of an earlier mount of the same reference.
pub fn open_cache(options: CacheOptions, target: Arc<dyn Target>) -> Result<Arc<BlobCache>> {
    let dir = options.dir.clone();
    BlobCache::new(target, options).ctx(|| format!("cache directory {}", dir.display()))
}

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
    let adapter = FuseAdapter::new(fs.clone(), tokio::runtime::Handle::current());
    let session = fuser::spawn_mount(adapter, &config.mountpoint, &fuse_config).ctx(|| {
        format!(
            "mounting on {} (is /dev/fuse usable and fusermount3 installed?)",
            config.mountpoint.display()
        )
    })?;
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<StopRequest>(1);
    {
        let fs = fs.clone();
        let runtime = tokio::runtime::Handle::current();
        std::thread::spawn(move || control_loop(listener, fs, runtime, push_to, stop_tx));
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
    let synced = match &why {
        Why::Control(_) => Ok(()),
        _ => final_sync(&fs).await,
    };
    if !matches!(why, Why::Unmounted) {
        tracing::info!("unmounting {}", config.mountpoint.display());
        let detached = unmount(&config.mountpoint)?;
        // A lazily detached mount ends when its last file closes: don't wait for that.
        let deadline = Instant::now() + Duration::from_secs(if detached { 0 } else { 3 });
        while !session.guard.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = std::fs::remove_file(&socket);
    if let Why::Control(stop) = why {
        let _ = stop.done.send(());
        // Let the control thread answer before the process ends.
        let _ = stop.replied.recv_timeout(Duration::from_secs(2));
    }
    // A session still running (files open on a lazily detached mount) ends with the process.
    if session.guard.is_finished() {
        let _ = session.join();
    } else {
        std::mem::forget(session);
    }
    synced
}

/// The push at the end of a writable mount's life.
async fn final_sync(fs: &OrasFs) -> Result<()> {
    if fs.read_only() {
        return Ok(());
    }
    match fs.sync(&SyncOptions::default()).await {
        Ok(Some(d)) => {
            tracing::info!("pushed {d:?}");
            eprintln!("Pushed {} as {}", fs.snapshot().reference, d.digest);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            let e = staged_hint(e, fs);
            tracing::error!("{e}");
            Err(e)
        }
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
    let dir = socket.parent().expect("socket in a directory");
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .ctx(|| format!("creating {}", dir.display()))?;
    }
    if UnixStream::connect(socket).is_ok() {
        return Err(another_mount(mountpoint));
    }
    let _ = std::fs::remove_file(socket);
    UnixListener::bind(socket).ctx(|| format!("creating the control socket {}", socket.display()))
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

/// Answers requests on the control socket, one JSON line each way.
fn control_loop(
    listener: UnixListener,
    fs: Arc<OrasFs>,
    runtime: tokio::runtime::Handle,
    push_to: PushToResolver,
    stop: tokio::sync::mpsc::Sender<StopRequest>,
) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { return };
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            continue;
        }
        let req: ControlRequest = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                reply(&mut conn, false, None, format!("bad request: {e}"));
                continue;
            }
        };
        match req.op.as_str() {
            "ping" => reply(&mut conn, true, None, String::new()),
            "sync" | "unmount" => {
                let unmounting = req.op == "unmount";
                let result = if fs.read_only() {
                    if unmounting {
                        Ok(None)
                    } else {
                        Err(Error::Usage(
                            "this mount is read-only: nothing to sync".into(),
                        ))
                    }
                } else {
                    let opts = match req.push_to.as_deref().map(&push_to).transpose() {
                        Ok(p) => Ok(SyncOptions {
                            push_to: p,
                            force: req.force,
                        }),
                        Err(e) => Err(e),
                    };
                    opts.and_then(|o| runtime.block_on(fs.sync(&o)))
                };
                let (ok, digest, message) = match result {
                    Ok(Some(d)) => (true, Some(d.digest.to_string()), String::new()),
                    Ok(None) => (true, None, "nothing to push".to_string()),
                    Err(e) => (false, None, staged_hint(e, &fs).to_string()),
                };
                if unmounting {
                    let (done, done_rx) = std::sync::mpsc::channel();
                    let (replied_tx, replied) = std::sync::mpsc::channel();
                    if stop.blocking_send(StopRequest { done, replied }).is_ok() {
                        let _ = done_rx.recv_timeout(Duration::from_secs(10));
                    }
                    reply(&mut conn, ok, digest, message);
                    let _ = replied_tx.send(());
                    return;
                }
                reply(&mut conn, ok, digest, message);
            }
            other => reply(&mut conn, false, None, format!("unknown request {other:?}")),
        }
    }
}

/// An `unmount` request from the control thread to the serving loop: `done` when unmounted,
/// then the control thread answers its client and says `replied`, so the process does not
/// exit before the answer is out.
struct StopRequest {
    done: std::sync::mpsc::Sender<()>,
    replied: std::sync::mpsc::Receiver<()>,
}

fn reply(conn: &mut UnixStream, ok: bool, digest: Option<String>, message: String) {
    let r = ControlResponse {
        ok,
        digest,
        message,
    };
    let _ = writeln!(conn, "{}", serde_json::to_string(&r).expect("JSON"));
}

/// Unmounts, falling back to a lazy unmount when files are still open.
/// Returns whether the mount was only detached (busy: it lives on until its files close).
pub fn unmount(mountpoint: &Path) -> Result<bool> {
    let run = |args: &[&str]| {
        std::process::Command::new("fusermount3")
            .args(args)
            .arg(mountpoint)
            .stderr(std::process::Stdio::piped())
            .output()
    };
    let out = run(&["-u"]).ctx(|| "running fusermount3 (install the fuse3 package)".into())?;
    if out.status.success() {
        return Ok(false);
    }
    let msg = String::from_utf8_lossy(&out.stderr).to_string();
    if msg.contains("busy") {
        tracing::warn!("{} is busy; detaching it lazily", mountpoint.display());
        let out = run(&["-uz"]).ctx(|| "running fusermount3".into())?;
        if out.status.success() {
            return Ok(true);
        }
        return Err(Error::Other(format!(
            "fusermount3 -uz {}: {}",
            mountpoint.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Err(Error::Other(format!(
        "fusermount3 -u {}: {}",
        mountpoint.display(),
        msg.trim()
    )))
}

/// Sends one request to a mount's control socket; `None` if no mount answers there.
pub fn control(mountpoint: &Path, request: &ControlRequest) -> Result<Option<ControlResponse>> {
    let socket = control_socket(mountpoint);
    let Ok(mut conn) = UnixStream::connect(&socket) else {
        return Ok(None);
    };
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

/// Whether `path` is a mountpoint now (per /proc/mounts).
pub fn is_mounted(path: &std::path::Path) -> bool {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let want = canon.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
        })
        .unwrap_or(false)
}
