//! End-to-end tests of `oras-fs push` / `pull` / `login` / `logout` against a real registry
//! (CNCF Distribution), and interop with the Python ORAS SDK. Run with `scripts/test.sh`.
//!
//! Each test uses its own repository and content that no other test pushes, so they can run in
//! parallel against one registry.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const DEFAULT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const DIRECTORY_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const TITLE: &str = "org.opencontainers.image.title";

/// The manifest behind `repo:reference` on the main registry, parsed.
fn manifest(repo: &str, reference: &str) -> Value {
    json(&get_manifest(repo, reference).1)
}

fn layer_titles(m: &Value) -> Vec<String> {
    m["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            l["annotations"][TITLE]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Asserts `dir` holds nothing but `expected` (names of direct entries), in particular no
/// `.oras-fs-partial-*` or `.oras-fs-unpack-*` leftovers.
#[track_caller]
fn assert_dir_has_only(dir: &Path, expected: &[&str]) {
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(list_dir(dir), expected, "entries of {}", dir.display());
}

// --- Round trips ------------------------------------------------------------------------------

#[test]
fn round_trip_single_file_with_default_media_type() {
    require_registry!();
    let repo = unique_repo("single");
    let tmp = temp_dir();
    let content = format!("hello from {repo}\n");
    write_file(&tmp.path().join("hello.txt"), &content);

    let out = push(tmp.path(), &reference(&repo, "v1"), &["hello.txt"]);
    assert_ok(&out);
    let digest = digest_of_stdout(&out);
    assert!(stdout_of(&out).contains("ArtifactType: application/vnd.unknown.artifact.v1"));

    let m = manifest(&repo, "v1");
    assert_eq!(m["mediaType"], OCI_MANIFEST);
    assert_eq!(m["artifactType"], "application/vnd.unknown.artifact.v1");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    assert_eq!(m["layers"][0]["mediaType"], DEFAULT_LAYER);
    assert_eq!(
        m["layers"][0]["digest"],
        sha256_bytes(content.as_bytes()).as_str()
    );
    assert_eq!(m["layers"][0]["size"], content.len());
    assert_eq!(layer_titles(&m), ["hello.txt"]);
    assert!(m["annotations"]["org.opencontainers.image.created"].is_string());

    let dest = tmp.path().join("out");
    let out = pull(&reference(&repo, "v1"), &dest, &[]);
    assert_ok(&out);
    assert_eq!(digest_of_stdout(&out), digest);
    assert_eq!(read_file(&dest.join("hello.txt")), content.as_bytes());
    assert_dir_has_only(&dest, &["hello.txt"]);
    assert!(!stderr_of(&out).contains("Skipped"), "{}", describe(&out));

    // By digest too.
    let dest = tmp.path().join("by-digest");
    let out = pull(&format!("{}/{repo}@{digest}", registry()), &dest, &[]);
    assert_ok(&out);
    assert_eq!(read_file(&dest.join("hello.txt")), content.as_bytes());

    // No tag means `latest`, on push and on pull.
    let out = push(
        tmp.path(),
        &format!("{}/{repo}", registry()),
        &["hello.txt"],
    );
    assert_ok(&out);
    let dest = tmp.path().join("latest");
    let out = pull(&reference(&repo, "latest"), &dest, &[]);
    assert_ok(&out);
    let out2 = pull(
        &format!("{}/{repo}", registry()),
        &tmp.path().join("latest2"),
        &[],
    );
    assert_eq!(digest_of_stdout(&out), digest_of_stdout(&out2));
    assert_eq!(read_file(&dest.join("hello.txt")), content.as_bytes());
}

#[test]
fn custom_media_types_are_filtered_on_pull() {
    require_registry!();
    let repo = unique_repo("types");
    let tmp = temp_dir();
    for name in ["a.txt", "b.txt", "c.txt"] {
        write_file(&tmp.path().join(name), format!("{name} of {repo}"));
    }
    let r = reference(&repo, "v1");
    let out = push(
        tmp.path(),
        &r,
        &[
            "a.txt:application/vnd.example.a",
            "b.txt:application/vnd.example.b",
            "c.txt",
        ],
    );
    assert_ok(&out);
    let m = manifest(&repo, "v1");
    let types: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "application/vnd.example.a",
            "application/vnd.example.b",
            DEFAULT_LAYER
        ]
    );
    assert_eq!(layer_titles(&m), ["a.txt", "b.txt", "c.txt"]);

    // Default: only the default layer type, and a hint about the rest.
    let dest = tmp.path().join("default");
    let out = pull(&r, &dest, &[]);
    assert_ok(&out);
    assert_dir_has_only(&dest, &["c.txt"]);
    let stderr = stderr_of(&out);
    for needle in [
        "Skipped 2 layer(s)",
        "application/vnd.example.a",
        "application/vnd.example.b",
        "a.txt",
        "b.txt",
        "-t TYPE",
        "-a/--allow-all",
    ] {
        assert!(
            stderr.contains(needle),
            "hint lacks {needle:?}\n{}",
            describe(&out)
        );
    }

    // -t takes exactly the types named.
    let dest = tmp.path().join("only-a");
    let out = pull(&r, &dest, &["-t", "application/vnd.example.a"]);
    assert_ok(&out);
    assert_dir_has_only(&dest, &["a.txt"]);
    assert!(
        stderr_of(&out).contains("Skipped 2 layer(s)"),
        "{}",
        describe(&out)
    );

    let dest = tmp.path().join("a-and-b");
    let out = pull(
        &r,
        &dest,
        &[
            "-t",
            "application/vnd.example.a",
            "--media-type",
            "application/vnd.example.b",
        ],
    );
    assert_ok(&out);
    assert_dir_has_only(&dest, &["a.txt", "b.txt"]);

    // -a takes everything titled, silently.
    let dest = tmp.path().join("all");
    let out = pull(&r, &dest, &["-a"]);
    assert_ok(&out);
    assert_dir_has_only(&dest, &["a.txt", "b.txt", "c.txt"]);
    for name in ["a.txt", "b.txt", "c.txt"] {
        assert_eq!(
            read_file(&dest.join(name)),
            format!("{name} of {repo}").as_bytes()
        );
    }
    assert!(!stderr_of(&out).contains("Skipped"), "{}", describe(&out));
}

