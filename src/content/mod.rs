//! Content stores: one abstraction (`Target`) for any place that stores blobs and manifests and
//! resolves references, as in oras-go v2. Every command is built from a few of these calls.
//!
//! Verification rule: `push` verifies what it stores against the descriptor (size and digest)
//! before the content becomes visible; `fetch` hands out bytes as they come. So a `copy`
//! between two targets is verified exactly once, at the destination, and a reader that is not
//! a `push` wraps the stream in [`verified`].

pub mod file;
pub mod layout;
pub mod layout_tar;
pub mod memory;
mod overlay;
pub mod testing;

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::digest::Verifier;
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, Index, Manifest, Platform, MAX_MANIFEST_SIZE};

pub use file::FileStore;
pub use layout::OciLayout;
pub use memory::MemoryStore;
pub use overlay::Overlay;

/// Read and write buffer size for blob files: large enough that syscalls don't dominate.
pub(crate) const IO_CHUNK: usize = 1 << 20;

/// Streams `content` into a new temporary file in `dir`, verifying it against `desc`. The
/// caller renames it into place; on any failure the temporary file is deleted, so a failed
/// transfer never leaves a truncated file. `dest` names the destination in messages.
///
/// Hashing (the slowest stage) runs here as chunks arrive; a blocking thread writes them as
/// they are, gathered into vectored writes of about [`IO_CHUNK`], so no byte is copied in
/// user space on its way to the file.
pub(crate) async fn write_verified(
    dir: &std::path::Path,
    desc: &Descriptor,
    content: ByteStream,
    dest: &std::path::Path,
) -> Result<tempfile::NamedTempFile> {
    use crate::error::IoContext;
    let (file, tmp_path) = tempfile::Builder::new()
        .prefix(".oras-fs-partial-")
        .tempfile_in(dir)
        .ctx(|| format!("creating a temporary file in {}", dir.display()))?
        .into_parts();
    let (chunks, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let writer = tokio::task::spawn_blocking(move || {
        let mut file = file;
        let mut batch = Vec::new();
        let mut batched = 0;
        while let Some(chunk) = rx.blocking_recv() {
            if chunk.is_empty() {
                continue;
            }
            batched += chunk.len();
            batch.push(chunk);
            if batched >= IO_CHUNK {
                write_all_vectored(&mut file, &mut batch)?;
                batched = 0;
            }
        }
        write_all_vectored(&mut file, &mut batch)?;
        Ok::<_, std::io::Error>(file)
    });
    let mut verifier = Verifier::new(&desc.digest, desc.size);
    let mut content = content;
    let mut received = Ok(());
    while let Some(chunk) = content.next().await {
        let chunk = match chunk.and_then(|c| verifier.update(&c).map(|()| c)) {
            Ok(c) => c,
            Err(e) => {
                received = Err(e);
                break;
            }
        };
        if chunks.send(chunk).await.is_err() {
            break; // The writer failed: its error is reported below.
        }
    }
    drop(chunks);
    let written = writer.await.expect("writing task panicked");
    received?;
    let file = written.ctx(|| format!("writing {}", dest.display()))?;
    verifier.finish()?;
    Ok(tempfile::NamedTempFile::from_parts(file, tmp_path))
}

/// Writes every byte of `batch` (a `write_all` for vectored writes, which std lacks on
/// stable), then empties it.
fn write_all_vectored(file: &mut std::fs::File, batch: &mut Vec<Bytes>) -> std::io::Result<()> {
    use bytes::Buf;
    use std::io::{IoSlice, Write};
    let mut i = 0;
    while i < batch.len() {
        // IOV_MAX is 1024 on Linux.
        let slices: Vec<IoSlice<'_>> = batch[i..]
            .iter()
            .take(1024)
            .map(|b| IoSlice::new(b))
            .collect();
        let mut n = match file.write_vectored(&slices) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let len = batch[i].len();
            if n >= len {
                n -= len;
                i += 1;
            } else {
                batch[i].advance(n);
                n = 0;
            }
        }
    }
    batch.clear();
    Ok(())
}

/// Streams a local file (or a part of one: a `take` of it) in [`IO_CHUNK`] pieces.
pub(crate) fn file_stream(
    file: impl tokio::io::AsyncRead + Send + 'static,
    path: std::path::PathBuf,
) -> ByteStream {
    let stream = tokio_util::io::ReaderStream::with_capacity(file, IO_CHUNK);
    Box::pin(
        stream.map(move |r| r.map_err(|e| Error::io(format!("reading {}", path.display()), e))),
    )
}

