//! The one streaming pass that builds an [`Index`]: a `Read` of the uncompressed stream that
//! records checkpoints as it inflates ([`Scanner`]), under the `tar` crate's header parsing,
//! with each file's data hashed in `PIECE_SIZE` pieces as it goes by.

use std::cell::Cell;
use std::io::{self, BufReader, Read};
use std::rc::Rc;

use super::inflate::{Inflater, Wrap};
use super::{
    deflate_bytes, BuildOptions, Checkpoint, Index, MAX_CHECKPOINTS, PIECE_SIZE, WINDOW_SIZE,
};
use crate::archive::{clean_path, Chunk, ChunkAt, Entry, EntryKind, FormatError};
use crate::digest::Digester;

/// Builds the index of the tar+gzip blob `reader` yields (exactly `compressed_size` bytes),
/// in one pass with bounded memory: the inflater, 32 KiB of recent output, the listing, and
/// the checkpoints (each window kept deflated).
pub fn build(
    reader: impl Read,
    compressed_size: u64,
    opts: &BuildOptions,
) -> Result<Index, FormatError> {
    let mut scanner = Scanner::new(reader, compressed_size, opts)?;
    let listing = read_listing(&mut scanner, opts.max_entries).and_then(|entries| {
        // The tar's end is not the stream's: inflate the rest (padding, more members) so that
        // every gzip trailer is checked and the sizes are known.
        io::copy(&mut scanner, &mut io::sink()).map_err(|e| FormatError::new(e.to_string()))?;
        Ok(entries)
    });
    // A failure of the scanner surfaces in the tar crate as an I/O error: report the cause.
    if let Some(e) = scanner.failure.take() {
        return Err(e);
    }
    let entries = listing?;
    if scanner.read_total != compressed_size || scanner.in_total != compressed_size {
        return Err(FormatError::new(format!(
            "the layer has {} bytes, {compressed_size} were expected",
            scanner.read_total
        )));
    }
    Ok(Index {
        compressed_size,
        uncompressed_size: scanner.out_total,
        checkpoints: scanner.checkpoints,
        entries,
    })
}

/// Reads the tar headers from the scanner's output and hashes the files' data.
/// Lists an uncompressed tar (a `…layer.v1.tar` image layer) the same way: its files'
/// pieces are `ChunkAt::Stream` offsets into the blob itself, each with its sha256.
pub fn list_tar(reader: impl Read, max_entries: usize) -> Result<Vec<Entry>, FormatError> {
    read_listing(reader, max_entries)
}

