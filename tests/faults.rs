//! Fault injection: `oras-fs` pull, push, mount reads and mount writes against a registry behind
//! a proxy ([`FaultProxy`]) that drops connections mid-body, stalls, corrupts bytes, answers
//! 5xx/429 with `Retry-After`, ignores `Range`, redirects blob GETs to another origin and lies
//! about `Docker-Content-Digest`. What must hold under each fault: bounded retries, a resume
//! where it helps, a clear error otherwise, no corrupt file in place, no poisoned cache, no
//! staged write dropped. Run with `scripts/test.sh`.
//!
//! Content is pushed straight to the registry; only the operation under test goes through the
//! proxy. Every test has its own repository and proxy.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::faults::*;
use common::*;

const MIB: usize = 1024 * 1024;

/// The `N` of a `Range: bytes=N-` header.
fn range_start(seen: &Seen) -> Option<u64> {
    seen.header("range")?
        .strip_prefix("bytes=")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

// --- Pull -----------------------------------------------------------------------------------

#[test]
fn pull_resumes_where_a_dropped_connection_stopped() {
    require_registry!();
    let (repo, data, digest, proxy) = pushed_behind_proxy("fault-pull-drop", "data.bin", 3 * MIB);
    proxy.add(Rule::blob_get(&digest, Fault::DropAfter(MIB as u64)).once());

    let out_dir = temp_dir();
    let out = pull(&proxy.reference(&repo, "v1"), out_dir.path(), &[]);
    assert_ok(&out);
    assert_eq!(read_file(&out_dir.path().join("data.bin")), data);
    assert_eq!(leftovers(out_dir.path()), Vec::<String>::new());

    proxy.settle(Duration::from_secs(5));
    let gets = proxy.blob_gets(&digest);
    assert_eq!(gets.len(), 2, "one dropped GET and one resume: {gets:#?}");
    assert_eq!(gets[0].header("range"), None);
    let from = range_start(&gets[1]).unwrap_or_else(|| panic!("no resume Range: {gets:#?}"));
    assert!(
        from > 0 && from <= MIB as u64,
        "resumed from byte {from}, but {} bytes had arrived",
        gets[0].body_sent
    );
    let sent: u64 = gets.iter().map(|g| g.body_sent).sum();
    assert!(
        sent <= (data.len() + MIB) as u64,
        "{sent} bytes sent for a {} byte blob: not a resume",
        data.len()
    );
}

#[test]
fn pull_gives_up_after_bounded_retries_and_keeps_the_old_file() {
    require_registry!();
    let (repo, _, digest, proxy) = pushed_behind_proxy("fault-pull-drops", "data.bin", MIB);
    proxy.add(Rule::blob_get(&digest, Fault::DropAfter(64 * 1024)));

    let out_dir = temp_dir();
    write_file(&out_dir.path().join("data.bin"), "the old file");
    let started = Instant::now();
    let out = pull(&proxy.reference(&repo, "v1"), out_dir.path(), &[]);
    let elapsed = started.elapsed();
    let stderr = assert_fails(&out, "Error:");
    eprintln!("{}", stderr.trim());
    assert!(
        stderr.contains(&proxy.addr),
        "the error does not name the registry\n{stderr}"
    );
    assert_eq!(read_file(&out_dir.path().join("data.bin")), b"the old file");
    assert_eq!(leftovers(out_dir.path()), Vec::<String>::new());
    let gets = proxy.blob_gets(&digest);
    assert!(
        (2..=6).contains(&gets.len()),
        "{} GETs of a blob that always drops: {stderr}",
        gets.len()
    );
    assert!(
        elapsed < Duration::from_secs(30),
        "gave up after {elapsed:?}"
    );
    // Every retry resumed instead of starting over.
    for g in &gets[1..] {
        assert!(range_start(g).is_some_and(|n| n > 0), "{g:#?}");
    }
}

#[test]
fn pull_retries_429_and_5xx_honouring_retry_after() {
    require_registry!();
    let (repo, data, digest, proxy) = pushed_behind_proxy("fault-pull-429", "data.bin", 200_000);
    proxy.add(Rule::new("HEAD", "/manifests/v1", Fault::Status(429, Some(1))).once());
    proxy.add(Rule::blob_get(&digest, Fault::Status(503, None)).times(2));
    proxy.add(Rule::blob_get(&digest, Fault::Status(502, None)).once());

    let out_dir = temp_dir();
    let started = Instant::now();
    assert_ok(&pull(&proxy.reference(&repo, "v1"), out_dir.path(), &[]));
    let elapsed = started.elapsed();
    assert_eq!(read_file(&out_dir.path().join("data.bin")), data);
    assert!(
        elapsed >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured ({elapsed:?})"
    );
    assert_eq!(proxy.matching("HEAD", "/manifests/v1").len(), 2);
    assert_eq!(proxy.blob_gets(&digest).len(), 4);
}

#[test]
fn pull_reports_a_persistent_server_error_after_five_tries() {
    require_registry!();
    let (repo, _, digest, proxy) = pushed_behind_proxy("fault-pull-500", "data.bin", 1000);
    proxy.add(Rule::blob_get(&digest, Fault::Status(500, None)));

    let out_dir = temp_dir();
    let out = pull(&proxy.reference(&repo, "v1"), out_dir.path(), &[]);
    let stderr = assert_fails(&out, "HTTP 500");
    eprintln!("{}", stderr.trim());
    assert!(
        stderr.contains(&digest),
        "the error does not name the blob\n{stderr}"
    );
    assert!(
        stderr.contains("injected HTTP 500"),
        "the registry's message is lost\n{stderr}"
    );
    assert_eq!(proxy.blob_gets(&digest).len(), 5);
    assert!(!out_dir.path().join("data.bin").exists());
    assert_eq!(leftovers(out_dir.path()), Vec::<String>::new());
}

#[test]
fn pull_copes_with_a_registry_that_ignores_range() {
    require_registry!();
    let (repo, data, digest, proxy) =
        pushed_behind_proxy("fault-pull-norange", "data.bin", 2 * MIB);
    // The first GET drops; the resume's Range is dropped on its way: a 200 with everything.
    proxy.add(Rule::blob_get(&digest, Fault::DropAfter(700_000)).once());
    proxy.add(Rule::blob_get(&digest, Fault::IgnoreRange));

    let out_dir = temp_dir();
    assert_ok(&pull(&proxy.reference(&repo, "v1"), out_dir.path(), &[]));
    assert_eq!(read_file(&out_dir.path().join("data.bin")), data);
    proxy.settle(Duration::from_secs(5));
    let gets = proxy.blob_gets(&digest);
    assert_eq!(gets.len(), 2, "{gets:#?}");
    assert!(range_start(&gets[1]).is_some_and(|n| n > 0));
    assert_eq!(
        gets[1].status, 200,
        "the registry was meant to ignore the Range"
    );
}

#[test]
fn a_big_pull_goes_in_range_parts_resumes_a_dropped_one_and_copes_with_ignored_ranges() {
    require_registry!();
    // From 64 MiB on, a blob downloads its first 16 MiB alone; one connection that brings
    // them slower than 256 MiB/s gets the rest in 16 MiB parts too: here three and a 1 MiB
    // tail.
    let (repo, data, digest, proxy) = pushed_behind_proxy("fault-pull-parts", "data.bin", 65 * MIB);
    // Not `assert_eq!`: it would print 65 MiB twice.
    let pull_right_bytes = |proxy: &FaultProxy| {
        let out_dir = temp_dir();
        assert_ok(&pull(&proxy.reference(&repo, "v1"), out_dir.path(), &[]));
        assert!(
            read_file(&out_dir.path().join("data.bin")) == data,
            "wrong bytes"
        );
    };
    // One part breaks off after 1 MiB and resumes; the others come at 64 MiB/s.
    proxy.add(
        Rule::blob_get(&digest, Fault::DropAfter(MIB as u64))
            .skip(2)
            .once(),
    );
    proxy.add(Rule::blob_get(&digest, Fault::Pace(64 * MIB as u64)));
    pull_right_bytes(&proxy);
    proxy.settle(Duration::from_secs(5));
    let gets = proxy.blob_gets(&digest);
    let mut starts: Vec<u64> = gets.iter().filter_map(range_start).collect();
    starts.sort_unstable();
    let part = 16 * MIB as u64;
    assert_eq!(starts.len(), 6, "five parts and one resume: {gets:#?}");
    for (i, p) in [0, part, 2 * part, 3 * part, 4 * part].iter().enumerate() {
        assert!(
            starts.contains(p),
            "no part from byte {p} ({i}): {starts:?}"
        );
    }
    let sent: u64 = gets.iter().map(|g| g.body_sent).sum();
    assert!(sent <= (data.len() + MIB) as u64, "{sent} bytes sent");

    // A registry that answers Range requests with the whole blob: the first parts skip to
    // their offsets, then the rest comes in one request.
    let proxy = FaultProxy::start(&registry());
    proxy.add(Rule::blob_get(&digest, Fault::IgnoreRange));
    pull_right_bytes(&proxy);
    proxy.settle(Duration::from_secs(5));
    let gets = proxy.blob_gets(&digest);
    assert!(gets.len() <= 3, "{} GETs: {gets:#?}", gets.len());
}

#[test]
fn a_big_pull_over_a_fast_connection_asks_for_the_rest_in_one_request() {
    require_registry!();
    let (repo, data, digest, proxy) =
        pushed_behind_proxy("fault-pull-one-stream", "data.bin", 65 * MIB);
    let out_dir = temp_dir();
    let out = pull(&proxy.reference(&repo, "v1"), out_dir.path(), &["-d"]);
    assert_ok(&out);
    assert!(
        read_file(&out_dir.path().join("data.bin")) == data,
        "wrong bytes"
    );
    proxy.settle(Duration::from_secs(5));
    // The pull says how fast its first 16 MiB came and what it did about it; on a loopback
    // proxy that is fast, unless this machine is very busy.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let decision = stderr
        .lines()
        .find(|l| l.contains("first 16777216 bytes at"))
        .unwrap_or_else(|| panic!("no decision logged:\n{stderr}"));
    let gets = proxy.blob_gets(&digest);
    let mut ranges: Vec<String> = gets
        .iter()
        .filter_map(|g| g.header("range").map(str::to_string))
        .collect();
    ranges.sort_unstable();
    if decision.contains("the rest in one request") {
        let last = data.len() - 1;
        assert_eq!(
            ranges,
            vec![
                "bytes=0-16777215".to_string(),
                format!("bytes=16777216-{last}")
            ],
            "{decision}: {gets:#?}"
        );
    } else {
        eprintln!("this machine was too busy for the fast path: {decision}");
        assert_eq!(ranges.len(), 5, "{decision}: {gets:#?}");
    }
}

#[test]
fn pull_of_corrupted_bytes_fails_and_poisons_nothing() {
    require_registry!();
    let (repo, data, digest, proxy) =
        pushed_behind_proxy("fault-pull-corrupt", "data.bin", 300_000);
    proxy.add(Rule::blob_get(&digest, Fault::Corrupt(123_456)).once());

    let out_dir = temp_dir();
    write_file(&out_dir.path().join("data.bin"), "the old file");
    let out = pull(&proxy.reference(&repo, "v1"), out_dir.path(), &[]);
    let stderr = assert_fails(&out, "digest mismatch");
    eprintln!("{}", stderr.trim());
    assert!(stderr.contains(&digest), "{stderr}");
    assert_eq!(read_file(&out_dir.path().join("data.bin")), b"the old file");
    assert_eq!(leftovers(out_dir.path()), Vec::<String>::new());

    // The next pull (the fault is gone) gets the right bytes.
    assert_ok(&pull(&proxy.reference(&repo, "v1"), out_dir.path(), &[]));
    assert_eq!(read_file(&out_dir.path().join("data.bin")), data);
}

#[test]
fn pull_rides_out_stalls() {
    require_registry!();
    let (repo, data, digest, proxy) = pushed_behind_proxy("fault-pull-stall", "data.bin", MIB);
    proxy.add(
        Rule::new(
            "HEAD",
            "/manifests/v1",
            Fault::Stall(Duration::from_secs(1)),
        )
        .once(),
    );
    proxy.add(Rule::blob_get(&digest, Fault::StallAfter(300_000, Duration::from_secs(2))).once());

    let out_dir = temp_dir();
    let started = Instant::now();
    assert_ok(&pull(&proxy.reference(&repo, "v1"), out_dir.path(), &[]));
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(read_file(&out_dir.path().join("data.bin")), data);
    // A stall shorter than the read timeout is waited out, not retried.
    assert_eq!(proxy.blob_gets(&digest).len(), 1);
}

#[test]
fn pull_checks_docker_content_digest() {
    require_registry!();
    let repo = unique_repo("fault-pull-digest");
    let data = random_bytes(&repo, 10_000);
    let manifest_digest = push_contents(&reference(&repo, "v1"), &[("data.bin", &data)]);
    let blob = sha256_bytes(&data);
    let wrong = sha256_bytes(b"some other manifest");

    // Pinned by digest: a registry that names another digest is caught.
    let proxy = FaultProxy::start(&registry());
    proxy.add(Rule::new(
        "HEAD",
        "/manifests/",
        Fault::WrongDigest(wrong.clone()),
    ));
    let out_dir = temp_dir();
    let pinned = format!("{}/{repo}@{manifest_digest}", proxy.addr);
    let stderr = assert_fails(&pull(&pinned, out_dir.path(), &[]), "digest mismatch");
    eprintln!("{}", stderr.trim());
    assert!(stderr.contains(&wrong), "{stderr}");
    assert!(!out_dir.path().join("data.bin").exists());

    // A mount pinned by digest too, before anything is mounted.
    Mount::refused(
        &pinned,
        &["--read-only"],
        "digest mismatch",
        "mounted a manifest the registry named by another digest",
    );

    // By tag: the digest it names is what gets fetched, and it does not exist.
    let out = pull(&proxy.reference(&repo, "v1"), out_dir.path(), &[]);
    let stderr = assert_fails(&out, "not found");
    eprintln!("{}", stderr.trim());
    assert!(stderr.contains(&wrong), "{stderr}");
    assert!(!out_dir.path().join("data.bin").exists());

    // A wrong header on a blob does not matter: blobs are checked against the manifest.
    proxy.clear();
    proxy.add(Rule::blob_get(&blob, Fault::WrongDigest(wrong)));
    assert_ok(&pull(&proxy.reference(&repo, "v1"), out_dir.path(), &[]));
    assert_eq!(read_file(&out_dir.path().join("data.bin")), data);
}

/// Blob GETs redirected to a storage origin must not carry the registry's credentials there;
/// for pull and for mount reads.
#[test]
fn redirected_blob_gets_carry_no_credentials_to_the_other_origin() {
    require_registry!();
    let (user, pass) = ("redirect-user", "redirect-pass-5f1d");
    let reg = ExtraRegistry::start(
        "faults-redirect",
        &["--htpasswd", &format!("{user}:{pass}")],
    );
    let repo = unique_repo("fault-redirect");
    let small = random_bytes(&format!("{repo}-small"), 100_000);
    let large = random_bytes(&format!("{repo}-large"), 5 * MIB);
    let src = temp_dir();
    write_file(&src.path().join("small.bin"), &small);
    write_file(&src.path().join("large.bin"), &large);
    assert_ok(&oras_fs_in(
        src.path(),
        [
            "push",
            &reg.reference(&repo, "v1"),
            "small.bin",
            "large.bin",
            "--no-tty",
            "-u",
            user,
            "-p",
            pass,
        ],
    ));

    let storage = FaultProxy::start_injecting(&reg.host, &basic(user, pass));
    let front = FaultProxy::start(&reg.host);
    front.add(Rule::new(
        "GET",
        "/blobs/sha256:",
        Fault::Redirect(storage.origin()),
    ));

    let out_dir = temp_dir();
    let out = oras_fs_stdin(
        [
            OsStr::new("pull"),
            OsStr::new(&front.reference(&repo, "v1")),
            OsStr::new("-o"),
            out_dir.path().as_os_str(),
            OsStr::new("--no-tty"),
            OsStr::new("-u"),
            OsStr::new(user),
            OsStr::new("--password-stdin"),
        ],
        pass.as_bytes(),
    );
    assert_ok(&out);
    assert_eq!(read_file(&out_dir.path().join("small.bin")), small);
    assert_eq!(read_file(&out_dir.path().join("large.bin")), large);

    {
        let m = Mount::new(
            &front.reference(&repo, "v1"),
            &["--read-only", "-u", user, "-p", pass],
        );
        assert_eq!(read_file(&m.join("small.bin")), small);
        let f = std::fs::File::open(m.join("large.bin")).unwrap();
        let mut buf = vec![0u8; 4096];
        f.read_exact_at(&mut buf, 4 * MIB as u64 + 1000).unwrap();
        assert_eq!(buf, large[4 * MIB + 1000..4 * MIB + 1000 + 4096]);
    }

    storage.settle(Duration::from_secs(5));
    let redirected = storage.matching("GET", "/blobs/");
    assert!(
        redirected.len() >= 4,
        "the blob GETs did not reach the storage origin: {redirected:#?}"
    );
    assert!(
        redirected.iter().any(|s| s.header("range").is_some()),
        "the mount's Range requests were not redirected"
    );
    for s in &redirected {
        assert_eq!(
            s.header("authorization"),
            None,
            "credentials were sent to the other origin: {} {}",
            s.method,
            s.path
        );
    }
    assert!(
        front
            .requests()
            .iter()
            .any(|s| s.header("authorization").is_some()),
        "the registry itself never got credentials"
    );
}

// --- Push -----------------------------------------------------------------------------------

#[test]
fn push_sends_an_upload_again_after_a_drop_mid_body() {
    require_registry!();
    let (repo, data, digest, src, proxy) =
        to_push_through_proxy("fault-push-drop", "data.bin", 2 * MIB);
    // The upload of this blob (not the config's), by its `?digest=` query.
    let upload = format!("digest={digest}");
    proxy.add(Rule::new("PUT", &upload, Fault::DropRequestAfter(512 * 1024)).once());

    let out = push(src.path(), &proxy.reference(&repo, "v1"), &["data.bin"]);
    assert_ok(&out);
    // The retry warning names the upload without its `_state` token (or any query).
    let stderr = stderr_of(&out);
    assert!(stderr.contains("again"), "no retry warning: {stderr}");
    assert!(
        !stderr.contains("_state") && !stderr.contains("?"),
        "a URL query in the warning: {stderr}"
    );
    let puts: Vec<Seen> = proxy
        .matching("PUT", "/blobs/uploads/")
        .into_iter()
        .filter(|s| percent_decode(&s.path).contains(&upload))
        .collect();
    assert_eq!(
        puts.len(),
        2,
        "the dropped upload was not sent again: {puts:#?}"
    );
    assert!(puts[0].body_received <= 512 * 1024 && !puts[0].done);
    assert_eq!(blob_status(&repo, &digest), 200);
    assert_eq!(pulled_tree(&reference(&repo, "v1"))["data.bin"], data);
}

#[test]
fn push_retries_429_and_5xx_honouring_retry_after() {
    require_registry!();
    let (repo, data, _, src, proxy) = to_push_through_proxy("fault-push-5xx", "data.bin", 100_000);
    proxy.add(Rule::new("POST", "/blobs/uploads/", Fault::Status(500, None)).times(2));
    proxy.add(Rule::new("PUT", "/manifests/v1", Fault::Status(429, Some(1))).once());
    proxy.add(Rule::new("PUT", "/manifests/v1", Fault::Status(503, None)).once());

    let started = Instant::now();
    let out = push(src.path(), &proxy.reference(&repo, "v1"), &["data.bin"]);
    assert_ok(&out);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(proxy.matching("PUT", "/manifests/v1").len(), 3);
    assert_eq!(pulled_tree(&reference(&repo, "v1"))["data.bin"], data);
}

#[test]
fn push_rides_out_stalls_and_never_uploads_to_another_origin() {
    require_registry!();
    let (repo, _, _, src, proxy) = to_push_through_proxy("fault-push-stall", "data.bin", 500_000);
    proxy.add(
        Rule::new(
            "POST",
            "/blobs/uploads/",
            Fault::Stall(Duration::from_secs(1)),
        )
        .once(),
    );
    proxy.add(Rule::new("PUT", "/manifests/v1", Fault::Stall(Duration::from_secs(1))).once());
    let started = Instant::now();
    assert_ok(&push(
        src.path(),
        &proxy.reference(&repo, "v1"),
        &["data.bin"],
    ));
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(proxy.matching("PUT", "/manifests/v1").len(), 1);

    // An upload session whose Location is on another origin: refused, nothing sent there.
    let elsewhere = FaultProxy::start(&registry());
    proxy.clear();
    proxy.add(Rule::new(
        "POST",
        "/blobs/uploads/",
        Fault::RewriteLocation(elsewhere.origin()),
    ));
    write_file(&src.path().join("other.bin"), format!("other {repo}"));
    let out = push(src.path(), &proxy.reference(&repo, "v2"), &["other.bin"]);
    let stderr = assert_fails(&out, "another origin");
    eprintln!("{}", stderr.trim());
    assert!(stderr.contains(&elsewhere.addr), "{stderr}");
    elsewhere.settle(Duration::from_secs(2));
    assert_eq!(
        elsewhere.requests().len(),
        0,
        "data went to the other origin"
    );
    assert_eq!(manifest_status(&repo, "v2"), 404);
}

#[test]
fn push_fails_clearly_and_moves_no_tag_when_the_registry_keeps_failing() {
    require_registry!();
    let (repo, _, _, src, proxy) = to_push_through_proxy("fault-push-500", "data.bin", 100);
    proxy.add(Rule::new("PUT", "/manifests/v1", Fault::Status(500, None)));

    let out = push(src.path(), &proxy.reference(&repo, "v1"), &["data.bin"]);
    let stderr = assert_fails(&out, "HTTP 500");
    eprintln!("{}", stderr.trim());
    assert!(stderr.contains("manifest"), "{stderr}");
    assert_eq!(proxy.matching("PUT", "/manifests/v1").len(), 5);
    assert_eq!(manifest_status(&repo, "v1"), 404);
}

/// `out`, a push of the blob `digest` to `REPO:v1` whose bytes were corrupted on the way,
/// failed naming the digest, and neither the blob nor the tag is stored.
#[track_caller]
fn assert_corrupted_push_refused(out: &Output, repo: &str, digest: &str) {
    let stderr = assert_fails(out, digest);
    eprintln!("{}", stderr.trim());
    assert!(stderr.to_lowercase().contains("digest"), "{stderr}");
    assert_ne!(blob_status(repo, digest), 200);
    assert_eq!(manifest_status(repo, "v1"), 404);
}

#[test]
fn push_of_bytes_corrupted_on_the_way_is_refused_and_not_stored() {
    require_registry!();
    let (repo, _, digest, src, proxy) =
        to_push_through_proxy("fault-push-corrupt", "data.bin", 300_000);
    proxy.add(Rule::new(
        "PUT",
        "/blobs/uploads/",
        Fault::CorruptRequest(4321),
    ));

    let out = push(src.path(), &proxy.reference(&repo, "v1"), &["data.bin"]);
    assert_corrupted_push_refused(&out, &repo, &digest);
}

#[test]
fn push_refuses_a_registry_that_stores_another_manifest_digest() {
    require_registry!();
    let (repo, _, _, src, proxy) = to_push_through_proxy("fault-push-digest", "data.bin", 100);
    let wrong = sha256_bytes(b"not what was pushed");
    proxy.add(Rule::new(
        "PUT",
        "/manifests/",
        Fault::WrongDigest(wrong.clone()),
    ));
    let out = push(src.path(), &proxy.reference(&repo, "v1"), &["data.bin"]);
    let stderr = assert_fails(&out, &wrong);
    eprintln!("{}", stderr.trim());
    assert!(stderr.contains("stored it as"), "{stderr}");
}

// --- Push of a large file, hashed while it uploads --------------------------------------------

/// Over `oras::HASH_WHILE_SENDING_MIN` (16 MiB): uploaded while it is hashed.
const LARGE: usize = 17 * MIB;

/// Requests that committed an upload under `digest` (`PUT .../blobs/uploads/...?digest=`).
fn commits_of(proxy: &FaultProxy, digest: &str) -> Vec<Seen> {
    proxy
        .matching("PUT", "/blobs/uploads/")
        .into_iter()
        .filter(|s| percent_decode(&s.path).contains(&format!("digest={digest}")))
        .collect()
}

#[test]
fn a_large_file_uploads_while_it_hashes_and_stops_once_the_registry_has_it() {
    require_registry!();
    let (repo, data, digest, src, proxy) =
        to_push_through_proxy("fault-push-large", "large.bin", LARGE);

    assert_ok(&push(
        src.path(),
        &proxy.reference(&repo, "v1"),
        &["large.bin"],
    ));
    // The bytes went before the digest was known: one PATCH, then an empty PUT naming it.
    let patches = proxy.matching("PATCH", "/blobs/uploads/");
    assert_eq!(patches.len(), 1, "{patches:#?}");
    assert_eq!(patches[0].body_received, LARGE as u64);
    let commits = commits_of(&proxy, &digest);
    assert_eq!(commits.len(), 1, "{commits:#?}");
    assert_eq!((commits[0].status, commits[0].body_received), (201, 0));
    assert_eq!(pulled_tree(&reference(&repo, "v1"))["large.bin"], data);

    // Again, with the upload held up so that the hash is done first: the registry has the
    // blob, so the upload is cancelled and nothing is committed.
    proxy.clear_log();
    proxy.add(
        Rule::new(
            "PATCH",
            "/blobs/uploads/",
            Fault::Stall(Duration::from_secs(20)),
        )
        .once(),
    );
    let out = push(src.path(), &proxy.reference(&repo, "v2"), &["large.bin"]);
    assert_ok(&out);
    let stderr = stderr_of(&out);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("Exists") && l.contains("large.bin")),
        "{stderr}"
    );
    assert!(commits_of(&proxy, &digest).is_empty());
    let deletes = proxy.matching("DELETE", "/blobs/uploads/");
    assert_eq!(
        deletes.len(),
        1,
        "the upload was not cancelled: {deletes:#?}"
    );
    assert_eq!(deletes[0].status, 204);
    let v2 = json(&get_manifest(&repo, "v2").1);
    assert_eq!(v2["layers"][0]["digest"].as_str(), Some(digest.as_str()));
}