#[test]
fn several_files_keep_their_relative_paths_as_titles() {
    require_registry!();
    let repo = unique_repo("nested");
    let tmp = temp_dir();
    let src = tmp.path().join("src");
    write_file(&src.join("one.txt"), format!("one {repo}"));
    write_file(&src.join("a/b/c.txt"), format!("c {repo}"));
    write_random_file(&src.join("x/y.bin"), &format!("y {repo}"), 100_000);
    write_file(&src.join("empty.txt"), "");
    // Same bytes under another name: one blob, two layers.
    write_file(&src.join("copy-of-one.txt"), format!("one {repo}"));

    let r = reference(&repo, "v1");
    let files = [
        "one.txt",
        "a/b/c.txt",
        "x/y.bin",
        "empty.txt",
        "copy-of-one.txt",
    ];
    let out = push(&src, &r, &files);
    assert_ok(&out);
    let m = manifest(&repo, "v1");
    assert_eq!(layer_titles(&m), files);
    assert_eq!(m["layers"][3]["size"], 0);
    assert_eq!(m["layers"][0]["digest"], m["layers"][4]["digest"]);

    let dest = tmp.path().join("out");
    assert_ok(&pull(&r, &dest, &[]));
    assert_eq!(tree(&dest), tree(&src));
}

#[test]
fn directory_round_trip_preserves_tree_and_content() {
    require_registry!();
    let repo = unique_repo("dir");
    let tmp = temp_dir();
    let src = tmp.path().join("src");
    let data = src.join("data");
    write_file(&data.join("top.txt"), format!("top {repo}"));
    write_file(&data.join("sub/inner.txt"), format!("inner {repo}"));
    write_random_file(
        &data.join("sub/deeper/blob.bin"),
        &format!("blob {repo}"),
        300_000,
    );
    write_file(&data.join("sub/empty-file"), "");
    std::fs::create_dir_all(data.join("empty-dir")).unwrap();
    std::os::unix::fs::symlink("sub/inner.txt", data.join("link-to-inner")).unwrap();

    let r = reference(&repo, "v1");
    assert_ok(&push(&src, &r, &["data"]));
    let m = manifest(&repo, "v1");
    let layer = &m["layers"][0];
    assert_eq!(layer["mediaType"], DIRECTORY_LAYER);
    assert_eq!(layer["annotations"][TITLE], "data");
    assert_eq!(layer["annotations"]["io.deis.oras.content.unpack"], "true");
    assert!(is_sha256_digest(
        layer["annotations"]["io.deis.oras.content.digest"]
            .as_str()
            .unwrap_or_default()
    ));

    let dest = tmp.path().join("out");
    let out = pull(&r, &dest, &[]);
    assert_ok(&out);
    assert_dir_has_only(&dest, &["data"]);
    assert_eq!(tree(&dest.join("data")), tree(&data));
    assert!(dest.join("data/empty-dir").is_dir());
    assert_eq!(
        std::fs::read_link(dest.join("data/link-to-inner")).unwrap(),
        Path::new("sub/inner.txt")
    );

    // Pulling again over the existing directory works and gives the same tree.
    assert_ok(&pull(&r, &dest, &[]));
    assert_dir_has_only(&dest, &["data"]);
    assert_eq!(tree(&dest.join("data")), tree(&data));
}

#[test]
fn large_file_round_trip() {
    require_registry!();
    const SIZE: u64 = 300 << 20;
    let repo = unique_repo("large");
    let tmp = temp_dir();
    let src = tmp.path().join("big.bin");
    let started = Instant::now();
    write_random_file(&src, &repo, SIZE);
    let want = sha256_file(&src);
    eprintln!(
        "large: generated and hashed {SIZE} bytes in {:?}",
        started.elapsed()
    );

    let r = reference(&repo, "v1");
    let started = Instant::now();
    let out = push(tmp.path(), &r, &["big.bin"]);
    assert_ok(&out);
    eprintln!("large: pushed in {:?}", started.elapsed());
    assert_eq!(manifest(&repo, "v1")["layers"][0]["digest"], want.as_str());
    // The registry holds the very bytes.
    assert_eq!(
        std::fs::metadata(blob_path(&registry_dir(), &want))
            .unwrap()
            .len(),
        SIZE
    );
    std::fs::remove_file(&src).unwrap();

    let dest = tmp.path().join("out");
    let started = Instant::now();
    assert_ok(&pull(&r, &dest, &[]));
    eprintln!("large: pulled in {:?}", started.elapsed());
    let got = dest.join("big.bin");
    assert_eq!(std::fs::metadata(&got).unwrap().len(), SIZE);
    assert_eq!(sha256_file(&got), want);
    assert_dir_has_only(&dest, &["big.bin"]);
}

