//! Helpers shared by the integration tests.
//!
//! The tests talk to a real registry (CNCF Distribution) started by `scripts/test.sh`, which
//! exports:
//! - `ORAS_FS_TEST_REGISTRY`: `127.0.0.1:PORT` of the main (plain HTTP, anonymous) registry;
//! - `ORAS_FS_TEST_REGISTRY_DIR`: its storage root (Distribution's filesystem layout);
//! - `ORAS_FS_TEST_REGISTRY_LOG`: its log, with one access-log line per request;
//! - `ORAS_FS_PYTHON`: a Python with the ORAS SDK (an independent client for interop tests);
//! - `ORAS_FS_SCRIPTS`: the scripts directory (`registry.sh` starts extra registries).
//!
//! Every test uses its own repository ([`unique_repo`]) and its own content, so tests can run
//! in parallel against one registry without seeing each other's blobs.
//!
//! A test that needs that environment (the registry, or what `scripts/test.sh` sets up with
//! it: FUSE, extra registries, skopeo, the Python SDK) starts with [`require_registry!`], so a
//! plain `cargo test` runs everything else and skips these (see [`registry_available`]).
//!
//! Not every test file uses every helper, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub mod fuse;

/// How long one `oras-fs` (or python, or script) run may take before the test gives up on it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

fn env_or_panic(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is not set: run the tests with scripts/test.sh \
             (or `eval \"$(scripts/registry.sh start)\"` first); a test that needs the \
             registry starts with `require_registry!();` so that plain `cargo test` skips it"
        ),
    }
}

/// Returns from the test (which then counts as passed: the harness has no "skipped") unless
/// the registry environment of `scripts/test.sh` is there. See [`registry_available`].
#[macro_export]
macro_rules! require_registry {
    () => {
        if !$crate::common::registry_available() {
            return;
        }
    };
}

/// Set to `1` by `scripts/test.sh`: a missing registry is then a failure, not a skip, so CI
/// cannot pass by skipping.
pub const REQUIRE_REGISTRY_VAR: &str = "ORAS_FS_REQUIRE_REGISTRY";

static SKIPPED: AtomicUsize = AtomicUsize::new(0);

/// Whether `ORAS_FS_TEST_REGISTRY` is set. When it is not, the test is counted as skipped,
/// and at exit the test binary prints one line saying how many it skipped and how to run them
/// (straight to stderr: the harness would hide an `eprintln!` of a passing test). Panics
/// instead under `ORAS_FS_REQUIRE_REGISTRY=1`.
pub fn registry_available() -> bool {
    if std::env::var_os("ORAS_FS_TEST_REGISTRY").is_some_and(|v| !v.is_empty()) {
        return true;
    }
    if std::env::var(REQUIRE_REGISTRY_VAR).as_deref() == Ok("1") {
        panic!(
            "ORAS_FS_TEST_REGISTRY is not set but {REQUIRE_REGISTRY_VAR}=1: \
             the registry setup failed"
        );
    }
    if SKIPPED.fetch_add(1, Ordering::Relaxed) == 0 {
        // SAFETY: registers a plain function that only reads an atomic and writes to stderr.
        unsafe {
            libc::atexit(report_skipped);
        }
    }
    false
}

extern "C" fn report_skipped() {
    // The test binary's name without cargo's `-<hash>`, e.g. `mount`.
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe.file_stem().unwrap_or_default().to_string_lossy();
    let binary = stem.rsplit_once('-').map_or(&*stem, |(name, _hash)| name);
    let n = SKIPPED.load(Ordering::Relaxed);
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {n} tests of {binary} need a registry and FUSE (the harness counts them as \
         passed); run scripts/test.sh to run them"
    );
}

/// `host:port` of the main test registry (plain HTTP).
pub fn registry() -> String {
    env_or_panic("ORAS_FS_TEST_REGISTRY")
}

