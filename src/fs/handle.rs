//! An open file: where its reads go, and the detector that sizes what a read fetches: a
//! sequential reader gets a window ahead that grows with what it has read in order (as
//! mountpoint-s3's prefetcher grows one), a random reader small aligned fetches that grow only
//! while its misses stay close together.

use std::sync::Arc;

use super::cache::BLOCK;
use super::tensors::Extents;
use super::tree::{Ino, Source};

/// What is fetched ahead of a sequential reader: half of what it has read in order since its
/// last jump, within these bounds. Half, not a doubling window: a reader that stops (the end
/// of a tensor read through mmap, then a jump to another) leaves at most half as much again
/// fetched for nothing.
pub(super) const INITIAL_WINDOW: u64 = 1024 * 1024;
const MAX_WINDOW: u64 = 32 * 1024 * 1024;
/// Reads this close to the previous one still count as sequential (the kernel reorders).
const SEQUENTIAL_SLACK: u64 = 1024 * 1024;
/// A non-sequential read this close to the previous one shows locality (a reader working
/// through one region, e.g. a database page cluster): its fetch doubles, up to `MAX_HOP`.
const NEAR: u64 = 8 * 1024 * 1024;
const MAX_HOP: u64 = 1024 * 1024;
/// A jump into a known tensor fetches the rest of it at once, up to this much (the window
/// goes on from there if the reader does).
const MAX_TENSOR_FETCH: u64 = 64 * 1024 * 1024;
/// How far past a tensor's end the kernel's readahead (128 KiB on a FUSE mount) may read
/// for a reader that stops there.
const PAST_TENSOR: u64 = 256 * 1024;
/// Fetched past a tensor's end with it: the kernel's read-around of the tensor's last pages
/// asks for a 128 KiB window that can run past the end, and the reader waits for all of it.
/// Left out, that wait was one round trip per tensor, a quarter of a random model load at
/// 20 ms.
const READ_AROUND: u64 = 128 * 1024;

/// Per-open-file state: where reads go, and the access-pattern detector.
pub(super) struct Handle {
    pub(super) ino: Ino,
    pub(super) source: Source,
    /// The local file (staged or unpacked); for a writable handle of a remote file it is
    /// opened on the first write (copy-on-write), not at open.
    pub(super) file: Option<Arc<std::fs::File>>,
    pub(super) writable: bool,
    pub(super) pattern: Pattern,
    pub(super) tensors: TensorHint,
}

/// What a handle knows of where its file's tensors lie (`fs::tensors`).
pub(super) enum TensorHint {
    /// Not a model file, or its header gave nothing.
    None,
    /// A model file whose header is read at the first read past its length field.
    Unread,
    Loading,
    Known(Arc<Extents>),
}

impl TensorHint {
    pub(super) fn extents(&self) -> Option<&Extents> {
        match self {
            TensorHint::Known(e) => Some(e),
            _ => None,
        }
    }
}

/// What a handle's reads looked like so far.
pub(super) struct Pattern {
    last_end: u64,
    /// Where the current sequential run started (its last jump).
    run_start: u64,
    frontier: u64,
    /// What a non-sequential read fetches: one block, doubled while misses stay near.
    hop: u64,
    /// The end of the tensor the last jump landed in: the window stops there unless the
    /// reader goes on past it (then it is reading in file order).
    tensor_end: Option<u64>,
}

impl Default for Pattern {
    fn default() -> Pattern {
        Pattern {
            last_end: 0,
            run_start: 0,
            frontier: 0,
            hop: BLOCK,
            tensor_end: None,
        }
    }
}

