//! End-to-end tests of a mount's life: unmount with files open for writing (wait, refuse,
//! `--lazy`), signals, `oras-fs status`, a dead mountpoint left by `kill -9`, a control
//! directory someone else made, `sync` of a read-only mount, and a non-root mount through
//! `fusermount3`. Run with `scripts/test.sh`.

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

/// `oras-fs unmount ARGS... MOUNTPOINT`, bounded.
fn unmount(mountpoint: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&OsStr> = vec![OsStr::new("unmount")];
    all.extend(args.iter().map(OsStr::new));
    all.push(mountpoint.as_os_str());
    run_with_timeout(&mut oras_fs_cmd(all), b"", CONTROL_TIMEOUT)
}

/// A file in the mount opened for writing (created), holding `first` so far.
fn open_writer(path: &Path, first: &[u8]) -> std::fs::File {
    let mut f = std::fs::File::create(path).expect("creating a file in the mount");
    f.write_all(first).unwrap();
    f
}

/// An artifact `base.txt` at a new repository's `v1` (its reference is returned), and a file
/// for a writer: its two halves of `half` bytes each, and the whole.
fn base_and_halves(name: &str, half: usize) -> (String, Vec<u8>, Vec<u8>, Vec<u8>) {
    let repo = unique_repo(name);
    let r = reference(&repo, "v1");
    push_contents(&r, &[("base.txt", b"base\n")]);
    let first = random_bytes(&format!("{repo}-1"), half);
    let second = random_bytes(&format!("{repo}-2"), half);
    let mut whole = first.clone();
    whole.extend_from_slice(&second);
    (r, first, second, whole)
}

/// The mount `m` of `r` pushed the whole file of [`base_and_halves`] as `big.bin`.
#[track_caller]
fn assert_pushed_whole(r: &str, whole: &[u8], m: &Mount) {
    assert_eq!(
        pulled_tree(r),
        expect_tree(&[("base.txt", b"base\n"), ("big.bin", whole)]),
        "{}",
        m.daemon_log()
    );
}

#[test]
fn unmount_waits_for_a_writer_refuses_naming_it_then_pushes_the_whole_file() {
    require_registry!();
    let (r, first, second, whole) = base_and_halves("life-busy", 3_000_000);

    let m = Mount::new(&r, &[]);
    let mut f = open_writer(&m.join("big.bin"), &first);

    // Still open when the bound runs out: refused, naming the file in the mount.
    let started = Instant::now();
    let out = unmount(m.path(), &["--timeout", "1"]);
    let err = assert_fails(&out, "busy");
    let path = m.join("big.bin").display().to_string();
    assert!(err.contains("Waiting up to 1 s"), "{err}");
    assert!(err.contains(&path), "names the file in the mount: {err}");
    assert!(!err.contains("staging"), "no staging path: {err}");
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited");
    assert!(m.is_mounted(), "a refused unmount leaves the mount");
    assert_eq!(
        pulled_tree(&r),
        expect_tree(&[("base.txt", b"base\n")]),
        "nothing pushed half-written"
    );

    // Closed while the unmount waits: it goes ahead and pushes the whole file.
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        f.write_all(&second).unwrap();
        drop(f);
    });
    let out = unmount(m.path(), &[]);
    closer.join().unwrap();
    assert_ok(&out);
    assert!(stderr_of(&out).contains(&path), "{}", describe(&out));
    assert!(!m.is_mounted());
    assert_pushed_whole(&r, &whole, &m);
}

#[test]
fn lazy_unmount_detaches_at_once_and_pushes_after_the_last_close() {
    require_registry!();
    let (r, first, second, whole) = base_and_halves("life-lazy", 2_000_000);

    let m = Mount::new(&r, &[]);
    let pid = m.daemon_pid();
    let mut f = open_writer(&m.join("big.bin"), &first);
    let started = Instant::now();
    let out = unmount(m.path(), &["--lazy"]);
    assert_ok(&out);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "--lazy does not wait"
    );
    assert!(
        stderr_of(&out).contains("Detached") && stderr_of(&out).contains("big.bin"),
        "{}",
        describe(&out)
    );
    assert!(!m.is_mounted(), "detached at once");
    assert!(pid_alive(pid), "the mount process serves the open file");
    // The writer carries on through its descriptor.
    f.write_all(&second).unwrap();
    drop(f);
    assert!(
        m.wait_for_daemon(Duration::from_secs(30)),
        "the mount process did not end after the last close\n{}",
        m.daemon_log()
    );
    assert_pushed_whole(&r, &whole, &m);
}

