//! Files inside compressed layers, read lazily: what a layer holds (from its seekable TOC, or
//! from a gzip seek index: cached, else built in one pass over the layer) and a file's bytes,
//! fetched chunk by chunk through the block cache and verified chunk by chunk before any of
//! them is served. A tar+zstd layer is the exception: it is decompressed whole into the cache
//! when it is listed (see `zstd_listing`). The formats themselves are in `crate::archive`;
//! this is only the glue to the cache.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::cache::{BlobCache, Errno};
use super::filesystem::OrasFs;
use super::tree::{LayerFile, Stream};
use super::view::Snapshot;
use crate::archive::{gzindex, seekable, Chunk, ChunkAt, Entry, EntryKind};
use crate::digest::Digest;
use crate::layer_index;
use crate::manifest::Descriptor;

/// The largest TOC fetched (compressed); eStargz TOCs are a few hundred bytes a file.
const MAX_TOC: u64 = 64 << 20;
/// Bytes of decompressed chunks kept in memory, so that the 128 KiB reads of a sequential
/// reader do not decompress a chunk again each time.
const CHUNKS_KEPT_BYTES: u64 = 64 << 20;
/// The largest chunk served: a chunk is verified whole, in memory, before any of it is
/// served. eStargz writers cut 4 MiB chunks; a TOC claiming more is refused (`EIO`).
const MAX_CHUNK: u64 = 64 << 20;
/// An indexed read decompresses this much past the chunk asked for (the chunks that follow
/// in the same file): one pass from a checkpoint serves a sequential reader for a while.
const STREAM_READ_AHEAD: u64 = 8 << 20;
/// The most compressed bytes one indexed read may fetch (checkpoints are 4 MiB apart in the
/// indexes oras-fs builds; a published index with far fewer is refused here).
const MAX_STREAM_FETCH: u64 = 64 << 20;

/// What a layer holds, as the mount shows it: its entries, or for an indexed layer its
/// index (which lists the entries and says how to reach their chunks), or for a layer
/// decompressed into the cache its entries and that file.
#[derive(Debug)]
pub enum Listing {
    Entries(Vec<Entry>),
    Indexed(Arc<gzindex::Index>),
    Decoded {
        entries: Vec<Entry>,
        tar: Arc<PathBuf>,
    },
}

impl Listing {
    pub fn entries(&self) -> &[Entry] {
        match self {
            Listing::Entries(e) | Listing::Decoded { entries: e, .. } => e,
            Listing::Indexed(i) => i.entries(),
        }
    }

    /// Where its files' chunks at stream offsets are read from (`None`: the blob itself).
    pub fn stream(&self) -> Option<Stream> {
        match self {
            Listing::Entries(_) => None,
            Listing::Indexed(i) => Some(Stream::Indexed(i.clone())),
            Listing::Decoded { tar, .. } => Some(Stream::Decoded(tar.clone())),
        }
    }
}

/// A manifest's seek-index referrer: the index blob of each layer it indexes.
type Published = HashMap<Digest, Descriptor>;

/// The mount's memory of layers: listings by layer digest, recently decompressed chunks.
pub struct LayerState {
    listings: Mutex<HashMap<Digest, Arc<Listing>>>,
    decoded: Arc<Decoded>,
    /// A seekable layer's gzip members in the order they are in the blob, for decoding
    /// ahead of a reader going through them in that order.
    members: Mutex<HashMap<Digest, Arc<Vec<Chunk>>>>,
    /// The manifest each layer was shown from (the mounted one, an index's child, a
    /// repository mount's tag), whose seek-index referrer may index it.
    subjects: Mutex<HashMap<Digest, Descriptor>>,
    /// Image layers' uncompressed digests (the config's `diff_ids`), where the config lists
    /// one per layer: a zstd layer's decompressed copy is checked against it.
    diff_ids: Mutex<HashMap<Digest, Digest>>,
    /// One zstd decompression at a time (see `unzstd_once`).
    unzstd: tokio::sync::Mutex<()>,
    /// Each such manifest's seek-index referrer (`oras-fs index`): index blobs by layer,
    /// looked up once per manifest.
    published: Mutex<HashMap<Digest, Arc<tokio::sync::OnceCell<Published>>>>,
    /// Layers that could not be listed, and why.
    failed: Mutex<HashMap<Digest, String>>,
    /// Readers going through a seekable layer's files in order, by layer.
    walks: Mutex<HashMap<Digest, Walk>>,
}

impl Default for LayerState {
    fn default() -> Self {
        LayerState {
            listings: Mutex::new(HashMap::new()),
            decoded: Arc::default(),
            members: Mutex::new(HashMap::new()),
            subjects: Mutex::new(HashMap::new()),
            diff_ids: Mutex::new(HashMap::new()),
            unzstd: tokio::sync::Mutex::new(()),
            published: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            walks: Mutex::new(HashMap::new()),
        }
    }
}

