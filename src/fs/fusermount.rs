//! `fusermount3`: mounting through it where `/dev/fuse` is closed to the user (it passes the
//! opened device back over a socket), unmounting, and finding mounts (and dead ones) in
//! `/proc/mounts`.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::paths::{absolute, uid};
use crate::error::{Error, IoContext, Result};

/// Set to `1` to mount through `fusermount3` even where `/dev/fuse` could be opened.
pub const VIA_FUSERMOUNT_ENV: &str = "ORAS_FS_MOUNT_VIA_FUSERMOUNT";

/// Mounts `mountpoint` through `fusermount3` with the options of a direct mount, and returns
/// the `/dev/fuse` descriptor to serve. `direct_error`: why opening `/dev/fuse` failed, if
/// that was tried.
pub(super) fn mount(
    mountpoint: &Path,
    read_only: bool,
    allow_other: bool,
    direct_error: Option<std::io::Error>,
) -> Result<std::os::fd::OwnedFd> {
    let mut options = vec![
        "fsname=oras-fs",
        "subtype=oras-fs",
        "default_permissions",
        "nodev",
        "nosuid",
        if read_only { "ro" } else { "rw" },
    ];
    if allow_other {
        options.push("allow_other");
    }
    mount_via_fusermount(mountpoint, &options.join(",")).map_err(|e| {
        match direct_error {
            // fusermount3 opens /dev/fuse as the calling user too.
            Some(direct) => Error::Other(format!(
                "cannot mount on {}: opening /dev/fuse failed ({direct}), and so did the \
                 fallback through fusermount3 ({e}). /dev/fuse must be open to you: ask an \
                 administrator to make it mode 0666 (the usual setting)",
                mountpoint.display()
            )),
            None => e,
        }
    })
}

