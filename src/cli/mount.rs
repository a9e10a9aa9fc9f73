//! `mount`, `unmount`, `sync` and `status`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use oras_fs::fs::cache::CacheOptions;
use oras_fs::fs::control::{self, ControlRequest, ControlResponse, PushToResolver};
use oras_fs::fs::filesystem::{MountOptions, OrasFs, Writer};
use oras_fs::fs::fusermount;
use oras_fs::fs::mount::{self, MountConfig, MountEvent};
use oras_fs::fs::paths;
use oras_fs::fs::repository::{RegistryBrowse, Router, Scope};
use oras_fs::fs::staging::Staging;
use oras_fs::oras::LayerFilter;
use oras_fs::registry::mirrors::RegistriesConf;
use oras_fs::registry::Repository;
use oras_fs::{Error, Result};

use super::output::FormatArgs;
use super::target::TargetArgs;

/// Set in the environment of the background child of `mount`.
const DAEMON_ENV: &str = "ORAS_FS_DAEMON_CHILD";
/// The line the child prints on stderr once the mount is usable.
const READY: &str = "oras-fs: ready";

#[derive(Args, Debug)]
pub struct MountArgs {
    /// What to mount: registry/repository[:tag|@digest]; registry/repository alone mounts the
    /// whole repository (one directory per tag), and a registry alone every repository of its
    /// catalog. Both are read-only and refresh their listings (see --refresh).
    pub reference: String,
    /// An empty directory to mount on.
    pub mountpoint: PathBuf,
    /// Stay in the foreground, logging to stderr; tells systemd when mounted (READY=1 on
    /// NOTIFY_SOCKET) for `Type=notify` services.
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Show layers of this media type (repeatable); default as `pull`.
    #[arg(short = 't', long = "media-type")]
    pub media_types: Vec<String>,
    /// Show every layer that has a title.
    #[arg(short = 'a', long)]
    pub allow_all: bool,
    /// Refuse writes (mounts of a tag are writable otherwise; of a digest, always read-only).
    #[arg(long)]
    pub read_only: bool,
    /// Media type of files written in the mount.
    #[arg(long, value_name = "TYPE", default_value = oras_fs::manifest::media_type::DEFAULT_LAYER)]
    pub write_media_type: String,
    /// Cache directory, shared by mounts (default: ~/.cache/oras-fs).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Bound of the disk cache (e.g. 10G, 512M).
    #[arg(long, value_name = "SIZE", default_value = DEFAULT_CACHE_SIZE, value_parser = parse_size)]
    pub cache_size: u64,
    /// Bound of the in-memory block cache.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub memory_cache: u64,
    /// Let other users see the mount (needs user_allow_other in /etc/fuse.conf for non-root).
    #[arg(long)]
    pub allow_other: bool,
    /// A container image: show its layers side by side (`0/`, `1/`, ...) instead of merged.
    #[arg(long)]
    pub layers: bool,
    /// Of an image index, mount the manifest for this platform: os/arch[/variant][:os_version]
    /// (default: every manifest, one read-only directory each: linux_amd64/, linux_arm64_v8/, or
    /// sha256-<hex>/ for one without a platform).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<oras_fs::manifest::Platform>,
    /// Follow the tag: resolve it again every --refresh, and when it moved show the new
    /// manifest's files (open files keep reading the old ones). Needs --read-only.
    #[arg(long)]
    pub follow: bool,
    /// How often a repository or registry mount lists its tags (and catalog) again, and a
    /// --follow mount resolves its tag (e.g. 60s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub refresh: Duration,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// The default bound of the blob cache, for mounts and pulls alike.
pub const DEFAULT_CACHE_SIZE: &str = "10G";
fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 30s, 5m)"))?;
    if d.is_zero() {
        return Err("the interval must be longer than zero".into());
    }
    Ok(d)
}

/// What a mount without a tag or digest shows.
#[derive(Clone, Copy)]
enum Whole {
    Registry,
    Repository,
}

fn whole(args: &MountArgs) -> Option<Whole> {
    // A layout names its tag or digest alone (`v1.0`, `sha256:<hex>`): never a registry.
    if args.target.oci_layout || args.target.oci_layout_path.is_some() {
        return None;
    }
    let r = args.reference.as_str();
    if !r.contains('/') {
        // A host, as docker tells one from a name: `localhost`, or with a dot or a port.
        let host = r == "localhost" || r.contains('.') || r.contains(':');
        return host.then_some(Whole::Registry);
    }
    let last = &r[r.rfind('/').map_or(0, |i| i + 1)..];
    (!last.contains(':') && !r.contains('@')).then_some(Whole::Repository)
}

