//! Helpers for the FUSE tests (`tests/mount.rs`, `tests/writable.rs`): a [`Mount`] guard that
//! always unmounts, registry-log accounting ([`bytes_served`], [`uploads_since`]), a TCP proxy
//! that stalls chosen requests ([`StallProxy`]), and small process helpers.
//!
//! Nothing here may hang or panic while a test is already unwinding: every external command
//! run from a `Drop` has a deadline and is killed (by its own pid) when it overruns.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// How long `oras-fs mount` may take to report the mount usable.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an explicit `oras-fs unmount` / `sync` run by a test may take.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

// --- Processes --------------------------------------------------------------------------------

/// Runs `cmd` (stdin empty, output captured) for at most `timeout`; on overrun the child is
/// killed and `None` returned. Never panics: safe to call from `Drop`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let out = child.stdout.take()?;
    let err = child.stderr.take()?;
    let out_reader = drain(out);
    let err_reader = drain(err);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                // The readers end once the pipes close; a grandchild holding them would keep
                // them open, so don't wait for them.
                return None;
            }
        }
    };
    Some(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// A child process killed (and reaped) when dropped, e.g. a background `cat` of a stalled file.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn spawn(cmd: &mut Command) -> KillOnDrop {
        KillOnDrop(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}")),
        )
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().ok().flatten()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = self.0.kill();
        // A process killed while the FUSE daemon handles its request stays in the kernel until
        // the daemon answers (or dies): don't wait for it here, reap it in the background.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = self.0.id();
        std::thread::spawn(move || {
            let mut status = 0;
            // SAFETY: waitpid on our own child, which nothing else waits for any more.
            unsafe {
                libc::waitpid(pid as i32, &mut status, 0);
            }
        });
    }
}

/// Runs `f` on a thread and returns its result, or `None` if it takes longer than `limit`
/// (the thread is then left behind: for checks that must not hang the test, like `ls` of a
/// mount with a stalled read).
pub fn within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// Whether a process is alive (not gone, not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Sends `signal` to `pid`.
pub fn kill_pid(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a pid we found ourselves; no memory is involved.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// The `argv` of a process.
fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// Pids of live processes whose argv satisfies `pred`.
pub fn find_processes(pred: impl Fn(&[String]) -> bool) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid_alive(pid))
        .filter(|&pid| cmdline(pid).is_some_and(|argv| pred(&argv)))
        .collect()
}

// --- Mount table ------------------------------------------------------------------------------

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

/// Whether `path` (canonical: a dead FUSE mount cannot be canonicalized) is a mountpoint now.
pub fn is_mounted(path: &Path) -> bool {
    let want = mounts_escape(path);
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
        })
        .unwrap_or(false)
}

/// The `/proc/mounts` line of `path`, if mounted.
pub fn mount_line(path: &Path) -> Option<String> {
    let want = mounts_escape(path);
    std::fs::read_to_string("/proc/mounts")
        .ok()?
        .lines()
        .find_map(|l| (l.split(' ').nth(1) == Some(want.as_str())).then(|| l.to_string()))
}

