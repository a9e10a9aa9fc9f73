//! OCI image layouts (`--oci-layout`, `--from-oci-layout`, `--to-oci-layout`) and interop with
//! skopeo: layouts skopeo writes read, layouts oras-fs writes are accepted by skopeo, and
//! `index.json` stays valid through pushes, tags and deletes. A layout also mounts (writable)
//! without any registry. Layout `.tar` archives read in place (pull, copy, resolve, manifest
//! fetch, repo tags, mount read-only; also by `--oci-layout-path`), refuse every write and any
//! hostile entry, and are shared with skopeo's `oci-archive:`. Run with `scripts/test.sh`;
//! needs skopeo (`scripts/setup.sh`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const TITLE: &str = "org.opencontainers.image.title";

// --- Helpers ----------------------------------------------------------------------------------

/// `DIR:tag`.
fn at(dir: &Path, tag: &str) -> String {
    format!("{}:{tag}", path_str(dir))
}

/// The manifest skopeo reads for `tag` of a layout (`skopeo inspect --raw oci:DIR:TAG`).
fn skopeo_manifest(layout: &Path, tag: &str) -> Vec<u8> {
    skopeo_ok(&["inspect", "--raw", &format!("oci:{}", at(layout, tag))])
}

/// The file of a blob in a layout.
fn layout_blob(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("a digest");
    layout.join("blobs").join(alg).join(hex)
}

/// `index.json` of a layout, parsed, after checking what every reader relies on: valid JSON,
/// `schemaVersion` 2, each tag named once, each listed manifest present and of its digest and
/// size. Returns tag -> digest and every listed digest.
#[track_caller]
fn checked_index(layout: &Path) -> (BTreeMap<String, String>, Vec<String>) {
    let index = json(&read_file(&layout.join("index.json")));
    assert_eq!(index["schemaVersion"], 2, "{index}");
    let mut tags = BTreeMap::new();
    let mut digests = Vec::new();
    for m in index["manifests"].as_array().expect("manifests") {
        let digest = m["digest"].as_str().expect("digest").to_string();
        let blob = layout_blob(layout, &digest);
        assert_eq!(sha256_file(&blob), digest, "{}", blob.display());
        assert_eq!(
            m["size"].as_u64(),
            Some(read_file(&blob).len() as u64),
            "{m}"
        );
        if let Some(tag) = m["annotations"][REF_NAME].as_str() {
            assert!(
                tags.insert(tag.to_string(), digest.clone()).is_none(),
                "tag {tag} listed twice: {index}"
            );
        }
        digests.push(digest);
    }
    (tags, digests)
}

/// Pushes `files` (relative to `dir`) to a registry repository and copies the artifact with
/// skopeo into the layout `layout` as `tag`; returns the digest oras-fs pushed.
fn skopeo_layout(dir: &Path, repo: &str, files: &[&str], layout: &Path, tag: &str) -> String {
    let digest = push_files(dir, &reference(repo, tag), files);
    skopeo_ok(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}", reference(repo, tag)),
        &format!("oci:{}", at(layout, tag)),
    ]);
    digest
}

// --- Layouts written by skopeo ------------------------------------------------------------------

