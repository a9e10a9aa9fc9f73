//! Build-time facts for `oras-fs version`: the compiler's version and the git commit.
//! Both fall back to "unknown" (a build from a source archive has no git).

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    // "rustc 1.95.0 (hash date)" -> "1.95.0"
    let rustc_version = run(&rustc, &["--version"])
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ORAS_FS_RUSTC_VERSION={rustc_version}");

    println!("cargo:rerun-if-env-changed=ORAS_FS_GIT_COMMIT");
    let commit = std::env::var("ORAS_FS_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| run("git", &["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ORAS_FS_GIT_COMMIT={commit}");
    // Rebuild when the commit moves, and only then: watching the index would rebuild on
    // every `git add`.
    for path in ["HEAD", "packed-refs"] {
        watch_git_path(path);
    }
    if let Some(head_ref) = run("git", &["symbolic-ref", "-q", "HEAD"]) {
        watch_git_path(&head_ref);
    }
}

fn watch_git_path(path: &str) {
    if let Some(p) = run("git", &["rev-parse", "--git-path", path]) {
        if std::path::Path::new(&p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}

/// The trimmed stdout of a command that succeeded.
fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}