#[test]
fn sigterm_waits_for_a_writer_before_the_final_push() {
    require_registry!();
    let (r, first, second, whole) = base_and_halves("life-term", 2_000_000);

    let m = Mount::new(&r, &[]);
    let mut f = open_writer(&m.join("big.bin"), &first);
    kill_pid(m.daemon_pid(), libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(1000));
    // The writer was not cut off while the daemon waited for it.
    f.write_all(&second).unwrap();
    drop(f);
    assert!(
        m.wait_for_daemon(Duration::from_secs(30)),
        "the mount process did not end after SIGTERM"
    );
    assert!(!m.is_mounted());
    assert_pushed_whole(&r, &whole, &m);
}

#[test]
fn sync_of_a_read_only_mount_says_only_that_it_is_read_only() {
    require_registry!();
    let repo = unique_repo("life-ro");
    let r = reference(&repo, "v1");
    push_contents(&r, &[("a.txt", b"a\n")]);
    let m = Mount::new(&r, &["--read-only"]);
    let err = assert_fails(&m.sync(&[]), "read-only");
    assert!(err.contains("nothing to sync"), "{err}");
    assert!(!err.contains("staged"), "nothing is staged: {err}");
}

/// The status of the mount at `mountpoint` in `oras-fs status --format json` (of all mounts).
fn status_of(all: &serde_json::Value, mountpoint: &Path) -> Option<serde_json::Value> {
    all.as_array()
        .expect("a JSON array")
        .iter()
        .find(|s| s["mountpoint"] == mountpoint.display().to_string())
        .cloned()
}

#[test]
fn status_shows_each_mount_with_pending_changes_and_open_files() {
    require_registry!();
    let repo = unique_repo("life-status");
    let r = reference(&repo, "v1");
    push_contents(&r, &[("a.txt", b"a\n")]);
    let m = Mount::new(&r, &[]);
    let ro = Mount::new(&r, &["--read-only"]);
    write_file(&m.join("new.txt"), b"new\n");
    let _writer = open_writer(&m.join("open.bin"), b"partial");

    let all = json(&assert_ok(&oras_fs(["status", "--format", "json"])).into_bytes());
    let s = status_of(&all, m.path()).unwrap_or_else(|| panic!("{all:#}"));
    assert_eq!(s["reference"], r.as_str());
    assert_eq!(s["read_only"], false);
    assert!(is_sha256_digest(s["digest"].as_str().unwrap()), "{s:#}");
    let pending: Vec<&str> = s["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        pending.iter().any(|p| p.contains("new.txt"))
            && pending.iter().any(|p| p.contains("open.bin")),
        "{s:#}"
    );
    assert_eq!(s["open_for_writing"], serde_json::json!(["open.bin"]));
    assert_eq!(s["cache_dir"], m.cache_dir().display().to_string());
    assert!(s["cache_bytes"].is_u64() && s["cache_limit"].as_u64() > Some(0));
    assert!(s["last_error"].is_null() && s["notices"].is_array());
    assert_eq!(s["pid"], m.daemon_pid());
    let s = status_of(&all, ro.path()).unwrap_or_else(|| panic!("{all:#}"));
    assert_eq!(s["read_only"], true);

    // One mount, as text.
    let text = assert_ok(&oras_fs([OsStr::new("status"), m.path().as_os_str()]));
    for want in [r.as_str(), "read-write", "open.bin", "new.txt"] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }
    let one = json(
        &assert_ok(&oras_fs([
            OsStr::new("status"),
            ro.path().as_os_str(),
            OsStr::new("--format"),
            OsStr::new("json"),
        ]))
        .into_bytes(),
    );
    assert_eq!(one.as_array().map(|a| a.len()), Some(1), "{one:#}");

    let nowhere = temp_dir();
    assert_fails(
        &oras_fs([OsStr::new("status"), nowhere.path().as_os_str()]),
        "no oras-fs mount",
    );
}

