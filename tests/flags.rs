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

#[test]
fn headers_go_with_every_request() {
    require_registry!();
    let repo = unique_repo("flags-header");
    let proxy = common::faults::FaultProxy::start(&registry());
    let src = temp_dir();
    write_file(&src.path().join("h.txt"), format!("h {repo}\n"));
    let r = proxy.reference(&repo, "v1");
    let headers = [
        "-H",
        "X-Flags-Test: one",
        "--header",
        "X-Flags-Test: two",
        "-H",
        "User-Agent: flags-agent/1",
    ];
    let mut args = vec!["push", r.as_str(), "h.txt", "--no-tty"];
    args.extend(headers);
    assert_ok(&oras_fs_in(src.path(), args));
    let mut args = vec!["resolve", r.as_str()];
    args.extend(headers);
    ok(&args);
    let seen = proxy.requests();
    assert!(seen.len() >= 3, "{seen:?}");
    for s in &seen {
        assert_eq!(s.header("x-flags-test"), Some("one, two"), "{s:?}");
        assert_eq!(s.header("user-agent"), Some("flags-agent/1"), "{s:?}");
    }
    assert_fails(
        &oras_fs(["resolve", r.as_str(), "-H", "no colon"]),
        "invalid header",
    );
    // A mount's background process gets the headers too, but not in its command line
    // (readable by every user): they may be tokens.
    let before = proxy.requests().len();
    let m = Mount::new(&r, &headers);
    assert_eq!(
        read_file(&m.join("h.txt")),
        format!("h {repo}\n").as_bytes()
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", m.daemon_pid())).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("X-Flags-Test"),
        "a header in the mount's command line"
    );
    let seen = proxy.requests();
    assert!(
        seen.len() > before,
        "the mount sent nothing through the proxy"
    );
    for s in &seen[before..] {
        assert_eq!(s.header("x-flags-test"), Some("one, two"), "{s:?}");
    }
}

#[test]
fn resolve_sends_a_name_to_an_address() {
    require_registry!();
    let repo = unique_repo("flags-resolve");
    let port = registry().rsplit_once(':').unwrap().1.to_string();
    let name = format!("flags-resolve.invalid:{port}");
    let r = format!("{name}/{repo}:v1");
    let map = format!("{name}:127.0.0.1");
    let src = temp_dir();
    write_file(&src.path().join("r.txt"), format!("r {repo}\n"));
    let digest = push_files(
        src.path(),
        &r,
        &["r.txt", "--plain-http", "--resolve", &map],
    );
    assert_eq!(
        resolve(&[&reference(&repo, "v1")]),
        digest,
        "pushed to the registry behind the name"
    );
    assert_eq!(resolve(&[&r, "--plain-http", "--resolve", &map]), digest);
    // Without it, the name does not resolve.
    assert!(!oras_fs(["resolve", &r, "--plain-http"]).status.success());
    assert_fails(
        &oras_fs(["resolve", &r, "--plain-http", "--resolve", "x:1"]),
        "host:port:address",
    );
}

#[test]
fn identity_tokens_from_flags_get_tokens_by_refresh_grant() {
    require_registry!();
    let repo = unique_repo("flags-identity-token");
    let proxy = common::faults::FaultProxy::start_bearer_refresh(&registry(), "refresh-flag-1");
    let r = proxy.reference(&repo, "v1");
    let src = temp_dir();
    write_file(&src.path().join("i.txt"), format!("i {repo}\n"));
    let digest = push_files(
        src.path(),
        &r,
        &["i.txt", "--identity-token", "refresh-flag-1"],
    );
    let out = oras_fs_stdin(
        ["resolve", r.as_str(), "--identity-token-stdin"],
        b"refresh-flag-1\n",
    );
    assert_eq!(assert_ok(&out).trim(), digest);
    let tokens = proxy.token_requests();
    assert!(!tokens.is_empty());
    for t in &tokens {
        assert!(
            t.form.contains("grant_type=refresh_token") && t.form.contains("refresh-flag-1"),
            "{t:?}"
        );
        assert!(t.authorization.is_none(), "{t:?}");
    }
    assert_fails(
        &oras_fs(["resolve", r.as_str(), "--identity-token", "wrong"]),
        "unauthorized",
    );
    // One kind of credential at a time.
    assert_fails(
        &oras_fs([
            "resolve",
            r.as_str(),
            "--identity-token",
            "t",
            "-u",
            "someone",
        ]),
        "cannot be used with",
    );

    // login stores it as docker does: an `identitytoken` entry.
    let config = src.path().join("config.json");
    let cfg = path_str(&config);
    ok(&[
        "login",
        &proxy.addr,
        "--identity-token",
        "refresh-flag-1",
        "--registry-config",
        cfg,
    ]);
    let stored = json(&read_file(&config));
    assert_eq!(
        stored["auths"][&proxy.addr]["identitytoken"], "refresh-flag-1",
        "{stored}"
    );
    assert_eq!(
        ok(&["resolve", r.as_str(), "--registry-config", cfg]).trim(),
        digest
    );
}

