//! The test environment `scripts/test.sh` sets up (the registry's address, storage and log;
//! the scripts directory), the [`require_registry!`] skip for a plain `cargo test`, and names
//! no other test uses.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

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
