//! Security defaults: credentials never show in output, errors, `--debug` traces or process
//! titles; the cache, staging and control directories are private (0700, files 0600); mounts
//! are not `allow_other` unless asked; TLS is verified unless `--insecure`. Run with
//! `scripts/test.sh`.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::faults::*;
use common::*;

/// Forms a secret may leak in: as is, and inside a Basic header.
fn secret_forms(user: &str, pass: &str) -> Vec<String> {
    let header = basic(user, pass);
    vec![
        pass.to_string(),
        header.trim_start_matches("Basic ").to_string(),
    ]
}

#[track_caller]
fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} shows the secret {s:?}:\n{text}"
        );
    }
}

fn output_text(out: &Output) -> String {
    format!("{}{}", stdout_of(out), stderr_of(out))
}

/// Everything the mount wrote to its logs under the cache directory.
fn mount_logs(cache_dir: &Path) -> String {
    let mut text = String::new();
    if let Ok(rd) = std::fs::read_dir(cache_dir.join("logs")) {
        for e in rd.flatten() {
            text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    text
}

fn proc_text(pid: u32, file: &str) -> String {
    std::fs::read(format!("/proc/{pid}/{file}"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Pushes one file to `reference` with `-u user -p pass`.
fn push_with_credentials(reference: &str, user: &str, pass: &str, name: &str, data: &[u8]) {
    let tmp = temp_dir();
    write_file(&tmp.path().join(name), data);
    assert_ok(&oras_fs_in(
        tmp.path(),
        ["push", reference, name, "--no-tty", "-u", user, "-p", pass],
    ));
}

#[test]
fn credentials_never_appear_in_output_errors_or_traces() {
    require_registry!();
    let (user, pass) = ("sec-user", "sec-pass-Q8z3kW");
    let reg = ExtraRegistry::start("sec-creds", &["--htpasswd", &format!("{user}:{pass}")]);
    let mut secrets = secret_forms(user, pass);
    let repo = unique_repo("sec-creds");
    let r = reg.reference(&repo, "v1");
    let tmp = temp_dir();
    write_file(&tmp.path().join("f.txt"), format!("secret-free {repo}"));

    // --debug, and the most verbose trace there is (every crate at trace level).
    for trace in [None, Some("trace")] {
        let mut cmd = oras_fs_cmd([
            "push", &r, "f.txt", "--no-tty", "--debug", "-u", user, "-p", pass,
        ]);
        cmd.current_dir(tmp.path());
        if let Some(t) = trace {
            cmd.env("ORAS_FS_LOG", t);
        }
        let out = run(&mut cmd);
        assert_ok(&out);
        assert!(
            stderr_of(&out).contains("PUT"),
            "no HTTP trace\n{}",
            describe(&out)
        );
        assert_no_secret("push --debug", &output_text(&out), &secrets);

        let out_dir = tmp.path().join("out");
        let mut cmd = oras_fs_cmd([
            OsStr::new("pull"),
            OsStr::new(&r),
            OsStr::new("-o"),
            out_dir.as_os_str(),
            OsStr::new("--debug"),
            OsStr::new("-u"),
            OsStr::new(user),
            OsStr::new("--password-stdin"),
        ]);
        if let Some(t) = trace {
            cmd.env("ORAS_FS_LOG", t);
        }
        let out = run_with_stdin(&mut cmd, pass.as_bytes());
        assert_ok(&out);
        assert_no_secret("pull --debug", &output_text(&out), &secrets);
    }

    // A wrong password is not echoed in the error either.
    let wrong = "sec-WRONG-pass-7Hq";
    let out = oras_fs([
        OsStr::new("pull"),
        OsStr::new(&r),
        OsStr::new("-o"),
        tmp.path().join("out2").as_os_str(),
        OsStr::new("--debug"),
        OsStr::new("-u"),
        OsStr::new(user),
        OsStr::new("-p"),
        OsStr::new(wrong),
    ]);
    assert_fails(&out, "authentication");
    assert_no_secret(
        "a failed pull",
        &output_text(&out),
        &secret_forms(user, wrong),
    );

    // login stores the credentials in a file only the user can read.
    let config = tmp.path().join("docker/config.json");
    let mut cmd = oras_fs_cmd([
        OsStr::new("login"),
        OsStr::new(&reg.host),
        OsStr::new("--debug"),
        OsStr::new("-u"),
        OsStr::new(user),
        OsStr::new("--password-stdin"),
        OsStr::new("--registry-config"),
        config.as_os_str(),
    ]);
    let out = run_with_stdin(&mut cmd, pass.as_bytes());
    assert_ok(&out);
    assert_no_secret("login --debug", &output_text(&out), &secrets);
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} is {mode:o}", config.display());

    // Bearer tokens: neither the password sent to the token service nor the tokens it issued.
    let proxy = FaultProxy::start_bearer(&registry(), Some((user, pass)));
    let bearer_repo = unique_repo("sec-bearer");
    let src = temp_dir();
    write_file(&src.path().join("g.txt"), format!("bearer {bearer_repo}"));
    let mut cmd = oras_fs_cmd([
        "push",
        &proxy.reference(&bearer_repo, "v1"),
        "g.txt",
        "--no-tty",
        "--debug",
        "-u",
        user,
        "-p",
        pass,
    ]);
    cmd.current_dir(src.path()).env("ORAS_FS_LOG", "trace");
    let out = run(&mut cmd);
    assert_ok(&out);
    let tokens: Vec<String> = proxy
        .token_requests()
        .into_iter()
        .filter_map(|t| t.issued)
        .collect();
    assert!(!tokens.is_empty(), "no token was issued");
    secrets.extend(tokens);
    assert_no_secret("push through a token service", &output_text(&out), &secrets);

    // The mount process: its start messages and its log, with --debug.
    let cache = temp_dir();
    let cache_dir = cache.path().join("cache");
    {
        let m = Mount::with_cache_dir(
            &r,
            &cache_dir,
            &["--read-only", "--debug", "-u", user, "-p", pass],
        );
        assert_eq!(
            read_file(&m.join("f.txt")),
            format!("secret-free {repo}").as_bytes()
        );
        assert_no_secret("mount output", &output_text(&m.output), &secrets);
    }
    let logs = mount_logs(&cache_dir);
    assert!(!logs.is_empty(), "the mount logged nothing with --debug");
    assert_no_secret("the mount log", &logs, &secrets);
}

/// A mount started with `--password-stdin` in the background: unmounted when dropped.
struct StdinMount {
    mountpoint: PathBuf,
    _root: tempfile::TempDir,
}

impl StdinMount {
    fn start(reference: &str, user: &str, pass: &str) -> StdinMount {
        let root = temp_dir();
        let base = std::fs::canonicalize(root.path()).unwrap();
        let mountpoint = base.join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let mut cmd = oras_fs_cmd([
            OsStr::new("mount"),
            OsStr::new(reference),
            mountpoint.as_os_str(),
            OsStr::new("--read-only"),
            OsStr::new("--cache-dir"),
            base.join("cache").as_os_str(),
            OsStr::new("-u"),
            OsStr::new(user),
            OsStr::new("--password-stdin"),
        ]);
        let out = run_with_timeout(&mut cmd, format!("{pass}\n").as_bytes(), MOUNT_TIMEOUT);
        let m = StdinMount {
            mountpoint,
            _root: root,
        };
        assert_ok(&out);
        assert!(is_mounted(&m.mountpoint));
        m
    }

    fn daemon(&self) -> u32 {
        let mp = self.mountpoint.to_string_lossy().into_owned();
        find_processes(|argv| argv.len() > 2 && argv[1] == "mount" && argv.contains(&mp))
            .into_iter()
            .next()
            .expect("no mount process")
    }
}

impl Drop for StdinMount {
    fn drop(&mut self) {
        let pid = if is_mounted(&self.mountpoint) {
            Some(self.daemon())
        } else {
            None
        };
        let _ = run_bounded(
            &mut oras_fs_cmd([OsStr::new("unmount"), self.mountpoint.as_os_str()]),
            Duration::from_secs(30),
        );
        if !wait_unmounted(&self.mountpoint, Duration::from_secs(5)) {
            let _ = fusermount_lazy(&self.mountpoint);
        }
        if let Some(pid) = pid {
            for _ in 0..100 {
                if !pid_alive(pid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if pid_alive(pid) {
                kill_pid(pid, libc::SIGKILL);
            }
        }
    }
}

#[test]
fn the_mount_process_keeps_a_password_from_stdin_out_of_its_title_and_environment() {
    require_registry!();
    let (user, pass) = ("title-user", "title-pass-Zr41");
    let reg = ExtraRegistry::start("sec-title", &["--htpasswd", &format!("{user}:{pass}")]);
    let repo = unique_repo("sec-title");
    let r = reg.reference(&repo, "v1");
    push_with_credentials(&r, user, pass, "f.txt", b"title\n");
    let secrets = secret_forms(user, pass);

    let m = StdinMount::start(&r, user, pass);
    assert_eq!(read_file(&m.mountpoint.join("f.txt")), b"title\n");
    let pid = m.daemon();
    assert_no_secret(
        "the mount process's command line",
        &proc_text(pid, "cmdline"),
        &secrets,
    );
    assert_no_secret(
        "the mount process's environment",
        &proc_text(pid, "environ"),
        &secrets,
    );
}

/// `-p PASSWORD` is visible in `ps` while the command runs (the help says so); the mount's
/// background process, which lives for hours, should not keep it in its command line.
#[test]
fn the_mount_process_keeps_a_password_flag_out_of_its_title() {
    require_registry!();
    let (user, pass) = ("flag-user", "flag-pass-Lp02");
    let reg = ExtraRegistry::start("sec-flag", &["--htpasswd", &format!("{user}:{pass}")]);
    let repo = unique_repo("sec-flag");
    let r = reg.reference(&repo, "v1");
    push_with_credentials(&r, user, pass, "f.txt", b"flag\n");
    let m = Mount::new(&r, &["--read-only", "-u", user, "-p", pass]);
    assert_eq!(read_file(&m.join("f.txt")), b"flag\n");
    assert_no_secret(
        "the mount process's command line",
        &proc_text(m.daemon_pid(), "cmdline"),
        &secret_forms(user, pass),
    );
}

/// Every directory under `root` is 0700 and every file 0600; unpacked directory layers (inside
/// the private `unpacked/sha256/` directory) keep their archive modes.
fn private_tree_violations(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let mode = meta.mode() & 0o777;
            // `unpacked/sha256/<hex>` is the layer's own top directory, mode as archived.
            let inside_unpacked =
                rel.starts_with("unpacked/sha256/") && rel.matches('/').count() >= 2;
            if inside_unpacked {
                continue;
            }
            if meta.is_dir() {
                if mode != 0o700 {
                    out.push(format!("{rel}/ is {mode:o}"));
                }
                walk(root, &path, out);
            } else if meta.is_file() && mode != 0o600 {
                out.push(format!("{rel} is {mode:o}"));
            }
        }
    }
    let mut out = Vec::new();
    let mode = std::fs::metadata(root).unwrap().mode() & 0o777;
    if mode != 0o700 {
        out.push(format!("{} is {mode:o}", root.display()));
    }
    walk(root, root, &mut out);
    out
}

#[test]
fn cache_staging_and_control_directories_are_private() {
    require_registry!();
    let repo = unique_repo("sec-modes");
    let src = temp_dir();
    let small = random_bytes(&format!("{repo}-s"), 100_000);
    let large = random_bytes(&format!("{repo}-l"), 6 << 20);
    write_file(&src.path().join("small.bin"), &small);
    write_file(&src.path().join("large.bin"), &large);
    write_file(&src.path().join("dir/inner.txt"), b"inner\n");
    push_files(
        src.path(),
        &reference(&repo, "v1"),
        &["small.bin", "large.bin", "dir"],
    );

    let cache_root = temp_dir();
    let cache = cache_root.path().join("cache");
    let m = Mount::with_cache_dir(&reference(&repo, "v1"), &cache, &[]);
    assert_eq!(read_file(&m.join("small.bin")), small);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(m.join("large.bin")).unwrap();
        let mut buf = vec![0u8; 4096];
        f.read_exact_at(&mut buf, 5 << 20).unwrap();
    }
    assert_eq!(read_file(&m.join("dir/inner.txt")), b"inner\n");
    write_file(&m.join("new.txt"), b"staged\n");
    std::fs::write(m.join("small.bin"), b"changed\n").unwrap();

    // Complete and partial blobs, staged files and the journal exist now (the directory
    // layer is read through its TOC: nothing is unpacked).
    for sub in ["blobs/sha256", "partial/sha256", "staging"] {
        assert!(
            !list_dir(&cache.join(sub)).is_empty(),
            "{sub} is empty: the check would prove nothing"
        );
    }
    let violations = private_tree_violations(&cache);
    assert!(
        violations.is_empty(),
        "not private in the cache:\n{}",
        violations.join("\n")
    );

    // The control sockets' directory.
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("oras-fs-{}", unsafe { libc::getuid() }))
        })
        .join("oras-fs-mounts");
    let mode = std::fs::metadata(&runtime).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "{} is {mode:o}", runtime.display());

    // After a push the staged files become cache blobs: still private.
    m.sync_pushed(&[]);
    let violations = private_tree_violations(&cache);
    assert!(
        violations.is_empty(),
        "not private after sync:\n{}",
        violations.join("\n")
    );
}