/// Polls until `path` is no longer mounted; false if it still is after `limit`.
pub fn wait_unmounted(path: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !is_mounted(path) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `fusermount3 -uz PATH` (lazy: works on dead and busy mounts), bounded in time.
pub fn fusermount_lazy(path: &Path) -> Option<Output> {
    run_bounded(
        Command::new("fusermount3").arg("-uz").arg(path),
        Duration::from_secs(10),
    )
}

// --- The mount guard --------------------------------------------------------------------------

/// An `oras-fs mount` of a reference on a temporary mountpoint, with a per-mount cache directory
/// (unless one is given, for tests that mount the same reference again), unmounted when
/// dropped whatever happened (`oras-fs unmount`, then `fusermount3 -uz`, then the daemon is
/// killed if it lingers), without ever hanging.
pub struct Mount {
    /// Holds `mnt/`, `cache/` and `home/`; kept (leaked) if the mount could not be removed.
    root: Option<tempfile::TempDir>,
    mountpoint: PathBuf,
    cache_dir: PathBuf,
    /// `XDG_CACHE_HOME` of the daemon, so that nothing of it lands in the user's cache (it
    /// logs to `CACHE_DIR/logs/mount-PID.log`).
    home: PathBuf,
    /// The output of the `oras-fs mount` command (its stderr has the daemon's start messages).
    pub output: Output,
    /// Pid of the daemon serving the mount, found right after mounting.
    pid: Option<u32>,
}

/// The `oras-fs mount` command of a [`Mount`].
fn mount_command(
    reference: &str,
    mountpoint: &Path,
    cache: &Path,
    home: &Path,
    extra: &[&str],
) -> Command {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("mount"),
        OsStr::new(reference),
        mountpoint.as_os_str(),
        OsStr::new("--cache-dir"),
        cache.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let mut cmd = oras_fs_cmd(args);
    cmd.env("XDG_CACHE_HOME", home);
    cmd
}

impl Mount {
    /// Mounts `reference` with `extra` arguments (e.g. `--read-only`, `-a`); panics (showing
    /// the output) if the mount fails.
    #[track_caller]
    pub fn new(reference: &str, extra: &[&str]) -> Mount {
        Self::try_new(reference, None, extra)
            .unwrap_or_else(|out| panic!("mounting {reference} failed\n{}", describe(&out)))
    }

    /// Like [`Mount::new`], with the cache (and staging) directory `cache_dir`, which outlives
    /// the mount.
    #[track_caller]
    pub fn with_cache_dir(reference: &str, cache_dir: &Path, extra: &[&str]) -> Mount {
        Self::try_new(reference, Some(cache_dir), extra)
            .unwrap_or_else(|out| panic!("mounting {reference} failed\n{}", describe(&out)))
    }

    /// Mounts, returning the command's output if it failed (after checking that nothing stays
    /// mounted then).
    pub fn try_new(
        reference: &str,
        cache_dir: Option<&Path>,
        extra: &[&str],
    ) -> Result<Mount, Output> {
        let root = tempfile::Builder::new()
            .prefix("oras-fs-mount-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let base = std::fs::canonicalize(root.path()).expect("canonical temp dir");
        let mountpoint = base.join("mnt");
        let home = base.join("home");
        std::fs::create_dir(&mountpoint).expect("creating the mountpoint");
        std::fs::create_dir(&home).expect("creating the log home");
        let cache_dir = match cache_dir {
            Some(c) => c.to_path_buf(),
            None => {
                let c = base.join("cache");
                std::fs::create_dir(&c).expect("creating the cache dir");
                c
            }
        };
        let mut cmd = mount_command(reference, &mountpoint, &cache_dir, &home, extra);
        let output = run_with_timeout(&mut cmd, b"", MOUNT_TIMEOUT);
        let mut mount = Mount {
            root: Some(root),
            mountpoint,
            cache_dir,
            home,
            output,
            pid: None,
        };
        if !mount.output.status.success() {
            let output = mount.output.clone();
            // Drop cleans up if, against expectations, something got mounted.
            assert!(
                !is_mounted(&mount.mountpoint),
                "`oras-fs mount` failed but left {} mounted\n{}",
                mount.mountpoint.display(),
                describe(&output)
            );
            return Err(output);
        }
        assert!(
            is_mounted(&mount.mountpoint),
            "`oras-fs mount` succeeded but {} is not in /proc/mounts\n{}",
            mount.mountpoint.display(),
            describe(&mount.output)
        );
        mount.pid = mount.find_daemon();
        Ok(mount)
    }

    /// The mountpoint (canonical path).
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// `mountpoint/rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(rel)
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Stderr of the `oras-fs mount` command.
    pub fn mount_stderr(&self) -> String {
        stderr_of(&self.output)
    }

    fn find_daemon(&self) -> Option<u32> {
        let mp = self.mountpoint.to_string_lossy().into_owned();
        find_processes(|argv| {
            argv.len() > 2 && argv[1] == "mount" && argv.iter().skip(2).any(|a| *a == mp)
        })
        .into_iter()
        .next()
    }

    /// The pid of the background process serving this mount.
    #[track_caller]
    pub fn daemon_pid(&self) -> u32 {
        self.pid
            .filter(|&p| pid_alive(p))
            .or_else(|| self.find_daemon())
            .unwrap_or_else(|| panic!("no mount process serves {}", self.mountpoint.display()))
    }

    /// What the daemon logged after it detached (for failure messages).
    pub fn daemon_log(&self) -> String {
        let mut out = String::new();
        for dir in [self.cache_dir.join("logs"), self.home.join("oras-fs/logs")] {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                out.push_str(&format!("--- {} ---\n", e.path().display()));
                out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }

    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mountpoint)
    }

    /// `oras-fs unmount MOUNTPOINT` (the daemon pushes pending changes first); returns its
    /// output, whether it succeeded or not.
    pub fn unmount(&mut self) -> Output {
        let out = run_with_timeout(
            &mut oras_fs_cmd([OsStr::new("unmount"), self.mountpoint.as_os_str()]),
            b"",
            CONTROL_TIMEOUT,
        );
        self.wait_for_daemon(Duration::from_secs(10));
        out
    }

    /// `oras-fs sync MOUNTPOINT ARGS...`.
    pub fn sync(&self, args: &[&str]) -> Output {
        let mut all: Vec<&OsStr> = vec![OsStr::new("sync"), self.mountpoint.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        run_with_timeout(&mut oras_fs_cmd(all), b"", CONTROL_TIMEOUT)
    }

    /// `oras-fs sync` that must succeed and push: returns the digest it printed.
    #[track_caller]
    pub fn sync_pushed(&self, args: &[&str]) -> String {
        let out = self.sync(args);
        let stdout = assert_ok(&out);
        let digest = stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("Pushed "))
            .unwrap_or_else(|| {
                panic!(
                    "sync printed no `Pushed ` line\n{}\n{}",
                    describe(&out),
                    self.daemon_log()
                )
            })
            .trim()
            .to_string();
        assert!(is_sha256_digest(&digest), "{}", describe(&out));
        digest
    }

    /// Runs `oras-fs mount REFERENCE` again on this mountpoint (with a cache directory of its
    /// own); once it succeeds, this `Mount` follows the new daemon. Returns the output.
    pub fn mount_again(&mut self, reference: &str, extra: &[&str]) -> Output {
        let cache = self.mountpoint.with_file_name("cache-again");
        std::fs::create_dir_all(&cache).expect("creating the second cache dir");
        let mut cmd = mount_command(reference, &self.mountpoint, &cache, &self.home, extra);
        let out = run_with_timeout(&mut cmd, b"", MOUNT_TIMEOUT);
        if out.status.success() {
            self.pid = self.find_daemon();
        }
        out
    }

    /// Waits until the daemon process is gone; false if it still runs after `limit`.
    pub fn wait_for_daemon(&self, limit: Duration) -> bool {
        let Some(pid) = self.pid else { return true };
        let deadline = Instant::now() + limit;
        while pid_alive(pid) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let mp = self.mountpoint.clone();
        if is_mounted(&mp) {
            let _ = run_bounded(
                &mut oras_fs_cmd([OsStr::new("unmount"), mp.as_os_str()]),
                Duration::from_secs(30),
            );
            if !wait_unmounted(&mp, Duration::from_secs(2)) {
                let _ = fusermount_lazy(&mp);
            }
            if !wait_unmounted(&mp, Duration::from_secs(2)) {
                let _ = run_bounded(
                    Command::new("umount").arg("-l").arg(&mp),
                    Duration::from_secs(10),
                );
            }
        }
        // The daemon ends by itself once unmounted (after its final push); don't let a stuck
        // one outlive the test.
        if let Some(pid) = self.pid {
            if !self.wait_for_daemon(Duration::from_secs(10)) && self.find_daemon() == Some(pid) {
                eprintln!(
                    "mount process {pid} of {} lingers: killing it",
                    mp.display()
                );
                kill_pid(pid, libc::SIGKILL);
            }
        }
        if is_mounted(&mp) {
            // Removing the directory would walk (or hang in) the mount: leave it.
            eprintln!("{} is still mounted: leaving its directory", mp.display());
            if let Some(root) = self.root.take() {
                let _ = root.keep();
            }
        }
    }
}

// --- Registry log accounting ---------------------------------------------------------------

/// The current size of a log: take it before an action, then look at what came after.
pub fn log_offset(log: &Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// One completed response from a registry's JSON log.
#[derive(Clone, Debug)]
pub struct LogEntry {
    pub method: String,
    pub uri: String,
    pub status: u16,
    /// Bytes of body sent.
    pub written: u64,
}

/// The responses a registry logged after `offset` (JSON lines only; the access-log lines
/// duplicate them).
pub fn log_entries_since(log: &Path, offset: u64) -> Vec<LogEntry> {
    let mut f = match std::fs::File::open(log) {
        Ok(f) => f,
        Err(e) => panic!("opening {}: {e}", log.display()),
    };
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(offset))
        .expect("seeking the log");
    let mut text = Vec::new();
    f.read_to_end(&mut text).expect("reading the log");
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some(LogEntry {
                method: v.get("http.request.method")?.as_str()?.to_string(),
                uri: v.get("http.request.uri")?.as_str()?.to_string(),
                status: v
                    .get("http.response.status")
                    .and_then(|s| s.as_u64())
                    .unwrap_or(0) as u16,
                written: v
                    .get("http.response.written")
                    .and_then(|s| s.as_u64())
                    .unwrap_or(0),
            })
        })
        .collect()
}