fn read_listing(scanner: impl Read, max_entries: usize) -> Result<Vec<Entry>, FormatError> {
    let tar_err = |e: io::Error| FormatError::new(format!("reading the tar: {e}"));
    let budget = Rc::new(HeaderBudget::default());
    let metered = Metered {
        inner: scanner,
        budget: budget.clone(),
    };
    // The tar crate reads headers 512 bytes at a time; buffering keeps inflate calls large.
    // Its `raw_file_position` counts what it read, so it stays an uncompressed offset.
    let mut archive = tar::Archive::new(BufReader::with_capacity(256 * 1024, metered));
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut iter = archive.entries().map_err(tar_err)?;
    loop {
        budget.arm();
        let next = iter.next();
        budget.disarm();
        let Some(entry) = next else { break };
        let mut entry = entry.map_err(tar_err)?;
        if entries.len() >= max_entries {
            return Err(FormatError::new(format!(
                "the tar has more than {max_entries} entries"
            )));
        }
        let ty = entry.header().entry_type();
        if ty.is_pax_global_extensions() {
            continue;
        }
        let mut meta = Meta::of_header(entry.header()).map_err(tar_err)?;
        if let Some(pax) = entry.pax_extensions().map_err(tar_err)? {
            for ext in pax {
                let ext = ext.map_err(tar_err)?;
                meta.apply_pax(ext.key_bytes(), ext.value_bytes())?;
            }
        }
        let name = utf8(&entry.path_bytes(), "entry name")?;
        if ty.is_dir() && is_root(&name) {
            // `tar -C dir .` starts with `./`: the root itself, nothing to list.
            continue;
        }
        let path = clean_path(&name)?;
        let link = entry
            .link_name_bytes()
            .map(|l| utf8(&l, "link target"))
            .transpose()?;
        let kind = if ty.is_file() || ty.is_contiguous() {
            let size = entry.size();
            let start = entry.raw_file_position();
            let chunks = hash_pieces(&mut entry, start, size, &mut buf)?;
            EntryKind::File { size, chunks }
        } else if ty.is_dir() {
            EntryKind::Dir
        } else if ty.is_symlink() {
            let target = link.filter(|t| !t.is_empty());
            let target = target.ok_or_else(|| FormatError::new("a symlink has no target"))?;
            EntryKind::Symlink { target }
        } else if ty.is_hard_link() {
            let target = link.ok_or_else(|| FormatError::new("a hard link has no target"))?;
            EntryKind::Hardlink {
                target: clean_path(&target)?,
            }
        } else if ty.is_gnu_sparse() {
            // Its data is not stored contiguously: no `ChunkAt::Stream` can describe it.
            return Err(FormatError::new(format!("{path:?} is a sparse file")));
        } else {
            EntryKind::Special
        };
        entries.push(Entry {
            path,
            kind,
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
            mtime: meta.mtime,
        });
    }
    Ok(entries)
}

/// What the tar crate may read to reach the next entry: it keeps GNU long names and PAX
/// records in memory whatever size their headers claim, so that size is bounded here.
const MAX_HEADER_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Default)]
struct HeaderBudget {
    used: Cell<u64>,
    armed: Cell<bool>,
}

impl HeaderBudget {
    fn arm(&self) {
        self.used.set(0);
        self.armed.set(true);
    }

    fn disarm(&self) {
        self.armed.set(false);
    }
}

/// The scanner's output, failing once the tar crate reads more than `MAX_HEADER_BYTES`
/// between two entries.
struct Metered<R> {
    inner: R,
    budget: Rc<HeaderBudget>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.budget.armed.get() {
            let used = self.budget.used.get() + n as u64;
            self.budget.used.set(used);
            if used > MAX_HEADER_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("more than {MAX_HEADER_BYTES} bytes of headers before an entry"),
                ));
            }
        }
        Ok(n)
    }
}

/// Reads a file's `size` bytes (at `start` in the stream) and lists them as digested pieces.
fn hash_pieces(
    data: &mut impl Read,
    start: u64,
    size: u64,
    buf: &mut [u8],
) -> Result<Vec<Chunk>, FormatError> {
    // `size` comes from the tar header: no reservation on its word.
    let mut chunks = Vec::with_capacity(size.div_ceil(PIECE_SIZE).min(1024) as usize);
    let mut at = 0;
    while at < size {
        let len = PIECE_SIZE.min(size - at);
        let mut hasher = Digester::sha256();
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = data
                .read(&mut buf[..want])
                .map_err(|e| FormatError::new(format!("reading the tar: {e}")))?;
            if n == 0 {
                return Err(FormatError::new("the tar ends inside a file"));
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        chunks.push(Chunk {
            file_offset: at,
            len,
            digest: hasher.finish(),
            at: ChunkAt::Stream { offset: start + at },
        });
        at += len;
    }
    Ok(chunks)
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, FormatError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| FormatError::new(format!("{what} {:?} is not UTF-8", bytes.escape_ascii())))
}

/// An entry's attributes: the header's, overridden by its PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

