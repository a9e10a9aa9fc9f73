//! `oras-fs` subcommands as the tests run them (push, pull, resolve) and what they print.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;

use super::*;

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

/// `oras-fs push REF ARGS... --no-tty` run in `dir`, ARGS being the files (titles are the
/// paths as given) and any flags; its output, success or not.
pub fn push(dir: &Path, reference: &str, args: &[&str]) -> Output {
    let mut all = vec!["push", reference];
    all.extend_from_slice(args);
    all.push("--no-tty");
    oras_fs_in(dir, all)
}

/// [`push`], which must succeed; returns the manifest digest.
#[track_caller]
pub fn push_files(dir: &Path, reference: &str, args: &[&str]) -> String {
    let out = push(dir, reference, args);
    assert_ok(&out);
    digest_of_stdout(&out)
}

/// Writes `files` (name, bytes) to a temporary directory and pushes them to `reference` with
/// [`push_files`]; returns the manifest digest.
#[track_caller]
pub fn push_contents(reference: &str, files: &[(&str, &[u8])]) -> String {
    let src = temp_dir();
    for (name, data) in files {
        write_file(&src.path().join(name), data);
    }
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    push_files(src.path(), reference, &names)
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

/// `oras-fs pull REF -o OUT --no-tty ARGS...`; panics unless it succeeds.
#[track_caller]
pub fn pull_to(reference: &str, out: &Path, args: &[&str]) {
    assert_ok(&pull(reference, out, args));
}

/// Pulls `reference` (with `extra` args, e.g. `--oci-layout`) into a new directory; its files.
#[track_caller]
pub fn pulled(reference: &str, extra: &[&str]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let out = temp_dir();
    assert_ok(&pull(reference, out.path(), extra));
    tree(out.path())
}

/// Pulls `reference` with `oras-fs` into a new temporary directory and returns its files.
#[track_caller]
pub fn pulled_tree(reference: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    pulled(reference, &[])
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

/// `oras-fs repo tags ARGS...` (e.g. `HOST/REPO` or `--oci-layout DIR`): the tags, as a set.
#[track_caller]
pub fn tags(args: &[&str]) -> std::collections::BTreeSet<String> {
    let mut all = vec!["repo", "tags"];
    all.extend_from_slice(args);
    ok(&all).lines().map(str::to_string).collect()
}

/// `oras-fs attach --artifact-type TYPE SUBJECT ARGS...` run in `dir`, ARGS being the files
/// and any flags; must succeed. Returns the referrer's digest.
#[track_caller]
pub fn attach(dir: &Path, artifact_type: &str, subject: &str, args: &[&str]) -> String {
    let mut all = vec!["attach", "--artifact-type", artifact_type, subject];
    all.extend_from_slice(args);
    let out = oras_fs_in(dir, all);
    assert_ok(&out);
    digest_of_stdout(&out)
}

/// The direct referrers listed by `oras-fs discover --format json ARGS...`.
#[track_caller]
pub fn discovered(args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["discover", "--format", "json"];
    all.extend_from_slice(args);
    let v = json(ok(&all).as_bytes());
    v["referrers"]
        .as_array()
        .unwrap_or_else(|| panic!("no referrers array: {v}"))
        .clone()
}

/// The `digest`s of descriptors (e.g. what [`discovered`] returns).
pub fn digests_of(descs: &[serde_json::Value]) -> std::collections::BTreeSet<String> {
    descs
        .iter()
        .map(|d| d["digest"].as_str().expect("digest").to_string())
        .collect()
}

/// The tag under which a registry without the referrers API keeps a subject's referrers (the
/// tag schema): `sha256-<hex>` for `sha256:<hex>`.
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// `oras-fs backup -o OUT ARGS... --no-tty` (OUT a layout directory or a `.tar`), which must
/// succeed; its stdout.
#[track_caller]
pub fn backup_to(out: &Path, args: &[&str]) -> String {
    let mut all = vec!["backup", "-o", path_str(out)];
    all.extend_from_slice(args);
    all.push("--no-tty");
    ok(&all)
}