#[test]
fn a_large_upload_dropped_mid_body_is_sent_again_and_a_corrupted_one_refused() {
    require_registry!();
    let (repo, data, digest, src, proxy) =
        to_push_through_proxy("fault-push-large-drop", "large.bin", LARGE);

    // Corrupted on the way: the registry's check of the digest at the commit refuses it.
    proxy.add(Rule::new("PATCH", "/blobs/uploads/", Fault::CorruptRequest(12_345)).once());
    let out = push(src.path(), &proxy.reference(&repo, "v1"), &["large.bin"]);
    assert_corrupted_push_refused(&out, &repo, &digest);

    // Dropped mid-body: sent again (from the now known digest) and pushed.
    proxy.clear();
    proxy.add(
        Rule::new(
            "PATCH",
            "/blobs/uploads/",
            Fault::DropRequestAfter(MIB as u64),
        )
        .once(),
    );
    assert_ok(&push(
        src.path(),
        &proxy.reference(&repo, "v1"),
        &["large.bin"],
    ));
    assert_eq!(blob_status(&repo, &digest), 200);
    assert_eq!(pulled_tree(&reference(&repo, "v1"))["large.bin"], data);
}

#[test]
fn a_commit_whose_answer_is_lost_is_confirmed_by_asking_the_registry() {
    require_registry!();
    let repo = unique_repo("fault-lost-commit");
    let src = temp_dir();
    let large = random_bytes(&repo, LARGE);
    write_file(&src.path().join("large.bin"), &large);
    write_file(&src.path().join("small.txt"), format!("small {repo}"));
    let proxy = FaultProxy::start(&registry());

    // A large file's commit (an empty PUT after its PATCH) is carried out, its answer lost:
    // the retry finds the session gone (404), and a HEAD shows the blob is there. (Its hex:
    // the config goes at the same time, and the query has the digest percent-encoded.)
    let large_hex = sha256_bytes(&large)
        .trim_start_matches("sha256:")
        .to_string();
    proxy.add(Rule::new("PUT", &large_hex, Fault::LoseAnswer).once());
    assert_ok(&push(
        src.path(),
        &proxy.reference(&repo, "v1"),
        &["large.bin"],
    ));
    let puts = commits_of(&proxy, &sha256_bytes(&large));
    assert!(puts[0].fault.is_some(), "{puts:#?}");
    assert!(puts.iter().any(|p| p.status == 404), "{puts:#?}");
    let sent: u64 = proxy
        .matching("PATCH", "/blobs/uploads/")
        .iter()
        .chain(&puts)
        .map(|s| s.body_received)
        .sum();
    assert_eq!(sent, LARGE as u64, "the large file was sent again");

    // A small file's one streaming PUT, the same.
    let small_digest = sha256_bytes(format!("small {repo}").as_bytes());
    proxy.clear();
    proxy.clear_log();
    // The query has the digest percent-encoded: match its hex.
    let hex = small_digest.trim_start_matches("sha256:");
    proxy.add(Rule::new("PUT", hex, Fault::LoseAnswer).once());
    assert_ok(&push(
        src.path(),
        &proxy.reference(&repo, "v2"),
        &["small.txt"],
    ));
    let puts = commits_of(&proxy, &small_digest);
    assert_eq!(puts.len(), 1, "{puts:#?}");
    assert!(puts[0].fault.is_some());

    assert_eq!(pulled_tree(&reference(&repo, "v1"))["large.bin"], large);
    assert_eq!(
        pulled_tree(&reference(&repo, "v2"))["small.txt"],
        format!("small {repo}").as_bytes()
    );
}

