//! Mount lifecycle: resolve the reference once, build the view, serve it over FUSE until
//! unmounted or signalled, and push a writable mount's changes before the process ends.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::cache::{BlobCache, CacheOptions};
use super::control::{self, PushToResolver, StopRequest};
use super::filesystem::{OrasFs, Snapshot, SyncOptions};
use super::fuse::FuseAdapter;
use super::fusermount::{self, unmount_with, VIA_FUSERMOUNT_ENV};
use super::paths::{absolute, control_socket};
use super::view;
use crate::content::{self, Target};
use crate::error::{Error, IoContext, Result};
use crate::manifest::{Descriptor, Index, Manifest, Platform, MAX_MANIFEST_SIZE};

/// Resolves and fetches what a mount shows: a manifest; of an image index, the manifest for
/// `platform`, or without one the index with every child manifest (fetched now, so that `ls`
/// never waits on the network).
pub async fn snapshot(
    target: &dyn Target,
    display_ref: &str,
    reference: &str,
    platform: Option<&Platform>,
) -> Result<Snapshot> {
    let fetched = content::fetch_platform_bytes(target, reference, platform).await?;
    if fetched.is_index() {
        return index_snapshot(target, display_ref, fetched).await;
    }
    let manifest = fetched.manifest(reference)?;
    manifest_snapshot(target, display_ref, fetched, manifest).await
}

async fn manifest_snapshot(
    target: &dyn Target,
    display_ref: &str,
    fetched: content::Fetched,
    manifest: Manifest,
) -> Result<Snapshot> {
    let config_bytes = if manifest.config.size <= MAX_MANIFEST_SIZE {
        content::read_all(target, &manifest.config, MAX_MANIFEST_SIZE).await?
    } else {
        Bytes::new()
    };
    Ok(Snapshot {
        reference: display_ref.to_string(),
        descriptor: fetched.descriptor,
        manifest_bytes: fetched.bytes,
        manifest,
        config_bytes,
        index: fetched.index,
        children: Vec::new(),
    })
}

/// An image index mounted whole: each child manifest as a snapshot of its own. Children that
/// are indexes themselves are left out (a mount shows manifests).
async fn index_snapshot(
    target: &dyn Target,
    display_ref: &str,
    fetched: content::Fetched,
) -> Result<Snapshot> {
    let index = Index::parse(&fetched.bytes)?;
    // Every child's manifest and config is fetched and kept for the mount's lifetime.
    const MAX_CHILDREN: usize = 256;
    if index.manifests.len() > MAX_CHILDREN {
        return Err(Error::Usage(format!(
            "{display_ref} is an image index of {} manifests, more than the {MAX_CHILDREN} a \
             mount shows side by side: mount one with --platform, or by digest",
            index.manifests.len()
        )));
    }
    let names = view::child_dir_names(&index.manifests);
    let mut children = Vec::new();
    for (name, child) in names.into_iter().zip(&index.manifests) {
        let child_ref = format!("{display_ref}@{}", child.digest);
        let bytes = content::read_manifest(target, child).await?;
        let child_fetched = content::Fetched {
            descriptor: child.clone(),
            bytes,
            index: Some(fetched.descriptor.clone()),
        };
        if child_fetched.is_index() {
            tracing::warn!("{child_ref} is an index inside an index: not shown");
            continue;
        }
        let manifest = child_fetched.manifest(&child_ref)?;
        let snapshot = manifest_snapshot(target, &child_ref, child_fetched, manifest).await?;
        children.push((name, snapshot));
    }
    if children.is_empty() {
        return Err(Error::Usage(format!(
            "{display_ref} is an image index with no manifest to show: {}",
            index.children_list()
        )));
    }
    Ok(Snapshot {
        reference: display_ref.to_string(),
        descriptor: fetched.descriptor,
        manifest_bytes: fetched.bytes,
        manifest: Manifest::new(Descriptor::empty(), Vec::new()),
        config_bytes: Bytes::new(),
        index: None,
        children,
    })
}

