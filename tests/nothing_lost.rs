//! A mount never destroys what it does not show: hidden layers survive a sync, images mount
//! read-only, a file a crashed writer left is held back, and copy-on-write fetches nothing
//! until a byte changes. Real mounts against the test registry (`scripts/test.sh`).

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const MIB: usize = 1024 * 1024;

fn push_in(dir: &Path, reference: &str, files: &[(&str, &[u8])], args: &[&str]) -> String {
    for (name, data) in files {
        let name = name.split(':').next().unwrap();
        write_file(&dir.join(name), data);
    }
    let mut all: Vec<&str> = vec!["push", reference];
    all.extend(files.iter().map(|(n, _)| *n));
    all.extend(args);
    let out = oras_fs_in(dir, all);
    assert_ok(&out);
    digest_of_stdout(&out)
}

fn manifest_json(repo: &str, tag: &str) -> (String, Value) {
    let (digest, bytes) = get_manifest(repo, tag);
    (digest, serde_json::from_slice(&bytes).unwrap())
}

fn titles(m: &Value) -> Vec<String> {
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["annotations"]["org.opencontainers.image.title"]
                .as_str()
                .unwrap_or("(untitled)")
                .to_string()
        })
        .collect()
}

#[test]
fn a_sync_keeps_the_layers_the_mount_does_not_show_in_their_places() {
    require_registry!();
    let repo = unique_repo("lost-hidden");
    let src = temp_dir();
    push_in(
        src.path(),
        &reference(&repo, "v1"),
        &[
            ("a.txt", b"a\n"),
            ("b.dat:application/vnd.example.data", b"b data\n"),
            ("z.txt", b"z\n"),
        ],
        &[],
    );
    // Add an untitled layer and one with an unsafe title between the others.
    let (_, mut m) = manifest_json(&repo, "v1");
    let sig = b"a signature".as_slice();
    let evil = b"evil".as_slice();
    upload_blob(&repo, sig);
    upload_blob(&repo, evil);
    let layers = m["layers"].as_array_mut().unwrap();
    layers.insert(
        2,
        json!({"mediaType": "application/vnd.example.sig", "digest": sha256_bytes(sig),
               "size": sig.len(), "annotations": {"x": "kept"}}),
    );
    layers.insert(
        3,
        json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256_bytes(evil),
               "size": evil.len(), "annotations": {"org.opencontainers.image.title": "../evil"}}),
    );
    put_manifest(&repo, "v1", &serde_json::to_vec(&m).unwrap());
    let before = m["layers"].as_array().unwrap().clone();
    assert_eq!(
        titles(&m),
        ["a.txt", "b.dat", "(untitled)", "../evil", "z.txt"]
    );

    let mut mnt = Mount::new(&reference(&repo, "v1"), &[]);
    let stderr = mnt.mount_stderr();
    assert!(
        stderr.contains("hidden by the media-type filter"),
        "{stderr}"
    );
    assert!(stderr.contains("without a title"), "{stderr}");
    let notes = String::from_utf8(read_file(&mnt.join(".oras/notes"))).unwrap();
    assert!(notes.contains("application/vnd.example.data"), "{notes}");
    assert!(notes.contains("\"../evil\""), "{notes}");
    assert_eq!(list_dir(mnt.path()), [".oras", "a.txt", "z.txt"]);
    write_file(&mnt.join("c.txt"), b"c\n");
    write_file(&mnt.join("a.txt"), b"a, edited\n");
    std::fs::remove_file(mnt.join("z.txt")).unwrap();
    assert_ok(&mnt.unmount());

    let (_, after) = manifest_json(&repo, "v1");
    assert_eq!(
        titles(&after),
        ["a.txt", "b.dat", "(untitled)", "../evil", "c.txt"]
    );
    let layers = after["layers"].as_array().unwrap();
    for i in 1..=3 {
        assert_eq!(layers[i], before[i], "hidden layer {i} changed");
    }
    assert_ne!(layers[0]["digest"], before[0]["digest"], "a.txt was edited");
    assert_eq!(layers[4]["digest"], sha256_bytes(b"c\n").as_str());
    // A second round (mount of the new manifest, journal-free) keeps them again.
    let mut mnt = Mount::new(&reference(&repo, "v1"), &[]);
    write_file(&mnt.join("d.txt"), b"d\n");
    assert_ok(&mnt.unmount());
    let (_, again) = manifest_json(&repo, "v1");
    let layers = again["layers"].as_array().unwrap();
    for i in 1..=3 {
        assert_eq!(layers[i], before[i], "hidden layer {i} changed in round 2");
    }
}

