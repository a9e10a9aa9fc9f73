//! A seek index for a plain tar+gzip layer (zran's idea, as in AWS SOCI): built in one
//! streaming pass, it keeps a decompressor checkpoint (bit position + the 32 KiB window that
//! precedes it) every `span` bytes of compressed data, and the tar listing with each file's
//! data offset in the uncompressed stream and the sha256 of each 1 MiB piece. A later read of
//! one file then fetches the compressed bytes from the checkpoint before it and inflates only
//! those, and the piece digests verify what it got.
//!
//! - [`build`]: the streaming pass (gzip members, block boundaries, tar headers, hashing).
//! - [`Index::compressed_range`] / [`Index::extract`]: which bytes to fetch, and inflating them.
//! - [`Index::to_bytes`] / [`Index::from_bytes`]: the stored form (see `format`).

mod format;
mod inflate;
mod scan;
#[cfg(test)]
mod tests;

use std::io::{Read, Write};
use std::ops::Range;

use self::inflate::{Inflater, Wrap};
use crate::archive::{Entry, FormatError};

pub use self::scan::{build, list_tar};

/// The deflate window: a checkpoint inside a member needs the 32 KiB of output before it.
pub const WINDOW_SIZE: usize = 32 * 1024;
/// At most this many checkpoints (at the default 4 MiB span, they cover a 4 TiB layer).
pub const MAX_CHECKPOINTS: usize = 1 << 20;
/// Files are listed as pieces of this size (the last one shorter), each with its sha256.
pub const PIECE_SIZE: u64 = 1024 * 1024;

/// Limits of one [`build`].
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Compressed bytes between checkpoints (at least; checkpoints sit on block boundaries).
    pub span: u64,
    /// Refuse layers that inflate to more than this (gzip bombs).
    pub max_uncompressed: u64,
    /// Refuse tars with more entries than this (the listing is kept in memory, and its
    /// stored form, ~200 bytes an entry, must stay within what `Index::from_bytes` accepts).
    pub max_entries: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            span: 4 * 1024 * 1024,
            max_uncompressed: 64 * 1024 * 1024 * 1024,
            max_entries: 500_000,
        }
    }
}

/// Where inflating can start: a gzip member's first byte (no window), or a deflate block
/// boundary inside a member, with the window that precedes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Position in the compressed blob, in bits (block boundaries need not be byte-aligned).
    compressed_bits: u64,
    /// Position in the uncompressed stream.
    uncompressed: u64,
    /// The preceding 32 KiB of output, raw-deflated (it is kept in memory and stored); empty
    /// for a member start.
    window: Vec<u8>,
}

impl Checkpoint {
    /// The first compressed byte inflating from here needs.
    pub fn compressed_offset(&self) -> u64 {
        self.compressed_bits / 8
    }

    pub fn uncompressed_offset(&self) -> u64 {
        self.uncompressed
    }

    /// Starts at a gzip member's header (rather than inside a member's deflate data).
    pub fn is_member_start(&self) -> bool {
        self.window.is_empty()
    }

    fn window(&self) -> Result<Vec<u8>, FormatError> {
        inflate_window(&self.window)
    }
}

/// A layer's seek index: see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    compressed_size: u64,
    uncompressed_size: u64,
    /// Strictly increasing in both positions; the first is the blob's start.
    checkpoints: Vec<Checkpoint>,
    /// The tar's entries in order; file chunks are `ChunkAt::Stream` pieces of `PIECE_SIZE`.
    entries: Vec<Entry>,
}

impl Index {
    pub fn compressed_size(&self) -> u64 {
        self.compressed_size
    }

    pub fn uncompressed_size(&self) -> u64 {
        self.uncompressed_size
    }

    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.checkpoints
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Which checkpoint to start from, and which compressed bytes to fetch, to produce
    /// `uncompressed` (clamped to the stream): from the checkpoint at or before its start to
    /// the first checkpoint at or after its end, or to the end of the blob.
    pub fn compressed_range(&self, uncompressed: Range<u64>) -> (usize, Range<u64>) {
        let start = uncompressed.start.min(self.uncompressed_size);
        let end = uncompressed.end.clamp(start, self.uncompressed_size);
        // `checkpoints[0]` is at 0, so there is always one at or before `start`.
        let id = self
            .checkpoints
            .partition_point(|c| c.uncompressed <= start)
            .saturating_sub(1);
        let from = self
            .checkpoints
            .get(id)
            .map_or(0, |c| c.compressed_offset());
        let to = self
            .checkpoints
            .iter()
            .skip(id + 1)
            .find(|c| c.uncompressed >= end)
            .map_or(self.compressed_size, |c| c.compressed_bits.div_ceil(8));
        (id, from..to.max(from))
    }