/// Mounts a whole repository or registry, read-only (see `oras_fs::fs::repository`).
async fn mount_many(args: MountArgs, whole: Whole) -> Result<()> {
    if args.follow {
        return Err(Error::Usage(
            "--follow is for a mount of one tag: a repository or registry mount follows its \
             tags by itself (every --refresh)"
                .into(),
        ));
    }
    if args.platform.is_some() {
        return Err(Error::Usage(
            "--platform is for a mount of one image index: mount REPOSITORY:TAG".into(),
        ));
    }
    let remote = &args.target.remote;
    // Repositories open as every command opens them: with registries.conf's mirrors and
    // blocks (a blocked one fails when it is listed or looked into).
    let conf = RegistriesConf::load(remote.registries_conf.as_deref())?;
    let (host, scope) = match whole {
        Whole::Registry => (args.reference.clone(), Scope::Registry),
        Whole::Repository => {
            let r: oras_fs::reference::Reference = args.reference.parse()?;
            let options = remote.client_options(r.is_localhost())?;
            // Refused here, not at each tag, if registries.conf blocks it.
            drop(Repository::open(&r, options, conf.as_ref())?);
            (r.registry, Scope::Repository(r.repository))
        }
    };
    let probe: oras_fs::reference::Reference = format!("{host}/x").parse()?;
    let options = remote.client_options(probe.is_localhost())?;
    let client = oras_fs::registry::Client::new(&host, options.clone())?;
    let router = Arc::new(Router::default());
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(paths::default_cache_dir);
    let cache = mount::open_cache(cache_options(&args, &cache_dir), router.clone())?;
    let fs = OrasFs::browsing(
        cache,
        router,
        Arc::new(RegistryBrowse::new(client, options, conf)),
        scope,
        mount_options(&args, true),
        args.refresh,
    )
    .await?;
    let mounted = format!(
        "Mounted {} on {} read-only",
        args.reference,
        args.mountpoint.display()
    );
    serve(Arc::new(fs), &args, mounted, cache_dir).await
}

fn cache_options(args: &MountArgs, cache_dir: &std::path::Path) -> CacheOptions {
    CacheOptions {
        dir: cache_dir.to_path_buf(),
        disk_limit: args.cache_size,
        memory_limit: args.memory_cache,
    }
}

fn mount_options(args: &MountArgs, read_only: bool) -> MountOptions {
    MountOptions {
        filter: LayerFilter {
            media_types: args.media_types.clone(),
            allow_all: args.allow_all,
        },
        read_only,
        layers_apart: args.layers,
    }
}

/// Serves a mount until it ends, saying what happens on the way.
async fn serve(
    fs: Arc<OrasFs>,
    args: &MountArgs,
    mounted: String,
    cache_dir: PathBuf,
) -> Result<()> {
    let at = args.target.clone();
    let push_to: PushToResolver = Box::new(move |r: &str| {
        let o = at.open(r, true)?;
        Ok((o.target.clone(), o.reference()))
    });
    let config = MountConfig {
        mountpoint: args.mountpoint.clone(),
        allow_other: args.allow_other,
    };
    for notice in fs.notices() {
        eprintln!("Note: {notice}");
    }
    tune_allocator();
    mount::serve(fs, config, push_to, move |event| {
        show(event, &mounted, &cache_dir)
    })
    .await
}

/// `10G`, `512M`, `64k` or plain bytes (binary multiples).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_lowercase();
            let mult: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1 << 40,
                _ => return Err(format!("unknown size unit in {s:?} (use K, M, G or T)")),
            };
            (&s[..i], mult)
        }
        None => (s, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size"))?;
    Ok((n * mult as f64) as u64)
}