pub struct MountConfig {
    pub mountpoint: PathBuf,
    pub allow_other: bool,
}

/// Opens the block cache of a mount (its directory named in errors).
pub fn open_cache(options: CacheOptions, target: Arc<dyn Target>) -> Result<Arc<BlobCache>> {
    let dir = options.dir.clone();
    BlobCache::new(target, options).ctx(|| format!("cache directory {}", dir.display()))
}

/// How long a signal (SIGTERM, SIGINT) waits for files open for writing before the final push.
const SIGNAL_WRITER_WAIT: Duration = Duration::from_secs(10);

/// What a mount has to tell its user, for the caller to show: the library prints nothing.
#[derive(Debug)]
pub enum MountEvent {
    /// The mount is usable.
    Ready,
    /// The push at the end of the mount went out: the mounted reference, and what was pushed.
    Pushed {
        reference: String,
        manifest: Box<Descriptor>,
    },
}

/// Serves a mount until it is unmounted (`fusermount3 -u`, `oras-fs unmount`) or the process
/// gets SIGTERM/SIGINT; a writable mount pushes its pending changes before the process ends.
/// `on_event` hears [`MountEvent::Ready`] once the mount is usable, and what the last push did.
pub async fn serve(
    fs: Arc<OrasFs>,
    config: MountConfig,
    push_to: PushToResolver,
    mut on_event: impl FnMut(MountEvent),
) -> Result<()> {
    check_mountpoint(&config.mountpoint)?;
    let socket = control_socket(&config.mountpoint);
    let listener = control::listen(&socket, &config.mountpoint)?;
    let session = start_session(&fs, &config, &fuse_config(&fs, &config))?;
    let mountpoint = absolute(&config.mountpoint);
    let mut stops = control::serve_control(listener, fs.clone(), push_to, mountpoint);
    let refresher = start_refresh(&fs, &session);
    on_event(MountEvent::Ready);

    let mut signals = Signals::install()?;
    let why = wait_for_end(&session, &mut signals, &mut stops).await;
    if let Some(r) = refresher {
        r.abort();
    }
    // The control request already synced; otherwise push what is pending now. The control
    // socket stays until then, so a new mount here waits for this push (see `listen`).
    let mut synced = match &why {
        Why::Control(_) => Ok(()),
        Why::Signal => signal_sync(&fs, &mut on_event).await,
        // The session has ended: no file is open any more.
        Why::Unmounted => {
            note_lost_releases(&fs);
            final_sync(&fs, false, &mut on_event).await
        }
    };
    let mut detached = false;
    if !matches!(why, Why::Unmounted) {
        let lazy = matches!(&why, Why::Control(s) if s.lazy);
        detached = unmount_session(&config.mountpoint, &session, lazy, &mut synced).await;
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
        let (fs, mountpoint) = (&fs, &config.mountpoint);
        synced = serve_detached(fs, &session, &mut signals, mountpoint, &mut on_event).await;
    }
    // A session still running (files open on a lazily detached mount) ends with the process.
    if session.guard.is_finished() {
        let _ = session.join();
    } else {
        std::mem::forget(session);
    }
    synced
}

/// Refreshes a repository mount's listings (or a followed tag) every interval, and tells the
/// kernel what changed.
fn start_refresh(
    fs: &Arc<OrasFs>,
    session: &fuser::BackgroundSession,
) -> Option<tokio::task::JoinHandle<()>> {
    let every = fs.refresh_interval()?;
    let (fs, notifier) = (fs.clone(), session.notifier());
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let changes = fs.refresh().await;
            if changes.is_empty() {
                continue;
            }
            let notifier = notifier.clone();
            // Writes to /dev/fuse, which may wait on the kernel: off the runtime's threads.
            let _ =
                tokio::task::spawn_blocking(move || super::fuse::notify(&notifier, &changes)).await;
        }
    }))
}

fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    let meta =
        std::fs::metadata(mountpoint).ctx(|| format!("mountpoint {}", mountpoint.display()))?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "mountpoint {} is not a directory",
            mountpoint.display()
        )));
    }
    Ok(())
}

fn fuse_config(fs: &OrasFs, config: &MountConfig) -> fuser::Config {
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
    fuse_config
}

/// SIGTERM and SIGINT, which end a mount.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).ctx(|| "installing a SIGTERM handler".into())?,
            int: signal(SignalKind::interrupt()).ctx(|| "installing a SIGINT handler".into())?,
        })
    }

    /// Waits for either.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Why the serving loop stopped.
enum Why {
    Signal,
    Control(StopRequest),
    Unmounted,
}

async fn wait_for_end(
    session: &fuser::BackgroundSession,
    signals: &mut Signals,
    stops: &mut tokio::sync::mpsc::Receiver<StopRequest>,
) -> Why {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = signals.recv() => break Why::Signal,
            Some(done) = stops.recv() => break Why::Control(done),
            _ = tick.tick() => if session.guard.is_finished() { break Why::Unmounted },
        }
    }
}

/// Unmounts (`lazy`: detaches) and waits a little for the session to end; returns whether the
/// mount was only detached and still serves open files. An unmount error becomes `synced`'s
/// unless that holds one already.
async fn unmount_session(
    mountpoint: &Path,
    session: &fuser::BackgroundSession,
    lazy: bool,
    synced: &mut Result<()>,
) -> bool {
    tracing::info!("unmounting {}", mountpoint.display());
    let mut detached = false;
    match unmount_with(mountpoint, lazy) {
        Ok(d) => detached = d,
        Err(e) => {
            tracing::error!("{e}");
            if synced.is_ok() {
                *synced = Err(e);
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
    detached && !session.guard.is_finished()
}

/// After a detaching unmount: serves the files still open until the last one is closed (the
/// kernel then ends the session), and pushes what they wrote: ending now would cut their
/// writers off.
async fn serve_detached(
    fs: &OrasFs,
    session: &fuser::BackgroundSession,
    signals: &mut Signals,
    mountpoint: &Path,
    on_event: &mut impl FnMut(MountEvent),
) -> Result<()> {
    let mut signalled = false;
    if !session.guard.is_finished() {
        tracing::info!(
            "{} is detached; serving its open files until they are closed",
            mountpoint.display()
        );
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        signalled = loop {
            tokio::select! {
                _ = signals.recv() => break true,
                _ = tick.tick() => if session.guard.is_finished() { break false },
            }
        };
    }
    if signalled {
        signal_sync(fs, on_event).await
    } else {
        note_lost_releases(fs);
        final_sync(fs, false, on_event).await
    }
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
    let read_only = fs.read_only();
    let fd = fusermount::mount(
        &config.mountpoint,
        read_only,
        config.allow_other,
        direct_error,
    )?;
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
async fn final_sync(
    fs: &OrasFs,
    hold_open_files: bool,
    on_event: &mut impl FnMut(MountEvent),
) -> Result<()> {
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
            on_event(MountEvent::Pushed {
                reference: fs.snapshot().reference,
                manifest: Box::new(d),
            });
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
async fn signal_sync(fs: &OrasFs, on_event: &mut impl FnMut(MountEvent)) -> Result<()> {
    if fs.read_only() {
        return Ok(());
    }
    let open = wait_for_writers(fs, SIGNAL_WRITER_WAIT).await;
    if open.is_empty() {
        return final_sync(fs, false, on_event).await;
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
    final_sync(fs, true, on_event).await.and(Err(e))
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
pub(super) fn staged_hint(e: Error, fs: &OrasFs) -> Error {
    Error::Other(format!(
        "{e}\nThe changes stay staged; mount {} again and run `oras-fs sync MOUNTPOINT` to push them.",
        fs.snapshot().reference
    ))
}