/// Runs `oras-fs ARGS` on a pseudo-terminal, answering each `(prompt, answer)` once the prompt
/// shows (so what the terminal echoes is what the program let it echo); what it showed.
fn converse(args: &[&str], dialogue: &[(&str, &str)]) -> String {
    const DRIVER: &str = r#"
import os, pty, sys, json, time
args, dialogue = json.loads(sys.argv[1]), json.loads(sys.argv[2])
pid, fd = pty.fork()
if pid == 0:
    os.execv(args[0], args)
seen = b""
def read_until(needle, deadline):
    global seen
    while needle.encode() not in seen and time.time() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return
        if not chunk:
            return
        seen += chunk
for prompt, answer in dialogue:
    read_until(prompt, time.time() + 30)
    time.sleep(0.3)  # as a person would: after the prompt, echo is off by then
    os.write(fd, (answer + "\n").encode())
read_until("EOF-never", time.time() + 30)
os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
"#;
    let mut argv = vec![bin()];
    argv.extend(args);
    let dialogue: Vec<[&str; 2]> = dialogue.iter().map(|(p, a)| [*p, *a]).collect();
    let out = run(std::process::Command::new("python3")
        .args([
            "-c",
            DRIVER,
            &serde_json::to_string(&argv).unwrap(),
            &serde_json::to_string(&dialogue).unwrap(),
        ])
        .env("DOCKER_CONFIG", "/nonexistent/oras-fs-tests/docker-config"));
    assert_ok(&out)
}

#[test]
fn login_asks_on_a_terminal() {
    require_registry!();
    let reg = ExtraRegistry::start("flags-login", &["--htpasswd", "tty-user:tty-pass"]);
    let dir = temp_dir();
    let config = dir.path().join("config.json");
    let shown = converse(
        &["login", &reg.host, "--registry-config", path_str(&config)],
        &[("Username: ", "tty-user"), ("Password: ", "tty-pass")],
    );
    assert!(shown.contains("Username: tty-user"), "{shown}");
    assert!(shown.contains("Password: "), "{shown}");
    assert!(
        !shown.contains("tty-pass"),
        "the password was echoed: {shown}"
    );
    assert!(shown.contains("Login Succeeded"), "{shown}");
    let stored = json(&read_file(&config));
    assert!(stored["auths"][&reg.host]["auth"].is_string(), "{stored}");
    // A wrong password is refused, and nothing is stored.
    let other = dir.path().join("other.json");
    let shown = converse(
        &["login", &reg.host, "--registry-config", path_str(&other)],
        &[("Username: ", "tty-user"), ("Password: ", "wrong")],
    );
    assert!(!shown.contains("Login Succeeded"), "{shown}");
    assert!(!other.exists());
    // `-u USER` alone asks for the password only.
    let third = dir.path().join("third.json");
    let shown = converse(
        &[
            "login",
            &reg.host,
            "-u",
            "tty-user",
            "--registry-config",
            path_str(&third),
        ],
        &[("Password: ", "tty-pass")],
    );
    assert!(!shown.contains("Username: "), "{shown}");
    assert!(
        !shown.contains("tty-pass"),
        "the password was echoed: {shown}"
    );
    assert!(shown.contains("Login Succeeded"), "{shown}");
    // Without a terminal there is nobody to ask.
    assert_fails(
        &oras_fs(["login", &reg.host, "--registry-config", path_str(&config)]),
        "not a terminal",
    );
}

