//! oras 1.3 flags that users reach for: confirmation of deletes (`-f/--force`), custom headers
//! (`-H`), `--resolve`, client certificates, identity tokens, listing flags (`--last`,
//! `--exclude-digest-tags`, `--full-reference`, `--depth`), separate `copy` credentials
//! (`--from-*`/`--to-*`), and the distribution-spec and image-spec switches. Run with
//! `scripts/test.sh`.
//!
//! Every command runs against the real test registry (CNCF Distribution 2.8); each test uses
//! repositories of its own.

mod common;

use common::*;

#[test]
fn delete_without_a_terminal_needs_force() {
    require_registry!();
    let repo = unique_repo("flags-delete");
    let digest = push_contents(
        &reference(&repo, "v1"),
        &[("a.txt", format!("a {repo}\n").as_bytes())],
    );
    let at_digest = format!("{}/{repo}@{digest}", registry());

    // No terminal: refused, nothing deleted.
    let err = assert_fails(&oras_fs(["manifest", "delete", &at_digest]), "--force");
    assert!(err.contains("terminal"), "{err}");
    assert_eq!(resolve(&[&reference(&repo, "v1")]), digest);

    // A blob: the same.
    let manifest = json(ok(&["manifest", "fetch", &at_digest]).as_bytes());
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = format!("{}/{repo}@{layer}", registry());
    assert_fails(&oras_fs(["blob", "delete", &blob]), "--force");
    ok(&["blob", "fetch", &blob, "-o", "-"]);

    // --force deletes; a second --force finds nothing and says so, without failing.
    let out = ok(&["blob", "delete", "--force", &blob]);
    assert!(out.contains(&format!("Deleted {layer}")), "{out}");
    let out = ok(&["blob", "delete", "-f", &blob]);
    assert_eq!(out.trim(), format!("Missing {blob}"));
    let out = ok(&["manifest", "rm", "-f", &at_digest]);
    assert!(out.contains(&format!("Deleted {digest}")), "{out}");
    assert_fails(&oras_fs(["resolve", &reference(&repo, "v1")]), "not found");
    let out = ok(&["manifest", "delete", "-f", &at_digest]);
    assert_eq!(out.trim(), format!("Missing {at_digest}"));
    // Without --force, a missing manifest is still an error (before any question).
    assert_fails(&oras_fs(["manifest", "delete", &at_digest]), "not found");
}

/// `oras-fs ARGS` on a pseudo-terminal (util-linux `script`), fed `input`; its output (the
/// prompt and stdout together, as a terminal shows them). `None` where `script` is missing.
fn on_terminal(args: &[&str], input: &[u8]) -> Option<String> {
    let which = std::process::Command::new("script")
        .arg("--version")
        .output();
    if !which.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: util-linux `script` is not installed");
        return None;
    }
    let mut line = shell_quote(bin());
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a));
    }
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env("DOCKER_CONFIG", "/nonexistent/oras-fs-tests/docker-config");
    let out = run_with_stdin(&mut cmd, input);
    Some(format!("{}{}", stdout_of(&out), stderr_of(&out)))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn delete_on_a_terminal_asks_first() {
    require_registry!();
    let repo = unique_repo("flags-delete-tty");
    let digest = push_contents(
        &reference(&repo, "v1"),
        &[("a.txt", format!("a {repo}\n").as_bytes())],
    );
    let tagged = reference(&repo, "v1");
    let Some(shown) = on_terminal(&["manifest", "delete", &tagged], b"n\n") else {
        return;
    };
    assert!(
        shown.contains(&format!(
            "Are you sure you want to delete the manifest \"{digest}\" and all tags associated with it? [y/N]"
        )),
        "{shown}"
    );
    assert!(!shown.contains("Deleted"), "{shown}");
    assert_eq!(resolve(&[&tagged]), digest);

    let shown = on_terminal(&["manifest", "delete", &tagged], b"y\n").unwrap();
    assert!(shown.contains(&format!("Deleted {digest}")), "{shown}");
    assert_fails(&oras_fs(["resolve", &tagged]), "not found");
}