/// Streams `len` bytes at `offset` of a local file (fewer at its end).
pub(crate) async fn file_range_stream(
    path: &std::path::Path,
    offset: u64,
    len: u64,
) -> Result<ByteStream> {
    use crate::error::IoContext;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path)
        .await
        .ctx(|| format!("opening {}", path.display()))?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .ctx(|| format!("reading {}", path.display()))?;
    Ok(file_stream(file.take(len), path.to_path_buf()))
}

/// Blob bytes as they arrive.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// A place that stores content by digest and resolves references (tags) to manifests.
#[async_trait]
pub trait Target: Send + Sync {
    /// A short name for messages (`localhost:5000/repo`, `file store ./out`).
    fn name(&self) -> String;

    /// Resolves a tag or digest to the descriptor of its manifest.
    async fn resolve(&self, reference: &str) -> Result<Descriptor>;

    /// Resolves a tag or digest where writes go, for a caller about to write on the strength
    /// of the answer (move or delete a tag, guard against a moved one). A registry repository
    /// with mirrors asks its origin: a mirror may hold a stale copy of the tag.
    async fn resolve_for_write(&self, reference: &str) -> Result<Descriptor> {
        self.resolve(reference).await
    }

    /// Fetches a blob or manifest from its start.
    async fn fetch(&self, desc: &Descriptor) -> Result<ByteStream>;

    /// Streams `len` bytes at `offset` (clamped to the blob's end). Not verifiable on its own:
    /// callers verify once they hold the whole blob.
    async fn fetch_range(&self, desc: &Descriptor, offset: u64, len: u64) -> Result<ByteStream>;

    /// Whether the content is already here (so a copy can skip it).
    async fn exists(&self, desc: &Descriptor) -> Result<bool>;

    /// Stores a blob, verifying size and digest before it becomes visible.
    async fn push(&self, desc: &Descriptor, content: ByteStream) -> Result<()>;

    /// Stores a manifest (verified like a blob) and, with `tag`, points the tag at it.
    async fn push_manifest(&self, desc: &Descriptor, bytes: Bytes, tag: Option<&str>)
        -> Result<()>;

    /// Points `tag` at an existing manifest.
    async fn tag(&self, desc: &Descriptor, tag: &str) -> Result<()>;

    /// Fetches a manifest that `resolve` returned, whatever its media type (a registry keeps
    /// manifests apart from blobs).
    async fn fetch_manifest(&self, desc: &Descriptor) -> Result<ByteStream> {
        self.fetch(desc).await
    }

    /// Manifests whose `subject` is `subject` (the referrers API, or its fallbacks).
    async fn referrers(&self, _subject: &Descriptor) -> Result<Vec<Descriptor>> {
        Ok(Vec::new())
    }

    /// The target that holds `manifest` and what refers to it (its referrers and their
    /// blobs), where that is not this one: a target standing for several repositories (a
    /// repository mount's router) names the one the manifest came from. `None`: this one.
    fn holding(&self, _manifest: &crate::digest::Digest) -> Option<std::sync::Arc<dyn Target>> {
        None
    }

    /// `(registry host, repository)` for targets that are registry repositories: two of them
    /// on one host can share blobs by cross-repository mounting.
    fn location(&self) -> Option<(String, String)> {
        None
    }

    /// Stores a blob unless it is here already, and says whether it was. `content` is opened
    /// only when the bytes are needed. `mount_from` names another repository of the same
    /// registry that has the blob, to take it from there without an upload.
    async fn push_missing(
        &self,
        desc: &Descriptor,
        _mount_from: Option<&str>,
        content: OpenContent<'_>,
    ) -> Result<bool> {
        if self.exists(desc).await? {
            return Ok(true);
        }
        self.push(desc, content().await?).await?;
        Ok(false)
    }

    /// The size of the blob `digest` if this target has it, for commands that name a blob
    /// by digest alone (`blob fetch REF@DIGEST`).
    async fn stat(&self, digest: &crate::digest::Digest) -> Result<Option<u64>> {
        Err(Error::Usage(format!(
            "{} cannot look up blob {digest} by digest alone",
            self.name()
        )))
    }

    /// How many blob transfers `way` (reads from here or writes to here) to run at once when
    /// `requested` were asked for: a registry that multiplexes requests over one HTTP/2
    /// connection takes more, since they cost no connection each.
    async fn transfers_at_once(&self, _way: Way, requested: usize) -> usize {
        requested
    }

    /// Starts an upload of a blob whose digest is given only at its end, so that hashing a
    /// large file can run alongside the upload. `None`: this target needs the digest first.
    async fn begin_upload(&self) -> Result<Option<Box<dyn Upload>>> {
        Ok(None)
    }
}