#[test]
fn mounts_are_not_allow_other_unless_asked() {
    require_registry!();
    let repo = unique_repo("sec-allow-other");
    let src = temp_dir();
    write_file(&src.path().join("f.txt"), b"f\n");
    push_files(src.path(), &reference(&repo, "v1"), &["f.txt"]);

    let m = Mount::new(&reference(&repo, "v1"), &["--read-only"]);
    let line = mount_line(m.path()).expect("mounted");
    assert!(!line.contains("allow_other"), "{line}");
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
    drop(m);
    let m = Mount::new(&reference(&repo, "v1"), &["--read-only", "--allow-other"]);
    let line = mount_line(m.path()).expect("mounted");
    assert!(line.contains("allow_other"), "{line}");
}

/// A TLS registry of its own (from `name`) with `REPO:v1` holding `f.txt` ("tls REPO"), pushed
/// trusting the registry's CA. Returns (registry, repository, reference, the directory of
/// `f.txt`).
fn tls_registry_with_a_file(name: &str) -> (ExtraRegistry, String, String, tempfile::TempDir) {
    let reg = ExtraRegistry::start(name, &["--tls"]);
    let ca = reg.ca.clone().expect("a CA for the TLS registry");
    let repo = unique_repo(name);
    let r = reg.reference(&repo, "v1");
    let tmp = temp_dir();
    write_file(&tmp.path().join("f.txt"), format!("tls {repo}"));
    assert_ok(&push(
        tmp.path(),
        &r,
        &["f.txt", "--ca-file", ca.to_str().unwrap()],
    ));
    (reg, repo, r, tmp)
}