/// Mounts `mountpoint` with the setuid `fusermount3`, which passes the opened `/dev/fuse`
/// back over the socket named by `_FUSE_COMMFD` (as libfuse does).
fn mount_via_fusermount(mountpoint: &Path, options: &str) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| Error::io("creating a socket for fusermount3", e))?;
    let their_fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-o")
        .arg(options)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", their_fd.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only fcntl, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The socket must survive the exec: it is fusermount3's way back to us.
            let flags = libc::fcntl(their_fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(their_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("running fusermount3 (install the fuse3 package)", e))?;
    drop(theirs);
    let received = receive_fd(&ours);
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("waiting for fusermount3", e))?;
    match received {
        Ok(Some(fd)) if out.status.success() => Ok(fd),
        other => {
            let why = match other {
                Err(e) => format!(": {e}"),
                _ => String::new(),
            };
            Err(Error::Other(format!(
                "fusermount3 could not mount {}{why}: {}",
                mountpoint.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

/// Receives one file descriptor (SCM_RIGHTS) from `sock`; `None` if the peer sent none.
fn receive_fd(sock: &UnixStream) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    // u64 words: control messages need their header's alignment.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is valid (no name, no buffers); the buffers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    loop {
        // SAFETY: msg points to live buffers of the sizes it states.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n > 0 {
            break;
        }
        if n == 0 {
            return Ok(None);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // SAFETY: the kernel filled msg's control buffer; the macros walk it within its length.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Ok(None);
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
        Ok(Some(std::os::fd::OwnedFd::from_raw_fd(fd)))
    }
}

/// Unmounts, falling back to a lazy unmount when files are still open.
/// Returns whether the mount was only detached (busy: it lives on until its files close).
pub fn unmount(mountpoint: &Path) -> Result<bool> {
    unmount_with(mountpoint, false)
}

/// Unmounts; `lazy` detaches at once (`fusermount3 -uz`), busy or not. Returns whether the
/// mount was only detached.
pub fn unmount_with(mountpoint: &Path, lazy: bool) -> Result<bool> {
    let run = |args: &[&str]| {
        std::process::Command::new("fusermount3")
            .args(args)
            .arg(mountpoint)
            .stderr(std::process::Stdio::piped())
            .output()
    };
    if !lazy {
        let out = run(&["-u"]).ctx(|| "running fusermount3 (install the fuse3 package)".into())?;
        if out.status.success() {
            return Ok(false);
        }
        let msg = String::from_utf8_lossy(&out.stderr).to_string();
        if !msg.contains("busy") {
            return Err(Error::Other(format!(
                "fusermount3 -u {}: {}",
                mountpoint.display(),
                msg.trim()
            )));
        }
        tracing::warn!("{} is busy; detaching it lazily", mountpoint.display());
    }
    let out = run(&["-uz"]).ctx(|| "running fusermount3 (install the fuse3 package)".into())?;
    if out.status.success() {
        return Ok(true);
    }
    Err(Error::Other(format!(
        "fusermount3 -uz {}: {}",
        mountpoint.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// A mountpoint left by a mount process that died (`kill -9`) answers every access with
/// ENOTCONN (ECONNABORTED while the kernel is still tearing the connection down). If it is a dead oras-fs mount of this user, returns its absolute path, to be
/// detached (lazily: something may still hold it) so a new mount can go there; if it is
/// someone else's, says what to do.
pub fn dead_mount(mountpoint: &Path) -> Result<Option<PathBuf>> {
    match std::fs::metadata(mountpoint) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) => {}
        _ => return Ok(None),
    }
    let abs = absolute(mountpoint);
    let entry = mount_entry(&abs);
    if !entry.as_ref().is_some_and(|e| e.is_oras_fs_of(uid())) {
        return Err(Error::Usage(format!(
            "{} is a dead mount (Transport endpoint is not connected: the process that served \
             it is gone); run `oras-fs unmount {}` (or `fusermount3 -uz {}`), then mount again",
            mountpoint.display(),
            mountpoint.display(),
            mountpoint.display()
        )));
    }
    Ok(Some(abs))
}

/// Whether `path` is a mountpoint now (per /proc/mounts).
pub fn is_mounted(path: &std::path::Path) -> bool {
    mount_entry(&absolute(path)).is_some()
}

/// A line of `/proc/mounts`.
#[derive(Debug, PartialEq, Eq)]
struct MountEntry {
    source: String,
    fstype: String,
    options: String,
}

impl MountEntry {
    /// An oras-fs FUSE mount made by `uid`.
    fn is_oras_fs_of(&self, uid: u32) -> bool {
        // fusermount3 records the subtype (`fuse.oras-fs`); a direct mount only the source.
        let oras_fs =
            self.fstype == "fuse.oras-fs" || (self.fstype == "fuse" && self.source == "oras-fs");
        let user = format!("user_id={uid}");
        oras_fs && self.options.split(',').any(|o| o == user)
    }
}

/// The `/proc/mounts` entry of the (absolute) `path`, the last one if mounted over.
fn mount_entry(path: &Path) -> Option<MountEntry> {
    let want = mounts_escape(path);
    let table = std::fs::read_to_string("/proc/mounts").ok()?;
    table.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() >= 4 && f[1] == want).then(|| MountEntry {
            source: f[0].to_string(),
            fstype: f[2].to_string(),
            options: f[3].to_string(),
        })
    })
}

/// `path` as `/proc/mounts` writes it: blanks and backslashes escaped as octal.
pub fn mounts_escape(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\t' => out.push_str("\\011"),
            '\n' => out.push_str("\\012"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_mounts_of_oras_fs_and_this_user_are_recognised() {
        let e = |source: &str, fstype: &str, options: &str| MountEntry {
            source: source.into(),
            fstype: fstype.into(),
            options: options.into(),
        };
        let opts = "rw,nosuid,nodev,relatime,user_id=1000,group_id=1000";
        assert!(e("oras-fs", "fuse.oras-fs", opts).is_oras_fs_of(1000));
        assert!(e("oras-fs", "fuse", opts).is_oras_fs_of(1000));
        assert!(!e("oras-fs", "fuse.oras-fs", opts).is_oras_fs_of(1001));
        assert!(!e("sshfs#host:", "fuse.sshfs", opts).is_oras_fs_of(1000));
        assert!(!e("oras-fs", "fuse", "rw,user_id=10000").is_oras_fs_of(1000));
    }
}
