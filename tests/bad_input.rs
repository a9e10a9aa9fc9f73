//! Bad input: malformed and oversized manifests, unknown media types, unsafe and clashing
//! titles, tar layers with links that point out, invalid references and digests, wrong
//! credentials and expired tokens. Each gets a clear message naming the problem, and nothing
//! is written where it should not be. Run with `scripts/test.sh`.
//!
//! Manifests the registry would refuse are served by a [`FaultProxy`] in its place; tokens come
//! from the proxy playing a bearer-token registry.

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use common::faults::*;
use common::*;
use serde_json::{json, Value};

const MIB: usize = 1024 * 1024;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DEFAULT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const DIRECTORY_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TITLE: &str = "org.opencontainers.image.title";
const EMPTY_CONFIG_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

fn descriptor(media_type: &str, data: &[u8], annotations: Value) -> Value {
    json!({
        "mediaType": media_type,
        "digest": sha256_bytes(data),
        "size": data.len(),
        "annotations": annotations,
    })
}

/// An artifact manifest with the empty config (uploaded to `repo`) and these layers.
fn manifest(repo: &str, layers: Vec<Value>) -> Vec<u8> {
    upload_blob(repo, b"{}");
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.unknown.artifact.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": EMPTY_CONFIG_DIGEST, "size": 2},
        "layers": layers,
    }))
    .unwrap()
}

/// What `oras-fs` made in `dir` besides what is listed (temporary names included).
fn assert_only(dir: &Path, expected: &[&str]) {
    let names = if dir.exists() {
        list_dir(dir)
    } else {
        Vec::new()
    };
    assert_eq!(names, expected, "contents of {}", dir.display());
}

// --- Tar archives written byte by byte (so that any name or link can be put in) ------------

enum TarEntry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDevice(&'a str),
}

