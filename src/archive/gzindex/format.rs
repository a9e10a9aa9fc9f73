//! The stored form of an [`Index`], version 1 (all integers little-endian):
//!
//! ```text
//! magic        8 bytes  "oras-gzi"
//! version      u32      1
//! listing_len  u32      then `listing_len` bytes: raw deflate of the JSON listing
//! count        u32      checkpoints, then `count` times:
//!   bits       u64      compressed position in bits
//!   out        u64      uncompressed position
//!   window_len u32      then `window_len` bytes: raw deflate of the 32 KiB window (0: none)
//! sha256       32 bytes of everything before it (raw deflate has no checksum of its own)
//! ```
//!
//! The JSON listing is `{"compressedSize", "uncompressedSize", "pieceSize", "entries": [...]}`,
//! each entry `{"path", "type": "dir"|"file"|"symlink"|"hardlink"|"special", "mode", "uid",
//! "gid", "mtime"}`, plus for files `"size"`, `"offset"` (of the data in the uncompressed
//! stream) and `"digests"` (sha256 of each `pieceSize` piece), for links `"target"`.
//! Reading refuses anything out of bounds (see [`Index::from_bytes`]).

use std::io::Read;

use serde::{Deserialize, Serialize};

use super::{deflate_bytes, inflate_window, Checkpoint, Index, MAX_CHECKPOINTS, PIECE_SIZE};
use crate::archive::{clean_path, Chunk, ChunkAt, Entry, EntryKind, FormatError};
use crate::digest::Digest;

