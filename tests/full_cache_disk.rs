//! A cache directory on a small, full disk (issue #12, item 5, the cache's part): reads of a
//! file larger than `--cache-size`, or that cannot be stored, are served from the registry
//! without caching, and the mount keeps working. The cache lives on a tmpfs of 8 MiB that
//! the test mounts (needs root) and always unmounts. Run with `scripts/test.sh`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const MIB: usize = 1024 * 1024;

/// A tmpfs of `size` on a temporary directory, unmounted when dropped.
struct Tmpfs {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = temp_dir();
        let path = std::fs::canonicalize(dir.path()).unwrap();
        let out = run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path));
        assert_ok(&out);
        Tmpfs {
            dir: Some(dir),
            path,
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes free on it.
    fn available(&self) -> u64 {
        let out = run(Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path));
        stdout_of(&out)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("df: {}", describe(&out)))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |args: &[&str]| {
            run_bounded(
                Command::new("umount").args(args).arg(&self.path),
                Duration::from_secs(10),
            )
            .is_some_and(|o| o.status.success())
        };
        if !umount(&[]) && !umount(&["-l"]) {
            eprintln!("{} is still mounted: leaving it", self.path.display());
            if let Some(d) = self.dir.take() {
                let _ = d.keep();
            }
        }
    }
}

/// `cat PATH` (bounded); the sha256 of what it printed, or its error.
fn cat_digest(path: &Path) -> Result<String, String> {
    let out = run_bounded(Command::new("cat").arg(path), Duration::from_secs(120))
        .expect("cat hung for 2 minutes");
    if out.status.success() {
        Ok(sha256_bytes(&out.stdout))
    } else {
        Err(format!("{}: {}", out.status, stderr_of(&out)))
    }
}

#[test]
fn a_file_larger_than_the_cache_bound_reads_from_the_registry_and_the_mount_keeps_working() {
    require_registry!();
    let repo = unique_repo("full-cache-bound");
    let big = random_bytes(&format!("{repo}-big"), 64 * MIB);
    push_contents(
        &reference(&repo, "v1"),
        &[("big.bin", &big), ("a.txt", b"a\n")],
    );
    let disk = Tmpfs::new("8m");
    let m = Mount::with_cache_dir(
        &reference(&repo, "v1"),
        disk.path(),
        &["--cache-size", "4M"],
    );
    assert_eq!(
        cat_digest(&m.join("big.bin")),
        Ok(sha256_bytes(&big)),
        "{}",
        m.daemon_log()
    );
    // The cache took (almost) nothing of the disk.
    assert!(disk.available() > 6 * MIB as u64, "{}", m.daemon_log());
    let log = m.daemon_log();
    assert!(log.contains("larger than the cache bound"), "{log}");
    // ls, create, sync all work.
    let mut names = list_dir(m.path());
    names.retain(|n| !n.starts_with('.'));
    assert_eq!(names, ["a.txt", "big.bin"]);
    std::fs::write(m.join("new.txt"), b"new\n").expect("create on the mount");
    m.sync_pushed(&[]);
    // And the file reads again (from memory or the registry).
    assert_eq!(cat_digest(&m.join("big.bin")), Ok(sha256_bytes(&big)));
}

#[test]
fn a_file_that_fills_the_cache_disk_is_served_uncached_and_the_disk_is_given_back() {
    require_registry!();
    let repo = unique_repo("full-cache-enospc");
    let big = random_bytes(&format!("{repo}-big"), 24 * MIB);
    let small = random_bytes(&format!("{repo}-small"), MIB);
    push_contents(
        &reference(&repo, "v1"),
        &[("big.bin", &big), ("small.bin", &small)],
    );
    let disk = Tmpfs::new("8m");
    // The bound is above the disk's size: the disk fills before the bound is reached.
    let m = Mount::with_cache_dir(
        &reference(&repo, "v1"),
        disk.path(),
        &["--cache-size", "100M", "--read-only"],
    );
    assert_eq!(
        cat_digest(&m.join("big.bin")),
        Ok(sha256_bytes(&big)),
        "{}",
        m.daemon_log()
    );
    // The partial file was emptied when the disk filled: later blobs are cached again.
    assert!(disk.available() > 6 * MIB as u64, "{}", m.daemon_log());
    assert_eq!(cat_digest(&m.join("small.bin")), Ok(sha256_bytes(&small)));
    let hex = sha256_bytes(&small)["sha256:".len()..].to_string();
    assert!(
        list_dir(&disk.path().join("blobs/sha256")).contains(&hex),
        "{}",
        m.daemon_log()
    );
    let log = m.daemon_log();
    assert!(log.contains("No space left on device"), "{log}");
    let mut names = list_dir(m.path());
    names.retain(|n| !n.starts_with('.'));
    assert_eq!(names, ["big.bin", "small.bin"]);
}