#[test]
fn tls_is_verified_unless_insecure() {
    require_registry!();
    let (reg, repo, r, tmp) = tls_registry_with_a_file("sec-tls");

    // A CA that did not sign the registry's certificate.
    let other = unrelated_ca(tmp.path());
    let other = other.to_str().unwrap();
    let out_dir = tmp.path().join("out");
    let stderr = assert_fails(&pull(&r, &out_dir, &["--ca-file", other]), "certificate");
    assert!(stderr.contains("--insecure"), "{stderr}");
    assert!(!out_dir.join("f.txt").exists());
    let out = oras_fs_stdin(
        [
            "login",
            reg.host.as_str(),
            "-u",
            "u",
            "--password-stdin",
            "--ca-file",
            other,
        ],
        b"p",
    );
    assert_fails(&out, "certificate");
    Mount::refused(
        &r,
        &["--read-only", "--ca-file", other],
        "certificate",
        "a mount trusted an unknown certificate",
    );
    // Plain HTTP is not a fallback.
    let out = pull(&r, &out_dir, &["--plain-http"]);
    assert_fails(&out, "Error:");
    eprintln!(
        "--plain-http to an HTTPS registry: {}",
        stderr_of(&out).trim()
    );
    assert!(!out_dir.join("f.txt").exists());

    assert_ok(&pull(&r, &out_dir, &["--insecure"]));
    assert_eq!(
        read_file(&out_dir.join("f.txt")),
        format!("tls {repo}").as_bytes()
    );
    let m = Mount::new(&r, &["--read-only", "--insecure"]);
    assert_eq!(
        read_file(&m.join("f.txt")),
        format!("tls {repo}").as_bytes()
    );
}

