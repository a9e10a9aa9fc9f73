//! What commands print: progress bars on a terminal, text or JSON results.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use oras_fs::manifest::Descriptor;
use oras_fs::oras::Progress;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// The context of every error writing to stdout (see [`closed_stdout`]).
pub const WRITING_STDOUT: &str = "writing to stdout";

/// Set when a line could not be printed for another reason than a closed stdout.
static PRINT_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A line on stdout (see `outln!`). A reader that stopped reading (`| head`) is not an error;
/// any other failure (a full disk) is reported, and the command exits non-zero.
pub fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{args}") {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("Error: {WRITING_STDOUT}: {e}");
            PRINT_FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Whether some line could not be printed (see [`print_line`]).
pub fn print_failed() -> bool {
    PRINT_FAILED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether `e` is a write to a stdout whose reader went away (`oras-fs ... -o - | head`): the
/// reader's choice, not a failure. Broken pipes elsewhere (a credential helper, the mount's
/// control socket) are real errors.
pub fn closed_stdout(e: &oras_fs::Error) -> bool {
    matches!(e, oras_fs::Error::Io { context, source }
        if context == WRITING_STDOUT && source.kind() == std::io::ErrorKind::BrokenPipe)
}

/// A short, human name for a blob: its title, else its digest's first 12 hex digits.
pub fn label(desc: &Descriptor) -> String {
    match desc.title() {
        Some(t) => t.to_string(),
        None => desc.digest.hex().chars().take(12).collect(),
    }
}

/// Progress bars per blob on stderr, or one line per blob when stderr is not a terminal.
/// Bars are found by [`label`]: a large file's upload starts before its digest is known.
pub struct Bars {
    verb: &'static str,
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
    quiet: bool,
}

impl Bars {
    pub fn new(verb: &'static str, no_tty: bool, quiet: bool) -> Self {
        let tty = !no_tty && !quiet && std::io::stderr().is_terminal();
        Bars {
            verb,
            multi: tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: Mutex::new(HashMap::new()),
            quiet,
        }
    }
}

impl Progress for Bars {
    fn start(&self, desc: &Descriptor) {
        let Some(multi) = &self.multi else {
            return;
        };
        // Started again (a transfer sent again after a failure): the same bar starts over.
        if let Some(bar) = self.bars.lock().unwrap().get(&label(desc)) {
            bar.reset();
            bar.set_length(desc.size);
            return;
        }
        let bar = multi.add(ProgressBar::new(desc.size));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} {msg:30!} {bar:30} {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec}")
                .expect("valid template"),
        );
        bar.set_prefix(self.verb);
        bar.set_message(label(desc));
        self.bars.lock().unwrap().insert(label(desc), bar);
    }

    fn advance(&self, desc: &Descriptor, bytes: u64) {
        if let Some(bar) = self.bars.lock().unwrap().get(&label(desc)) {
            bar.inc(bytes);
        }
    }

    fn finish(&self, desc: &Descriptor, skipped: bool) {
        let status = if skipped { "Exists" } else { "Done" };
        if let Some(bar) = self.bars.lock().unwrap().remove(&label(desc)) {
            bar.set_prefix(status);
            bar.finish();
        } else if !self.quiet && self.multi.is_none() {
            match desc.title() {
                Some(t) => eprintln!("{status:>9} {} {t}", &desc.digest.hex()[..12]),
                None => eprintln!("{status:>9} {}", &desc.digest.hex()[..12]),
            }
        }
    }
}