#[test]
fn several_tags_in_one_push() {
    require_registry!();
    let repo = unique_repo("tags");
    let tmp = temp_dir();
    write_file(&tmp.path().join("t.txt"), format!("tagged {repo}"));
    let out = push(
        tmp.path(),
        &format!("{}/{repo}:t1,t2,t3", registry()),
        &["t.txt"],
    );
    assert_ok(&out);
    assert!(stdout_of(&out).contains(":t1,t2,t3"), "{}", describe(&out));
    let digest = digest_of_stdout(&out);

    for tag in ["t1", "t2", "t3"] {
        let dest = tmp.path().join(tag);
        let out = pull(&reference(&repo, tag), &dest, &[]);
        assert_ok(&out);
        assert_eq!(digest_of_stdout(&out), digest, "tag {tag}");
        assert_eq!(
            read_file(&dest.join("t.txt")),
            format!("tagged {repo}").as_bytes()
        );
    }
    let resp = http(
        &registry(),
        "GET",
        &format!("/v2/{repo}/tags/list"),
        &[],
        b"",
    );
    assert_eq!(resp.status, 200);
    let mut tags: Vec<String> = json(&resp.body)["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    tags.sort();
    assert_eq!(tags, ["t1", "t2", "t3"]);
}

// --- Output -----------------------------------------------------------------------------------

#[test]
fn json_format_output_parses() {
    require_registry!();
    let repo = unique_repo("json");
    let tmp = temp_dir();
    write_file(&tmp.path().join("j.txt"), format!("json {repo}"));
    write_file(&tmp.path().join("other.txt"), format!("other {repo}"));
    let r = reference(&repo, "v1");
    let out = push(
        tmp.path(),
        &r,
        &[
            "j.txt",
            "other.txt:application/vnd.example.other",
            "--format",
            "json",
        ],
    );
    assert_ok(&out);
    let v = json(&out.stdout);
    let digest = v["digest"].as_str().expect("digest").to_string();
    assert!(is_sha256_digest(&digest), "{v}");
    assert_eq!(v["mediaType"], OCI_MANIFEST);
    assert_eq!(v["artifactType"], "application/vnd.unknown.artifact.v1");
    assert!(v["size"].as_u64().unwrap() > 0);
    assert_eq!(
        v["referenceAsTags"],
        serde_json::json!([format!("{}/{repo}:v1", registry())])
    );
    assert_eq!(
        v["reference"],
        format!("{}/{repo}@{digest}", registry()).as_str()
    );
    assert_eq!(get_manifest(&repo, "v1").0, digest);

    let dest = tmp.path().join("out");
    let out = pull(&r, &dest, &["--format", "json"]);
    assert_ok(&out);
    let v = json(&out.stdout);
    assert_eq!(
        v["reference"],
        format!("{}/{repo}@{digest}", registry()).as_str()
    );
    let files = v["files"].as_array().expect("files");
    assert_eq!(files.len(), 1, "{v}");
    assert!(files[0]["path"].as_str().unwrap().ends_with("j.txt"), "{v}");
    assert_eq!(files[0]["mediaType"], DEFAULT_LAYER);
    assert_eq!(
        files[0]["digest"],
        sha256_bytes(format!("json {repo}").as_bytes()).as_str()
    );
    // oras's JSON has no field for layers left out: they are named on stderr.
    assert!(v.get("skipped").is_none(), "{v}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Skipped 1 layer(s)") && stderr.contains("other.txt"),
        "{stderr}"
    );
}

#[test]
fn export_manifest_matches_the_pushed_digest() {
    require_registry!();
    let repo = unique_repo("export");
    let tmp = temp_dir();
    write_file(&tmp.path().join("e.txt"), format!("export {repo}"));
    let exported = tmp.path().join("manifest.json");
    let out = push(
        tmp.path(),
        &reference(&repo, "v1"),
        &["e.txt", "--export-manifest", exported.to_str().unwrap()],
    );
    assert_ok(&out);
    let digest = digest_of_stdout(&out);
    assert_eq!(sha256_file(&exported), digest);
    let (registry_digest, bytes) = get_manifest(&repo, "v1");
    assert_eq!(registry_digest, digest);
    assert_eq!(bytes, read_file(&exported));
    assert_eq!(layer_titles(&json(&bytes)), ["e.txt"]);
}

#[test]
fn annotations_and_artifact_type_land_in_the_manifest() {
    require_registry!();
    let repo = unique_repo("annotations");
    let tmp = temp_dir();
    write_file(&tmp.path().join("f.txt"), format!("annotated {repo}"));
    write_file(
        &tmp.path().join("annotations.json"),
        r#"{"$manifest": {"com.example.from-file": "m"}, "f.txt": {"com.example.layer": "l"}}"#,
    );
    let out = push(
        tmp.path(),
        &reference(&repo, "v1"),
        &[
            "f.txt",
            "--artifact-type",
            "application/vnd.example.thing",
            "--annotation",
            "com.example.key=value=with=equals",
            "-a",
            "org.opencontainers.image.created=2000-01-01T00:00:00Z",
            "--annotation-file",
            "annotations.json",
        ],
    );
    assert_ok(&out);
    assert!(stdout_of(&out).contains("ArtifactType: application/vnd.example.thing"));
    let m = manifest(&repo, "v1");
    assert_eq!(m["artifactType"], "application/vnd.example.thing");
    assert_eq!(m["annotations"]["com.example.key"], "value=with=equals");
    assert_eq!(m["annotations"]["com.example.from-file"], "m");
    assert_eq!(
        m["annotations"]["org.opencontainers.image.created"],
        "2000-01-01T00:00:00Z"
    );
    assert_eq!(m["layers"][0]["annotations"]["com.example.layer"], "l");
    assert_eq!(m["layers"][0]["annotations"][TITLE], "f.txt");

    // A malformed annotation is a usage error.
    let out = push(
        tmp.path(),
        &reference(&repo, "v2"),
        &["f.txt", "-a", "no-equals-sign"],
    );
    assert_fails(&out, "KEY=VALUE");
}

#[test]
fn config_file_round_trip() {
    require_registry!();
    let repo = unique_repo("config");
    let tmp = temp_dir();
    write_file(&tmp.path().join("f.txt"), format!("with config {repo}"));
    let config = format!("{{\"config-of\": \"{repo}\"}}");
    write_file(&tmp.path().join("config.json"), &config);
    let r = reference(&repo, "v1");
    let out = push(
        tmp.path(),
        &r,
        &[
            "f.txt",
            "--config",
            "config.json:application/vnd.example.config.v1+json",
        ],
    );
    assert_ok(&out);
    let m = manifest(&repo, "v1");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.example.config.v1+json"
    );
    assert_eq!(
        m["config"]["digest"],
        sha256_bytes(config.as_bytes()).as_str()
    );
    // A real config type makes the artifact type unnecessary (as in oras).
    assert!(m.get("artifactType").is_none(), "{m}");

    let dest = tmp.path().join("out");
    let saved = tmp.path().join("saved-config.json");
    assert_ok(&pull(&r, &dest, &["--config", saved.to_str().unwrap()]));
    assert_eq!(read_file(&saved), config.as_bytes());
    assert_dir_has_only(&dest, &["f.txt"]);
}