/// Where a reader of a layer's members is going: the end of the last member it fetched, how
/// far ahead to fetch while it keeps going on from there, and how far has been asked for
/// (fetched, and decompressed).
#[derive(Clone, Copy, Default)]
struct Walk {
    end: u64,
    window: u64,
    ahead_to: u64,
    decoded_to: u64,
}

/// The first read-ahead across files, doubled on every file read in order, up to the last.
const WALK_WINDOW: (u64, u64) = (1 << 20, 16 << 20);
/// The end of a seekable layer fetched with its footer, for the TOC before it.
const TOC_GUESS: u64 = 256 * 1024;
/// How far (compressed bytes) ahead of a reader going through a layer in order its members
/// are decompressed and verified in the background, on another core.
const DECODE_AHEAD: u64 = 8 << 20;

/// What a reader's step through a layer starts in the background.
struct Ahead {
    fetch: Range<u64>,
    decode: Range<u64>,
}

impl LayerState {
    /// Records which manifest shows each layer of `snapshot` (and of its children), for
    /// finding their published seek indexes. A layer shared by several keeps the first.
    pub(super) fn note_subjects(&self, snapshot: &Snapshot) {
        let mut subjects = self.subjects.lock().unwrap();
        for layer in &snapshot.manifest.layers {
            subjects
                .entry(layer.digest.clone())
                .or_insert_with(|| snapshot.descriptor.clone());
        }
        drop(subjects);
        let layers = &snapshot.manifest.layers;
        let ids = diff_ids(&snapshot.config_bytes);
        if ids.len() == layers.len() {
            let mut known = self.diff_ids.lock().unwrap();
            for (layer, id) in layers.iter().zip(ids) {
                known.insert(layer.digest.clone(), id);
            }
        }
        for (_, child) in &snapshot.children {
            self.note_subjects(child);
        }
    }

    /// Records a fetch of the member at `offset..end` of `layer`; says what to fetch and
    /// decompress in the background (nothing when the reader is not going through in order,
    /// or what it reads next is already on its way).
    ///
    /// Both are asked for in batches, a window at a time once half of the last one is
    /// consumed (as the kernel's readahead does): sliding the window a file at a time would
    /// send one small Range request per file, and each costs the registry more than its
    /// bytes.
    fn walk(&self, layer: &Digest, offset: u64, end: u64) -> Ahead {
        let mut walks = self.walks.lock().unwrap();
        let w = walks.entry(layer.clone()).or_default();
        let mut ahead = Ahead {
            fetch: 0..0,
            decode: 0..0,
        };
        if end == w.end {
            // The same member again (the next 128 KiB of its chunk): no step.
            return ahead;
        }
        let in_order = offset == w.end && w.end > 0;
        w.end = end;
        if !in_order {
            w.window = 0;
            w.ahead_to = end;
            w.decoded_to = end;
            return ahead;
        }
        w.window = (w.window * 2).clamp(WALK_WINDOW.0, WALK_WINDOW.1);
        if w.ahead_to.saturating_sub(end) <= w.window / 2 {
            ahead.fetch = w.ahead_to.max(end)..end + w.window;
            w.ahead_to = end + w.window;
        }
        // Never past what is being fetched: decoding must not send requests of its own.
        let decode_to = (end + DECODE_AHEAD).min(w.ahead_to);
        if w.decoded_to.saturating_sub(end) <= DECODE_AHEAD / 2 && decode_to > w.decoded_to {
            ahead.decode = w.decoded_to.max(end)..decode_to;
            w.decoded_to = decode_to;
        }
        ahead
    }

    /// The gzip members of a seekable layer in blob order.
    fn members(&self, layer: &Digest) -> Option<Arc<Vec<Chunk>>> {
        if let Some(m) = self.members.lock().unwrap().get(layer) {
            return Some(m.clone());
        }
        let listing = self.listings.lock().unwrap().get(layer)?.clone();
        let mut members: Vec<Chunk> = listing
            .entries()
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::File { chunks, .. } => Some(chunks),
                _ => None,
            })
            .flatten()
            .filter(|c| matches!(c.at, ChunkAt::Member { .. }))
            .cloned()
            .collect();
        members.sort_by_key(chunk_key);
        let members = Arc::new(members);
        self.members
            .lock()
            .unwrap()
            .insert(layer.clone(), members.clone());
        Some(members)
    }
}

/// Decompressed, verified chunks: kept in memory a while, and decoded once however many
/// readers (and the decoder ahead of them) ask at the same time.
#[derive(Default)]
struct Decoded {
    kept: Mutex<Chunks>,
    busy: Mutex<HashMap<ChunkKey, Arc<tokio::sync::OnceCell<Decode>>>>,
}