const MAGIC: &[u8; 8] = b"oras-gzi";
const VERSION: u32 = 1;
/// Bound on hostile input: the inflated listing.
const MAX_LISTING: u64 = 256 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Listing {
    compressed_size: u64,
    uncompressed_size: u64,
    piece_size: u64,
    entries: Vec<StoredEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredEntry {
    path: String,
    #[serde(rename = "type")]
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digests: Option<Vec<Digest>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

impl Index {
    /// The stored form (see the `format` module for the layout).
    pub fn to_bytes(&self) -> Vec<u8> {
        let listing = Listing {
            compressed_size: self.compressed_size,
            uncompressed_size: self.uncompressed_size,
            piece_size: PIECE_SIZE,
            entries: self.entries.iter().map(store_entry).collect(),
        };
        // Serialising plain structs of strings and numbers cannot fail.
        let json = serde_json::to_vec(&listing).unwrap_or_default();
        let listing = deflate_bytes(&json);
        let mut out = Vec::with_capacity(listing.len() + self.checkpoints.len() * 20_000 + 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(listing.len() as u32).to_le_bytes());
        out.extend_from_slice(&listing);
        out.extend_from_slice(&(self.checkpoints.len() as u32).to_le_bytes());
        for cp in &self.checkpoints {
            out.extend_from_slice(&cp.compressed_bits.to_le_bytes());
            out.extend_from_slice(&cp.uncompressed.to_le_bytes());
            out.extend_from_slice(&(cp.window.len() as u32).to_le_bytes());
            out.extend_from_slice(&cp.window);
        }
        let sum = Digest::of(&out);
        out.extend_from_slice(&hex_to_bytes(sum.hex()));
        out
    }

    /// Reads the stored form, checking everything: sizes and counts bounded, checkpoints
    /// strictly increasing within the sizes (the first at 0), windows exactly 32 KiB or absent
    /// (then at a byte boundary), paths clean, file data within the stream, one digest per
    /// piece. Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Index, FormatError> {
        let body_len = bytes
            .len()
            .checked_sub(32)
            .ok_or_else(|| FormatError::new("the index is truncated"))?;
        let (body, sum) = bytes.split_at(body_len);
        let mut r = Cursor(body);
        if r.take(8)? != MAGIC {
            return Err(FormatError::new("not a gzip index (bad magic)"));
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(FormatError::new(format!(
                "gzip index version {version} is not supported"
            )));
        }
        if hex_to_bytes(Digest::of(body).hex()) != sum {
            return Err(FormatError::new("the index's checksum does not match"));
        }
        let listing_len = r.u32()? as usize;
        let deflated = r.take(listing_len)?;
        let mut json = Vec::new();
        flate2::read::DeflateDecoder::new(deflated)
            .take(MAX_LISTING + 1)
            .read_to_end(&mut json)
            .map_err(|e| FormatError::new(format!("corrupt index listing: {e}")))?;
        if json.len() as u64 > MAX_LISTING {
            return Err(FormatError::new("the index listing is too large"));
        }
        let listing: Listing = serde_json::from_slice(&json)
            .map_err(|e| FormatError::new(format!("bad index listing: {e}")))?;
        if listing.piece_size != PIECE_SIZE {
            return Err(FormatError::new("unsupported piece size"));
        }
        let (csize, usize_) = (listing.compressed_size, listing.uncompressed_size);

        let count = r.u32()? as usize;
        // Each checkpoint takes at least 20 bytes: a count beyond that is a lie.
        if count > MAX_CHECKPOINTS || count > r.0.len() / 20 || count == 0 {
            return Err(FormatError::new("bad checkpoint count"));
        }
        let mut checkpoints: Vec<Checkpoint> = Vec::with_capacity(count);
        for _ in 0..count {
            let cp = Checkpoint {
                compressed_bits: r.u64()?,
                uncompressed: r.u64()?,
                window: {
                    let len = r.u32()? as usize;
                    r.take(len)?.to_vec()
                },
            };
            let ordered = match checkpoints.last() {
                None => cp.compressed_bits == 0 && cp.uncompressed == 0,
                Some(last) => {
                    cp.compressed_bits > last.compressed_bits && cp.uncompressed > last.uncompressed
                }
            };
            if !ordered
                || cp.compressed_bits / 8 >= csize
                || cp.uncompressed > usize_
                || (cp.window.is_empty() && cp.compressed_bits % 8 != 0)
            {
                return Err(FormatError::new("bad checkpoint"));
            }
            if !cp.window.is_empty() {
                inflate_window(&cp.window)?;
            }
            checkpoints.push(cp);
        }
        if !r.0.is_empty() {
            return Err(FormatError::new("trailing bytes after the index"));
        }
        let entries = listing
            .entries
            .into_iter()
            .map(|e| load_entry(e, usize_))
            .collect::<Result<_, _>>()?;
        Ok(Index {
            compressed_size: csize,
            uncompressed_size: usize_,
            checkpoints,
            entries,
        })
    }
}

fn store_entry(e: &Entry) -> StoredEntry {
    let mut s = StoredEntry {
        path: e.path.clone(),
        kind: String::new(),
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime: e.mtime,
        size: None,
        offset: None,
        digests: None,
        target: None,
    };
    s.kind = match &e.kind {
        EntryKind::Dir => "dir",
        EntryKind::File { size, chunks } => {
            s.size = Some(*size);
            s.offset = chunks.first().map(|c| match c.at {
                ChunkAt::Stream { offset } => offset,
                ChunkAt::Member { offset, .. } => offset,
            });
            s.digests = Some(chunks.iter().map(|c| c.digest.clone()).collect());
            "file"
        }
        EntryKind::Symlink { target } => {
            s.target = Some(target.clone());
            "symlink"
        }
        EntryKind::Hardlink { target } => {
            s.target = Some(target.clone());
            "hardlink"
        }
        EntryKind::Special => "special",
    }
    .to_string();
    s
}

fn load_entry(s: StoredEntry, stream_size: u64) -> Result<Entry, FormatError> {
    let bad = |what: &str| FormatError::new(format!("index entry {:?}: {what}", s.path));
    if clean_path(&s.path)? != s.path {
        return Err(bad("path is not clean"));
    }
    if s.mode > 0o7777 {
        return Err(bad("bad mode"));
    }
    let target = || {
        s.target
            .clone()
            .filter(|t| !t.is_empty() && !t.contains('\0'))
            .ok_or_else(|| bad("bad link target"))
    };
    let kind = match s.kind.as_str() {
        "dir" => EntryKind::Dir,
        "special" => EntryKind::Special,
        "symlink" => EntryKind::Symlink { target: target()? },
        "hardlink" => {
            let t = target()?;
            if clean_path(&t)? != t {
                return Err(bad("hard link target is not clean"));
            }
            EntryKind::Hardlink { target: t }
        }
        "file" => {
            let size = s.size.ok_or_else(|| bad("no size"))?;
            let digests = s.digests.clone().unwrap_or_default();
            let offset = s.offset.unwrap_or(0);
            if offset.checked_add(size).is_none_or(|end| end > stream_size) {
                return Err(bad("data outside the stream"));
            }
            if digests.len() as u64 != size.div_ceil(PIECE_SIZE) {
                return Err(bad("wrong number of piece digests"));
            }
            let chunks = digests
                .into_iter()
                .enumerate()
                .map(|(i, digest)| {
                    let at = i as u64 * PIECE_SIZE;
                    Chunk {
                        file_offset: at,
                        len: PIECE_SIZE.min(size - at),
                        digest,
                        at: ChunkAt::Stream {
                            offset: offset + at,
                        },
                    }
                })
                .collect();
            EntryKind::File { size, chunks }
        }
        _ => return Err(bad("unknown type")),
    };
    Ok(Entry {
        path: s.path,
        kind,
        mode: s.mode,
        uid: s.uid,
        gid: s.gid,
        mtime: s.mtime,
    })
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// Reads fields off the front of a byte slice, refusing to run past its end.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if n > self.0.len() {
            return Err(FormatError::new("the index is truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}