/// Lets responses still in flight reach the log (the registry logs each one as it completes).
pub fn settle_log() {
    std::thread::sleep(Duration::from_millis(500));
}

/// Body bytes the registry sent for GETs of blob `digest` since `offset`.
pub fn bytes_served(log: &Path, offset: u64, digest: &str) -> u64 {
    let needle = format!("/blobs/{digest}");
    log_entries_since(log, offset)
        .iter()
        .filter(|e| e.method == "GET" && e.uri.contains(&needle))
        .map(|e| e.written)
        .sum()
}

/// Blob GETs (of any blob) in `repo` since `offset`.
pub fn blob_gets_since(log: &Path, offset: u64, repo: &str) -> Vec<LogEntry> {
    let needle = format!("/v2/{repo}/blobs/");
    log_entries_since(log, offset)
        .into_iter()
        .filter(|e| e.method == "GET" && e.uri.contains(&needle))
        .collect()
}

/// Blob uploads to `repo` since `offset`: each completed upload ends with a `PUT` to
/// `/blobs/uploads/...` (a one-request `POST ...?digest=` upload counts too).
pub fn uploads_since(log: &Path, offset: u64, repo: &str) -> usize {
    upload_requests_since(log, offset, repo)
        .iter()
        .filter(|e| e.method == "PUT" || (e.method == "POST" && e.uri.contains("digest=")))
        .count()
}

