//! FUSE mounts: the [`Mount`] guard, which always unmounts, and the mount table.
//!
//! Nothing here may hang or panic while a test is already unwinding: every external command
//! run from a `Drop` has a deadline and is killed (by its own pid) when it overruns.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::*;

/// How long `oras-fs mount` may take to report the mount usable.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an explicit `oras-fs unmount` / `sync` run by a test may take.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `path` (canonical: a dead FUSE mount cannot be canonicalized) is a mountpoint now.
pub fn is_mounted(path: &Path) -> bool {
    let want = oras_fs::fs::fusermount::mounts_escape(path);
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
        })
        .unwrap_or(false)
}

/// The `/proc/mounts` line of `path`, if mounted.
pub fn mount_line(path: &Path) -> Option<String> {
    let want = oras_fs::fs::fusermount::mounts_escape(path);
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

    /// Mounts `reference` (with `extra` arguments) expecting `oras-fs mount` to fail with an
    /// error that contains `needle` (see [`assert_fails`]); panics with `unexpected` if it
    /// mounts. Returns the stderr.
    #[track_caller]
    pub fn refused(reference: &str, extra: &[&str], needle: &str, unexpected: &str) -> String {
        match Self::try_new(reference, None, extra) {
            Ok(_) => panic!("{unexpected}"),
            Err(out) => assert_fails(&out, needle),
        }
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