type ChunkKey = (Digest, u64);
type Decode = Result<Bytes, DecodeError>;

#[derive(Clone, Debug)]
enum DecodeError {
    /// The fetch failed (the cache has said why).
    Fetch(Errno),
    /// The bytes are not what the TOC says.
    Bad(String),
}

impl Decoded {
    fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        self.kept.lock().unwrap().get(key)
    }

    fn put(&self, key: ChunkKey, data: Bytes) {
        self.kept.lock().unwrap().put(key, data)
    }

    /// A gzip member's chunk, verified: kept, or being decoded (then this waits for it), or
    /// fetched and decoded now.
    ///
    /// Decoding runs in place, on whichever thread asks: a chunk is at most a few MiB (a few
    /// ms), and handing each small file's member to a blocking thread measured slower (a
    /// `cp -r` of 1,000 files: 1.4x a pull instead of 1.1x).
    async fn member(
        &self,
        cache: &Arc<BlobCache>,
        layer: &Arc<Descriptor>,
        c: &Chunk,
        prefetch: Range<u64>,
    ) -> Decode {
        let ChunkAt::Member { offset, end } = c.at else {
            return Err(DecodeError::Bad("not a gzip member".into()));
        };
        within_bound(c).map_err(DecodeError::Bad)?;
        let key = (layer.digest.clone(), offset);
        if let Some(b) = self.get(&key) {
            return Ok(b);
        }
        let cell = self
            .busy
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        let decoded = cell
            .get_or_init(|| async {
                if let Some(b) = self.get(&key) {
                    return Ok(b);
                }
                // Only the member's start is needed: a TOC cannot make a small file cost a
                // large fetch by placing the next entry far away.
                let len = (end - offset).min(member_bound(c.len));
                let compressed = cache
                    .read(layer, offset, len, prefetch)
                    .await
                    .map_err(DecodeError::Fetch)?;
                let data = gunzip_prefix(&compressed, c.len).map_err(|e| e.to_string());
                let data = data
                    .and_then(|data| check(&data, c).map(|()| Bytes::from(data)))
                    .map_err(DecodeError::Bad)?;
                self.put(key.clone(), data.clone());
                Ok(data)
            })
            .await
            .clone();
        let mut busy = self.busy.lock().unwrap();
        if busy.get(&key).is_some_and(|b| Arc::ptr_eq(b, &cell)) {
            busy.remove(&key);
        }
        decoded
    }
}

/// Recently decompressed chunks, bounded by their total size.
struct Chunks {
    lru: lru::LruCache<(Digest, u64), Bytes>,
    bytes: u64,
}

impl Default for Chunks {
    fn default() -> Self {
        Chunks {
            lru: lru::LruCache::unbounded(),
            bytes: 0,
        }
    }
}

impl Chunks {
    fn get(&mut self, key: &(Digest, u64)) -> Option<Bytes> {
        self.lru.get(key).cloned()
    }

    fn put(&mut self, key: (Digest, u64), data: Bytes) {
        self.bytes += data.len() as u64;
        if let Some(old) = self.lru.put(key, data) {
            self.bytes -= old.len() as u64;
        }
        while self.bytes > CHUNKS_KEPT_BYTES {
            match self.lru.pop_lru() {
                Some((_, b)) => self.bytes -= b.len() as u64,
                None => break,
            }
        }
    }
}

/// How a layer can be read lazily, if it can.
pub fn lazy_format(desc: &Descriptor) -> Option<LazyFormat> {
    // A layer whose TOC annotation is no digest claims a TOC it does not describe: neither
    // seekable nor indexed (a directory layer is then unpacked whole, verified).
    if let Some(Ok(toc)) = desc
        .annotation(seekable::TOC_DIGEST_ANNOTATION)
        .map(str::parse::<Digest>)
    {
        return Some(LazyFormat::Seekable(toc));
    }
    if layer_index::wants_index(desc) {
        return Some(LazyFormat::Gzip);
    }
    // OCI's `tar+zstd`, and containerd's Docker-style `rootfs.diff.tar.zstd`.
    if desc.media_type.ends_with("+zstd") || desc.media_type.ends_with(".tar.zstd") {
        return Some(LazyFormat::Zstd);
    }
    // Uncompressed image layers are seekable as they are.
    desc.media_type.ends_with(".tar").then_some(LazyFormat::Tar)
}

pub enum LazyFormat {
    /// A TOC (whose digest the annotation gives) says where each file's gzip members are.
    Seekable(Digest),
    /// Any tar+gzip: a seek index says where to start decompressing.
    Gzip,
    /// A tar+zstd: decompressed into the cache once, its files then ranges of that.
    Zstd,
    /// An uncompressed tar: files are byte ranges of the blob.
    Tar,
}

