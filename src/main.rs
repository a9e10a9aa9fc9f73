//! The `oras-fs` binary: parse, run, print the error and exit non-zero on failure.

mod cli;

use clap::{CommandFactory, Parser};

fn main() -> std::process::ExitCode {
    // `mount -t fuse.oras-fs` and fstab lines call `oras-fs SOURCE MOUNTPOINT -o OPTIONS`.
    let command = cli::Cli::command();
    let mut names: Vec<&str> = vec!["help"];
    for sub in command.get_subcommands() {
        names.push(sub.get_name());
        names.extend(sub.get_all_aliases());
    }
    let cli = match cli::fstab::command_line(std::env::args_os().collect(), &names) {
        Ok(args) => cli::Cli::parse_from(args),
        Err(e) => {
            eprintln!("Error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let filter = if cli.debug {
        "oras_fs=debug,warn"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORAS_FS_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        // A daemon's log can sit on a full disk: a log line that cannot be written must not
        // become a panic (tracing reports such errors with eprintln!, which panics too).
        .log_internal_errors(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime");
    let result = runtime.block_on(cli::run(cli));
    if matches!(result, Err(oras_fs::Error::Interrupted { .. })) {
        // Its tasks are dropped (their temporary files with them) and blocking writes end; a
        // stuck one does not keep an interrupted command alive.
        runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    }
    match result {
        Ok(()) if cli::output::print_failed() => std::process::ExitCode::FAILURE,
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of stdout stopped (`| head`): quiet, as ripgrep does.
        Err(e) if cli::output::closed_stdout(&e) => std::process::ExitCode::SUCCESS,
        // 128 + the signal's number, as a shell reports a command the signal killed.
        Err(e @ oras_fs::Error::Interrupted { number, .. }) => {
            eprintln!("Error: {e}");
            std::process::ExitCode::from(128 + number as u8)
        }
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
