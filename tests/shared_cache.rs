//! Several mounts sharing one `--cache-dir` (issue #12, item 4): they fetch the same blob at
//! the same time, each gets the right bytes, none breaks the other, and the verified blob
//! stays in the cache. Run with `scripts/test.sh` (needs /dev/fuse and fusermount3).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const MIB: usize = 1024 * 1024;

/// Runs `cat` of every path at once; returns the sha256 of each output, or its error.
fn cat_all_at_once(paths: &[PathBuf]) -> Vec<Result<String, String>> {
    let handles: Vec<_> = paths
        .iter()
        .cloned()
        .map(|p| {
            std::thread::spawn(move || {
                let out = run(Command::new("cat").arg(&p));
                if out.status.success() {
                    Ok(sha256_bytes(&out.stdout))
                } else {
                    // Not the bytes: a 20 MiB dump would hide the message.
                    Err(format!(
                        "cat {}: {}: {}",
                        p.display(),
                        out.status,
                        stderr_of(&out)
                    ))
                }
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("cat thread"))
        .collect()
}

fn blob_file(cache: &Path, digest: &str) -> PathBuf {
    cache
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

#[test]
fn two_mounts_sharing_a_cache_read_one_file_at_once() {
    require_registry!();
    let repo = unique_repo("shared-cache");
    let data = random_bytes(&repo, 20 * MIB);
    push_contents(&reference(&repo, "v1"), &[("big.bin", &data)]);
    let digest = sha256_bytes(&data);
    let cache = temp_dir();
    let complete = blob_file(cache.path(), &digest);
    for round in 0..3 {
        // Fresh mounts with the blob not cached yet, so that both fetch it at once.
        let _ = std::fs::remove_file(&complete);
        let a = Mount::with_cache_dir(&reference(&repo, "v1"), cache.path(), &["--read-only"]);
        let b = Mount::with_cache_dir(&reference(&repo, "v1"), cache.path(), &["--read-only"]);
        let paths = [a.join("big.bin"), b.join("big.bin")];
        for (i, got) in cat_all_at_once(&paths).into_iter().enumerate() {
            let log = [&a, &b][i].daemon_log();
            assert_eq!(got, Ok(digest.clone()), "round {round}, mount {i}: {log}");
        }
        // Neither mount is broken afterwards (not even after the page cache is dropped).
        std::fs::write("/proc/sys/vm/drop_caches", "1").ok();
        for (i, got) in cat_all_at_once(&paths).into_iter().enumerate() {
            let log = [&a, &b][i].daemon_log();
            assert_eq!(
                got,
                Ok(digest.clone()),
                "round {round}, mount {i} again: {log}"
            );
        }
        assert!(
            complete.exists(),
            "round {round}: the verified blob is gone from the cache: {}\n{}",
            a.daemon_log(),
            b.daemon_log()
        );
        for m in [&a, &b] {
            let log = m.daemon_log();
            assert!(!log.contains("evicted"), "round {round}: {log}");
        }
    }
    // A third mount reads the blob from the cache alone.
    let offset = log_offset(&registry_log());
    let c = Mount::with_cache_dir(&reference(&repo, "v1"), cache.path(), &["--read-only"]);
    assert!(read_file(&c.join("big.bin")) == data, "{}", c.daemon_log());
    settle_log();
    assert_eq!(bytes_served(&registry_log(), offset, &digest), 0);
}