#[test]
fn a_failed_upload_cancels_its_session() {
    require_registry!();
    let (repo, _, digest, src, proxy) = to_push_through_proxy("fault-cancel-session", "a.txt", 100);
    // The file's upload only (the config goes at the same time); the query has the digest
    // percent-encoded: match its hex.
    let hex = digest.trim_start_matches("sha256:");
    proxy.add(Rule::new("PUT", hex, Fault::Status(400, None)));
    let out = push(src.path(), &proxy.reference(&repo, "v1"), &["a.txt"]);
    assert!(!out.status.success());
    let deletes = proxy.matching("DELETE", "/blobs/uploads/");
    assert_eq!(deletes.len(), 1, "{deletes:#?}");
    assert_eq!(deletes[0].status, 204);
    assert_eq!(manifest_status(&repo, "v1"), 404);
}

#[test]
fn a_registry_that_refuses_mount_requests_still_gets_pushes() {
    require_registry!();
    let repo = unique_repo("fault-no-mount");
    let src = temp_dir();
    write_file(&src.path().join("a.txt"), format!("a {repo}"));
    write_file(&src.path().join("b.txt"), format!("b {repo}"));
    let proxy = FaultProxy::start(&registry());
    // A push asks "is it here?" with a mount from the repository itself; refuse those.
    proxy.add(Rule::new("POST", "mount=", Fault::Status(400, None)));

    assert_ok(&push(
        src.path(),
        &proxy.reference(&repo, "v1"),
        &["a.txt", "b.txt"],
    ));
    assert!(proxy.faults_applied() >= 3, "two files and the config");
    assert_eq!(pulled(&reference(&repo, "v1"), &[]), tree(src.path()));
    // The second time, plain HEADs find every blob.
    let out = push(
        src.path(),
        &proxy.reference(&repo, "v2"),
        &["a.txt", "b.txt"],
    );
    assert_ok(&out);
    let stderr = stderr_of(&out);
    assert!(!stderr.contains("Done"), "{stderr}");
    assert_eq!(stderr.matches("Exists").count(), 3, "{stderr}");
}