/// Storage root of the main test registry.
pub fn registry_dir() -> PathBuf {
    PathBuf::from(env_or_panic("ORAS_FS_TEST_REGISTRY_DIR"))
}

/// The main test registry's log file (JSON lines plus combined-format access lines).
pub fn registry_log() -> PathBuf {
    PathBuf::from(env_or_panic("ORAS_FS_TEST_REGISTRY_LOG"))
}

/// The scripts directory (`ORAS_FS_SCRIPTS`, else the repository's `scripts/`).
pub fn scripts_dir() -> PathBuf {
    std::env::var_os("ORAS_FS_SCRIPTS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts"))
}

/// The Python interpreter with the ORAS SDK (`ORAS_FS_PYTHON`, else the repository's venv).
pub fn python() -> PathBuf {
    std::env::var_os("ORAS_FS_PYTHON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

/// `tests/interop.py`: a small command-line wrapper around the Python ORAS SDK.
pub fn interop_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop.py")
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name no other call (in this or a concurrent test process) returns: `prefix-pid-n-nanos`,
/// made a valid lowercase repository component.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let prefix: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let prefix = prefix.trim_matches('-');
    let prefix = if prefix.is_empty() { "t" } else { prefix };
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// A repository name of its own for one test, e.g. `oras-fs-test/roundtrip-1234-0-5678`.
pub fn unique_repo(prefix: &str) -> String {
    format!("oras-fs-test/{}", unique_name(prefix))
}

/// `registry/repo:tag` on the main test registry.
pub fn reference(repo: &str, tag: &str) -> String {
    format!("{}/{repo}:{tag}", registry())
}

/// A temporary directory, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("oras-fs-test-")
        .tempdir()
        .expect("cannot create a temporary directory")
}

/// The `oras-fs` binary built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_oras-fs")
}

/// A `Command` for `oras-fs ARGS`, isolated from the user's environment: no Docker config
/// (`DOCKER_CONFIG` points to a directory that does not exist, so tests that want stored
/// credentials pass `--registry-config`), no log filter from `ORAS_FS_LOG`.
pub fn oras_fs_cmd<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("DOCKER_CONFIG", "/nonexistent/oras-fs-tests/docker-config")
        .env_remove("ORAS_FS_LOG")
        .env_remove("RUST_LOG");
    cmd
}

/// Runs `oras-fs ARGS` in the current directory.
pub fn oras_fs<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(&mut oras_fs_cmd(args))
}

/// Runs `oras-fs ARGS` in `dir`: push names each layer by the path as given, so tests push
/// relative paths from inside their temporary directory.
pub fn oras_fs_in<I, S>(dir: &Path, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(oras_fs_cmd(args).current_dir(dir))
}

/// Runs `oras-fs ARGS` with `stdin` as its standard input (e.g. for `--password-stdin`).
pub fn oras_fs_stdin<I, S>(args: I, stdin: &[u8]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_with_stdin(&mut oras_fs_cmd(args), stdin)
}

/// Runs `cmd` to completion with an empty stdin, capturing its output; kills it and panics
/// after [`COMMAND_TIMEOUT`].
pub fn run(cmd: &mut Command) -> Output {
    run_with_stdin(cmd, b"")
}

/// Like [`run`], feeding `stdin` to the command.
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    run_with_timeout(cmd, stdin, COMMAND_TIMEOUT)
}

/// Runs `cmd` with `stdin`, capturing stdout and stderr; kills it and panics after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Output {
    let mut child: Child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let input = stdin.to_vec();
    let mut child_stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || {
        // The command may exit without reading: a broken pipe is fine.
        let _ = child_stdin.write_all(&input);
    });
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let out_reader = drain(out);
    let err_reader = drain(err);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out_reader.join().unwrap_or_default();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "{cmd:?} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Reads a child's pipe to its end on a thread of its own (so neither pipe can fill and stall