impl Meta {
    /// Empty or garbled numeric fields read as 0, as tar extractors (and `pull`) treat them:
    /// metadata never makes a layer unreadable.
    fn of_header(h: &tar::Header) -> io::Result<Meta> {
        Ok(Meta {
            mode: h.mode().unwrap_or(0o644) & 0o7777,
            uid: h.uid().map_or(0, |u| u32::try_from(u).unwrap_or(u32::MAX)),
            gid: h.gid().map_or(0, |g| u32::try_from(g).unwrap_or(u32::MAX)),
            mtime: h
                .mtime()
                .map_or(0, |m| i64::try_from(m).unwrap_or(i64::MAX)),
        })
    }

    fn apply_pax(&mut self, key: &[u8], value: &[u8]) -> Result<(), FormatError> {
        let number = || {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.split('.').next())
                .and_then(|v| v.parse::<i64>().ok())
        };
        match key {
            b"uid" => {
                self.uid = number()
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(self.uid)
            }
            b"gid" => {
                self.gid = number()
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(self.gid)
            }
            b"mtime" => self.mtime = number().unwrap_or(self.mtime),
            k if k.starts_with(b"GNU.sparse.") => {
                return Err(FormatError::new("sparse files (PAX) are not supported"))
            }
            _ => {}
        }
        Ok(())
    }
}

/// The uncompressed stream of a gzip blob (one or more members), as a `Read`, recording
/// checkpoints on the way: at a member start, or at a block boundary (with the window), once
/// at least `span` compressed bytes passed since the last one.
struct Scanner<R> {
    reader: R,
    compressed_size: u64,
    inbuf: Vec<u8>,
    in_pos: usize,
    in_len: usize,
    /// Bytes read from `reader` / consumed by the inflater.
    read_total: u64,
    in_total: u64,
    out_total: u64,
    max_out: u64,
    span_bits: u64,
    inflater: Inflater,
    /// Between members: the next byte starts a gzip header (or the blob ends).
    at_member_start: bool,
    /// The last `WINDOW_SIZE` bytes of output, as a ring at `out_total % WINDOW_SIZE`.
    recent: Vec<u8>,
    checkpoints: Vec<Checkpoint>,
    failure: Option<FormatError>,
    done: bool,
    /// Consecutive inflate calls that moved nothing.
    stalls: u32,
}

impl<R: Read> Scanner<R> {
    fn new(reader: R, compressed_size: u64, opts: &BuildOptions) -> Result<Self, FormatError> {
        Ok(Scanner {
            reader,
            compressed_size,
            inbuf: vec![0; 256 * 1024],
            in_pos: 0,
            in_len: 0,
            read_total: 0,
            in_total: 0,
            out_total: 0,
            max_out: opts.max_uncompressed,
            span_bits: opts.span.max(1).saturating_mul(8),
            inflater: Inflater::new(Wrap::Gzip)?,
            at_member_start: true,
            recent: vec![0; WINDOW_SIZE],
            checkpoints: Vec::new(),
            failure: None,
            done: false,
            stalls: 0,
        })
    }

    /// Whether a checkpoint at these positions is due (and would be strictly after the last):
    /// `span` after the last one, or a 16th of that at a member start, which costs no window
    /// (so eStargz-like layers, a member per file, get many cheap ones).
    fn due(&self, bits: u64, member_start: bool) -> bool {
        let span = if member_start {
            self.span_bits / 16
        } else {
            self.span_bits
        };
        if self.checkpoints.len() >= MAX_CHECKPOINTS {
            return false; // what `Index::from_bytes` accepts; reads just start further back
        }
        match self.checkpoints.last() {
            None => true,
            Some(last) => {
                bits > last.compressed_bits
                    && self.out_total > last.uncompressed
                    && bits - last.compressed_bits >= span
            }
        }
    }