// --- Mount reads ----------------------------------------------------------------------------

#[test]
fn mount_reads_survive_drops_stalls_and_ignored_ranges() {
    require_registry!();
    let repo = unique_repo("fault-mount-read");
    let small = random_bytes(&format!("{repo}-small"), 300_000);
    let large = random_bytes(&format!("{repo}-large"), 6 * MIB);
    let slow = random_bytes(&format!("{repo}-slow"), 200_000);
    push_contents(
        &reference(&repo, "v1"),
        &[
            ("small.bin", &small),
            ("large.bin", &large),
            ("slow.bin", &slow),
        ],
    );
    let (small_digest, large_digest) = (sha256_bytes(&small), sha256_bytes(&large));
    let slow_digest = sha256_bytes(&slow);
    let proxy = FaultProxy::start(&registry());
    proxy.add(Rule::blob_get(&small_digest, Fault::DropAfter(100_000)).once());
    proxy.add(Rule::blob_get(&large_digest, Fault::IgnoreRange));
    proxy.add(
        Rule::blob_get(
            &slow_digest,
            Fault::StallAfter(50_000, Duration::from_secs(2)),
        )
        .once(),
    );

    let m = Mount::new(&proxy.reference(&repo, "v1"), &["--read-only"]);
    assert_eq!(read_file(&m.join("small.bin")), small, "{}", m.daemon_log());
    let f = std::fs::File::open(m.join("large.bin")).unwrap();
    let mut buf = vec![0u8; 4096];
    let at = 5 * MIB + 12_345;
    f.read_exact_at(&mut buf, at as u64).unwrap();
    assert_eq!(buf, large[at..at + 4096], "{}", m.daemon_log());
    let started = Instant::now();
    assert_eq!(read_file(&m.join("slow.bin")), slow, "{}", m.daemon_log());
    assert!(started.elapsed() >= Duration::from_secs(2));

    proxy.settle(Duration::from_secs(5));
    let small_gets = proxy.blob_gets(&small_digest);
    assert_eq!(small_gets.len(), 2, "{small_gets:#?}");
    let large_gets = proxy.blob_gets(&large_digest);
    assert!(!large_gets.is_empty());
    assert!(large_gets
        .iter()
        .all(|g| g.status == 200 && g.header("range").is_some()));
}