/// the child while the other is read).
pub fn drain<R: Read + Send + 'static>(mut pipe: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = pipe.read_to_end(&mut v);
        v
    })
}

/// Stdout and stderr of a command, for failure messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Panics (showing the output) unless the command succeeded. Returns its stdout.
#[track_caller]
pub fn assert_ok(out: &Output) -> String {
    assert!(out.status.success(), "command failed\n{}", describe(out));
    stdout_of(out)
}

/// Panics (showing the output) unless the command failed with an stderr that contains
/// `needle`, compared case-insensitively. Returns its stderr.
#[track_caller]
pub fn assert_fails(out: &Output, needle: &str) -> String {
    assert!(
        !out.status.success(),
        "command succeeded but should have failed with {needle:?}\n{}",
        describe(out)
    );
    let stderr = stderr_of(out);
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "stderr lacks {needle:?}\n{}",
        describe(out)
    );
    stderr
}

/// The `sha256:...` of the `Digest: ...` line that `push` and `pull` print.
#[track_caller]
pub fn digest_of_stdout(out: &Output) -> String {
    let stdout = stdout_of(out);
    let digest = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Digest: "))
        .unwrap_or_else(|| panic!("no `Digest: ` line in the output\n{}", describe(out)))
        .trim()
        .to_string();
    assert!(
        is_sha256_digest(&digest),
        "not a sha256 digest: {digest:?}\n{}",
        describe(out)
    );
    digest
}

pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

// --- Content ----------------------------------------------------------------------------

/// A cheap deterministic PRNG (SplitMix64): good enough to make content nothing compresses
/// or dedupes by accident.
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Self {
        Prng(seed)
    }

    /// A generator seeded from a string (e.g. a unique repository name).
    pub fn from_str_seed(seed: &str) -> Self {
        // FNV-1a.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Prng(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Prng::from_str_seed(seed).fill(&mut v);
    v
}

/// Writes `size` pseudo-random bytes (from `seed`) to `path`, creating parent directories.
/// Large files are written quickly: one 1 MiB random block, with each copy stamped with its
/// index so that no two blocks are equal (a misplaced range would not go unnoticed).
pub fn write_random_file(path: &Path, seed: &str, size: u64) {
    const BLOCK: usize = 1 << 20;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("creating parent directories");
    }
    let file =
        std::fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    let mut w = BufWriter::with_capacity(4 * BLOCK, file);
    let mut block = vec![0u8; BLOCK.min(size as usize).max(1)];
    Prng::from_str_seed(seed).fill(&mut block);
    let mut written = 0u64;
    let mut index = 0u64;
    while written < size {
        let n = (size - written).min(block.len() as u64) as usize;
        let stamp = index.to_le_bytes();
        let k = stamp.len().min(n);
        block[..k].copy_from_slice(&stamp[..k]);
        w.write_all(&block[..n]).expect("writing a random file");
        written += n as u64;
        index += 1;
    }
    w.flush().expect("writing a random file");
}

/// Writes `contents` to `path`, creating parent directories.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("creating parent directories");
    }
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

pub fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of `data`.
pub fn sha256_bytes(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex(&sha2::Sha256::digest(data)))
}

/// `sha256:<hex>` of a file, read in chunks.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("reading a file to hash");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("sha256:{}", hex(&hasher.finalize()))
}

