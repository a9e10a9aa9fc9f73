//! The control socket of a mount, one per mountpoint: a typed request and its answer, one JSON
//! line each way; the server in the mount process and the client in `sync`, `unmount` and
//! `status`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::filesystem::{MountStatus, OrasFs, SyncOptions};
use super::fusermount::is_mounted;
use super::mount::staged_hint;
use super::paths::{control_socket, private_runtime_dir};
use crate::content::Target;
use crate::error::{Error, IoContext, Result};
use crate::manifest::Descriptor;

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
pub(super) struct StopRequest {
    pub(super) lazy: bool,
    /// Nothing was pushed yet (files were open for writing): push once the session ends.
    pub(super) deferred: bool,
    pub(super) done: std::sync::mpsc::Sender<bool>,
    pub(super) replied: std::sync::mpsc::Receiver<()>,
}

/// Creates the control socket of a mount (private to the user), refusing if a mount answers
/// there already.
pub(super) fn listen(socket: &Path, mountpoint: &Path) -> Result<UnixListener> {
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

/// What the control thread needs.
struct ControlServer {
    fs: Arc<OrasFs>,
    runtime: tokio::runtime::Handle,
    push_to: PushToResolver,
    stop: tokio::sync::mpsc::Sender<StopRequest>,
    mountpoint: PathBuf,
}

/// Answers requests on `listener` from a thread of its own (the requests run the async core
/// on the current runtime); an `unmount` comes back to the serving loop as a [`StopRequest`].
pub(super) fn serve_control(
    listener: UnixListener,
    fs: Arc<OrasFs>,
    push_to: PushToResolver,
    mountpoint: PathBuf,
) -> tokio::sync::mpsc::Receiver<StopRequest> {
    let (stop, stop_rx) = tokio::sync::mpsc::channel::<StopRequest>(1);
    let server = ControlServer {
        fs,
        runtime: tokio::runtime::Handle::current(),
        push_to,
        stop,
        mountpoint,
    };
    std::thread::spawn(move || control_loop(listener, Arc::new(server)));
    stop_rx
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
    match req {
        ControlRequest::Ping => reply(&mut conn, ControlResponse::ok()),
        ControlRequest::Status => {
            let r = ControlResponse {
                status: Some(server.status()),
                ..ControlResponse::ok()
            };
            reply(&mut conn, r);
        }
        ControlRequest::Sync { .. } if server.fs.read_only() => reply(
            &mut conn,
            failure(format!(
                "{} is mounted read-only: there is nothing to sync",
                server.mountpoint.display()
            )),
        ),
        ControlRequest::Sync { force, push_to } => {
            let r = server.sync(force, push_to.as_deref());
            reply(&mut conn, r);
        }
        ControlRequest::Unmount { lazy } => server.unmount(conn, lazy),
    }
}

impl ControlServer {
    fn status(&self) -> StatusReport {
        let fs = &self.fs;
        let (cache_bytes, cache_limit) = fs.cache().disk_usage();
        StatusReport {
            mountpoint: self.mountpoint.display().to_string(),
            pid: std::process::id(),
            mount: fs.status(),
            cache_dir: fs.cache().dir().display().to_string(),
            cache_bytes,
            cache_limit,
        }
    }

    /// Pushes now, and says what was pushed or why not.
    fn sync(&self, force: bool, push_to: Option<&str>) -> ControlResponse {
        let fs = &self.fs;
        let result = push_to.map(&self.push_to).transpose().and_then(|push_to| {
            self.runtime.block_on(fs.sync(&SyncOptions {
                push_to,
                force,
                ..Default::default()
            }))
        });
        outcome(fs, result)
    }

    /// Answers an `unmount`: refused while files are open for writing (unless `lazy`); else
    /// pushes (or leaves the push to the serving loop) and has the serving loop unmount.
    fn unmount(&self, mut conn: UnixStream, lazy: bool) {
        let fs = &self.fs;
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
            self.sync(false, None)
        };
        let (done, done_rx) = std::sync::mpsc::channel();
        let (replied_tx, replied) = std::sync::mpsc::channel();
        if self
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

/// The answer to a push: the digest, "nothing to push", or the error (kept for `status`).
fn outcome(fs: &OrasFs, result: Result<Option<Descriptor>>) -> ControlResponse {
    match result {
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
    }
}

fn reply(conn: &mut UnixStream, r: ControlResponse) {
    let _ = writeln!(conn, "{}", serde_json::to_string(&r).expect("JSON"));
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
