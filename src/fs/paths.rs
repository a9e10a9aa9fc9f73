//! Where a mount keeps things: the default cache directory, and the runtime directory of the
//! control sockets, checked to be private to this user.

use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};

/// Open options that create files only the user can read (cached and staged data may be
/// private): callers add what else they need.
pub fn private_options() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.mode(0o600);
    o
}

/// Opens a file for writing that only the user can read (staged data may be private).
pub fn private_file(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    let mut o = private_options();
    o.create(true);
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(true);
    }
    o.open(path)
}

/// Creates a directory (and its parents) only the user can enter.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Default cache directory: `$XDG_CACHE_HOME/oras-fs` or `~/.cache/oras-fs`.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("oras-fs")
}

/// Where a user's mount control sockets live (the path only; see [`private_runtime_dir`]).
pub fn runtime_dir() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| std::env::temp_dir().join(format!("oras-fs-{}", uid())));
    base.join("oras-fs-mounts")
}

pub(super) fn uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// The runtime directory, checked to be private to this user: whoever can write there can
/// answer for a mount (a fake "Pushed" to `sync`) or block mounts. With `create`, missing
/// directories are made (mode 0700); without, a missing one gives `None` (no mounts).
pub fn private_runtime_dir(create: bool) -> Result<Option<PathBuf>> {
    let dir = runtime_dir();
    let parent = dir
        .parent()
        .expect("runtime dir has a parent")
        .to_path_buf();
    // `$XDG_RUNTIME_DIR` is the system's and trusted; `/tmp/oras-fs-UID` is ours to check.
    let mut chain = Vec::new();
    if parent.file_name().and_then(|n| n.to_str()) == Some(&format!("oras-fs-{}", uid())) {
        chain.push(parent);
    }
    chain.push(dir.clone());
    for d in chain {
        match std::fs::symlink_metadata(&d) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => make_private_dir(&d)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("checking {}", d.display()), e)),
            Ok(_) => {}
        }
        check_private_dir(&d, uid())?;
    }
    Ok(Some(dir))
}

/// Makes `d` with mode 0700 (a umask that takes the owner's own bits is reported by the check).
fn make_private_dir(d: &Path) -> Result<()> {
    match private_dir(d) {
        Ok(()) => Ok(()),
        // Someone else made it meanwhile: the check that follows judges it.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(format!("creating {}", d.display()), e)),
    }
}

/// Refuses a control directory that is a symlink, not a directory, owned by another user, or
/// open to others (checked with lstat, so a symlink is never followed).
fn check_private_dir(d: &Path, uid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(d).ctx(|| format!("checking {}", d.display()))?;
    let takeover = "another user may have made it to answer for your mounts: remove it (as its \
                    owner or root), or set XDG_RUNTIME_DIR to a private directory";
    let problem = if meta.file_type().is_symlink() {
        format!("it is a symbolic link; {takeover}")
    } else if !meta.is_dir() {
        format!("it is not a directory; {takeover}")
    } else if meta.uid() != uid {
        format!(
            "it is owned by uid {}, not by you (uid {uid}); {takeover}",
            meta.uid()
        )
    } else if meta.mode() & 0o777 != 0o700 {
        format!(
            "its mode is {:o}, open to other users; run `chmod 700 {}`",
            meta.mode() & 0o777,
            d.display()
        )
    } else {
        return Ok(());
    };
    Err(Error::Usage(format!(
        "refusing to use {} for the mount control sockets: {problem}",
        d.display()
    )))
}

/// `path` made absolute without resolving its last component (a dead FUSE mount cannot be
/// resolved: every lookup in it fails with ENOTCONN).
pub fn absolute(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(abs.clone()),
        _ => abs,
    }
}

/// The control socket of the mount at `mountpoint`.
pub fn control_socket(mountpoint: &Path) -> PathBuf {
    let key = Digest::of(absolute(mountpoint).as_os_str().as_encoded_bytes());
    runtime_dir().join(format!("{}.sock", &key.hex()[..16]))
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn private(d: &Path) {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn a_private_directory_of_ours_is_accepted() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("mine");
        private(&d);
        check_private_dir(&d, uid()).unwrap();
    }

    #[test]
    fn a_directory_open_to_others_is_refused_with_the_fix() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("open");
        private(&d);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = check_private_dir(&d, uid()).unwrap_err().to_string();
        assert!(e.contains(&d.display().to_string()), "{e}");
        assert!(e.contains("mode is 755") && e.contains("chmod 700"), "{e}");
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("theirs");
        private(&d);
        if uid() == 0 {
            // As root, hand it to `nobody`, as another user's directory would be.
            std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
            let e = check_private_dir(&d, 0).unwrap_err().to_string();
            assert!(
                e.contains("owned by uid 65534") && e.contains("remove it"),
                "{e}"
            );
        }
        // Whatever our uid: a directory owned by us is not owned by another uid.
        let e = check_private_dir(&t.path().join("theirs"), uid() + 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not by you"), "{e}");
    }

    #[test]
    fn a_symlink_is_refused_even_to_a_private_directory() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        private(&real);
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = check_private_dir(&link, uid()).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn a_missing_directory_is_made_private() {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = t.path().join("new");
        // SAFETY: umask only affects this process's new files; restored at once.
        let old = unsafe { libc::umask(0o022) };
        let made = make_private_dir(&d);
        unsafe { libc::umask(old) };
        made.unwrap();
        check_private_dir(&d, uid()).unwrap();
    }
}