impl Pattern {
    /// The byte range to fetch along with a read of `offset..offset+len`: ahead of a
    /// sequential reader, half of what it has read in order, asked for in batches once half
    /// of that is consumed; around a random read, the aligned `hop` holding it (one block
    /// unless recent misses were near), or with `tensors` known, the rest of the tensor it
    /// jumped into.
    pub(super) fn prefetch(
        &mut self,
        offset: u64,
        len: u64,
        size: u64,
        tensors: Option<&Extents>,
    ) -> std::ops::Range<u64> {
        let end = offset + len;
        let sequential = offset + SEQUENTIAL_SLACK >= self.last_end
            && offset <= self.last_end + SEQUENTIAL_SLACK;
        if !sequential {
            let near = offset.abs_diff(self.last_end) <= NEAR;
            self.hop = if near {
                (self.hop * 2).min(MAX_HOP)
            } else {
                BLOCK
            };
            self.last_end = end;
            self.run_start = offset;
            self.frontier = end;
            self.tensor_end = tensors.and_then(|t| t.end_of_last_overlapping(offset..end));
            if let Some(tensor_end) = self.tensor_end {
                let start = offset / BLOCK * BLOCK;
                let stop = (tensor_end + READ_AROUND)
                    .min(offset + MAX_TENSOR_FETCH)
                    .max(end)
                    .min(size);
                self.frontier = stop;
                return start..stop;
            }
            let start = offset / self.hop * self.hop;
            return start.min(size)..(start + self.hop).max(end).min(size);
        }
        self.last_end = self.last_end.max(end);
        // The kernel's readahead runs a little past the end of a tensor the reader finishes;
        // only a read starting further on shows a reader going on in file order.
        if self.tensor_end.is_some_and(|t| offset > t + PAST_TENSOR) {
            self.tensor_end = None;
        }
        let limit = self.tensor_end.map_or(size, |t| t + READ_AROUND).min(size);
        let ahead = (end.saturating_sub(self.run_start) / 2).clamp(INITIAL_WINDOW, MAX_WINDOW);
        if self.frontier.saturating_sub(end) > ahead / 2 || self.frontier >= limit {
            return 0..0;
        }
        let start = self.frontier.max(end);
        let stop = (end + ahead).min(limit);
        self.frontier = stop;
        start..stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    #[test]
    fn far_random_reads_fetch_one_aligned_block() {
        let mut p = Pattern::default();
        p.prefetch(0, 4096, GIB, None);
        for at in [700 * MIB + 5000, 3 * MIB + 70_000, 900 * MIB, 100 * MIB + 1] {
            let r = p.prefetch(at, 4096, GIB, None);
            assert_eq!(r, at / BLOCK * BLOCK..at / BLOCK * BLOCK + BLOCK, "at {at}");
        }
    }

    #[test]
    fn near_misses_double_the_fetch_up_to_a_bound() {
        let mut p = Pattern::default();
        p.prefetch(500 * MIB, 4096, GIB, None);
        let mut lens = Vec::new();
        for i in 1..8 {
            let r = p.prefetch(500 * MIB + i * 3 * MIB, 4096, GIB, None);
            lens.push(r.end - r.start);
        }
        assert_eq!(lens[0], 2 * BLOCK);
        assert!(lens.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*lens.last().unwrap(), MAX_HOP);
        // A far miss starts again from one block.
        let r = p.prefetch(10 * MIB, 4096, GIB, None);
        assert_eq!(r.end - r.start, BLOCK);
    }

    #[test]
    fn a_jump_into_a_tensor_fetches_it_and_the_read_around_past_its_end() {
        let mut header =
            br#"{"a":{"dtype":"F16","shape":[1],"data_offsets":[0,20971520]},"#.to_vec();
        header.extend_from_slice(
            br#""b":{"dtype":"F16","shape":[1],"data_offsets":[20971520,104857600]}}"#,
        );
        let base = 8 + header.len() as u64;
        let tensors = Extents::from_safetensors(&header, GIB).unwrap();
        let mut p = Pattern::default();
        p.prefetch(0, 4096, GIB, Some(&tensors));
        let r = p.prefetch(base + 5 * MIB, 4096, GIB, Some(&tensors));
        assert_eq!(r.end, base + 20 * MIB + READ_AROUND);
        // Read on to the end: nothing more is asked for, even by reads just past it.
        let mut at = base + 5 * MIB + 4096;
        while at < base + 20 * MIB + READ_AROUND {
            assert_eq!(
                p.prefetch(at, 128 * 1024, GIB, Some(&tensors)),
                0..0,
                "at {at}"
            );
            at += 128 * 1024;
        }
        // A big tensor: its fetch stops at the bound, and the window goes on to its end and the
        // read-around past it.
        let r = p.prefetch(base + 30 * MIB, 4096, GIB, Some(&tensors));
        assert_eq!(r.end, base + 30 * MIB + MAX_TENSOR_FETCH);
        let mut stop = r.end;
        let mut at = base + 30 * MIB;
        while at < base + 100 * MIB {
            stop = stop.max(p.prefetch(at, 128 * 1024, GIB, Some(&tensors)).end);
            at += 128 * 1024;
        }
        assert_eq!(stop, base + 100 * MIB + READ_AROUND);
    }

    #[test]
    fn sequential_reads_fetch_half_as_much_again_ahead() {
        let mut p = Pattern::default();
        let step = 128 * 1024;
        let mut batches = 0;
        let mut longest = 0;
        for i in 0..512 {
            let end = (i + 1) * step;
            let r = p.prefetch(i * step, step, GIB, None);
            if !r.is_empty() {
                batches += 1;
                longest = longest.max(r.end - r.start);
            }
            // Never more than half again what was read (or the first window) ahead.
            assert!(
                p.frontier - end <= (end / 2).max(INITIAL_WINDOW),
                "at {end}"
            );
        }
        // 64 MiB read: the window has grown to its bound, in few batches.
        assert!(p.frontier - 64 * MIB >= MAX_WINDOW / 2);
        assert!(longest >= MAX_WINDOW / 4, "{longest}");
        assert!(batches <= 24, "{batches} batches");
    }
}
