//! What commands print: progress bars on a terminal; results as text, as JSON with oras's
//! field names and nesting (the models below), or through a Go template over that JSON.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use oras_fs::digest::Digest;
use oras_fs::manifest::{Annotations, Descriptor};
use oras_fs::oras::Progress;
use oras_fs::{Error, Result};
use serde::Serialize;

use super::template::Template;

/// `--format` and `--template`, spelled as oras spells them.
#[derive(clap::Args, Debug, Clone)]
pub struct FormatArgs {
    /// How to print the result: `text`; `json` (pretty JSON with oras's field names);
    /// `go-template` with --template, or `go-template=TEMPLATE` (a Go template over the
    /// JSON fields, e.g. '{{.digest}}', with sprig's toJson, toPrettyJson, upper, default...).
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub format: String,
    /// The Go template of `--format go-template`.
    #[arg(long, value_name = "TEMPLATE")]
    pub template: Option<String>,
}

/// Where a command's result goes: text lines, pretty JSON, or a Go template over that JSON.
pub enum Output {
    Text,
    Json,
    Template(Template),
}

impl FormatArgs {
    /// Checks the flags (and parses the template) before the command does any work.
    pub fn output(&self) -> Result<Output> {
        self.output_named("text")
    }

    /// [`Self::output`] for a command whose text output oras calls `text_name` (discover's
    /// `tree`); `text` is accepted too.
    pub fn output_named(&self, text_name: &str) -> Result<Output> {
        let (kind, inline) = match self.format.split_once('=') {
            Some((k, t)) => (k, Some(t)),
            None => (self.format.as_str(), None),
        };
        match (kind, inline, self.template.as_deref()) {
            ("go-template", Some(t), None) | ("go-template", None, Some(t)) => {
                Ok(Output::Template(Template::parse(t)?))
            }
            ("go-template", Some(_), Some(_)) => Err(Error::Usage(
                "give the template once: --format go-template=TEMPLATE or --template TEMPLATE"
                    .into(),
            )),
            ("go-template", None, None) => Err(Error::Usage(
                "--format go-template needs a template: --template '{{.digest}}'".into(),
            )),
            (_, _, Some(_)) => Err(Error::Usage(
                "--template is used only with --format go-template".into(),
            )),
            (k, None, None) if k == "text" || k == text_name => Ok(Output::Text),
            ("json", None, None) => Ok(Output::Json),
            _ => Err(Error::Usage(format!(
                "unknown --format {:?}: use {text_name}, json, go-template or go-template=TEMPLATE",
                self.format
            ))),
        }
    }
}

impl Output {
    pub fn is_text(&self) -> bool {
        matches!(self, Output::Text)
    }

    /// Prints `model` as pretty JSON or through the template; for text output, runs `text`.
    pub fn print<T: Serialize>(&self, model: &T, text: impl FnOnce()) -> Result<()> {
        match self {
            Output::Text => text(),
            Output::Json => outln!("{}", serde_json::to_string_pretty(model).expect("JSON")),
            Output::Template(t) => {
                let value = serde_json::to_value(model).expect("JSON");
                print_raw(&t.render(&value)?);
            }
        }
        Ok(())
    }
}

/// Text on stdout without an added newline (a template says where its lines end).
fn print_raw(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("Error: {WRITING_STDOUT}: {e}");
            PRINT_FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A descriptor as oras prints it: `reference` (repository@digest) then the OCI fields oras
/// keeps (no urls, data or platform).
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Described {
    pub reference: String,
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Described {
    /// `desc` in repository (or layout) `base`.
    pub fn new(base: &str, desc: &Descriptor) -> Self {
        Described {
            reference: format!("{base}@{}", desc.digest),
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: desc.size,
            // Go's omitempty drops an empty map as well as a missing one.
            annotations: desc.annotations.clone().filter(|a| !a.is_empty()),
            artifact_type: desc.artifact_type.clone().filter(|t| !t.is_empty()),
        }
    }
}

/// `push --format json`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Pushed {
    #[serde(flatten)]
    pub manifest: Described,
    /// `repository:tag` for each tag pushed.
    pub reference_as_tags: Vec<String>,
}

/// `pull --format json`.
#[derive(Serialize, Debug)]
pub struct Pulled {
    pub reference: String,
    pub files: Vec<PulledFile>,
}

/// A file of [`Pulled`]: its absolute path (a directory's ends with `/`) and its layer.
#[derive(Serialize, Debug)]
pub struct PulledFile {
    pub path: String,
    #[serde(flatten)]
    pub layer: Described,
}

/// `discover --format json`: the subject and, nested, the referrers of each referrer.
#[derive(Serialize, Debug)]
pub struct Referrers {
    #[serde(flatten)]
    pub subject: Described,
    pub referrers: Vec<Referrers>,
}

/// `manifest fetch --format json`: the manifest's descriptor and the manifest itself.
#[derive(Serialize, Debug)]
pub struct Fetched {
    #[serde(flatten)]
    pub manifest: Described,
    /// The parsed manifest; null when it is not JSON.
    pub content: Option<serde_json::Value>,
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
