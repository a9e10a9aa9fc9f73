//! Seekable directory layers, in the eStargz layout (containerd/stargz-snapshotter
//! `docs/estargz.md`): a valid tar+gzip in which every regular file's data starts a gzip
//! member of its own (one member per [`CHUNK_SIZE`] piece), followed by a table of contents
//! (TOC, `stargz.index.json`) giving each piece's compressed offset and sha256, and a
//! 51-byte footer pointing at the TOC. A reader fetches the footer and the TOC, then any
//! piece of any file with one range request, and checks it against its own digest.
//!
//! One deliberate deviation from eStargz: the tar end-of-archive marker (two zero blocks)
//! comes *before* the TOC entry, not after it. oras-go refuses any tar entry outside the
//! title's directory (a root-level `stargz.index.json` would fail `oras pull`), the Python
//! SDK and `tar xzf` would leave it beside the directory, and oras-go checks
//! `io.deis.oras.content.digest` on exactly the bytes its tar reader consumes. So tar tools
//! stop at the first end marker and never see the TOC; eStargz readers find the TOC through
//! the footer as always; the content digest covers the uncompressed bytes up to and including
//! that first end marker. The TOC member holds its own tar header, the JSON, padding and a
//! second end marker, so it is a well-formed tar on its own.
//!
//! Reading is pure functions on bytes ([`parse_footer`], [`parse_toc`]); every size taken
//! from the layer is bounded and every bad input is a [`FormatError`].

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use serde::{Deserialize, Serialize};

use super::{clean_path, Chunk, ChunkAt, Entry, EntryKind, FormatError};
use crate::digest::{Digest, Digester};
use crate::error::{IoContext, Result};

/// Files larger than this are split into several gzip members (each its own TOC entry).
pub const CHUNK_SIZE: u64 = 4 << 20;
/// The footer: an empty gzip member whose header's extra field holds the TOC's offset.
pub const FOOTER_SIZE: u64 = 51;
/// The TOC's tar entry name; eStargz readers look for exactly this.
pub const TOC_NAME: &str = "stargz.index.json";
/// The layer annotation with the digest of the TOC's JSON bytes.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The largest TOC JSON we read (uncompressed) and the most entries it may hold: a TOC is
/// downloaded and parsed whole, so both bound memory.
pub const MAX_TOC_SIZE: u64 = 64 << 20;
pub const MAX_TOC_ENTRIES: usize = 1_000_000;
/// How much file data is read at a time while packing.
const COPY_BUF: usize = 1 << 20;

/// What [`SeekableWriter::finish`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeekableLayer {
    /// sha256 of the uncompressed tar through its end-of-archive marker (the
    /// `io.deis.oras.content.digest` annotation).
    pub content_digest: Digest,
    /// sha256 of the TOC's JSON bytes ([`TOC_DIGEST_ANNOTATION`]).
    pub toc_digest: Digest,
    /// sha256 and size of the compressed layer as written.
    pub layer_digest: Digest,
    pub layer_size: u64,
}

/// One TOC entry as eStargz spells it (field names and omitted zero values as its Go writer).
#[derive(Serialize, Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct TocEntry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    size: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    modtime: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    link_name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    mode: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    uid: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    gid: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    user_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    group_name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    dev_major: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    dev_minor: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    digest: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    chunk_offset: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    chunk_size: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    chunk_digest: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize)]
struct Toc {
    version: u32,
    entries: TocEntries,
}

/// The entries, refused past [`MAX_TOC_ENTRIES`] while parsing (not after: a 64 MiB TOC
/// of empty objects would otherwise allocate gigabytes).
struct TocEntries(Vec<TocEntry>);

impl Serialize for TocEntries {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for TocEntries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Bounded;
        impl<'de> serde::de::Visitor<'de> for Bounded {
            type Value = TocEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of TOC entries")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<TocEntries, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = seq.next_element()? {
                    if v.len() >= MAX_TOC_ENTRIES {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_TOC_ENTRIES} entries"
                        )));
                    }
                    v.push(e);
                }
                Ok(TocEntries(v))
            }
        }
        d.deserialize_seq(Bounded)
    }
}

// ----------------------------------------------------------------------------------------
// Writing

/// Counts and hashes the compressed bytes on their way out.
struct Counted<W> {
    inner: W,
    count: u64,
    digester: Digester,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        self.digester.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The uncompressed tar stream, compressed into gzip members that [`Members::cut`] ends.
struct Members<W: Write> {
    gz: Option<flate2::write::GzEncoder<Counted<W>>>,
    level: Compression,
    /// Hashes the tar until its end marker; `None` afterwards (the TOC is not content).
    tar_digest: Option<Digester>,
}

impl<W: Write> Members<W> {
    fn member(out: Counted<W>, level: Compression) -> flate2::write::GzEncoder<Counted<W>> {
        flate2::GzBuilder::new().write(out, level)
    }

    /// Ends the current gzip member and starts a new one; returns the new member's offset.
    fn cut(&mut self) -> std::io::Result<u64> {
        let out = self.finish_member()?;
        let offset = out.count;
        self.gz = Some(Self::member(out, self.level));
        Ok(offset)
    }

    fn finish_member(&mut self) -> std::io::Result<Counted<W>> {
        self.gz
            .take()
            .ok_or_else(|| std::io::Error::other("seekable writer already finished"))?
            .finish()
    }