/// Every request of the upload protocol (`POST`, `PATCH`, `PUT` under `/blobs/uploads/`) to
/// `repo` since `offset`, except mounts answered 201: that is how a push asks whether a blob
/// is there already, and nothing is uploaded.
pub fn upload_requests_since(log: &Path, offset: u64, repo: &str) -> Vec<LogEntry> {
    let needle = format!("/v2/{repo}/blobs/uploads/");
    log_entries_since(log, offset)
        .into_iter()
        .filter(|e| e.method != "GET" && e.method != "HEAD" && e.uri.contains(&needle))
        .filter(|e| !(e.method == "POST" && e.status == 201))
        .collect()
}

// --- A proxy that stalls chosen requests ---------------------------------------------------

/// A TCP proxy on 127.0.0.1 in front of a registry that forwards everything, but holds a
/// request whose bytes contain `needle` (e.g. `/blobs/sha256:...`) for `delay` before
/// forwarding it. Each client connection has its own threads, so only that request waits.
pub struct StallProxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    stop: Arc<AtomicBool>,
    /// How many requests were held.
    pub stalled: Arc<std::sync::atomic::AtomicUsize>,
}

impl StallProxy {
    pub fn start(upstream: &str, needle: &str, delay: Duration) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (upstream, needle) = (upstream.to_string(), needle.as_bytes().to_vec());
        {
            let stop = stop.clone();
            let stalled = stalled.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let _ = client.set_nonblocking(false);
                            let Ok(server) = TcpStream::connect(&upstream) else {
                                continue;
                            };
                            let _ = client.set_nodelay(true);
                            let _ = server.set_nodelay(true);
                            let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                                (Ok(c), Ok(s)) => (c, s),
                                _ => continue,
                            };
                            let (needle, stalled, stop) =
                                (needle.clone(), stalled.clone(), stop.clone());
                            std::thread::spawn(move || {
                                forward(client, server, Some((needle, delay, stalled, stop)))
                            });
                            std::thread::spawn(move || forward(s2, c2, None));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        StallProxy {
            addr,
            stop,
            stalled,
        }
    }
}