fn tar_header(name: &str, kind: u8, size: usize, link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    assert!(name.len() <= 100 && link.len() <= 100);
    h[..name.len()].copy_from_slice(name.as_bytes());
    let mode: &[u8] = if kind == b'5' {
        b"0000755\0"
    } else {
        b"0000644\0"
    };
    h[100..108].copy_from_slice(mode);
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if kind == b'3' {
        h[329..337].copy_from_slice(b"0000001\0");
        h[337..345].copy_from_slice(b"0000003\0");
    }
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A tar+gzip of `entries`, and the digest of the uncompressed tar.
fn tgz(entries: &[TarEntry]) -> (Vec<u8>, String) {
    let mut tar = Vec::new();
    for e in entries {
        match e {
            TarEntry::Dir(n) => tar.extend_from_slice(&tar_header(n, b'5', 0, "")),
            TarEntry::File(n, data) => {
                tar.extend_from_slice(&tar_header(n, b'0', data.len(), ""));
                tar.extend_from_slice(data);
                tar.resize(tar.len().div_ceil(512) * 512, 0);
            }
            TarEntry::Symlink(n, t) => tar.extend_from_slice(&tar_header(n, b'2', 0, t)),
            TarEntry::HardLink(n, t) => tar.extend_from_slice(&tar_header(n, b'1', 0, t)),
            TarEntry::CharDevice(n) => tar.extend_from_slice(&tar_header(n, b'3', 0, "")),
        }
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let tar_digest = sha256_bytes(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), tar_digest)
}

/// Puts a manifest with one directory layer titled `d` made of `entries` as `repo:tag`.
fn put_directory_layer(repo: &str, tag: &str, entries: &[TarEntry]) {
    let (gz, tar_digest) = tgz(entries);
    put_tgz_layer(repo, tag, &gz, &tar_digest);
}

/// Puts `repo:tag`, a manifest with one layer per title in `titles`, each of them `content`
/// (already uploaded).
fn put_titled_layers(repo: &str, tag: &str, content: &[u8], titles: &[&str]) {
    let layers = titles
        .iter()
        .map(|t| descriptor(DEFAULT_LAYER, content, json!({TITLE: t})))
        .collect();
    put_manifest(repo, tag, &manifest(repo, layers));
}

/// Answers every manifest request (GET or HEAD, any reference) with `body` as `content_type`.
fn serve_manifests(content_type: &str, body: Vec<u8>) -> Rule {
    Rule::new(
        "*",
        "/manifests/",
        Fault::Serve {
            status: 200,
            content_type: content_type.into(),
            body: Arc::new(body),
        },
    )
}

// --- Manifests ------------------------------------------------------------------------------

#[test]
fn oversized_manifests_are_refused_without_reading_them() {
    require_registry!();
    let repo = unique_repo("bad-huge-manifest");
    let proxy = FaultProxy::start(&registry());
    let out_dir = temp_dir();

    // A registry that announces 5 MiB: refused from the announced size, before any GET.
    let mut body = br#"{"schemaVersion":2,"x":""#.to_vec();
    body.resize(5 * MIB - 2, b'x');
    body.extend_from_slice(b"\"}");
    proxy.add(serve_manifests(OCI_MANIFEST, body));
    let out = pull(&proxy.reference(&repo, "v1"), out_dir.path(), &[]);
    let stderr = assert_fails(&out, "limit");
    eprintln!("{}", stderr.trim());
    assert!(stderr.contains("invalid manifest"), "{stderr}");
    assert_eq!(proxy.matching("GET", "/manifests/").len(), 0);

    // A mount refuses it the same way, and mounts nothing.
    let stderr = Mount::refused(
        &proxy.reference(&repo, "v1"),
        &["--read-only"],
        "limit",
        "a mount of a 5 MiB manifest succeeded",
    );
    eprintln!("{}", stderr.trim());
    assert!(stderr.contains("invalid manifest"), "{stderr}");
}

/// A registry that sends no `Docker-Content-Digest` on HEAD: the manifest is fetched to be
/// hashed, and reading must stop at the cap with a message naming it.
#[test]
fn oversized_manifests_without_a_digest_header_are_refused() {
    require_registry!();
    let repo = unique_repo("bad-huge-nodigest");
    let proxy = FaultProxy::start(&registry());
    const HUGE: u64 = 256 << 20;
    proxy.add(Rule::new(
        "*",
        "/manifests/v1",
        Fault::ServeHuge {
            content_type: OCI_MANIFEST.into(),
            len: HUGE,
        },
    ));
    let out_dir = temp_dir();
    let out = pull(&proxy.reference(&repo, "v1"), out_dir.path(), &[]);
    let stderr = assert_fails(&out, "4 MiB");
    eprintln!("{}", stderr.trim());
    assert!(stderr.contains("invalid manifest"), "{stderr}");
    proxy.settle(Duration::from_secs(10));
    let read: u64 = proxy
        .matching("GET", "/manifests/")
        .iter()
        .map(|s| s.body_sent)
        .sum();
    assert!(
        read < 32 << 20,
        "{read} bytes of a {HUGE}-byte manifest were read before refusing it"
    );
    assert_only(out_dir.path(), &[]);
}

#[test]
fn malformed_manifests_name_the_problem() {
    require_registry!();
    let repo = unique_repo("bad-malformed");
    let proxy = FaultProxy::start(&registry());
    let out_dir = temp_dir();
    let empty = json!({"mediaType": "application/vnd.oci.empty.v1+json", "digest": EMPTY_CONFIG_DIGEST, "size": 2});
    let layer = |digest: Value, size: Value| json!({"mediaType": DEFAULT_LAYER, "digest": digest, "size": size, "annotations": {TITLE: "f.txt"}});
    let good_digest = json!(sha256_bytes(b"f"));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"this is not JSON".to_vec(), "not JSON"),
        ("empty", Vec::new(), "not JSON"),
        ("an array", b"[1,2]".to_vec(), "not an OCI manifest"),
        (
            "schema 1",
            serde_json::to_vec(&json!({"schemaVersion": 1, "config": empty, "layers": []}))
                .unwrap(),
            "schemaVersion 1",
        ),
        (
            "no config",
            serde_json::to_vec(&json!({"schemaVersion": 2, "layers": []})).unwrap(),
            "config",
        ),
        (
            "layers not a list",
            serde_json::to_vec(&json!({"schemaVersion": 2, "config": empty, "layers": {"a": 1}}))
                .unwrap(),
            "invalid type",
        ),
        (
            "bad layer digest",
            serde_json::to_vec(&json!({"schemaVersion": 2, "config": empty,
                "layers": [layer(json!("sha256:NOT-HEX"), json!(1))]}))
            .unwrap(),
            "invalid digest",
        ),
        (
            "negative size",
            serde_json::to_vec(&json!({"schemaVersion": 2, "config": empty,
                "layers": [layer(good_digest.clone(), json!(-1))]}))
            .unwrap(),
            "invalid value",
        ),
        (
            "docker manifest list",
            serde_json::to_vec(&json!({"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
                "manifests": []}))
            .unwrap(),
            "index",
        ),
    ];
    for (what, body, needle) in cases {
        proxy.clear();
        proxy.add(serve_manifests(OCI_MANIFEST, body));
        let out = pull(&proxy.reference(&repo, "v1"), out_dir.path(), &[]);
        let stderr = assert_fails(&out, "invalid manifest");
        eprintln!("{}", stderr.trim());
        assert!(
            stderr.contains(needle),
            "{what}: the message lacks {needle:?}\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{what}\n{stderr}");
        assert_only(out_dir.path(), &[]);
    }
    // The mount says the same.
    Mount::refused(
        &proxy.reference(&repo, "v1"),
        &["--read-only"],
        "index",
        "a mount of a manifest list succeeded",
    );
}