/// Opens a file of a mount for direct I/O, so each read reaches the daemon at its own size
/// (the page cache would widen it to the kernel's readahead).
fn open_direct(path: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {} with O_DIRECT: {e}", path.display()))
}

/// Reads the 4 KiB at `at` of a file opened with [`open_direct`] (into an aligned buffer, as
/// O_DIRECT wants).
fn read_page_direct(f: &std::fs::File, at: u64) -> Vec<u8> {
    let mut buf = vec![0u8; 8192];
    let start = buf.as_ptr().align_offset(4096);
    f.read_exact_at(&mut buf[start..start + 4096], at).unwrap();
    buf[start..start + 4096].to_vec()
}

#[test]
fn a_mount_read_waits_for_its_block_not_for_its_whole_request() {
    require_registry!();
    let (repo, large, digest, proxy) =
        pushed_behind_proxy("fault-mount-block", "large.bin", 6 * MIB);
    // The first request (the read's block and the prefetch after it) stops after its first
    // block and a little more, for longer than this test lasts.
    proxy.add(Rule::blob_get(&digest, Fault::StallAfter(300_000, Duration::from_secs(20))).once());
    let m = Mount::new(&proxy.reference(&repo, "v1"), &["--read-only"]);
    let f = open_direct(&m.join("large.bin"));
    let started = Instant::now();
    assert_eq!(read_page_direct(&f, 0), large[..4096], "{}", m.daemon_log());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the read waited for the stalled rest of its request: {}",
        m.daemon_log()
    );
    let gets = proxy.blob_gets(&digest);
    let first = gets[0].header("range").unwrap_or_default();
    let end: u64 = first.rsplit('-').next().unwrap().parse().unwrap();
    assert!(
        end >= 1024 * 1024,
        "the request was meant to run past the read: {first}"
    );
}

