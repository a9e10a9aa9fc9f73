//! End-to-end tests of the oras command set besides plain push/pull: `copy` (cross-repository
//! mounts, OCI layouts, `-r` referrers), `tag`, `resolve`, `manifest`, `blob`, `repo`, `attach`,
//! `discover`, and push/pull's stdin/stdout and `--reproducible`. Run with `scripts/test.sh`.
//!
//! Every command runs against the real test registry (CNCF Distribution 2.8); each test uses
//! repositories of its own, so the tests run in parallel.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::faults::{Fault, FaultProxy, Rule};
use common::*;
use serde_json::Value;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const EMPTY_CONFIG_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

// --- Helpers ----------------------------------------------------------------------------------

/// The digests of the config and the layers of a manifest, in order.
fn blob_digests(manifest: &Value) -> Vec<String> {
    std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().expect("layers"))
        .map(|d| d["digest"].as_str().expect("digest").to_string())
        .collect()
}

/// `discover`'s tree `text` starts with `subject` and lists a referrer (artifact type, digest)
/// under it, and under that one a referrer of its own, indented.
#[track_caller]
fn assert_discover_tree(text: &str, subject: &str, child: (&str, &str), grandchild: (&str, &str)) {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], subject, "{text}");
    let (ty, digest) = child;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("└── ") && l.contains(ty) && l.contains(digest)),
        "{text}"
    );
    let (ty, digest) = grandchild;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("    └── ") && l.contains(ty) && l.contains(digest)),
        "the nested referrer is indented under its subject:\n{text}"
    );
}