#[test]
fn unknown_media_types_are_skipped_unless_asked_for() {
    require_registry!();
    let repo = unique_repo("bad-media-types");
    let src = temp_dir();
    write_file(&src.path().join("known.txt"), format!("known {repo}"));
    write_file(&src.path().join("odd.bin"), format!("odd {repo}"));
    assert_ok(&oras_fs_in(
        src.path(),
        [
            "push",
            &reference(&repo, "v1"),
            "known.txt",
            "odd.bin:application/x.oras-fs.unknown",
            "--artifact-type",
            "application/x.oras-fs.artifact",
            "--no-tty",
        ],
    ));
    let out_dir = temp_dir();
    let out = pull(&reference(&repo, "v1"), out_dir.path(), &[]);
    let stderr = stderr_of(&out);
    assert_ok(&out);
    assert!(
        stderr.contains("application/x.oras-fs.unknown") && stderr.contains("odd.bin"),
        "the skipped layer is not named\n{stderr}"
    );
    assert!(stderr.contains("--allow-all"), "{stderr}");
    assert_only(out_dir.path(), &["known.txt"]);
    assert_ok(&pull(&reference(&repo, "v1"), out_dir.path(), &["-a"]));
    assert_only(out_dir.path(), &["known.txt", "odd.bin"]);

    // The mount filters the same way.
    {
        let m = Mount::new(&reference(&repo, "v1"), &["--read-only"]);
        assert_eq!(list_dir(m.path()), [".oras", "known.txt"]);
    }
    let m = Mount::new(&reference(&repo, "v1"), &["--read-only", "-a"]);
    assert_eq!(list_dir(m.path()), [".oras", "known.txt", "odd.bin"]);
}

/// Serves `repo:v1` (an artifact manifest with one file) as `media_type` and pulls it: the
/// root is fetched from `/manifests/` whatever its type, and the pull either succeeds or names
/// the type.
fn pull_manifest_served_as(media_type: &str) {
    let repo = unique_repo("bad-manifest-type");
    let src = temp_dir();
    write_file(&src.path().join("known.txt"), format!("known {repo}"));
    let exported = src.path().join("manifest.json");
    assert_ok(&oras_fs_in(
        src.path(),
        [
            "push",
            &reference(&repo, "v1"),
            "known.txt",
            "--export-manifest",
            exported.to_str().unwrap(),
            "--no-tty",
        ],
    ));
    let mut m: Value = serde_json::from_slice(&read_file(&exported)).unwrap();
    m["mediaType"] = media_type.into();
    let body = serde_json::to_vec(&m).unwrap();
    let digest = sha256_bytes(&body);
    let proxy = FaultProxy::start(&registry());
    proxy.add(serve_manifests(media_type, body));
    let out_dir = temp_dir();
    let out = pull(&proxy.reference(&repo, "v1"), out_dir.path(), &[]);
    eprintln!("{media_type}: {}", describe(&out));
    assert!(
        proxy.blob_gets(&digest).is_empty(),
        "the manifest was fetched from /blobs/\n{}",
        describe(&out)
    );
    assert!(
        out.status.success() || stderr_of(&out).contains(media_type),
        "neither pulled nor named the media type\n{}",
        describe(&out)
    );
    if out.status.success() {
        assert_only(out_dir.path(), &["known.txt"]);
    }
}

/// The OCI artifact manifest type (which `Accept` asks for, and some registries serve).
#[test]
fn manifests_of_the_oci_artifact_type_are_fetched_as_manifests() {
    require_registry!();
    pull_manifest_served_as("application/vnd.oci.artifact.manifest.v1+json");
}

/// A manifest type the client does not know at all: still a manifest (it is what the tag
/// resolved to), so it must not be fetched from `/blobs/`.
#[test]
fn manifests_of_an_unknown_media_type_are_fetched_as_manifests() {
    require_registry!();
    pull_manifest_served_as("application/x.oras-fs.future-manifest+json");
}

/// Titles with `..`, absolute ones, NUL, over-long components or paths: pull refuses them
/// before writing anything, naming the title and the reason.
#[test]
fn unsafe_titles_are_refused_by_pull() {
    require_registry!();
    let repo = unique_repo("bad-titles");
    let ok = format!("ok {repo}").into_bytes();
    upload_blob(&repo, &ok);
    let long = "n".repeat(300);
    let deep = vec!["d".repeat(200); 25].join("/");
    let cases: Vec<(String, &str)> = vec![
        ("../up.txt".into(), "'..'"),
        ("a/../../up.txt".into(), "'..'"),
        ("/abs/file.txt".into(), "absolute"),
        ("nul\0byte.txt".into(), "NUL"),
        (long.clone(), "255"),
        (deep, "too long"),
    ];
    for (i, (title, needle)) in cases.iter().enumerate() {
        let tag = format!("t{i}");
        put_titled_layers(&repo, &tag, &ok, &["ok.txt", title]);
        let area = temp_dir();
        let out_dir = area.path().join("out");
        let out = pull(&reference(&repo, &tag), &out_dir, &[]);
        let stderr = assert_fails(&out, needle);
        eprintln!(
            "title {:?}: {}",
            &title[..title.len().min(40)],
            stderr.trim()
        );
        if title.len() < 100 {
            assert!(
                stderr.contains(&format!("{title:?}")) || stderr.contains(title.as_str()),
                "the message does not name {title:?}\n{stderr}"
            );
        }
        assert_only(area.path(), if out_dir.exists() { &["out"] } else { &[] });
        if out_dir.exists() && *needle != "too long" {
            assert_only(&out_dir, &[]);
        }
        if out_dir.exists() {
            assert!(
                leftovers(&out_dir).is_empty(),
                "temporary files left in {}",
                out_dir.display()
            );
        }
    }
}