    fn gz(&mut self) -> std::io::Result<&mut flate2::write::GzEncoder<Counted<W>>> {
        self.gz
            .as_mut()
            .ok_or_else(|| std::io::Error::other("seekable writer already finished"))
    }
}

impl<W: Write> Write for Members<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.gz()?.write(buf)?;
        if let Some(d) = &mut self.tar_digest {
            d.update(&buf[..n]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.gz()?.flush()
    }
}

/// Writes a seekable layer entry by entry; [`write_seekable`] feeds it a directory.
pub struct SeekableWriter<W: Write> {
    tar: tar::Builder<Members<W>>,
    toc: Vec<TocEntry>,
    buf: Vec<u8>,
}

impl<W: Write> SeekableWriter<W> {
    pub fn new(out: W, level: Compression) -> Self {
        let counted = Counted {
            inner: out,
            count: 0,
            digester: Digester::sha256(),
        };
        let members = Members {
            gz: Some(Members::member(counted, level)),
            level,
            tar_digest: Some(Digester::sha256()),
        };
        SeekableWriter {
            tar: tar::Builder::new(members),
            toc: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Appends a regular file: `header` (size and metadata set) and exactly `size` bytes of
    /// `data`, each [`CHUNK_SIZE`] piece in a gzip member of its own.
    pub fn append_file(
        &mut self,
        header: &mut tar::Header,
        path: &Path,
        data: &mut dyn Read,
    ) -> std::io::Result<()> {
        let name = toc_name(path);
        let size = header.size()?;
        // The header goes into the current member; the data starts new ones.
        self.tar.append_data(header, path, std::io::empty())?;
        let first = self.toc.len();
        let mut file_digest = (size > CHUNK_SIZE).then(Digester::sha256);
        let mut done = 0u64;
        while done < size {
            let len = (size - done).min(CHUNK_SIZE);
            let offset = self.tar.get_mut().cut()?;
            let mut chunk_digest = Digester::sha256();
            let mut left = len;
            while left > 0 {
                let want = left.min(COPY_BUF as u64) as usize;
                self.buf.resize(want, 0);
                let n = data.read(&mut self.buf[..want])?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{name} is shorter than its {size} bytes (changed while packing?)"),
                    ));
                }
                self.tar.get_mut().write_all(&self.buf[..n])?;
                chunk_digest.update(&self.buf[..n]);
                if let Some(d) = &mut file_digest {
                    d.update(&self.buf[..n]);
                }
                left -= n as u64;
            }
            let chunk_digest = chunk_digest.finish().to_string();
            let mut e = if done == 0 {
                toc_entry(header, &name)?
            } else {
                TocEntry {
                    name: name.clone(),
                    kind: "chunk".into(),
                    ..Default::default()
                }
            };
            e.offset = offset;
            e.chunk_offset = done;
            // Absent on the last chunk: it runs to the end of the file.
            e.chunk_size = if done + len < size { len } else { 0 };
            e.chunk_digest = chunk_digest;
            self.toc.push(e);
            done += len;
        }
        if size == 0 {
            self.toc.push(toc_entry(header, &name)?);
        } else {
            let whole = match file_digest {
                Some(d) => d.finish().to_string(),
                None => self.toc[first].chunk_digest.clone(),
            };
            self.toc[first].digest = whole;
            // The padding (and the next header) go into a member after the data's.
            self.tar.get_mut().cut()?;
            let pad = (512 - size % 512) % 512;
            self.tar.get_mut().write_all(&[0u8; 512][..pad as usize])?;
        }
        Ok(())
    }

    /// Appends a symlink or a hard link (as `header`'s type says) to `target`.
    pub fn append_link(
        &mut self,
        header: &mut tar::Header,
        path: &Path,
        target: &Path,
    ) -> std::io::Result<()> {
        self.tar.append_link(header, path, target)?;
        let mut e = toc_entry(header, &toc_name(path))?;
        e.link_name = toc_name(target);
        self.toc.push(e);
        Ok(())
    }

    /// Appends an entry without data: a directory, a device, a FIFO.
    pub fn append_other(&mut self, header: &mut tar::Header, path: &Path) -> std::io::Result<()> {
        header.set_size(0);
        self.tar.append_data(header, path, std::io::empty())?;
        self.toc.push(toc_entry(header, &toc_name(path))?);
        Ok(())
    }

    /// Writes the end-of-archive marker, the TOC member and the footer.
    pub fn finish(self) -> std::io::Result<(W, SeekableLayer)> {
        let mut members = self.tar.into_inner()?;
        let content_digest = members
            .tar_digest
            .take()
            .expect("hashing until the end marker")
            .finish();
        let toc_offset = members.cut()?;
        let json = serde_json::to_vec(&Toc {
            version: 1,
            entries: TocEntries(self.toc),
        })
        .map_err(std::io::Error::other)?;
        let toc_digest = Digest::of(&json);
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_size(json.len() as u64);
        let mut toc_tar = tar::Builder::new(&mut members);
        toc_tar.append_data(&mut header, TOC_NAME, json.as_slice())?;
        toc_tar.finish()?;
        drop(toc_tar);
        let mut out = members.finish_member()?;
        out.write_all(&footer(toc_offset))?;
        out.flush()?;
        let layer = SeekableLayer {
            content_digest,
            toc_digest,
            layer_digest: out.digester.finish(),
            layer_size: out.count,
        };
        Ok((out.inner, layer))
    }
}