#[test]
fn mounting_over_a_mountpoint_left_by_kill_9_clears_it() {
    require_registry!();
    let repo = unique_repo("life-dead");
    let r = reference(&repo, "v1");
    push_contents(&r, &[("a.txt", b"a\n")]);
    let mut m = Mount::new(&r, &["--read-only"]);
    kill_pid(m.daemon_pid(), libc::SIGKILL);
    assert!(m.wait_for_daemon(Duration::from_secs(10)));
    // ECONNABORTED while the kernel is still tearing the connection down.
    let dead = errno_of(std::fs::metadata(m.path()));
    assert!(
        dead == libc::ENOTCONN || dead == libc::ECONNABORTED,
        "a dead mount: errno {dead}"
    );

    let out = m.mount_again(&r, &["--read-only"]);
    let err = assert_ok(&out);
    assert!(
        stderr_of(&out).contains("left mounted by an oras-fs process that is gone"),
        "{err}{}",
        describe(&out)
    );
    assert_eq!(read_file(&m.join("a.txt")), b"a\n");

    // `oras-fs unmount` of a dead mount works too.
    kill_pid(m.daemon_pid(), libc::SIGKILL);
    assert!(m.wait_for_daemon(Duration::from_secs(10)));
    assert_ok(&unmount(m.path(), &[]));
    assert!(!m.is_mounted());
    assert_fails(&unmount(m.path(), &[]), "nothing is mounted at");
}

#[test]
fn a_control_directory_made_by_another_user_is_refused() {
    require_registry!();
    let repo = unique_repo("life-ctl");
    let r = reference(&repo, "v1");
    push_contents(&r, &[("a.txt", b"a\n")]);
    let run_dir = temp_dir();
    let ctl = run_dir.path().join("oras-fs-mounts");
    std::fs::create_dir(&ctl).unwrap();
    // As root, hand it to `nobody`; otherwise leave it open to others (also refused).
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&ctl, Some(65534), Some(65534)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mnt = temp_dir();
    let _guard = KillServer {
        mnt: std::fs::canonicalize(mnt.path()).unwrap(),
    };
    let cache = temp_dir();
    let with_runtime = |args: &[&OsStr]| {
        let mut cmd = oras_fs_cmd(args);
        cmd.env("XDG_RUNTIME_DIR", run_dir.path());
        run_with_timeout(&mut cmd, b"", MOUNT_TIMEOUT)
    };
    let out = with_runtime(&[
        OsStr::new("mount"),
        OsStr::new(&r),
        mnt.path().as_os_str(),
        OsStr::new("--cache-dir"),
        cache.path().as_os_str(),
    ]);
    let err = assert_fails(&out, "refusing to use");
    assert!(err.contains(&ctl.display().to_string()), "{err}");
    assert!(!is_mounted(&std::fs::canonicalize(mnt.path()).unwrap()));
    let err = assert_fails(
        &with_runtime(&[OsStr::new("sync"), mnt.path().as_os_str()]),
        "refusing to use",
    );
    assert!(err.contains(&ctl.display().to_string()), "{err}");
}

/// Detaches `mnt` if mounted and kills the processes whose argv names it, when dropped: for
/// mounts made without [`Mount`] (one in a mount namespace of its own, where killing its
/// process ends the mount and the namespace; one that should have been refused).
struct KillServer {
    mnt: PathBuf,
}

impl Drop for KillServer {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = fusermount_lazy(&self.mnt);
        }
        let mp = self.mnt.to_string_lossy().into_owned();
        for pid in find_processes(|argv| argv.contains(&mp)) {
            kill_pid(pid, libc::SIGKILL);
        }
    }
}

