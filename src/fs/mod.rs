//! The FUSE filesystem, in layers as in mountpoint-s3 (no fuser types below `fuse`):
//! - [`tree`]: the inode table (names, sizes, where bytes come from);
//! - [`view`]: what a mount shows of a manifest or journal, hidden layers, notices, `.oras/`;
//! - `layer`: files inside tar, tar+gzip and tar+zstd layers, listed from a TOC, a seek
//!   index or a decompressed copy and read by verified chunks (the formats are in
//!   `crate::archive`);
//! - [`cache`]: the block cache of remote blobs (memory LRU over a disk cache by digest);
//! - [`filesystem`]: `OrasFs`, the POSIX semantics (docs/SEMANTICS.md), async, with the
//!   reading calls; `write` the writing calls, `handle` open files and prefetch, `siblings`
//!   prefetch for readers going through a directory's files, `tensors` whole-tensor fetches
//!   for model files, `journaling` how changes reach
//!   the journal, [`status`] what the mount tells its user;
//! - [`staging`]: the journal (an append-only log) and staged files of a writable mount;
//! - [`sync`]: pushing a writable mount's changes as one manifest;
//! - [`fuse`]: the fuser adapter, the only place that blocks on the async core;
//! - [`repository`]: mounts of a whole repository or registry, and tag mounts that follow
//!   their tag: listing, loading on first access, refresh;
//! - [`mount`]: the session's lifecycle (serve, signals, unmount, the final push);
//! - [`control`]: the control socket protocol, server and client;
//! - [`paths`]: the default cache directory and the private runtime directory;
//! - [`fusermount`]: mounting and unmounting through `fusermount3`, dead mounts.

pub mod cache;
pub mod control;
pub mod error;
pub mod filesystem;
pub mod fuse;
pub mod fusermount;
mod handle;
mod journaling;
mod layer;
pub mod mount;
pub mod paths;
pub mod repository;
mod siblings;
pub mod staging;
pub mod status;
pub mod sync;
mod tensors;
pub mod tree;
pub mod view;
mod write;
