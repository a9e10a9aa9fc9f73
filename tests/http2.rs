//! HTTP/2 over TLS: a Distribution with a certificate (it speaks HTTP/2 to clients that offer
//! it) is used over one connection for many small blobs (their upload bodies take turns on
//! four, each with its own flow-control window); big blobs go on HTTP/1.1; a TLS
//! server that offers only HTTP/1.1 still works; `--http1.1` and `ORAS_FS_HTTP1=1` force
//! HTTP/1.1. Connections are counted at `scripts/latency_proxy.py`, put between the client and
//! the registry. Run with `scripts/test.sh`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `scripts/latency_proxy.py` in front of `target`, counting the connections it accepts.
struct CountingProxy {
    child: KillOnDrop,
    port: u16,
    stats: PathBuf,
    _dir: tempfile::TempDir,
}

impl CountingProxy {
    /// No added delay. `tls`: (certificate, key) to terminate TLS with, offering HTTP/1.1 only.
    fn start(target: &str, tls: Option<(&Path, &Path)>) -> CountingProxy {
        let dir = temp_dir();
        let stats = dir.path().join("stats.json");
        let port_file = dir.path().join("port");
        let python = std::env::var("ORAS_FS_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut cmd = Command::new(python);
        cmd.arg(scripts_dir().join("latency_proxy.py"))
            .args(["--listen", "127.0.0.1:0", "--target", target])
            .args(["--delay-ms", "0", "--no-handshake", "--stats"])
            .arg(&stats)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&port_file).expect("port file"))
            .stderr(Stdio::inherit());
        if let Some((cert, key)) = tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        let child = KillOnDrop::spawn(&mut cmd);
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            let text = std::fs::read_to_string(&port_file).unwrap_or_default();
            if let Ok(p) = text.trim().parse() {
                break p;
            }
            assert!(Instant::now() < deadline, "latency_proxy.py did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        CountingProxy {
            child,
            port,
            stats,
            _dir: dir,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Client connections accepted so far (the proxy writes its stats on SIGUSR1).
    fn connections(&self) -> u64 {
        let _ = std::fs::remove_file(&self.stats);
        kill_pid(self.child.0.id(), libc::SIGUSR1);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.stats) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    return v["connections"].as_u64().expect("connections");
                }
            }
            assert!(Instant::now() < deadline, "no stats from latency_proxy.py");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The protocols (`HTTP/1.1`, `HTTP/2.0`) of the registry's access-log lines for `repo` whose
/// request line contains `needle`.
fn protocols(log: &Path, repo: &str, needle: &str) -> Vec<String> {
    let text = std::fs::read_to_string(log).expect("registry log");
    let marker = format!("/v2/{repo}/");
    text.lines()
        .filter(|l| !l.starts_with('{') && l.contains(&marker) && l.contains(needle))
        .filter_map(|l| {
            let request = l.split('"').nth(1)?;
            Some(request.rsplit(' ').next()?.to_string())
        })
        .collect()
}

/// The client addresses (as the registry saw them: one per proxied connection) of the blob
/// upload PUTs to `repo` (the big blob's body goes in a PATCH, its PUT only commits).
fn upload_senders(log: &Path, repo: &str) -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(log).expect("registry log");
    let uploads = format!("/v2/{repo}/blobs/uploads/");
    text.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["http.request.method"] == "PUT"
                && v["http.request.uri"]
                    .as_str()
                    .is_some_and(|u| u.contains(&uploads))
        })
        .filter_map(|v| Some(v["http.request.remoteaddr"].as_str()?.to_string()))
        .collect()
}

/// `count` files of a few KiB each in a new directory.
fn small_files(seed: &str, count: usize) -> (tempfile::TempDir, Vec<String>) {
    let dir = temp_dir();
    let names: Vec<String> = (0..count).map(|i| format!("f{i:03}")).collect();
    for (i, n) in names.iter().enumerate() {
        write_random_file(&dir.path().join(n), &format!("{seed}-{i}"), 4096 + i as u64);
    }
    (dir, names)
}

#[test]
fn many_small_blobs_share_one_http2_connection_and_big_ones_take_http1() {
    require_registry!();
    let reg = ExtraRegistry::start("h2-one-conn", &["--tls"]);
    let ca = reg.ca.clone().expect("a CA");
    let ca = path_str(&ca);
    let proxy = CountingProxy::start(&reg.host, None);
    let repo = unique_repo("h2-one-conn");
    let r = format!("{}/{repo}:v1", proxy.host());
    let (src, mut names) = small_files(&repo, 40);
    // Above the size that goes on an HTTP/1.1 connection of its own (16 MiB).
    write_random_file(&src.path().join("big"), &repo, 17 << 20);
    names.push("big".into());

    let before = proxy.connections();
    let mut args: Vec<&str> = names.iter().map(String::as_str).collect();
    args.extend(["--ca-file", ca]);
    push_files(src.path(), &r, &args);
    let pushed = proxy.connections() - before;
    // Four HTTP/2 connections (the shared one, three more for upload bodies: the registry's
    // flow-control window bounds each), one HTTP/1.1 for the big one.
    assert_eq!(pushed, 5, "push opened {pushed} connections");
    // The small blobs' bodies took turns on the four HTTP/2 connections.
    let senders = upload_senders(&reg.log, &repo);
    assert_eq!(senders.len(), 4, "blob PUTs came from {senders:?}");

    let before = proxy.connections();
    let out = temp_dir();
    assert_ok(&pull(&r, out.path(), &["--ca-file", ca]));
    assert_eq!(proxy.connections() - before, 2, "pull");
    for n in &names {
        assert_eq!(
            sha256_file(&out.path().join(n)),
            sha256_file(&src.path().join(n)),
            "{n}"
        );
    }

    // The small ones went over HTTP/2, the big one over HTTP/1.1.
    let manifests = protocols(&reg.log, &repo, "/manifests/");
    assert!(!manifests.is_empty());
    assert!(manifests.iter().all(|p| p == "HTTP/2.0"), "{manifests:?}");
    let big = sha256_file(&src.path().join("big"));
    let big_gets = protocols(&reg.log, &repo, &format!("GET /v2/{repo}/blobs/{big}"));
    assert_eq!(big_gets, ["HTTP/1.1"]);
    let small = sha256_file(&src.path().join("f000"));
    let small_gets = protocols(&reg.log, &repo, &format!("GET /v2/{repo}/blobs/{small}"));
    assert_eq!(small_gets, ["HTTP/2.0"]);
}