/// A name as the TOC spells it: JSON holds text, so bytes that are not UTF-8 become U+FFFD
/// there (the tar keeps them; such a file is still pushed and unpacked as it is).
fn toc_name(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The TOC entry for what `header` describes (before data offsets are known).
fn toc_entry(header: &tar::Header, name: &str) -> std::io::Result<TocEntry> {
    use tar::EntryType as T;
    let t = header.entry_type();
    let kind = match t {
        T::Regular | T::Continuous => "reg",
        T::Directory => "dir",
        T::Symlink => "symlink",
        T::Link => "hardlink",
        T::Char => "char",
        T::Block => "block",
        T::Fifo => "fifo",
        _ => return Err(std::io::Error::other(format!("{name}: unsupported {t:?}"))),
    };
    // Fields a caller left blank are 0 in the TOC, as a tar reader would take them.
    let mtime = header.mtime().unwrap_or(0);
    let device = |v: std::io::Result<Option<u32>>| v.ok().flatten().unwrap_or(0) as u64;
    Ok(TocEntry {
        name: name.to_string(),
        kind: kind.into(),
        size: if kind == "reg" { header.size()? } else { 0 },
        modtime: humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime),
        )
        .to_string(),
        mode: header.mode().unwrap_or(0) as u64,
        uid: header.uid().unwrap_or(0),
        gid: header.gid().unwrap_or(0),
        user_name: header.username().ok().flatten().unwrap_or("").to_string(),
        group_name: header.groupname().ok().flatten().unwrap_or("").to_string(),
        dev_major: if matches!(t, T::Char | T::Block) {
            device(header.device_major())
        } else {
            0
        },
        dev_minor: if matches!(t, T::Char | T::Block) {
            device(header.device_minor())
        } else {
            0
        },
        ..Default::default()
    })
}

/// The 51-byte footer: a gzip header with FEXTRA (one `SG` subfield of 22 bytes holding the
/// TOC offset), an empty stored block, and the trailer (CRC and size of nothing: zeros).
fn footer(toc_offset: u64) -> [u8; FOOTER_SIZE as usize] {
    let mut f = [0u8; FOOTER_SIZE as usize];
    // ID1 ID2, CM=deflate, FLG=FEXTRA, MTIME=0, XFL=0, OS=unknown (as Go's gzip writer).
    f[..10].copy_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255]);
    f[10..12].copy_from_slice(&26u16.to_le_bytes());
    f[12..16].copy_from_slice(&[b'S', b'G', 22, 0]);
    f[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    // A final stored block of length 0.
    f[38..43].copy_from_slice(&[1, 0, 0, 0xff, 0xff]);
    f
}

/// Packs `dir` as `title/...` into a seekable layer on `out`: a sorted walk, symlinks not
/// followed, headers in `Deterministic` mode when `reproducible` (else `Complete`).
pub fn write_seekable<W: Write>(
    dir: &Path,
    title: &str,
    out: W,
    reproducible: bool,
) -> Result<(W, SeekableLayer)> {
    let mode = if reproducible {
        tar::HeaderMode::Deterministic
    } else {
        tar::HeaderMode::Complete
    };
    let ctx = || format!("packing {}", dir.display());
    let mut w = SeekableWriter::new(out, Compression::default());
    let mut stack = vec![(dir.to_path_buf(), PathBuf::from(title))];
    while let Some((path, name)) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).ctx(ctx)?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, mode);
        let ft = meta.file_type();
        let entry_ctx = || format!("packing {}", path.display());
        if ft.is_file() {
            let mut f = std::fs::File::open(&path).ctx(entry_ctx)?;
            w.append_file(&mut header, &name, &mut f).ctx(entry_ctx)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).ctx(entry_ctx)?;
            w.append_link(&mut header, &name, &target).ctx(entry_ctx)?;
        } else if ft.is_dir() {
            w.append_other(&mut header, &name).ctx(entry_ctx)?;
            let mut entries: Vec<_> = std::fs::read_dir(&path)
                .ctx(ctx)?
                .collect::<std::io::Result<Vec<_>>>()
                .ctx(ctx)?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries.into_iter().rev() {
                stack.push((e.path(), name.join(e.file_name())));
            }
        } else {
            special_header(&mut header, &meta).ctx(entry_ctx)?;
            w.append_other(&mut header, &name).ctx(entry_ctx)?;
        }
    }
    w.finish().ctx(ctx)
}