#[test]
fn a_non_root_user_mounts_through_fusermount3() {
    require_registry!();
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run commands as `nobody`");
        return;
    }
    let repo = unique_repo("life-nobody");
    let r = reference(&repo, "v1");
    push_contents(&r, &[("a.txt", b"hello from root\n")]);
    let root = temp_dir();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = std::fs::canonicalize(root.path()).unwrap();
    let dir = |name: &str| {
        let d = base.join(name);
        std::fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    };
    let (mnt, cache, home, run_dir) = (dir("mnt"), dir("cache"), dir("home"), dir("run"));
    let _guard = KillServer { mnt: mnt.clone() };
    let env = format!(
        "env HOME={home} XDG_CACHE_HOME={home} XDG_RUNTIME_DIR={run} \
         DOCKER_CONFIG=/nonexistent/oras-fs-tests/docker-config",
        home = home.display(),
        run = run_dir.display()
    );
    let oras = format!("runuser -u nobody -- {env} {}", bin());
    let mount_cmd = format!(
        "{oras} mount {r} {mnt} --cache-dir {cache}",
        mnt = mnt.display(),
        cache = cache.display()
    );

    // Where /dev/fuse is root's alone (as on this kind of machine), fusermount3 cannot open
    // it either: the error says so and what to do.
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/dev/fuse").unwrap().mode() & 0o006 == 0 {
        let out = run_with_timeout(
            Command::new("sh").arg("-c").arg(&mount_cmd),
            b"",
            MOUNT_TIMEOUT,
        );
        let err = assert_fails(&out, "/dev/fuse");
        assert!(err.contains("fusermount3") && err.contains("0666"), "{err}");
        assert!(!is_mounted(&mnt));
    }

    // In a mount namespace of its own, /dev/fuse open to everyone (the usual 0666) without
    // touching the machine's: the mount goes through fusermount3's fd passing (forced, as
    // fuser's own mount would work there), and nobody reads, writes and unmounts it.
    let dev = base.join("fuse");
    let made = Command::new("mknod")
        .args(["-m", "666"])
        .arg(&dev)
        .args(["c", "10", "229"])
        .status()
        .unwrap();
    assert!(made.success());
    let script = format!(
        "set -e
mount --bind {dev} /dev/fuse
ORAS_FS_MOUNT_VIA_FUSERMOUNT=1 {mount_cmd}
echo \"line: $(grep ' {mnt} ' /proc/mounts)\"
echo \"read: $(runuser -u nobody -- cat {mnt}/a.txt)\"
runuser -u nobody -- cp {mnt}/a.txt {mnt}/b.txt
{oras} status {mnt}
{oras} unmount {mnt}
grep -q ' {mnt} ' /proc/mounts || echo unmounted
",
        dev = dev.display(),
        mnt = mnt.display()
    );
    let out = run_with_timeout(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(&script),
        b"",
        MOUNT_TIMEOUT,
    );
    let stdout = assert_ok(&out);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("line: "))
        .unwrap_or_default();
    // fusermount3 records the subtype and the user it mounted for.
    assert!(
        line.contains(" fuse.oras-fs ") && line.contains("user_id=65534"),
        "{}",
        describe(&out)
    );
    assert!(
        stdout.contains("read: hello from root"),
        "{}",
        describe(&out)
    );
    assert!(
        stdout.contains(&r),
        "status shows the mount\n{}",
        describe(&out)
    );
    assert!(stdout.contains("unmounted"), "{}", describe(&out));
    assert_eq!(
        pulled_tree(&r),
        expect_tree(&[
            ("a.txt", b"hello from root\n"),
            ("b.txt", b"hello from root\n")
        ])
    );
}

#[test]
fn status_shows_the_last_error_of_a_failed_push() {
    require_registry!();
    let reg = ExtraRegistry::start("life-status-down", &[]);
    let repo = unique_repo("life-status-err");
    let r = reg.reference(&repo, "v1");
    push_contents(&r, &[("base.txt", b"base\n")]);
    let m = Mount::new(&r, &[]);
    write_file(&m.join("new.txt"), b"new\n");
    stop_registry(&reg);
    assert_fails(&m.sync(&[]), "stay staged");
    let one = json(
        &assert_ok(&oras_fs([
            OsStr::new("status"),
            m.path().as_os_str(),
            OsStr::new("--format"),
            OsStr::new("json"),
        ]))
        .into_bytes(),
    );
    let err = one[0]["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("stay staged"), "{one:#}");
    let text = assert_ok(&oras_fs([OsStr::new("status"), m.path().as_os_str()]));
    assert!(text.contains("last error:"), "{text}");
    // Unmounting fails too (the registry is down) but unmounts; the changes stay staged.
    drop(m);
}

#[test]
fn sigterm_never_pushes_a_file_still_open_for_writing() {
    require_registry!();
    let repo = unique_repo("life-term-open");
    let r = reference(&repo, "v1");
    push_contents(&r, &[("base.txt", b"base\n")]);
    let before = resolve(&[&r]);
    let m = Mount::new(&r, &[]);
    let _f = open_writer(&m.join("half.bin"), &random_bytes(&repo, 500_000));
    kill_pid(m.daemon_pid(), libc::SIGTERM);
    // It waits 10 s for the writer, then ends without pushing.
    assert!(
        m.wait_for_daemon(Duration::from_secs(40)),
        "the mount process did not end after SIGTERM"
    );
    assert_eq!(resolve(&[&r]), before, "nothing pushed\n{}", m.daemon_log());
    let log = m.daemon_log();
    assert!(
        log.contains("not pushing") && log.contains("half.bin") && log.contains("stay staged"),
        "{log}"
    );
}