/// TLS errors read as one sentence, and hints name only flags the user gave: plain HTTP
/// chosen for localhost by default is not "--plain-http".
#[test]
fn tls_errors_read_well_and_hint_only_at_flags_given() {
    require_registry!();
    let (_reg, _, r, tmp) = tls_registry_with_a_file("sec-tls-hints");
    let out_dir = tmp.path().join("out");
    let other = unrelated_ca(tmp.path());
    let stderr = assert_fails(
        &pull(&r, &out_dir, &["--ca-file", other.to_str().unwrap()]),
        "certificate",
    );
    assert!(!stderr.contains("  "), "a run of spaces: {stderr:?}");

    // 127.0.0.1 without TLS flags: plain HTTP by default, which the user did not ask for.
    let stderr = assert_fails(&pull(&r, &out_dir, &[]), "HTTPS");
    eprintln!("plain HTTP by default: {}", stderr.trim());
    assert!(!stderr.contains("--plain-http"), "{stderr}");
    assert!(stderr.contains("--ca-file"), "{stderr}");

    let stderr = assert_fails(&pull(&r, &out_dir, &["--plain-http"]), "HTTPS");
    eprintln!("--plain-http: {}", stderr.trim());
    assert!(stderr.contains("drop --plain-http"), "{stderr}");
    assert!(!out_dir.join("f.txt").exists());
}
