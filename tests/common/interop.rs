//! The Python ORAS SDK, an independent client for interop tests (`tests/interop.py`).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::*;

/// The Python interpreter with the ORAS SDK (`ORAS_FS_PYTHON`, else the repository's venv).
pub fn python() -> PathBuf {
    std::env::var_os("ORAS_FS_PYTHON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

/// `tests/interop.py`: a small command-line wrapper around the Python ORAS SDK.
pub fn interop_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop.py")
}

/// Runs `tests/interop.py ARGS` with the venv Python in `dir`.
pub fn interop<I, S>(dir: &Path, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(python());
    cmd.arg(interop_script())
        .args(args)
        .current_dir(dir)
        .env("DOCKER_CONFIG", "/nonexistent/oras-fs-tests/docker-config");
    run(&mut cmd)
}

/// The Python SDK pulls `reference` into `out` over plain HTTP (run in `dir`); its output.
pub fn sdk_pull(dir: &Path, reference: &str, out: &Path) -> Output {
    let out = out.to_str().expect("a UTF-8 path");
    interop(dir, ["pull", reference, "--plain-http", "--outdir", out])
}
