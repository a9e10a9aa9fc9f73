//! Lazy all the way down, against a real registry and real FUSE mounts: a seekable directory
//! layer lists from its TOC and reads one file by its own chunks; a plain tar.gz (the Python
//! SDK's) becomes lazy once `oras-fs index` published its seek index; a container image
//! (built here, pushed with skopeo in OCI and Docker form) mounts as its merged root
//! filesystem, whiteouts applied. Run with `scripts/test.sh`.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

const MIB: usize = 1 << 20;

/// A directory of `n` random files of `size` bytes, a larger file, a subdirectory and a
/// symlink, under `root/name`.
fn make_tree(root: &Path, name: &str, n: usize, size: usize) -> BTreeMap<String, Vec<u8>> {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..n {
        write_random_file(
            &dir.join(format!("f{i:03}.bin")),
            &format!("{name}{i}"),
            size as u64,
        );
    }
    write_random_file(&dir.join("big.bin"), &format!("{name}-big"), 9 * MIB as u64);
    write_file(&dir.join("sub/x.txt"), b"inside\n");
    std::os::unix::fs::symlink("sub/x.txt", dir.join("link")).unwrap();
    tree(&dir)
}

/// The one layer of a pushed artifact, from `oras-fs manifest fetch`.
fn only_layer(reference: &str) -> serde_json::Value {
    let m = json(ok(&["manifest", "fetch", reference]).as_bytes());
    m["layers"][0].clone()
}

#[test]
fn a_seekable_directory_layer_reads_one_file_by_its_chunks() {
    require_registry!();
    let repo = unique_repo("lazy-seek");
    let r = reference(&repo, "v1");
    let src = temp_dir();
    let want = make_tree(src.path(), "data", 24, 300 * 1024);
    push_files(src.path(), &r, &["data"]);
    let layer = only_layer(&r);
    assert!(
        layer["annotations"]["containerd.io/snapshot/stargz/toc.digest"].is_string(),
        "not a seekable layer: {layer}"
    );
    let layer_size = layer["size"].as_u64().unwrap();
    let layer_digest = layer["digest"].as_str().unwrap().to_string();

    let m = Mount::new(&r, &["--read-only"]);
    let log = registry_log();
    let before = log_offset(&log);
    // `ls -R` and stat: the TOC only.
    let listed = run(std::process::Command::new("ls")
        .arg("-lR")
        .arg(m.join("data")));
    assert_ok(&listed);
    assert_eq!(
        std::fs::metadata(m.join("data/big.bin")).unwrap().len(),
        9 * MIB as u64
    );
    assert_eq!(
        std::fs::read_link(m.join("data/link")).unwrap(),
        Path::new("sub/x.txt")
    );
    settle_log();
    let toc_bytes = bytes_served(&log, before, &layer_digest);
    assert!(
        toc_bytes * 100 <= layer_size * 2,
        "listing fetched {toc_bytes} of {layer_size} bytes"
    );
    // One small file: its own chunk; with the listing, at most 3 requests since the mount.
    let file_from = log_offset(&log);
    assert_eq!(read_file(&m.join("data/f007.bin")), want["f007.bin"]);
    settle_log();
    let served: u64 = blob_gets_since(&log, file_from, &repo)
        .iter()
        .map(|e| e.written)
        .sum();
    assert!(
        served <= 2 * MIB as u64,
        "{served} bytes for a 300 KiB file"
    );
    let all = blob_gets_since(&log, before, &repo);
    assert!(
        all.len() <= 3,
        "{} requests to list and read one file: {all:?}",
        all.len()
    );
    // Every file, byte for byte (the large one spans several chunks).
    assert_eq!(tree(&m.join("data")), want);
}