pub async fn mount(args: MountArgs) -> Result<()> {
    if !args.foreground && std::env::var_os(DAEMON_ENV).is_none() {
        return spawn_background();
    }
    // Fail before any network traffic if the control directory is not safe to use.
    paths::private_runtime_dir(true)?;
    clear_dead_mount(&args.mountpoint)?;
    control::wait_for_previous(&args.mountpoint)?;
    if let Some(w) = whole(&args) {
        return mount_many(args, w).await;
    }
    let opened = args.target.open(&args.reference, false)?;
    if args.follow && opened.digest.is_some() {
        return Err(Error::Usage(format!(
            "--follow follows a tag, and {} names a digest, which never moves",
            args.reference
        )));
    }
    if args.follow && !args.read_only {
        return Err(Error::Usage(
            "--follow needs --read-only: a writable mount pushes its changes to the tag, and \
             following the tag could replace them unseen"
                .into(),
        ));
    }
    let target = opened.target.clone();
    // A layout .tar cannot be written (see content::layout_tar): mount it read-only too.
    let archive = opened.layout.as_ref().is_some_and(|l| l.is_archive());
    let writable = !args.read_only && opened.digest.is_none() && !archive;
    if !args.read_only && !writable {
        let why = match archive {
            true => "is an OCI layout archive, which is read-only",
            false => "names a digest, which cannot change",
        };
        eprintln!("Note: {} {why}: mounted read-only", args.reference);
    }
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(paths::default_cache_dir);
    let cache = mount::open_cache(cache_options(&args, &cache_dir), target.clone())?;
    let canonical = opened.canonical();
    let (writer, journal) = if writable {
        let staging = Staging::open(&cache_dir, &canonical)?;
        let journal = staging.load()?;
        staging.collect_garbage(journal.as_ref());
        let writer = Writer {
            target: target.clone(),
            tag: opened.reference(),
            staging,
            media_type: args.write_media_type.clone(),
        };
        (Some(writer), journal)
    } else {
        (None, None)
    };
    let snapshot = match &journal {
        Some(j) => {
            eprintln!(
                "Found changes not yet pushed from an earlier mount of {} (made on {}); they are kept, \
                 and `oras-fs sync {}` or unmounting pushes them",
                args.reference,
                j.base,
                args.mountpoint.display()
            );
            mount::snapshot(target.as_ref(), &args.reference, j.base.as_str(), None).await?
        }
        None => {
            let platform = args.platform.as_ref();
            mount::snapshot(
                target.as_ref(),
                &args.reference,
                &opened.reference(),
                platform,
            )
            .await?
        }
    };
    let options = mount_options(&args, !writable);
    let digest = snapshot.descriptor.digest.clone();
    let mut fs = OrasFs::new(cache, snapshot, options, writer, journal)?;
    if args.follow {
        fs = fs.following(
            target.clone(),
            &opened.reference(),
            args.platform.clone(),
            args.refresh,
        )?;
    }
    let fs = Arc::new(fs);
    let mode = if fs.read_only() {
        "read-only"
    } else {
        "read-write"
    };
    let mounted = format!(
        "Mounted {} ({digest}) on {} {mode}",
        args.reference,
        args.mountpoint.display()
    );
    serve(fs, &args, mounted, cache_dir).await
}

/// Tells the user what the mount process reports (the library prints nothing).
fn show(event: MountEvent, mounted: &str, cache_dir: &std::path::Path) {
    match event {
        MountEvent::Ready => {
            eprintln!("{mounted}");
            if std::env::var_os(DAEMON_ENV).is_some() {
                eprintln!("{READY}");
                detach_stderr(cache_dir);
            } else {
                // A systemd `Type=notify` service (`--foreground`) is started once it is
                // mounted; without NOTIFY_SOCKET this does nothing.
                if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                    tracing::warn!("telling systemd the mount is ready: {e}");
                }
            }
        }
        // The daemon's stderr is its log, which may be on a full disk: never panic on it.
        MountEvent::Pushed {
            reference,
            manifest,
        } => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "Pushed {reference} as {}",
                manifest.digest
            );
        }
    }
}