#[test]
fn empty_artifact_pushes_and_pulls_with_a_warning() {
    require_registry!();
    let repo = unique_repo("empty");
    let tmp = temp_dir();
    let r = reference(&repo, "v1");
    let out = push(tmp.path(), &r, &["-a", &format!("com.example.repo={repo}")]);
    assert_ok(&out);
    let m = manifest(&repo, "v1");
    assert_eq!(m["layers"], serde_json::json!([]));
    let dest = tmp.path().join("out");
    let out = pull(&r, &dest, &[]);
    assert_ok(&out);
    assert!(stderr_of(&out).contains("no files"), "{}", describe(&out));
    assert_dir_has_only(&dest, &[]);
}

#[test]
fn reproducible_push_gives_the_same_digest() {
    require_registry!();
    let repo = unique_repo("reproducible");
    let tmp = temp_dir();
    write_file(&tmp.path().join("r.txt"), format!("reproducible {repo}"));
    write_file(&tmp.path().join("d/inner.txt"), format!("inner {repo}"));
    let first = push(
        tmp.path(),
        &reference(&repo, "a"),
        &["r.txt", "d", "--reproducible"],
    );
    assert_ok(&first);
    // Touch the directory's files: --reproducible ignores mtimes.
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(tmp.path().join("d/inner.txt"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let second = push(
        tmp.path(),
        &reference(&repo, "b"),
        &["r.txt", "d", "--reproducible"],
    );
    assert_ok(&second);
    assert_eq!(digest_of_stdout(&first), digest_of_stdout(&second));
    assert!(manifest(&repo, "a").get("annotations").is_none());
}

#[test]
fn pushing_the_same_content_again_skips_the_blobs() {
    require_registry!();
    let repo = unique_repo("again");
    let tmp = temp_dir();
    write_file(&tmp.path().join("same1.txt"), format!("same1 {repo}"));
    write_file(&tmp.path().join("same2.txt"), format!("same2 {repo}"));
    // Upload sessions opened (202). The existence check is itself a POST: a mount of the blob
    // from this repository, answered 201 when the blob is here.
    let posts = || logged_requests(&registry_log(), &format!("/v2/{repo}/blobs/uploads/"));
    let uploads = || {
        posts()
            .into_iter()
            .filter(|r| r.method == "POST" && r.status == 202)
            .count()
    };

    // Pushes both files as `tag`; each must have a progress line saying `status`.
    let push_both = |tag: &str, status: &str, why: &str| {
        let out = push(
            tmp.path(),
            &reference(&repo, tag),
            &["same1.txt", "same2.txt"],
        );
        assert_ok(&out);
        let stderr = stderr_of(&out);
        for name in ["same1.txt", "same2.txt"] {
            assert!(
                stderr
                    .lines()
                    .any(|l| l.contains(status) && l.contains(name)),
                "{why} {name}\n{}",
                describe(&out)
            );
        }
        out
    };

    push_both("v1", "Done", "first push should upload");
    let after_first = uploads();
    assert!(
        after_first >= 2,
        "uploads seen in the registry log: {after_first}"
    );

    let out = push_both("v2", "Exists", "second push should skip");
    let stderr = stderr_of(&out);
    assert!(
        !stderr.contains("Done"),
        "second push uploaded something\n{}",
        describe(&out)
    );
    assert_eq!(uploads(), after_first, "the second push started uploads");
    let found_by_mount = posts()
        .into_iter()
        .filter(|r| r.method == "POST" && r.status == 201 && r.uri.contains("mount="))
        .count();
    assert_eq!(
        found_by_mount, 3,
        "the second push asks once per blob (two files and the config)"
    );
}

#[test]
fn a_larger_blob_is_asked_for_with_a_head_not_a_mount() {
    require_registry!();
    // Over 256 KiB a registry that answers every mount with 202 would make a push upload the
    // blob again, so the push asks with a HEAD.
    let repo = unique_repo("again-large");
    let tmp = temp_dir();
    write_random_file(&tmp.path().join("large.bin"), &repo, 300_000);
    let digest = sha256_file(&tmp.path().join("large.bin"));
    assert_ok(&push(tmp.path(), &reference(&repo, "v1"), &["large.bin"]));
    assert_ok(&push(tmp.path(), &reference(&repo, "v2"), &["large.bin"]));
    let requests = logged_requests(&registry_log(), &format!("/v2/{repo}/blobs/"));
    let heads = requests
        .iter()
        .filter(|r| r.method == "HEAD" && r.uri.ends_with(&digest))
        .map(|r| r.status)
        .collect::<Vec<_>>();
    assert_eq!(heads, [404, 200], "{requests:#?}");
    let mounts = requests
        .iter()
        .filter(|r| r.method == "POST" && r.uri.contains(&digest["sha256:".len()..]))
        .count();
    assert_eq!(mounts, 0, "{requests:#?}");
}

// --- Authentication and TLS -------------------------------------------------------------------

#[test]
fn basic_auth_credentials_login_and_logout() {
    require_registry!();
    let reg = ExtraRegistry::start("auth", &["--htpasswd", "tester:s3cret-pw"]);
    let (user, pass) = (reg.user.clone().unwrap(), reg.pass.clone().unwrap());
    assert_eq!((user.as_str(), pass.as_str()), ("tester", "s3cret-pw"));
    let repo = unique_repo("auth");
    let tmp = temp_dir();
    let content = format!("secret {repo}");
    write_file(&tmp.path().join("s.txt"), &content);
    let r = reg.reference(&repo, "v1");

    // Good credentials: -u/-p and --password-stdin.
    assert_ok(&push(tmp.path(), &r, &["s.txt", "-u", &user, "-p", &pass]));
    let dest = tmp.path().join("out");
    let out = oras_fs_stdin(
        [
            "pull",
            &r,
            "-o",
            dest.to_str().unwrap(),
            "-u",
            &user,
            "--password-stdin",
        ],
        format!("{pass}\n").as_bytes(),
    );
    assert_ok(&out);
    assert_eq!(read_file(&dest.join("s.txt")), content.as_bytes());

    // Bad or no credentials.
    let out = push(tmp.path(), &r, &["s.txt", "-u", &user, "-p", "wrong"]);
    let stderr = assert_fails(&out, "authentication");
    assert!(
        !stderr.contains("wrong"),
        "the password leaked into the error\n{stderr}"
    );
    assert_fails(
        &pull(&r, &tmp.path().join("x"), &["-u", &user, "-p", "wrong"]),
        "authentication",
    );
    assert_fails(&push(tmp.path(), &r, &["s.txt"]), "authentication");
    assert_fails(&pull(&r, &tmp.path().join("x"), &[]), "authentication");

    // login stores credentials in --registry-config; later commands use them.
    let config = tmp.path().join("cfg/config.json");
    let config_arg = config.to_str().unwrap();
    let login = |password: &[u8]| {
        oras_fs_stdin(
            [
                "login",
                &reg.host,
                "-u",
                &user,
                "--password-stdin",
                "--registry-config",
                config_arg,
            ],
            password,
        )
    };
    assert_fails(&login(b"wrong\n"), "authentication");
    assert!(
        !config.exists(),
        "a failed login wrote {}",
        config.display()
    );
    let out = login(format!("{pass}\n").as_bytes());
    assert!(assert_ok(&out).contains("Login Succeeded"));
    let stored = std::fs::read_to_string(&config).unwrap();
    assert!(stored.contains(&reg.host), "{stored}");
    assert!(
        !stored.contains(&pass),
        "the password is stored in clear: {stored}"
    );

    let r2 = reg.reference(&repo, "v2");
    assert_ok(&push(
        tmp.path(),
        &r2,
        &["s.txt", "--registry-config", config_arg],
    ));
    let dest = tmp.path().join("out2");
    assert_ok(&pull(&r2, &dest, &["--registry-config", config_arg]));
    assert_eq!(read_file(&dest.join("s.txt")), content.as_bytes());

    let out = oras_fs(["logout", &reg.host, "--registry-config", config_arg]);
    assert_ok(&out);
    assert!(!std::fs::read_to_string(&config)
        .unwrap()
        .contains(&reg.host));
    assert_fails(
        &push(
            tmp.path(),
            &reg.reference(&repo, "v3"),
            &["s.txt", "--registry-config", config_arg],
        ),
        "authentication",
    );
}

#[test]
fn tls_registry_with_ca_file_or_insecure() {
    require_registry!();
    let reg = ExtraRegistry::start("tls", &["--tls"]);
    let ca = reg.ca.clone().expect("a --tls registry has a CA");
    let ca_arg = ca.to_str().unwrap();
    let repo = unique_repo("tls");
    let tmp = temp_dir();
    let content = format!("over TLS {repo}");
    write_file(&tmp.path().join("tls.txt"), &content);

    // Trusted through --ca-file.
    let r = reg.reference(&repo, "v1");
    assert_ok(&push(tmp.path(), &r, &["tls.txt", "--ca-file", ca_arg]));
    let dest = tmp.path().join("out");
    assert_ok(&pull(&r, &dest, &["--ca-file", ca_arg]));
    assert_eq!(read_file(&dest.join("tls.txt")), content.as_bytes());

    // A CA that did not sign the registry's certificate: refused.
    let other_ca = unrelated_ca(tmp.path());
    let out = push(
        tmp.path(),
        &reg.reference(&repo, "v2"),
        &["tls.txt", "--ca-file", other_ca.to_str().unwrap()],
    );
    assert_fails(&out, "certificate");
    assert_fails(
        &pull(
            &r,
            &tmp.path().join("x"),
            &["--ca-file", other_ca.to_str().unwrap()],
        ),
        "certificate",
    );

    // Without any TLS flag, 127.0.0.1 means plain HTTP, which a TLS registry refuses.
    let out = pull(&r, &tmp.path().join("x"), &[]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(stderr_of(&out).starts_with("Error: "), "{}", describe(&out));

    // --insecure: HTTPS without verification.
    let r3 = reg.reference(&repo, "v3");
    assert_ok(&push(tmp.path(), &r3, &["tls.txt", "--insecure"]));
    let dest = tmp.path().join("out3");
    assert_ok(&pull(&r3, &dest, &["--insecure"]));
    assert_eq!(read_file(&dest.join("tls.txt")), content.as_bytes());
}

// --- Errors -----------------------------------------------------------------------------------

#[test]
fn invalid_references_are_refused() {
    require_registry!();
    let tmp = temp_dir();
    write_file(&tmp.path().join("f.txt"), "x");
    let reg = registry();
    for bad in [
        "hello:v1".to_string(),
        "localhost:5000/UPPER".to_string(),
        format!("{reg}/UPPER:v1"),
        format!("{reg}/x/y@sha256:bad"),
        format!("{reg}/x:bad tag"),
        format!("{reg}/"),
    ] {
        let out = push(tmp.path(), &bad, &["f.txt"]);
        assert_fails(&out, "invalid reference");
        let out = pull(&bad, &tmp.path().join("out"), &[]);
        assert_fails(&out, "invalid reference");
    }
    // Nothing was created for a refused reference.
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn bad_inputs_fail_with_a_message() {
    require_registry!();
    let repo = unique_repo("inputs");
    let tmp = temp_dir();
    write_file(&tmp.path().join("sub/f.txt"), format!("inputs {repo}"));

    let out = push(tmp.path(), &reference(&repo, "v1"), &["no-such-file.txt"]);
    assert_fails(&out, "no-such-file.txt");

    // A tag that does not exist.
    let out = pull(&reference(&repo, "missing"), &tmp.path().join("out"), &[]);
    assert_fails(&out, "not found");

    // Titles must stay relative and inside unless --disable-path-validation.
    let sub = tmp.path().join("sub");
    let out = push(&sub, &reference(&repo, "v1"), &["../sub/f.txt"]);
    assert_fails(&out, "--disable-path-validation");
    let abs = sub.join("f.txt");
    let out = push(&sub, &reference(&repo, "v1"), &[abs.to_str().unwrap()]);
    assert_fails(&out, "--disable-path-validation");
}

#[test]
fn unreachable_registry_fails_fast() {
    let port = free_port();
    let tmp = temp_dir();
    write_file(&tmp.path().join("f.txt"), "x");
    let r = format!("127.0.0.1:{port}/nothing/here:v1");
    let started = Instant::now();
    let out = pull(&r, &tmp.path().join("out"), &[]);
    assert_fails(&out, "cannot reach");
    let out = push(tmp.path(), &r, &["f.txt"]);
    assert_fails(&out, "cannot reach");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(20),
        "took {elapsed:?} to give up"
    );
}

#[test]
fn corrupted_blob_fails_the_pull_and_writes_nothing() {
    require_registry!();
    let repo = unique_repo("corrupt");
    let tmp = temp_dir();
    let content = random_bytes(&repo, 200_000);
    write_file(&tmp.path().join("victim.bin"), &content);
    let r = reference(&repo, "v1");
    assert_ok(&push(tmp.path(), &r, &["victim.bin"]));
    let digest = sha256_bytes(&content);

    // Same length, other bytes: only the digest can tell.
    let data = blob_path(&registry_dir(), &digest);
    let mut bad = read_file(&data);
    assert_eq!(bad, content);
    for b in bad.iter_mut().skip(100_000).take(16) {
        *b ^= 0xff;
    }
    std::fs::write(&data, &bad).unwrap();

    let dest = tmp.path().join("out");
    let out = pull(&r, &dest, &[]);
    let stderr = assert_fails(&out, &digest);
    assert!(stderr.to_lowercase().contains("digest"), "{stderr}");
    assert_dir_has_only(&dest, &[]);

    // A good file of the same name stays as it was.
    let dest = tmp.path().join("out-existing");
    write_file(&dest.join("victim.bin"), "the good old file");
    let out = pull(&r, &dest, &[]);
    assert_fails(&out, &digest);
    assert_dir_has_only(&dest, &["victim.bin"]);
    assert_eq!(read_file(&dest.join("victim.bin")), b"the good old file");
}

#[test]
fn titles_that_leave_the_output_directory_are_refused() {
    require_registry!();
    let repo = unique_repo("traversal");
    let tmp = temp_dir();
    let content = format!("evil {repo}");
    write_file(&tmp.path().join("evil"), &content);
    let exported = tmp.path().join("manifest.json");
    assert_ok(&push(
        tmp.path(),
        &reference(&repo, "base"),
        &["evil", "--export-manifest", exported.to_str().unwrap()],
    ));
    // Rewrite the title by hand and put the manifest under another tag.
    let mut m = json(&read_file(&exported));
    m["layers"][0]["annotations"][TITLE] = "../evil".into();
    put_manifest(&repo, "dotdot", &serde_json::to_vec(&m).unwrap());

    // Refused: nothing in the output directory, nothing beside it.
    let area = tmp.path().join("area");
    let dest = area.join("out");
    let r = reference(&repo, "dotdot");
    let out = pull(&r, &dest, &[]);
    let stderr = assert_fails(&out, "../evil");
    assert!(stderr.contains("--allow-path-traversal"), "{stderr}");
    assert!(!area.join("evil").exists());
    if dest.exists() {
        assert_dir_has_only(&dest, &[]);
    }
    assert_dir_has_only(&area, if dest.exists() { &["out"] } else { &[] });

    // -T: written where the title says (still inside our temp area).
    let out = pull(&r, &dest, &["-T"]);
    assert_ok(&out);
    assert_eq!(read_file(&area.join("evil")), content.as_bytes());
    assert_dir_has_only(&dest, &[]);

    // An absolute title, pushed as given with --disable-path-validation.
    let abs_target = tmp.path().join("abs-area/abs-evil");
    write_file(&abs_target, &content);
    let abs_arg = abs_target.to_str().unwrap();
    let out = push(
        tmp.path(),
        &reference(&repo, "abs"),
        &[abs_arg, "--disable-path-validation"],
    );
    assert_ok(&out);
    assert_eq!(layer_titles(&manifest(&repo, "abs")), [abs_arg]);
    std::fs::remove_file(&abs_target).unwrap();
    let out = pull(&reference(&repo, "abs"), &tmp.path().join("out-abs"), &[]);
    assert_fails(&out, "absolute");
    assert!(!abs_target.exists());
    assert_ok(&pull(
        &reference(&repo, "abs"),
        &tmp.path().join("out-abs"),
        &["--allow-path-traversal"],
    ));
    assert_eq!(read_file(&abs_target), content.as_bytes());
}

#[test]
fn malformed_manifests_are_refused_on_pull() {
    require_registry!();
    let repo = unique_repo("malformed");
    let tmp = temp_dir();
    write_file(&tmp.path().join("m1.txt"), format!("m1 {repo}"));
    write_file(&tmp.path().join("m2.txt"), format!("m2 {repo}"));
    let exported = tmp.path().join("manifest.json");
    let out = push(
        tmp.path(),
        &reference(&repo, "base"),
        &[
            "m1.txt",
            "m2.txt",
            "--export-manifest",
            exported.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let digest = digest_of_stdout(&out);
    let base = read_file(&exported);

    // Two layers with one title: which one would win is undefined, so nothing is pulled.
    let mut m = json(&base);
    m["layers"][1]["annotations"][TITLE] = "m1.txt".into();
    put_manifest(&repo, "dup-title", &serde_json::to_vec(&m).unwrap());
    let dest = tmp.path().join("dup");
    assert_fails(&pull(&reference(&repo, "dup-title"), &dest, &[]), "m1.txt");
    assert!(!dest.join("m1.txt").exists());

    // An image index is not an artifact manifest.
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": base.len()}],
    });
    let resp = http(
        &registry(),
        "PUT",
        &format!("/v2/{repo}/manifests/index"),
        &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
        &serde_json::to_vec(&index).unwrap(),
    );
    resp.assert_status(201, "PUT index");
    assert_fails(
        &pull(&reference(&repo, "index"), &tmp.path().join("idx"), &[]),
        "index",
    );
}

/// A symlink already in the output directory must not lead a pull outside it.
#[test]
fn symlinks_in_the_output_directory_do_not_lead_outside() {
    require_registry!();
    let repo = unique_repo("symlink-out");
    let tmp = temp_dir();
    let src = tmp.path().join("src");
    write_file(
        &src.join("link/sub/x.txt"),
        format!("through a link {repo}"),
    );
    let r = reference(&repo, "v1");
    assert_ok(&push(&src, &r, &["link/sub/x.txt"]));

    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let dest = tmp.path().join("out");
    std::fs::create_dir_all(&dest).unwrap();
    std::os::unix::fs::symlink("../outside", dest.join("link")).unwrap();
    let out = pull(&r, &dest, &[]);
    assert_fails(&out, "symlink");
    assert_dir_has_only(&outside, &[]);
}

#[test]
fn keep_old_files_refuses_to_replace() {
    require_registry!();
    let repo = unique_repo("keep");
    let tmp = temp_dir();
    write_file(&tmp.path().join("k.txt"), format!("new {repo}"));
    write_file(&tmp.path().join("fresh.txt"), format!("fresh {repo}"));
    let r = reference(&repo, "v1");
    assert_ok(&push(tmp.path(), &r, &["k.txt"]));

    let dest = tmp.path().join("out");
    write_file(&dest.join("k.txt"), "old");
    let out = pull(&r, &dest, &["-k"]);
    assert_fails(&out, "exists");
    assert_eq!(read_file(&dest.join("k.txt")), b"old");
    assert_dir_has_only(&dest, &["k.txt"]);

    // -k still writes files that are not there.
    let r2 = reference(&repo, "v2");
    assert_ok(&push(tmp.path(), &r2, &["fresh.txt"]));
    assert_ok(&pull(&r2, &dest, &["--keep-old-files"]));
    assert_eq!(
        read_file(&dest.join("fresh.txt")),
        format!("fresh {repo}").as_bytes()
    );

    // Without -k the old file is replaced.
    assert_ok(&pull(&r, &dest, &[]));
    assert_eq!(
        read_file(&dest.join("k.txt")),
        format!("new {repo}").as_bytes()
    );
    assert_dir_has_only(&dest, &["fresh.txt", "k.txt"]);
}

// --- Interop with the Python ORAS SDK ----------------------------------------------------------

#[test]
fn interop_python_sdk_pulls_what_oras_fs_pushes() {
    require_registry!();
    let repo = unique_repo("py-pull");
    let tmp = temp_dir();
    let src = tmp.path().join("src");
    write_random_file(&src.join("blob.bin"), &repo, 1_500_000);
    write_file(&src.join("note.txt"), format!("note {repo}"));
    write_file(&src.join("tree/a.txt"), format!("a {repo}"));
    write_file(&src.join("tree/sub/b.txt"), format!("b {repo}"));
    let r = reference(&repo, "v1");
    assert_ok(&push(&src, &r, &["blob.bin", "note.txt", "tree"]));

    let dest = tmp.path().join("py-out");
    let out = sdk_pull(tmp.path(), &r, &dest);
    let v = json(assert_ok(&out).as_bytes());
    assert_eq!(v["files"].as_array().map(Vec::len), Some(3), "{v}");
    // The SDK untars our directory layer into the output directory.
    assert_eq!(tree(&dest), tree(&src));
}

#[test]
fn interop_oras_fs_pulls_what_the_python_sdk_pushes() {
    require_registry!();
    let repo = unique_repo("py-push");
    let tmp = temp_dir();
    let src = tmp.path().join("src");
    write_random_file(&src.join("data.bin"), &repo, 700_000);
    write_file(&src.join("readme.md"), format!("readme {repo}"));
    write_file(
        &src.join("custom.json"),
        format!("{{\"repo\": \"{repo}\"}}"),
    );
    let r = reference(&repo, "v1");
    let out = interop(
        &src,
        [
            "push",
            &r,
            "data.bin",
            "readme.md",
            "custom.json:application/vnd.example.custom+json",
            "--plain-http",
            "--annotation",
            "com.example.by=python",
        ],
    );
    let v = json(assert_ok(&out).as_bytes());
    let py_digest = v["digest"].as_str().unwrap_or_default().to_string();

    // The SDK gives plain files the same default media type as oras-fs
    // (application/vnd.oci.image.layer.v1.tar), so a default pull takes them; the custom type
    // needs -t or -a. (Directories it pushes as application/vnd.oci.image.layer.v1.tar+gzip
    // WITHOUT the io.deis.oras.content.unpack annotation, which oras-fs, like the oras CLI,
    // does not take by default nor unpack.)
    let m = manifest(&repo, "v1");
    assert_eq!(m["layers"][0]["mediaType"], DEFAULT_LAYER);
    assert_eq!(m["annotations"]["com.example.by"], "python");

    let dest = tmp.path().join("out");
    let out = pull(&r, &dest, &[]);
    assert_ok(&out);
    if !py_digest.is_empty() {
        assert_eq!(digest_of_stdout(&out), py_digest);
    }
    assert_dir_has_only(&dest, &["data.bin", "readme.md"]);
    assert!(
        stderr_of(&out).contains("application/vnd.example.custom+json"),
        "{}",
        describe(&out)
    );

    let dest = tmp.path().join("all");
    assert_ok(&pull(&r, &dest, &["-a"]));
    assert_eq!(tree(&dest), tree(&src));
}

#[test]
fn interop_with_basic_auth_over_tls() {
    require_registry!();
    let reg = ExtraRegistry::start("py-auth-tls", &["--tls", "--htpasswd", "pyuser:py-pass"]);
    let ca = reg.ca.clone().expect("CA");
    let ca_arg = ca.to_str().unwrap();
    let repo = unique_repo("py-auth-tls");
    let tmp = temp_dir();
    write_file(&tmp.path().join("ours.txt"), format!("ours {repo}"));
    write_file(&tmp.path().join("theirs.txt"), format!("theirs {repo}"));
    let auth = ["--user", "pyuser", "--password", "py-pass"];

    // oras-fs -> Python.
    let r = reg.reference(&repo, "ours");
    assert_ok(&push(
        tmp.path(),
        &r,
        &[
            "ours.txt",
            "--ca-file",
            ca_arg,
            "-u",
            "pyuser",
            "-p",
            "py-pass",
        ],
    ));
    let dest = tmp.path().join("py-out");
    let mut args = vec![
        "pull",
        &r,
        "--ca-file",
        ca_arg,
        "--outdir",
        dest.to_str().unwrap(),
    ];
    args.extend(auth);
    assert_ok(&interop(tmp.path(), &args));
    assert_eq!(
        read_file(&dest.join("ours.txt")),
        format!("ours {repo}").as_bytes()
    );

    // Python -> oras-fs.
    let r = reg.reference(&repo, "theirs");
    let mut args = vec!["push", &r, "theirs.txt", "--ca-file", ca_arg];
    args.extend(auth);
    assert_ok(&interop(tmp.path(), &args));
    let dest = tmp.path().join("out");
    assert_ok(&pull(
        &r,
        &dest,
        &["--ca-file", ca_arg, "-u", "pyuser", "-p", "py-pass"],
    ));
    assert_eq!(
        read_file(&dest.join("theirs.txt")),
        format!("theirs {repo}").as_bytes()
    );
}

// --- The library example ------------------------------------------------------------------------

/// Runs `examples/simple_push_pull.rs` against the test registry. Cargo builds examples with
/// `cargo test` (and `--all-targets`, as scripts/test.sh does) but gives tests no path to them:
/// they sit in `target/<profile>/examples/`, beside the `deps/` directory of this test binary.
#[test]
fn example_simple_push_pull_runs() {
    require_registry!();
    let exe = std::env::current_exe().expect("test binary path");
    let example = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("examples/simple_push_pull"))
        .expect("target directory");
    if !example.exists() {
        eprintln!(
            "skipped: {} is not built (cargo test --examples)",
            example.display()
        );
        return;
    }
    let out = run(std::process::Command::new(&example).env("ORAS_FS_TEST_REGISTRY", registry()));
    let stdout = assert_ok(&out);
    assert!(
        stdout.contains("Pulled hello.txt (application/vnd.example.hello): Hello, world!"),
        "{}",
        describe(&out)
    );
}

/// The Docker credential store: `credHelpers` and `credsStore` name a `docker-credential-*`
/// program that `get` asks, `login` stores into and `logout` erases from.
#[test]
fn docker_credential_helpers_are_used() {
    require_registry!();
    use std::os::unix::fs::PermissionsExt;
    let reg = ExtraRegistry::start("helper", &["--htpasswd", "tester:s3cret-pw"]);
    let repo = unique_repo("cred-helper");
    let tmp = temp_dir();
    write_file(&tmp.path().join("h.txt"), "helped");
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-fake");
    write_file(
        &helper,
        format!(
            "#!/bin/sh\nread server\ncase \"$1\" in\n\
             get) printf '{{\"ServerURL\":\"%s\",\"Username\":\"tester\",\"Secret\":\"s3cret-pw\"}}' \"$server\" ;;\n\
             store) echo \"$server\" > {0}/stored ;;\n\
             erase) echo \"$server\" > {0}/erased ;;\n\
             esac\n",
            bin.display()
        ),
    );
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let config = tmp.path().join("config.json");
    let with_helper = |args: &[&str]| {
        let mut cmd = oras_fs_cmd(args);
        cmd.env("PATH", &path).current_dir(tmp.path());
        run(&mut cmd)
    };
    let r = reg.reference(&repo, "v1");
    let cfg = config.to_str().unwrap();

    // credHelpers, keyed by registry.
    write_file(
        &config,
        format!("{{\"credHelpers\":{{\"{}\":\"fake\"}}}}", reg.host),
    );
    assert_ok(&with_helper(&[
        "push",
        &r,
        "h.txt",
        "--registry-config",
        cfg,
        "--no-tty",
    ]));
    // credsStore, for every registry.
    write_file(&config, r#"{"credsStore":"fake"}"#);
    let out_dir = tmp.path().join("out");
    assert_ok(&with_helper(&[
        "pull",
        &r,
        "-o",
        out_dir.to_str().unwrap(),
        "--registry-config",
        cfg,
        "--no-tty",
    ]));
    assert_eq!(read_file(&out_dir.join("h.txt")), b"helped");
    // login and logout go through the helper, not into the file.
    let mut cmd = oras_fs_cmd([
        "login",
        &reg.host,
        "-u",
        "tester",
        "--password-stdin",
        "--registry-config",
        cfg,
    ]);
    cmd.env("PATH", &path);
    assert_ok(&run_with_stdin(&mut cmd, b"s3cret-pw\n"));
    // `store` reads {"ServerURL", "Username", "Secret"} as JSON on stdin.
    let stored: Value = serde_json::from_slice(&read_file(&bin.join("stored"))).unwrap();
    assert_eq!(stored["ServerURL"], reg.host.as_str());
    assert_eq!(stored["Username"], "tester");
    assert!(!String::from_utf8_lossy(&read_file(&config)).contains("auths"));
    assert_ok(&with_helper(&[
        "logout",
        &reg.host,
        "--registry-config",
        cfg,
    ]));
    assert_eq!(
        read_file(&bin.join("erased")),
        format!("{}\n", reg.host).as_bytes()
    );
}
