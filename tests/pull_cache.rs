//! `pull` reads and fills the blob cache mounts keep (issue #15): a second pull of the same
//! content downloads no blob, a corrupt cached blob is dropped and downloaded again, and
//! `--no-cache` leaves the cache alone. Run with `scripts/test.sh`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const MIB: usize = 1 << 20;

/// `oras-fs pull REF -o OUT --no-tty ARGS...` with the cache on (the harness turns it off).
fn pull_cached(reference: &str, out: &Path, args: &[&str]) -> Output {
    let mut cmd: Command = oras_fs_cmd(["pull", reference, "-o"]);
    cmd.arg(out)
        .arg("--no-tty")
        .args(args)
        .env_remove("ORAS_FS_NO_CACHE");
    run(&mut cmd)
}

fn cached_blob(cache: &Path, digest: &str) -> PathBuf {
    cache
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Pushes a file and a directory; returns (reference, the file's bytes, its digest).
fn push_file_and_dir(repo: &str) -> (String, Vec<u8>, String) {
    let src = temp_dir();
    let data = random_bytes(repo, 3 * MIB);
    write_file(&src.path().join("big.bin"), &data);
    write_file(&src.path().join("dir/a.txt"), b"a");
    write_file(&src.path().join("dir/sub/b.txt"), random_bytes("b", 1000));
    let reference = reference(repo, "v1");
    push_files(src.path(), &reference, &["big.bin", "dir"]);
    (reference, data.clone(), sha256_bytes(&data))
}

#[test]
fn a_second_pull_downloads_no_blob() {
    require_registry!();
    let repo = unique_repo("pull-cache");
    let (reference, data, digest) = push_file_and_dir(&repo);
    let cache = temp_dir();
    let cache_arg = path_str(cache.path());
    let log = registry_log();

    let first = temp_dir();
    let before = log_offset(&log);
    assert_ok(&pull_cached(
        &reference,
        first.path(),
        &["--cache-dir", cache_arg],
    ));
    assert_eq!(
        blob_gets_since(&log, before, &repo).len(),
        2,
        "file and directory"
    );
    assert_eq!(sha256_file(&cached_blob(cache.path(), &digest)), digest);

    let second = temp_dir();
    let before = log_offset(&log);
    assert_ok(&pull_cached(
        &reference,
        second.path(),
        &["--cache-dir", cache_arg],
    ));
    let gets = blob_gets_since(&log, before, &repo);
    assert!(gets.is_empty(), "blobs downloaded again: {gets:?}");
    assert_eq!(read_file(&second.path().join("big.bin")), data);
    assert_eq!(tree(first.path()), tree(second.path()));
    // No partial file is left behind.
    assert_eq!(
        list_dir(&cache.path().join("partial/sha256")),
        Vec::<String>::new()
    );
}

#[test]
fn a_corrupt_cached_blob_is_dropped_and_downloaded() {
    require_registry!();
    let repo = unique_repo("pull-cache-corrupt");
    let (reference, data, digest) = push_file_and_dir(&repo);
    let cache = temp_dir();
    let cache_arg = path_str(cache.path());
    assert_ok(&pull_cached(
        &reference,
        temp_dir().path(),
        &["--cache-dir", cache_arg],
    ));

    // Same size, one byte changed: only the digest check can tell.
    let blob = cached_blob(cache.path(), &digest);
    let mut bad = read_file(&blob);
    bad[MIB] ^= 0xff;
    write_file(&blob, &bad);

    let log = registry_log();
    let before = log_offset(&log);
    let out = temp_dir();
    let pulled = pull_cached(&reference, out.path(), &["--cache-dir", cache_arg]);
    assert_ok(&pulled);
    assert_eq!(read_file(&out.path().join("big.bin")), data);
    let gets = blob_gets_since(&log, before, &repo);
    assert_eq!(
        gets.len(),
        1,
        "only the corrupt blob is downloaded: {gets:?}"
    );
    assert!(gets[0].uri.contains(&digest), "{gets:?}");
    // The download replaced the bad copy.
    assert_eq!(sha256_file(&blob), digest);
}

#[test]
fn no_cache_neither_reads_nor_fills_it() {
    require_registry!();
    let repo = unique_repo("pull-no-cache");
    let (reference, _, digest) = push_file_and_dir(&repo);
    let cache = temp_dir();
    let cache_arg = path_str(cache.path());
    let log = registry_log();
    assert_ok(&pull_cached(
        &reference,
        temp_dir().path(),
        &["--cache-dir", cache_arg],
    ));

    let before = log_offset(&log);
    let out = temp_dir();
    assert_ok(&pull_cached(
        &reference,
        out.path(),
        &["--cache-dir", cache_arg, "--no-cache"],
    ));
    assert_eq!(blob_gets_since(&log, before, &repo).len(), 2);

    let other = temp_dir();
    assert_ok(&pull_cached(
        &reference,
        out.path(),
        &["--cache-dir", path_str(other.path()), "--no-cache"],
    ));
    assert!(!cached_blob(other.path(), &digest).exists());
}

#[test]
fn a_pull_with_a_smaller_bound_evicts_nothing_it_did_not_put_there() {
    require_registry!();
    let repo = unique_repo("pull-cache-noevict");
    let first = random_bytes(&format!("{repo}-1"), 300 * 1024);
    let second = random_bytes(&format!("{repo}-2"), 300 * 1024);
    let (one, two) = (reference(&repo, "one"), reference(&repo, "two"));
    push_contents(&one, &[("one.bin", &first)]);
    push_contents(&two, &[("two.bin", &second)]);
    let cache = temp_dir();
    let dir = ["--cache-dir", path_str(cache.path())];
    // What a mount with a larger bound (or a pull with one) put there.
    let out = temp_dir();
    assert_ok(&pull_cached(
        &one,
        out.path(),
        &[&dir[..], &["--cache-size", "10M"]].concat(),
    ));
    assert!(cached_blob(cache.path(), &sha256_bytes(&first)).exists());
    // A pull whose bound cannot hold both keeps the old blob and does not cache its own.
    let out = temp_dir();
    assert_ok(&pull_cached(
        &two,
        out.path(),
        &[&dir[..], &["--cache-size", "400K"]].concat(),
    ));
    assert_eq!(read_file(&out.path().join("two.bin")), second);
    assert!(cached_blob(cache.path(), &sha256_bytes(&first)).exists());
    assert!(!cached_blob(cache.path(), &sha256_bytes(&second)).exists());
    // With room, it is cached.
    let out = temp_dir();
    assert_ok(&pull_cached(
        &two,
        out.path(),
        &[&dir[..], &["--cache-size", "10M"]].concat(),
    ));
    assert!(cached_blob(cache.path(), &sha256_bytes(&second)).exists());
}

#[test]
fn a_blob_larger_than_the_bound_is_not_cached() {
    require_registry!();
    let repo = unique_repo("pull-cache-bound");
    let (reference, data, digest) = push_file_and_dir(&repo);
    let cache = temp_dir();
    let out = temp_dir();
    assert_ok(&pull_cached(
        &reference,
        out.path(),
        &["--cache-dir", path_str(cache.path()), "--cache-size", "1M"],
    ));
    assert_eq!(read_file(&out.path().join("big.bin")), data);
    assert!(!cached_blob(cache.path(), &digest).exists());
    assert_eq!(
        list_dir(&cache.path().join("partial/sha256")),
        Vec::<String>::new()
    );
}

#[test]
fn a_mount_reads_what_a_pull_cached_without_downloading_it() {
    require_registry!();
    let repo = unique_repo("pull-cache-mount");
    let (reference, data, digest) = push_file_and_dir(&repo);
    let cache = temp_dir();
    assert_ok(&pull_cached(
        &reference,
        temp_dir().path(),
        &["--cache-dir", path_str(cache.path())],
    ));
    let log = registry_log();
    let before = log_offset(&log);
    let mount = Mount::with_cache_dir(&reference, cache.path(), &["--read-only"]);
    assert_eq!(
        read_file(&mount.join("big.bin")),
        data,
        "{}",
        mount.daemon_log()
    );
    // (The mount reads the config, which a pull does not.)
    let gets: Vec<_> = blob_gets_since(&log, before, &repo)
        .into_iter()
        .filter(|g| g.uri.contains(&digest))
        .collect();
    assert!(gets.is_empty(), "the mount downloaded the file: {gets:?}");
}