#[test]
fn a_plain_tar_gz_layer_is_lazy_once_indexed() {
    require_registry!();
    let repo = unique_repo("lazy-index");
    let r = reference(&repo, "v1");
    let src = temp_dir();
    let want = make_tree(src.path(), "plain", 40, 512 * 1024);
    // A directory layer as oras-go and older oras-fs made them: one plain tar.gz by GNU tar.
    let tgz = src.path().join("plain.tgz");
    assert_ok(&run(std::process::Command::new("tar")
        .arg("-C")
        .arg(src.path())
        .args(["-czf", path_str(&tgz), "plain"])));
    let gz = read_file(&tgz);
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
    let layout = src.path().join("layout");
    let layer = layout_blob(&layout, "application/vnd.oci.image.layer.v1.tar+gzip", &gz);
    let mut layer = layer;
    layer["annotations"] = serde_json::json!({
        "org.opencontainers.image.title": "plain",
        "io.deis.oras.content.unpack": "true",
        "io.deis.oras.content.digest": sha256_bytes(&tar),
    });
    write_layout(
        &layout,
        "application/vnd.oci.empty.v1+json",
        b"{}",
        vec![layer],
    );
    skopeo_ok(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{r}"),
    ]);
    let layer = only_layer(&r);
    assert!(layer["annotations"]["containerd.io/snapshot/stargz/toc.digest"].is_null());
    let layer_size = layer["size"].as_u64().unwrap();
    let layer_digest = layer["digest"].as_str().unwrap().to_string();

    // Without an index, the mount builds one from the whole layer: still right.
    {
        let m = Mount::new(&r, &["--read-only"]);
        assert_eq!(read_file(&m.join("plain/f003.bin")), want["f003.bin"]);
    }
    let out = ok(&["index", &r]);
    assert!(out.contains("Indexed 1 layer"), "{out}");
    // A fresh cache finds the published index: one file costs a span and the file.
    let m = Mount::new(&r, &["--read-only"]);
    let log = registry_log();
    let before = log_offset(&log);
    assert_eq!(read_file(&m.join("plain/f031.bin")), want["f031.bin"]);
    settle_log();
    let served = bytes_served(&log, before, &layer_digest);
    assert!(
        served <= (4 * MIB + 2 * MIB) as u64 && served * 3 < layer_size,
        "{served} bytes of a {layer_size}-byte layer for one 512 KiB file"
    );
    assert_eq!(tree(&m.join("plain")), want);
}

// --- A container image ---------------------------------------------------------------------

struct TarEntry<'a> {
    path: &'a str,
    kind: tar::EntryType,
    data: &'a [u8],
    mode: u32,
    uid: u64,
    link: Option<&'a str>,
}

fn entry<'a>(path: &'a str, data: &'a [u8]) -> TarEntry<'a> {
    TarEntry {
        path,
        kind: tar::EntryType::Regular,
        data,
        mode: 0o644,
        uid: 0,
        link: None,
    }
}

fn dir_entry(path: &str) -> TarEntry<'_> {
    TarEntry {
        kind: tar::EntryType::Directory,
        mode: 0o755,
        ..entry(path, b"")
    }
}

/// A tar of `entries`, and its gzip.
fn layer_tar(entries: &[TarEntry]) -> (Vec<u8>, Vec<u8>) {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.uid);
        h.set_mtime(1_700_000_000);
        if let Some(l) = e.link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        b.append_data(&mut h, e.path, e.data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    (tar.clone(), gz.finish().unwrap())
}

/// Writes `data` as a blob of the OCI layout `dir`; its descriptor JSON.
fn layout_blob(dir: &Path, media_type: &str, data: &[u8]) -> serde_json::Value {
    let digest = sha256_bytes(data);
    let path = dir.join("blobs/sha256").join(&digest[7..]);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
    serde_json::json!({"mediaType": media_type, "digest": digest, "size": data.len()})
}

/// An OCI image layout at `dir` (tag `v1`) of two layers: the second replaces, whites out
/// and opaques parts of the first.
fn image_layout(dir: &Path, big: &[u8]) {
    let lower = [
        dir_entry("etc"),
        entry("etc/os-release", b"NAME=\"Lower\"\n"),
        entry("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
        dir_entry("bin"),
        TarEntry {
            mode: 0o755,
            ..entry("bin/tool", big)
        },
        TarEntry {
            kind: tar::EntryType::Link,
            link: Some("bin/tool"),
            ..entry("bin/tool2", b"")
        },
        TarEntry {
            kind: tar::EntryType::Symlink,
            link: Some("usr/lib"),
            mode: 0o777,
            ..entry("lib", b"")
        },
        dir_entry("usr"),
        dir_entry("usr/lib"),
        entry("usr/lib/libc.so", b"\x7fELF fake\n"),
        dir_entry("var"),
        dir_entry("var/cache"),
        entry("var/cache/old", b"old\n"),
        dir_entry("tmp"),
    ];
    let upper = [
        entry("etc/os-release", b"NAME=\"Upper\"\n"),
        entry("etc/.wh.passwd", b""),
        dir_entry("var/cache"),
        entry("var/cache/.wh..wh..opq", b""),
        entry("var/cache/new", b"new\n"),
        entry(".wh.tmp", b""),
        TarEntry {
            uid: 1000,
            ..entry("home/user/notes", b"mine\n")
        },
    ];
    let mut diff_ids = Vec::new();
    let mut layers = Vec::new();
    // The lower layer gzip'd, the upper one a plain tar (as some builders leave them).
    for (entries, gzip) in [(&lower[..], true), (&upper[..], false)] {
        let (tar, gz) = layer_tar(entries);
        diff_ids.push(sha256_bytes(&tar));
        layers.push(if gzip {
            layout_blob(dir, "application/vnd.oci.image.layer.v1.tar+gzip", &gz)
        } else {
            layout_blob(dir, "application/vnd.oci.image.layer.v1.tar", &tar)
        });
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {}
    });
    write_layout(
        dir,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config).unwrap(),
        layers,
    );
}

