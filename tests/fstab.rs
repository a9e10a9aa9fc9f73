//! Mounting as other filesystems mount: an fstab line and `mount -t fuse.oras-fs`, through
//! util-linux `mount` and fuse3's `mount.fuse` (which runs `oras-fs SOURCE DIR -o OPTIONS`),
//! and `umount`. Run with `scripts/test.sh` (needs root, /dev/fuse and a registry).

mod common;

use std::process::Command;

use common::*;

/// What the script below prints when every step went as it should.
const EXPECTED: &str = "hi from fstab\nEROFS\nhi from fstab\nhi from fstab\nrefused\nrefused\n";

/// Runs in a private mount namespace: mount(8) gives helpers a standard PATH, so the binary
/// under test is bound over /usr/local/sbin (first in that PATH) there, and only there; the
/// FUSE mounts stay inside too, and the trap takes them down whatever happens.
const SCRIPT: &str = r#"
set -eu
trap 'umount -l "$MNT" 2>/dev/null || true' EXIT
mount --bind "$BINDIR" /usr/local/sbin
mount -T "$FSTAB" "$MNT"
cat "$MNT/hello.txt"
if echo x 2>/dev/null > "$MNT/new.txt"; then echo WROTE; else echo EROFS; fi
umount "$MNT"
mount -T "$FSTAB" -a
cat "$MNT/hello.txt"
umount "$MNT"
mount -t fuse.oras-fs "$REF" "$MNT" -o "ro,cache_dir=$CACHE"
cat "$MNT/hello.txt"
umount "$MNT"
for opts in ro,bogus ro,password=hunter2; do
    if mount -t fuse.oras-fs "$REF" "$MNT" -o "$opts" 2>>"$ERRS"; then echo "mounted $opts"; else echo refused; fi
done
"#;

#[test]
fn fstab_lines_and_mount_t_mount_and_umount_unmounts() {
    require_registry!();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mount(8) with an fstab file needs root (CI runs as root)");
        return;
    }
    let reference = reference(&unique_repo("fstab"), "v1");
    push_contents(&reference, &[("hello.txt", b"hi from fstab\n")]);
    let tmp = temp_dir();
    let dir = tmp.path().canonicalize().unwrap();
    let (mnt, cache, bindir) = (dir.join("mnt"), dir.join("cache"), dir.join("bin"));
    for d in [&mnt, &bindir] {
        std::fs::create_dir(d).unwrap();
    }
    std::os::unix::fs::symlink(bin(), bindir.join("oras-fs")).unwrap();
    // An fstab line as a user writes it, mount(8)'s own options included.
    let fstab = dir.join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# a test fstab\n{reference} {} fuse.oras-fs ro,_netdev,nofail,noatime,\
             x-systemd.requires=network-online.target,cache_dir={} 0 0\n",
            mnt.display(),
            cache.display()
        ),
    )
    .unwrap();
    let errs = dir.join("errors");
    let out = run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c", SCRIPT])
        .env("MNT", &mnt)
        .env("CACHE", &cache)
        .env("BINDIR", &bindir)
        .env("FSTAB", &fstab)
        .env("REF", &reference)
        .env("ERRS", &errs));
    let errors = std::fs::read_to_string(&errs).unwrap_or_default();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        EXPECTED,
        "{}\n{errors}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    assert!(cache.is_dir(), "cache_dir= was not used");
    assert!(errors.contains("unknown mount option 'bogus'"), "{errors}");
    assert!(
        errors.contains("credentials never go on a mount line"),
        "{errors}"
    );
    assert!(
        !errors.contains("hunter2"),
        "a password was echoed: {errors}"
    );
    assert!(!is_mounted(&mnt));
}

/// Ends a foreground mount whatever happened in the test: the process, then the mountpoint.
struct Foreground(std::process::Child, std::path::PathBuf);

impl Drop for Foreground {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if is_mounted(&self.1) {
            let _ = fusermount_lazy(&self.1);
        }
    }
}

/// A systemd `Type=notify` service (README) runs `mount --foreground`: systemd hears
/// `READY=1` on its NOTIFY_SOCKET once the files can be read, and its SIGTERM at stop
/// unmounts and ends the process cleanly.
#[test]
fn a_foreground_mount_tells_systemd_when_it_is_ready_and_ends_on_sigterm() {
    require_registry!();
    let reference = reference(&unique_repo("notify"), "v1");
    push_contents(&reference, &[("hello.txt", b"hi from a service\n")]);
    let tmp = temp_dir();
    let (mnt, socket) = (tmp.path().join("mnt"), tmp.path().join("notify.sock"));
    std::fs::create_dir(&mnt).unwrap();
    let listener = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    listener
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let child = oras_fs_cmd([
        "mount",
        "--foreground",
        "--cache-dir",
        path_str(&tmp.path().join("cache")),
        &reference,
        path_str(&mnt),
    ])
    .env("NOTIFY_SOCKET", &socket)
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let mut mounted = Foreground(child, mnt.clone());
    let mut message = [0u8; 512];
    let n = listener
        .recv(&mut message)
        .expect("READY=1 within a minute");
    let message = String::from_utf8_lossy(&message[..n]).into_owned();
    assert!(message.lines().any(|l| l == "READY=1"), "{message:?}");
    // Ready means mounted: no wait, no retry.
    assert_eq!(read_file(&mnt.join("hello.txt")), b"hi from a service\n");
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(mounted.0.id() as libc::pid_t, libc::SIGTERM) };
    let status = mounted.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&mnt), "still mounted after SIGTERM");
}
