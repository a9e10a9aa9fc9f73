//! The failure of a filesystem call: the errno the kernel gets, and what happened. The context
//! travels up to the FUSE adapter, which logs it once, instead of each layer logging its own
//! part and handing up a bare number.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Errno {
    pub errno: i32,
    /// What failed, for the log (`None`: the errno says it all, as ENOENT for a lookup).
    pub context: Option<String>,
}

impl Errno {
    pub fn new(errno: i32, context: impl Into<String>) -> Errno {
        Errno {
            errno,
            context: Some(context.into()),
        }
    }

    /// An I/O error, keeping its errno, with what was being done.
    pub fn io(e: &std::io::Error, doing: impl fmt::Display) -> Errno {
        Errno::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("{doing}: {e}"),
        )
    }
}

impl From<i32> for Errno {
    fn from(errno: i32) -> Errno {
        Errno {
            errno,
            context: None,
        }
    }
}

/// An I/O error as it is, its message for context (see [`Errno::io`] to say what was done).
impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Errno {
        Errno::new(e.raw_os_error().unwrap_or(libc::EIO), e.to_string())
    }
}

impl PartialEq<i32> for Errno {
    fn eq(&self, other: &i32) -> bool {
        self.errno == *other
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = std::io::Error::from_raw_os_error(self.errno);
        match &self.context {
            Some(c) => write!(f, "{c} ({e})"),
            None => write!(f, "{e}"),
        }
    }
}