type Stall = (
    Vec<u8>,
    Duration,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<AtomicBool>,
);

/// Copies `from` to `to` until either side closes; chunks containing the stall needle wait.
fn forward(mut from: TcpStream, mut to: TcpStream, stall: Option<Stall>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((needle, delay, count, stop)) = &stall {
            if buf[..n]
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
            {
                count.fetch_add(1, Ordering::Relaxed);
                let until = Instant::now() + *delay;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
    let _ = from.shutdown(std::net::Shutdown::Read);
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// --- Pushing and pulling ------------------------------------------------------------------

/// `oras-fs push REF FILES... --no-tty` run in `dir` (titles are the paths as given); panics
/// unless it succeeds; returns the manifest digest.
#[track_caller]
pub fn push_files(dir: &Path, reference: &str, files: &[&str]) -> String {
    let mut args = vec!["push", reference];
    args.extend_from_slice(files);
    args.push("--no-tty");
    let out = oras_fs_in(dir, args);
    assert_ok(&out);
    digest_of_stdout(&out)
}

/// `oras-fs pull REF -o OUT --no-tty ARGS...`; panics unless it succeeds.
#[track_caller]
pub fn pull_to(reference: &str, out: &Path, args: &[&str]) {
    assert_ok(&pull(reference, out, args));
}

/// Pulls `reference` with `oras-fs` into a new temporary directory and returns its files.
#[track_caller]
pub fn pulled_tree(reference: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    pulled(reference, &[])
}

/// The raw OS error of an I/O result (panics if it succeeded).
#[track_caller]
pub fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("not an OS error: {e:?}")),
    }
}

// --- Restarting an extra registry ----------------------------------------------------------

/// An [`ExtraRegistry`] started again (after `registry.sh stop --name N`) on the same port and
/// storage: `registry.sh start` always starts afresh (new port, empty storage), so this runs
/// `docker-registry serve STATE/config.yml` itself, as the script does. Killed when dropped
/// (and `registry.sh stop` of the [`ExtraRegistry`] finds it too: same command line).
pub struct RestartedRegistry(Option<Child>);

impl RestartedRegistry {
    #[track_caller]
    pub fn start(reg: &ExtraRegistry) -> RestartedRegistry {
        let state = reg.dir.parent().expect("storage root inside the state dir");
        let config = state.join("config.yml");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&reg.log)
            .expect("opening the registry log");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        // As registry.sh: the config file is the whole truth.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run docker-registry: {e}"));
        let restarted = RestartedRegistry(Some(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(&reg.host).is_ok()
                && http(&reg.host, "GET", "/v2/", &[], b"").status == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not come back on {}",
                reg.host
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        restarted
    }
}

impl Drop for RestartedRegistry {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `scripts/registry.sh stop --name NAME` of an extra registry (it can be started again with
/// [`RestartedRegistry::start`]).
#[track_caller]
pub fn stop_registry(reg: &ExtraRegistry) {
    let out = run(Command::new(scripts_dir().join("registry.sh"))
        .arg("stop")
        .arg("--name")
        .arg(&reg.name));
    assert_ok(&out);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(&reg.host).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{} still answers after stop",
            reg.host
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