#[test]
fn a_tls_server_without_http2_is_spoken_to_in_http1() {
    require_registry!();
    // A TLS registry's certificate (for 127.0.0.1) serves the proxy, which offers only
    // HTTP/1.1 and forwards to the plain-HTTP test registry.
    let reg = ExtraRegistry::start("h2-fallback-cert", &["--tls"]);
    let ca = reg.ca.clone().expect("a CA");
    let state = reg.dir.parent().expect("state dir");
    let proxy = CountingProxy::start(
        &registry(),
        Some((&state.join("server.crt"), &state.join("server.key"))),
    );
    let repo = unique_repo("h2-fallback");
    let (src, names) = small_files(&repo, 8);
    let args: Vec<&str> = names.iter().map(String::as_str).collect();
    push_files(src.path(), &reference(&repo, "v1"), &args);

    let out = temp_dir();
    let through = format!("{}/{repo}:v1", proxy.host());
    assert_ok(&pull(&through, out.path(), &["--ca-file", path_str(&ca)]));
    assert_eq!(tree(out.path()), tree(src.path()));
    assert!(proxy.connections() >= 1);
}

#[test]
fn http1_can_be_forced_by_flag_or_environment() {
    require_registry!();
    let reg = ExtraRegistry::start("h2-forced", &["--tls"]);
    let ca = reg.ca.clone().expect("a CA");
    let ca = path_str(&ca);
    let repo = unique_repo("h2-forced");
    let (src, names) = small_files(&repo, 4);
    let mut args: Vec<&str> = names.iter().map(String::as_str).collect();
    args.extend(["--ca-file", ca, "--http1.1"]);
    push_files(src.path(), &reg.reference(&repo, "v1"), &args);

    let out = temp_dir();
    let mut cmd = oras_fs_cmd([
        "pull",
        &reg.reference(&repo, "v1"),
        "-o",
        path_str(out.path()),
        "--ca-file",
        ca,
    ]);
    cmd.env("ORAS_FS_HTTP1", "1");
    assert_ok(&run(&mut cmd));
    assert_eq!(tree(out.path()), tree(src.path()));
    let seen = protocols(&reg.log, &repo, "");
    assert!(seen.len() > names.len(), "{seen:?}");
    assert!(seen.iter().all(|p| p == "HTTP/1.1"), "{seen:?}");

    // Without either, the same registry is spoken to in HTTP/2.
    let out = temp_dir();
    assert_ok(&pull(
        &reg.reference(&repo, "v1"),
        out.path(),
        &["--ca-file", ca],
    ));
    let seen = protocols(&reg.log, &repo, "");
    assert!(seen.iter().any(|p| p == "HTTP/2.0"), "{seen:?}");

    // A value that is neither on nor off is named.
    let mut cmd = oras_fs_cmd(["resolve", &reg.reference(&repo, "v1"), "--ca-file", ca]);
    cmd.env("ORAS_FS_HTTP1", "maybe");
    assert_fails(&run(&mut cmd), "ORAS_FS_HTTP1");
}

#[test]
fn a_mounts_first_read_uses_the_connection_it_mounted_with() {
    require_registry!();
    let reg = ExtraRegistry::start("h2-mount", &["--tls"]);
    let ca = reg.ca.clone().expect("a CA");
    let ca = path_str(&ca);
    let proxy = CountingProxy::start(&reg.host, None);
    let repo = unique_repo("h2-mount");
    let src = temp_dir();
    write_random_file(&src.path().join("data"), &repo, 1 << 20);
    push_files(
        src.path(),
        &reg.reference(&repo, "v1"),
        &["data", "--ca-file", ca],
    );

    let through = format!("{}/{repo}:v1", proxy.host());
    let before = proxy.connections();
    let mount = Mount::new(&through, &["--read-only", "--ca-file", ca]);
    let mounted = proxy.connections() - before;
    assert_eq!(
        std::fs::read(mount.join("data")).expect("read"),
        read_file(&src.path().join("data"))
    );
    let after_read = proxy.connections() - before;
    assert_eq!(
        after_read, mounted,
        "the first read opened a connection of its own"
    );
    assert!(mounted <= 1, "mounting opened {mounted} connections");
}