/// Buffers of a MiB and more (multi-block reads, receive buffers) come and go all the time:
/// have glibc return them to the system (a fixed mmap threshold) instead of growing per-thread
/// arenas, so the daemon's memory stays near its cache bound.
fn tune_allocator() {
    // SAFETY: mallopt only tunes the allocator; called before the FUSE threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// A mountpoint left by a mount process that died (`kill -9`): if it was an oras-fs mount of
/// this user, detach it so the new mount can go there (the library says which it is).
fn clear_dead_mount(mountpoint: &std::path::Path) -> Result<()> {
    if let Some(dead) = fusermount::dead_mount(mountpoint)? {
        eprintln!(
            "Note: {} was left mounted by an oras-fs process that is gone (killed?); unmounting it",
            mountpoint.display()
        );
        fusermount::unmount_with(&dead, true)?;
    }
    Ok(())
}

/// From now on the background child logs to a file, not to the caller's terminal.
fn detach_stderr(cache_dir: &std::path::Path) {
    use oras_fs::fs::paths::{private_dir, private_file};
    let dir = cache_dir.join("logs");
    let _ = private_dir(&dir);
    let path = dir.join(format!("mount-{}.log", std::process::id()));
    if let Ok(f) = private_file(&path, true) {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 2 of a file we just opened; both fds are valid.
        unsafe {
            libc::dup2(f.as_raw_fd(), 2);
        }
    }
}

/// The flags whose values must not stay in a long-lived process's command line (readable by
/// every user): `(short, long)`.
const HIDDEN_FLAGS: [(Option<char>, &str); 3] = [
    (Some('p'), "password"),
    (None, "identity-token"),
    (Some('H'), "header"),
];

/// Takes the values of [`HIDDEN_FLAGS`] (`-p X`, `-pX`, `-p=X`, `--password X`,
/// `--password=X`, and so on) out of an argument list, in one pass so that a value is never
/// read as a flag, up to `--`. Returns the rest, the secret with the stdin flag that passes it
/// instead, and the headers (for the child's environment).
fn background_args(
    args: Vec<String>,
) -> (Vec<String>, Option<(&'static str, String)>, Vec<String>) {
    let mut out = Vec::new();
    let mut values: [Vec<String>; 3] = Default::default();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--" {
            out.push(a);
            out.extend(it.by_ref());
            break;
        }
        let found = HIDDEN_FLAGS
            .iter()
            .enumerate()
            .find_map(|(i, (short, long))| {
                let long = format!("--{long}");
                if a == long || short.is_some_and(|c| a == format!("-{c}")) {
                    return Some((i, None));
                }
                if let Some(v) = a.strip_prefix(&format!("{long}=")) {
                    return Some((i, Some(v.to_string())));
                }
                let v = a
                    .strip_prefix(&format!("-{}", (*short)?))
                    .filter(|v| !v.is_empty() && !a.starts_with("--"))?;
                // `-p=pw` is `pw` to clap.
                Some((i, Some(v.strip_prefix('=').unwrap_or(v).to_string())))
            });
        match found {
            Some((i, Some(v))) => values[i].push(v),
            Some((i, None)) => values[i].extend(it.next()),
            None => out.push(a),
        }
    }
    let [passwords, tokens, headers] = values;
    // clap has refused a password beside an identity token before this runs.
    let secret = (passwords.last().map(|p| ("--password-stdin", p.clone())))
        .or_else(|| tokens.last().map(|t| ("--identity-token-stdin", t.clone())));
    (out, secret, headers)
}

/// Runs this command again as a background child (no fork after the async runtime started)
/// and returns once it reports the mount usable, or fails with its error.
fn spawn_background() -> Result<()> {
    let exe =
        std::env::current_exe().map_err(|e| Error::io("finding the oras-fs executable", e))?;
    // A password (-p) or identity token given as a flag moves to the child's stdin: a
    // long-lived process must not show it in its command line.
    let (args, flag_secret, headers) = background_args(std::env::args().skip(1).collect());
    let password_stdin = flag_secret.is_some()
        || args
            .iter()
            .any(|a| a == "--password-stdin" || a == "--identity-token-stdin");
    let (args, flag_password) = match flag_secret {
        Some((stdin_flag, secret)) => (
            args.into_iter().chain([stdin_flag.to_string()]).collect(),
            Some(secret),
        ),
        None => (args, None),
    };
    let mut cmd = Command::new(exe);
    if !headers.is_empty() {
        cmd.env(super::remote::HEADERS_ENV, headers.join("\n"));
    }
    cmd.args(&args)
        .env(DAEMON_ENV, "1")
        .stdin(if password_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe; the child leaves our session and terminal.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("starting the mount process", e))?;
    if password_stdin {
        let mut secret = match flag_password {
            Some(p) => p,
            None => {
                let mut s = String::new();
                std::io::stdin()
                    .read_line(&mut s)
                    .map_err(|e| Error::io("reading the password from stdin", e))?;
                s
            }
        };
        if !secret.ends_with('\n') {
            secret.push('\n');
        }
        let mut stdin = child.stdin.take().expect("piped");
        let _ = stdin.write_all(secret.as_bytes());
    }
    let stderr = child.stderr.take().expect("piped");
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if line == READY {
            return Ok(());
        }
        eprintln!("{line}");
    }
    let status = child
        .wait()
        .map_err(|e| Error::io("waiting for the mount process", e))?;
    // The child already printed its error.
    std::process::exit(status.code().unwrap_or(1).max(1));
}