impl OrasFs {
    /// What a layer holds: from its TOC (two small Range requests), from its index in the
    /// cache, or by building that index in one pass over the (cached, verified) layer.
    pub(super) async fn listing(&self, desc: &Descriptor) -> Result<Arc<Listing>, Errno> {
        if let Some(l) = self.layers.listings.lock().unwrap().get(&desc.digest) {
            return Ok(l.clone());
        }
        // A layer that failed stays failed for this mount: no new download on every `stat`.
        if let Some(why) = self.layers.failed.lock().unwrap().get(&desc.digest) {
            return Err(Errno::new(libc::EIO, why.clone()));
        }
        let listing = self.list(desc).await.inspect_err(|e| {
            self.layers
                .failed
                .lock()
                .unwrap()
                .insert(desc.digest.clone(), e.to_string());
        })?;
        let listing = Arc::new(listing);
        self.layers
            .listings
            .lock()
            .unwrap()
            .insert(desc.digest.clone(), listing.clone());
        Ok(listing)
    }

    async fn list(&self, desc: &Descriptor) -> Result<Listing, Errno> {
        Ok(match lazy_format(desc) {
            Some(LazyFormat::Seekable(toc)) => {
                Listing::Entries(self.toc_entries(desc, &toc).await?)
            }
            Some(LazyFormat::Gzip) => Listing::Indexed(self.gzip_index(desc).await?),
            Some(LazyFormat::Zstd) => self.zstd_listing(desc).await?,
            Some(LazyFormat::Tar) => Listing::Entries(self.tar_entries(desc).await?),
            None => {
                return Err(self.eio(format!(
                    "layer {} ({}) is neither tar, gzip, zstd nor seekable: its files cannot be \
                     listed",
                    desc.digest, desc.media_type
                )));
            }
        })
    }

    /// The listing of an uncompressed tar layer, in one pass over the (cached, verified)
    /// blob.
    async fn tar_entries(&self, desc: &Descriptor) -> Result<Vec<Entry>, Errno> {
        let blob = self.cache.materialize(desc).await?;
        list_tar_file(blob)
            .await
            .map_err(|e| self.eio(format!("listing layer {}: {e}", desc.digest)))
    }