/// Mounts (read-only) a new repository's `v1`, one layer per title in `titles` (with
/// `ok.txt` among them), each holding the same bytes; the mount must show `ok.txt` only.
/// Returns the bytes and the mount.
#[track_caller]
fn mount_showing_only_ok_txt(name: &str, titles: &[&str]) -> (Vec<u8>, Mount) {
    let repo = unique_repo(name);
    let ok = format!("ok {repo}").into_bytes();
    upload_blob(&repo, &ok);
    put_titled_layers(&repo, "v1", &ok, titles);
    let m = Mount::new(&reference(&repo, "v1"), &["--read-only"]);
    assert_eq!(
        list_dir(m.path()),
        [".oras", "ok.txt"],
        "{}",
        m.mount_stderr()
    );
    (ok, m)
}

/// A mount shows the layers with safe titles and skips the others with a warning.
#[test]
fn unsafe_titles_are_skipped_by_mount_with_a_warning() {
    require_registry!();
    let titles = ["ok.txt", "../up.txt", "/abs/file.txt", "nul\0byte.txt"];
    let (ok, m) = mount_showing_only_ok_txt("bad-titles-mount", &titles);
    assert_eq!(read_file(&m.join("ok.txt")), ok);
    let stderr = m.mount_stderr();
    for t in &titles[1..] {
        assert!(
            stderr.contains(&format!("{t:?}")),
            "no warning names {t:?}\n{stderr}"
        );
    }
}

/// A title with a component over 255 bytes cannot be opened on Linux (ENAMETOOLONG): pull
/// refuses it, and the mount should skip it with a warning rather than list a file no one can
/// open.
#[test]
fn overlong_titles_are_skipped_by_mount_with_a_warning() {
    require_registry!();
    let long = "n".repeat(300);
    let (_, m) = mount_showing_only_ok_txt("bad-long-title", &["ok.txt", &long]);
    assert!(
        m.mount_stderr().contains("nnnnnnnn"),
        "no warning\n{}",
        m.mount_stderr()
    );
}

/// docs/SEMANTICS.md: "titles that collide with another layer are skipped with a warning at
/// mount time". Pull refuses such a manifest.
#[test]
fn clashing_titles_are_skipped_by_mount_with_a_warning() {
    require_registry!();
    let repo = unique_repo("bad-dup-titles");
    let a = format!("a {repo}").into_bytes();
    let b = format!("b {repo}").into_bytes();
    upload_blob(&repo, &a);
    upload_blob(&repo, &b);
    let layers = vec![
        descriptor(DEFAULT_LAYER, &a, json!({TITLE: "ok.txt"})),
        descriptor(DEFAULT_LAYER, &a, json!({TITLE: "dup.txt"})),
        descriptor(DEFAULT_LAYER, &b, json!({TITLE: "dup.txt"})),
    ];
    put_manifest(&repo, "v1", &manifest(&repo, layers));
    let out = temp_dir();
    assert_fails(&pull(&reference(&repo, "v1"), out.path(), &[]), "dup.txt");
    let m = Mount::try_new(&reference(&repo, "v1"), None, &["--read-only"])
        .unwrap_or_else(|o| panic!("mount refused the manifest\n{}", describe(&o)));
    assert!(list_dir(m.path()).contains(&"ok.txt".to_string()));
    assert!(m.mount_stderr().contains("dup.txt"), "{}", m.mount_stderr());
}

// --- Tar layers -----------------------------------------------------------------------------