    fn fill(&mut self) -> Result<(), FormatError> {
        if self.in_pos < self.in_len {
            return Ok(());
        }
        // Read at most one byte past the announced size: enough to notice a longer blob.
        let left = (self.compressed_size + 1).saturating_sub(self.read_total);
        let cap = self
            .inbuf
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = loop {
            match self.reader.read(&mut self.inbuf[..cap]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FormatError::new(format!("reading the layer: {e}"))),
            }
        };
        self.read_total += n as u64;
        if self.read_total > self.compressed_size {
            return Err(FormatError::new(format!(
                "the layer is longer than {} bytes",
                self.compressed_size
            )));
        }
        self.in_pos = 0;
        self.in_len = n;
        Ok(())
    }

    fn next_output(&mut self, out: &mut [u8]) -> Result<usize, FormatError> {
        loop {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            self.fill()?;
            let input_left = self.in_len - self.in_pos;
            if self.at_member_start {
                if input_left == 0 {
                    if self.checkpoints.is_empty() {
                        return Err(FormatError::new("the layer is empty"));
                    }
                    self.done = true;
                    return Ok(0);
                }
                if self.due(self.in_total * 8, true) {
                    self.checkpoints.push(Checkpoint {
                        compressed_bits: self.in_total * 8,
                        uncompressed: self.out_total,
                        window: Vec::new(),
                    });
                }
                if self.in_total > 0 {
                    self.inflater.reset(Wrap::Gzip)?;
                }
                self.at_member_start = false;
            }
            let step = self
                .inflater
                .step(&self.inbuf[self.in_pos..self.in_len], out, true)?;
            self.in_pos += step.consumed;
            self.in_total += step.consumed as u64;
            self.out_total += step.produced as u64;
            if self.out_total > self.max_out {
                return Err(FormatError::new(format!(
                    "the layer inflates to more than {} bytes",
                    self.max_out
                )));
            }
            self.remember(&out[..step.produced]);
            if step.end {
                self.at_member_start = true;
                self.stalls = 0;
            } else if step.consumed == 0 && step.produced == 0 {
                // Out of input inside a member; or, with input, the inflater going nowhere
                // (never expected: one retry, then a clean error rather than a spin).
                self.stalls += 1;
                if input_left == 0 || self.stalls > 2 {
                    return Err(FormatError::new("the gzip stream is truncated"));
                }
            } else {
                self.stalls = 0;
            }
            if !step.end && step.at_block_boundary && !step.after_last_block {
                let bits = (self.in_total * 8).saturating_sub(step.held_bits);
                if self.due(bits, false) {
                    let (older, newer) = self.recent.split_at(self.ring_pos());
                    let window = [newer, older].concat();
                    self.checkpoints.push(Checkpoint {
                        compressed_bits: bits,
                        uncompressed: self.out_total,
                        window: deflate_bytes(&window),
                    });
                }
            }
            if step.produced > 0 {
                return Ok(step.produced);
            }
        }
    }

    fn ring_pos(&self) -> usize {
        (self.out_total % WINDOW_SIZE as u64) as usize
    }

    /// Keeps the last `WINDOW_SIZE` bytes of output.
    fn remember(&mut self, mut data: &[u8]) {
        if data.len() > WINDOW_SIZE {
            data = &data[data.len() - WINDOW_SIZE..];
        }
        // `out_total` already counts `data`: it starts at the ring position before it.
        let start = (self.out_total - data.len() as u64) % WINDOW_SIZE as u64;
        let start = start as usize;
        let first = data.len().min(WINDOW_SIZE - start);
        self.recent[start..start + first].copy_from_slice(&data[..first]);
        self.recent[..data.len() - first].copy_from_slice(&data[first..]);
    }
}

impl<R: Read> Read for Scanner<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.failure {
            return Err(io::Error::new(io::ErrorKind::InvalidData, e.0.clone()));
        }
        self.next_output(buf).map_err(|e| {
            let err = io::Error::new(io::ErrorKind::InvalidData, e.0.clone());
            self.failure = Some(e);
            err
        })
    }
}

/// Whether a directory entry's name is the archive's root (`.`, `./`, `/`).
fn is_root(name: &str) -> bool {
    name.split('/').all(|c| c.is_empty() || c == ".")
}