/// Every file under `root` (relative path with '/' separators -> contents), directories
/// left out; symlinks are listed with their target as content, prefixed `symlink:`.
pub fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
        for e in entries {
            let e = e.expect("listing a directory");
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/");
            let ty = e.file_type().expect("file type");
            if ty.is_symlink() {
                let target = std::fs::read_link(&path).expect("reading a symlink");
                out.insert(rel, format!("symlink:{}", target.display()).into_bytes());
            } else if ty.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(rel, read_file(&path));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Names of the entries directly in `dir`, sorted.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| {
            e.expect("listing")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

// --- Registry storage and log -----------------------------------------------------------

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

/// One request from a registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    /// Path and query, e.g. `/v2/repo/blobs/sha256:...`.
    pub uri: String,
    pub status: u16,
}

/// The requests in a registry log (combined-format access lines) whose URI contains
/// `needle` (e.g. `/v2/<repo>/`), in order.
pub fn logged_requests(log: &Path, needle: &str) -> Vec<LoggedRequest> {
    let text =
        std::fs::read_to_string(log).unwrap_or_else(|e| panic!("reading {}: {e}", log.display()));
    text.lines()
        .filter(|l| !l.starts_with('{'))
        .filter_map(|line| {
            // ... "GET /v2/x/blobs/sha256:... HTTP/1.1" 200 123 "" "agent"
            let start = line.find('"')?;
            let rest = &line[start + 1..];
            let end = rest.find('"')?;
            let mut req = rest[..end].split(' ');
            let method = req.next()?.to_string();
            let uri = req.next()?.to_string();
            let status = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
            uri.contains(needle).then_some(LoggedRequest {
                method,
                uri,
                status,
            })
        })
        .collect()
}

// --- Plain HTTP to the test registry ----------------------------------------------------

/// A response of [`http`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpResponse {
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
    assert_eq!(
        resp.status,
        200,
        "GET manifest {repo}:{reference}: {}",
        String::from_utf8_lossy(&resp.body)
    );
    let digest = resp
        .header("docker-content-digest")
        .unwrap_or_default()
        .to_string();
    (digest, resp.body)
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
    assert_eq!(
        resp.status,
        202,
        "POST upload: {}",
        String::from_utf8_lossy(&resp.body)
    );
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
    assert_eq!(
        resp.status,
        201,
        "PUT upload: {}",
        String::from_utf8_lossy(&resp.body)
    );
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
    assert_eq!(
        resp.status,
        201,
        "PUT manifest {repo}:{reference}: {}",
        String::from_utf8_lossy(&resp.body)
    );
}

// --- Extra registries ---------------------------------------------------------------------

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

// --- Python ORAS SDK ----------------------------------------------------------------------

/// Runs `tests/interop.py ARGS` with the venv Python in `dir`.
pub fn interop<I, S>(dir: &Path, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(python());
    cmd.arg(interop_script())
        .args(args)
        .current_dir(dir)
        .env("DOCKER_CONFIG", "/nonexistent/oras-fs-tests/docker-config");
    run(&mut cmd)
}
pub mod faults;

/// `oras-fs ARGS...`, which must succeed; its stdout.
#[track_caller]
pub fn ok(args: &[&str]) -> String {
    assert_ok(&oras_fs(args))
}

/// Parses JSON output, showing it when it is not JSON.
pub fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

/// `oras-fs pull REF -o OUT --no-tty ARGS...`.
pub fn pull(reference: &str, out: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&OsStr> = vec![
        OsStr::new("pull"),
        OsStr::new(reference),
        OsStr::new("-o"),
        out.as_os_str(),
        OsStr::new("--no-tty"),
    ];
    all.extend(args.iter().map(OsStr::new));
    oras_fs(all)
}

/// Pulls `reference` (with `extra` args, e.g. `--oci-layout`) into a new directory; its files.
#[track_caller]
pub fn pulled(reference: &str, extra: &[&str]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let out = temp_dir();
    assert_ok(&pull(reference, out.path(), extra));
    tree(out.path())
}

/// `oras-fs resolve ARGS...` (e.g. `REF` or `--oci-layout DIR:tag`): the digest it prints.
#[track_caller]
pub fn resolve(args: &[&str]) -> String {
    let mut all = vec!["resolve"];
    all.extend_from_slice(args);
    let digest = ok(&all).trim().to_string();
    assert!(is_sha256_digest(&digest), "resolve printed {digest:?}");
    digest
}

/// `%XX` escapes decoded (invalid ones kept as they are).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