/// Which way transfers go, as seen from a target: they may go to different endpoints (a
/// registry with mirrors reads from a mirror and writes to its origin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Read,
    Write,
}

/// Opens a blob's content when a transfer turns out to need it.
pub type OpenContent<'a> =
    Box<dyn FnOnce() -> futures_util::future::BoxFuture<'a, Result<ByteStream>> + Send + 'a>;

/// An upload begun before the blob's digest is known (see [`Target::begin_upload`]). Dropped
/// before `commit`, it is abandoned and the target discards what it received.
#[async_trait]
pub trait Upload: Send {
    /// Sends the whole content, `size` bytes.
    async fn send(&mut self, content: ByteStream, size: u64) -> Result<()>;

    /// Makes the sent bytes the blob `desc`; the target checks them against its digest.
    async fn commit(self: Box<Self>, desc: &Descriptor) -> Result<()>;

    /// Discards what was sent (best effort: the target purges abandoned uploads anyway).
    async fn abort(self: Box<Self>) {}
}

/// Wraps a stream so that it fails, at its end, unless the bytes match `desc`.
pub fn verified(desc: &Descriptor, stream: ByteStream) -> ByteStream {
    let verifier = Some(Verifier::new(&desc.digest, desc.size));
    Box::pin(futures_util::stream::unfold(
        (stream, verifier),
        |(mut stream, mut verifier)| async move {
            let v = verifier.as_mut()?;
            match stream.next().await {
                Some(Ok(chunk)) => match v.update(&chunk) {
                    Ok(()) => Some((Ok(chunk), (stream, verifier))),
                    Err(e) => Some((Err(e), (stream, None))),
                },
                Some(Err(e)) => Some((Err(e), (stream, None))),
                None => match verifier.take().expect("checked above").finish() {
                    Ok(()) => None,
                    Err(e) => Some((Err(e), (stream, None))),
                },
            }
        },
    ))
}

/// Reads a whole small blob into memory, refusing more than `cap` bytes, and verifies it.
pub async fn read_all(target: &dyn Target, desc: &Descriptor, cap: u64) -> Result<Bytes> {
    if desc.size > cap {
        return Err(too_large(desc, cap));
    }
    collect(desc, target.fetch(desc).await?, cap).await
}

/// Collects a stream of at most `cap` bytes into memory, verified against `desc`.
pub async fn collect(desc: &Descriptor, stream: ByteStream, cap: u64) -> Result<Bytes> {
    if desc.size > cap {
        return Err(too_large(desc, cap));
    }
    let mut stream = verified(desc, stream);
    let mut buf = Vec::with_capacity(desc.size as usize);
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
    }
    Ok(buf.into())
}

fn too_large(desc: &Descriptor, cap: u64) -> Error {
    Error::Protocol(format!(
        "{} is {} bytes, over the {cap}-byte limit for content read into memory",
        desc.digest, desc.size
    ))
}

/// Reads a resolved manifest (capped at 4 MiB) and verifies it.
pub async fn read_manifest(target: &dyn Target, desc: &Descriptor) -> Result<Bytes> {
    if desc.size > MAX_MANIFEST_SIZE {
        return Err(too_large(desc, MAX_MANIFEST_SIZE));
    }
    collect(desc, target.fetch_manifest(desc).await?, MAX_MANIFEST_SIZE).await
}

/// Resolves `reference` and fetches, verifies and parses its manifest.
pub async fn fetch_manifest(
    target: &dyn Target,
    reference: &str,
) -> Result<(Descriptor, Bytes, Manifest)> {
    let desc = target.resolve(reference).await?;
    let bytes = read_named_manifest(target, reference, &desc).await?;
    let manifest = parse_named_manifest(reference, &desc, &bytes)?;
    Ok((desc, bytes, manifest))
}

/// [`read_manifest`], its errors naming `reference`.
async fn read_named_manifest(
    target: &dyn Target,
    reference: &str,
    desc: &Descriptor,
) -> Result<Bytes> {
    read_manifest(target, desc).await.map_err(|e| match e {
        Error::Protocol(m) => Error::InvalidManifest {
            context: format!(" {reference}"),
            reason: m,
        },
        e => e,
    })
}

/// [`Manifest::parse`], its errors naming `reference` and its digest.
fn parse_named_manifest(reference: &str, desc: &Descriptor, bytes: &[u8]) -> Result<Manifest> {
    Manifest::parse(bytes, Some(&desc.media_type)).map_err(|e| named(e, reference, desc))
}

