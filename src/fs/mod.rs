//! The FUSE filesystem, in layers as in mountpoint-s3:
//! - [`tree`]: the inode table (names, sizes, where bytes come from);
//! - [`cache`]: the block cache of remote blobs (memory LRU over a disk cache by digest);
//! - [`filesystem`]: POSIX semantics over both, with no FUSE types (docs/SEMANTICS.md);
//! - [`fuse`]: the fuser adapter;
//! - [`staging`]: the journal and staged files of a writable mount;
//! - [`mount`]: lifecycle (serve, signals, control socket, sync, unmount).
//! - [`control`]: the control socket protocol, server and client;
//! - [`paths`]: the default cache directory and the private runtime directory;
//! - [`fusermount`]: mounting and unmounting through `fusermount3`, dead mounts.

pub mod cache;
pub mod control;
pub mod filesystem;
pub mod fuse;
pub mod fusermount;
pub mod mount;
pub mod paths;
pub mod staging;
pub mod sync;
pub mod tree;
pub mod view;
