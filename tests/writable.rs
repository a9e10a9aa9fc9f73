//! End-to-end tests of writable mounts: changes made in a mount of a tag are pushed as a new
//! manifest by `oras-fs sync` or at unmount, survive failures (registry down, `kill -9`), and
//! never overwrite a tag someone else moved. Run with `scripts/test.sh`.
//!
//! Every test pushes its own content to its own repository and mounts it with a cache
//! directory of its own ([`Mount`] unmounts whatever happens).

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::process::Command;
use std::time::Duration;

use common::*;

const EPERM: i32 = libc::EPERM;

/// The `Pushed sha256:...` digest printed by `unmount`/`sync`, if any.
fn pushed_digest(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Pushed "))
        .map(|d| d.trim().to_string())
}

#[test]
fn a_copied_file_is_pushed_at_unmount_and_the_python_sdk_pulls_it() {
    require_registry!();
    let repo = unique_repo("rw-cp");
    let r = reference(&repo, "v1");
    let base = format!("base of {repo}\n").into_bytes();
    push_contents(&r, &[("base.txt", &base)]);
    let src = temp_dir();
    let new = random_bytes(&repo, 700_000);
    write_file(&src.path().join("new.bin"), &new);

    let mut m = Mount::new(&r, &[]);
    assert_ok(&run(Command::new("cp")
        .arg(src.path().join("new.bin"))
        .arg(m.join("new.bin"))));
    assert_eq!(read_file(&m.join("new.bin")), new);
    let out = m.unmount();
    let stdout = assert_ok(&out);
    let digest = pushed_digest(&stdout)
        .unwrap_or_else(|| panic!("unmount pushed nothing\n{}", describe(&out)));
    assert!(!m.is_mounted());
    assert_eq!(
        get_manifest(&repo, "v1").0,
        digest,
        "the tag points to the pushed manifest"
    );

    let out_dir = temp_dir();
    let pulled = out_dir.path().join("pulled");
    let out = sdk_pull(out_dir.path(), &r, &pulled);
    assert_ok(&out);
    assert_eq!(
        tree(&pulled),
        expect_tree(&[("base.txt", &base), ("new.bin", &new)]),
        "what the Python SDK pulled"
    );
}

#[test]
fn an_edit_in_the_middle_of_a_file_is_pushed_by_sync() {
    require_registry!();
    let repo = unique_repo("rw-edit");
    let r = reference(&repo, "v1");
    // Over 16 MiB: the sync uploads it while hashing it (a PATCH, then the digest).
    let original = random_bytes(&repo, 17 * 1024 * 1024);
    let old_digest = push_contents(&r, &[("data.bin", &original), ("other.txt", b"other\n")]);

    let m = Mount::new(&r, &[]);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("data.bin"))
            .expect("opening data.bin for writing");
        f.seek(SeekFrom::Start(500_000)).unwrap();
        f.write_all(b"EDITED IN THE MIDDLE").unwrap();
    }
    let mut expected = original.clone();
    expected[500_000..500_020].copy_from_slice(b"EDITED IN THE MIDDLE");
    assert_eq!(
        read_file(&m.join("data.bin")),
        expected,
        "read back in the mount"
    );

    // The kernel has the `.oras/` files' sizes now; a sync must not leave them stale.
    let before_sync = read_file(&m.join(".oras/manifest.json"));
    assert_eq!(sha256_bytes(&before_sync), old_digest);
    let log = registry_log();
    let before = log_offset(&log);
    let digest = m.sync_pushed(&[]);
    assert_ne!(digest, old_digest);
    assert_eq!(get_manifest(&repo, "v1").0, digest);
    settle_log();
    let patches: Vec<_> = upload_requests_since(&log, before, &repo)
        .into_iter()
        .filter(|e| e.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 1, "{patches:#?}");
    let shown = String::from_utf8(read_file(&m.join(".oras/digest"))).unwrap();
    assert_eq!(shown.trim(), digest, ".oras/digest after sync");
    assert_eq!(
        sha256_bytes(&read_file(&m.join(".oras/manifest.json"))),
        digest,
        ".oras/manifest.json after sync"
    );
    // A second sync has nothing to do.
    let again = assert_ok(&m.sync(&[]));
    assert!(again.contains("Nothing to push"), "{again}");

    assert_eq!(
        pulled_tree(&r),
        expect_tree(&[("data.bin", &expected), ("other.txt", b"other\n")])
    );
}

