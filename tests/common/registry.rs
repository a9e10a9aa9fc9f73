//! Registries besides the code under test: plain HTTP to the main test registry (crafting
//! manifests, uploading blobs), its storage layout, extra registries of a test's own
//! (`scripts/registry.sh`, stopped and restarted), and certificates.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// Where Distribution's filesystem driver keeps a blob's bytes:
/// `$DIR/docker/registry/v2/blobs/sha256/<first 2 hex>/<hex>/data`.
pub fn blob_path(registry_dir: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest
        .split_once(':')
        .unwrap_or_else(|| panic!("not a digest: {digest:?}"));
    registry_dir
        .join("docker/registry/v2/blobs")
        .join(alg)
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// Where Distribution links a blob into a repository once it has it whole (a pull-through
/// cache serves the blob locally only from then on):
/// `$DIR/docker/registry/v2/repositories/<repo>/_layers/sha256/<hex>/link`.
pub fn layer_link_path(registry_dir: &Path, repo: &str, digest: &str) -> PathBuf {
    let (alg, hex) = digest
        .split_once(':')
        .unwrap_or_else(|| panic!("not a digest: {digest:?}"));
    registry_dir
        .join("docker/registry/v2/repositories")
        .join(repo)
        .join("_layers")
        .join(alg)
        .join(hex)
        .join("link")
}

/// A response of [`http`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Panics unless the status is `status`, showing `what` was asked and the body.
    #[track_caller]
    pub fn assert_status(&self, status: u16, what: &str) {
        assert_eq!(
            self.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&self.body)
        );
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// One plain-HTTP/1.1 request to `host` (e.g. [`registry()`]), independent of the code under
/// test: for crafting manifests and inspecting the registry. `headers` are `(name, value)`.
pub fn http(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut stream =
        std::net::TcpStream::connect(host).unwrap_or_else(|e| panic!("connecting to {host}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(req.as_bytes()).expect("sending a request");
    stream.write_all(body).expect("sending a request body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("reading a response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed HTTP response: {}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("malformed status line: {head}"));
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_line = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[(start + size + 2).min(data.len())..];
    }
}

/// Fetches a manifest from the main test registry: (digest from the registry, bytes).
#[track_caller]
pub fn get_manifest(repo: &str, reference: &str) -> (String, Vec<u8>) {
    let resp = http(
        &registry(),
        "GET",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        b"",
    );
    resp.assert_status(200, &format!("GET manifest {repo}:{reference}"));
    let digest = resp
        .header("docker-content-digest")
        .unwrap_or_default()
        .to_string();
    (digest, resp.body)
}

/// The status of a HEAD of `repo`'s manifest `reference` (a tag or digest) on the main test
/// registry: 200 if it is there, 404 if not.
pub fn manifest_status(repo: &str, reference: &str) -> u16 {
    http(
        &registry(),
        "HEAD",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        b"",
    )
    .status
}

/// The status of a HEAD of `repo`'s blob `digest` on the main test registry: 200 if it is
/// there, 404 if not.
pub fn blob_status(repo: &str, digest: &str) -> u16 {
    http(
        &registry(),
        "HEAD",
        &format!("/v2/{repo}/blobs/{digest}"),
        &[],
        b"",
    )
    .status
}

/// Uploads `data` as a blob of `repo`, straight to the registry; returns its digest.
pub fn upload_blob(repo: &str, data: &[u8]) -> String {
    let digest = sha256_bytes(data);
    let reg = registry();
    let resp = http(
        &reg,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    );
    resp.assert_status(202, "POST upload");
    let location = resp
        .header("location")
        .expect("upload Location")
        .to_string();
    let path = location
        .strip_prefix(&format!("http://{reg}"))
        .unwrap_or(&location);
    let sep = if path.contains('?') { '&' } else { '?' };
    let resp = http(
        &reg,
        "PUT",
        &format!("{path}{sep}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        data,
    );
    resp.assert_status(201, "PUT upload");
    digest
}

/// Puts a manifest (as is) on the main test registry under `reference` (a tag or digest).
#[track_caller]
pub fn put_manifest(repo: &str, reference: &str, manifest: &[u8]) {
    let resp = http(
        &registry(),
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        manifest,
    );
    resp.assert_status(201, &format!("PUT manifest {repo}:{reference}"));
}

/// A registry of its own (e.g. with `--htpasswd USER:PASS` or `--tls`), started with
/// `scripts/registry.sh` under a unique name and stopped (its state removed) when dropped.
pub struct ExtraRegistry {
    pub name: String,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Storage root.
    pub dir: PathBuf,
    pub log: PathBuf,
    /// The CA certificate of a `--tls` registry.
    pub ca: Option<PathBuf>,
    pub user: Option<String>,
    pub pass: Option<String>,
    /// Every `export VAR=value` line `registry.sh start` printed.
    pub vars: HashMap<String, String>,
}

impl ExtraRegistry {
    /// `registry.sh start --name <name>-<unique> ARGS...`
    pub fn start(name: &str, args: &[&str]) -> ExtraRegistry {
        let name = unique_name(name);
        let script = scripts_dir().join("registry.sh");
        let mut cmd = Command::new(&script);
        cmd.arg("start").arg("--name").arg(&name).args(args);
        let out = run(&mut cmd);
        assert!(
            out.status.success(),
            "{} start failed\n{}",
            script.display(),
            describe(&out)
        );
        let vars = parse_exports(&stdout_of(&out));
        let get = |k: &str| vars.get(k).cloned();
        let host = get("ORAS_FS_TEST_REGISTRY").unwrap_or_else(|| {
            panic!(
                "registry.sh printed no ORAS_FS_TEST_REGISTRY\n{}",
                describe(&out)
            )
        });
        ExtraRegistry {
            name,
            host,
            dir: PathBuf::from(get("ORAS_FS_TEST_REGISTRY_DIR").unwrap_or_default()),
            log: PathBuf::from(get("ORAS_FS_TEST_REGISTRY_LOG").unwrap_or_default()),
            ca: get("ORAS_FS_TEST_REGISTRY_CA").map(PathBuf::from),
            user: get("ORAS_FS_TEST_REGISTRY_USER"),
            pass: get("ORAS_FS_TEST_REGISTRY_PASS"),
            vars,
        }
    }

    /// `host/repo:tag` on this registry.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host)
    }
}

impl Drop for ExtraRegistry {
    fn drop(&mut self) {
        let script = scripts_dir().join("registry.sh");
        let out = Command::new(&script)
            .arg("stop")
            .arg("--name")
            .arg(&self.name)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {
                // The state directory is `<base>/<name>`, the parent of the storage root.
                if let Some(state) = self.dir.parent() {
                    if state.file_name().and_then(|n| n.to_str()) == Some(self.name.as_str()) {
                        let _ = std::fs::remove_dir_all(state);
                    }
                }
            }
            Ok(o) => eprintln!(
                "registry.sh stop --name {} failed\n{}",
                self.name,
                describe(&o)
            ),
            Err(e) => eprintln!("cannot run {}: {e}", script.display()),
        }
    }
}

/// Parses `export VAR=value` lines, undoing bash's `printf %q` backslash escapes.
fn parse_exports(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), unquote(v)))
        .collect()
}