#[test]
fn client_certificates_for_registries_that_require_them() {
    require_registry!();
    let reg = ExtraRegistry::start("flags-mtls", &["--mtls"]);
    let ca = reg.ca.clone().expect("a CA");
    let ca = path_str(&ca);
    let cert = &reg.vars["ORAS_FS_TEST_REGISTRY_CLIENT_CERT"];
    let key = &reg.vars["ORAS_FS_TEST_REGISTRY_CLIENT_KEY"];
    let repo = unique_repo("flags-mtls");
    let r = reg.reference(&repo, "v1");
    let src = temp_dir();
    write_file(&src.path().join("m.txt"), format!("m {repo}\n"));
    let tls = ["--ca-file", ca, "--cert-file", cert, "--key-file", key];
    let mut args = vec!["m.txt"];
    args.extend(tls);
    let digest = push_files(src.path(), &r, &args);
    let mut args = vec![r.as_str()];
    args.extend(tls);
    assert_eq!(resolve(&args), digest);
    let out = temp_dir();
    assert_ok(&pull(&r, out.path(), &tls));
    assert_eq!(
        read_file(&out.path().join("m.txt")),
        format!("m {repo}\n").as_bytes()
    );

    // Without one, the error says what is missing (and is not retried for long).
    let err = assert_fails(
        &oras_fs(["resolve", r.as_str(), "--ca-file", ca]),
        "--cert-file",
    );
    assert!(err.contains("client certificate"), "{err}");
    // The two go together, and a key that is not one is named.
    assert_fails(
        &oras_fs(["resolve", r.as_str(), "--ca-file", ca, "--cert-file", cert]),
        "--key-file",
    );
    assert_fails(
        &oras_fs([
            "resolve",
            r.as_str(),
            "--ca-file",
            ca,
            "--cert-file",
            cert,
            "--key-file",
            ca,
        ]),
        "private key",
    );
}

#[test]
fn listing_flags_last_exclude_digest_tags_full_reference_and_depth() {
    require_registry!();
    let repo = unique_repo("flags-listing");
    let tmp = temp_dir();
    write_file(&tmp.path().join("a.txt"), format!("a {repo}\n"));
    write_file(&tmp.path().join("sig.txt"), format!("sig {repo}\n"));
    write_file(&tmp.path().join("sbom.txt"), format!("sbom {repo}\n"));
    let subject = push_files(tmp.path(), &reference(&repo, "t1,t2,t3"), &["a.txt"]);
    let base = format!("{}/{repo}", registry());
    let sig = attach(
        tmp.path(),
        "application/vnd.test.sig",
        &reference(&repo, "t1"),
        &["sig.txt"],
    );
    let sbom = attach(
        tmp.path(),
        "application/vnd.test.sbom",
        &format!("{base}@{sig}"),
        &["sbom.txt"],
    );
    let subject_tag = referrers_tag(&subject);

    // Sorted: Distribution 2.8 lists tags in no particular order.
    let lines = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ok(args).lines().map(str::to_string).collect();
        v.sort();
        v
    };
    let all = lines(&["repo", "tags", &base]);
    assert!(all.contains(&subject_tag), "{all:?}");
    assert_eq!(
        lines(&["repo", "tags", &base, "--exclude-digest-tags"]),
        ["t1", "t2", "t3"]
    );
    assert_eq!(
        lines(&[
            "repo",
            "tags",
            &base,
            "--last",
            "t1",
            "--exclude-digest-tags"
        ]),
        ["t2", "t3"]
    );
    assert_eq!(
        lines(&["repo", "show-tags", &base, "--last", "t3"]),
        Vec::<String>::new()
    );

    assert_eq!(
        ok(&["resolve", "-l", &reference(&repo, "t2")]).trim(),
        format!("{base}@{subject}")
    );
    assert_eq!(
        ok(&["resolve", "--full-reference", &format!("{base}@{sig}")]).trim(),
        format!("{base}@{sig}")
    );

    let tree = ok(&["discover", &reference(&repo, "t1")]);
    assert!(tree.contains(&sig) && tree.contains(&sbom), "{tree}");
    let tree = ok(&["discover", "--depth", "1", &reference(&repo, "t1")]);
    assert!(tree.contains(&sig) && !tree.contains(&sbom), "{tree}");
    let deep = ok(&["discover", "--format", "json", &reference(&repo, "t1")]);
    assert!(deep.contains(&sig) && deep.contains(&sbom), "{deep}");
    let one = ok(&[
        "discover",
        "--format",
        "json",
        "--depth",
        "1",
        &reference(&repo, "t1"),
    ]);
    assert!(one.contains(&sig) && !one.contains(&sbom), "{one}");
}