#[test]
fn a_rename_uploads_no_blob() {
    require_registry!();
    let repo = unique_repo("rw-rename");
    let r = reference(&repo, "v1");
    let moved = random_bytes(&repo, 300_000);
    push_contents(&r, &[("old.bin", &moved), ("keep.txt", b"keep\n")]);

    let m = Mount::new(&r, &[]);
    std::fs::create_dir(m.join("sub")).unwrap();
    std::fs::rename(m.join("old.bin"), m.join("sub/new.bin")).expect("rename");
    assert_eq!(list_dir(m.path()), [".oras", "keep.txt", "sub"]);

    let log = registry_log();
    let before = log_offset(&log);
    m.sync_pushed(&[]);
    settle_log();
    let uploads = upload_requests_since(&log, before, &repo);
    assert!(uploads.is_empty(), "a rename uploaded blobs: {uploads:#?}");
    assert_eq!(uploads_since(&log, before, &repo), 0);
    let manifest_puts = log_entries_since(&log, before)
        .into_iter()
        .filter(|e| e.method == "PUT" && e.uri.starts_with(&format!("/v2/{repo}/manifests/")))
        .count();
    assert_eq!(manifest_puts, 1, "one manifest PUT");

    assert_eq!(
        pulled_tree(&r),
        expect_tree(&[("keep.txt", b"keep\n"), ("sub/new.bin", &moved)])
    );
}

#[test]
fn rm_and_mkdir_are_pushed() {
    require_registry!();
    let repo = unique_repo("rw-rm-mkdir");
    let r = reference(&repo, "v1");
    push_contents(
        &r,
        &[
            ("gone.txt", b"gone\n"),
            ("stay.txt", b"stay\n"),
            ("d/also-gone.txt", b"x\n"),
            ("over.txt", b"to be overwritten\n"),
        ],
    );

    let m = Mount::new(&r, &[]);
    std::fs::remove_file(m.join("gone.txt")).expect("rm");
    std::fs::remove_file(m.join("d/also-gone.txt")).expect("rm");
    std::fs::remove_dir(m.join("d")).expect("rmdir");
    std::fs::create_dir(m.join("newdir")).expect("mkdir");
    std::fs::create_dir(m.join("newdir/deeper")).expect("mkdir");
    write_file(&m.join("newdir/deeper/inner.txt"), b"inner\n");
    // O_TRUNC of a remote file: a new, empty staged copy.
    write_file(&m.join("over.txt"), b"new\n");
    assert_eq!(
        list_dir(m.path()),
        [".oras", "newdir", "over.txt", "stay.txt"]
    );
    // The kernel caches the `.oras/` files' attributes now; the sync changes their size.
    let old_manifest = read_file(&m.join(".oras/manifest.json"));
    let digest = m.sync_pushed(&[]);
    let new_manifest = read_file(&m.join(".oras/manifest.json"));
    assert_ne!(new_manifest.len(), old_manifest.len());
    assert_eq!(
        sha256_bytes(&new_manifest),
        digest,
        ".oras/manifest.json right after the sync"
    );

    assert_eq!(
        pulled_tree(&r),
        expect_tree(&[
            ("newdir/deeper/inner.txt", b"inner\n"),
            ("over.txt", b"new\n"),
            ("stay.txt", b"stay\n"),
        ])
    );
}