/// The registry's JSON-log entries after `offset` once `done` holds for them: the registry logs
/// a response as it completes, a moment after the client has it. Panics after 10 s.
#[track_caller]
fn log_until(offset: u64, what: &str, done: impl Fn(&[LogEntry]) -> bool) -> Vec<LogEntry> {
    let log = registry_log();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = log_entries_since(&log, offset);
        if done(&entries) {
            return entries;
        }
        if Instant::now() > deadline {
            panic!("the registry log never showed {what}; entries since the start:\n{entries:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Log entries of `repo` (its `/v2/<repo>/` requests).
fn of_repo<'a>(entries: &'a [LogEntry], repo: &str) -> Vec<&'a LogEntry> {
    let needle = format!("/v2/{repo}/");
    entries.iter().filter(|e| e.uri.contains(&needle)).collect()
}

fn is_manifest_put(e: &LogEntry, repo: &str, tag: &str) -> bool {
    e.method == "PUT" && e.uri == format!("/v2/{repo}/manifests/{tag}") && e.status == 201
}

// --- copy -------------------------------------------------------------------------------------

#[test]
fn copy_to_another_repository_mounts_blobs_and_skips_existing_ones() {
    require_registry!();
    let src = unique_repo("copy-mount-src");
    let dst = unique_repo("copy-mount-dst");
    let tmp = temp_dir();
    write_random_file(&tmp.path().join("big.bin"), &src, 300_000);
    write_file(&tmp.path().join("note.txt"), format!("note of {src}\n"));
    let digest = push_files(tmp.path(), &reference(&src, "v1"), &["big.bin", "note.txt"]);
    let blobs = blob_digests(&json(&get_manifest(&src, "v1").1));
    assert_eq!(blobs.len(), 3, "config and two layers");

    let offset = log_offset(&registry_log());
    // `cp` is the alias of `copy`.
    let out = ok(&[
        "cp",
        &reference(&src, "v1"),
        &reference(&dst, "v1"),
        "--no-tty",
    ]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    let is_mount_of = |e: &LogEntry, blob: &str| {
        let uri = percent_decode(&e.uri);
        e.method == "POST"
            && uri.starts_with(&format!("/v2/{dst}/blobs/uploads/?"))
            && uri.contains(&format!("mount={blob}"))
            && uri.contains(&format!("from={src}"))
    };
    // Blobs are done before the manifest is put, but their log lines may come a moment later.
    let entries = log_until(offset, "the mounts and the manifest PUT of the copy", |e| {
        e.iter().any(|e| is_manifest_put(e, &dst, "v1"))
            && blobs.iter().all(|b| e.iter().any(|e| is_mount_of(e, b)))
    });
    let dst_entries = of_repo(&entries, &dst);
    for blob in &blobs {
        let mount = dst_entries.iter().find(|e| is_mount_of(e, blob));
        let mount = mount.unwrap_or_else(|| {
            panic!("no cross-repository mount POST of {blob}; requests to {dst}:\n{dst_entries:#?}")
        });
        assert_eq!(
            mount.status, 201,
            "mount of {blob} not answered 201: {mount:?}"
        );
    }
    // Nothing uploaded to the destination, and nothing downloaded from the source.
    let uploads: Vec<_> = dst_entries
        .iter()
        .filter(|e| {
            e.uri.contains("/blobs/uploads/")
                && (e.method == "PUT" || e.method == "PATCH" || !e.uri.contains("mount="))
        })
        .collect();
    assert!(uploads.is_empty(), "blob data was uploaded: {uploads:#?}");
    let src_gets: Vec<_> = of_repo(&entries, &src)
        .into_iter()
        .filter(|e| e.method == "GET" && e.uri.contains("/blobs/"))
        .collect();
    assert!(src_gets.is_empty(), "blobs were downloaded: {src_gets:#?}");
    assert_eq!(resolve(&[&reference(&dst, "v1")]), digest);
    assert_eq!(
        get_manifest(&dst, "v1").1,
        get_manifest(&src, "v1").1,
        "the manifest is copied byte for byte"
    );
    assert_eq!(pulled(&reference(&dst, "v1"), &[]), tree(tmp.path()));

    // Again: every blob is there already, so nothing is mounted or uploaded.
    let offset = log_offset(&registry_log());
    ok(&[
        "copy",
        &reference(&src, "v1"),
        &reference(&dst, "v1"),
        "--no-tty",
    ]);
    let found = |e: &LogEntry, blob: &str| {
        e.method == "HEAD" && e.uri == format!("/v2/{dst}/blobs/{blob}") && e.status == 200
    };
    let entries = log_until(
        offset,
        "the HEADs and the manifest PUT of the second copy",
        |e| {
            e.iter().any(|e| is_manifest_put(e, &dst, "v1"))
                && blobs.iter().all(|b| e.iter().any(|e| found(e, b)))
        },
    );
    let dst_entries = of_repo(&entries, &dst);
    let writes: Vec<_> = dst_entries
        .iter()
        .filter(|e| e.uri.contains("/blobs/") && e.method != "HEAD")
        .collect();
    assert!(
        writes.is_empty(),
        "the second copy moved blobs: {writes:#?}"
    );
}

#[test]
fn copy_registry_to_layout_and_back_round_trips() {
    require_registry!();
    let src = unique_repo("copy-layout-src");
    let back = unique_repo("copy-layout-back");
    let tmp = temp_dir();
    write_random_file(&tmp.path().join("data.bin"), &src, 200_000);
    write_file(
        &tmp.path().join("dir/inner.txt"),
        format!("inner of {src}\n"),
    );
    write_file(&tmp.path().join("dir/sub/deep.txt"), "deep\n");
    let digest = push_files(tmp.path(), &reference(&src, "v1"), &["data.bin", "dir"]);
    let (_, manifest_bytes) = get_manifest(&src, "v1");

    // Registry -> layout.
    let layouts = temp_dir();
    let layout = layouts.path().join("store");
    let out = ok(&[
        "copy",
        &reference(&src, "v1"),
        &format!("{}:v1", path_str(&layout)),
        "--to-oci-layout",
        "--no-tty",
    ]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    let index = json(&read_file(&layout.join("index.json")));
    let entries = index["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!(entries[0]["digest"], digest.as_str());
    assert_eq!(
        entries[0]["annotations"]["org.opencontainers.image.ref.name"],
        "v1"
    );
    for d in blob_digests(&json(&manifest_bytes)).iter().chain([&digest]) {
        let path = layout.join("blobs/sha256").join(&d["sha256:".len()..]);
        assert_eq!(&sha256_file(&path), d, "blob file {}", path.display());
    }
    assert_eq!(
        read_file(&layout.join("blobs/sha256").join(&digest["sha256:".len()..])),
        manifest_bytes
    );
    assert_eq!(
        resolve(&["--oci-layout", &format!("{}:v1", path_str(&layout))]),
        digest
    );
    let files = tree(tmp.path());
    assert_eq!(
        pulled(&format!("{}:v1", path_str(&layout)), &["--oci-layout"]),
        files
    );

    // Layout -> registry (another repository): the same manifest, the same files.
    let out = ok(&[
        "copy",
        "--from-oci-layout",
        &format!("{}:v1", path_str(&layout)),
        &reference(&back, "v2"),
        "--no-tty",
    ]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert_eq!(resolve(&[&reference(&back, "v2")]), digest);
    assert_eq!(get_manifest(&back, "v2").1, manifest_bytes);
    assert_eq!(pulled(&reference(&back, "v2"), &[]), files);

    // By digest, with no tag anywhere: the layout lists the manifest untagged.
    let untagged = layouts.path().join("untagged");
    ok(&[
        "copy",
        &format!("{}/{src}@{digest}", registry()),
        path_str(&untagged),
        "--to-oci-layout",
        "--no-tty",
    ]);
    let index = json(&read_file(&untagged.join("index.json")));
    assert_eq!(index["manifests"][0]["digest"], digest.as_str(), "{index}");
    assert!(tags(&["--oci-layout", path_str(&untagged)]).is_empty());
    assert_eq!(
        pulled(
            &format!("{}@{digest}", path_str(&untagged)),
            &["--oci-layout"]
        ),
        files
    );
}

#[test]
fn copy_recursive_copies_referrers_to_a_repository_and_a_layout() {
    require_registry!();
    let src = unique_repo("copy-r-src");
    let dst = unique_repo("copy-r-dst");
    let plain = unique_repo("copy-r-plain");
    let tmp = temp_dir();
    write_file(&tmp.path().join("app.txt"), format!("app of {src}\n"));
    write_file(&tmp.path().join("sig.txt"), format!("signature of {src}\n"));
    write_file(
        &tmp.path().join("sbom.json"),
        format!("{{\"sbom\":\"{src}\"}}"),
    );
    let subject = push_files(tmp.path(), &reference(&src, "v1"), &["app.txt"]);
    let sig = attach(
        tmp.path(),
        "application/vnd.test.signature",
        &reference(&src, "v1"),
        &["sig.txt"],
    );
    // A referrer of the referrer: -r copies recursively.
    let sbom = attach(
        tmp.path(),
        "application/vnd.test.sbom",
        &format!("{}/{src}@{sig}", registry()),
        &["sbom.json"],
    );

    // Registry -> registry.
    for _ in 0..2 {
        // Twice: the second copy must not list the referrer twice.
        ok(&[
            "copy",
            "-r",
            &reference(&src, "v1"),
            &reference(&dst, "v1"),
            "--no-tty",
        ]);
    }
    let listed = discovered(&[&reference(&dst, "v1")]);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["digest"], sig.as_str());
    assert_eq!(listed[0]["artifactType"], "application/vnd.test.signature");
    assert_eq!(
        digests_of(&discovered(&[&format!("{}/{dst}@{sig}", registry())])),
        BTreeSet::from([sbom.clone()])
    );
    assert_discover_tree(
        &ok(&["discover", &reference(&dst, "v1")]),
        &format!("{}/{dst}@{subject}", registry()),
        ("application/vnd.test.signature", &sig),
        ("application/vnd.test.sbom", &sbom),
    );
    assert!(tags(&[&format!("{}/{dst}", registry())]).contains(&referrers_tag(&subject)));
    assert_eq!(
        pulled(&format!("{}/{dst}@{sig}", registry()), &[]),
        BTreeMap::from([(
            "sig.txt".to_string(),
            read_file(&tmp.path().join("sig.txt"))
        )])
    );

    // Without -r, no referrers.
    ok(&[
        "copy",
        &reference(&src, "v1"),
        &reference(&plain, "v1"),
        "--no-tty",
    ]);
    assert!(discovered(&[&reference(&plain, "v1")]).is_empty());

    // Registry -> layout.
    let layouts = temp_dir();
    let layout = layouts.path().join("store");
    let lref = format!("{}:v1", path_str(&layout));
    ok(&[
        "copy",
        "-r",
        &reference(&src, "v1"),
        &lref,
        "--to-oci-layout",
        "--no-tty",
    ]);
    assert_eq!(
        digests_of(&discovered(&["--oci-layout", &lref])),
        BTreeSet::from([sig.clone()])
    );
    assert_eq!(
        digests_of(&discovered(&[
            "--oci-layout",
            &format!("{}@{sig}", path_str(&layout))
        ])),
        BTreeSet::from([sbom.clone()])
    );
    let text = ok(&["discover", "--oci-layout", &lref]);
    assert!(text.contains(&sig) && text.contains(&sbom), "{text}");
}

// --- tag, resolve, repo -------------------------------------------------------------------------

#[test]
fn tag_then_resolve_and_list_tags_and_repositories() {
    require_registry!();
    let repo = unique_repo("tag");
    let tmp = temp_dir();
    write_file(&tmp.path().join("t.txt"), format!("tag test {repo}\n"));
    let digest = push_files(tmp.path(), &reference(&repo, "v1"), &["t.txt"]);

    let out = ok(&["tag", &reference(&repo, "v1"), "one", "two", "3.0"]);
    for t in ["one", "two", "3.0"] {
        assert!(out.contains(&format!("Tagged {t}")), "{out}");
    }
    // By digest too.
    ok(&[
        "tag",
        &format!("{}/{repo}@{digest}", registry()),
        "by-digest",
    ]);
    for t in ["v1", "one", "two", "3.0", "by-digest"] {
        assert_eq!(resolve(&[&reference(&repo, t)]), digest, "tag {t}");
    }
    assert_eq!(
        tags(&[&format!("{}/{repo}", registry())]),
        ["v1", "one", "two", "3.0", "by-digest"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let catalog = ok(&["repo", "ls", &registry()]);
    assert!(
        catalog.lines().any(|l| l == repo),
        "{repo} not in the catalog:\n{catalog}"
    );
    // --last starts after a name (pages: `listings_follow_link_pages`).
    let after = ok(&["repo", "ls", &registry(), "--last", &repo]);
    assert!(
        after.lines().all(|l| l > repo.as_str()),
        "--last {repo} listed earlier repositories:\n{after}"
    );
    assert!(!after.lines().any(|l| l == repo), "{after}");

    assert_fails(&oras_fs(["tag", &reference(&repo, "v1"), "bad,tag"]), "tag");
    assert_fails(
        &oras_fs(["tag", &reference(&repo, "missing"), "x"]),
        "not found",
    );
    assert_fails(
        &oras_fs(["resolve", &reference(&repo, "missing")]),
        "not found",
    );
}

/// Tags are checked, all of them, before any is set: a bad tag in the list leaves the
/// repository (or layout) as it was, and a layout takes no tag a registry would refuse.
/// Distribution 2.8 answers a tag list or a catalog in one page, so the pages here come from
/// the proxy: each listing must follow `Link` to the end, in order.
#[test]
fn listings_follow_link_pages() {
    require_registry!();
    let proxy = FaultProxy::start(&registry());
    let repo = unique_repo("pages");
    let page = |body: &str, next: Option<String>| Fault::ServePage {
        body: std::sync::Arc::new(body.as_bytes().to_vec()),
        next,
    };
    let tags_at = |last: &str| format!("/v2/{repo}/tags/list?last={last}");
    // The first applicable rule wins: the later pages' rules go first.
    proxy.add(Rule::new(
        "GET",
        &tags_at("b"),
        page(r#"{"tags":["c"]}"#, Some(tags_at("c"))),
    ));
    // A page may end the list with `null`.
    proxy.add(Rule::new(
        "GET",
        &tags_at("c"),
        page(r#"{"tags":null}"#, None),
    ));
    proxy.add(Rule::new(
        "GET",
        "/tags/list",
        page(
            &format!(r#"{{"name":"{repo}","tags":["a","b"]}}"#),
            Some(tags_at("b")),
        ),
    ));
    proxy.add(Rule::new(
        "GET",
        "/_catalog?last=r2",
        page(r#"{"repositories":["r3"]}"#, None),
    ));
    proxy.add(Rule::new(
        "GET",
        "/_catalog",
        page(
            r#"{"repositories":["r1","r2"]}"#,
            Some("/v2/_catalog?last=r2&n=2".into()),
        ),
    ));

    let tags = ok(&["repo", "tags", &format!("{}/{repo}", proxy.addr)]);
    assert_eq!(tags.lines().collect::<Vec<_>>(), ["a", "b", "c"], "{tags}");
    assert_eq!(proxy.matching("GET", "/tags/list").len(), 3);
    let repos = ok(&["repo", "ls", &proxy.addr]);
    assert_eq!(
        repos.lines().collect::<Vec<_>>(),
        ["r1", "r2", "r3"],
        "{repos}"
    );
    assert_eq!(proxy.matching("GET", "/_catalog").len(), 2);
}

#[test]
fn tag_checks_every_tag_before_setting_any() {
    require_registry!();
    let repo = unique_repo("tag-check");
    let tmp = temp_dir();
    write_file(&tmp.path().join("t.txt"), format!("tag check {repo}\n"));
    push_files(tmp.path(), &reference(&repo, "v1"), &["t.txt"]);
    assert_fails(
        &oras_fs(["tag", &reference(&repo, "v1"), "good", "bad,tag"]),
        "tag",
    );
    assert_eq!(
        tags(&[&format!("{}/{repo}", registry())]),
        BTreeSet::from(["v1".to_string()]),
        "a tag was set although the command failed"
    );

    let layout = tmp.path().join("store");
    assert_ok(&push(
        tmp.path(),
        &format!("{}:v1", path_str(&layout)),
        &["t.txt", "--oci-layout"],
    ));
    for bad in ["bad tag", "../up", "a,b", ""] {
        assert_fails(
            &oras_fs([
                "tag",
                "--oci-layout",
                &format!("{}:v1", path_str(&layout)),
                bad,
            ]),
            "tag",
        );
    }
    assert_eq!(
        tags(&["--oci-layout", path_str(&layout)]),
        BTreeSet::from(["v1".to_string()])
    );
}

#[test]
fn tag_resolve_and_tags_in_an_oci_layout() {
    let tmp = temp_dir();
    let layout = tmp.path().join("store");
    write_file(&tmp.path().join("f.txt"), "layout tag test\n");
    let digest = push_files(
        tmp.path(),
        &format!("{}:v1", path_str(&layout)),
        &["f.txt", "--oci-layout"],
    );
    ok(&[
        "tag",
        "--oci-layout",
        &format!("{}:v1", path_str(&layout)),
        "x",
        "y",
    ]);
    for t in ["v1", "x", "y"] {
        assert_eq!(
            resolve(&["--oci-layout", &format!("{}:{t}", path_str(&layout))]),
            digest
        );
    }
    assert_eq!(
        tags(&["--oci-layout", path_str(&layout)]),
        ["v1", "x", "y"].into_iter().map(String::from).collect()
    );
}

// --- manifest ---------------------------------------------------------------------------------

#[test]
fn manifest_fetch_to_stdout_to_a_file_and_as_a_descriptor() {
    require_registry!();
    let repo = unique_repo("manifest-fetch");
    let tmp = temp_dir();
    write_file(
        &tmp.path().join("m.txt"),
        format!("manifest fetch {repo}\n"),
    );
    let digest = push_files(tmp.path(), &reference(&repo, "v1"), &["m.txt"]);
    let (_, bytes) = get_manifest(&repo, "v1");
    assert_eq!(sha256_bytes(&bytes), digest);

    let out = oras_fs(["manifest", "fetch", &reference(&repo, "v1")]);
    assert_ok(&out);
    assert_eq!(out.stdout, bytes, "stdout is the manifest byte for byte");

    let file = tmp.path().join("fetched.json");
    let out = ok(&[
        "manifest",
        "fetch",
        &format!("{}/{repo}@{digest}", registry()),
        "-o",
        path_str(&file),
    ]);
    assert!(out.is_empty(), "nothing on stdout with -o FILE: {out:?}");
    assert_eq!(read_file(&file), bytes);

    let desc = json(ok(&["manifest", "fetch", &reference(&repo, "v1"), "--descriptor"]).as_bytes());
    assert_eq!(desc["digest"], digest.as_str(), "{desc}");
    assert_eq!(desc["size"], bytes.len() as u64, "{desc}");
    assert_eq!(desc["mediaType"], OCI_MANIFEST, "{desc}");

    assert_fails(
        &oras_fs(["manifest", "fetch", &reference(&repo, "nope")]),
        "not found",
    );
}

#[test]
fn manifest_push_round_trips_and_checks_the_digest() {
    require_registry!();
    let repo = unique_repo("manifest-push");
    let tmp = temp_dir();
    write_file(&tmp.path().join("p.txt"), format!("manifest push {repo}\n"));
    let digest = push_files(tmp.path(), &reference(&repo, "v1"), &["p.txt"]);
    let file = tmp.path().join("manifest.json");
    ok(&[
        "manifest",
        "fetch",
        &reference(&repo, "v1"),
        "-o",
        path_str(&file),
    ]);

    // Under a new tag (two, in fact).
    let out = ok(&[
        "manifest",
        "push",
        &reference(&repo, "again,also"),
        path_str(&file),
    ]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert_eq!(resolve(&[&reference(&repo, "again")]), digest);
    assert_eq!(resolve(&[&reference(&repo, "also")]), digest);
    assert_eq!(get_manifest(&repo, "again").1, read_file(&file));
    assert_eq!(
        pulled(&reference(&repo, "again"), &[]),
        tree_without(tmp.path(), "manifest.json")
    );

    // By its digest, from stdin.
    let out = oras_fs_stdin(
        [
            "manifest",
            "push",
            &format!("{}/{repo}@{digest}", registry()),
            "-",
        ],
        &read_file(&file),
    );
    assert!(
        assert_ok(&out).contains(&format!("Digest: {digest}")),
        "{}",
        describe(&out)
    );

    // A file that is not what REF@digest names is refused, and nothing is stored.
    let mut changed = read_file(&file);
    changed.extend_from_slice(b"\n");
    let changed_file = tmp.path().join("changed.json");
    write_file(&changed_file, &changed);
    assert_fails(
        &oras_fs([
            "manifest",
            "push",
            &format!("{}/{repo}@{digest}", registry()),
            path_str(&changed_file),
        ]),
        "mismatch",
    );
    assert_eq!(
        manifest_status(&repo, &sha256_bytes(&changed)),
        404,
        "the mismatching manifest was stored"
    );

    // Not a manifest at all.
    let junk = tmp.path().join("junk.json");
    write_file(&junk, "{\"hello\": 1}");
    assert_fails(
        &oras_fs([
            "manifest",
            "push",
            &reference(&repo, "junk"),
            path_str(&junk),
        ]),
        "mediaType",
    );
}

/// `tree(dir)` without one file.
fn tree_without(dir: &Path, name: &str) -> BTreeMap<String, Vec<u8>> {
    let mut t = tree(dir);
    t.remove(name);
    t
}

#[test]
fn manifest_delete_then_resolve_fails() {
    require_registry!();
    let repo = unique_repo("manifest-delete");
    let tmp = temp_dir();
    write_file(&tmp.path().join("keep.txt"), format!("keep {repo}\n"));
    write_file(&tmp.path().join("gone.txt"), format!("gone {repo}\n"));
    let keep = push_files(tmp.path(), &reference(&repo, "keep"), &["keep.txt"]);
    let gone = push_files(tmp.path(), &reference(&repo, "gone"), &["gone.txt"]);

    let out = ok(&["manifest", "delete", "-f", &reference(&repo, "gone")]);
    assert!(out.contains(&format!("Deleted {gone}")), "{out}");
    assert_fails(
        &oras_fs(["resolve", &reference(&repo, "gone")]),
        "not found",
    );
    assert_fails(
        &oras_fs(["resolve", &format!("{}/{repo}@{gone}", registry())]),
        "not found",
    );
    assert_fails(
        &oras_fs(["manifest", "delete", &reference(&repo, "gone")]),
        "not found",
    );
    // The other manifest is untouched.
    assert_eq!(resolve(&[&reference(&repo, "keep")]), keep);
    assert!(!tags(&[&format!("{}/{repo}", registry())]).contains("gone"));

    // By digest.
    ok(&[
        "manifest",
        "delete",
        "--force",
        &format!("{}/{repo}@{keep}", registry()),
    ]);
    assert_fails(
        &oras_fs(["resolve", &reference(&repo, "keep")]),
        "not found",
    );
}

#[test]
fn manifest_fetch_config() {
    require_registry!();
    let repo = unique_repo("fetch-config");
    let tmp = temp_dir();
    let config = format!("{{\"config of\":\"{repo}\"}}");
    write_file(&tmp.path().join("config.json"), &config);
    write_file(&tmp.path().join("c.txt"), "layer\n");
    let out = oras_fs_in(
        tmp.path(),
        [
            "push",
            &reference(&repo, "v1"),
            "c.txt",
            "--config",
            "config.json:application/vnd.test.config.v1+json",
            "--no-tty",
        ],
    );
    assert_ok(&out);
    let manifest = json(&get_manifest(&repo, "v1").1);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.test.config.v1+json"
    );

    let out = oras_fs(["manifest", "fetch-config", &reference(&repo, "v1")]);
    assert_ok(&out);
    assert_eq!(out.stdout, config.as_bytes());
    let file = tmp.path().join("out.json");
    ok(&[
        "manifest",
        "fetch-config",
        &reference(&repo, "v1"),
        "-o",
        path_str(&file),
    ]);
    assert_eq!(read_file(&file), config.as_bytes());

    // Without --config, the config is the empty JSON object.
    push_files(tmp.path(), &reference(&repo, "plain"), &["c.txt"]);
    let out = oras_fs(["manifest", "fetch-config", &reference(&repo, "plain")]);
    assert_ok(&out);
    assert_eq!(out.stdout, b"{}");
    assert_eq!(
        json(&get_manifest(&repo, "plain").1)["config"]["digest"],
        EMPTY_CONFIG_DIGEST
    );
}

// --- blob -------------------------------------------------------------------------------------

#[test]
fn blob_push_fetch_and_delete() {
    require_registry!();
    let repo = unique_repo("blob");
    let tmp = temp_dir();
    let file = tmp.path().join("blob.bin");
    write_random_file(&file, &repo, 1_500_000);
    let digest = sha256_file(&file);
    let bref = format!("{}/{repo}@{digest}", registry());

    let out = ok(&[
        "blob",
        "push",
        &format!("{}/{repo}", registry()),
        path_str(&file),
    ]);
    assert!(out.contains(&format!("Pushed {digest}")), "{out}");
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert_eq!(sha256_file(&blob_path(&registry_dir(), &digest)), digest);
    // Again: the registry has it.
    let out = ok(&["blob", "push", &bref, path_str(&file)]);
    assert!(out.contains(&format!("Exists {digest}")), "{out}");

    let fetched = tmp.path().join("fetched.bin");
    ok(&["blob", "fetch", &bref, "-o", path_str(&fetched)]);
    assert_eq!(read_file(&fetched), read_file(&file));
    // An existing file is replaced.
    write_file(&fetched, "old");
    ok(&["blob", "fetch", &bref, "-o", path_str(&fetched)]);
    assert_eq!(read_file(&fetched), read_file(&file));

    let out = oras_fs(["blob", "fetch", &bref, "-o", "-"]);
    assert_ok(&out);
    assert_eq!(
        out.stdout,
        read_file(&file),
        "-o - writes the blob to stdout"
    );
    // A reader that stops early (`| head -c 10`) ends the command quietly, as for `cat`.
    let mut child = oras_fs_cmd(["blob", "fetch", &bref, "-o", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting oras-fs");
    let mut head = [0u8; 10];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut head).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_ok(&out);
    assert_eq!(stderr_of(&out), "", "a closed stdout is not an error");

    // A file whose digest is not the one named is refused.
    let other = tmp.path().join("other.bin");
    write_file(&other, "other");
    assert_fails(
        &oras_fs(["blob", "push", &bref, path_str(&other)]),
        "mismatch",
    );
    assert_fails(
        &oras_fs([
            "blob",
            "fetch",
            &format!("{}/{repo}", registry()),
            "-o",
            "-",
        ]),
        "digest",
    );

    let out = ok(&["blob", "delete", "-f", &bref]);
    assert!(out.contains(&format!("Deleted {digest}")), "{out}");
    let gone = tmp.path().join("gone.bin");
    assert_fails(
        &oras_fs(["blob", "fetch", &bref, "-o", path_str(&gone)]),
        "not found",
    );
    assert!(!gone.exists(), "a failed fetch left {}", gone.display());
    assert_fails(&oras_fs(["blob", "fetch", &bref, "-o", "-"]), "not found");
    assert_fails(&oras_fs(["blob", "delete", &bref]), "not found");
}

#[test]
fn blob_push_from_stdin() {
    require_registry!();
    let repo = unique_repo("blob-stdin");
    let data = random_bytes(&repo, 700_000);
    let digest = sha256_bytes(&data);
    let bref = format!("{}/{repo}@{digest}", registry());
    let size = data.len().to_string();

    let out = oras_fs_stdin(["blob", "push", &bref, "-", "--size", &size], &data);
    assert!(
        assert_ok(&out).contains(&format!("Pushed {digest}")),
        "{}",
        describe(&out)
    );
    let out = oras_fs(["blob", "fetch", &bref, "-o", "-"]);
    assert_ok(&out);
    assert_eq!(out.stdout, data);

    // stdin needs both the size and the digest.
    assert_fails(
        &oras_fs_stdin(["blob", "push", &bref, "-"], &data),
        "--size",
    );
    assert_fails(
        &oras_fs_stdin(
            [
                "blob",
                "push",
                &format!("{}/{repo}", registry()),
                "-",
                "--size",
                &size,
            ],
            &data,
        ),
        "digest",
    );
    // Bytes that are not what the digest names are not stored.
    let other = random_bytes(&format!("{repo}-other"), 1000);
    let wrong = sha256_bytes(b"something else");
    let out = oras_fs_stdin(
        [
            "blob",
            "push",
            &format!("{}/{repo}@{wrong}", registry()),
            "-",
            "--size",
            "1000",
        ],
        &other,
    );
    assert!(!out.status.success(), "{}", describe(&out));
    for d in [&wrong, &sha256_bytes(&other)] {
        assert_eq!(blob_status(&repo, d), 404, "{d} was stored");
    }
}

// --- attach, discover -------------------------------------------------------------------------

/// Distribution 2.8 has no referrers API: `GET /v2/<repo>/referrers/<digest>` is a 404, so
/// `attach` keeps the tag-schema index `sha256-<hex of the subject>` and `discover` reads it.
#[test]
fn attach_and_discover_use_the_referrers_tag_schema_on_distribution() {
    require_registry!();
    let repo = unique_repo("attach");
    let tmp = temp_dir();
    write_file(&tmp.path().join("subject.txt"), format!("subject {repo}\n"));
    write_file(
        &tmp.path().join("sbom.json"),
        format!("{{\"sbom\":\"{repo}\"}}"),
    );
    write_file(&tmp.path().join("sig.txt"), format!("sig {repo}\n"));
    let subject = push_files(tmp.path(), &reference(&repo, "v1"), &["subject.txt"]);

    let out = oras_fs_in(
        tmp.path(),
        [
            "attach",
            "--artifact-type",
            "application/vnd.test.sbom",
            &reference(&repo, "v1"),
            "sbom.json",
            "-a",
            "test.key=test value",
        ],
    );
    let stdout = assert_ok(&out);
    assert!(
        stdout.contains(&format!(
            "Attached to [registry] {}/{repo}@{subject}",
            registry()
        )),
        "{stdout}"
    );
    let sbom = digest_of_stdout(&out);

    // The referrer names its subject.
    let m = json(&get_manifest(&repo, &sbom).1);
    assert_eq!(m["subject"]["digest"], subject.as_str(), "{m}");
    assert_eq!(m["artifactType"], "application/vnd.test.sbom", "{m}");
    assert_eq!(m["annotations"]["test.key"], "test value", "{m}");

    // The fallback tag exists and its index lists the referrer.
    let fallback = referrers_tag(&subject);
    assert!(
        tags(&[&format!("{}/{repo}", registry())]).contains(&fallback),
        "no {fallback} tag"
    );
    let resp = http(
        &registry(),
        "GET",
        &format!("/v2/{repo}/manifests/{fallback}"),
        &[("Accept", OCI_INDEX)],
        b"",
    );
    assert_eq!(resp.status, 200);
    let index = json(&resp.body);
    assert_eq!(index["mediaType"], OCI_INDEX, "{index}");
    assert_eq!(index["manifests"][0]["digest"], sbom.as_str(), "{index}");
    assert_eq!(
        index["manifests"][0]["artifactType"],
        "application/vnd.test.sbom"
    );

    // The index is a manifest like any other: it fetches and pushes as such.
    let index_file = tmp.path().join("index.json");
    ok(&[
        "manifest",
        "fetch",
        &reference(&repo, &fallback),
        "-o",
        path_str(&index_file),
    ]);
    assert_eq!(read_file(&index_file), resp.body);
    ok(&[
        "manifest",
        "push",
        &reference(&repo, "index-copy"),
        path_str(&index_file),
    ]);
    let desc = json(
        ok(&[
            "manifest",
            "fetch",
            &reference(&repo, "index-copy"),
            "--descriptor",
        ])
        .as_bytes(),
    );
    assert_eq!(desc["mediaType"], OCI_INDEX, "{desc}");
    assert_eq!(desc["digest"], sha256_bytes(&resp.body).as_str(), "{desc}");

    let offset = log_offset(&registry_log());
    let text = ok(&["discover", &reference(&repo, "v1")]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!("{}/{repo}@{subject}", registry()),
        "{text}"
    );
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[1].contains("application/vnd.test.sbom") && lines[1].contains(&sbom),
        "{text}"
    );
    // discover asked for the referrers API, got a 404 (an unknown route to Distribution 2.8,
    // which logs it in its access log only), and read the fallback tag.
    log_until(offset, "discover's read of the fallback tag", |e| {
        e.iter()
            .any(|e| e.uri == format!("/v2/{repo}/manifests/{fallback}") && e.status == 200)
    });
    let api = format!("/v2/{repo}/referrers/{subject}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !logged_requests(&registry_log(), &api)
        .iter()
        .any(|r| r.method == "GET" && r.status == 404)
    {
        assert!(
            Instant::now() < deadline,
            "no 404 to GET {api} in the access log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let listed = discovered(&[&reference(&repo, "v1")]);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["digest"], sbom.as_str());
    assert_eq!(listed[0]["artifactType"], "application/vnd.test.sbom");
    assert_eq!(listed[0]["annotations"]["test.key"], "test value");

    // A second referrer joins the same index; --artifact-type filters.
    let out = oras_fs_in(
        tmp.path(),
        [
            "attach",
            "--artifact-type",
            "application/vnd.test.sig",
            &format!("{}/{repo}@{subject}", registry()),
            "sig.txt",
            "--format",
            "json",
        ],
    );
    let v = json(assert_ok(&out).as_bytes());
    let sig = v["digest"].as_str().expect("digest").to_string();
    assert_eq!(v["artifactType"], "application/vnd.test.sig", "{v}");
    assert_eq!(
        digests_of(&discovered(&[&reference(&repo, "v1")])),
        BTreeSet::from([sbom.clone(), sig.clone()])
    );
    assert_eq!(
        digests_of(&discovered(&[
            &reference(&repo, "v1"),
            "--artifact-type",
            "application/vnd.test.sig"
        ])),
        BTreeSet::from([sig.clone()])
    );
    let text = ok(&["discover", &reference(&repo, "v1")]);
    assert!(text.contains(&sbom) && text.contains(&sig), "{text}");

    // A subject without referrers.
    push_files(tmp.path(), &reference(&repo, "lonely"), &["sig.txt"]);
    assert!(discovered(&[&reference(&repo, "lonely")]).is_empty());
    assert_fails(
        &oras_fs_in(
            tmp.path(),
            [
                "attach",
                "--artifact-type",
                "application/vnd.test.x",
                &reference(&repo, "missing"),
                "sig.txt",
            ],
        ),
        "not found",
    );
}

/// `attach` names files the way `push` does: a path that `pull` would refuse (absolute, or
/// with `..`) is refused up front unless `--disable-path-validation` is given.
#[test]
fn attach_refuses_file_names_that_pull_would_refuse() {
    require_registry!();
    let repo = unique_repo("attach-names");
    let tmp = temp_dir();
    write_file(&tmp.path().join("s.txt"), format!("subject {repo}\n"));
    write_file(&tmp.path().join("abs.txt"), "absolute\n");
    push_files(tmp.path(), &reference(&repo, "v1"), &["s.txt"]);
    let abs = tmp.path().join("abs.txt");
    // push refuses it...
    assert_fails(
        &oras_fs(["push", &reference(&repo, "abs"), path_str(&abs), "--no-tty"]),
        "unsafe",
    );
    // ...and so must attach, rather than store a referrer that pull refuses.
    assert_fails(
        &oras_fs([
            "attach",
            "--artifact-type",
            "application/vnd.test.abs",
            &reference(&repo, "v1"),
            path_str(&abs),
        ]),
        "unsafe",
    );
    assert!(discovered(&[&reference(&repo, "v1")]).is_empty());
}

/// The referrers API path of `discover` and `copy -r`: Distribution 2.8 lacks the API, so a
/// proxy in front of it answers `GET /v2/<repo>/referrers/<subject>` with an index of its own.
/// What is listed must be the API's answer, and the fallback tag must not be read.
#[test]
fn discover_and_copy_use_the_referrers_api_when_the_registry_has_it() {
    require_registry!();
    let repo = unique_repo("referrers-api");
    let dst = unique_repo("referrers-api-dst");
    let tmp = temp_dir();
    write_file(&tmp.path().join("s.txt"), format!("subject {repo}\n"));
    write_file(&tmp.path().join("r.txt"), format!("referrer {repo}\n"));
    let subject = push_files(tmp.path(), &reference(&repo, "v1"), &["s.txt"]);
    let real = attach(
        tmp.path(),
        "application/vnd.test.real",
        &reference(&repo, "v1"),
        &["r.txt"],
    );
    let (_, real_bytes) = get_manifest(&repo, &real);
    let api_only = sha256_bytes(format!("api only {repo}").as_bytes());
    let served = |entries: Vec<Value>| Fault::Serve {
        status: 200,
        content_type: OCI_INDEX.to_string(),
        body: std::sync::Arc::new(
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": entries,
            }))
            .expect("JSON"),
        ),
    };
    let real_entry = serde_json::json!({
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.test.real",
        "digest": real,
        "size": real_bytes.len(),
    });

    let proxy = FaultProxy::start(&registry());
    proxy.add(Rule::new(
        "GET",
        &format!("/referrers/{subject}"),
        served(vec![
            real_entry.clone(),
            serde_json::json!({
                "mediaType": OCI_MANIFEST,
                "artifactType": "application/vnd.test.api-only",
                "digest": api_only,
                "size": 123,
            }),
        ]),
    ));
    let listed = discovered(&[&proxy.reference(&repo, "v1")]);
    assert_eq!(
        digests_of(&listed),
        BTreeSet::from([real.clone(), api_only.clone()]),
        "{listed:#?}"
    );
    let text = ok(&["discover", &proxy.reference(&repo, "v1")]);
    assert!(
        text.contains("application/vnd.test.api-only") && text.contains(&api_only),
        "{text}"
    );
    let fallback = referrers_tag(&subject);
    assert!(
        proxy.matching("*", &fallback).is_empty(),
        "the fallback tag was read although the API answered: {:#?}",
        proxy.matching("*", &fallback)
    );

    // copy -r takes the referrers the API lists.
    proxy.clear();
    proxy.add(Rule::new(
        "GET",
        &format!("/referrers/{subject}"),
        served(vec![real_entry]),
    ));
    ok(&[
        "copy",
        "-r",
        &proxy.reference(&repo, "v1"),
        &reference(&dst, "v1"),
        "--no-tty",
    ]);
    assert!(proxy.matching("*", &fallback).is_empty());
    assert_eq!(
        digests_of(&discovered(&[&reference(&dst, "v1")])),
        BTreeSet::from([real.clone()])
    );
    assert_eq!(get_manifest(&dst, &real).1, real_bytes);
}

/// The second implementation of referrers: an OCI layout has no referrers API nor fallback tag;
/// its referrers are the manifests of `index.json` whose `subject` is the digest. (The API path
/// of a registry cannot be exercised against Distribution 2.8, which lacks the API; see the
/// proxy test above for it.)
#[test]
fn attach_and_discover_in_an_oci_layout() {
    require_registry!();
    let tmp = temp_dir();
    let layout = tmp.path().join("store");
    let lref = format!("{}:v1", path_str(&layout));
    write_file(&tmp.path().join("subject.txt"), "layout subject\n");
    write_file(&tmp.path().join("sig.txt"), "layout signature\n");
    write_file(
        &tmp.path().join("att.txt"),
        "attestation of the signature\n",
    );
    let subject = push_files(tmp.path(), &lref, &["subject.txt", "--oci-layout"]);
    let out = oras_fs_in(
        tmp.path(),
        [
            "attach",
            "--oci-layout",
            "--artifact-type",
            "application/vnd.test.signature",
            &lref,
            "sig.txt",
        ],
    );
    let stdout = assert_ok(&out);
    assert!(stdout.contains("Attached to [oci-layout]"), "{stdout}");
    let sig = digest_of_stdout(&out);
    let att = attach(
        tmp.path(),
        "application/vnd.test.attestation",
        &format!("{}@{sig}", path_str(&layout)),
        &["att.txt", "--oci-layout"],
    );

    let listed = discovered(&["--oci-layout", &lref]);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["digest"], sig.as_str());
    assert_eq!(listed[0]["artifactType"], "application/vnd.test.signature");
    assert_discover_tree(
        &ok(&["discover", "--oci-layout", &lref]),
        &format!("{}@{subject}", path_str(&layout)),
        ("application/vnd.test.signature", &sig),
        ("application/vnd.test.attestation", &att),
    );
    assert_eq!(
        digests_of(&discovered(&[
            "--oci-layout",
            &lref,
            "--artifact-type",
            "application/vnd.test.attestation"
        ])),
        BTreeSet::new(),
        "the filter applies to direct referrers"
    );
    // No fallback tag in a layout: only the tag given.
    assert_eq!(
        tags(&["--oci-layout", path_str(&layout)]),
        BTreeSet::from(["v1".to_string()])
    );

    // The layout's referrers are a source for copy -r to a registry.
    let repo = unique_repo("attach-layout");
    ok(&[
        "copy",
        "-r",
        "--from-oci-layout",
        &lref,
        &reference(&repo, "v1"),
        "--no-tty",
    ]);
    assert_eq!(
        digests_of(&discovered(&[&reference(&repo, "v1")])),
        BTreeSet::from([sig.clone()])
    );
    assert_eq!(
        digests_of(&discovered(&[&format!("{}/{repo}@{sig}", registry())])),
        BTreeSet::from([att])
    );
}

// --- pull -o -, push -, --reproducible ----------------------------------------------------------

#[test]
fn pull_to_stdout_streams_a_single_file() {
    require_registry!();
    let repo = unique_repo("pull-stdout");
    let tmp = temp_dir();
    write_random_file(&tmp.path().join("one.bin"), &repo, 2_500_000);
    push_files(tmp.path(), &reference(&repo, "v1"), &["one.bin"]);
    let out = oras_fs(["pull", &reference(&repo, "v1"), "-o", "-"]);
    assert_ok(&out);
    assert!(
        out.stdout == read_file(&tmp.path().join("one.bin")),
        "stdout ({} bytes) differs from the file",
        out.stdout.len()
    );
    assert!(!tmp.path().join("-").exists());

    // With two files, it fails with a message.
    write_file(&tmp.path().join("a.txt"), "text a\n");
    write_file(&tmp.path().join("b.txt"), "text b\n");
    push_files(tmp.path(), &reference(&repo, "two"), &["a.txt", "b.txt"]);
    let out = oras_fs(["pull", &reference(&repo, "two"), "-o", "-"]);
    let stderr = assert_fails(&out, "-o - writes a single file");
    assert!(stderr.contains("2 layers"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", describe(&out));

    // The media type filter picks among layers: the default one, or -t.
    write_file(&tmp.path().join("b.md"), "markdown b\n");
    push_files(
        tmp.path(),
        &reference(&repo, "typed"),
        &["a.txt", "b.md:text/markdown"],
    );
    let out = oras_fs(["pull", &reference(&repo, "typed"), "-o", "-"]);
    assert_ok(&out);
    assert_eq!(out.stdout, b"text a\n");
    let out = oras_fs([
        "pull",
        &reference(&repo, "typed"),
        "-o",
        "-",
        "-t",
        "text/markdown",
    ]);
    assert_ok(&out);
    assert_eq!(out.stdout, b"markdown b\n");
    assert_fails(
        &oras_fs(["pull", &reference(&repo, "typed"), "-o", "-", "-a"]),
        "2 layers",
    );
    assert_fails(
        &oras_fs([
            "pull",
            &reference(&repo, "typed"),
            "-o",
            "-",
            "-t",
            "text/none",
        ]),
        "no file",
    );
}

#[test]
fn push_from_stdin_with_a_title() {
    require_registry!();
    let repo = unique_repo("push-stdin");
    let data = random_bytes(&repo, 400_000);
    let out = oras_fs_stdin(
        [
            "push",
            &reference(&repo, "v1"),
            "-",
            "--title",
            "named.bin",
            "--no-tty",
        ],
        &data,
    );
    assert_ok(&out);
    let digest = digest_of_stdout(&out);
    let m = json(&get_manifest(&repo, "v1").1);
    assert_eq!(
        m["layers"][0]["annotations"]["org.opencontainers.image.title"],
        "named.bin"
    );
    assert_eq!(m["layers"][0]["digest"], sha256_bytes(&data).as_str());
    assert_eq!(
        pulled(&reference(&repo, "v1"), &[]),
        BTreeMap::from([("named.bin".to_string(), data.clone())])
    );
    let out = oras_fs([
        "pull",
        &format!("{}/{repo}@{digest}", registry()),
        "-o",
        "-",
    ]);
    assert_ok(&out);
    assert!(out.stdout == data, "pull -o - differs");

    // With a media type, and next to a file.
    let tmp = temp_dir();
    write_file(&tmp.path().join("side.txt"), "side\n");
    let out = run_with_stdin(
        oras_fs_cmd([
            "push",
            &reference(&repo, "v2"),
            "side.txt",
            "--title",
            "from-stdin.txt",
            "--no-tty",
            // clap takes `-:TYPE` for an unknown flag unless it follows `--`.
            "--",
            "-:text/plain",
        ])
        .current_dir(tmp.path()),
        b"typed stdin\n",
    );
    assert_ok(&out);
    let m = json(&get_manifest(&repo, "v2").1);
    assert_eq!(m["layers"][1]["mediaType"], "text/plain", "{m}");
    assert_eq!(
        pulled(&reference(&repo, "v2"), &["-a"]),
        BTreeMap::from([
            ("from-stdin.txt".to_string(), b"typed stdin\n".to_vec()),
            ("side.txt".to_string(), b"side\n".to_vec()),
        ])
    );

    assert_fails(
        &oras_fs_stdin(["push", &reference(&repo, "v3"), "-", "--no-tty"], b"x"),
        "--title",
    );
    assert_fails(
        &oras_fs_stdin(
            [
                "push",
                &reference(&repo, "v3"),
                "-",
                "--title",
                "../escape.txt",
                "--no-tty",
            ],
            b"x",
        ),
        "unsafe",
    );
}

/// The `created` annotation of the manifest `repo:tag`, if any.
fn created_of(repo: &str, tag: &str) -> Option<String> {
    json(&get_manifest(repo, tag).1)["annotations"]["org.opencontainers.image.created"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn reproducible_push_of_a_file_gives_the_same_digest() {
    require_registry!();
    let repo = unique_repo("reproducible-file");
    let tmp = temp_dir();
    write_file(&tmp.path().join("r.txt"), format!("reproducible {repo}\n"));
    let push = |tag: &str, extra: &[&str]| {
        let r = reference(&repo, tag);
        let mut args = vec!["r.txt"];
        args.extend_from_slice(extra);
        push_files(tmp.path(), &r, &args)
    };
    let first = push("a", &["--reproducible"]);
    let plain_first = push("plain-a", &[]);
    // Cross a second boundary: a `created` timestamp would differ now.
    std::thread::sleep(Duration::from_millis(1100));
    let second = push("b", &["--reproducible"]);
    let plain_second = push("plain-b", &[]);
    assert_eq!(first, second, "--reproducible pushes differ");
    assert_eq!(created_of(&repo, "a"), None);
    assert_ne!(
        plain_first, plain_second,
        "without --reproducible the created timestamps should differ (is the test still meaningful?)"
    );
    assert!(created_of(&repo, "plain-a").is_some());
}

#[test]
fn reproducible_push_of_a_directory_ignores_mtimes() {
    require_registry!();
    let repo = unique_repo("reproducible-dir");
    let tmp = temp_dir();
    let dir = tmp.path().join("tree");
    write_file(&dir.join("top.txt"), format!("top {repo}\n"));
    write_file(&dir.join("sub/inner.txt"), "inner\n");
    write_random_file(&dir.join("sub/data.bin"), &repo, 100_000);
    let first = push_files(
        tmp.path(),
        &reference(&repo, "a"),
        &["tree", "--reproducible"],
    );
    let plain_first = push_files(tmp.path(), &reference(&repo, "plain-a"), &["tree"]);
    std::thread::sleep(Duration::from_millis(1100));
    // Touch everything: new mtimes (a fixed time far from now, so they surely change).
    let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for p in [
        dir.join("top.txt"),
        dir.join("sub/inner.txt"),
        dir.join("sub/data.bin"),
        dir.join("sub"),
        dir.clone(),
    ] {
        std::fs::File::open(&p)
            .and_then(|f| f.set_modified(when))
            .unwrap_or_else(|e| panic!("touching {}: {e}", p.display()));
    }
    let second = push_files(
        tmp.path(),
        &reference(&repo, "b"),
        &["tree", "--reproducible"],
    );
    let plain_second = push_files(tmp.path(), &reference(&repo, "plain-b"), &["tree"]);
    assert_eq!(first, second, "--reproducible directory pushes differ");
    let layer = |tag: &str| json(&get_manifest(&repo, tag).1)["layers"][0]["digest"].clone();
    assert_eq!(layer("a"), layer("b"));
    assert_ne!(
        layer("plain-a"),
        layer("plain-b"),
        "without --reproducible the tar keeps mtimes (is the test still meaningful?)"
    );
    assert_ne!(plain_first, plain_second);
    let files = tree(tmp.path());
    assert_eq!(pulled(&reference(&repo, "b"), &[]), files);
}
