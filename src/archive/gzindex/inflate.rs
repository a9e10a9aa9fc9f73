//! The only code that reaches into zlib-rs's inflate internals, and so the only `unsafe` of
//! the gzip index. zran needs three things zlib-rs's stable [`zlib_rs::Inflate`] does not
//! offer: stopping at deflate block boundaries *and reading the bit position there*
//! (`data_type`), and later starting a raw inflater mid-byte (`prime`) with a saved window.
//! zlib-rs's `inflate` module has them behind its `__internal-api` feature (the one
//! `libz-rs-sys` builds on), which is why Cargo.toml pins the exact zlib-rs version.

use zlib_rs::c_api::z_stream;
use zlib_rs::inflate::{self, InflateConfig, InflateStream};
use zlib_rs::{InflateFlush, ReturnCode};

use crate::archive::FormatError;

/// What the inflater expects next: a gzip header, or raw deflate data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wrap {
    Gzip,
    Raw,
}

impl Wrap {
    fn config(self) -> InflateConfig {
        // 15 bits = 32 KiB window; +16 = gzip header and trailer (CRC and size are checked).
        InflateConfig {
            window_bits: match self {
                Wrap::Gzip => 15 + 16,
                Wrap::Raw => -15,
            },
        }
    }
}

/// The outcome of one [`Inflater::step`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Step {
    pub consumed: usize,
    pub produced: usize,
    /// The deflate stream (and, in gzip mode, its trailer) is complete.
    pub end: bool,
    /// Bits the inflater holds but has not used: the stream position is
    /// `consumed_bytes * 8 - held_bits`.
    pub held_bits: u64,
    /// Stopped between two deflate blocks (or right after a gzip header).
    pub at_block_boundary: bool,
    /// The block just finished was the stream's last.
    pub after_last_block: bool,
}

pub(super) struct Inflater {
    // Boxed: the stream must not move between calls once zlib-rs has initialised it.
    strm: Box<z_stream>,
}

impl Inflater {
    pub fn new(wrap: Wrap) -> Result<Self, FormatError> {
        let mut strm = Box::new(z_stream::default());
        match inflate::init(&mut strm, wrap.config()) {
            ReturnCode::Ok => Ok(Inflater { strm }),
            rc => Err(FormatError::new(format!("cannot start inflate: {rc:?}"))),
        }
    }

    fn stream(&mut self) -> Result<&mut InflateStream<'_>, FormatError> {
        // SAFETY: `strm` was initialised by `inflate::init` in `new` and is ended only in
        // `drop`; `InflateStream` is zlib-rs's own `repr(C)` view of a `z_stream`.
        unsafe { InflateStream::from_stream_mut(&mut *self.strm) }
            .ok_or_else(|| FormatError::new("inflate state lost"))
    }

    /// Starts over on a new stream (the next gzip member, or raw data).
    pub fn reset(&mut self, wrap: Wrap) -> Result<(), FormatError> {
        match inflate::reset_with_config(self.stream()?, wrap.config()) {
            ReturnCode::Ok => Ok(()),
            rc => Err(FormatError::new(format!("cannot reset inflate: {rc:?}"))),
        }
    }

    /// Feeds the low `bits` bits of `value` (at most 16) before the next input byte: the
    /// part of a byte a checkpoint starts in.
    pub fn prime(&mut self, bits: u8, value: u8) -> Result<(), FormatError> {
        match inflate::prime(self.stream()?, i32::from(bits), i32::from(value)) {
            ReturnCode::Ok => Ok(()),
            rc => Err(FormatError::new(format!("cannot prime inflate: {rc:?}"))),
        }
    }

    /// Sets the 32 KiB of output that precede a raw checkpoint.
    pub fn set_dictionary(&mut self, window: &[u8]) -> Result<(), FormatError> {
        match inflate::set_dictionary(self.stream()?, window) {
            ReturnCode::Ok => Ok(()),
            rc => Err(FormatError::new(format!("cannot set the window: {rc:?}"))),
        }
    }

    /// Inflates from `input` into `output`; with `stop_at_blocks`, returns at each deflate
    /// block boundary (zlib's `Z_BLOCK`).
    pub fn step(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        stop_at_blocks: bool,
    ) -> Result<Step, FormatError> {
        let avail_in = u32::try_from(input.len()).unwrap_or(u32::MAX);
        let avail_out = u32::try_from(output.len()).unwrap_or(u32::MAX);
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = avail_in;
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = avail_out;
        let flush = if stop_at_blocks {
            InflateFlush::Block
        } else {
            InflateFlush::NoFlush
        };
        let stream = self.stream()?;
        // SAFETY: next_in/next_out point into `input` and `output`, valid for avail_in and
        // avail_out bytes for the whole call (both borrowed until it returns).
        let rc = unsafe { inflate::inflate(stream, flush) };
        let strm = &mut *self.strm;
        let step = Step {
            consumed: (avail_in - strm.avail_in) as usize,
            produced: (avail_out - strm.avail_out) as usize,
            end: rc == ReturnCode::StreamEnd,
            held_bits: (strm.data_type & 63) as u64,
            at_block_boundary: strm.data_type & 128 != 0,
            after_last_block: strm.data_type & 64 != 0,
        };
        // Nothing keeps pointers into buffers that are about to be released.
        strm.next_in = std::ptr::null();
        strm.avail_in = 0;
        strm.next_out = std::ptr::null_mut();
        strm.avail_out = 0;
        match rc {
            ReturnCode::Ok | ReturnCode::StreamEnd | ReturnCode::BufError => Ok(step),
            ReturnCode::DataError => Err(FormatError::new("corrupt gzip data")),
            rc => Err(FormatError::new(format!("inflate failed: {rc:?}"))),
        }
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        if let Ok(stream) = self.stream() {
            let _ = inflate::end(stream);
        }
    }
}