#[test]
fn changes_stay_staged_when_the_registry_is_down_at_unmount() {
    require_registry!();
    let reg = ExtraRegistry::start("fuse-down", &[]);
    let repo = unique_repo("rw-down");
    let r = reg.reference(&repo, "v1");
    push_contents(&r, &[("base.txt", b"base\n")]);
    let cache = temp_dir();
    let written = random_bytes(&repo, 123_456);

    let mut m = Mount::with_cache_dir(&r, cache.path(), &[]);
    write_file(&m.join("new.bin"), &written);
    stop_registry(&reg);
    let out = m.unmount();
    let stderr = assert_fails(&out, "stay staged");
    assert!(
        !m.is_mounted(),
        "still mounted after a failed push at unmount"
    );
    drop(m);
    eprintln!("unmount with the registry down said: {stderr}");

    let _restarted = RestartedRegistry::start(&reg);
    let m = Mount::with_cache_dir(&r, cache.path(), &[]);
    let said = m.mount_stderr();
    assert!(
        said.contains("Found changes not yet pushed"),
        "the second mount does not mention the pending changes:\n{said}"
    );
    assert_eq!(read_file(&m.join("new.bin")), written);
    m.sync_pushed(&[]);

    let out = temp_dir();
    pull_to(&r, out.path(), &[]);
    assert_eq!(
        tree(out.path()),
        expect_tree(&[("base.txt", b"base\n"), ("new.bin", &written)])
    );
}

#[test]
fn kill_9_of_the_mount_process_loses_nothing() {
    require_registry!();
    let repo = unique_repo("rw-kill");
    let r = reference(&repo, "v1");
    let base = random_bytes(&format!("{repo}-base"), 200_000);
    push_contents(
        &r,
        &[
            ("base.bin", &base),
            ("removed.txt", b"removed\n"),
            ("from.txt", b"renamed\n"),
        ],
    );
    let cache = temp_dir();
    let a = random_bytes(&format!("{repo}-a"), 2_000_000);

    let m = Mount::with_cache_dir(&r, cache.path(), &[]);
    write_file(&m.join("a.bin"), &a);
    write_file(&m.join("dir/b.txt"), b"b\n");
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m.join("base.bin"))
            .unwrap();
        f.write_all(b"appended").unwrap();
    }
    std::fs::remove_file(m.join("removed.txt")).unwrap();
    std::fs::rename(m.join("from.txt"), m.join("dir/to.txt")).unwrap();
    let mut base_after = base.clone();
    base_after.extend_from_slice(b"appended");

    let pid = m.daemon_pid();
    kill_pid(pid, libc::SIGKILL);
    assert!(
        m.wait_for_daemon(Duration::from_secs(5)),
        "the mount process survived kill -9"
    );
    let out = fusermount_lazy(m.path()).expect("fusermount3 -uz hung");
    assert_ok(&out);
    assert!(!m.is_mounted());
    drop(m);

    let m = Mount::with_cache_dir(&r, cache.path(), &[]);
    assert!(
        m.mount_stderr().contains("Found changes not yet pushed"),
        "{}",
        m.mount_stderr()
    );
    let expected = expect_tree(&[
        ("a.bin", &a),
        ("base.bin", &base_after),
        ("dir/b.txt", b"b\n"),
        ("dir/to.txt", b"renamed\n"),
    ]);
    assert_eq!(list_dir(m.path()), [".oras", "a.bin", "base.bin", "dir"]);
    let mut seen = tree(m.path());
    seen.retain(|k, _| !k.starts_with(".oras/"));
    assert_eq!(seen, expected, "the remount shows the changes");
    m.sync_pushed(&[]);
    assert_eq!(pulled_tree(&r), expected);
}

#[test]
fn sync_refuses_a_moved_tag_and_push_to_saves_the_changes() {
    require_registry!();
    let repo = unique_repo("rw-moved");
    let r = reference(&repo, "v1");
    push_contents(&r, &[("base.txt", b"base\n")]);
    let m = Mount::new(&r, &[]);
    write_file(&m.join("mine.txt"), b"mine\n");

    let theirs = push_contents(&r, &[("theirs.txt", b"theirs\n")]);
    let out = m.sync(&[]);
    assert_fails(&out, "moved");
    assert_eq!(
        get_manifest(&repo, "v1").0,
        theirs,
        "the moved tag was not overwritten"
    );
    assert_eq!(
        read_file(&m.join("mine.txt")),
        b"mine\n",
        "the change is still there"
    );

    let r2 = reference(&repo, "mine");
    let digest = m.sync_pushed(&["--push-to", &r2]);
    assert_eq!(get_manifest(&repo, "mine").0, digest);
    assert_eq!(
        pulled_tree(&r2),
        expect_tree(&[("base.txt", b"base\n"), ("mine.txt", b"mine\n")])
    );
    assert_eq!(pulled_tree(&r), expect_tree(&[("theirs.txt", b"theirs\n")]));
}