#[test]
fn tar_layers_with_links_pointing_out_are_refused() {
    require_registry!();
    use TarEntry::*;
    let repo = unique_repo("bad-tar");
    let cases: Vec<(&str, Vec<TarEntry>, &str)> = vec![
        (
            "symlink up",
            vec![
                Dir("d"),
                File("d/a.txt", b"a"),
                Symlink("d/up", "../../outside"),
            ],
            "points outside",
        ),
        (
            "absolute symlink",
            vec![Dir("d"), Symlink("d/etc", "/etc")],
            "points outside",
        ),
        (
            "hard link up",
            vec![Dir("d"), HardLink("d/hl", "../outside.txt")],
            "points outside",
        ),
        (
            "absolute hard link",
            vec![Dir("d"), HardLink("d/passwd", "/etc/passwd")],
            "points outside",
        ),
        (
            "device",
            vec![Dir("d"), CharDevice("d/null")],
            "unsupported entry type",
        ),
        (
            "entry path up",
            vec![Dir("d"), File("d/../escaped.txt", b"escaped")],
            "leaves the directory",
        ),
        (
            "absolute entry path",
            vec![Dir("d"), File("/tmp/oras-fs-absolute-entry.txt", b"abs")],
            "leaves the directory",
        ),
    ];
    for (i, (what, entries, needle)) in cases.iter().enumerate() {
        let tag = format!("t{i}");
        put_directory_layer(&repo, &tag, entries);
        let area = temp_dir();
        let out_dir = area.path().join("out");
        let out = pull(&reference(&repo, &tag), &out_dir, &[]);
        let stderr = assert_fails(&out, needle);
        eprintln!("{}", stderr.trim());
        assert!(
            stderr.contains("\"d\""),
            "{what}: the layer is not named\n{stderr}"
        );
        assert_only(area.path(), if out_dir.exists() { &["out"] } else { &[] });
        if out_dir.exists() {
            assert_only(&out_dir, &[]);
        }
    }
    assert!(!Path::new("/tmp/oras-fs-absolute-entry.txt").exists());

    // A mount fails the first look inside such a layer with EIO, and unpacks nothing.
    let m = Mount::new(&reference(&repo, "t0"), &["--read-only"]);
    assert_eq!(list_dir(m.path()), [".oras", "d"]);
    assert_eq!(
        errno_of(std::fs::read_dir(m.join("d")).and_then(|mut rd| rd.next().transpose())),
        libc::EIO
    );
}

/// Links that stay inside the layer lexically, but leave it through a symlink unpacked
/// earlier (`d/dot -> .`, then `d/dot/dot/x -> ../..` is physically `d/x -> ../..`).
#[test]
fn tar_layers_with_link_chains_pointing_out_are_refused() {
    require_registry!();
    use TarEntry::*;
    let repo = unique_repo("bad-tar-chain");
    put_directory_layer(
        &repo,
        "v1",
        &[
            Dir("d"),
            Symlink("d/dot", "."),
            Symlink("d/dot/dot/dot/x", "../../.."),
        ],
    );
    let area = temp_dir();
    let out_dir = area.path().join("out");
    let out = pull(&reference(&repo, "v1"), &out_dir, &[]);
    if out.status.success() {
        let x = out_dir.join("d/x");
        let target = std::fs::read_link(&x).ok();
        panic!(
            "pulled a symlink out of the output directory: {} -> {target:?}",
            x.display()
        );
    }
    let stderr = assert_fails(&out, "symlink");
    eprintln!("{}", stderr.trim());
    assert!(stderr.contains("\"d\""), "{stderr}");
    assert_only(area.path(), if out_dir.exists() { &["out"] } else { &[] });
    if out_dir.exists() {
        assert_only(&out_dir, &[]);
    }
    let m = Mount::new(&reference(&repo, "v1"), &["--read-only"]);
    let listed = std::fs::read_dir(m.join("d")).and_then(|mut rd| rd.next().transpose());
    assert_eq!(errno_of(listed), libc::EIO);
}

// --- References and digests -----------------------------------------------------------------

#[test]
fn invalid_references_and_digests_name_the_problem() {
    require_registry!();
    let reg = registry();
    let hex = "a".repeat(64);
    let cases: Vec<(String, &str)> = vec![
        (format!("{reg}/repo@sha256:abc"), "bad digest"),
        (
            format!("{reg}/repo@sha256:{}", "A".repeat(64)),
            "bad digest",
        ),
        (format!("{reg}/repo@md5:{}", "a".repeat(32)), "bad digest"),
        (format!("{reg}/repo@sha512:{hex}"), "bad digest"),
        (format!("{reg}/repo@{hex}"), "bad digest"),
        (format!("{reg}/Repo:v1"), "lowercase"),
        (format!("{reg}/a//b:v1"), "repository component"),
        (format!("{reg}/repo:-bad"), "tag"),
        (format!("{reg}/repo:{}", "t".repeat(129)), "tag"),
        ("127.0.0.1:99999/repo:v1".to_string(), "port"),
        (format!("{reg}/"), "missing repository"),
        ("just-a-name".to_string(), "missing registry"),
        ("bad host!/repo:v1".to_string(), "host"),
    ];
    let tmp = temp_dir();
    write_file(&tmp.path().join("f.txt"), "f");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    for (r, needle) in &cases {
        let check = |out: &Output, cmd: &str| {
            let stderr = assert_fails(out, "invalid reference");
            eprintln!("{}", stderr.trim());
            assert!(
                stderr.contains(needle),
                "{cmd} {r}: the message lacks {needle:?}\n{stderr}"
            );
        };
        check(&pull(r, &tmp.path().join("out"), &[]), "pull");
        check(
            &oras_fs_in(tmp.path(), ["push", r.as_str(), "f.txt", "--no-tty"]),
            "push",
        );
        let out = oras_fs([
            OsStr::new("mount"),
            OsStr::new(r),
            mnt.as_os_str(),
            OsStr::new("--cache-dir"),
            tmp.path().join("cache").as_os_str(),
        ]);
        assert!(!is_mounted(&std::fs::canonicalize(&mnt).unwrap()));
        check(&out, "mount");
    }
    assert!(!tmp.path().join("out").exists());
}

