//! Directory layers are seekable (eStargz-compatible) and still plain tar+gzip to everyone
//! else: the Python ORAS SDK, `tar xzf` and the oras CLI (when installed) unpack them to the
//! same tree, with no `stargz.index.json` beside it; our own pull stays one download; and
//! plain tar+gzip directories others push still pull as before. Run with `scripts/test.sh`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use oras_fs::archive::seekable::{locate_toc, parse_toc, FOOTER_SIZE, TOC_DIGEST_ANNOTATION};
use oras_fs::archive::EntryKind;
use oras_fs::digest::Digest;

const CONTENT_DIGEST: &str = "io.deis.oras.content.digest";
const UNPACK: &str = "io.deis.oras.content.unpack";

/// A tree with a file split in three chunks, small and empty files, nesting and a symlink.
fn write_tree(root: &Path, seed: &str) {
    write_random_file(&root.join("big.bin"), seed, 9 << 20);
    write_file(&root.join("a.txt"), format!("a {seed}\n"));
    write_file(&root.join("empty"), "");
    write_file(&root.join("sub/deeper/b.txt"), format!("b {seed}\n"));
    write_random_file(&root.join("sub/odd.bin"), &format!("{seed}-odd"), 100_003);
    std::os::unix::fs::symlink("../a.txt", root.join("sub/link")).unwrap();
}

/// The same files, links and contents (compared by digest, so a failure stays readable).
#[track_caller]
fn assert_same_tree(got: &Path, want: &Path) {
    let digests = |root: &Path| -> Vec<(String, String)> {
        tree(root)
            .into_iter()
            .map(|(k, v)| (k, Digest::of(&v).to_string()))
            .collect()
    };
    assert_eq!(digests(got), digests(want));
}

#[track_caller]
fn assert_no_toc(dir: &Path) {
    assert!(
        !tree(dir).keys().any(|k| k.contains("stargz.index.json")),
        "a TOC was unpacked into {}: {:?}",
        dir.display(),
        list_dir(dir)
    );
}

/// Pushes a sample tree as directory `data` to a new repository: (repository, reference,
/// the directory holding `data`, the layer descriptor JSON, the blob's bytes).
fn pushed_directory(
    tmp: &Path,
    prefix: &str,
) -> (
    String,
    String,
    std::path::PathBuf,
    serde_json::Value,
    Vec<u8>,
) {
    let repo = unique_repo(prefix);
    let src = tmp.join("src");
    write_tree(&src.join("data"), &repo);
    let r = reference(&repo, "v1");
    assert_ok(&push(&src, &r, &["data"]));
    let m = json(&get_manifest(&repo, "v1").1);
    let layer = m["layers"][0].clone();
    let digest = layer["digest"].as_str().unwrap().to_string();
    let blob = std::fs::read(blob_path(&registry_dir(), &digest)).unwrap();
    (repo, r, src, layer, blob)
}

#[test]
fn a_pushed_directory_is_a_seekable_layer_with_a_verified_toc() {
    require_registry!();
    let tmp = temp_dir();
    let (_, _, src, layer, blob) = pushed_directory(tmp.path(), "seek-toc");
    let ann = &layer["annotations"];
    assert_eq!(ann[UNPACK], "true");
    let toc_digest: Digest = ann[TOC_DIGEST_ANNOTATION]
        .as_str()
        .expect("TOC digest annotation")
        .parse()
        .unwrap();
    let size = blob.len() as u64;
    let range = locate_toc(&blob[blob.len() - FOOTER_SIZE as usize..], size).unwrap();
    let entries = parse_toc(
        &blob[range.start as usize..range.end as usize],
        size,
        Some(&toc_digest),
    )
    .unwrap();
    let big = entries.iter().find(|e| e.path == "data/big.bin").unwrap();
    let EntryKind::File { size, chunks } = &big.kind else {
        panic!("{big:?}")
    };
    assert_eq!(*size, 9 << 20);
    assert_eq!(chunks.len(), 3);
    assert_eq!(entries.len(), tree(&src).len() + 3, "{entries:?}"); // + data, sub, sub/deeper

    // The content digest covers the tar through its first end marker, not the TOC.
    let mut all = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(blob.as_slice()),
        &mut all,
    )
    .unwrap();
    let want: Digest = ann[CONTENT_DIGEST].as_str().unwrap().parse().unwrap();
    assert_ne!(Digest::of(&all), want);
    let mut prefix = want.digester();
    let mut end = None;
    for (i, block) in all.chunks(512).enumerate() {
        prefix.update(block);
        if prefix.clone().finish() == want {
            end = Some((i + 1) * 512);
            break;
        }
    }
    let end = end.expect("the content digest covers a prefix of the tar");
    assert!(all[end - 1024..end].iter().all(|&b| b == 0));
}