#[test]
fn a_mount_range_read_resumes_where_a_drop_stopped() {
    require_registry!();
    let (repo, large, digest, proxy) =
        pushed_behind_proxy("fault-mount-resume", "large.bin", 6 * MIB);
    proxy.add(Rule::blob_get(&digest, Fault::DropAfter(300_000)).once());
    let m = Mount::new(&proxy.reference(&repo, "v1"), &["--read-only"]);
    let f = open_direct(&m.join("large.bin"));
    assert_eq!(read_page_direct(&f, 0), large[..4096], "{}", m.daemon_log());
    assert_eq!(read_file(&m.join("large.bin")), large, "{}", m.daemon_log());

    let gets = proxy.blob_gets(&digest);
    let end = |s: &Seen| {
        s.header("range")
            .and_then(|r| r.rsplit('-').next().map(String::from))
    };
    let first = &gets[0];
    assert_eq!(range_start(first), Some(0), "{gets:#?}");
    let resume = gets
        .iter()
        .find(|g| range_start(g) == Some(300_000))
        .unwrap_or_else(|| panic!("no resume from byte 300000: {gets:#?}"));
    assert_eq!(
        end(first),
        end(resume),
        "the resume asks for the rest of the same range"
    );
}

#[test]
fn mount_reads_of_corrupted_bytes_fail_and_leave_no_trace_in_the_cache() {
    require_registry!();
    let (repo, small, digest, proxy) =
        pushed_behind_proxy("fault-mount-corrupt", "small.bin", 300_000);
    let hex = digest["sha256:".len()..].to_string();
    proxy.add(Rule::blob_get(&digest, Fault::Corrupt(200_000)).once());
    let cache = temp_dir();

    {
        let m = Mount::with_cache_dir(
            &proxy.reference(&repo, "v1"),
            cache.path(),
            &["--read-only"],
        );
        assert_eq!(errno_of(std::fs::read(m.join("small.bin"))), libc::EIO);
    }
    for sub in ["blobs/sha256", "partial/sha256"] {
        let names = list_dir(&cache.path().join(sub));
        assert!(
            !names.iter().any(|n| n.starts_with(&hex)),
            "{sub} keeps {names:?} of the corrupted blob"
        );
    }
    // The next mount with the same cache reads the right bytes.
    let m = Mount::with_cache_dir(
        &proxy.reference(&repo, "v1"),
        cache.path(),
        &["--read-only"],
    );
    assert_eq!(read_file(&m.join("small.bin")), small, "{}", m.daemon_log());
}