#[derive(Args, Debug)]
pub struct UnmountArgs {
    /// The mountpoint.
    pub mountpoint: PathBuf,
    /// Detach at once even while files are open: the mount disappears from the directory
    /// now, and its process pushes what was written once the last open file is closed.
    #[arg(short = 'z', long)]
    pub lazy: bool,
    /// How long to wait for files open for writing to be closed; then the unmount is refused
    /// (nothing is unmounted or pushed).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
}

pub async fn unmount(args: UnmountArgs) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(args.timeout);
    let mut waiting_for: Vec<String> = Vec::new();
    let answer = loop {
        let answer = request(
            &args.mountpoint,
            ControlRequest::Unmount { lazy: args.lazy },
        )
        .await?;
        match answer {
            // Files open for writing: cutting them off would push them half-written.
            Some(a) if !a.ok && !a.open_for_writing.is_empty() => {
                let paths = in_mount(&args.mountpoint, &a.open_for_writing);
                if std::time::Instant::now() >= deadline {
                    return Err(Error::Usage(format!(
                        "{} is busy: open for writing: {paths}. Nothing was unmounted or pushed. \
                         Close them and run `oras-fs unmount {}` again, or `oras-fs unmount --lazy \
                         {}` to detach now and push once they are closed",
                        args.mountpoint.display(),
                        args.mountpoint.display(),
                        args.mountpoint.display()
                    )));
                }
                if a.open_for_writing != waiting_for {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    eprintln!(
                        "Waiting up to {} s for files open for writing to be closed: {paths}",
                        left.as_secs_f64().ceil()
                    );
                    waiting_for = a.open_for_writing;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => break other,
        }
    };
    match answer {
        Some(a) => {
            // The mount process unmounts itself; wait until the kernel agrees.
            for _ in 0..200 {
                if !fusermount::is_mounted(&args.mountpoint) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if fusermount::is_mounted(&args.mountpoint) {
                fusermount::unmount_with(&args.mountpoint, args.lazy)?;
            }
            if let Some(d) = &a.digest {
                outln!("Pushed {d}");
            }
            if a.detached {
                let pending = if a.open_for_writing.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; still open for writing: {} (pushed once closed)",
                        in_mount(&args.mountpoint, &a.open_for_writing)
                    )
                };
                eprintln!(
                    "Detached {}: its mount process serves the files still open and ends once \
                     they are closed{pending}",
                    args.mountpoint.display()
                );
            }
            if a.ok {
                Ok(())
            } else {
                Err(Error::Other(a.message))
            }
        }
        None if !fusermount::is_mounted(&args.mountpoint) => Err(Error::Usage(format!(
            "nothing is mounted at {}",
            args.mountpoint.display()
        ))),
        // Not served by oras-fs (any more): a dead mount (`kill -9`) or another filesystem.
        None => fusermount::unmount_with(&args.mountpoint, args.lazy).map(|_| ()),
    }
}

/// Paths in a mount as the user sees them: `MOUNTPOINT/path`, comma-separated.
fn in_mount(mountpoint: &std::path::Path, paths: &[String]) -> String {
    paths
        .iter()
        .map(|p| mountpoint.join(p).display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// The mountpoint of a writable mount.
    pub mountpoint: PathBuf,
    /// Push the new manifest to this reference instead of the mounted tag.
    #[arg(long, value_name = "REF")]
    pub push_to: Option<String>,
    /// Overwrite the mounted tag even if someone else moved it since the mount.
    #[arg(long)]
    pub force: bool,
}

pub async fn sync(args: SyncArgs) -> Result<()> {
    let answer = request(
        &args.mountpoint,
        ControlRequest::Sync {
            force: args.force,
            push_to: args.push_to.clone(),
        },
    )
    .await?
    .ok_or_else(|| Error::Usage(format!("no oras-fs mount at {}", args.mountpoint.display())))?;
    if !answer.ok {
        return Err(Error::Other(answer.message));
    }
    match answer.digest {
        Some(d) => outln!("Pushed {d}"),
        None => outln!("Nothing to push: no changes since the last push"),
    }
    Ok(())
}

#[derive(Args, Debug)]
#[command(
    after_help = "--format json prints an array of objects, one per mount, with snake_case fields."
)]
pub struct StatusArgs {
    /// Only the mount at this directory (default: every mount of this user).
    pub mountpoint: Option<PathBuf>,
    #[command(flatten)]
    pub format: FormatArgs,
}

