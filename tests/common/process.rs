//! Running processes: `oras-fs` isolated from the user's environment, any command with a
//! deadline (never hanging a test, never panicking in a `Drop`), and finding or killing
//! processes by their command line.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long one `oras-fs` (or python, or script) run may take before the test gives up on it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// The `oras-fs` binary built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_oras-fs")
}

/// A `Command` for `oras-fs ARGS`, isolated from the user's environment: no Docker config
/// (`DOCKER_CONFIG` points to a directory that does not exist, so tests that want stored
/// credentials pass `--registry-config`), no log filter from `ORAS_FS_LOG`.
pub fn oras_fs_cmd<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("DOCKER_CONFIG", "/nonexistent/oras-fs-tests/docker-config")
        // Pulls read the registry, not the user's blob cache (tests/pull_cache.rs turns it on).
        .env("ORAS_FS_NO_CACHE", "1")
        .env_remove("ORAS_FS_LOG")
        .env_remove("RUST_LOG");
    cmd
}

/// Runs `oras-fs ARGS` in the current directory.
pub fn oras_fs<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(&mut oras_fs_cmd(args))
}

/// Runs `oras-fs ARGS` in `dir`: push names each layer by the path as given, so tests push
/// relative paths from inside their temporary directory.
pub fn oras_fs_in<I, S>(dir: &Path, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(oras_fs_cmd(args).current_dir(dir))
}

/// Runs `oras-fs ARGS` with `stdin` as its standard input (e.g. for `--password-stdin`).
pub fn oras_fs_stdin<I, S>(args: I, stdin: &[u8]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_with_stdin(&mut oras_fs_cmd(args), stdin)
}

/// Runs `cmd` to completion with an empty stdin, capturing its output; kills it and panics
/// after [`COMMAND_TIMEOUT`].
pub fn run(cmd: &mut Command) -> Output {
    run_with_stdin(cmd, b"")
}

/// Like [`run`], feeding `stdin` to the command.
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    run_with_timeout(cmd, stdin, COMMAND_TIMEOUT)
}

/// Runs `cmd` with `stdin`, capturing stdout and stderr; kills it and panics after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Output {
    let mut child: Child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let input = stdin.to_vec();
    let mut child_stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || {
        // The command may exit without reading: a broken pipe is fine.
        let _ = child_stdin.write_all(&input);
    });
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let out_reader = drain(out);
    let err_reader = drain(err);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out_reader.join().unwrap_or_default();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "{cmd:?} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Reads a child's pipe to its end on a thread of its own (so neither pipe can fill and stall
/// the child while the other is read).
pub fn drain<R: Read + Send + 'static>(mut pipe: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = pipe.read_to_end(&mut v);
        v
    })
}

/// Stdout and stderr of a command, for failure messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Panics (showing the output) unless the command succeeded. Returns its stdout.
#[track_caller]
pub fn assert_ok(out: &Output) -> String {
    assert!(out.status.success(), "command failed\n{}", describe(out));
    stdout_of(out)
}

/// Panics (showing the output) unless the command failed with an stderr that contains
/// `needle`, compared case-insensitively. Returns its stderr.
#[track_caller]
pub fn assert_fails(out: &Output, needle: &str) -> String {
    assert!(
        !out.status.success(),
        "command succeeded but should have failed with {needle:?}\n{}",
        describe(out)
    );
    let stderr = stderr_of(out);
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "stderr lacks {needle:?}\n{}",
        describe(out)
    );
    stderr
}

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

/// `skopeo --insecure-policy ARGS` (no policy.json needed); its output, success or not.
pub fn skopeo(args: &[&str]) -> Output {
    let installed = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("skopeo").is_file()));
    assert!(installed, "skopeo is not installed: run scripts/setup.sh");
    run(Command::new("skopeo").arg("--insecure-policy").args(args))
}

#[track_caller]
pub fn skopeo_ok(args: &[&str]) -> Vec<u8> {
    let out = skopeo(args);
    assert!(
        out.status.success(),
        "skopeo {args:?} failed\n{}",
        describe(&out)
    );
    out.stdout
}