// --- Credentials and tokens -----------------------------------------------------------------

#[test]
fn wrong_or_missing_credentials_name_the_problem() {
    require_registry!();
    let (user, pass) = ("creds-user", "creds-right-2b7e");
    let wrong = "creds-WRONG-9c41";
    let reg = ExtraRegistry::start("bad-creds", &["--htpasswd", &format!("{user}:{pass}")]);
    let repo = unique_repo("bad-creds");
    let r = reg.reference(&repo, "v1");
    let tmp = temp_dir();
    write_file(&tmp.path().join("f.txt"), format!("creds {repo}"));
    let push_with = |extra: &[&str]| {
        let mut args = vec!["push", r.as_str(), "f.txt", "--no-tty"];
        args.extend_from_slice(extra);
        oras_fs_in(tmp.path(), args)
    };

    let stderr = assert_fails(&push_with(&[]), "credentials are required");
    eprintln!("{}", stderr.trim());
    assert!(stderr.contains(&reg.host), "{stderr}");
    let stderr = assert_fails(&push_with(&["-u", user, "-p", wrong]), "authentication");
    eprintln!("{}", stderr.trim());
    assert!(
        stderr.contains(&reg.host) && !stderr.contains(wrong),
        "{stderr}"
    );
    assert_ok(&push_with(&["-u", user, "-p", pass]));
    let out = pull(&r, &tmp.path().join("out"), &["-u", user, "-p", wrong]);
    let stderr = assert_fails(&out, "authentication");
    eprintln!("{}", stderr.trim());
    assert!(!stderr.contains(wrong), "{stderr}");
    assert!(!tmp.path().join("out/f.txt").exists());
    let config = tmp.path().join("config.json");
    let out = oras_fs_stdin(
        [
            OsStr::new("login"),
            OsStr::new(&reg.host),
            OsStr::new("-u"),
            OsStr::new(user),
            OsStr::new("--password-stdin"),
            OsStr::new("--registry-config"),
            config.as_os_str(),
        ],
        wrong.as_bytes(),
    );
    assert_fails(&out, "authentication");
    assert!(!config.exists(), "a failed login stored credentials");
    let stderr = Mount::refused(
        &r,
        &["--read-only", "-u", user, "-p", wrong],
        "authentication",
        "a mount with a wrong password succeeded",
    );
    eprintln!("{}", stderr.trim());
    assert!(!stderr.contains(wrong), "{stderr}");

    // A token service that refuses the credentials.
    let proxy = FaultProxy::start_bearer(&registry(), Some((user, pass)));
    let out = pull(
        &proxy.reference(&repo, "v1"),
        &tmp.path().join("out"),
        &["-u", user, "-p", wrong],
    );
    let stderr = assert_fails(&out, "token service answered 401");
    eprintln!("{}", stderr.trim());
    assert!(!stderr.contains(wrong), "{stderr}");
}

#[test]
fn an_expired_token_is_renewed_once_then_fails_clearly() {
    require_registry!();
    let repo = unique_repo("bad-token");
    let data = random_bytes(&repo, 2 * MIB);
    let src = temp_dir();
    write_file(&src.path().join("data.bin"), &data);
    let digest = sha256_bytes(&data);
    let proxy = FaultProxy::start_bearer(&registry(), None);
    let r = proxy.reference(&repo, "v1");

    // Push; the token expires during the upload: the blob is sent again with a new token.
    proxy.add(Rule::new("PUT", "/blobs/uploads/", Fault::ExpireToken).once());
    assert_ok(&oras_fs_in(
        src.path(),
        ["push", r.as_str(), "data.bin", "--no-tty"],
    ));
    assert!(
        proxy.matching("PUT", "/blobs/uploads/").len() >= 2,
        "the upload was not sent again"
    );
    let tokens = proxy.token_requests();
    assert!(
        tokens.len() <= 6,
        "{} token requests: {tokens:#?}",
        tokens.len()
    );
    assert!(
        tokens.iter().all(|t| t.query.contains("scope=repository")),
        "{tokens:#?}"
    );

    // Pull; the token expires at the blob: one new token, then it goes on.
    proxy.clear();
    proxy.expire_tokens();
    let before = proxy.token_requests().len();
    proxy.add(Rule::blob_get(&digest, Fault::ExpireToken).once());
    let out_dir = temp_dir();
    assert_ok(&pull(&r, out_dir.path(), &[]));
    assert_eq!(read_file(&out_dir.path().join("data.bin")), data);
    let fetched = proxy.token_requests().len() - before;
    assert_eq!(
        fetched, 2,
        "token requests: one at the start, one after the expiry"
    );

    // The token expires while a dropped download resumes: renewed, and the download resumes.
    proxy.clear();
    proxy.clear_log();
    proxy.add(Rule::blob_get(&digest, Fault::DropAfter(500_000)).once());
    proxy.add(Rule::blob_get(&digest, Fault::ExpireToken).once());
    let out_dir = temp_dir();
    assert_ok(&pull(&r, out_dir.path(), &[]));
    assert_eq!(read_file(&out_dir.path().join("data.bin")), data);
    let gets = proxy.blob_gets(&digest);
    assert_eq!(gets.len(), 3, "{gets:#?}");
    assert!(
        gets[2].header("range").is_some(),
        "the resume after renewal starts over"
    );

    // A registry that rejects every new token: renewed once, then a clear error.
    proxy.clear();
    proxy.clear_log();
    let before = proxy.token_requests().len();
    proxy.add(Rule::blob_get(&digest, Fault::ExpireToken));
    let out_dir = temp_dir();
    let out = pull(&r, out_dir.path(), &[]);
    let stderr = assert_fails(&out, "authentication");
    eprintln!("{}", stderr.trim());
    assert!(stderr.contains(&proxy.addr), "{stderr}");
    assert_eq!(proxy.blob_gets(&digest).len(), 2, "not exactly one renewal");
    assert!(proxy.token_requests().len() - before <= 2);
    assert!(!out_dir.path().join("data.bin").exists());
}