#[test]
fn a_layout_written_by_skopeo_reads() {
    require_registry!();
    let repo = unique_repo("skopeo-src");
    let back = unique_repo("skopeo-back");
    let tmp = temp_dir();
    write_random_file(&tmp.path().join("data.bin"), &repo, 300_000);
    write_file(
        &tmp.path().join("notes/readme.txt"),
        format!("readme {repo}\n"),
    );
    let files = tree(tmp.path());
    let dirs = temp_dir();
    let layout = dirs.path().join("skopeo");
    let digest = skopeo_layout(tmp.path(), &repo, &["data.bin", "notes"], &layout, "v1");
    let (_, manifest_bytes) = get_manifest(&repo, "v1");
    // skopeo wrote index.json itself (no mediaType field, unlike ours).
    let (tags, _) = checked_index(&layout);
    assert_eq!(
        tags,
        BTreeMap::from([("v1".to_string(), digest.clone())]),
        "skopeo keeps the manifest as is"
    );

    assert_eq!(pulled(&at(&layout, "v1"), &["--oci-layout"]), files);
    assert_eq!(resolve(&["--oci-layout", &at(&layout, "v1")]), digest);
    let out = oras_fs(["manifest", "fetch", "--oci-layout", &at(&layout, "v1")]);
    assert_ok(&out);
    assert_eq!(out.stdout, manifest_bytes);
    let desc = json(
        ok(&[
            "manifest",
            "fetch",
            "--oci-layout",
            &format!("{}@{digest}", path_str(&layout)),
            "--descriptor",
        ])
        .as_bytes(),
    );
    assert_eq!(desc["digest"], digest.as_str());
    assert_eq!(desc["size"], manifest_bytes.len() as u64);
    assert_eq!(
        BTreeSet::from_iter(ok(&["repo", "tags", "--oci-layout", path_str(&layout)]).lines()),
        BTreeSet::from(["v1"])
    );
    let discovered = json(
        ok(&[
            "discover",
            "--oci-layout",
            &at(&layout, "v1"),
            "--format",
            "json",
        ])
        .as_bytes(),
    );
    assert_eq!(discovered["referrers"], serde_json::json!([]));

    // And back to a registry.
    let out = ok(&[
        "copy",
        "--from-oci-layout",
        &at(&layout, "v1"),
        &reference(&back, "v1"),
        "--no-tty",
    ]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert_eq!(resolve(&[&reference(&back, "v1")]), digest);
    assert_eq!(get_manifest(&back, "v1").1, manifest_bytes);
    assert_eq!(pulled(&reference(&back, "v1"), &[]), files);

    assert_fails(
        &oras_fs(["resolve", "--oci-layout", &at(&layout, "nope")]),
        "not found",
    );
    assert_fails(
        &oras_fs([
            "resolve",
            "--oci-layout",
            &at(&dirs.path().join("missing"), "v1"),
        ]),
        "oci-layout",
    );
}

#[test]
fn skopeo_accepts_what_oras_fs_writes_to_a_layout() {
    require_registry!();
    let repo = unique_repo("skopeo-dst");
    let onward = unique_repo("skopeo-onward");
    let tmp = temp_dir();
    write_file(&tmp.path().join("first.txt"), format!("first {repo}\n"));
    write_file(&tmp.path().join("second.txt"), format!("second {repo}\n"));
    write_file(&tmp.path().join("dir/nested.txt"), "nested\n");
    let dirs = temp_dir();
    let layout = dirs.path().join("mixed");
    let v1 = skopeo_layout(tmp.path(), &repo, &["first.txt"], &layout, "v1");

    // oras-fs adds to skopeo's layout.
    let v2 = push_files(
        tmp.path(),
        &at(&layout, "v2"),
        &[
            "--oci-layout",
            "second.txt",
            "dir",
            "--artifact-type",
            "application/vnd.test.layout",
        ],
    );
    let ours = read_file(&layout_blob(&layout, &v2));
    assert_eq!(skopeo_manifest(&layout, "v2"), ours);
    assert_eq!(
        sha256_bytes(&skopeo_manifest(&layout, "v1")),
        v1,
        "skopeo's own tag survives"
    );
    let (tags, _) = checked_index(&layout);
    assert_eq!(
        tags,
        BTreeMap::from([
            ("v1".to_string(), v1.clone()),
            ("v2".to_string(), v2.clone())
        ])
    );

    // skopeo copies it on to a registry, and to a layout of its own.
    skopeo_ok(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}", at(&layout, "v2")),
        &format!("docker://{}", reference(&onward, "v2")),
    ]);
    assert_eq!(resolve(&[&reference(&onward, "v2")]), v2);
    let expected: BTreeMap<String, Vec<u8>> = tree(tmp.path())
        .into_iter()
        .filter(|(k, _)| k != "first.txt")
        .collect();
    assert_eq!(pulled(&reference(&onward, "v2"), &[]), expected);

    // A layout oras-fs created from nothing.
    let fresh = dirs.path().join("fresh");
    let f1 = push_files(
        tmp.path(),
        &at(&fresh, "v1"),
        &["--oci-layout", "first.txt"],
    );
    let copied = dirs.path().join("by-skopeo");
    skopeo_ok(&[
        "copy",
        &format!("oci:{}", at(&fresh, "v1")),
        &format!("oci:{}", at(&copied, "v1")),
    ]);
    assert_eq!(resolve(&["--oci-layout", &at(&copied, "v1")]), f1);
    assert_eq!(
        pulled(&at(&copied, "v1"), &["--oci-layout"]),
        BTreeMap::from([(
            "first.txt".to_string(),
            read_file(&tmp.path().join("first.txt"))
        )])
    );
}

