//! Image indexes end to end: `manifest index create/update` builds a multi-platform index of
//! artifacts whose configs name their platforms; `--platform` picks a child in `resolve`,
//! `manifest fetch`, `fetch-config`, `pull`, `copy`, `attach` and `discover`; `copy` without it
//! copies the whole index (and with `-r` each child's referrers); a mount shows one directory
//! per child. Against the test registry and OCI layouts; run with `scripts/test.sh`.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Pushes an artifact tagged `tag` with one file `hi.txt` saying `text`, and (with `platform`)
/// a config naming that platform as an image config would; returns its digest.
fn push_child(
    dir: &Path,
    repo: &str,
    tag: &str,
    platform: Option<(&str, &str)>,
    text: &str,
) -> String {
    write_file(&dir.join("hi.txt"), text);
    let mut args = vec!["hi.txt".to_string()];
    if let Some((os, arch)) = platform {
        let config = format!(r#"{{"architecture":"{arch}","os":"{os}"}}"#);
        write_file(&dir.join("platform.json"), config);
        args.push("--config".into());
        args.push("platform.json:application/vnd.example.config+json".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    push_files(dir, &reference(repo, tag), &args)
}

/// Three artifacts (linux/amd64, linux/arm64, one without a platform) and an index of them
/// made with `manifest index create`: (index digest, amd64, arm64, plain).
fn pushed_index(repo: &str) -> (String, String, String, String) {
    let work = temp_dir();
    let amd = push_child(
        work.path(),
        repo,
        "linux-amd64",
        Some(("linux", "amd64")),
        "hello amd64\n",
    );
    let arm = push_child(
        work.path(),
        repo,
        "linux-arm64",
        Some(("linux", "arm64")),
        "hello arm64\n",
    );
    let plain = push_child(work.path(), repo, "plain", None, "no platform\n");
    let out = ok(&[
        "manifest",
        "index",
        "create",
        &reference(repo, "v1"),
        "linux-amd64",
        "linux-arm64",
        &plain,
        "--annotation",
        "note=made here",
        "--format",
        "json",
    ]);
    let created = json(out.as_bytes());
    let digest = created["digest"].as_str().unwrap().to_string();
    assert_eq!(created["mediaType"], OCI_INDEX);
    (digest, amd, arm, plain)
}

#[test]
fn an_index_made_with_index_create_is_resolved_fetched_and_pulled_by_platform() {
    require_registry!();
    let repo = unique_repo("index-create");
    let (index, amd, arm, plain) = pushed_index(&repo);
    let r = reference(&repo, "v1");

    let fetched = json(ok(&["manifest", "fetch", &r]).as_bytes());
    assert_eq!(fetched["mediaType"], OCI_INDEX);
    assert_eq!(fetched["annotations"]["note"], "made here");
    let children = fetched["manifests"].as_array().unwrap();
    let digests: Vec<&str> = children
        .iter()
        .map(|c| c["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests, [amd.as_str(), arm.as_str(), plain.as_str()]);
    assert_eq!(
        children[0]["platform"],
        serde_json::json!({"architecture": "amd64", "os": "linux"})
    );
    assert_eq!(children[1]["platform"]["architecture"], "arm64");
    assert!(
        children[2].get("platform").is_none(),
        "an artifact has no platform"
    );

    // resolve and manifest fetch: the index itself, or with --platform its child.
    assert_eq!(resolve(&[&r]), index);
    assert_eq!(resolve(&[&r, "--platform", "linux/arm64"]), arm);
    let child = ok(&["manifest", "fetch", &r, "--platform", "linux/amd64"]);
    assert_eq!(sha256_bytes(child.as_bytes()), amd);
    let config = ok(&["manifest", "fetch-config", &r, "--platform", "linux/arm64"]);
    assert_eq!(json(config.as_bytes())["architecture"], "arm64");

    // pull: refused without --platform, naming every platform; the child with it.
    let out = temp_dir();
    let refused = assert_fails(&pull(&r, out.path(), &[]), "--platform");
    for want in [
        "image index",
        &format!("linux/amd64 {amd}"),
        &format!("linux/arm64 {arm}"),
        &format!("(no platform) {plain}"),
    ] {
        assert!(refused.contains(want), "{want:?} missing: {refused}");
    }
    assert!(list_dir(out.path()).is_empty(), "nothing is written");
    let files = pulled(&r, &["--platform", "linux/arm64"]);
    assert_eq!(files["hi.txt"], b"hello arm64\n");
    let refused = assert_fails(
        &pull(&r, out.path(), &["--platform", "linux/s390x"]),
        "linux/s390x",
    );
    assert!(refused.contains(&format!("linux/amd64 {amd}")), "{refused}");
    // Where an index is still refused, its children are listed too.
    let refused = assert_fails(&oras_fs(["manifest", "fetch-config", &r]), "image index");
    assert!(refused.contains(&format!("linux/arm64 {arm}")), "{refused}");
    let bad = assert_fails(&pull(&r, out.path(), &["--platform", "linux"]), "os/arch");
    assert!(bad.contains("linux"), "{bad}");
}

#[test]
fn copy_takes_the_whole_index_or_one_platform_to_registries_and_layouts() {
    require_registry!();
    let repo = unique_repo("index-copy");
    let (index, amd, arm, _) = pushed_index(&repo);
    let r = reference(&repo, "v1");

    // The whole index, every child with its blobs.
    let whole = unique_repo("index-copy-whole");
    ok(&["copy", &r, &reference(&whole, "v1"), "--no-tty"]);
    assert_eq!(resolve(&[&reference(&whole, "v1")]), index);
    let files = pulled(&reference(&whole, "v1"), &["--platform", "linux/amd64"]);
    assert_eq!(files["hi.txt"], b"hello amd64\n");
    let files = pulled(&format!("{}@{arm}", registry_reference_base(&whole)), &[]);
    assert_eq!(files["hi.txt"], b"hello arm64\n");

    // One platform: the child alone, tagged.
    let one = unique_repo("index-copy-one");
    ok(&[
        "copy",
        &r,
        &reference(&one, "v1"),
        "--platform",
        "linux/arm64",
        "--no-tty",
    ]);
    assert_eq!(resolve(&[&reference(&one, "v1")]), arm);
    assert_fails(
        &oras_fs([
            "resolve",
            &format!("{}@{amd}", registry_reference_base(&one)),
        ]),
        "",
    );

    // An OCI layout holds the index and its children; pull and resolve work there too.
    let work = temp_dir();
    let layout = work.path().join("layout");
    let dest = format!("{}:v1", layout.display());
    ok(&["copy", &r, &dest, "--to-oci-layout", "--no-tty"]);
    assert_eq!(resolve(&["--oci-layout", &dest]), index);
    assert_eq!(
        resolve(&["--oci-layout", &dest, "--platform", "linux/amd64"]),
        amd
    );
    let out = work.path().join("out");
    assert_ok(&oras_fs([
        "pull",
        "--oci-layout",
        &dest,
        "--platform",
        "linux/arm64",
        "-o",
        path_str(&out),
        "--no-tty",
    ]));
    assert_eq!(read_file(&out.join("hi.txt")), b"hello arm64\n");
    // And back from the layout to a registry, whole.
    let back = unique_repo("index-copy-back");
    ok(&[
        "copy",
        "--from-oci-layout",
        &dest,
        &reference(&back, "v1"),
        "--no-tty",
    ]);
    assert_eq!(
        resolve(&[&reference(&back, "v1"), "--platform", "linux/arm64"]),
        arm
    );
}

/// `registry/repo` of a test repository (for `@digest` references).
fn registry_reference_base(repo: &str) -> String {
    let r = reference(repo, "x");
    r.strip_suffix(":x").unwrap().to_string()
}

#[test]
fn attach_discover_and_copy_r_reach_the_referrers_of_each_child() {
    require_registry!();
    let repo = unique_repo("index-referrers");
    let (_, _, arm, _) = pushed_index(&repo);
    let r = reference(&repo, "v1");
    let work = temp_dir();
    write_file(&work.path().join("sbom.json"), "{}");
    let out = oras_fs_in(
        work.path(),
        [
            "attach",
            "--artifact-type",
            "application/vnd.example.sbom",
            &r,
            "sbom.json",
            "--platform",
            "linux/arm64",
        ],
    );
    let attached = assert_ok(&out);
    assert!(
        attached.contains(&arm),
        "attached to the arm64 child: {attached}"
    );
    let listed = ok(&["discover", &r, "--platform", "linux/arm64"]);
    assert!(listed.contains("application/vnd.example.sbom"), "{listed}");
    let of_index = ok(&["discover", &r]);
    assert!(
        !of_index.contains("application/vnd.example.sbom"),
        "{of_index}"
    );
    // A referrer of the index itself pulls with --include-subject: the index holds no files,
    // and the pull says so instead of failing.
    write_file(&work.path().join("sig.txt"), "signed\n");
    let out = oras_fs_in(
        work.path(),
        [
            "attach",
            "--artifact-type",
            "application/vnd.example.sig",
            &r,
            "sig.txt",
            "--format",
            "go-template={{.digest}}",
        ],
    );
    let sig = assert_ok(&out);
    let pulled_dir = temp_dir();
    let sig_ref = format!("{}@{}", registry_reference_base(&repo), sig.trim());
    let out = pull(&sig_ref, pulled_dir.path(), &["--include-subject"]);
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is an image index"),
        "{out:?}"
    );
    assert_eq!(read_file(&pulled_dir.path().join("sig.txt")), b"signed\n");

    let dst = unique_repo("index-referrers-copy");
    ok(&["copy", "-r", &r, &reference(&dst, "v1"), "--no-tty"]);
    let listed = ok(&[
        "discover",
        &reference(&dst, "v1"),
        "--platform",
        "linux/arm64",
    ]);
    assert!(listed.contains("application/vnd.example.sbom"), "{listed}");
}

#[test]
fn a_mount_of_an_index_shows_each_child_and_with_platform_one() {
    require_registry!();
    let repo = unique_repo("index-mount");
    let (index, _, _, plain) = pushed_index(&repo);
    let r = reference(&repo, "v1");
    let plain_dir = format!("sha256-{}", plain.strip_prefix("sha256:").unwrap());
    let m = Mount::new(&r, &[]);
    assert_eq!(
        list_dir(m.path()),
        [".oras", "linux_amd64", "linux_arm64", plain_dir.as_str()]
    );
    assert_eq!(read_file(&m.join("linux_amd64/hi.txt")), b"hello amd64\n");
    assert_eq!(read_file(&m.join("linux_arm64/hi.txt")), b"hello arm64\n");
    assert_eq!(
        read_file(&m.join(format!("{plain_dir}/hi.txt"))),
        b"no platform\n"
    );
    assert_eq!(
        read_file(&m.join(".oras/digest")),
        format!("{index}\n").as_bytes()
    );
    let notes = String::from_utf8(read_file(&m.join(".oras/notes"))).unwrap();
    assert!(notes.contains("image index"), "{notes}");
    let err = std::fs::write(m.join("linux_amd64/new.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    drop(m);

    let m = Mount::new(&r, &["--platform", "linux/arm64"]);
    assert_eq!(list_dir(m.path()), [".oras", "hi.txt"]);
    assert_eq!(read_file(&m.join("hi.txt")), b"hello arm64\n");
}

#[test]
fn index_update_adds_removes_merges_and_annotates() {
    require_registry!();
    let repo = unique_repo("index-update");
    let work = temp_dir();
    let amd = push_child(
        work.path(),
        &repo,
        "linux-amd64",
        Some(("linux", "amd64")),
        "amd\n",
    );
    let arm = push_child(
        work.path(),
        &repo,
        "linux-arm64",
        Some(("linux", "arm64")),
        "arm\n",
    );
    let s390 = push_child(
        work.path(),
        &repo,
        "linux-s390x",
        Some(("linux", "s390x")),
        "s390x\n",
    );
    let r = reference(&repo, "v1");
    ok(&["manifest", "index", "create", &r, "linux-amd64"]);
    ok(&[
        "manifest",
        "index",
        "create",
        &reference(&repo, "other"),
        "linux-s390x",
    ]);
    let children = |reference: &str| -> Vec<String> {
        let index = json(ok(&["manifest", "fetch", reference]).as_bytes());
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["digest"].as_str().unwrap().to_string())
            .collect()
    };

    let out = ok(&[
        "manifest",
        "index",
        "update",
        &r,
        "--add",
        "linux-arm64",
        "--remove",
        &amd,
        "--annotation",
        "k=v",
        "--tag",
        "v2",
    ]);
    assert!(out.contains("Digest: "), "{out}");
    assert_eq!(children(&r), vec![arm.as_str()]);
    assert_eq!(resolve(&[&reference(&repo, "v2")]), resolve(&[&r]));
    let index: Value = json(ok(&["manifest", "fetch", &r]).as_bytes());
    assert_eq!(index["annotations"]["k"], "v");
    assert_eq!(index["manifests"][0]["platform"]["architecture"], "arm64");

    ok(&["manifest", "index", "update", &r, "--merge", "other"]);
    assert_eq!(children(&r), vec![arm.as_str(), s390.as_str()]);

    // -o -: the updated index on stdout, nothing pushed.
    let before = resolve(&[&r]);
    let printed = ok(&[
        "manifest", "index", "update", &r, "--remove", &arm, "-o", "-",
    ]);
    assert_eq!(
        json(printed.as_bytes())["manifests"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(resolve(&[&r]), before);

    assert_fails(
        &oras_fs(["manifest", "index", "update", &r, "--remove", &amd]),
        "is not in the index",
    );
    assert_fails(
        &oras_fs(["manifest", "index", "update", &r]),
        "nothing to update",
    );
    // A digest given twice is removed once (not refused the second time).
    let printed = ok(&[
        "manifest", "index", "update", &r, "--remove", &arm, "--remove", &arm, "-o", "-",
    ]);
    assert_eq!(
        json(printed.as_bytes())["manifests"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_fails(
        &oras_fs([
            "manifest",
            "index",
            "update",
            &reference(&repo, "linux-amd64"),
            "--add",
            "linux-arm64",
        ]),
        "is not an image index",
    );
    assert_fails(
        &oras_fs([
            "manifest",
            "index",
            "create",
            &reference(&repo, "v3"),
            "no-such-tag",
        ]),
        "no-such-tag",
    );
}
