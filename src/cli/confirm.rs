//! Asking before destructive commands (`manifest delete`, `blob delete`), as oras does: a
//! person at a terminal answers a `[y/N]` prompt; a script must say `--force`.

use std::io::{BufRead, IsTerminal, Write};

use oras_fs::{Error, Result};

/// Whether to go on with `action` (e.g. `delete the blob "sha256:..."`). `force` skips the
/// question. Without a terminal (stdin and stderr both) there is nobody to ask: refuse, naming
/// `--force`, rather than delete unasked or hang on a pipe.
pub fn confirm(action: &str, force: bool) -> Result<bool> {
    if force {
        return Ok(true);
    }
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Err(Error::Usage(format!(
            "refusing to {action} without confirmation (stdin is not a terminal): \
             add -f/--force to confirm"
        )));
    }
    // The prompt goes to stderr: stdout stays the command's output.
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "Are you sure you want to {action}? [y/N] ");
    let _ = err.flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::io("reading the answer from stdin", e))?;
    Ok(is_yes(&answer))
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_y_or_yes_confirms() {
        for yes in ["y\n", "Y", " yes \r\n", "YES"] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yep", "y es"] {
            assert!(!is_yes(no), "{no:?}");
        }
    }

    #[test]
    fn force_never_asks() {
        assert!(confirm("delete everything", true).unwrap());
    }
}