#[test]
fn mount_read_errors_are_bounded_and_do_not_stick() {
    require_registry!();
    let repo = unique_repo("fault-mount-503");
    let small = random_bytes(&repo, 50_000);
    push_contents(
        &reference(&repo, "v1"),
        &[("small.bin", &small), ("other.txt", b"other\n")],
    );
    let digest = sha256_bytes(&small);
    let proxy = FaultProxy::start(&registry());
    proxy.add(Rule::blob_get(&digest, Fault::Status(503, Some(0))));

    let m = Mount::new(&proxy.reference(&repo, "v1"), &["--read-only"]);
    let started = Instant::now();
    let path = m.join("small.bin");
    let errno = within(Duration::from_secs(60), move || {
        std::fs::read(&path)
            .map(|v| v.len())
            .map_err(|e| e.raw_os_error())
    })
    .expect("a read of a failing blob hung for a minute");
    let elapsed = started.elapsed();
    assert_eq!(errno, Err(Some(libc::EIO)));
    let tries = proxy.blob_gets(&digest).len();
    eprintln!("EIO after {elapsed:?} and {tries} requests");
    // 5 tries per block fetch; the kernel may read twice. Nested retries would make it 25+.
    assert!(tries <= 10, "one read made {tries} requests in {elapsed:?}");
    // Other files are unaffected, and once the registry recovers the file reads fine.
    assert_eq!(read_file(&m.join("other.txt")), b"other\n");
    proxy.clear();
    assert_eq!(read_file(&m.join("small.bin")), small, "{}", m.daemon_log());
}

// --- Mount writes ---------------------------------------------------------------------------

#[test]
fn mount_writes_survive_faults_and_a_failed_sync_drops_nothing() {
    require_registry!();
    let repo = unique_repo("fault-mount-write");
    let base = random_bytes(&format!("{repo}-base"), MIB);
    let keep = random_bytes(&format!("{repo}-keep"), 200_000);
    push_contents(
        &reference(&repo, "v1"),
        &[("base.bin", &base), ("keep.bin", &keep)],
    );
    let (base_digest, keep_digest) = (sha256_bytes(&base), sha256_bytes(&keep));
    let proxy = FaultProxy::start(&registry());
    let m = Mount::new(&proxy.reference(&repo, "v1"), &[]);

    // Copy-on-write of a blob that arrives corrupted: refused, nothing staged.
    proxy.add(Rule::blob_get(&keep_digest, Fault::Corrupt(1000)).once());
    // Opening fetches nothing; the first write makes the copy, and fails.
    let mut opened = std::fs::OpenOptions::new()
        .append(true)
        .open(m.join("keep.bin"))
        .expect("opening for writing fetches nothing");
    assert_eq!(
        errno_of(std::io::Write::write_all(&mut opened, b"more")),
        libc::EIO
    );
    drop(opened);
    let out = m.sync(&[]);
    assert!(
        assert_ok(&out).contains("Nothing to push"),
        "{}",
        describe(&out)
    );

    // Copy-on-write of a blob whose GET drops once: retried.
    proxy.add(Rule::blob_get(&base_digest, Fault::DropAfter(300_000)).once());
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m.join("base.bin"))
            .unwrap_or_else(|e| panic!("append to base.bin: {e}\n{}", m.daemon_log()));
        std::io::Write::write_all(&mut f, b"APPENDED").unwrap();
    }
    let mut appended = base.clone();
    appended.extend_from_slice(b"APPENDED");
    let new = random_bytes(&format!("{repo}-new"), 700_000);
    write_file(&m.join("new.bin"), &new);

    // The registry refuses every upload: sync fails clearly, the changes stay.
    proxy.add(Rule::new(
        "POST",
        "/blobs/uploads/",
        Fault::Status(500, None),
    ));
    let out = m.sync(&[]);
    let stderr = assert_fails(&out, "500");
    eprintln!("{}", stderr.trim());
    assert!(stderr.contains("staged"), "{stderr}");
    assert_eq!(manifest_status(&repo, "v1"), 200);
    assert_eq!(read_file(&m.join("new.bin")), new);
    assert_eq!(read_file(&m.join("base.bin")), appended);

    // Uploads come back, one drops mid-body: sync sends it again and pushes everything.
    proxy.clear();
    proxy.add(Rule::new("PUT", "/blobs/uploads/", Fault::DropRequestAfter(100_000)).once());
    let digest = m.sync_pushed(&[]);
    assert_eq!(get_manifest(&repo, "v1").0, digest);
    let dropped = proxy
        .matching("PUT", "/blobs/uploads/")
        .into_iter()
        .filter(|s| s.fault.is_some())
        .count();
    assert_eq!(dropped, 1, "the fault never hit an upload");
    let pulled = pulled_tree(&reference(&repo, "v1"));
    assert_eq!(pulled.get("base.bin"), Some(&appended));
    assert_eq!(pulled.get("keep.bin"), Some(&keep));
    assert_eq!(pulled.get("new.bin"), Some(&new));
    assert_eq!(pulled.len(), 3);
}

/// A stall longer than the read timeout (30 s, fixed) is cut and resumed. Slow by nature.
#[test]
fn pull_resumes_after_a_stall_longer_than_the_read_timeout() {
    require_registry!();
    let (repo, data, digest, proxy) = pushed_behind_proxy("fault-pull-longstall", "data.bin", MIB);
    proxy.add(Rule::blob_get(&digest, Fault::StallAfter(200_000, Duration::from_secs(45))).once());
    let out_dir = temp_dir();
    let started = Instant::now();
    assert_ok(&pull(&proxy.reference(&repo, "v1"), out_dir.path(), &[]));
    let elapsed = started.elapsed();
    assert_eq!(read_file(&out_dir.path().join("data.bin")), data);
    assert!(
        elapsed < Duration::from_secs(44),
        "waited out the whole stall: {elapsed:?}"
    );
    let gets = proxy.blob_gets(&digest);
    assert_eq!(gets.len(), 2, "{gets:#?}");
    assert!(range_start(&gets[1]).is_some_and(|n| n > 0));
}

// --- Issue #12: slow registries, missing push access ------------------------------------------