pub async fn status(args: StatusArgs) -> Result<()> {
    let output = args.format.output()?;
    let mp = args.mountpoint.clone();
    let reports = tokio::task::spawn_blocking(move || control::statuses(mp.as_deref()))
        .await
        .expect("status task panicked")?;
    if !output.is_text() {
        return output.print(&reports, || {});
    }
    if reports.is_empty() {
        outln!("No oras-fs mounts");
    }
    for (i, r) in reports.iter().enumerate() {
        if i > 0 {
            outln!("");
        }
        let m = &r.mount;
        outln!("{}", r.mountpoint);
        outln!("  reference:  {}", m.reference);
        if !m.digest.is_empty() {
            outln!("  digest:     {}", m.digest);
        }
        outln!(
            "  mode:       {}",
            if m.read_only {
                "read-only"
            } else {
                "read-write"
            }
        );
        outln!("  process:    {}", r.pid);
        outln!(
            "  cache:      {} of {} in {}",
            human(r.cache_bytes),
            human(r.cache_limit),
            r.cache_dir
        );
        if m.pending.is_empty() {
            outln!("  pending:    none");
        } else {
            outln!("  pending:    {} changes", m.pending.len());
            for p in &m.pending {
                outln!("    {p}");
            }
        }
        if !m.open_for_writing.is_empty() {
            outln!("  open for writing:");
            for p in &m.open_for_writing {
                outln!("    {p}");
            }
        }
        for n in &m.notices {
            outln!("  note:       {n}");
        }
        if let Some(e) = &m.last_error {
            outln!("  last error: {e}");
        }
    }
    Ok(())
}

/// `12.5 MiB`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

async fn request(
    mountpoint: &std::path::Path,
    req: ControlRequest,
) -> Result<Option<ControlResponse>> {
    let mp = mountpoint.to_path_buf();
    tokio::task::spawn_blocking(move || control::control(&mp, &req))
        .await
        .expect("control task panicked")
}

#[cfg(test)]
mod tests {
    use super::background_args;

    #[test]
    fn a_layout_reference_is_never_taken_for_a_registry_or_repository() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            mount: super::MountArgs,
        }
        let whole = |v: &[&str]| {
            let cli = <Cli as clap::Parser>::try_parse_from(v).unwrap();
            super::whole(&cli.mount).map(|w| matches!(w, super::Whole::Registry))
        };
        let hex = "a".repeat(64);
        let digest = format!("sha256:{hex}");
        for r in ["v1.0", digest.as_str(), "localhost"] {
            assert_eq!(whole(&["m", "--oci-layout-path", "img.tar", r, "/m"]), None);
            assert_eq!(whole(&["m", "--oci-layout", r, "/m"]), None);
        }
        assert_eq!(
            whole(&["m", "v1.0", "/m"]),
            Some(true),
            "a host, as docker sees it"
        );
        assert_eq!(whole(&["m", "r.io/a/b", "/m"]), Some(false));
    }

    #[test]
    fn secrets_leave_the_command_line_for_stdin() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (line, flag, secret) in [
            (
                &["mount", "r:v1", "/m", "-p", "pw"][..],
                "--password-stdin",
                "pw",
            ),
            (
                &["mount", "-ppw", "r:v1", "/m"][..],
                "--password-stdin",
                "pw",
            ),
            (
                &["mount", "--password=pw", "r:v1", "/m"][..],
                "--password-stdin",
                "pw",
            ),
            (
                &["mount", "--identity-token", "tok", "r:v1", "/m"][..],
                "--identity-token-stdin",
                "tok",
            ),
            (
                &["mount", "--identity-token=tok", "r:v1", "/m"][..],
                "--identity-token-stdin",
                "tok",
            ),
        ] {
            let (rest, got, _) = background_args(args(line));
            assert_eq!(rest, args(&["mount", "r:v1", "/m"]), "{line:?}");
            assert_eq!(got, Some((flag, secret.to_string())), "{line:?}");
        }
        let (rest, got, _) = background_args(args(&["mount", "r:v1", "/m", "--", "-p"]));
        assert_eq!((rest.len(), got), (5, None));
    }

    #[test]
    fn headers_leave_the_command_line_for_the_environment() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (rest, _, headers) = background_args(args(&[
            "mount",
            "-H",
            "A: 1",
            "r:v1",
            "--header=B: 2",
            "/m",
            "-HC: 3",
            "--header",
            "D: 4",
        ]));
        assert_eq!(rest, args(&["mount", "r:v1", "/m"]));
        assert_eq!(headers, args(&["A: 1", "B: 2", "C: 3", "D: 4"]));
    }
}