#[test]
fn the_python_sdk_and_tar_unpack_a_seekable_layer_to_the_same_tree() {
    require_registry!();
    let tmp = temp_dir();
    let (_, r, src, _, blob) = pushed_directory(tmp.path(), "seek-py");

    let py_out = tmp.path().join("py-out");
    let out = sdk_pull(tmp.path(), &r, &py_out);
    assert_ok(&out);
    assert_eq!(list_dir(&py_out), ["data"]);
    assert_same_tree(&py_out, &src);
    assert_no_toc(&py_out);

    let tar_out = tmp.path().join("tar-out");
    std::fs::create_dir_all(&tar_out).unwrap();
    let layer = tmp.path().join("layer.tar.gz");
    std::fs::write(&layer, &blob).unwrap();
    let out = run(Command::new("tar")
        .arg("xzf")
        .arg(&layer)
        .arg("-C")
        .arg(&tar_out));
    assert_ok(&out);
    assert!(out.stderr.is_empty(), "{}", describe(&out));
    assert_eq!(list_dir(&tar_out), ["data"]);
    assert_same_tree(&tar_out, &src);
    assert_no_toc(&tar_out);
}

#[test]
fn our_pull_unpacks_a_seekable_layer_in_one_download() {
    require_registry!();
    let tmp = temp_dir();
    let (repo, r, src, layer, _) = pushed_directory(tmp.path(), "seek-pull");
    let offset = log_offset(&registry_log());
    let dest = tmp.path().join("out");
    pull_to(&r, &dest, &[]);
    assert_eq!(list_dir(&dest), ["data"]);
    assert_same_tree(&dest, &src);
    assert_no_toc(&dest);
    settle_log();
    let digest = layer["digest"].as_str().unwrap();
    let gets: Vec<_> = blob_gets_since(&registry_log(), offset, &repo)
        .into_iter()
        .filter(|e| e.uri.contains(digest))
        .collect();
    assert_eq!(gets.len(), 1, "{gets:?}");
}

#[test]
fn reproducible_pushes_give_the_same_seekable_layer() {
    require_registry!();
    let tmp = temp_dir();
    let src = tmp.path().join("src");
    let repo = unique_repo("seek-repro");
    write_tree(&src.join("data"), &repo);
    let mut digests = Vec::new();
    for tag in ["a", "b"] {
        assert_ok(&push(
            &src,
            &reference(&repo, tag),
            &["data", "--reproducible"],
        ));
        // Touch a file between the pushes: reproducible mode ignores mtimes.
        write_file(&src.join("data/a.txt"), format!("a {repo}\n"));
        let m = json(&get_manifest(&repo, tag).1);
        digests.push(m["layers"][0]["digest"].as_str().unwrap().to_string());
    }
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn plain_tar_gz_directories_of_other_tools_pull_as_before() {
    require_registry!();
    let repo = unique_repo("seek-plain");
    let tmp = temp_dir();
    let src = tmp.path().join("src");
    write_tree(&src.join("data"), &repo);

    // GNU tar's tar.gz, as oras-go's: one gzip member, the tar padded to a 10 KiB record,
    // annotated with the digest of the whole uncompressed stream.
    let layer = tmp.path().join("data.tar.gz");
    assert_ok(&run(Command::new("tar")
        .arg("czf")
        .arg(&layer)
        .arg("-C")
        .arg(&src)
        .arg("data")));
    let blob = std::fs::read(&layer).unwrap();
    let mut tar_bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(blob.as_slice()),
        &mut tar_bytes,
    )
    .unwrap();
    let layer_digest = upload_blob(&repo, &blob);
    let config = upload_blob(&repo, b"{}");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": blob.len(),
            "annotations": {
                "org.opencontainers.image.title": "data",
                UNPACK: "true",
                CONTENT_DIGEST: Digest::of(&tar_bytes).to_string(),
            }
        }]
    });
    put_manifest(&repo, "tar", &serde_json::to_vec(&manifest).unwrap());
    let dest = tmp.path().join("out");
    pull_to(&reference(&repo, "tar"), &dest, &[]);
    assert_same_tree(&dest, &src);

    // The Python SDK's directory layer has no unpack annotation: pulled (with -a) as the
    // gzip file it is, as before.
    let r = reference(&repo, "py");
    assert_ok(&interop(&src, ["push", &r, "data", "--plain-http"]));
    let m = json(&get_manifest(&repo, "py").1);
    assert!(
        m["layers"][0]["annotations"][TOC_DIGEST_ANNOTATION].is_null(),
        "{m}"
    );
    let dest = tmp.path().join("out-py");
    pull_to(&r, &dest, &["-a"]);
    let digest = m["layers"][0]["digest"].as_str().unwrap();
    assert_eq!(sha256_file(&dest.join("data")), digest);
}

#[test]
fn the_oras_cli_pulls_a_seekable_layer_when_installed() {
    require_registry!();
    let Ok(oras) = which("oras") else {
        eprintln!("skipped: the oras CLI is not installed");
        return;
    };
    let tmp = temp_dir();
    let (_, r, src, _, _) = pushed_directory(tmp.path(), "seek-oras");
    let dest = tmp.path().join("oras-out");
    std::fs::create_dir_all(&dest).unwrap();
    let out = run(Command::new(oras)
        .args(["pull", "--plain-http", &r, "-o"])
        .arg(&dest));
    assert_ok(&out);
    assert_same_tree(&dest, &src);
    assert_no_toc(&dest);
}

/// `which NAME`: the program's path.
fn which(name: &str) -> Result<String, ()> {
    let out = Command::new("which").arg(name).output().map_err(|_| ())?;
    if !out.status.success() {
        return Err(());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