#[test]
fn symlinks_and_hard_links_are_refused_with_eperm() {
    require_registry!();
    let repo = unique_repo("rw-links");
    let r = reference(&repo, "v1");
    push_contents(&r, &[("f.txt", b"f\n")]);
    let m = Mount::new(&r, &[]);
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("f.txt", m.join("link"))),
        EPERM,
        "symlink"
    );
    assert_eq!(
        errno_of(std::fs::hard_link(m.join("f.txt"), m.join("hard"))),
        EPERM,
        "hard link"
    );
    assert_eq!(list_dir(m.path()), [".oras", "f.txt"]);
    // `.oras/` is read-only in a writable mount too.
    assert_eq!(
        errno_of(std::fs::write(m.join(".oras/digest"), b"x")),
        libc::EROFS,
        "writing .oras/digest"
    );
    assert_eq!(
        errno_of(std::fs::write(m.join(".oras/new"), b"x")),
        libc::EROFS,
        "creating in .oras/"
    );
}

#[test]
fn fusermount_u_and_sigterm_push_pending_changes() {
    require_registry!();
    let repo = unique_repo("rw-fusermount");
    let r = reference(&repo, "v1");
    push_contents(&r, &[("base.txt", b"base\n")]);

    let m = Mount::new(&r, &[]);
    write_file(&m.join("by-fusermount.txt"), b"one\n");
    assert_ok(&run(Command::new("fusermount3").arg("-u").arg(m.path())));
    assert!(
        m.wait_for_daemon(Duration::from_secs(20)),
        "the mount process did not end after fusermount3 -u"
    );
    assert_eq!(
        pulled_tree(&r),
        expect_tree(&[("base.txt", b"base\n"), ("by-fusermount.txt", b"one\n")]),
        "pushed after fusermount3 -u\n{}",
        m.daemon_log()
    );
    drop(m);

    let m = Mount::new(&r, &[]);
    write_file(&m.join("by-sigterm.txt"), b"two\n");
    kill_pid(m.daemon_pid(), libc::SIGTERM);
    assert!(
        m.wait_for_daemon(Duration::from_secs(20)),
        "the mount process did not end after SIGTERM"
    );
    assert!(!m.is_mounted(), "still mounted after SIGTERM");
    assert_eq!(
        pulled_tree(&r),
        expect_tree(&[
            ("base.txt", b"base\n"),
            ("by-fusermount.txt", b"one\n"),
            ("by-sigterm.txt", b"two\n"),
        ]),
        "pushed after SIGTERM\n{}",
        m.daemon_log()
    );
}

#[test]
fn umount_then_mount_again_at_once_waits_for_the_push_and_shows_it() {
    require_registry!();
    let repo = unique_repo("rw-remount");
    let r = reference(&repo, "v1");
    push_contents(&r, &[("base.txt", b"base\n")]);
    let data = random_bytes(&repo, 8 << 20);

    let mut m = Mount::new(&r, &[]);
    write_file(&m.join("new.bin"), &data);
    assert_ok(&run(Command::new("umount").arg(m.path())));
    // The first daemon is still pushing new.bin: the second mount waits for it to end, then
    // resolves the tag it moved.
    let out = m.mount_again(&r, &["--read-only"]);
    assert_ok(&out);
    assert_eq!(read_file(&m.join("new.bin")), data, "{}", m.daemon_log());
    assert_eq!(read_file(&m.join("base.txt")), b"base\n");
}

