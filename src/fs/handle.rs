//! An open file: where its reads go, and the detector that grows a sequential reader's
//! prefetch window (as mountpoint-s3's prefetcher does).

use std::sync::Arc;

use super::tree::{Ino, Source};

/// First prefetch window of a sequential reader; it doubles up to `MAX_WINDOW`.
pub(super) const INITIAL_WINDOW: u64 = 1024 * 1024;
const MAX_WINDOW: u64 = 32 * 1024 * 1024;
/// Reads this close to the previous one still count as sequential (the kernel reorders).
const SEQUENTIAL_SLACK: u64 = 1024 * 1024;

/// Per-open-file state: where reads go, and the sequential-read detector.
pub(super) struct Handle {
    pub(super) ino: Ino,
    pub(super) source: Source,
    /// The local file (staged or unpacked); for a writable handle of a remote file it is
    /// opened on the first write (copy-on-write), not at open.
    pub(super) file: Option<Arc<std::fs::File>>,
    pub(super) writable: bool,
    pub(super) last_end: u64,
    pub(super) frontier: u64,
    pub(super) window: u64,
}

impl Handle {
    /// The byte range to prefetch after a read of `offset..offset+len`, growing the window
    /// while the reader stays sequential (as mountpoint-s3's prefetcher does).
    pub(super) fn prefetch(&mut self, offset: u64, len: u64, size: u64) -> std::ops::Range<u64> {
        let end = offset + len;
        let sequential = offset + SEQUENTIAL_SLACK >= self.last_end
            && offset <= self.last_end + SEQUENTIAL_SLACK;
        if !sequential {
            self.window = INITIAL_WINDOW;
            self.last_end = end;
            self.frontier = end;
            return 0..0;
        }
        self.last_end = self.last_end.max(end);
        if end + self.window / 2 < self.frontier || self.frontier >= size {
            return 0..0;
        }
        let start = self.frontier.max(end);
        let stop = (start + self.window).min(size);
        self.frontier = stop;
        self.window = (self.window * 2).min(MAX_WINDOW);
        start..stop
    }
}
