//! Mount lifecycle: resolve the reference once, build the view, serve it over FUSE until
//! unmounted or signalled, and a control socket per mountpoint for `sync` and `unmount`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::cache::{BlobCache, CacheOptions};
use super::filesystem::{MountOptions, OrasFs, Snapshot};
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
    pub cache: CacheOptions,
    pub options: MountOptions,
    pub allow_other: bool,
}

/// Serves a mount until it is unmounted (`fusermount3 -u`, `oras-fs unmount`) or the process
/// gets SIGTERM/SIGINT. `ready` is called once the mount is usable.
pub async fn serve(
    target: Arc<dyn Target>,
    snapshot: Snapshot,
    config: MountConfig,
    ready: impl FnOnce(&OrasFs),
) -> Result<()> {
    let meta = std::fs::metadata(&config.mountpoint)
        .ctx(|| format!("mountpoint {}", config.mountpoint.display()))?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "mountpoint {} is not a directory",
            config.mountpoint.display()
        )));
    }
    let cache = BlobCache::new(target, config.cache.clone())
        .ctx(|| format!("cache directory {}", config.cache.dir.display()))?;
    let fs = Arc::new(OrasFs::new(
        cache,
        snapshot,
        config.options.clone(),
        tokio::runtime::Handle::current(),
    )?);
    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = vec![
        fuser::MountOption::FSName("oras-fs".into()),
        fuser::MountOption::Subtype("oras-fs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        if config.options.read_only {
            fuser::MountOption::RO
        } else {
            fuser::MountOption::RW
        },
    ];
    if config.allow_other {
        fuse_config.acl = fuser::SessionACL::All;
    }
    fuse_config.n_threads = Some(4);
    let adapter = FuseAdapter::new(fs.clone(), tokio::runtime::Handle::current());
    let session = fuser::spawn_mount(adapter, &config.mountpoint, &fuse_config).ctx(|| {
        format!(
            "mounting on {} (is /dev/fuse usable and fusermount3 installed?)",
            config.mountpoint.display()
        )
    })?;
    let socket = control_socket(&config.mountpoint);
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<()>(1);
    let listener = listen(&socket)?;
    let control = {
        let stop = stop_tx.clone();
        std::thread::spawn(move || control_loop(listener, stop))
    };
    ready(&fs);

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ctx(|| "installing a SIGTERM handler".into())?;
    let mut int = signal(SignalKind::interrupt()).ctx(|| "installing a SIGINT handler".into())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let signalled = loop {
        tokio::select! {
            _ = term.recv() => break true,
            _ = int.recv() => break true,
            _ = stop_rx.recv() => break true,
            _ = tick.tick() => if session.guard.is_finished() { break false },
        }
    };
    let _ = std::fs::remove_file(&socket);
    drop(control);
    if signalled {
        tracing::info!("unmounting {}", config.mountpoint.display());
        unmount(&config.mountpoint)?;
        let deadline = Instant::now() + Duration::from_secs(3);
        while !session.guard.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Dropping a finished session is harmless; an unfinished one (files still open on a lazily
    // detached mount) ends with the process.
    if session.guard.is_finished() {
        let _ = session.join();
    } else {
        std::mem::forget(session);
    }
    Ok(())
}

fn listen(socket: &Path) -> Result<UnixListener> {
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
        return Err(Error::Usage(
            "another oras-fs mount serves this mountpoint".into(),
        ));
    }
    let _ = std::fs::remove_file(socket);
    UnixListener::bind(socket).ctx(|| format!("creating the control socket {}", socket.display()))
}

/// Answers `unmount` requests on the control socket (one line in, one line out).
fn control_loop(listener: UnixListener, stop: tokio::sync::mpsc::Sender<()>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { return };
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            continue;
        }
        match line.trim() {
            "unmount" => {
                let _ = writeln!(conn, "ok");
                let _ = stop.blocking_send(());
                return;
            }
            "ping" => {
                let _ = writeln!(conn, "ok");
            }
            other => {
                let _ = writeln!(conn, "error: unknown request {other:?}");
            }
        }
    }
}

/// Unmounts, falling back to a lazy unmount when files are still open.
pub fn unmount(mountpoint: &Path) -> Result<()> {
    let run = |args: &[&str]| {
        std::process::Command::new("fusermount3")
            .args(args)
            .arg(mountpoint)
            .stderr(std::process::Stdio::piped())
            .output()
    };
    let out = run(&["-u"]).ctx(|| "running fusermount3 (install the fuse3 package)".into())?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).to_string();
    if msg.contains("busy") {
        tracing::warn!("{} is busy; detaching it lazily", mountpoint.display());
        let out = run(&["-uz"]).ctx(|| "running fusermount3".into())?;
        if out.status.success() {
            return Ok(());
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

/// Sends one request to a mount's control socket and returns its answer.
pub fn control(mountpoint: &Path, request: &str, timeout: Duration) -> Result<Option<String>> {
    let socket = control_socket(mountpoint);
    let Ok(mut conn) = UnixStream::connect(&socket) else {
        return Ok(None);
    };
    conn.set_read_timeout(Some(timeout)).ok();
    writeln!(conn, "{request}").ctx(|| "talking to the mount".into())?;
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .ctx(|| "waiting for the mount".into())?;
    Ok(Some(line.trim().to_string()))
}