    /// Like [`Index::compressed_range`], but ending where the wanted bytes most likely end
    /// (interpolated between the checkpoints around `uncompressed.end`, plus a margin for
    /// deflate blocks) rather than at the next checkpoint: a read that crosses a checkpoint
    /// then costs about one span and the bytes, not two spans. When the estimate falls short,
    /// [`Index::extract`] fails and the caller fetches the rest up to `compressed_range`'s end.
    pub fn likely_range(&self, uncompressed: Range<u64>) -> (usize, Range<u64>) {
        const MARGIN: u64 = 256 * 1024;
        let (id, safe) = self.compressed_range(uncompressed.clone());
        let end = uncompressed.end.min(self.uncompressed_size);
        let after = self.checkpoints.partition_point(|c| c.uncompressed <= end);
        let (lo, hi) = match (
            after.checked_sub(1).and_then(|i| self.checkpoints.get(i)),
            self.checkpoints.get(after),
        ) {
            (Some(lo), Some(hi)) => (
                (lo.uncompressed, lo.compressed_offset()),
                (hi.uncompressed, hi.compressed_bits.div_ceil(8)),
            ),
            (Some(lo), None) => (
                (lo.uncompressed, lo.compressed_offset()),
                (self.uncompressed_size, self.compressed_size),
            ),
            _ => return (id, safe),
        };
        let span_u = (hi.0 - lo.0).max(1) as u128;
        let span_c = hi.1.saturating_sub(lo.1) as u128;
        let guess = lo.1 + (((end - lo.0) as u128 * span_c).div_ceil(span_u)) as u64 + MARGIN;
        (id, safe.start..guess.clamp(safe.start, safe.end))
    }

    /// Inflates `compressed` (the blob's bytes from `checkpoints()[checkpoint]`'s
    /// `compressed_offset()` on, as [`Index::compressed_range`] says) and returns exactly the
    /// `uncompressed` bytes.
    pub fn extract(
        &self,
        checkpoint: usize,
        compressed: &[u8],
        uncompressed: Range<u64>,
    ) -> Result<Vec<u8>, FormatError> {
        let cp = self
            .checkpoints
            .get(checkpoint)
            .ok_or_else(|| FormatError::new(format!("no checkpoint {checkpoint}")))?;
        if uncompressed.start < cp.uncompressed
            || uncompressed.start > uncompressed.end
            || uncompressed.end > self.uncompressed_size
        {
            return Err(FormatError::new(format!(
                "range {uncompressed:?} is not after checkpoint {checkpoint} within the stream"
            )));
        }
        let want = usize::try_from(uncompressed.end - uncompressed.start)
            .map_err(|_| FormatError::new("range too large"))?;
        let mut skip = uncompressed.start - cp.uncompressed;
        let mut out = Vec::with_capacity(want.min(16 << 20));
        if want == 0 {
            return Ok(out);
        }

        let mut input = compressed;
        let (mut inflater, mut wrap) = if cp.is_member_start() {
            (Inflater::new(Wrap::Gzip)?, Wrap::Gzip)
        } else {
            let mut inflater = Inflater::new(Wrap::Raw)?;
            let used = (cp.compressed_bits % 8) as u8;
            if used != 0 {
                let (&first, rest) = input
                    .split_first()
                    .ok_or_else(|| FormatError::new("no compressed bytes"))?;
                inflater.prime(8 - used, first >> used)?;
                input = rest;
            }
            inflater.set_dictionary(&cp.window()?)?;
            (inflater, Wrap::Raw)
        };
        // Bits of `compressed` consumed before `input`, to find a member's end.
        // (A primed byte counts whole: its used bits are among the inflater's held bits.)
        let mut base_bits = (compressed.len() - input.len()) as u64 * 8;
        let mut scratch = vec![0u8; 64 * 1024];
        loop {
            let step = inflater.step(input, &mut scratch, false)?;
            input = &input[step.consumed..];
            base_bits += step.consumed as u64 * 8;
            let mut produced = &scratch[..step.produced];
            let skipped = produced
                .len()
                .min(usize::try_from(skip).unwrap_or(usize::MAX));
            skip -= skipped as u64;
            produced = &produced[skipped..];
            let take = produced.len().min(want - out.len());
            out.extend_from_slice(&produced[..take]);
            if out.len() == want {
                return Ok(out);
            }
            if step.end {
                // The member's data ends at the byte after its last bit; a raw inflater has
                // not read the 8-byte trailer, a gzip one has.
                let end_bits = base_bits.saturating_sub(step.held_bits);
                let next = end_bits.div_ceil(8) + if wrap == Wrap::Raw { 8 } else { 0 };
                let next = usize::try_from(next).unwrap_or(usize::MAX);
                input = compressed.get(next..).unwrap_or(&[]);
                base_bits = next as u64 * 8;
                if input.is_empty() {
                    break;
                }
                wrap = Wrap::Gzip;
                inflater.reset(wrap)?;
            } else if step.consumed == 0 && step.produced == 0 {
                break;
            }
        }
        Err(FormatError::new(
            "the compressed bytes end before the requested range",
        ))
    }
}

/// Raw-deflates a window (or the stored listing) for keeping.
fn deflate_bytes(window: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(window);
    enc.finish().unwrap_or_default()
}

/// Inflates a kept window, which must be exactly `WINDOW_SIZE` bytes.
fn inflate_window(deflated: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut window = Vec::with_capacity(WINDOW_SIZE + 1);
    flate2::read::DeflateDecoder::new(deflated)
        .take(WINDOW_SIZE as u64 + 1)
        .read_to_end(&mut window)
        .map_err(|e| FormatError::new(format!("corrupt checkpoint window: {e}")))?;
    if window.len() != WINDOW_SIZE {
        return Err(FormatError::new("a checkpoint window is not 32 KiB"));
    }
    Ok(window)
}