/// A Docker `identitytoken` is an OAuth2 refresh token: it is POSTed to the token realm
/// (grant_type=refresh_token), never sent as a password.
#[test]
fn an_identity_token_from_the_docker_config_gets_tokens_by_refresh_grant() {
    require_registry!();
    let repo = unique_repo("identity-token");
    let src = temp_dir();
    write_file(&src.path().join("i.txt"), "identity");
    let proxy = FaultProxy::start_bearer_refresh(&registry(), "refresh-me-123");
    let r = proxy.reference(&repo, "v1");
    let config = src.path().join("config.json");
    write_file(
        &config,
        format!(
            r#"{{"auths":{{"{}":{{"identitytoken":"refresh-me-123"}}}}}}"#,
            proxy.addr
        ),
    );
    let cfg = config.to_str().unwrap();
    assert_ok(&push(src.path(), &r, &["i.txt", "--registry-config", cfg]));
    let out = src.path().join("out");
    assert_ok(&pull(&r, &out, &["--registry-config", cfg]));
    assert_eq!(read_file(&out.join("i.txt")), b"identity");
    let tokens = proxy.token_requests();
    assert!(!tokens.is_empty());
    assert!(
        tokens
            .iter()
            .all(|t| t.form.contains("grant_type=refresh_token") && t.issued.is_some()),
        "{tokens:#?}"
    );
    // A wrong identity token fails clearly.
    write_file(
        &config,
        format!(
            r#"{{"auths":{{"{}":{{"identitytoken":"wrong"}}}}}}"#,
            proxy.addr
        ),
    );
    assert_fails(
        &pull(&r, &out, &["--registry-config", cfg]),
        "authentication",
    );
}

// --- Issue #12: modes, bombs, nested titles --------------------------------------------------

/// A tar+gzip (made with the `tar` crate) of `(path, mode, content)` entries, a path ending
/// in '/' being a directory; and the digest of the uncompressed tar.
fn tgz_with_modes(entries: &[(&str, u32, &[u8])]) -> (Vec<u8>, String) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, mode, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        if name.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, name, std::io::empty()).unwrap();
        } else {
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, *data).unwrap();
        }
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), sha256_bytes(&tar))
}