/// `oras-fs pull REF -o OUT --no-tty` with a low-speed limit of 20 kB/s over 2 s.
fn pull_with_speed_limit(reference: &str, out: &Path) -> Output {
    let mut cmd = oras_fs_cmd([
        OsStr::new("pull"),
        OsStr::new(reference),
        OsStr::new("-o"),
        out.as_os_str(),
        OsStr::new("--no-tty"),
    ]);
    cmd.env("ORAS_FS_SPEED_LIMIT", "20000/2");
    run(&mut cmd)
}

/// A registry that sends a byte now and then (never slow enough for the read timeout) is
/// given up on after the low-speed window, and the download resumes where it stopped.
#[test]
fn pull_resumes_after_a_trickle_below_the_speed_limit() {
    require_registry!();
    let (repo, data, digest, proxy) = pushed_behind_proxy("fault-pull-trickle", "data.bin", MIB);
    proxy.add(Rule::blob_get(&digest, Fault::Trickle(200_000, Duration::from_millis(300))).once());
    let out_dir = temp_dir();
    let started = Instant::now();
    let out = pull_with_speed_limit(&proxy.reference(&repo, "v1"), out_dir.path());
    assert_ok(&out);
    let elapsed = started.elapsed();
    assert_eq!(read_file(&out_dir.path().join("data.bin")), data);
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    assert!(
        stderr_of(&out).contains("low-speed limit"),
        "{}",
        describe(&out)
    );
    let gets = proxy.blob_gets(&digest);
    assert_eq!(gets.len(), 2, "{gets:#?}");
    assert!(
        range_start(&gets[1]).is_some_and(|n| n >= 200_000),
        "{gets:#?}"
    );
}

/// A registry that always trickles fails the pull in bounded time, with a clear error, and
/// nothing is left behind.
#[test]
fn pull_from_a_registry_that_always_trickles_fails_in_bounded_time() {
    require_registry!();
    let (repo, _, digest, proxy) = pushed_behind_proxy("fault-pull-trickles", "data.bin", 300_000);
    proxy.add(Rule::blob_get(
        &digest,
        Fault::Trickle(0, Duration::from_millis(300)),
    ));
    let out_dir = temp_dir();
    let started = Instant::now();
    let out = pull_with_speed_limit(&proxy.reference(&repo, "v1"), out_dir.path());
    let elapsed = started.elapsed();
    let stderr = assert_fails(&out, "low-speed limit");
    eprintln!("always trickling: {}", stderr.trim());
    assert!(stderr.contains("gave up after"), "{stderr}");
    assert!(elapsed < Duration::from_secs(40), "took {elapsed:?}");
    assert_eq!(list_dir(out_dir.path()), Vec::<String>::new());
}

/// Credentials that may pull but not push: the error says so, names the repository, and
/// the push is not retried.
#[test]
fn push_without_push_access_says_so_and_is_not_retried() {
    require_registry!();
    let repo = unique_repo("fault-push-scope");
    let src = temp_dir();
    write_file(&src.path().join("a.txt"), format!("scope {repo}"));
    for (creds, who) in [
        (
            Some(("reader", "reader-pass")),
            "the credentials lack push access",
        ),
        (None, "anonymous access lacks push access"),
    ] {
        let proxy = FaultProxy::start_bearer(&registry(), creds);
        proxy.grant_pull_only();
        let r = proxy.reference(&repo, "v1");
        let mut args = vec!["push", r.as_str(), "a.txt", "--no-tty"];
        if let Some((u, p)) = creds {
            args.extend(["-u", u, "-p", p]);
        }
        let out = oras_fs_in(src.path(), args);
        let stderr = assert_fails(&out, who);
        eprintln!("without push access: {}", stderr.trim());
        assert!(stderr.contains(&format!("{who} to {repo}")), "{stderr}");
        assert!(!stderr.contains("check the credentials"), "{stderr}");
        assert!(!stderr.contains("again"), "retried: {stderr}");
        proxy.settle(Duration::from_secs(5));
        // The file and the config (they go at the same time): each asked once, and once
        // more with a fresh token.
        let posts = proxy.matching("POST", "/blobs/uploads/");
        assert!(
            posts.len() <= 4,
            "{} upload requests: {posts:#?}",
            posts.len()
        );
        assert_eq!(manifest_status(&repo, "v1"), 404);
    }
}

/// Runs `oras-fs ARGS` until `started` says it is writing, sends it SIGINT (Ctrl-C), and
/// returns its exit code and stderr.
fn interrupt(args: &[&str], started: impl Fn() -> bool) -> (Option<i32>, String) {
    let mut cmd = oras_fs_cmd(args);
    let mut child = KillOnDrop::spawn(
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started() {
        assert!(Instant::now() < deadline, "{args:?} never started writing");
        assert!(child.try_wait().is_none(), "{args:?} ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    kill_pid(child.0.id(), libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "{args:?} did not end on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = drain(child.0.stderr.take().unwrap()).join().unwrap();
    (status.code(), String::from_utf8_lossy(&stderr).into_owned())
}

#[test]
fn an_interrupted_pull_or_backup_removes_what_it_was_writing_and_says_so() {
    require_registry!();
    let (repo, _data, digest, proxy) = pushed_behind_proxy("fault-interrupt", "data.bin", 3 * MIB);
    // The blob stops after 1 MiB for longer than the test waits.
    proxy.add(Rule::blob_get(
        &digest,
        Fault::StallAfter(MIB as u64, Duration::from_secs(60)),
    ));
    let reference = proxy.reference(&repo, "v1");

    // A pull: its partial file goes, and no file takes the name.
    let out_dir = temp_dir();
    let (code, stderr) = interrupt(
        &[
            "pull",
            &reference,
            "-o",
            path_str(out_dir.path()),
            "--no-tty",
        ],
        || !leftovers(out_dir.path()).is_empty(),
    );
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("interrupted by SIGINT"), "{stderr}");
    assert_eq!(leftovers(out_dir.path()), Vec::<String>::new());
    assert!(!out_dir.path().join("data.bin").exists());

    // A backup into a tar: the layout it was making beside the tar goes too.
    let out_dir = temp_dir();
    let tar = out_dir.path().join("backup.tar");
    let (code, stderr) = interrupt(
        &["backup", "-o", path_str(&tar), &reference, "--no-tty"],
        || proxy.blob_gets(&digest).len() > 1 && !leftovers(out_dir.path()).is_empty(),
    );
    assert_eq!(code, Some(130), "{stderr}");
    assert_eq!(leftovers(out_dir.path()), Vec::<String>::new());
    assert!(!tar.exists());
    proxy.clear();
}