#[test]
fn hidden_layers_survive_a_crash_and_the_next_mounts_sync() {
    require_registry!();
    let repo = unique_repo("lost-hidden-crash");
    let src = temp_dir();
    let r = reference(&repo, "v1");
    push_in(
        src.path(),
        &r,
        &[
            ("a.txt", b"a\n"),
            ("b.dat:application/vnd.example.data", b"b\n"),
        ],
        &[],
    );
    let (_, before) = manifest_json(&repo, "v1");
    let cache = temp_dir();
    let m = Mount::with_cache_dir(&r, cache.path(), &[]);
    write_file(&m.join("c.txt"), b"c\n");
    kill_pid(m.daemon_pid(), libc::SIGKILL);
    assert!(m.wait_for_daemon(Duration::from_secs(5)));
    assert_ok(&fusermount_lazy(m.path()).expect("fusermount3 -uz hung"));
    drop(m);
    let mut m = Mount::with_cache_dir(&r, cache.path(), &[]);
    assert_eq!(read_file(&m.join("c.txt")), b"c\n");
    assert_ok(&m.unmount());
    let (_, after) = manifest_json(&repo, "v1");
    assert_eq!(titles(&after), ["a.txt", "b.dat", "c.txt"]);
    assert_eq!(after["layers"][1], before["layers"][1]);
}

/// An OCI layout holding a one-layer image of `files`, tagged `latest`.
fn image_layout(dir: &Path, files: &[(&str, &[u8])]) {
    let root = dir.join("rootfs");
    for (name, data) in files {
        write_file(&root.join(name), data);
    }
    let blobs = dir.join("layout/blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let tar = dir.join("layer.tar");
    assert_ok(&run(Command::new("tar")
        .arg("cf")
        .arg(&tar)
        .arg("-C")
        .arg(&root)
        .arg(".")));
    let diff_id = sha256_file(&tar);
    assert_ok(&run(Command::new("gzip").arg("-n").arg(&tar)));
    let layer = read_file(&dir.join("layer.tar.gz"));
    let put = |data: &[u8]| {
        let d = sha256_bytes(data);
        write_file(&blobs.join(d.trim_start_matches("sha256:")), data);
        json!({"digest": d, "size": data.len()})
    };
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}
    }))
    .unwrap();
    let mut c = put(&config);
    c["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let mut l = put(&layer);
    l["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": c, "layers": [l]
    }))
    .unwrap();
    let mut m = put(&manifest);
    m["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    m["annotations"] = json!({"org.opencontainers.image.ref.name": "latest"});
    write_file(
        &dir.join("layout/index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [m]})).unwrap(),
    );
    write_file(
        &dir.join("layout/oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
}

#[test]
fn a_container_image_mounts_read_only_and_says_why() {
    require_registry!();
    let repo = unique_repo("lost-image");
    let work = temp_dir();
    image_layout(work.path(), &[("etc/hello", b"hello from the image\n")]);
    let out = run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", "--insecure-policy"])
        .arg(format!(
            "oci:{}:latest",
            work.path().join("layout").display()
        ))
        .arg(format!("docker://{}/{repo}:v1", registry())));
    assert_ok(&out);
    let (digest, _) = manifest_json(&repo, "v1");

    // Asked for nothing special: a tag mount would be writable, but not an image.
    let mut m = Mount::new(&reference(&repo, "v1"), &[]);
    let stderr = m.mount_stderr();
    assert!(stderr.contains("read-only"), "{stderr}");
    assert!(stderr.contains("container image"), "{stderr}");
    let notes = String::from_utf8(read_file(&m.join(".oras/notes"))).unwrap();
    assert!(notes.contains("container image"), "{notes}");
    let err = std::fs::write(m.join("NOTE.txt"), b"note\n").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert_ok(&m.unmount());
    assert_eq!(
        manifest_json(&repo, "v1").0,
        digest,
        "the image was changed"
    );
}

#[test]
fn opening_for_writing_fetches_nothing_until_a_byte_changes() {
    require_registry!();
    let repo = unique_repo("lost-touch");
    let src = temp_dir();
    let big = random_bytes(&repo, 8 * MIB);
    let digest = sha256_bytes(&big);
    push_in(
        src.path(),
        &reference(&repo, "v1"),
        &[("big.bin", &big)],
        &[],
    );
    let log = registry_log();
    let mut m = Mount::new(&reference(&repo, "v1"), &[]);
    let offset = log_offset(&log);
    assert_ok(&run(Command::new("touch").arg(m.join("big.bin"))));
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("big.bin"))
            .unwrap(),
    );
    settle_log();
    assert_eq!(bytes_served(&log, offset, &digest), 0, "touch fetched");
    // A write in the middle copies first, and the rest of the file is kept.
    {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.join("big.bin"))
            .unwrap();
        f.seek(SeekFrom::Start(100)).unwrap();
        f.write_all(b"XY").unwrap();
        let mut back = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut back).unwrap();
        let mut want = big.clone();
        want[100..102].copy_from_slice(b"XY");
        assert!(back == want, "the edited file reads back wrong");
    }
    assert_ok(&m.unmount());
    let mut want = big;
    want[100..102].copy_from_slice(b"XY");
    assert!(pulled_tree(&reference(&repo, "v1"))["big.bin"] == want);
}