/// Type and device numbers of a FIFO or device (as the tar crate's own `append_special`).
fn special_header(header: &mut tar::Header, meta: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let ft = meta.file_type();
    let t = if ft.is_fifo() {
        tar::EntryType::Fifo
    } else if ft.is_char_device() {
        tar::EntryType::Char
    } else if ft.is_block_device() {
        tar::EntryType::Block
    } else {
        return Err(std::io::Error::other(
            "sockets and unknown file types can't be archived",
        ));
    };
    header.set_entry_type(t);
    let dev = meta.rdev();
    header.set_device_major((((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32)?;
    header.set_device_minor((((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32)?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Reading

/// The TOC's offset from a layer's last [`FOOTER_SIZE`] bytes (`bytes` may be longer: its
/// end is used). Only the 51-byte eStargz footer is accepted (not the legacy 47-byte one).
pub fn parse_footer(bytes: &[u8]) -> std::result::Result<u64, FormatError> {
    let bad = |why: &str| FormatError::new(format!("not a seekable layer footer: {why}"));
    let n = FOOTER_SIZE as usize;
    if bytes.len() < n {
        return Err(bad("too short"));
    }
    let f = &bytes[bytes.len() - n..];
    if f[..4] != [0x1f, 0x8b, 8, 4] {
        return Err(bad("no gzip header with an extra field"));
    }
    if f[10..16] != [26, 0, b'S', b'G', 22, 0] {
        return Err(bad("no SG extra subfield of 22 bytes"));
    }
    let payload = &f[16..38];
    if &payload[16..] != b"STARGZ" {
        return Err(bad("no STARGZ mark"));
    }
    let hex = std::str::from_utf8(&payload[..16]).map_err(|_| bad("offset is not hex"))?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("offset is not hex"));
    }
    let offset = u64::from_str_radix(hex, 16).map_err(|_| bad("offset is not hex"))?;
    // The rest must be an empty gzip member.
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .take(1)
        .read_to_end(&mut out)
        .map_err(|e| bad(&format!("not a gzip member ({e})")))?;
    if !out.is_empty() {
        return Err(bad("the member is not empty"));
    }
    Ok(offset)
}

/// Where the TOC member is, from the footer (the layer's last [`FOOTER_SIZE`] bytes) and
/// the layer's size: the range to fetch and give to [`parse_toc`].
pub fn locate_toc(
    footer: &[u8],
    layer_size: u64,
) -> std::result::Result<std::ops::Range<u64>, FormatError> {
    let offset = parse_footer(footer)?;
    let end = layer_size
        .checked_sub(FOOTER_SIZE)
        .ok_or_else(|| FormatError::new("the layer is smaller than a footer"))?;
    if offset >= end {
        return Err(FormatError::new(format!(
            "the footer points at {offset}, past the TOC's possible place (before {end})"
        )));
    }
    Ok(offset..end)
}

/// Reads the TOC from `toc_member` (the compressed bytes from the TOC offset to the footer,
/// in a layer of `layer_size` bytes), checks the JSON against `want` when given, and lists
/// the layer's entries with the byte ranges of every file's chunks.
pub fn parse_toc(
    toc_member: &[u8],
    layer_size: u64,
    want: Option<&Digest>,
) -> std::result::Result<Vec<Entry>, FormatError> {
    let toc_offset = layer_size
        .checked_sub(FOOTER_SIZE)
        .and_then(|n| n.checked_sub(toc_member.len() as u64))
        .ok_or_else(|| FormatError::new("the TOC does not fit in the layer"))?;
    let json = toc_json(toc_member)?;
    if let Some(want) = want {
        let got = Digest::of(&json);
        if got != *want {
            return Err(FormatError::new(format!(
                "TOC digest mismatch: the layer says {want}, the TOC is {got}"
            )));
        }
    }
    let toc: Toc = serde_json::from_slice(&json)
        .map_err(|e| FormatError::new(format!("the TOC is not valid: {e}")))?;
    if toc.version != 1 {
        return Err(FormatError::new(format!(
            "TOC version {} (only 1 is known)",
            toc.version
        )));
    }
    entries_of(toc.entries.0, toc_offset)
}

/// The JSON bytes of the TOC's tar entry, decompressed within [`MAX_TOC_SIZE`].
fn toc_json(toc_member: &[u8]) -> std::result::Result<Vec<u8>, FormatError> {
    let bad = |e: std::io::Error| FormatError::new(format!("reading the TOC: {e}"));
    // Headers (long names included) may add a little to the JSON; never more than this.
    let gz = flate2::read::GzDecoder::new(toc_member).take(MAX_TOC_SIZE + (64 << 10));
    let mut archive = tar::Archive::new(gz);
    let mut entries = archive.entries().map_err(bad)?;
    let mut entry = entries
        .next()
        .ok_or_else(|| FormatError::new("the TOC member holds no tar entry"))?
        .map_err(bad)?;
    let name = entry.path_bytes().into_owned();
    if name != TOC_NAME.as_bytes() {
        return Err(FormatError::new(format!(
            "the TOC entry is named {:?}, not {TOC_NAME}",
            String::from_utf8_lossy(&name)
        )));
    }
    let size = entry.header().size().map_err(bad)?;
    if size > MAX_TOC_SIZE {
        return Err(FormatError::new(format!(
            "the TOC is {size} bytes, more than {MAX_TOC_SIZE}"
        )));
    }
    let mut json = Vec::with_capacity(size.min(1 << 20) as usize);
    entry.read_to_end(&mut json).map_err(bad)?;
    if json.len() as u64 != size {
        return Err(FormatError::new("the TOC is truncated"));
    }
    Ok(json)
}

/// Where chunks are, before their `end`s are known.
struct Open {
    /// Index in the output of the file being filled.
    index: usize,
    size: u64,
    covered: u64,
}

/// Checks and converts TOC entries (see the module's rules: ordered, non-overlapping data
/// before the TOC, every chunk with a digest, chunks covering each file exactly).
fn entries_of(toc: Vec<TocEntry>, toc_offset: u64) -> std::result::Result<Vec<Entry>, FormatError> {
    let mut out: Vec<Entry> = Vec::with_capacity(toc.len());
    let mut by_path: HashMap<String, usize> = HashMap::with_capacity(toc.len());
    let mut open: Option<Open> = None;
    let mut last_offset: Option<u64> = None;
    // (entry, chunk) of every chunk, in offset order, to fill in `end`s at the end.
    let mut chunks: Vec<(usize, usize)> = Vec::new();

    for te in toc {
        let err = |why: String| FormatError::new(format!("TOC entry {:?}: {why}", te.name));
        if te.kind == "chunk" {
            let path = clean_path(&te.name)?;
            let o = open
                .as_mut()
                .filter(|o| out[o.index].path == path)
                .ok_or_else(|| err("a chunk that does not follow its file".into()))?;
            add_chunk(&te, o, &mut out, &mut last_offset, toc_offset, &mut chunks)?;
            continue;
        }
        close(&mut open, &out)?;
        let path = match clean_path(&te.name) {
            Ok(p) => p,
            // The root directory ("./") of some writers: nothing to list.
            Err(_) if te.kind == "dir" && te.name.trim_matches(['.', '/']).is_empty() => continue,
            Err(e) => return Err(e),
        };
        let kind = match te.kind.as_str() {
            "dir" => EntryKind::Dir,
            "reg" => EntryKind::File {
                size: te.size,
                chunks: Vec::new(),
            },
            "symlink" => EntryKind::Symlink {
                target: te.link_name.clone(),
            },
            "hardlink" => {
                let target = clean_path(&te.link_name)?;
                match by_path.get(&target).map(|&i| &out[i].kind) {
                    None => return Err(err(format!("hard link to {target:?}, not listed before"))),
                    Some(EntryKind::Dir) => {
                        return Err(err(format!("hard link to the directory {target:?}")))
                    }
                    Some(_) => {}
                }
                EntryKind::Hardlink { target }
            }
            "char" | "block" | "fifo" => EntryKind::Special,
            other => return Err(err(format!("unknown type {other:?}"))),
        };
        let entry = Entry {
            path: path.clone(),
            kind,
            mode: (te.mode & 0o7777) as u32,
            uid: u32::try_from(te.uid).map_err(|_| err(format!("uid {}", te.uid)))?,
            gid: u32::try_from(te.gid).map_err(|_| err(format!("gid {}", te.gid)))?,
            mtime: parse_modtime(&te.modtime),
        };
        if let Some(&i) = by_path.get(&path) {
            // A directory listed again (some writers repeat parents) only updates it.
            if matches!(out[i].kind, EntryKind::Dir) && matches!(entry.kind, EntryKind::Dir) {
                out[i] = entry;
                continue;
            }
            return Err(err("listed twice".into()));
        }
        by_path.insert(path, out.len());
        out.push(entry);
        if te.kind == "reg" && te.size > 0 {
            let mut o = Open {
                index: out.len() - 1,
                size: te.size,
                covered: 0,
            };
            add_chunk(
                &te,
                &mut o,
                &mut out,
                &mut last_offset,
                toc_offset,
                &mut chunks,
            )?;
            open = Some(o);
        }
    }
    close(&mut open, &out)?;

    // A chunk's member ends where the next chunk's starts (or the TOC's).
    let starts: Vec<u64> = chunks
        .iter()
        .map(|&(e, c)| match &out[e].kind {
            EntryKind::File { chunks, .. } => match chunks[c].at {
                ChunkAt::Member { offset, .. } => offset,
                ChunkAt::Stream { offset } => offset,
            },
            _ => unreachable!("only files have chunks"),
        })
        .collect();
    for (i, &(e, c)) in chunks.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(toc_offset);
        if let EntryKind::File { chunks, .. } = &mut out[e].kind {
            if let ChunkAt::Member {
                end: ref mut slot, ..
            } = chunks[c].at
            {
                *slot = end;
            }
        }
    }
    Ok(out)
}

/// Adds the chunk `te` describes to the open file.
fn add_chunk(
    te: &TocEntry,
    o: &mut Open,
    out: &mut [Entry],
    last_offset: &mut Option<u64>,
    toc_offset: u64,
    chunks: &mut Vec<(usize, usize)>,
) -> std::result::Result<(), FormatError> {
    let err = |why: String| FormatError::new(format!("TOC entry {:?}: {why}", te.name));
    if te.chunk_offset != o.covered {
        return Err(err(format!(
            "chunk at {} where {} was expected",
            te.chunk_offset, o.covered
        )));
    }
    let rest = o.size - o.covered;
    let len = match te.chunk_size {
        0 => rest,
        n if n <= rest => n,
        n => return Err(err(format!("chunk of {n} bytes past the end of the file"))),
    };
    if last_offset.is_some_and(|l| te.offset <= l) {
        return Err(err(format!(
            "data at offset {} does not come after the previous entry's",
            te.offset
        )));
    }
    if te.offset >= toc_offset {
        return Err(err(format!(
            "data at offset {} is not before the TOC (at {toc_offset})",
            te.offset
        )));
    }
    let digest = if !te.chunk_digest.is_empty() {
        &te.chunk_digest
    } else if o.covered == 0 && len == o.size && !te.digest.is_empty() {
        &te.digest
    } else {
        return Err(err("a chunk without a digest".into()));
    };
    let digest: Digest = digest
        .parse()
        .map_err(|_| err(format!("bad digest {digest:?}")))?;
    let EntryKind::File { chunks: list, .. } = &mut out[o.index].kind else {
        return Err(err("chunk of something that is not a file".into()));
    };
    chunks.push((o.index, list.len()));
    list.push(Chunk {
        file_offset: o.covered,
        len,
        digest,
        at: ChunkAt::Member {
            offset: te.offset,
            end: 0,
        },
    });
    *last_offset = Some(te.offset);
    o.covered += len;
    Ok(())
}

/// Refuses a file whose chunks stop short of its size.
fn close(open: &mut Option<Open>, out: &[Entry]) -> std::result::Result<(), FormatError> {
    if let Some(o) = open.take() {
        if o.covered != o.size {
            return Err(FormatError::new(format!(
                "TOC entry {:?}: chunks cover {} of {} bytes",
                out[o.index].path, o.covered, o.size
            )));
        }
    }
    Ok(())
}

/// Seconds since the epoch of an RFC 3339 time; 0 when absent or unreadable (a time is
/// only shown, never trusted, so an odd one is not worth refusing the layer for).
fn parse_modtime(s: &str) -> i64 {
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs().min(i64::MAX as u64) as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic bytes that do not compress much (xorshift).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn layer_of(dir: &Path, reproducible: bool) -> (Vec<u8>, SeekableLayer) {
        write_seekable(dir, "t", Vec::new(), reproducible).unwrap()
    }

    fn toc_of(layer: &[u8], want: Option<&Digest>) -> std::result::Result<Vec<Entry>, FormatError> {
        let size = layer.len() as u64;
        let range = locate_toc(&layer[layer.len().saturating_sub(51)..], size)?;
        parse_toc(&layer[range.start as usize..range.end as usize], size, want)
    }

    /// A file's bytes, read chunk by chunk from its own members, each checked.
    fn read_file(layer: &[u8], entry: &Entry) -> Vec<u8> {
        let EntryKind::File { size, chunks } = &entry.kind else {
            panic!("{} is not a file", entry.path)
        };
        let mut data = Vec::new();
        for c in chunks {
            assert_eq!(c.file_offset, data.len() as u64);
            let ChunkAt::Member { offset, end } = c.at else {
                panic!("not a member")
            };
            assert!(offset < end && end <= layer.len() as u64);
            let mut piece = Vec::new();
            flate2::read::GzDecoder::new(&layer[offset as usize..end as usize])
                .take(c.len)
                .read_to_end(&mut piece)
                .unwrap();
            assert_eq!(piece.len() as u64, c.len);
            c.digest.verify(&piece).unwrap();
            data.extend(piece);
        }
        assert_eq!(data.len() as u64, *size);
        data
    }

    fn sample_tree() -> (tempfile::TempDir, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let big = noise(2 * CHUNK_SIZE as usize + 100, 7);
        std::fs::write(d.join("a.txt"), b"hello\n").unwrap();
        std::fs::write(d.join("empty"), b"").unwrap();
        std::fs::write(d.join("big"), &big).unwrap();
        std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
        std::fs::write(d.join("sub/deeper/x"), noise(512, 3)).unwrap();
        let long = "n".repeat(150);
        std::fs::write(d.join("sub").join(&long), b"long name").unwrap();
        std::os::unix::fs::symlink("../a.txt", d.join("sub/link")).unwrap();
        (dir, big)
    }

    #[test]
    fn round_trip_lists_every_entry_and_reads_every_file_from_its_members() {
        let (dir, big) = sample_tree();
        let (layer, info) = layer_of(dir.path(), false);
        assert_eq!(info.layer_size, layer.len() as u64);
        assert_eq!(info.layer_digest, Digest::of(&layer));
        let entries = toc_of(&layer, Some(&info.toc_digest)).unwrap();
        let by: HashMap<&str, &Entry> = entries.iter().map(|e| (e.path.as_str(), e)).collect();
        let long = format!("t/sub/{}", "n".repeat(150));
        let mut paths: Vec<&str> = by.keys().copied().collect();
        paths.sort();
        let mut want = vec![
            "t",
            "t/a.txt",
            "t/big",
            "t/empty",
            "t/sub",
            "t/sub/deeper",
            "t/sub/deeper/x",
            "t/sub/link",
            long.as_str(),
        ];
        want.sort();
        assert_eq!(paths, want);
        assert_eq!(read_file(&layer, by["t/a.txt"]), b"hello\n");
        assert_eq!(read_file(&layer, by["t/empty"]), b"");
        assert_eq!(read_file(&layer, by[long.as_str()]), b"long name");
        assert_eq!(read_file(&layer, by["t/big"]), big);
        let EntryKind::File { chunks, .. } = &by["t/big"].kind else {
            panic!()
        };
        assert_eq!(chunks.len(), 3);
        assert_eq!(
            chunks.iter().map(|c| c.len).collect::<Vec<_>>(),
            [CHUNK_SIZE, CHUNK_SIZE, 100]
        );
        assert_eq!(
            by["t/sub/link"].kind,
            EntryKind::Symlink {
                target: "../a.txt".into()
            }
        );
        assert_eq!(by["t/sub"].kind, EntryKind::Dir);

        // A plain tar reader sees the tree and nothing else, and the content digest covers
        // the bytes through the first end-of-archive marker.
        let mut all = Vec::new();
        flate2::read::MultiGzDecoder::new(layer.as_slice())
            .read_to_end(&mut all)
            .unwrap();
        let mut archive = tar::Archive::new(all.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 9);
        assert!(!names.iter().any(|n| n.contains(TOC_NAME)));
        let range = locate_toc(&layer[layer.len() - 51..], layer.len() as u64).unwrap();
        let mut toc_part = Vec::new();
        flate2::read::GzDecoder::new(&layer[range.start as usize..range.end as usize])
            .read_to_end(&mut toc_part)
            .unwrap();
        let content = &all[..all.len() - toc_part.len()];
        assert!(content[content.len() - 1024..].iter().all(|&b| b == 0));
        assert_eq!(Digest::of(content), info.content_digest);
    }

    #[test]
    fn names_that_are_not_utf8_stay_in_the_tar_and_are_replaced_in_the_toc() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let odd = std::ffi::OsStr::from_bytes(b"\xffodd");
        std::fs::write(dir.path().join(odd), b"data").unwrap();
        let (layer, _) = layer_of(dir.path(), true);
        let entries = toc_of(&layer, None).unwrap();
        assert_eq!(entries[1].path, "t/\u{fffd}odd");
        assert_eq!(read_file(&layer, &entries[1]), b"data");
        let mut all = Vec::new();
        flate2::read::MultiGzDecoder::new(layer.as_slice())
            .read_to_end(&mut all)
            .unwrap();
        let mut archive = tar::Archive::new(all.as_slice());
        let names: Vec<Vec<u8>> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path_bytes().into_owned())
            .collect();
        assert_eq!(names, [b"t".to_vec(), b"t/\xffodd".to_vec()]);
    }

    #[test]
    fn reproducible_layers_are_byte_identical() {
        let (dir, _) = sample_tree();
        let (a, ia) = layer_of(dir.path(), true);
        // Touching a file changes nothing in reproducible mode.
        let f = std::fs::File::options()
            .write(true)
            .open(dir.path().join("a.txt"))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(99))
            .unwrap();
        let (b, ib) = layer_of(dir.path(), true);
        assert_eq!(ia, ib);
        assert!(a == b, "layers differ");
    }

    #[test]
    fn hard_links_and_specials_are_listed() {
        let mut w = SeekableWriter::new(Vec::new(), Compression::fast());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o4755);
        h.set_size(3);
        w.append_file(&mut h, Path::new("d/f"), &mut &b"abc"[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        w.append_link(&mut h, Path::new("d/g"), Path::new("d/f"))
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Fifo);
        w.append_other(&mut h, Path::new("d/p")).unwrap();
        let (layer, info) = w.finish().unwrap();
        let entries = toc_of(&layer, Some(&info.toc_digest)).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].mode, 0o4755);
        assert_eq!(read_file(&layer, &entries[0]), b"abc");
        assert_eq!(
            entries[1].kind,
            EntryKind::Hardlink {
                target: "d/f".into()
            }
        );
        assert_eq!(entries[2].kind, EntryKind::Special);
    }

    #[test]
    fn a_short_file_is_an_error_not_a_corrupt_layer() {
        let mut w = SeekableWriter::new(Vec::new(), Compression::fast());
        let mut h = tar::Header::new_gnu();
        h.set_size(10);
        assert!(w
            .append_file(&mut h, Path::new("f"), &mut &b"abc"[..])
            .is_err());
    }

    // --- Bad TOCs ---------------------------------------------------------------------

    /// A gzip member holding a tar entry `name` with `json`, then an end marker.
    fn toc_member(name: &str, json: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_size(json.len() as u64);
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            Compression::fast(),
        ));
        b.append_data(&mut h, name, json).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    }

    /// A real two-file layer whose TOC is replaced by `json` under `name`; the offsets of
    /// its two files' data members.
    fn with_toc(name: &str, json: &str) -> (Vec<u8>, u64) {
        let (mut layer, toc_offset) = base_layer();
        layer.truncate(toc_offset as usize);
        layer.extend(toc_member(name, json.as_bytes()));
        layer.extend(footer(toc_offset));
        (layer, toc_offset)
    }

    /// Two 3-byte files a and b; returns the layer and its TOC offset.
    fn base_layer() -> (Vec<u8>, u64) {
        let mut w = SeekableWriter::new(Vec::new(), Compression::fast());
        for n in ["a", "b"] {
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            w.append_file(&mut h, Path::new(n), &mut &b"xyz"[..])
                .unwrap();
        }
        let (layer, _) = w.finish().unwrap();
        let off = parse_footer(&layer).unwrap();
        (layer, off)
    }

    fn offsets() -> (u64, u64) {
        let (layer, _) = base_layer();
        let e = toc_of(&layer, None).unwrap();
        let at = |i: usize| match &e[i].kind {
            EntryKind::File { chunks, .. } => match chunks[0].at {
                ChunkAt::Member { offset, .. } => offset,
                _ => panic!(),
            },
            _ => panic!(),
        };
        (at(0), at(1))
    }

    const XYZ: &str = "sha256:3608bca1e44ea6c4d268eb6db02260269892c0b42b86bbf1e77a6fa16c3c9282";

    fn reg(name: &str, offset: u64) -> String {
        format!(r#"{{"name":"{name}","type":"reg","size":3,"offset":{offset},"digest":"{XYZ}"}}"#)
    }

    fn toc(entries: &[String]) -> String {
        format!(r#"{{"version":1,"entries":[{}]}}"#, entries.join(","))
    }

    fn refused(name: &str, json: &str) -> String {
        let (layer, _) = with_toc(name, json);
        match toc_of(&layer, None) {
            Ok(e) => panic!("accepted {json}: {e:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_good_hand_written_toc_is_accepted() {
        let (a, b) = offsets();
        let (layer, toc_offset) = with_toc(TOC_NAME, &toc(&[reg("./a", a), reg("b", b)]));
        let e = toc_of(&layer, None).unwrap();
        assert_eq!(e[0].path, "a");
        let EntryKind::File { chunks, .. } = &e[1].kind else {
            panic!()
        };
        assert_eq!(
            chunks[0].at,
            ChunkAt::Member {
                offset: b,
                end: toc_offset
            }
        );
        assert_eq!(read_file(&layer, &e[0]), b"xyz");
        assert_eq!(XYZ, Digest::of(b"xyz").to_string());
    }

    #[test]
    fn bad_tocs_are_refused() {
        let (a, b) = offsets();
        let cases: Vec<(&str, String)> = vec![
            ("past the end", toc(&[reg("a", a), reg("b", 1 << 40)])),
            ("decreasing", toc(&[reg("a", b), reg("b", a)])),
            ("overlapping", toc(&[reg("a", a), reg("b", a)])),
            ("dotdot", toc(&[reg("../a", a)])),
            ("absolute", toc(&[reg("/a", a)])),
            ("nul", toc(&[reg("a\\u0000b", a)])),
            (
                "no digest",
                toc(&[format!(
                    r#"{{"name":"a","type":"reg","size":3,"offset":{a}}}"#
                )]),
            ),
            (
                "chunk without digest",
                toc(&[
                    format!(
                        r#"{{"name":"a","type":"reg","size":3,"offset":{a},"chunkSize":1,"chunkDigest":"{XYZ}","digest":"{XYZ}"}}"#
                    ),
                    format!(r#"{{"name":"a","type":"chunk","offset":{b},"chunkOffset":1}}"#),
                ]),
            ),
            (
                "short chunks",
                toc(&[format!(
                    r#"{{"name":"a","type":"reg","size":3,"offset":{a},"chunkSize":1,"chunkDigest":"{XYZ}"}}"#
                )]),
            ),
            (
                "chunk gap",
                toc(&[
                    format!(
                        r#"{{"name":"a","type":"reg","size":3,"offset":{a},"chunkSize":1,"chunkDigest":"{XYZ}"}}"#
                    ),
                    format!(
                        r#"{{"name":"a","type":"chunk","offset":{b},"chunkOffset":2,"chunkDigest":"{XYZ}"}}"#
                    ),
                ]),
            ),
            (
                "stray chunk",
                toc(&[format!(
                    r#"{{"name":"z","type":"chunk","offset":{a},"chunkDigest":"{XYZ}"}}"#
                )]),
            ),
            ("duplicate", toc(&[reg("a", a), reg("a", b)])),
            (
                "hardlink to nothing",
                toc(&[r#"{"name":"h","type":"hardlink","linkName":"nope"}"#.into()]),
            ),
            (
                "hardlink escaping",
                toc(&[
                    reg("a", a),
                    r#"{"name":"h","type":"hardlink","linkName":"../a"}"#.into(),
                ]),
            ),
            (
                "unknown type",
                toc(&[r#"{"name":"x","type":"door"}"#.into()]),
            ),
            (
                "negative",
                toc(&[r#"{"name":"x","type":"reg","size":-1}"#.into()]),
            ),
            (
                "bad digest",
                toc(&[format!(
                    r#"{{"name":"a","type":"reg","size":3,"offset":{a},"digest":"md5:x"}}"#
                )]),
            ),
            ("version", r#"{"version":2,"entries":[]}"#.into()),
            ("not json", "{".into()),
            (
                "huge uid",
                toc(&[r#"{"name":"x","type":"dir","uid":99999999999}"#.into()]),
            ),
        ];
        for (what, json) in &cases {
            let err = refused(TOC_NAME, json);
            assert!(!err.is_empty(), "{what}");
        }
        assert!(refused("other.json", &toc(&[])).contains("named"));
    }

    #[test]
    fn the_toc_digest_is_checked() {
        let json = toc(&[]);
        let (layer, off) = with_toc(TOC_NAME, &json);
        let member = &layer[off as usize..layer.len() - 51];
        let size = layer.len() as u64;
        parse_toc(member, size, Some(&Digest::of(json.as_bytes()))).unwrap();
        let err = parse_toc(member, size, Some(&Digest::of(b"other"))).unwrap_err();
        assert!(err.to_string().contains("mismatch"), "{err}");
    }

    #[test]
    fn oversized_tocs_are_refused() {
        // A header claiming more than the limit: refused before reading any of it.
        let mut h = tar::Header::new_ustar();
        h.set_path(TOC_NAME).unwrap();
        h.set_size(MAX_TOC_SIZE + 1);
        h.set_cksum();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(h.as_bytes()).unwrap();
        gz.write_all(&[b' '; 4096]).unwrap();
        let member = gz.finish().unwrap();
        let err = parse_toc(&member, member.len() as u64 + 100, None).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");

        // Too many entries.
        let one = r#"{"name":"d","type":"dir"},"#;
        let mut json = String::from(r#"{"version":1,"entries":["#);
        json.push_str(&one.repeat(MAX_TOC_ENTRIES));
        json.push_str(r#"{"name":"d","type":"dir"}]}"#);
        let member = toc_member(TOC_NAME, json.as_bytes());
        let err = parse_toc(&member, member.len() as u64 + 51, None).unwrap_err();
        assert!(err.to_string().contains("entries"), "{err}");
    }

    #[test]
    fn footers_pointing_anywhere_are_refused() {
        let (layer, off) = base_layer();
        let size = layer.len() as u64;
        assert!(locate_toc(&footer(size), size).is_err());
        assert!(locate_toc(&footer(u64::MAX), size).is_err());
        assert!(locate_toc(&footer(0), 10).is_err());
        assert!(parse_footer(&layer[..50]).is_err());
        // Into the middle of the layer: whatever is there is no TOC member.
        for at in [0, 1, off / 2, off - 1, off + 1] {
            let mut l = layer[..off as usize].to_vec();
            l.extend(&layer[off as usize..layer.len() - 51]);
            l.extend(footer(at));
            assert!(toc_of(&l, None).is_err(), "footer at {at}");
        }
        // A corrupt footer.
        let mut f = footer(off);
        f[20] = b'g';
        assert!(parse_footer(&f).is_err());
        let mut f = footer(off);
        f[40] = 7;
        assert!(parse_footer(&f).is_err());
    }

    #[test]
    fn no_input_panics() {
        let (layer, _) = layer_of(sample_tree().0.path(), true);
        let off = parse_footer(&layer).unwrap() as usize;
        let member = &layer[off..layer.len() - 51];
        let size = layer.len() as u64;
        for cut in (0..member.len()).step_by(7) {
            let _ = parse_toc(&member[..cut], size, None);
        }
        let mut m = member.to_vec();
        for i in (0..m.len()).step_by(3) {
            m[i] ^= 0x5a;
            let _ = parse_toc(&m, size, None);
            m[i] ^= 0x5a;
        }
        for seed in 1..200u64 {
            let junk = noise((seed * 13) as usize % 600, seed);
            let _ = parse_footer(&junk);
            let _ = parse_toc(&junk, seed * 1000, None);
            let _ = parse_toc(&junk, 0, Some(&Digest::of(b"")));
        }
    }
}