/// A manifest (or image index) as fetched, and the index it was chosen from.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub descriptor: Descriptor,
    /// Verified bytes, at most 4 MiB.
    pub bytes: Bytes,
    /// The image index `descriptor` was chosen from by platform, if any.
    pub index: Option<Descriptor>,
}

impl Fetched {
    pub fn is_index(&self) -> bool {
        crate::manifest::is_index(&self.bytes, Some(&self.descriptor.media_type))
    }

    /// Parses the bytes as a manifest, errors naming `reference` (an index is refused with
    /// the list of its children).
    pub fn manifest(&self, reference: &str) -> Result<Manifest> {
        parse_named_manifest(reference, &self.descriptor, &self.bytes)
    }
}

/// Resolves `reference` and fetches what it names. With `platform`, an image index gives way
/// to its child for that platform (an error listing the children if none matches); without,
/// an index is returned as it is (as `oras resolve` and `oras manifest fetch` do). A manifest
/// that is not an index is returned as it is either way.
pub async fn fetch_platform_bytes(
    target: &dyn Target,
    reference: &str,
    platform: Option<&Platform>,
) -> Result<Fetched> {
    let desc = target.resolve(reference).await?;
    let bytes = read_named_manifest(target, reference, &desc).await?;
    let fetched = Fetched {
        descriptor: desc,
        bytes,
        index: None,
    };
    let Some(want) = platform.filter(|_| fetched.is_index()) else {
        return Ok(fetched);
    };
    let index =
        Index::parse(&fetched.bytes).map_err(|e| named(e, reference, &fetched.descriptor))?;
    let Some(child) = index.find(want) else {
        return Err(Error::Usage(format!(
            "{reference} is an image index with no manifest for {want}; choose one with \
             --platform: {}",
            index.children_list()
        )));
    };
    let bytes = read_named_manifest(target, child.digest.as_str(), child).await?;
    Ok(Fetched {
        descriptor: child.clone(),
        bytes,
        index: Some(fetched.descriptor),
    })
}

/// An `InvalidManifest` error naming `reference` and its digest.
fn named(e: Error, reference: &str, desc: &Descriptor) -> Error {
    match e {
        Error::InvalidManifest { reason, .. } => Error::InvalidManifest {
            context: format!(" {} ({})", reference, desc.digest),
            reason,
        },
        e => e,
    }
}

/// Like [`fetch_manifest`], but of an image index, the child for `platform`; without one, an
/// index is refused with the list of its children. The index's descriptor is returned beside.
pub async fn fetch_platform_manifest(
    target: &dyn Target,
    reference: &str,
    platform: Option<&Platform>,
) -> Result<(Descriptor, Bytes, Manifest, Option<Descriptor>)> {
    let f = fetch_platform_bytes(target, reference, platform).await?;
    let manifest = f.manifest(reference)?;
    Ok((f.descriptor, f.bytes, manifest, f.index))
}

/// A stream of one in-memory chunk.
pub fn once(bytes: Bytes) -> ByteStream {
    Box::pin(futures_util::stream::once(async move { Ok(bytes) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(chunks: Vec<Bytes>) -> ByteStream {
        Box::pin(futures_util::stream::iter(chunks.into_iter().map(Ok)))
    }

    /// `data` cut into chunks of varied sizes, empty ones included.
    fn chunked(data: &[u8]) -> Vec<Bytes> {
        let (mut out, mut at, mut size) = (Vec::new(), 0, 0usize);
        while at < data.len() {
            let n = size.min(data.len() - at);
            out.push(Bytes::copy_from_slice(&data[at..at + n]));
            at += n;
            size = (size * 7 + 1) % 70_001;
        }
        out
    }

    #[tokio::test]
    async fn write_verified_writes_every_chunk_and_leaves_nothing_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let desc = Descriptor::of("application/octet-stream", &data);
        let dest = std::path::Path::new("x");
        let tmp = write_verified(dir.path(), &desc, stream_of(chunked(&data)), dest)
            .await
            .unwrap();
        assert_eq!(std::fs::read(tmp.path()).unwrap(), data);
        drop(tmp);

        let mut longer = data.clone();
        longer.push(0);
        let err = write_verified(dir.path(), &desc, stream_of(chunked(&longer)), dest).await;
        assert!(matches!(err, Err(Error::SizeMismatch { .. })));
        let mut other = data.clone();
        other[2_999_999] ^= 1;
        let err = write_verified(dir.path(), &desc, stream_of(chunked(&other)), dest).await;
        assert!(matches!(err, Err(Error::DigestMismatch { .. })));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
