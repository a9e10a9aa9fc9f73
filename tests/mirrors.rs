//! Registry mirrors from `registries.conf` (`--registries-conf`), against the real thing: an
//! origin Distribution and a second Distribution in proxy (pull-through cache) mode in front
//! of it, each test with its own pair; and a fault-injecting proxy as a mirror that serves
//! corrupt bytes. Run with `scripts/test.sh`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::faults::*;
use common::*;

/// A `registries.conf` in `dir` that sends reads of `origin` to `mirrors`, in order.
fn registries_conf(dir: &Path, origin: &str, mirrors: &[&str]) -> PathBuf {
    let mut text = format!("[[registry]]\nprefix = \"{origin}\"\n");
    for m in mirrors {
        text.push_str(&format!("[[registry.mirror]]\nlocation = \"{m}\"\n"));
    }
    let path = dir.join("registries.conf");
    write_file(&path, text);
    path
}

/// `registry.sh stop --name NAME`: the registry stops, its storage stays.
fn stop(reg: &ExtraRegistry) {
    let out = run(Command::new(scripts_dir().join("registry.sh"))
        .args(["stop", "--name"])
        .arg(&reg.name));
    assert_ok(&out);
}

/// Blob reads (GET or HEAD of `/blobs/`) of `repo` a registry logged after `offset`.
fn blob_reads(log: &Path, offset: u64, repo: &str) -> Vec<String> {
    log_entries_since(log, offset)
        .into_iter()
        .filter(|e| e.uri.starts_with(&format!("/v2/{repo}/blobs/sha256:")))
        .map(|e| format!("{} {}", e.method, e.uri))
        .collect()
}

