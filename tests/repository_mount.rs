//! End-to-end tests of mounts of a whole repository (`oras-fs mount REGISTRY/REPO DIR`) or
//! registry (`oras-fs mount REGISTRY DIR`), and of `--follow`, over FUSE against the real
//! test registry. Run with `scripts/test.sh` (needs /dev/fuse and fusermount3).
//!
//! Every test pushes to repositories of its own and mounts with a short `--refresh`.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use common::faults::{Fault, FaultProxy, Rule};
use common::*;

/// Polls `check` until it holds; panics with `what` after `limit`.
#[track_caller]
fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn a_repository_mount_shows_each_tag_and_new_tags_after_a_refresh() {
    require_registry!();
    let repo = unique_repo("repo-mount");
    push_contents(&reference(&repo, "v1"), &[("a.txt", b"one\n")]);
    let v2 = push_contents(&reference(&repo, "v2"), &[("d/b.txt", b"two\n")]);
    let m = Mount::new(&format!("{}/{repo}", registry()), &["--refresh", "1s"]);
    let said = String::from_utf8_lossy(&m.output.stderr).to_string();
    assert!(said.contains("read-only"), "{said}");
    assert_eq!(list_dir(m.path()), ["v1", "v2"]);
    assert_eq!(read(&m.join("v1/a.txt")), b"one\n");
    assert_eq!(read(&m.join("v2/d/b.txt")), b"two\n");
    // A digest is found, never listed.
    assert_eq!(read(&m.join(format!("@{v2}/d/b.txt"))), b"two\n");
    assert_eq!(list_dir(m.path()), ["v1", "v2"]);
    // Read-only, whatever was asked.
    let err = std::fs::write(m.join("v1/new.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    push_contents(&reference(&repo, "v3"), &[("c.txt", b"three\n")]);
    eventually("v3 appears", Duration::from_secs(20), || {
        list_dir(m.path()).contains(&"v3".to_string())
    });
    assert_eq!(read(&m.join("v3/c.txt")), b"three\n");
    let status = assert_ok(&oras_fs(["status".as_ref(), m.path().as_os_str()]));
    assert!(status.contains("mode:       read-only"), "{status}");
}

#[test]
fn a_followed_tag_shows_its_new_files_while_an_open_file_keeps_the_old_ones() {
    require_registry!();
    let repo = unique_repo("follow");
    let r = reference(&repo, "v1");
    push_contents(&r, &[("a.txt", b"old content\n")]);
    // A writable mount cannot follow.
    let refused = Mount::try_new(&r, None, &["--follow"])
        .err()
        .expect("refused");
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(err.contains("--follow needs --read-only"), "{err}");

    let m = Mount::new(&r, &["--read-only", "--follow", "--refresh", "1s"]);
    let mut open = std::fs::File::open(m.join("a.txt")).unwrap();
    let mut first = String::new();
    open.read_to_string(&mut first).unwrap();
    assert_eq!(first, "old content\n");

    // Read before the move: the kernel keeps `.oras/` pages, and must be told they changed.
    let before = read(&m.join(".oras/digest"));
    let moved = push_contents(&r, &[("a.txt", b"new content!\n"), ("b.txt", b"b\n")]);
    assert_ne!(String::from_utf8(before).unwrap().trim(), moved);
    eventually(
        "the mount shows the moved tag",
        Duration::from_secs(20),
        || std::fs::read(m.join("a.txt")).is_ok_and(|d| d == b"new content!\n"),
    );
    assert_eq!(read(&m.join("b.txt")), b"b\n");
    assert_eq!(
        String::from_utf8(read(&m.join(".oras/digest")))
            .unwrap()
            .trim(),
        moved
    );
    // The file opened before the move still reads what it read.
    open.seek(SeekFrom::Start(0)).unwrap();
    let mut again = String::new();
    open.read_to_string(&mut again).unwrap();
    assert_eq!(again, "old content\n");
    let status = assert_ok(&oras_fs(["status".as_ref(), m.path().as_os_str()]));
    assert!(status.contains(&moved), "{status}");
    assert!(status.contains("moved 1 time"), "{status}");
}

#[test]
fn a_registry_mount_shows_repositories_by_path() {
    require_registry!();
    let repo = unique_repo("registry-mount");
    push_contents(&reference(&repo, "v1"), &[("a.txt", b"in the catalog\n")]);
    let m = Mount::new(&registry(), &["--refresh", "1s"]);
    let top = repo.split('/').next().unwrap();
    assert!(list_dir(m.path()).contains(&top.to_string()));
    assert_eq!(list_dir(&m.join(&repo)), ["v1"]);
    assert_eq!(
        read(&m.join(format!("{repo}/v1/a.txt"))),
        b"in the catalog\n"
    );
    // A repository pushed after the mount appears after a refresh.
    let later = unique_repo("registry-mount-later");
    push_contents(&reference(&later, "t"), &[("b.txt", b"later\n")]);
    eventually(
        "the new repository appears",
        Duration::from_secs(20),
        || m.join(&later).is_dir(),
    );
    assert_eq!(read(&m.join(format!("{later}/t/b.txt"))), b"later\n");
}

#[test]
fn a_registry_without_a_catalog_is_refused_and_a_tag_that_cannot_load_is_an_empty_dir() {
    require_registry!();
    let repo = unique_repo("repo-faults");
    push_contents(&reference(&repo, "good"), &[("a.txt", b"good\n")]);
    push_contents(&reference(&repo, "broken"), &[("b.txt", b"unseen\n")]);
    let proxy = FaultProxy::start(&registry());
    proxy.add(Rule::new("GET", "/v2/_catalog", Fault::Status(404, None)));
    proxy.add(Rule::new(
        "*",
        "/manifests/broken",
        Fault::Status(404, None),
    ));
    let host = proxy.origin().trim_start_matches("http://").to_string();

    let refused = Mount::try_new(&host, None, &[]).err().expect("refused");
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(err.contains("Mount one repository instead"), "{err}");

    let m = Mount::new(&format!("{host}/{repo}"), &[]);
    assert_eq!(list_dir(m.path()), ["broken", "good"]);
    assert_eq!(list_dir(&m.join("broken")), Vec::<String>::new());
    let e = std::fs::metadata(m.join("broken/b.txt")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(read(&m.join("good/a.txt")), b"good\n");
    let status = assert_ok(&oras_fs(["status".as_ref(), m.path().as_os_str()]));
    assert!(status.contains(":broken is shown empty"), "{status}");
}

#[test]
fn registries_conf_blocks_a_repository_mount() {
    require_registry!();
    let repo = unique_repo("repo-blocked");
    push_contents(&reference(&repo, "v1"), &[("a.txt", b"a\n")]);
    let dir = temp_dir();
    let conf = dir.path().join("registries.conf");
    write_file(
        &conf,
        format!(
            "[[registry]]\nprefix = \"{}/{repo}\"\nblocked = true\n",
            registry()
        ),
    );
    let refused = Mount::try_new(
        &format!("{}/{repo}", registry()),
        None,
        &["--registries-conf", path_str(&conf)],
    )
    .err()
    .expect("refused");
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(err.contains("is blocked by"), "{err}");
}