#[test]
fn index_json_stays_valid_through_pushes_tags_and_deletes() {
    require_registry!();
    let tmp = temp_dir();
    let layout = tmp.path().join("store");
    for i in 1..=4 {
        write_file(&tmp.path().join(format!("f{i}.txt")), format!("file {i}\n"));
    }
    let check_tags = |expected: &[(&str, &str)]| {
        let (tags, _) = checked_index(&layout);
        let expected: BTreeMap<String, String> = expected
            .iter()
            .map(|(t, d)| (t.to_string(), d.to_string()))
            .collect();
        assert_eq!(tags, expected);
        for (tag, digest) in &tags {
            assert_eq!(
                sha256_bytes(&skopeo_manifest(&layout, tag)),
                *digest,
                "skopeo reads {tag}"
            );
            assert_eq!(resolve(&["--oci-layout", &at(&layout, tag)]), *digest);
        }
    };

    let d1 = push_files(tmp.path(), &at(&layout, "v1"), &["--oci-layout", "f1.txt"]);
    let d2 = push_files(
        tmp.path(),
        &at(&layout, "v2,two"),
        &["--oci-layout", "f2.txt"],
    );
    check_tags(&[("v1", &d1), ("v2", &d2), ("two", &d2)]);
    // A push to an existing tag moves it.
    let d3 = push_files(tmp.path(), &at(&layout, "v1"), &["--oci-layout", "f3.txt"]);
    check_tags(&[("v1", &d3), ("v2", &d2), ("two", &d2)]);
    // The manifest v1 named before stays readable by digest.
    assert_eq!(
        pulled(&format!("{}@{d1}", path_str(&layout)), &["--oci-layout"]),
        BTreeMap::from([("f1.txt".to_string(), b"file 1\n".to_vec())])
    );
    let out = oras_fs([
        "pull",
        "--oci-layout",
        &format!("{}@{d1}", path_str(&layout)),
        "-o",
        "-",
    ]);
    assert_ok(&out);
    assert_eq!(out.stdout, b"file 1\n");
    ok(&["tag", "--oci-layout", &at(&layout, "v2"), "x", "y"]);
    ok(&["tag", "--oci-layout", &at(&layout, "v1"), "x"]);
    // Tags the next steps leave as they are.
    let tagged: [(&str, &str); 5] = [
        ("v1", &d3),
        ("v2", &d2),
        ("two", &d2),
        ("x", &d3),
        ("y", &d2),
    ];
    check_tags(&tagged);

    // A referrer is listed, untagged.
    let note = attach(
        tmp.path(),
        "application/vnd.test.note",
        &at(&layout, "v2"),
        &["f4.txt", "--oci-layout"],
    );
    let (_, listed) = checked_index(&layout);
    assert!(listed.contains(&note), "{listed:?}");
    check_tags(&tagged);

    // manifest push and delete.
    let file = tmp.path().join("m.json");
    ok(&[
        "manifest",
        "fetch",
        "--oci-layout",
        &at(&layout, "v2"),
        "-o",
        path_str(&file),
    ]);
    ok(&[
        "manifest",
        "push",
        "--oci-layout",
        &at(&layout, "pushed"),
        path_str(&file),
    ]);
    check_tags(&[
        ("v1", &d3),
        ("v2", &d2),
        ("two", &d2),
        ("x", &d3),
        ("y", &d2),
        ("pushed", &d2),
    ]);
    let out = ok(&[
        "manifest",
        "delete",
        "-f",
        "--oci-layout",
        &at(&layout, "v1"),
    ]);
    assert!(out.contains(&format!("Deleted {d3}")), "{out}");
    check_tags(&[("v2", &d2), ("two", &d2), ("y", &d2), ("pushed", &d2)]);
    assert_fails(
        &oras_fs(["resolve", "--oci-layout", &at(&layout, "x")]),
        "not found",
    );

    // Blobs.
    let blob = tmp.path().join("blob.bin");
    write_random_file(&blob, "layout blob", 50_000);
    let bd = sha256_file(&blob);
    let bref = format!("{}@{bd}", path_str(&layout));
    ok(&[
        "blob",
        "push",
        "--oci-layout",
        path_str(&layout),
        path_str(&blob),
    ]);
    assert_eq!(read_file(&layout_blob(&layout, &bd)), read_file(&blob));
    let out = oras_fs(["blob", "fetch", "--oci-layout", &bref, "-o", "-"]);
    assert_ok(&out);
    assert_eq!(out.stdout, read_file(&blob));
    // From stdin.
    let data = random_bytes("layout stdin blob", 70_000);
    let sd = sha256_bytes(&data);
    let out = oras_fs_stdin(
        [
            "blob",
            "push",
            "--oci-layout",
            &format!("{}@{sd}", path_str(&layout)),
            "-",
            "--size",
            "70000",
        ],
        &data,
    );
    assert_ok(&out);
    assert_eq!(read_file(&layout_blob(&layout, &sd)), data);
    ok(&["blob", "delete", "-f", "--oci-layout", &bref]);
    assert!(!layout_blob(&layout, &bd).exists());
    assert_fails(
        &oras_fs(["blob", "fetch", "--oci-layout", &bref, "-o", "-"]),
        "not found",
    );
    check_tags(&[("v2", &d2), ("two", &d2), ("y", &d2), ("pushed", &d2)]);
    // No temporary files left behind.
    let leftovers: Vec<String> = list_dir(&layout)
        .into_iter()
        .filter(|n| !["blobs", "index.json", "oci-layout"].contains(&n.as_str()))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Separate processes pushing to one layout at once must not lose each other's tags.
#[test]
fn concurrent_pushes_to_one_layout_keep_every_tag() {
    let tmp = temp_dir();
    let layout = tmp.path().join("store");
    write_file(&tmp.path().join("base.txt"), "base\n");
    push_files(
        tmp.path(),
        &at(&layout, "base"),
        &["--oci-layout", "base.txt"],
    );
    let n = 8;
    let children: Vec<_> = (0..n)
        .map(|i| {
            let name = format!("c{i}.txt");
            write_file(&tmp.path().join(&name), format!("concurrent {i}\n"));
            oras_fs_cmd([
                "push",
                "--oci-layout",
                &at(&layout, &format!("t{i}")),
                &name,
                "--no-tty",
            ])
            .current_dir(tmp.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawning oras-fs")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().expect("waiting for oras-fs");
        assert!(out.status.success(), "{}", stderr_of(&out));
    }
    let (tags, _) = checked_index(&layout);
    let mut expected: BTreeSet<String> = (0..n).map(|i| format!("t{i}")).collect();
    expected.insert("base".into());
    assert_eq!(tags.keys().cloned().collect::<BTreeSet<_>>(), expected);
}

// --- Mounting a layout --------------------------------------------------------------------------

/// An `oras-fs mount --oci-layout` whose process sees no registry variables at all, unmounted
/// (and its daemon gone) when dropped, whatever happened.
struct LayoutMount {
    /// Holds `mnt/`, `cache/` and `home/`; kept (leaked) if the mount could not be removed.
    root: Option<tempfile::TempDir>,
    mnt: PathBuf,
}

impl LayoutMount {
    #[track_caller]
    fn new(reference: &str) -> LayoutMount {
        let root = temp_dir();
        let base = std::fs::canonicalize(root.path()).expect("canonical temp dir");
        let mnt = base.join("mnt");
        for d in ["mnt", "cache", "home"] {
            std::fs::create_dir(base.join(d)).expect("creating a directory");
        }
        let mut cmd = oras_fs_cmd([
            OsStr::new("mount"),
            OsStr::new("--oci-layout"),
            OsStr::new(reference),
            mnt.as_os_str(),
            OsStr::new("--cache-dir"),
            base.join("cache").as_os_str(),
        ]);
        cmd.env("XDG_CACHE_HOME", base.join("home"));
        // No registry: the layout is all the mount has.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ORAS_FS_TEST_") {
                cmd.env_remove(k);
            }
        }
        let out = run_with_timeout(&mut cmd, b"", MOUNT_TIMEOUT);
        let mount = LayoutMount {
            root: Some(root),
            mnt,
        };
        assert!(
            out.status.success(),
            "mounting {reference} failed\n{}",
            describe(&out)
        );
        assert!(is_mounted(&mount.mnt), "not mounted\n{}", describe(&out));
        mount
    }

    fn daemons(&self) -> Vec<u32> {
        let mp = self.mnt.to_string_lossy().into_owned();
        find_processes(|argv| argv.len() > 2 && argv[1] == "mount" && argv.contains(&mp))
    }

    /// `oras-fs unmount MNT`, then waits for the daemon to end.
    fn unmount(&self) -> Output {
        let daemons = self.daemons();
        let out = run_with_timeout(
            &mut oras_fs_cmd([OsStr::new("unmount"), self.mnt.as_os_str()]),
            b"",
            CONTROL_TIMEOUT,
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while daemons.iter().any(|&p| pid_alive(p)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        out
    }
}

impl Drop for LayoutMount {
    fn drop(&mut self) {
        let daemons = self.daemons();
        if is_mounted(&self.mnt) {
            let _ = run_bounded(
                &mut oras_fs_cmd([OsStr::new("unmount"), self.mnt.as_os_str()]),
                Duration::from_secs(30),
            );
            if !wait_unmounted(&self.mnt, Duration::from_secs(2)) {
                let _ = fusermount_lazy(&self.mnt);
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while daemons.iter().any(|&p| pid_alive(p)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in self.daemons() {
            eprintln!("mount process {pid} lingers: killing it");
            kill_pid(pid, libc::SIGKILL);
        }
        if is_mounted(&self.mnt) {
            eprintln!("{} is still mounted: leaving it", self.mnt.display());
            if let Some(root) = self.root.take() {
                let _ = root.keep();
            }
        }
    }
}

#[test]
fn a_layout_mounts_without_a_registry_and_unmount_writes_back() {
    require_registry!();
    let tmp = temp_dir();
    let layout = tmp.path().join("store");
    write_file(&tmp.path().join("a.txt"), "alpha\n");
    write_file(&tmp.path().join("docs/b.txt"), "beta\n");
    let before = push_files(
        tmp.path(),
        &at(&layout, "v1"),
        &["--oci-layout", "a.txt", "docs"],
    );

    let mount = LayoutMount::new(&at(&layout, "v1"));
    let out = run(Command::new("cat").arg(mount.mnt.join("a.txt")));
    assert_eq!(assert_ok(&out), "alpha\n");
    assert_eq!(read_file(&mount.mnt.join("docs/b.txt")), b"beta\n");
    write_file(&mount.mnt.join("new.txt"), "written in the mount\n");
    let out = mount.unmount();
    let stdout = assert_ok(&out);
    let after = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Pushed "))
        .unwrap_or_else(|| panic!("unmount pushed nothing\n{}", describe(&out)))
        .trim()
        .to_string();
    assert!(!is_mounted(&mount.mnt));
    assert_ne!(after, before);

    // index.json now points v1 at the new manifest, which lists the new file.
    let (tags, _) = checked_index(&layout);
    assert_eq!(tags, BTreeMap::from([("v1".to_string(), after.clone())]));
    let manifest = json(&read_file(&layout_blob(&layout, &after)));
    let titles: BTreeSet<&str> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .filter_map(|l| l["annotations"][TITLE].as_str())
        .collect();
    assert!(titles.contains("new.txt"), "{manifest}");
    assert_eq!(
        pulled(&at(&layout, "v1"), &["--oci-layout"]),
        BTreeMap::from([
            ("a.txt".to_string(), b"alpha\n".to_vec()),
            ("docs/b.txt".to_string(), b"beta\n".to_vec()),
            ("new.txt".to_string(), b"written in the mount\n".to_vec()),
        ])
    );
    assert_eq!(sha256_bytes(&skopeo_manifest(&layout, "v1")), after);
    drop(mount);
}

// --- Layouts in .tar archives and --oci-layout-path -------------------------------------------

#[test]
fn a_tar_layout_reads_in_place() {
    require_registry!();
    let repo = unique_repo("tar-src");
    let digest = push_contents(
        &reference(&repo, "v1"),
        &[
            ("a.txt", format!("tar {repo}\n").as_bytes()),
            ("big.bin", &random_bytes(&repo, (2 << 20) + 7)),
        ],
    );
    let dirs = temp_dir();
    let tar = dirs.path().join("l.tar");
    backup_to(&tar, &[&reference(&repo, "v1")]);
    let tar_ref = at(&tar, "v1");
    let want = pulled_tree(&reference(&repo, "v1"));

    // Read commands take the archive where they take a layout directory...
    assert_eq!(resolve(&["--oci-layout", &tar_ref]), digest);
    assert_eq!(pulled(&tar_ref, &["--oci-layout"]), want);
    let manifest = ok(&["manifest", "fetch", "--oci-layout", &tar_ref]);
    assert_eq!(sha256_bytes(manifest.as_bytes()), digest);
    assert_eq!(
        ok(&["repo", "tags", "--oci-layout", path_str(&tar)]).trim(),
        "v1"
    );
    // ...and --oci-layout-path, the reference being only the tag or the digest.
    assert_eq!(
        resolve(&["--oci-layout-path", path_str(&tar), "v1"]),
        digest
    );
    assert_eq!(
        pulled(&digest, &["--oci-layout-path", path_str(&tar)]),
        want
    );

    // copy out of it, by either flag, verified at the destination.
    let back = unique_repo("tar-back");
    ok(&[
        "copy",
        "--from-oci-layout",
        &tar_ref,
        &reference(&back, "v1"),
        "--no-tty",
    ]);
    ok(&[
        "copy",
        "--from-oci-layout-path",
        path_str(&tar),
        "v1",
        &reference(&back, "v2"),
        "--no-tty",
    ]);
    for tag in ["v1", "v2"] {
        assert_eq!(pulled_tree(&reference(&back, tag)), want, "{tag}");
    }
    // Into a layout directory named by --to-oci-layout-path.
    let dir = dirs.path().join("dir");
    ok(&[
        "copy",
        "--from-oci-layout",
        &tar_ref,
        "--to-oci-layout-path",
        path_str(&dir),
        "v3",
        "--no-tty",
    ]);
    let (tags, _) = checked_index(&dir);
    assert_eq!(tags.get("v3"), Some(&digest));

    // Both flags at once are refused, as oras does.
    assert_fails(
        &oras_fs([
            "resolve",
            "--oci-layout",
            "--oci-layout-path",
            path_str(&tar),
            "v1",
        ]),
        "not both",
    );
}

#[test]
fn writing_into_a_tar_layout_is_refused() {
    require_registry!();
    let repo = unique_repo("tar-ro");
    push_contents(
        &reference(&repo, "v1"),
        &[("a.txt", format!("ro {repo}\n").as_bytes())],
    );
    let dirs = temp_dir();
    let tar = dirs.path().join("ro.tar");
    backup_to(&tar, &[&reference(&repo, "v1")]);
    let before = read_file(&tar);
    write_file(&dirs.path().join("new.txt"), "new\n");

    let refusals: Vec<Vec<String>> = vec![
        vec![
            "push".into(),
            "--oci-layout".into(),
            at(&tar, "v2"),
            "new.txt".into(),
        ],
        vec![
            "tag".into(),
            "--oci-layout".into(),
            at(&tar, "v1"),
            "v9".into(),
        ],
        vec![
            "copy".into(),
            reference(&repo, "v1"),
            "--to-oci-layout".into(),
            at(&tar, "v2"),
        ],
        vec![
            "push".into(),
            "--oci-layout-path".into(),
            path_str(&tar).into(),
            "v2".into(),
            "new.txt".into(),
        ],
        // A new .tar is not made into a directory either.
        vec![
            "copy".into(),
            reference(&repo, "v1"),
            "--to-oci-layout".into(),
            at(&dirs.path().join("fresh.tar"), "v1"),
        ],
    ];
    // Deletes too (the digests are the manifest's and its layer's).
    let digest = resolve(&["--oci-layout", &at(&tar, "v1")]);
    let manifest = json(ok(&["manifest", "fetch", "--oci-layout", &at(&tar, "v1")]).as_bytes());
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let tar_path = path_str(&tar).to_string();
    let deletes: Vec<Vec<String>> = vec![
        vec![
            "manifest".into(),
            "delete".into(),
            "--oci-layout".into(),
            format!("{tar_path}@{digest}"),
            "-f".into(),
        ],
        vec![
            "blob".into(),
            "delete".into(),
            "--oci-layout".into(),
            format!("{tar_path}@{layer}"),
            "-f".into(),
        ],
    ];
    for args in refusals.into_iter().chain(deletes) {
        let out = oras_fs_in(dirs.path(), &args);
        assert_fails(&out, "read-only");
    }
    // Something that is not a tar at all says so.
    let junk = dirs.path().join("junk.tar");
    write_file(&junk, random_bytes("junk", 4096));
    assert_fails(
        &oras_fs(["resolve", "--oci-layout", &at(&junk, "v1")]),
        "not a readable tar archive",
    );
    assert_eq!(read_file(&tar), before, "the archive is unchanged");
    assert!(!dirs.path().join("fresh.tar").exists());
}

#[test]
fn a_tar_with_a_hostile_entry_is_refused() {
    require_registry!();
    let dirs = temp_dir();
    for (name, needle) in [("../escape", ".."), ("/abs/blob", "absolute")] {
        let mut b = tar::Builder::new(Vec::new());
        for (n, data) in [
            ("oci-layout", &b"{}"[..]),
            ("index.json", b"{\"schemaVersion\":2}"),
            (name, b"x"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..n.len()].copy_from_slice(n.as_bytes());
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        let tar = dirs.path().join("hostile.tar");
        write_file(&tar, b.into_inner().unwrap());
        let err = assert_fails(
            &oras_fs(["repo", "tags", "--oci-layout", path_str(&tar)]),
            needle,
        );
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn skopeo_and_oras_fs_share_oci_archives() {
    require_registry!();
    let repo = unique_repo("tar-skopeo");
    let tmp = temp_dir();
    write_file(&tmp.path().join("data.bin"), random_bytes(&repo, 1 << 20));
    let digest = push_files(tmp.path(), &reference(&repo, "v1"), &["data.bin"]);

    // skopeo writes an oci-archive; oras-fs reads it in place.
    let theirs = tmp.path().join("skopeo.tar");
    skopeo_ok(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}", reference(&repo, "v1")),
        &format!("oci-archive:{}", at(&theirs, "v1")),
    ]);
    assert_eq!(resolve(&["--oci-layout", &at(&theirs, "v1")]), digest);
    assert_eq!(
        pulled(&at(&theirs, "v1"), &["--oci-layout"]),
        pulled_tree(&reference(&repo, "v1"))
    );

    // oras-fs writes one (backup); skopeo reads it.
    let ours = tmp.path().join("ours.tar");
    backup_to(&ours, &[&reference(&repo, "v1")]);
    let raw = skopeo_ok(&[
        "inspect",
        "--raw",
        &format!("oci-archive:{}", at(&ours, "v1")),
    ]);
    assert_eq!(sha256_bytes(&raw), digest);
}

#[test]
fn a_tar_layout_mounts_read_only() {
    require_registry!();
    let repo = unique_repo("tar-mount");
    push_contents(&reference(&repo, "v1"), &[("a.txt", b"in the archive\n")]);
    let dirs = temp_dir();
    let tar = dirs.path().join("m.tar");
    backup_to(&tar, &[&reference(&repo, "v1")]);
    let before = read_file(&tar);

    let mount = LayoutMount::new(&at(&tar, "v1"));
    assert_eq!(read_file(&mount.mnt.join("a.txt")), b"in the archive\n");
    let err = std::fs::write(mount.mnt.join("new.txt"), "x").expect_err("a read-only mount");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert_ok(&mount.unmount());
    assert_eq!(read_file(&tar), before);
}