fn unquote(v: &str) -> String {
    if let Some(inner) = v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        return inner.to_string();
    }
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A TCP port on 127.0.0.1 with nothing listening (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().expect("local address").port()
}

/// An [`ExtraRegistry`] started again (after `registry.sh stop --name N`) on the same port and
/// storage: `registry.sh start` always starts afresh (new port, empty storage), so this runs
/// `docker-registry serve STATE/config.yml` itself, as the script does. Killed when dropped
/// (and `registry.sh stop` of the [`ExtraRegistry`] finds it too: same command line).
pub struct RestartedRegistry(Option<Child>);

impl RestartedRegistry {
    #[track_caller]
    pub fn start(reg: &ExtraRegistry) -> RestartedRegistry {
        let state = reg.dir.parent().expect("storage root inside the state dir");
        let config = state.join("config.yml");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&reg.log)
            .expect("opening the registry log");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        // As registry.sh: the config file is the whole truth.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run docker-registry: {e}"));
        let restarted = RestartedRegistry(Some(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(&reg.host).is_ok()
                && http(&reg.host, "GET", "/v2/", &[], b"").status == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not come back on {}",
                reg.host
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        restarted
    }
}

impl Drop for RestartedRegistry {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `scripts/registry.sh stop --name NAME` of an extra registry (it can be started again with
/// [`RestartedRegistry::start`]).
#[track_caller]
pub fn stop_registry(reg: &ExtraRegistry) {
    let out = run(Command::new(scripts_dir().join("registry.sh"))
        .arg("stop")
        .arg("--name")
        .arg(&reg.name));
    assert_ok(&out);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(&reg.host).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{} still answers after stop",
            reg.host
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes a self-signed CA in `dir` (`other-ca.crt`) that signed nothing else: a `--ca-file`
/// that must not make a registry's certificate trusted. Returns the certificate's path.
pub fn unrelated_ca(dir: &Path) -> std::path::PathBuf {
    let cert = dir.join("other-ca.crt");
    assert_ok(&run(Command::new("openssl").args([
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-days",
        "1",
        "-subj",
        "/CN=a CA that signed nothing",
        "-keyout",
        dir.join("other-ca.key").to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ])));
    cert
}