/// Puts `gz` as the one directory layer, titled `d`, of `repo:tag`.
fn put_tgz_layer(repo: &str, tag: &str, gz: &[u8], tar_digest: &str) {
    upload_blob(repo, gz);
    let layer = descriptor(
        DIRECTORY_LAYER,
        gz,
        json!({
            TITLE: "d",
            "io.deis.oras.content.unpack": "true",
            "io.deis.oras.content.digest": tar_digest,
        }),
    );
    put_manifest(repo, tag, &manifest(repo, vec![layer]));
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A hostile directory layer cannot plant setuid, setgid or sticky files (we run as root).
#[test]
fn pull_never_recreates_setuid_setgid_or_sticky_modes() {
    require_registry!();
    let repo = unique_repo("bad-modes");
    let (gz, tar_digest) = tgz_with_modes(&[
        ("d/", 0o7755, b""),
        ("d/suid", 0o4777, b"#!/bin/sh\necho owned\n"),
        ("d/sgid", 0o2755, b"x"),
        ("d/tmp/", 0o1777, b""),
        ("d/private", 0o600, b"y"),
    ]);
    put_tgz_layer(&repo, "v1", &gz, &tar_digest);
    let out = temp_dir();
    assert_ok(&pull(&reference(&repo, "v1"), out.path(), &[]));
    let d = out.path().join("d");
    let umask = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        .unwrap();
    let want = |m: u32| format!("{:o}", m & !umask);
    assert_eq!(format!("{:o}", mode_of(&d.join("suid"))), want(0o777));
    assert_eq!(format!("{:o}", mode_of(&d.join("sgid"))), want(0o755));
    assert_eq!(format!("{:o}", mode_of(&d.join("tmp"))), want(0o777));
    assert_eq!(format!("{:o}", mode_of(&d)), want(0o755));
    assert_eq!(format!("{:o}", mode_of(&d.join("private"))), want(0o600));
    assert_eq!(read_file(&d.join("sgid")), b"x");
}

/// A gzip bomb stops at the limit with a clear error, and leaves nothing behind.
#[test]
fn pull_bounds_what_a_directory_layer_unpacks_to() {
    require_registry!();
    let repo = unique_repo("bad-bomb");
    let zeros = vec![0u8; 8 * MIB];
    let (gz, tar_digest) = tgz_with_modes(&[("d/", 0o755, b""), ("d/zeros", 0o644, &zeros)]);
    assert!(gz.len() < 64 * 1024, "{} bytes compressed", gz.len());
    put_tgz_layer(&repo, "v1", &gz, &tar_digest);
    let r = reference(&repo, "v1");

    let area = temp_dir();
    let out_dir = area.path().join("out");
    let stderr = assert_fails(
        &pull(&r, &out_dir, &["--max-unpacked-size", "1M"]),
        "unpacks to more than 1048576 bytes",
    );
    assert!(stderr.contains("\"d\""), "names no layer: {stderr}");
    assert!(stderr.contains("--max-unpacked-size"), "{stderr}");
    assert_only(&out_dir, &[]);

    assert_fails(
        &pull(&r, &out_dir, &["--max-unpacked-size", "lots"]),
        "unlimited",
    );
    // The default (32 x 26 KB, but at least 256 MiB) and a larger limit let it through.
    assert_ok(&pull(&r, &out_dir, &[]));
    assert_eq!(read_file(&out_dir.join("d/zeros")), zeros);
    let again = area.path().join("again");
    assert_ok(&pull(&r, &again, &["--max-unpacked-size", "9M"]));
    assert_ok(&pull(&r, &again, &["--max-unpacked-size", "unlimited"]));
}

/// `x` and `x/y` cannot both be pulled: refused before any download, nothing written.
#[test]
fn pull_refuses_a_title_inside_another_before_downloading() {
    require_registry!();
    let repo = unique_repo("bad-nested");
    let a = format!("a {repo}").into_bytes();
    let b = format!("b {repo}").into_bytes();
    upload_blob(&repo, &a);
    upload_blob(&repo, &b);
    for (tag, outer, inner) in [("v1", "x", "x/y"), ("v2", "./x/", "x//y/z")] {
        let layers = vec![
            descriptor(DEFAULT_LAYER, &a, json!({TITLE: outer})),
            descriptor(DEFAULT_LAYER, &b, json!({TITLE: inner})),
        ];
        put_manifest(&repo, tag, &manifest(&repo, layers));
        let area = temp_dir();
        let out_dir = area.path().join("out");
        let log_before = logged_requests(&registry_log(), &format!("/v2/{repo}/blobs/")).len();
        let stderr = assert_fails(&pull(&reference(&repo, tag), &out_dir, &[]), "inside");
        assert!(
            stderr.contains(&format!("{outer:?}")) && stderr.contains(&format!("{inner:?}")),
            "{stderr}"
        );
        assert_only(&out_dir, &[]);
        let gets = logged_requests(&registry_log(), &format!("/v2/{repo}/blobs/"));
        assert_eq!(gets.len(), log_before, "downloads began: {gets:?}");
    }
}

/// Many layers with one digest (15,000 in the report) cost one download, not one each.
#[test]
fn pull_downloads_a_digest_shared_by_many_layers_once() {
    require_registry!();
    let repo = unique_repo("bad-shared-digest");
    let data = random_bytes(&repo, 100_000);
    let digest = upload_blob(&repo, &data);
    let other = format!("other {repo}").into_bytes();
    let other_digest = upload_blob(&repo, &other);
    let mut layers: Vec<Value> = (0..200)
        .map(|i| {
            descriptor(
                DEFAULT_LAYER,
                &data,
                json!({TITLE: format!("f/{i:03}.bin")}),
            )
        })
        .collect();
    layers.insert(
        7,
        descriptor(DEFAULT_LAYER, &other, json!({TITLE: "other.txt"})),
    );
    put_manifest(&repo, "v1", &manifest(&repo, layers));

    let area = temp_dir();
    let out_dir = area.path().join("out");
    assert_ok(&pull(&reference(&repo, "v1"), &out_dir, &[]));
    let files = tree(&out_dir);
    assert_eq!(files.len(), 201);
    assert!(files.iter().all(|(k, v)| if k == "other.txt" {
        v == &other
    } else {
        v == &data
    }));
    let gets = |d: &str| {
        logged_requests(&registry_log(), &format!("/v2/{repo}/blobs/{d}"))
            .into_iter()
            .filter(|r| r.method == "GET")
            .count()
    };
    assert_eq!(gets(&digest), 1, "downloads of the shared blob");
    assert_eq!(gets(&other_digest), 1);
}
