//! The command line: argument parsing (flag names as in the oras CLI) and output. Every
//! command is a thin shell over the library.

/// `println!` that treats a closed stdout (`oras-fs ... | head`) as the reader's choice, not a
/// failure (`println!` would panic).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::print_line(format_args!($($arg)*))
    };
}

mod backup;
mod confirm;
pub mod fstab;
mod index;
mod manage;
mod mount;
pub mod output;
mod remote;
mod target;
mod template;
mod transfer;
mod version;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "oras-fs",
    version,
    about = "Keep arbitrary files in OCI registries: push, pull, and mount artifacts as directories",
    after_help = "Examples:\n  oras-fs push localhost:5000/hello:v1 hi.txt\n  oras-fs pull localhost:5000/hello:v1 -o out\n  oras-fs mount localhost:5000/hello:v1 /mnt/hello"
)]
pub struct Cli {
    /// Log HTTP requests and internals to stderr (credentials are never printed).
    #[arg(short = 'd', long, global = true)]
    pub debug: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Push files (and directories) to a registry as one artifact.
    Push(transfer::PushArgs),
    /// Pull an artifact's files from a registry.
    Pull(transfer::PullArgs),
    /// Mount an artifact as a directory (files are fetched lazily on read).
    Mount(mount::MountArgs),
    /// Push a mount's pending changes and unmount it (waits for files open for writing).
    #[command(alias = "umount")]
    Unmount(mount::UnmountArgs),
    /// Push the changes made in a writable mount now.
    Sync(mount::SyncArgs),
    /// Show this user's mounts: reference, digest, pending changes, cache use, last error.
    Status(mount::StatusArgs),
    /// Copy an artifact between registries and OCI layouts (blobs present are skipped).
    #[command(alias = "cp")]
    Copy(manage::CopyArgs),
    /// Tag a manifest.
    Tag(manage::TagArgs),
    /// Print the digest a reference resolves to.
    Resolve(manage::ResolveArgs),
    /// Fetch, push or delete manifests.
    #[command(subcommand)]
    Manifest(manage::ManifestCommand),
    /// Fetch, push or delete blobs.
    #[command(subcommand)]
    Blob(manage::BlobCommand),
    /// List repositories and tags.
    #[command(subcommand)]
    Repo(manage::RepoCommand),
    /// Attach files to an artifact as a referrer (e.g. a signature or SBOM).
    Attach(manage::AttachArgs),
    /// Show the artifacts that refer to a subject.
    Discover(manage::DiscoverArgs),
    /// Back up a repository's tags (and their referrers) into an OCI layout directory or .tar.
    Backup(backup::BackupArgs),
    /// Restore tags (and their referrers) from an OCI layout directory or .tar into a repository.
    Restore(backup::RestoreArgs),
    /// Attach seek indexes of an artifact's or image's tar+gzip layers, so that mounts read
    /// single files of them without downloading whole layers.
    Index(manage::IndexArgs),
    /// Store credentials for a registry in the Docker credential store.
    Login(remote::LoginArgs),
    /// Remove stored credentials for a registry.
    Logout(remote::LogoutArgs),
    /// Show the version, the Rust compiler it was built with, the platform and the git commit.
    Version,
}

/// Runs a parsed command line; the error is printed by `main`.
pub async fn run(cli: Cli) -> oras_fs::Result<()> {
    match cli.command {
        // Commands that write temporary files and ask nothing on the terminal.
        Command::Push(a) => until_interrupted(transfer::push(a)).await,
        Command::Pull(a) => until_interrupted(transfer::pull(a)).await,
        Command::Mount(a) => mount::mount(a).await,
        Command::Unmount(a) => mount::unmount(a).await,
        Command::Sync(a) => mount::sync(a).await,
        Command::Status(a) => mount::status(a).await,
        Command::Copy(a) => until_interrupted(manage::copy(a)).await,
        Command::Tag(a) => manage::tag(a).await,
        Command::Resolve(a) => manage::resolve(a).await,
        Command::Manifest(c) => manage::manifest(c).await,
        Command::Blob(c) => manage::blob(c).await,
        Command::Repo(c) => manage::repo(c).await,
        Command::Attach(a) => manage::attach(a).await,
        Command::Discover(a) => manage::discover(a).await,
        Command::Backup(a) => until_interrupted(backup::backup(a)).await,
        Command::Restore(a) => backup::restore(a).await,
        Command::Index(a) => manage::index(a).await,
        Command::Login(a) => remote::login(a).await,
        Command::Logout(a) => remote::logout(a),
        Command::Version => {
            version::print();
            Ok(())
        }
    }
}

/// Runs a command until it ends or SIGINT (Ctrl-C) or SIGTERM arrives. Then the command is
/// dropped, and with it the temporary files and directories it was writing
/// (`.oras-fs-partial-*`, a backup's `.oras-fs-backup-*`, a directory's staging), which a
/// process killed by the signal would leave behind; files already renamed into place are
/// complete and stay. Only for commands that ask nothing on the terminal: once a handler is
/// installed, Ctrl-C no longer ends a process blocked reading a prompt's answer. A mount
/// handles its signals itself (it pushes what was written before it ends).
async fn until_interrupted(
    command: impl std::future::Future<Output = oras_fs::Result<()>>,
) -> oras_fs::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return command.await; // No signal handling to be had: the default (die) stays.
    };
    let interrupted = |name, number| Err(oras_fs::Error::Interrupted { name, number });
    tokio::select! {
        r = command => r,
        _ = int.recv() => interrupted("SIGINT", libc::SIGINT),
        _ = term.recv() => interrupted("SIGTERM", libc::SIGTERM),
    }
}