    /// The listing of a tar+zstd layer, decompressed whole into the cache
    /// (`unpacked/sha256/<hex>.tar`) from the (cached, verified) blob, once for every mount
    /// sharing the cache, and checked against the image config's `diff_ids` where it names
    /// the layer. Not a seek index as for gzip: a zstd layer is usually one frame, and
    /// restarting inside a frame needs the decoder's window (megabytes), not gzip's 32 KiB, at
    /// every checkpoint.
    async fn zstd_listing(&self, desc: &Descriptor) -> Result<Listing, Errno> {
        let tar = self.unpacked_tar_path(&desc.digest);
        for attempt in 0..2 {
            if !tar.exists() {
                // Downloads run in parallel; decompressions one at a time (below).
                let blob = self.cache.materialize(desc).await?;
                self.unzstd_once(desc, &blob, &tar).await?;
            }
            match list_tar_file(tar.clone()).await {
                Ok(entries) => {
                    return Ok(Listing::Decoded {
                        entries,
                        tar: Arc::new(tar),
                    })
                }
                // One left by an older version or damaged on disk: made again, once.
                Err(e) if attempt == 0 => {
                    tracing::warn!("{}: {e}; decompressing it again", tar.display());
                    let _ = std::fs::remove_file(&tar);
                }
                Err(e) => return Err(self.eio(format!("listing layer {}: {e}", desc.digest))),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Decompresses the zstd `blob` of `desc` to `tar` unless it is there (made meanwhile by
    /// another lookup or mount). One at a time in a mount: the room left under
    /// `--cache-size` is then what the others left.
    async fn unzstd_once(
        &self,
        desc: &Descriptor,
        blob: &std::path::Path,
        tar: &std::path::Path,
    ) -> Result<(), Errno> {
        let _one = self.layers.unzstd.lock().await;
        if tar.exists() {
            return Ok(());
        }
        // As for directory layers: what layers decompress to is never evicted, and all of it
        // together stays within --cache-size (a zstd bomb stops here).
        let room = self
            .cache
            .disk_limit()
            .saturating_sub(self.cache.unpacked_usage())
            .min(gzindex::BuildOptions::default().max_uncompressed);
        let diff_id = self
            .layers
            .diff_ids
            .lock()
            .unwrap()
            .get(&desc.digest)
            .cloned();
        let (blob, dest) = (blob.to_path_buf(), tar.to_path_buf());
        let decoded = tokio::task::spawn_blocking(move || unzstd(&blob, &dest, room, diff_id))
            .await
            .unwrap_or_else(|e| Err(Unzstd::Io(format!("the task failed: {e}"))));
        decoded.map_err(|e| {
            let what = format!("decompressing layer {}: {e}", desc.digest);
            self.record_error(&what);
            match e {
                Unzstd::TooLarge(_) => Errno::new(libc::ENOSPC, what),
                Unzstd::Io(_) | Unzstd::Mismatch(_) => Errno::new(libc::EIO, what),
            }
        })
    }

    fn unpacked_tar_path(&self, digest: &Digest) -> PathBuf {
        self.cache
            .dir()
            .join("unpacked")
            .join(digest.algorithm())
            .join(format!("{}.tar", digest.hex()))
    }

    async fn toc_entries(&self, desc: &Descriptor, want: &Digest) -> Result<Vec<Entry>, Errno> {
        let bad = |what: String| self.eio(format!("layer {}: {what}", desc.digest));
        let footer_at = desc.size.saturating_sub(seekable::FOOTER_SIZE);
        // The footer's request brings the layer's last 256 KiB, where the TOC usually is:
        // one Range request for both, as when cache blocks were that large.
        let tail = desc.size.saturating_sub(TOC_GUESS)..desc.size;
        let footer = self
            .cache
            .read(desc, footer_at, seekable::FOOTER_SIZE, tail)
            .await?;
        let toc = seekable::locate_toc(&footer, desc.size).map_err(|e| bad(e.to_string()))?;
        if toc.end - toc.start > MAX_TOC {
            return Err(bad(format!(
                "the footer puts the TOC at {}, {} bytes before the end (at most {MAX_TOC})",
                toc.start,
                toc.end - toc.start
            )));
        }
        let member = self
            .cache
            .read(desc, toc.start, toc.end - toc.start, 0..0)
            .await?;
        seekable::parse_toc(&member, desc.size, Some(want)).map_err(|e| bad(e.to_string()))
    }

    /// The seek index of a gzip layer: from the cache, else from the manifest's seek-index
    /// referrer, else built from the whole layer (fetched and verified into the cache, as a
    /// pull would); kept in the cache by layer digest.
    async fn gzip_index(&self, desc: &Descriptor) -> Result<Arc<gzindex::Index>, Errno> {
        let path = self.index_path(&desc.digest);
        if let Ok(bytes) = std::fs::read(&path) {
            match gzindex::Index::from_bytes(&bytes) {
                Ok(i) => return Ok(Arc::new(i)),
                Err(e) => {
                    tracing::warn!("ignoring the cached index {}: {e}", path.display());
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        if let Some(index) = self.published_index(desc).await {
            return Ok(Arc::new(index));
        }
        // Nothing is unpacked: the bound only stops a gzip bomb from costing hours of CPU.
        let limit = self.cache.disk_limit().max(
            crate::content::file::UnpackLimit::Auto
                .for_layer(desc.size)
                .unwrap_or(u64::MAX),
        );
        let built = match self.cache.materialize(desc).await {
            Ok(blob) => {
                let size = desc.size;
                scan_file(blob, move |file| layer_index::index_of(file, size, limit)).await
            }
            // Too large for the cache (or the disk is full): index it as it streams by, and
            // read its files by ranges, uncached, as any such blob.
            Err(e) if e == libc::ENOSPC => {
                layer_index::build(self.cache.source().as_ref(), desc, limit)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => return Err(e),
        };
        let index = built.map_err(|e| self.eio(format!("indexing layer {}: {e}", desc.digest)))?;
        if let Err(e) = write_atomically(&path, &index.to_bytes()) {
            tracing::warn!("could not keep the index of {}: {e}", desc.digest);
        }
        Ok(Arc::new(index))
    }

    /// The layer's index from the seek-index referrer of the manifest that shows it, if
    /// there is one. Its chunk digests are then as trustworthy as whoever may push to the
    /// repository (docs/DESIGN.md); a failure here only means the index is built locally.
    async fn published_index(&self, desc: &Descriptor) -> Option<gzindex::Index> {
        let known = self
            .layers
            .subjects
            .lock()
            .unwrap()
            .get(&desc.digest)
            .cloned();
        let subject = known.unwrap_or_else(|| self.snapshot().descriptor);
        let source = self.cache.source();
        let source = source.holding(&subject.digest).unwrap_or(source.clone());
        let cell = (self.layers.published.lock().unwrap())
            .entry(subject.digest.clone())
            .or_default()
            .clone();
        let published = cell
            .get_or_init(|| async {
                layer_index::find(source.as_ref(), &subject)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::debug!("no seek-index referrer of {}: {e}", subject.digest);
                        HashMap::new()
                    })
            })
            .await;
        let blob = published.get(&desc.digest)?;
        // Kept by the index blob's digest, not the layer's: a later mount uses it only where
        // the same referrer is found again, never as an index built here.
        let path = self.index_path(&blob.digest);
        if let Ok(index) = std::fs::read(&path).map(|b| gzindex::Index::from_bytes(&b)) {
            match index {
                Ok(i) if i.compressed_size() == desc.size => return Some(i),
                _ => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        match layer_index::fetch(source.as_ref(), blob, desc).await {
            Ok(index) => {
                tracing::debug!(
                    "{}: seek index {} from the registry",
                    desc.digest,
                    blob.digest
                );
                if let Err(e) = write_atomically(&path, &index.to_bytes()) {
                    tracing::warn!("could not keep the seek index {}: {e}", blob.digest);
                }
                Some(index)
            }
            Err(e) => {
                tracing::warn!("ignoring the published seek index of {}: {e}", desc.digest);
                None
            }
        }
    }

    fn index_path(&self, digest: &Digest) -> PathBuf {
        self.cache
            .dir()
            .join("indexes")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    /// Reads `size` bytes at `offset` of a file inside a layer.
    pub(super) async fn read_layer_file(
        &self,
        file: &LayerFile,
        offset: u64,
        size: u64,
    ) -> Result<Bytes, Errno> {
        let end = offset.saturating_add(size);
        let mut out = Vec::with_capacity(size.min(8 << 20) as usize);
        let first = file
            .chunks
            .partition_point(|c| c.file_offset + c.len <= offset);
        for i in first..file.chunks.len() {
            let c = &file.chunks[i];
            if c.file_offset >= end {
                break;
            }
            let data = self.chunk(file, i).await?;
            let from = offset.saturating_sub(c.file_offset) as usize;
            let to = ((end - c.file_offset).min(c.len)) as usize;
            out.extend_from_slice(&data[from.min(data.len())..to.min(data.len())]);
        }
        Ok(out.into())
    }

    /// One chunk's bytes, verified.
    async fn chunk(&self, file: &LayerFile, i: usize) -> Result<Bytes, Errno> {
        let key = |c: &Chunk| (file.layer.digest.clone(), chunk_key(c));
        let c = &file.chunks[i];
        let layer = &file.layer;
        // A reader going through the layer's members in order (`cp -r`, `tar c`, `grep -r`
        // read files in the order they were packed in) gets the members after this one
        // fetched and decoded in the background; a step counts even when its chunk was
        // decoded ahead, or the reader would seem to jump.
        let mut fetch_ahead = 0..0;
        if let ChunkAt::Member { offset, end } = c.at {
            let ahead = self.layers.walk(&layer.digest, offset, end);
            if !ahead.decode.is_empty() {
                self.decode_ahead(layer, ahead.decode);
            }
            fetch_ahead = ahead.fetch.start..ahead.fetch.end.min(layer.size);
        }
        // The batch is asked for here, whoever decodes this chunk: a reader that joins the
        // decoder ahead of it (or finds the chunk decoded) would otherwise never ask for it.
        if !fetch_ahead.is_empty() {
            let _ = self.cache.prefetch(layer, fetch_ahead);
        }
        if let Some(b) = self.layers.decoded.get(&key(c)) {
            return Ok(b);
        }
        let fail = |what: String| self.eio(format!("layer {}: {what}", layer.digest));
        within_bound(c).map_err(fail)?;
        match (&c.at, &file.stream) {
            (ChunkAt::Member { offset, .. }, _) => {
                // The next chunk's members arrive in the background for a sequential reader
                // of this file.
                let next = match file.chunks.get(i + 1) {
                    Some(
                        n @ Chunk {
                            at: ChunkAt::Member { offset, end },
                            ..
                        },
                    ) => *offset..(*end).min(offset + member_bound(n.len)),
                    _ => 0..0,
                };
                self.layers
                    .decoded
                    .member(&self.cache, layer, c, next)
                    .await
                    .map_err(|e| match e {
                        DecodeError::Fetch(e) => e,
                        DecodeError::Bad(what) => fail(format!("chunk at {offset}: {what}")),
                    })
            }
            (ChunkAt::Stream { offset }, Some(Stream::Indexed(index))) => {
                // Decompress this chunk and the ones after it in the file, in one pass.
                let mut last = i;
                while let Some(n) = file.chunks.get(last + 1) {
                    match n.at {
                        ChunkAt::Stream { offset: o }
                            if o + n.len - offset <= STREAM_READ_AHEAD =>
                        {
                            last += 1
                        }
                        _ => break,
                    }
                }
                let want = *offset..stream_end(&file.chunks[last]);
                // Most likely enough; else everything up to the next checkpoint.
                let (checkpoint, likely) = index.likely_range(want.clone());
                let (_, safe) = index.compressed_range(want.clone());
                let mut data = Err(String::new());
                for range in [likely, safe.clone()] {
                    if range.end - range.start > MAX_STREAM_FETCH {
                        return Err(fail(format!(
                            "the seek index needs {} compressed bytes for {} at {} (more than \
                             {MAX_STREAM_FETCH}): its checkpoints are too far apart",
                            range.end - range.start,
                            want.end - want.start,
                            want.start
                        )));
                    }
                    let compressed = self
                        .cache
                        .read(layer, range.start, range.end - range.start, 0..0)
                        .await?;
                    data = index
                        .extract(checkpoint, &compressed, want.clone())
                        .map_err(|e| e.to_string());
                    if data.is_ok() || range.end >= safe.end {
                        break;
                    }
                }
                let data =
                    data.map_err(|e| fail(format!("decompressing at {}: {e}", want.start)))?;
                let mut mine = None;
                for (j, cj) in file.chunks[i..=last].iter().enumerate() {
                    let ChunkAt::Stream { offset: o } = cj.at else {
                        break;
                    };
                    let from = (o - want.start) as usize;
                    let piece = data
                        .get(from..from + cj.len as usize)
                        .ok_or_else(|| fail(format!("index gave too few bytes at {o}")))?;
                    check(piece, cj).map_err(|e| fail(format!("chunk at {o}: {e}")))?;
                    let piece = Bytes::copy_from_slice(piece);
                    if j == 0 {
                        mine = Some(piece.clone());
                    }
                    self.layers.decoded.put(key(cj), piece);
                }
                mine.ok_or_else(|| fail("no chunk decompressed".into()))
            }
            // A layer decompressed into the cache: the chunk is a range of that file.
            (ChunkAt::Stream { offset }, Some(Stream::Decoded(tar))) => {
                let (tar, at, len) = (tar.clone(), *offset, c.len as usize);
                // Opened per chunk, not held per layer: a repository mount may list many.
                let data = tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0; len];
                    let file = std::fs::File::open(tar.as_path())?;
                    file.read_exact_at(&mut buf, at).map(|()| buf)
                })
                .await
                .map_err(|e| fail(format!("reading chunk at {offset}: {e}")))?
                .map_err(|e| fail(format!("reading chunk at {offset}: {e}")))?;
                check(&data, c).map_err(|e| fail(format!("chunk at {offset}: {e}")))?;
                let data = Bytes::from(data);
                self.layers.decoded.put(key(c), data.clone());
                Ok(data)
            }
            // An uncompressed tar: the chunk is a range of the blob.
            (ChunkAt::Stream { offset }, None) => {
                let data = self.cache.read(layer, *offset, c.len, 0..0).await?;
                check(&data, c).map_err(|e| fail(format!("chunk at {offset}: {e}")))?;
                self.layers.decoded.put(key(c), data.clone());
                Ok(data)
            }
        }
    }
}

impl OrasFs {
    /// Decodes, in the background, the members of `layer` that lie in `range` (the ones a
    /// reader going through the layer in order reads next), so that their decompression and
    /// verification run on another core while the reader copies what it has.
    fn decode_ahead(&self, layer: &Arc<Descriptor>, range: Range<u64>) {
        let Some(members) = self.layers.members(&layer.digest) else {
            return;
        };
        // Only members wholly inside: one that runs past what is being fetched would send a
        // request of its own.
        let member_end = |c: &Chunk| match c.at {
            ChunkAt::Member { end, .. } => end,
            ChunkAt::Stream { .. } => 0,
        };
        // A layer kept in memory only may lose what was fetched ahead: no decoding ahead.
        if self.cache.is_uncached(layer) {
            return;
        }
        let from = members.partition_point(|c| chunk_key(c) < range.start);
        let mut upto = members.partition_point(|c| member_end(c) <= range.end);
        // Decoded bytes, not compressed ones, must fit in what is kept, or text compressed
        // 8x would push out what was decoded ahead before the reader gets there.
        let mut decoded_bytes = 0;
        for (k, c) in members[from..upto].iter().enumerate() {
            decoded_bytes += c.len;
            if decoded_bytes > CHUNKS_KEPT_BYTES / 4 {
                upto = from + k;
                break;
            }
        }
        if from >= upto {
            return;
        }
        let (decoded, cache, layer) = (
            self.layers.decoded.clone(),
            self.cache.clone(),
            layer.clone(),
        );
        tokio::spawn(async move {
            for c in &members[from..upto] {
                // A failure is the reader's to report, when (and if) it gets there.
                if decoded.member(&cache, &layer, c, 0..0).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Runs `scan` over the file at `path` on a blocking thread (listing or indexing a whole
/// cached layer takes seconds of CPU).
async fn scan_file<T: Send + 'static>(
    path: PathBuf,
    scan: impl FnOnce(std::fs::File) -> Result<T, crate::archive::FormatError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        scan(file).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("the task failed: {e}"))?
}

/// The entries of the uncompressed tar at `path` (a tar layer's blob, or a zstd layer's
/// decompressed copy), in one pass.
async fn list_tar_file(path: PathBuf) -> Result<Vec<Entry>, String> {
    let max = gzindex::BuildOptions::default().max_entries;
    scan_file(path, move |file| {
        gzindex::list_tar(BufReader::with_capacity(1 << 20, file), max)
    })
    .await
}

/// The most compressed bytes a gzip member holding `len` bytes of data needs to yield them:
/// deflate's worst case (stored blocks) plus headers, with room to spare.
fn member_bound(len: u64) -> u64 {
    len + len / 64 + (64 << 10)
}

fn chunk_key(c: &Chunk) -> u64 {
    match c.at {
        ChunkAt::Member { offset, .. } => offset,
        ChunkAt::Stream { offset } => offset,
    }
}

fn stream_end(c: &Chunk) -> u64 {
    match c.at {
        ChunkAt::Stream { offset } => offset + c.len,
        ChunkAt::Member { .. } => 0,
    }
}

/// Refuses a chunk over [`MAX_CHUNK`] (on every path that decodes one: a reader's, and the
/// decoder's ahead of it), before a byte of it is fetched.
fn within_bound(c: &Chunk) -> Result<(), String> {
    if c.len > MAX_CHUNK {
        return Err(format!(
            "a chunk of {} bytes at {} of a file: over the {MAX_CHUNK}-byte bound of what is \
             verified in memory before it is served; `oras-fs pull` the layer instead",
            c.len, c.file_offset
        ));
    }
    Ok(())
}

fn check(data: &[u8], c: &Chunk) -> Result<(), String> {
    if data.len() as u64 != c.len {
        return Err(format!("{} bytes where the TOC says {}", data.len(), c.len));
    }
    c.digest.verify(data).map_err(|e| e.to_string())
}

/// The first `len` bytes a run of gzip members decompresses to (never more: a bomb behind a
/// TOC stops here).
fn gunzip_prefix(compressed: &[u8], len: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len.min(8 << 20) as usize);
    flate2::read::MultiGzDecoder::new(compressed)
        .take(len)
        .read_to_end(&mut out)?;
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
enum Unzstd {
    #[error("it decompresses to more than {0} bytes, the room left under --cache-size for unpacked layers")]
    TooLarge(u64),
    #[error("{0}")]
    Io(String),
    #[error("what it decompresses to does not match the image config's diff_id: {0}")]
    Mismatch(String),
}

/// Where a decompression in progress writes (`UNZSTD_PREFIX` + random), beside its result.
pub const UNZSTD_PREFIX: &str = ".oras-fs-unzstd-";

/// Decompresses the zstd file `src` (every frame; skippable ones, such as a zstd:chunked
/// layer's TOC, are skipped) into `dest`, through a temporary file beside it, synced before
/// it is renamed into place so that no reader (nor a crash) ever leaves half of it there.
/// Refuses output past `max` bytes, or whose sha256 is not `diff_id` when one is known.
fn unzstd(
    src: &std::path::Path,
    dest: &std::path::Path,
    max: u64,
    diff_id: Option<Digest>,
) -> Result<(), Unzstd> {
    use std::io::Write;
    let io = |e: std::io::Error| Unzstd::Io(e.to_string());
    let dir = dest.parent().expect("cache paths have parents");
    super::paths::private_dir(dir).map_err(io)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(UNZSTD_PREFIX)
        .tempfile_in(dir)
        .map_err(io)?;
    let decoder = zstd::stream::read::Decoder::new(std::fs::File::open(src).map_err(io)?);
    let mut decoder = decoder.map_err(io)?.take(max + 1);
    let mut hasher = diff_id.as_ref().map(Digest::digester);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        let n = decoder.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        written += n as u64;
        if written > max {
            return Err(Unzstd::TooLarge(max));
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&buf[..n]);
        }
        out.write_all(&buf[..n]).map_err(io)?;
    }
    out.flush().map_err(io)?;
    drop(out);
    if let (Some(h), Some(want)) = (hasher, &diff_id) {
        h.check(want).map_err(|e| Unzstd::Mismatch(e.to_string()))?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(dest).map_err(|e| io(e.error))?;
    Ok(())
}

/// The `rootfs.diff_ids` of an image config (none if it is not one, or one is not a digest).
fn diff_ids(config: &[u8]) -> Vec<Digest> {
    let v: serde_json::Value = serde_json::from_slice(config).unwrap_or_default();
    let ids = v["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ids.iter()
        .map(|d| d.as_str().and_then(|s| s.parse().ok()))
        .collect::<Option<Vec<Digest>>>()
        .unwrap_or_default()
}

/// Writes `data` to `path` through a temporary file beside it, so readers never see half.
fn write_atomically(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("cache paths have parents");
    super::paths::private_dir(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