#[test]
fn copy_takes_credentials_for_each_side() {
    require_registry!();
    let src_reg = ExtraRegistry::start("flags-copy-src", &["--htpasswd", "src-user:src-pass"]);
    let dst_reg = ExtraRegistry::start("flags-copy-dst", &["--htpasswd", "dst-user:dst-pass"]);
    let repo = unique_repo("flags-copy");
    let from = src_reg.reference(&repo, "v1");
    let to = dst_reg.reference(&repo, "v1");
    let src = temp_dir();
    write_file(&src.path().join("c.txt"), format!("c {repo}\n"));
    let digest = push_files(
        src.path(),
        &from,
        &["c.txt", "-u", "src-user", "-p", "src-pass"],
    );

    // One set of credentials cannot serve both registries.
    assert_fails(
        &oras_fs([
            "copy", &from, &to, "-u", "src-user", "-p", "src-pass", "--no-tty",
        ]),
        "authentication",
    );
    let out = oras_fs_stdin(
        [
            "copy",
            &from,
            &to,
            "--from-username",
            "src-user",
            "--from-password-stdin",
            "--to-username",
            "dst-user",
            "--to-password",
            "dst-pass",
            "--no-tty",
        ],
        b"src-pass\n",
    );
    assert_ok(&out);
    assert_eq!(resolve(&[&to, "-u", "dst-user", "-p", "dst-pass"]), digest);
    // Shared flags serve the side without its own.
    let to2 = dst_reg.reference(&repo, "v2");
    ok(&[
        "cp",
        &from,
        &to2,
        "-u",
        "src-user",
        "-p",
        "src-pass",
        "--to-username",
        "dst-user",
        "--to-password",
        "dst-pass",
        "--no-tty",
    ]);
    assert_eq!(resolve(&[&to2, "-u", "dst-user", "-p", "dst-pass"]), digest);
    // Stdin can be read once only.
    assert_fails(
        &oras_fs_stdin(
            [
                "copy",
                &from,
                &to,
                "--from-username",
                "src-user",
                "--from-password-stdin",
                "--to-username",
                "dst-user",
                "--to-password-stdin",
            ],
            b"x\n",
        ),
        "only one flag may read stdin",
    );
}

#[test]
fn push_image_spec_v1_0_and_pull_include_subject() {
    require_registry!();
    let repo = unique_repo("flags-image-spec");
    let tmp = temp_dir();
    write_file(&tmp.path().join("app.txt"), format!("app {repo}\n"));
    write_file(&tmp.path().join("sig.txt"), format!("sig {repo}\n"));
    let base = format!("{}/{repo}", registry());

    // v1.0: no artifactType; the type is the config's media type, the config `{}`.
    push_files(
        tmp.path(),
        &reference(&repo, "old"),
        &[
            "app.txt",
            "--image-spec",
            "v1.0",
            "--artifact-type",
            "application/vnd.test.old",
        ],
    );
    let m = json(ok(&["manifest", "fetch", &reference(&repo, "old")]).as_bytes());
    assert!(m.get("artifactType").is_none(), "{m}");
    assert_eq!(m["config"]["mediaType"], "application/vnd.test.old", "{m}");
    assert_eq!(m["config"]["size"], 2, "{m}");
    push_files(
        tmp.path(),
        &reference(&repo, "plain"),
        &["app.txt", "--image-spec", "v1.0"],
    );
    let m = json(ok(&["manifest", "fetch", &reference(&repo, "plain")]).as_bytes());
    assert_eq!(
        m["config"]["mediaType"], "application/vnd.unknown.config.v1+json",
        "{m}"
    );
    assert_eq!(
        pulled_tree(&reference(&repo, "plain"))["app.txt"],
        format!("app {repo}\n").as_bytes()
    );
    assert_fails(
        &oras_fs_in(
            tmp.path(),
            [
                "push",
                &reference(&repo, "bad"),
                "app.txt",
                "--image-spec",
                "v1.0",
                "--artifact-type",
                "a/b",
                "--config",
                "sig.txt:c/d",
            ],
        ),
        "--config FILE:TYPE",
    );
    // The default is v1.1.
    push_files(tmp.path(), &reference(&repo, "v1"), &["app.txt"]);
    let m = json(ok(&["manifest", "fetch", &reference(&repo, "v1")]).as_bytes());
    assert_eq!(
        m["artifactType"], "application/vnd.unknown.artifact.v1",
        "{m}"
    );

    // --include-subject: the signature and what it signs.
    let sig = attach(
        tmp.path(),
        "application/vnd.test.sig",
        &reference(&repo, "v1"),
        &["sig.txt"],
    );
    let at_sig = format!("{base}@{sig}");
    let only = pulled_tree(&at_sig);
    assert_eq!(only.keys().collect::<Vec<_>>(), ["sig.txt"]);
    let both = pulled(&at_sig, &["--include-subject"]);
    assert_eq!(both.keys().collect::<Vec<_>>(), ["app.txt", "sig.txt"]);
}

