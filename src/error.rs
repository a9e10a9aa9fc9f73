//! One error type for the library. Each variant names the problem and, where there is one,
//! what the user can do next: the CLI prints `Display` as is.

use std::path::PathBuf;

use crate::digest::Digest;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex> (or sha512:<128 hex>)")]
    InvalidDigest(String),

    #[error("invalid manifest{context}: {reason}")]
    InvalidManifest { context: String, reason: String },

    #[error(
        "digest mismatch for {expected}: the bytes received hash to {actual}; \
         the registry or the network corrupted the data (nothing was written in place)"
    )]
    DigestMismatch { expected: Digest, actual: Digest },

    #[error(
        "size mismatch for {digest}: expected {expected} bytes, received {actual}; \
         the registry or the network truncated the data (nothing was written in place)"
    )]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },

    #[error("{what} not found: {name}")]
    NotFound { what: &'static str, name: String },

    #[error(
        "authentication to {registry} failed{detail}; check the credentials \
         (`oras-fs login {registry}`, or -u/--password-stdin)"
    )]
    Unauthorized { registry: String, detail: String },

    #[error(
        "{who} {access} access to {repository} on {registry} (the registry answered \
         insufficient_scope); {hint}"
    )]
    InsufficientScope {
        /// "the credentials lack" or "anonymous access lacks".
        who: &'static str,
        registry: String,
        repository: String,
        access: &'static str,
        hint: String,
    },

    #[error("access to {what} denied by the registry (HTTP 403): the credentials lack permission")]
    Forbidden { what: String },

    #[error("registry {registry} answered HTTP {status} for {what} ({path}){detail}")]
    Registry {
        registry: String,
        what: String,
        path: String,
        status: u16,
        detail: String,
    },

    #[error("cannot reach {registry}: {source}{hint}")]
    Connect {
        registry: String,
        hint: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("transfer from {registry} failed: {source}")]
    Transfer {
        registry: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("the registry misbehaved: {0}")]
    Protocol(String),

    #[error(
        "refusing path {path:?} ({reason}); use --allow-path-traversal (pull) or \
         --disable-path-validation (push) if you trust it"
    )]
    UnsafePath { path: String, reason: String },

    #[error(
        "directory layer {title:?} unpacks to more than {limit} bytes, the limit for one \
         layer; nothing of it was kept (raise the limit with `pull --max-unpacked-size`, or \
         `--cache-size` for a mount, if you trust the artifact)"
    )]
    UnpackTooLarge { title: String, limit: u64 },

    /// A mount's sync found its tag moved by someone else: nothing is overwritten.
    #[error(
        "{reference} moved since it was mounted (mounted {mounted}, now {now}); nothing was \
         overwritten and the changes stay staged. Push them elsewhere with \
         `oras-fs sync --push-to REF`, or overwrite with `oras-fs sync --force`"
    )]
    TagMoved {
        reference: String,
        mounted: crate::digest::Digest,
        /// The digest it points at now, or `deleted`.
        now: String,
    },

    #[error("{path}: file exists; remove it or drop --keep-old-files")]
    FileExists { path: PathBuf },

    #[error("credentials: {0}")]
    Credentials(String),

    #[error("TLS: {0}")]
    Tls(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("mirror {mirror} served corrupt bytes ({source}); it is passed over from now on")]
    MirrorCorrupt { mirror: String, source: Box<Error> },

    #[error("{0}")]
    Usage(String),

    /// The command was stopped by a signal; what it had partly written is removed.
    #[error("interrupted by {name}: files it had partly written were removed, finished ones kept")]
    Interrupted { name: &'static str, number: i32 },

    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A registry refused a request as too large (413): a blob is sent again in chunks.
    pub fn is_too_large(&self) -> bool {
        matches!(self, Error::Registry { status: 413, .. })
    }

    /// Whether the same request may succeed if tried again (network faults, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Transfer { .. } | Error::MirrorCorrupt { .. } => true,
            Error::Registry { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

impl Error {
    /// The error with `(note)` added to its message, of the same kind (callers match on
    /// kinds: a retry on `Unauthorized`, `--force` on `NotFound`). Kinds with no free text
    /// (`NotFound`, mismatches) stay as they are.
    pub fn with_note(mut self, note: &str) -> Self {
        let text = match &mut self {
            Error::Registry { detail, .. } | Error::Unauthorized { detail, .. } => detail,
            Error::Connect { hint, .. } => hint,
            Error::Forbidden { what } => what,
            Error::Protocol(s) | Error::Other(s) | Error::Tls(s) | Error::Credentials(s) => s,
            _ => return self,
        };
        text.push_str(&format!(" ({note})"));
        self
    }
}

/// Adds a context string to `std::io::Result`s.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
