//! oras-fs: keep arbitrary files in OCI registries.
//!
//! The map, bottom up (each module uses only those above it in this list):
//! - [`error`], [`digest`]: the one error type; content digests and their verification.
//! - [`reference`], [`manifest`]: the data types of the OCI world.
//! - [`archive`]: layer formats as bytes: seekable (eStargz) layers, gzip seek indexes, image
//!   layer merges; no network, no FUSE.
//! - [`content`]: the [`content::Target`] abstraction (fetch, push, resolve) with a memory
//!   store, a file-directory store and an OCI image layout.
//! - [`auth`]: credentials (flags, Docker credential store) and bearer tokens.
//! - [`registry`]: a remote repository as a `Target`, speaking the distribution protocol.
//! - [`oras`]: `push` (of files), `pull` and `copy`, built only from `Target` calls.
//! - [`layer_index`]: seek indexes of gzip layers, published and found as referrers.
//! - [`fs`]: the FUSE filesystem (tree, block cache, POSIX semantics, the fuser adapter); a
//!   writable mount's sync pushes through [`oras`].
//! - `cli` (in the binary): argument parsing and output; a thin shell over the above.

pub mod archive;
pub mod auth;
pub mod content;
pub mod digest;
pub mod error;
pub mod fs;
pub mod layer_index;
pub mod manifest;
pub mod oras;
pub mod reference;
pub mod registry;

pub use error::{Error, Result};