#[test]
fn xattrs_are_refused_with_enotsup() {
    require_registry!();
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let repo = unique_repo("rw-xattr");
    let r = reference(&repo, "v1");
    push_contents(&r, &[("f.txt", b"f\n")]);
    let m = Mount::new(&r, &[]);
    let path = CString::new(m.join("f.txt").as_os_str().as_bytes()).unwrap();
    let name = CString::new("user.test").unwrap();
    let errno = |rc: isize| {
        assert_eq!(rc, -1);
        std::io::Error::last_os_error().raw_os_error().unwrap()
    };
    // Twice: the kernel answers the second time itself, the same way.
    for _ in 0..2 {
        // SAFETY: valid C strings; a null buffer of size 0 asks for the size only.
        let got = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(errno(got), libc::ENOTSUP, "getxattr");
        // SAFETY: as above, with a 1-byte value.
        let set =
            unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"x".as_ptr().cast(), 1, 0) };
        assert_eq!(errno(set as isize), libc::ENOTSUP, "setxattr");
        // SAFETY: valid C strings.
        let rm = unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
        assert_eq!(errno(rm as isize), libc::ENOTSUP, "removexattr");
    }
    std::fs::write(m.join("f.txt"), b"g\n").unwrap();
    assert_eq!(read_file(&m.join("f.txt")), b"g\n");
}

#[test]
fn overwriting_a_file_does_not_download_it_first() {
    require_registry!();
    let repo = unique_repo("rw-overwrite");
    let r = reference(&repo, "v1");
    let old = random_bytes(&repo, 6 << 20);
    push_contents(&r, &[("big.bin", &old)]);
    let layer = sha256_bytes(&old);

    let m = Mount::new(&r, &[]);
    let log = registry_log();
    let before = log_offset(&log);
    // O_TRUNC, as `>`, `cp` over a file and most editors' saves do.
    std::fs::write(m.join("big.bin"), b"new\n").unwrap();
    assert_eq!(read_file(&m.join("big.bin")), b"new\n");
    settle_log();
    assert_eq!(
        bytes_served(&log, before, &layer),
        0,
        "the old content was fetched only to be truncated\n{}",
        m.daemon_log()
    );
    m.sync_pushed(&[]);
    assert_eq!(pulled_tree(&r), expect_tree(&[("big.bin", b"new\n")]));
}

#[test]
fn a_second_writable_mount_of_a_reference_is_refused() {
    require_registry!();
    let repo = unique_repo("rw-lock");
    let r = reference(&repo, "v1");
    push_contents(&r, &[("f.txt", b"f\n")]);
    let cache = temp_dir();
    let first = Mount::with_cache_dir(&r, cache.path(), &[]);
    match Mount::try_new(&r, Some(cache.path()), &[]) {
        Ok(m) => panic!(
            "a second writable mount of {r} with the same cache succeeded\n{}",
            describe(&m.output)
        ),
        Err(out) => {
            assert_fails(&out, "writable elsewhere");
        }
    }
    // Read-only mounts share the cache freely.
    let ro = Mount::with_cache_dir(&r, cache.path(), &["--read-only"]);
    assert_eq!(read_file(&ro.join("f.txt")), b"f\n");
    assert_eq!(read_file(&first.join("f.txt")), b"f\n");
}

/// A directory layer's tar has its title as top directory, so renaming it in place would push
/// an artifact that unpacks under the old name: the mount refuses with EXDEV (SEMANTICS.md).
#[test]
fn renaming_a_directory_layer_is_refused_with_exdev() {
    require_registry!();
    let repo = unique_repo("rw-dir-rename");
    let r = reference(&repo, "v1");
    let src = temp_dir();
    write_file(&src.path().join("tree/x.txt"), b"x\n");
    write_file(&src.path().join("tree/sub/y.txt"), b"y\n");
    push_files(src.path(), &r, &["tree"]);

    let m = Mount::new(&r, &[]);
    // Its tar names the top directory, so a new name would need a new layer: EXDEV (18)
    // tells `mv` to copy instead. The layer stays as it was.
    let err =
        std::fs::rename(m.join("tree"), m.join("renamed")).expect_err("renaming a directory layer");
    assert_eq!(err.raw_os_error(), Some(18), "{err}");
    let expected = expect_tree(&[("tree/sub/y.txt", b"y\n"), ("tree/x.txt", b"x\n")]);
    let mut seen = tree(m.path());
    seen.retain(|k, _| !k.starts_with(".oras/"));
    assert_eq!(seen, expected, "in the mount");
    drop(m);
    assert_eq!(pulled_tree(&r), expected, "pulled");
}