#[test]
fn distribution_spec_forces_the_referrers_api_or_the_tag_schema() {
    require_registry!();
    let repo = unique_repo("flags-dist-spec");
    let tmp = temp_dir();
    write_file(&tmp.path().join("s.txt"), format!("s {repo}\n"));
    write_file(&tmp.path().join("r.txt"), format!("r {repo}\n"));
    write_file(&tmp.path().join("q.txt"), format!("q {repo}\n"));
    let subject = push_files(tmp.path(), &reference(&repo, "v1"), &["s.txt"]);
    let base = format!("{}/{repo}", registry());
    let subject_tag = referrers_tag(&subject);
    let tags = || ok(&["repo", "tags", &base]);

    // Forcing the API on a registry without it: attach writes no tag-schema index ...
    let out = oras_fs_in(
        tmp.path(),
        [
            "attach",
            "--artifact-type",
            "application/vnd.test.api",
            &reference(&repo, "v1"),
            "r.txt",
            "--distribution-spec",
            "v1.1-referrers-api",
        ],
    );
    assert_ok(&out);
    assert!(!tags().contains(&subject_tag), "{}", tags());
    // ... and discover says the API is missing instead of falling back.
    assert_fails(
        &oras_fs([
            "discover",
            &reference(&repo, "v1"),
            "--distribution-spec",
            "v1.1-referrers-api",
        ]),
        "no referrers API",
    );

    // Forcing the tag schema: the API is never asked (behind a proxy that would answer it).
    let referrer = attach(
        tmp.path(),
        "application/vnd.test.tag",
        &reference(&repo, "v1"),
        &["q.txt"],
    );
    assert!(tags().contains(&subject_tag));
    let proxy = common::faults::FaultProxy::start(&registry());
    let via = proxy.reference(&repo, "v1");
    let tree = ok(&[
        "discover",
        &via,
        "--distribution-spec",
        "v1.1-referrers-tag",
    ]);
    assert!(tree.contains(&referrer), "{tree}");
    assert!(
        proxy.matching("GET", "/referrers/").is_empty(),
        "{:?}",
        proxy.requests()
    );
    ok(&["discover", &via]);
    assert!(
        !proxy.matching("GET", "/referrers/").is_empty(),
        "by default the API is asked"
    );
    assert_fails(
        &oras_fs(["discover", &via, "--distribution-spec", "v1.2"]),
        "v1.1-referrers-tag",
    );

    // copy -r: per side, as oras's --to-distribution-spec.
    let dst = unique_repo("flags-dist-spec-dst");
    let dst_base = format!("{}/{dst}", registry());
    ok(&[
        "copy",
        "-r",
        &reference(&repo, "v1"),
        &reference(&dst, "v1"),
        "--no-tty",
        "--to-distribution-spec",
        "v1.1-referrers-api",
    ]);
    assert!(!ok(&["repo", "tags", &dst_base]).contains(&subject_tag));
    ok(&[
        "copy",
        "-r",
        &reference(&repo, "v1"),
        &reference(&dst, "v1"),
        "--no-tty",
    ]);
    assert!(ok(&["repo", "tags", &dst_base]).contains(&subject_tag));
}