/// Finishes the OCI layout `dir` (tag `v1`): a config blob, and a manifest of it and `layers`
/// (descriptors of blobs already written with [`layout_blob`]).
fn write_layout(dir: &Path, config_type: &str, config: &[u8], layers: Vec<serde_json::Value>) {
    let config = layout_blob(dir, config_type, config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": layers
    });
    let mut desc = layout_blob(
        dir,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "v1"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[test]
fn an_image_mounts_as_its_merged_root_filesystem() {
    require_registry!();
    let repo = unique_repo("lazy-image");
    let work = temp_dir();
    let big = random_bytes("image-tool", 7 * MIB);
    image_layout(&work.path().join("layout"), &big);
    let layout = format!("oci:{}:v1", work.path().join("layout").display());
    for (tag, format) in [("oci", "oci"), ("docker", "v2s2")] {
        skopeo_ok(&[
            "copy",
            "--dest-tls-verify=false",
            "--format",
            format,
            &layout,
            &format!("docker://{}", reference(&repo, tag)),
        ]);
    }
    // The same image with its layers recompressed as zstd (as podman and buildx push them).
    // Pushed to `localhost`: skopeo remembers where it pushed each blob (by registry name),
    // and would mount the gzip blobs from the repository above instead of recompressing.
    let zstd_ref = reference(&unique_repo("lazy-image-zstd"), "v1");
    let to_localhost = zstd_ref.replacen("127.0.0.1:", "localhost:", 1);
    skopeo_ok(&[
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "oci",
        "--dest-compress-format",
        "zstd",
        &layout,
        &format!("docker://{to_localhost}"),
    ]);
    let zstd = json(ok(&["manifest", "fetch", &zstd_ref]).as_bytes());
    for layer in zstd["layers"].as_array().unwrap() {
        assert_eq!(
            layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd",
            "{zstd}"
        );
    }
    let (oci_ref, docker_ref) = (reference(&repo, "oci"), reference(&repo, "docker"));
    for (tag, r) in [
        ("oci", &oci_ref),
        ("docker", &docker_ref),
        ("zstd", &zstd_ref),
    ] {
        let m = Mount::new(r, &[]);
        let top = list_dir(m.path());
        assert_eq!(
            top,
            [".oras", "bin", "etc", "home", "lib", "usr", "var"],
            "{tag}"
        );
        assert_eq!(read_file(&m.join("etc/os-release")), b"NAME=\"Upper\"\n");
        assert!(
            !m.join("etc/passwd").exists(),
            "{tag}: the whiteout did not hide etc/passwd"
        );
        assert_eq!(
            list_dir(&m.join("var/cache")),
            ["new"],
            "{tag}: opaque directory"
        );
        let tool = std::fs::metadata(m.join("bin/tool")).unwrap();
        assert_eq!(tool.permissions().mode() & 0o7777, 0o755);
        assert_eq!(tool.mtime(), 1_700_000_000);
        assert_eq!(read_file(&m.join("bin/tool")), big);
        assert_eq!(read_file(&m.join("bin/tool2")), big, "{tag}: hard link");
        assert_eq!(
            std::fs::read_link(m.join("lib")).unwrap(),
            Path::new("usr/lib")
        );
        assert_eq!(read_file(&m.join("lib/libc.so")), b"\x7fELF fake\n");
        let notes = std::fs::metadata(m.join("home/user/notes")).unwrap();
        assert_eq!(
            (notes.uid(), notes.gid()),
            (1000, 1000),
            "{tag}: owners as in the tar"
        );
        assert!(m.join(".oras/config.json").exists());
        // Read-only, and says why.
        let err = std::fs::write(m.join("etc/new"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    }
    // After `oras-fs index`, a fresh cache reads one file without the whole layer.
    let r = reference(&repo, "oci");
    let out = ok(&["index", &r]);
    assert!(out.contains("Indexed "), "{out}");
    let lower = json(ok(&["manifest", "fetch", &r]).as_bytes())["layers"][0].clone();
    let m = Mount::new(&r, &[]);
    let log = registry_log();
    let before = log_offset(&log);
    assert_eq!(read_file(&m.join("etc/os-release")), b"NAME=\"Upper\"\n");
    assert_eq!(read_file(&m.join("lib/libc.so")), b"\x7fELF fake\n");
    settle_log();
    let served = bytes_served(&log, before, lower["digest"].as_str().unwrap());
    assert!(
        served * 2 < lower["size"].as_u64().unwrap(),
        "{served} bytes of the lower layer for two small files"
    );
    drop(m);
    // So does a mount of the whole repository, which finds the index of the tag's manifest.
    let m = Mount::new(&format!("{}/{repo}", registry()), &[]);
    let before = log_offset(&log);
    assert_eq!(
        read_file(&m.join("oci/etc/os-release")),
        b"NAME=\"Upper\"\n"
    );
    settle_log();
    let served = bytes_served(&log, before, lower["digest"].as_str().unwrap());
    assert!(
        served * 2 < lower["size"].as_u64().unwrap(),
        "a repository mount read {served} bytes of the lower layer for one small file\n{}",
        m.daemon_log()
    );
    drop(m);
    // Side by side: each layer on its own, whiteout files as they are.
    let m = Mount::new(&reference(&repo, "oci"), &["--layers"]);
    assert_eq!(list_dir(m.path()), [".oras", "0", "1"]);
    assert!(m.join("0/etc/passwd").exists());
    assert!(m.join("1/etc/.wh.passwd").exists());
    assert_eq!(read_file(&m.join("0/etc/os-release")), b"NAME=\"Lower\"\n");
}

#[test]
fn an_image_index_mounts_the_manifest_of_a_platform_or_every_manifest() {
    require_registry!();
    let repo = unique_repo("lazy-platforms");
    let work = temp_dir();
    let layout = work.path().join("layout");
    // Two single-layer images, then an index of both in place of the layout's index.json.
    let mut children = Vec::new();
    let mut layer_hex = Vec::new();
    for arch in ["amd64", "arm64"] {
        let text = format!("built for {arch}\n");
        let (_, gz) = layer_tar(&[dir_entry("etc"), entry("etc/arch", text.as_bytes())]);
        layer_hex.push(sha256_bytes(&gz)["sha256:".len()..].to_string());
        let layer = layout_blob(&layout, "application/vnd.oci.image.layer.v1.tar+gzip", &gz);
        write_layout(
            &layout,
            "application/vnd.oci.image.config.v1+json",
            b"{}",
            vec![layer],
        );
        let index = json(&read_file(&layout.join("index.json")));
        let mut child = index["manifests"][0].clone();
        child["annotations"] = serde_json::Value::Null;
        child["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        children.push(child);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": children
    });
    let mut desc = layout_blob(
        &layout,
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&index).unwrap(),
    );
    desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "v1"});
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let r = reference(&repo, "v1");
    skopeo_ok(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{r}"),
    ]);

    // Indexed for arm64, mounted for arm64: the mount finds the child's referrer.
    let out = ok(&["index", &r, "--platform", "linux/arm64"]);
    assert!(out.contains("Indexed 1 layer"), "{out}");
    let m = Mount::new(&r, &["--platform", "linux/arm64"]);
    assert_eq!(read_file(&m.join("etc/arch")), b"built for arm64\n");
    let notes = String::from_utf8(read_file(&m.join(".oras/notes"))).unwrap();
    assert!(notes.contains("image index"), "{notes}");
    // Read-only: a push to the tag would replace the whole index with this one manifest.
    let err = std::fs::write(m.join("NOTE.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    drop(m);
    // Without --platform: one read-only directory per child, each its image's root filesystem.
    let m = Mount::new(&r, &[]);
    assert_eq!(list_dir(m.path()), [".oras", "linux_amd64", "linux_arm64"]);
    for arch in ["amd64", "arm64"] {
        let file = m.join(format!("linux_{arch}/etc/arch"));
        assert_eq!(read_file(&file), format!("built for {arch}\n").as_bytes());
    }
    let err = std::fs::write(m.join("linux_amd64/NOTE.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // The arm64 child's index came from its referrer (kept by the index blob's digest), the
    // amd64 one's was built here (kept by the layer's).
    let indexes = list_dir(&m.cache_dir().join("indexes/sha256"));
    assert!(indexes.contains(&layer_hex[0]), "{indexes:?}");
    assert!(!indexes.contains(&layer_hex[1]), "{indexes:?}");
    assert_eq!(indexes.len(), 2, "{indexes:?}");
    drop(m);
    // A platform the index does not have: refused, naming those it has.
    let err = Mount::try_new(&r, None, &["--platform", "linux/s390x"])
        .err()
        .expect("refused");
    let stderr = String::from_utf8_lossy(&err.stderr).to_string();
    assert!(
        stderr.contains("linux/amd64") && stderr.contains("linux/arm64"),
        "{stderr}"
    );
}