#[test]
fn a_file_left_open_by_a_crashed_mount_is_held_back_until_written_again() {
    require_registry!();
    let repo = unique_repo("lost-open");
    let r = reference(&repo, "v1");
    let src = temp_dir();
    push_in(src.path(), &r, &[("a.txt", b"a\n")], &[]);
    let (_, before) = manifest_json(&repo, "v1");
    let cache = temp_dir();
    let m = Mount::with_cache_dir(&r, cache.path(), &[]);
    let mut f = std::fs::File::create(m.join("half.bin")).unwrap();
    f.write_all(b"the first half").unwrap();
    // The mount dies while the writer still has the file open.
    kill_pid(m.daemon_pid(), libc::SIGKILL);
    assert!(m.wait_for_daemon(Duration::from_secs(5)));
    drop(f);
    assert_ok(&fusermount_lazy(m.path()).expect("fusermount3 -uz hung"));
    drop(m);

    let mut m = Mount::with_cache_dir(&r, cache.path(), &[]);
    let stderr = m.mount_stderr();
    assert!(
        stderr.contains("half.bin was still open for writing"),
        "{stderr}"
    );
    assert_eq!(read_file(&m.join("half.bin")), b"the first half");
    let out = m.sync(&[]);
    let text = describe(&out);
    assert_eq!(
        manifest_json(&repo, "v1").1["layers"],
        before["layers"],
        "a possibly incomplete file was pushed\n{text}"
    );
    // `touch` says it is complete: now it is pushed.
    assert_ok(&run(Command::new("touch").arg(m.join("half.bin"))));
    write_file(&m.join("other.txt"), b"o\n");
    assert_ok(&m.unmount());
    let pulled = pulled_tree(&r);
    assert_eq!(pulled["half.bin"], b"the first half");
    assert_eq!(pulled["other.txt"], b"o\n");
}

#[test]
fn the_journal_grows_by_the_change_not_by_the_tree() {
    require_registry!();
    let repo = unique_repo("lost-journal");
    let r = reference(&repo, "v1");
    let src = temp_dir();
    push_in(src.path(), &r, &[("a.txt", b"a\n")], &[]);
    let cache = temp_dir();
    let mut m = Mount::with_cache_dir(&r, cache.path(), &[]);
    std::fs::create_dir(m.join("d")).unwrap();
    for i in 0..300 {
        std::fs::File::create(m.join(format!("d/f{i:04}"))).unwrap();
    }
    let journal = std::fs::read_dir(cache.path().join("staging"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("journal.log"))
        .find(|p| p.exists())
        .expect("a journal");
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    let before = len(&journal);
    std::fs::File::create(m.join("d/one-more")).unwrap();
    let grown = len(&journal) - before;
    // One created-and-closed file is a few short records, not a rewrite of 300 entries.
    assert!(
        grown < 1024,
        "the journal grew by {grown} bytes for one file"
    );
    std::fs::rename(m.join("d"), m.join("e")).unwrap();
    assert!(
        len(&journal) - before < 2048,
        "a directory rename rewrote the journal"
    );
    assert_ok(&m.unmount());
    assert_eq!(pulled_tree(&r).len(), 302);
}

#[test]
fn df_on_a_writable_mount_shows_the_free_space_of_the_staging_disk() {
    require_registry!();
    let repo = unique_repo("lost-df");
    let r = reference(&repo, "v1");
    let src = temp_dir();
    push_in(src.path(), &r, &[("a.txt", b"a\n")], &[]);
    let m = Mount::new(&r, &[]);
    let out = run(Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(m.path()));
    let avail: u64 = stdout_of(&out)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df said {}", describe(&out)));
    assert!(avail > 1 << 20, "df shows {avail} bytes available");
    let ro = Mount::new(&r, &["--read-only"]);
    let out = run(Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(ro.path()));
    assert_eq!(stdout_of(&out).lines().nth(1).map(str::trim), Some("0"));
}

#[test]
fn a_blob_that_fails_verification_is_not_served_from_the_page_cache_later() {
    require_registry!();
    let repo = unique_repo("lost-pagecache");
    let src = temp_dir();
    let large = random_bytes(&repo, 8 * MIB);
    push_in(
        src.path(),
        &reference(&repo, "v1"),
        &[("large.bin", &large)],
        &[],
    );
    // Corrupt the registry's copy near the end, keeping its length.
    let path = blob_path(&registry_dir(), &sha256_bytes(&large));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.seek(SeekFrom::Start(7 * MIB as u64)).unwrap();
    f.write_all(&[!large[7 * MIB]]).unwrap();
    drop(f);

    let m = Mount::new(&reference(&repo, "v1"), &["--read-only"]);
    let p = m.join("large.bin");
    // The first MiB is served unverified (a range cannot be checked alone) and lands in the
    // kernel's page cache; reading on finds the mismatch.
    let mut f = std::fs::File::open(&p).unwrap();
    let mut head = vec![0u8; MIB];
    f.read_exact(&mut head).unwrap();
    let mut rest = Vec::new();
    assert_eq!(errno_of(f.read_to_end(&mut rest)), libc::EIO);
    drop(f);
    // A later reader gets EIO too, not the first MiB from the page cache.
    let mut f = std::fs::File::open(&p).unwrap();
    assert_eq!(errno_of(f.read_exact(&mut head)), libc::EIO);
}