#[test]
fn pulls_and_mounts_go_through_a_pull_through_mirror_and_go_on_when_the_origin_stops() {
    require_registry!();
    let origin = ExtraRegistry::start("mirrors-origin", &[]);
    let mirror = ExtraRegistry::start(
        "mirrors-cache",
        &["--proxy", &format!("http://{}", origin.host)],
    );
    let repo = unique_repo("mirrored");
    let work = temp_dir();
    let conf = registries_conf(work.path(), &origin.host, &[&mirror.host]);
    let conf_arg = path_str(&conf);
    let big = random_bytes(&repo, 600_000);
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    write_file(&src.join("big.bin"), &big);
    write_file(&src.join("small.txt"), "through the mirror\n");
    let reference = origin.reference(&repo, "v1");

    // Pushes go to the origin even with a mirror configured (Distribution documents pushes to
    // a pull-through cache as unsupported).
    let mirror_before = log_offset(&mirror.log);
    push_files(
        &src,
        &reference,
        &["big.bin", "small.txt", "--registries-conf", conf_arg],
    );
    let writes: Vec<_> = log_entries_since(&mirror.log, mirror_before)
        .into_iter()
        .filter(|e| e.method != "GET" && e.method != "HEAD")
        .collect();
    assert!(
        writes.is_empty(),
        "the push wrote to the mirror: {writes:?}"
    );

    // The first pull goes through the mirror, which fills its cache from the origin.
    let out = temp_dir();
    let pulled = pull(
        &reference,
        out.path(),
        &["-d", "--registries-conf", conf_arg],
    );
    assert_ok(&pulled);
    let stderr = stderr_of(&pulled);
    assert!(
        stderr.contains(&format!("from mirror http://{}/", mirror.host)),
        "-d does not say the mirror served the pull:\n{stderr}"
    );
    assert_eq!(read_file(&out.path().join("big.bin")), big);
    let mirror_blobs = blob_reads(&mirror.log, mirror_before, &repo);
    assert!(!mirror_blobs.is_empty(), "no blob read at the mirror");

    // The second pull reads no blob at the origin: the mirror has them all, once it has
    // finished storing what it streamed (it writes its cache as it answers).
    let cached = [sha256_bytes(&big), sha256_bytes(b"through the mirror\n")];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Its bytes first, then the repository's link to them: only with both does it serve the
    // blob itself.
    let stored = |d: &String| {
        blob_path(&mirror.dir, d).exists() && layer_link_path(&mirror.dir, &repo, d).exists()
    };
    while !cached.iter().all(stored) {
        assert!(
            std::time::Instant::now() < deadline,
            "the mirror did not cache the blobs"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let origin_before = log_offset(&origin.log);
    let out = temp_dir();
    pull_to(&reference, out.path(), &["--registries-conf", conf_arg]);
    assert_eq!(read_file(&out.path().join("big.bin")), big);
    let origin_blobs = blob_reads(&origin.log, origin_before, &repo);
    assert!(
        origin_blobs.is_empty(),
        "the second pull read blobs at the origin: {origin_blobs:?}"
    );

    // The origin stops: a pull and a fresh mount still work, through the mirror.
    stop(&origin);
    let out = temp_dir();
    pull_to(&reference, out.path(), &["--registries-conf", conf_arg]);
    assert_eq!(read_file(&out.path().join("big.bin")), big);
    assert_eq!(
        read_file(&out.path().join("small.txt")),
        b"through the mirror\n"
    );
    let mount = Mount::new(&reference, &["--registries-conf", conf_arg]);
    assert_eq!(read_file(&mount.join("big.bin")), big);
    assert_eq!(read_file(&mount.join("small.txt")), b"through the mirror\n");
    // A partial read (a Range request) too.
    let mut part = vec![0u8; 1000];
    use std::os::unix::fs::FileExt;
    std::fs::File::open(mount.join("big.bin"))
        .unwrap()
        .read_exact_at(&mut part, 500_000)
        .unwrap();
    assert_eq!(part, big[500_000..501_000]);

    // Without the mirror, the origin is gone.
    let out = temp_dir();
    let alone = pull(&reference, out.path(), &["--registries-conf", "/dev/null"]);
    assert_fails(&alone, "cannot reach");
}

#[test]
fn a_mirror_that_serves_corrupt_bytes_is_passed_over_for_the_origin() {
    require_registry!();
    let repo = unique_repo("mirror-corrupt");
    let data = random_bytes(&repo, 300_000);
    let reference = reference(&repo, "v1");
    push_contents(&reference, &[("data.bin", &data)]);
    let digest = sha256_bytes(&data);
    // The "mirror" passes requests to the registry, and corrupts every blob and manifest body.
    let bad = FaultProxy::start(&registry());
    bad.add(Rule::blob_get(&digest, Fault::Corrupt(123_456)));
    bad.add(Rule::new("GET", "/manifests/sha256:", Fault::Corrupt(10)));
    let work = temp_dir();
    let mirror = bad.origin();
    let conf = registries_conf(
        work.path(),
        &registry(),
        &[mirror.trim_start_matches("http://")],
    );

    let out = temp_dir();
    let pulled = pull(
        &reference,
        out.path(),
        &["-d", "--registries-conf", path_str(&conf)],
    );
    assert_ok(&pulled);
    let stderr = stderr_of(&pulled);
    assert_eq!(read_file(&out.path().join("data.bin")), data);
    assert!(
        stderr.contains("served corrupt bytes"),
        "no word of the corrupt mirror:\n{stderr}"
    );
    assert!(
        bad.faults_applied() >= 2,
        "the mirror was not asked for the manifest and the blob"
    );
    // The tag was resolved at the mirror; the content came from the origin.
    assert!(stderr.contains("resolving v1: from mirror"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{digest} bytes 0..300000: from http://{}/",
            registry()
        )),
        "{stderr}"
    );

    // A copy (to another registry: within one, blobs are mounted, not read) gets the same:
    // the corrupt blob is sent again, from the origin.
    let other = ExtraRegistry::start("mirror-copy-dest", &[]);
    let dest = other.reference(&repo, "v1");
    let copied = oras_fs([
        "copy",
        reference.as_str(),
        dest.as_str(),
        "--registries-conf",
        path_str(&conf),
    ]);
    assert_ok(&copied);
    let stderr = stderr_of(&copied);
    assert!(
        stderr.contains("digest mismatch") && stderr.contains("again"),
        "{}",
        describe(&copied)
    );
    assert_eq!(pulled_tree(&dest)["data.bin"], data);
}

#[test]
fn a_malformed_or_blocking_registries_conf_is_refused_clearly() {
    require_registry!();
    let work = temp_dir();
    let conf = work.path().join("registries.conf");
    write_file(
        &conf,
        "[[registry]]\nprefix = \"x.example\"\n[[registry.mirror]]\nlocation = [\n",
    );
    let out = temp_dir();
    let bad = pull(
        "x.example/a:v1",
        out.path(),
        &["--registries-conf", path_str(&conf)],
    );
    let stderr = assert_fails(&bad, path_str(&conf));
    assert!(stderr.contains("line 4"), "{stderr}");

    write_file(
        &conf,
        "[[registry]]\nprefix = \"x.example/a\"\nblocked = true\n",
    );
    let blocked = pull(
        "x.example/a/b:v1",
        out.path(),
        &["--registries-conf", path_str(&conf)],
    );
    assert_fails(&blocked, "is blocked by");
    // A file given but missing is an error too, not a silent fallback.
    let missing = pull(
        "x.example/a/b:v1",
        out.path(),
        &["--registries-conf", "/nonexistent/registries.conf"],
    );
    assert_fails(&missing, "/nonexistent/registries.conf");
}

#[test]
fn writes_resolve_tags_at_the_origin_not_at_a_stale_mirror() {
    require_registry!();
    let repo = unique_repo("mirror-stale");
    let origin = reference(&repo, "v1");
    // The "mirror" is a plain registry holding an older v1 (and an older referrers index).
    let stale = ExtraRegistry::start("mirror-stale", &[]);
    let work = temp_dir();
    write_file(&work.path().join("a.txt"), "a referrer\n");
    let subject = push_contents(&origin, &[("f.txt", b"new")]);
    let first = attach(work.path(), "application/vnd.test", &origin, &["a.txt"]);
    let index_tag = referrers_tag(&subject);
    ok(&[
        "copy",
        &reference(&repo, &index_tag),
        &stale.reference(&repo, &index_tag),
    ]);
    let second = attach(
        work.path(),
        "application/vnd.test",
        &origin,
        &["a.txt", "--annotation", "n=2"],
    );
    let old = push_contents(&stale.reference(&repo, "v1"), &[("f.txt", b"old")]);
    assert_ne!(old, subject);
    let conf = registries_conf(work.path(), &registry(), &[&stale.host]);
    let with_conf = ["--registries-conf", path_str(&conf)];
    // Reads go to the mirror (that is what makes it stale here).
    let mut args = vec![origin.as_str()];
    args.extend_from_slice(&with_conf);
    assert_eq!(resolve(&args), old);

    // `tag` points the new tag at what the origin's v1 names.
    ok(&["tag", &origin, "v2", "--registries-conf", path_str(&conf)]);
    assert_eq!(resolve(&[&reference(&repo, "v2")]), subject);

    // `attach` adds to the origin's referrers index, not to the mirror's stale copy.
    let subject_ref = format!("{}/{repo}@{subject}", registry());
    let third = attach(
        work.path(),
        "application/vnd.test",
        &subject_ref,
        &[
            "a.txt",
            "--annotation",
            "n=3",
            "--registries-conf",
            path_str(&conf),
        ],
    );
    // Given the tag, `attach` refers to what the origin's v1 names, not the mirror's.
    let fourth = attach(
        work.path(),
        "application/vnd.test",
        &origin,
        &[
            "a.txt",
            "--annotation",
            "n=4",
            "--registries-conf",
            path_str(&conf),
        ],
    );
    let listed = ok(&["discover", "--format", "json", &subject_ref]);
    for d in [&first, &second, &third, &fourth] {
        assert!(listed.contains(d.as_str()), "{d} missing from {listed}");
    }

    // `manifest delete` deletes what the origin's tag names, not the mirror's digest.
    let out = oras_fs([
        "manifest",
        "delete",
        "--force",
        origin.as_str(),
        "--registries-conf",
        path_str(&conf),
    ]);
    assert_ok(&out);
    assert!(stdout_of(&out).contains(&subject), "{}", describe(&out));
}
