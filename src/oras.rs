//! The ORAS operations — `push`, `pull`, `copy` — built only from [`Target`] calls, so they
//! work between any two stores (registry, file directory, memory).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use crate::content::{self, ByteStream, FileStore, Target, Way};
use crate::error::{Error, Result};
use crate::manifest::{annotation, media_type, Annotations, Descriptor, Index, Manifest};

/// The artifactType oras gives artifacts whose config is empty and whose type is unsaid.
pub const UNKNOWN_ARTIFACT: &str = "application/vnd.unknown.artifact.v1";

/// Default number of blobs moved at once.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// Bounds the big transfers of one operation to `--concurrency` while small ones may run
/// `transfers_at_once` (4× that over HTTP/2): a blob of `BULK_MIN` bytes or more goes on an
/// HTTP/1.1 connection of its own (see `registry::BULK_MIN`), so only small ones are
/// multiplexed. Unknown sizes count as big.
struct BigTransfers(tokio::sync::Semaphore);

impl BigTransfers {
    fn new(concurrency: usize) -> Self {
        BigTransfers(tokio::sync::Semaphore::new(concurrency.max(1)))
    }

    async fn run<T>(&self, size: Option<u64>, transfer: impl std::future::Future<Output = T>) -> T {
        let _slot = match size {
            Some(n) if n < crate::registry::BULK_MIN => None,
            _ => Some(self.0.acquire().await.expect("never closed")),
        };
        transfer.await
    }
}

/// Hears about transfers, e.g. to draw progress bars.
pub trait Progress: Send + Sync {
    fn start(&self, _desc: &Descriptor) {}
    fn advance(&self, _desc: &Descriptor, _bytes: u64) {}
    /// `skipped`: the destination already had it.
    fn finish(&self, _desc: &Descriptor, _skipped: bool) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Counts bytes as a stream passes by.
fn counting(desc: &Descriptor, stream: ByteStream, progress: Arc<dyn Progress>) -> ByteStream {
    let desc = desc.clone();
    Box::pin(stream.inspect(move |item| {
        if let Ok(chunk) = item {
            progress.advance(&desc, chunk.len() as u64);
        }
    }))
}

/// A local store of blobs by digest (a mount's disk cache, `fs::cache::DiskBlobs`) that
/// [`pull`] reads before the source and adds what it downloads to.
pub trait BlobStash: Send + Sync {
    /// The kept copy of a blob, opened (so eviction cannot take it meanwhile), with its path
    /// for messages. Unverified: the caller checks every byte as it copies.
    fn open(&self, desc: &Descriptor) -> Option<(std::fs::File, PathBuf)>;
    /// The copy `open` gave (`file`) did not match `desc`: drop it.
    fn reject(&self, desc: &Descriptor, file: &std::fs::File);
    /// Passes `content` through, keeping a copy of it; the future (awaited once the stream is
    /// consumed or dropped) adds the copy if it was the whole blob and matched its digest.
    fn keep(&self, desc: &Descriptor, content: ByteStream) -> (ByteStream, Kept);
}

/// What [`BlobStash::keep`] finishes with.
pub type Kept = futures_util::future::BoxFuture<'static, ()>;

/// Options of [`copy_graph`].
#[derive(Clone)]
pub struct CopyOptions {
    pub concurrency: usize,
    pub progress: Arc<dyn Progress>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            concurrency: DEFAULT_CONCURRENCY,
            progress: Arc::new(NoProgress),
        }
    }
}

/// Copies one blob unless the destination has it; transient failures are retried from the
/// source. Returns whether it was skipped.
pub async fn copy_blob(
    src: &dyn Target,
    dst: &dyn Target,
    desc: &Descriptor,
    opts: &CopyOptions,
) -> Result<bool> {
    // Same registry, another repository: mount instead of uploading.
    let mount_from = match (src.location(), dst.location()) {
        (Some((src_host, src_repo)), Some((dst_host, dst_repo)))
            if src_host == dst_host && src_repo != dst_repo =>
        {
            Some(src_repo)
        }
        _ => None,
    };
    let started = std::sync::atomic::AtomicBool::new(false);
    let mut attempt = 0;
    let skipped = loop {
        let started = &started;
        let open: content::OpenContent<'_> = Box::new(move || {
            Box::pin(async move {
                if !started.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    opts.progress.start(desc);
                }
                Ok(counting(
                    desc,
                    src.fetch(desc).await?,
                    opts.progress.clone(),
                ))
            })
        });
        match dst.push_missing(desc, mount_from.as_deref(), open).await {
            Err(e)
                if (e.is_transient()
                    || e.is_too_large()
                    || matches!(e, Error::Unauthorized { .. }))
                    && attempt < 2 =>
            {
                tracing::warn!("{e}; sending {} again", desc.digest);
                attempt += 1;
            }
            Err(e) => return Err(e),
            Ok(skipped) => break skipped,
        }
    };
    opts.progress.finish(desc, skipped);
    Ok(skipped)
}

/// Copies a manifest and the blobs it names (config and layers) from `src` to `dst`, blobs
/// first, then the manifest, tagged with each of `tags` (or untagged if none). Of an image
/// index, every child's graph is copied first (untagged), then the index.
pub async fn copy_graph(
    src: &dyn Target,
    dst: &dyn Target,
    root: &Descriptor,
    root_bytes: Bytes,
    tags: &[String],
    opts: &CopyOptions,
) -> Result<()> {
    if crate::manifest::is_index(&root_bytes, Some(&root.media_type)) {
        let index = Index::parse(&root_bytes)?;
        // A child listed twice is copied once (an index that repeats its children at every
        // level would otherwise cost its width to the power of its depth).
        let mut copied = HashSet::new();
        for child in index
            .manifests
            .iter()
            .filter(|c| copied.insert(c.digest.clone()))
        {
            let bytes = content::read_manifest(src, child).await?;
            copy_child(src, dst, child, bytes, opts).await?;
        }
        return push_root(dst, root, root_bytes, tags).await;
    }
    let manifest = Manifest::parse(&root_bytes, Some(&root.media_type))?;
    let mut seen = HashSet::new();
    let blobs: Vec<Descriptor> = std::iter::once(manifest.config.clone())
        .chain(manifest.layers.iter().cloned())
        .filter(|d| seen.insert(d.digest.clone()))
        .collect();
    // The futures are made first: a lazy `map` over borrowed items inside the stream makes the
    // whole future fail rustc's `Send` proof, so a caller could not spawn it.
    let big = BigTransfers::new(opts.concurrency);
    let big = &big;
    let copies: Vec<_> = blobs
        .iter()
        .map(|d| big.run(Some(d.size), copy_blob(src, dst, d, opts)))
        .collect();
    // The smaller side's number: more than an HTTP/1.1 side takes would each open a
    // connection there.
    let at_once = (src.transfers_at_once(Way::Read, opts.concurrency).await)
        .min(dst.transfers_at_once(Way::Write, opts.concurrency).await);
    futures_util::stream::iter(copies)
        .buffer_unordered(at_once.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    push_root(dst, root, root_bytes, tags).await
}

/// [`copy_graph`] of an index's child, untagged, boxed: an index may hold indexes.
fn copy_child<'a>(
    src: &'a dyn Target,
    dst: &'a dyn Target,
    child: &'a Descriptor,
    bytes: Bytes,
    opts: &'a CopyOptions,
) -> futures_util::future::BoxFuture<'a, Result<()>> {
    Box::pin(copy_graph(src, dst, child, bytes, &[], opts))
}

/// Copies the referrers of `root` (signatures, SBOMs, ...) and theirs, recursively, as
/// `copy -r` does; of an image index, also those of every child. Returns how many were copied.
pub async fn copy_referrers(
    src: &dyn Target,
    dst: &dyn Target,
    root: &Descriptor,
    root_bytes: &Bytes,
    opts: &CopyOptions,
) -> Result<usize> {
    let mut subjects = vec![root.clone()];
    if crate::manifest::is_index(root_bytes, Some(&root.media_type)) {
        subjects.extend(Index::parse(root_bytes)?.manifests);
    }
    let mut copied = HashSet::new();
    while let Some(subject) = subjects.pop() {
        for r in src.referrers(&subject).await? {
            if !copied.insert(r.digest.clone()) {
                continue;
            }
            let bytes = content::read_manifest(src, &r).await?;
            copy_graph(src, dst, &r, bytes, &[], opts).await?;
            subjects.push(r);
        }
    }
    Ok(copied.len())
}

/// Pushes a manifest whose blobs are in place, tagged with each of `tags` (or untagged).
async fn push_root(
    dst: &dyn Target,
    root: &Descriptor,
    bytes: Bytes,
    tags: &[String],
) -> Result<()> {
    let (first, rest) = match tags.split_first() {
        Some((f, r)) => (Some(f.as_str()), r),
        None => (None, &[][..]),
    };
    dst.push_manifest(root, bytes, first).await?;
    for t in rest {
        dst.tag(root, t).await?;
    }
    Ok(())
}

/// What a pushed manifest says besides its layers.
#[derive(Clone, Debug, Default)]
pub struct PackOptions {
    pub artifact_type: Option<String>,
    /// A config blob already in the source store; the empty config `{}` if `None`.
    pub config: Option<Descriptor>,
    pub annotations: Annotations,
    pub subject: Option<Descriptor>,
    /// Leave out `org.opencontainers.image.created` unless given, for reproducible digests.
    pub reproducible: bool,
}

/// Builds an artifact manifest from layers, as the oras CLI does: empty config and an
/// artifactType of `application/vnd.unknown.artifact.v1` unless told otherwise, and a
/// `created` timestamp unless given.
pub fn pack_manifest(layers: Vec<Descriptor>, opts: &PackOptions) -> (Descriptor, Bytes) {
    let config = opts.config.clone().unwrap_or_else(Descriptor::empty);
    let artifact_type = opts
        .artifact_type
        .clone()
        .or_else(|| (config.media_type == media_type::EMPTY).then(|| UNKNOWN_ARTIFACT.to_string()));
    let mut annotations: BTreeMap<String, String> = opts.annotations.clone();
    if !opts.reproducible && !annotations.contains_key(annotation::CREATED) {
        annotations.insert(
            annotation::CREATED.to_string(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        );
    }
    let mut manifest = Manifest::new(config, layers);
    manifest.artifact_type = artifact_type;
    manifest.subject = opts.subject.clone();
    manifest.annotations = (!annotations.is_empty()).then_some(annotations);
    let bytes = Bytes::from(manifest.to_bytes());
    (Descriptor::of(media_type::OCI_MANIFEST, &bytes), bytes)
}

/// A file or directory to push as one layer.
#[derive(Clone, Debug)]
pub struct FileLayer {
    pub title: String,
    /// The layer's media type; the oras default if `None`.
    pub media_type: Option<String>,
    pub path: PathBuf,
    /// Added to the layer's descriptor (besides its title).
    pub annotations: Annotations,
}

/// Pushes files and directories as one artifact to `dst`, tagged with `tags`, and returns
/// its manifest. Blobs `dst` already has are skipped. Files are hashed and sent in one pass
/// over the list, so hashing one file overlaps sending others (and a large file's own upload,
/// see [`send_file`]). For content that is not in files, see [`pack_manifest`] and
/// [`copy_graph`].
pub async fn push(
    store: &FileStore,
    files: &[FileLayer],
    pack: &PackOptions,
    dst: &dyn Target,
    tags: &[String],
    opts: &CopyOptions,
) -> Result<(Descriptor, Bytes)> {
    let at_once = dst.transfers_at_once(Way::Write, opts.concurrency).await;
    let big = BigTransfers::new(opts.concurrency);
    let big = &big;
    let config = match &pack.config {
        Some(c) => c.clone(),
        None => store.add_bytes(media_type::EMPTY, crate::manifest::EMPTY_JSON),
    };
    // The config goes alongside the layers, not after them: a round trip or two less.
    let sending_config = copy_blob(store, dst, &config, opts);
    // Unordered: an ordered stream starts no new transfer while the oldest one is still
    // running, so one slow upload would hold up the others.
    let sending_layers =
        futures_util::stream::iter(files.iter().enumerate().map(|(i, f)| async move {
            // A directory's size is known only once it is packed: it counts as big.
            let size = std::fs::metadata(&f.path)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len());
            let send = send_file(store, dst, &f.title, f.media_type.as_deref(), &f.path, opts);
            let mut desc = big.run(size, send).await?;
            for (k, v) in &f.annotations {
                desc.set_annotation(k, v.clone());
            }
            Ok::<_, Error>((i, desc))
        }))
        .buffer_unordered(at_once.max(1))
        .try_collect::<Vec<_>>();
    let (mut layers, _) = futures_util::future::try_join(sending_layers, sending_config).await?;
    layers.sort_unstable_by_key(|(i, _)| *i);
    let layers = layers.into_iter().map(|(_, d)| d).collect();
    let (desc, bytes) = pack_manifest(layers, pack);
    push_root(dst, &desc, bytes.clone(), tags).await?;
    Ok((desc, bytes))
}

/// Files from this size on are hashed while they upload (when the destination can take the
/// digest at the end): hashing 16 MiB takes ~50 ms here, about what a failed guess costs.
pub const HASH_WHILE_SENDING_MIN: u64 = 16 << 20;

/// Adds the file or directory at `path` to `store` under `title`, and sends it to `dst` unless
/// `dst` has it. Returns its descriptor.
///
/// A large file is not hashed first: its upload starts at once while another thread hashes
/// it, so the push takes about the longer of the two instead of their sum. As soon as the
/// digest is known, a destination that turns out to have the blob ends the upload early.
pub async fn send_file(
    store: &FileStore,
    dst: &dyn Target,
    title: &str,
    media_type: Option<&str>,
    path: &Path,
    opts: &CopyOptions,
) -> Result<Descriptor> {
    use crate::error::IoContext;
    let meta = tokio::fs::metadata(path)
        .await
        .ctx(|| format!("cannot read {}", path.display()))?;
    if meta.is_file() && meta.len() >= HASH_WHILE_SENDING_MIN {
        if let Some(desc) =
            send_while_hashing(store, dst, title, media_type, path, meta.len(), opts).await?
        {
            return Ok(desc);
        }
    }
    let desc = store.add(title, media_type, path).await?;
    copy_blob(store, dst, &desc, opts).await?;
    Ok(desc)
}

/// Whether a failed upload is worth sending again the usual way (a streaming upload cannot
/// replay its body, so its transient failures and auth challenges end up here).
fn send_again(e: &Error) -> bool {
    e.is_transient() || e.is_too_large() || matches!(e, Error::Unauthorized { .. })
}

/// The upload half of [`send_file`] for a large file; `None` if `dst` needs digests first (or
/// could not open the upload: then the caller hashes first and sends with the usual retries).
async fn send_while_hashing(
    store: &FileStore,
    dst: &dyn Target,
    title: &str,
    media_type: Option<&str>,
    path: &Path,
    size: u64,
    opts: &CopyOptions,
) -> Result<Option<Descriptor>> {
    use crate::error::IoContext;
    let mut upload = match dst.begin_upload().await {
        Ok(Some(upload)) => upload,
        Ok(None) => return Ok(None),
        Err(e) if send_again(&e) => {
            tracing::warn!("{e}; sending {title} after hashing it");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    // What progress hears about until the digest is known (it goes by title).
    let mut pending = Descriptor::new(
        media_type.unwrap_or(media_type::DEFAULT_LAYER),
        crate::digest::Digest::of(b""),
        size,
    );
    pending.set_annotation(annotation::TITLE, title);
    let file = tokio::fs::File::open(path)
        .await
        .ctx(|| format!("cannot read {}", path.display()))?;
    opts.progress.start(&pending);
    let stream = counting(
        &pending,
        content::file_stream(file, path.to_path_buf()),
        opts.progress.clone(),
    );
    let mut sending = Box::pin(upload.send(stream, size));
    // Hashing runs on a blocking thread (see `hash_file`), so the two proceed in parallel.
    let hashing = store.add(title, media_type, path);
    tokio::pin!(hashing);
    let (desc, sent) = tokio::select! {
        desc = &mut hashing => (desc?, None),
        sent = &mut sending => match sent {
            // Sending again would not help: say so now, not after hashing the whole file.
            Err(e) if !send_again(&e) => return Err(e),
            sent => (hashing.await?, Some(sent)),
        },
    };
    if desc.size != size {
        return Err(Error::Other(format!(
            "{} changed while it was being pushed ({size} bytes, then {}); push it again",
            path.display(),
            desc.size
        )));
    }
    let sent = match sent {
        Some(sent) => sent,
        // A failed HEAD only means the upload goes on.
        None if dst.exists(&desc).await.unwrap_or(false) => {
            drop(sending);
            upload.abort().await;
            opts.progress.finish(&desc, true);
            return Ok(Some(desc));
        }
        None => (&mut sending).await,
    };
    drop(sending);
    let committed = match sent {
        Ok(()) => upload.commit(&desc).await,
        Err(e) => {
            upload.abort().await;
            Err(e)
        }
    };
    match committed {
        Ok(()) => opts.progress.finish(&desc, false),
        // The digest is known now: send it again without hashing again.
        Err(e) if send_again(&e) => {
            tracing::warn!("{e}; sending {title} again");
            copy_blob(store, dst, &desc, opts).await?;
        }
        Err(e) => return Err(e),
    }
    Ok(Some(desc))
}

/// Which layers a pull (or a mount) takes.
#[derive(Clone, Debug, Default)]
pub struct LayerFilter {
    /// `-t/--media-type`: take these media types.
    pub media_types: Vec<String>,
    /// `-a/--allow-all`: take every titled layer.
    pub allow_all: bool,
}

impl LayerFilter {
    /// Whether a titled layer passes. With no types given, the default file type (and
    /// directories that push made from it) pass, as in the classic oras CLI.
    pub fn allows(&self, layer: &Descriptor) -> bool {
        if self.allow_all {
            return true;
        }
        if !self.media_types.is_empty() {
            return self.media_types.iter().any(|t| t == &layer.media_type);
        }
        layer.media_type == media_type::DEFAULT_LAYER
            || (layer.media_type == media_type::DIRECTORY_LAYER && layer.is_directory())
    }

    /// Splits a manifest's layers into (taken, skipped) without judging titles. Untitled
    /// layers are never taken.
    pub fn split(&self, manifest: &Manifest) -> (Vec<Descriptor>, Vec<Descriptor>) {
        manifest
            .layers
            .iter()
            .cloned()
            .partition(|l| l.title().is_some() && self.allows(l))
    }

    /// Splits a manifest's layers into (taken, skipped). Untitled layers are never taken;
    /// two taken layers with one title are an error, and so is a title inside another
    /// (`x` and `x/y`): `x` cannot be both, and a pull would fail half-way.
    pub fn select(&self, manifest: &Manifest) -> Result<(Vec<Descriptor>, Vec<Descriptor>)> {
        let mut taken = Vec::new();
        let mut skipped = Vec::new();
        let mut titles = std::collections::HashMap::new();
        let invalid = |reason: String| Error::InvalidManifest {
            context: String::new(),
            reason,
        };
        for layer in &manifest.layers {
            match layer.title() {
                Some(title) if self.allows(layer) => {
                    if titles.insert(normal_title(title), title).is_some() {
                        return Err(invalid(format!("two layers are titled {title:?}")));
                    }
                    taken.push(layer.clone());
                }
                _ => skipped.push(layer.clone()),
            }
        }
        for (normal, title) in &titles {
            let mut prefix = normal.as_str();
            while let Some((parent, _)) = prefix.rsplit_once('/') {
                if let Some(outer) = titles.get(parent) {
                    return Err(invalid(format!(
                        "the layer titled {title:?} would be written inside the layer titled \
                         {outer:?}; one path cannot be both"
                    )));
                }
                prefix = parent;
            }
        }
        Ok((taken, skipped))
    }
}

/// Writes one layer into `dst`: copied from the file of `copy_of` (a layer with the same
/// digest already in place), else from `stash`, else downloaded from `src` (and added to
/// `stash`). Local copies are verified as downloads are; a stashed copy that does not match
/// is dropped and the layer downloaded.
async fn pull_one(
    src: &dyn Target,
    dst: &FileStore,
    layer: &Descriptor,
    copy_of: Option<&Descriptor>,
    stash: Option<&Arc<dyn BlobStash>>,
    opts: &CopyOptions,
) -> Result<()> {
    use crate::error::IoContext;
    opts.progress.start(layer);
    if let Some(first) = copy_of {
        let path = dst.path_for(first.title().unwrap_or_default())?;
        let file = tokio::fs::File::open(&path)
            .await
            .ctx(|| format!("opening {}", path.display()))?;
        let content = counting(
            layer,
            content::file_stream(file, path),
            opts.progress.clone(),
        );
        dst.push(layer, content).await?;
        opts.progress.finish(layer, false);
        return Ok(());
    }
    if let Some((file, path)) = stash.and_then(|s| s.open(layer)) {
        let kept = file
            .try_clone()
            .ctx(|| format!("opening {}", path.display()))?;
        let content = content::file_stream(tokio::fs::File::from_std(file), path.clone());
        match dst
            .push(layer, counting(layer, content, opts.progress.clone()))
            .await
        {
            Ok(()) => {
                opts.progress.finish(layer, false);
                return Ok(());
            }
            Err(e @ (Error::DigestMismatch { .. } | Error::SizeMismatch { .. })) => {
                tracing::warn!(
                    "{}: {e}; dropped from the cache, downloading",
                    path.display()
                );
                stash.expect("opened from it").reject(layer, &kept);
            }
            Err(e) => return Err(e),
        }
    }
    let mut retried = false;
    loop {
        let content = counting(layer, src.fetch(layer).await?, opts.progress.clone());
        let pushed = match stash {
            Some(stash) => {
                let (content, kept) = stash.keep(layer, content);
                let pushed = dst.push(layer, content).await;
                kept.await;
                pushed
            }
            None => dst.push(layer, content).await,
        };
        match pushed {
            // The mirror is passed over now: the next fetch goes to the next endpoint.
            Err(e @ Error::MirrorCorrupt { .. }) if !retried => {
                tracing::warn!("{e}; fetching {} again", layer.digest);
                retried = true;
            }
            r => break r?,
        }
    }
    opts.progress.finish(layer, false);
    Ok(())
}

/// A title as the path it names: no empty or `.` components (`./a//b/` is `a/b`).
fn normal_title(title: &str) -> String {
    let parts: Vec<&str> = title
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let joined = parts.join("/");
    // An absolute title (allowed with --allow-path-traversal) keeps its root.
    if title.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

#[derive(Clone, Debug)]
pub struct PullReport {
    pub manifest_descriptor: Descriptor,
    pub manifest: Manifest,
    /// Layers written, in manifest order.
    pub pulled: Vec<Descriptor>,
    /// Layers left out by the filter or for lack of a title.
    pub skipped: Vec<Descriptor>,
}

/// Pulls the layers of `reference` that `filter` takes into `dst`, concurrently. Each file
/// appears only once its digest matched. With a `stash`, layers kept there are copied from
/// it instead of downloaded, and downloaded ones are added to it.
pub async fn pull(
    src: &dyn Target,
    reference: &str,
    dst: &FileStore,
    filter: &LayerFilter,
    stash: Option<&Arc<dyn BlobStash>>,
    opts: &CopyOptions,
) -> Result<PullReport> {
    let (desc, _bytes, manifest) = content::fetch_manifest(src, reference).await?;
    let (taken, skipped) = filter.select(&manifest)?;
    // Check every title before writing anything.
    for layer in &taken {
        dst.path_for(layer.title().unwrap_or_default())?;
    }
    // Each file's content is downloaded once: layers that repeat a digest are copied from
    // the first one's file once it is in place (and verified again on the way). Directory
    // layers have no single file to copy from, so each is downloaded.
    let mut first_of: std::collections::HashMap<_, &Descriptor> = Default::default();
    let (mut downloads, mut copies) = (Vec::new(), Vec::new());
    for layer in &taken {
        match first_of.get(&layer.digest) {
            Some(first) if !layer.is_directory() => copies.push((layer, Some(*first))),
            _ => {
                if !layer.is_directory() {
                    first_of.insert(layer.digest.clone(), layer);
                }
                downloads.push((layer, None));
            }
        }
    }
    let at_once = src.transfers_at_once(Way::Read, opts.concurrency).await;
    let big = BigTransfers::new(opts.concurrency);
    let big = &big;
    for batch in [downloads, copies] {
        futures_util::stream::iter(batch.into_iter().map(|(layer, copy_of)| {
            big.run(
                Some(layer.size),
                pull_one(src, dst, layer, copy_of, stash, opts),
            )
        }))
        .buffer_unordered(at_once.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    }
    Ok(PullReport {
        manifest_descriptor: desc,
        manifest,
        pulled: taken,
        skipped,
    })
}

/// The entry of an image index for the manifest `reference` names in `target`: its plain
/// descriptor (media type, digest, size), with the platform its config names when it is an
/// image (an artifact's empty config names none), as `oras manifest index create` makes it.
pub async fn index_entry(target: &dyn Target, reference: &str) -> Result<Descriptor> {
    let desc = target.resolve(reference).await?;
    if !desc.is_manifest() {
        return Err(Error::Usage(format!(
            "{reference} is not a manifest ({})",
            desc.media_type
        )));
    }
    let bytes = content::read_manifest(target, &desc).await?;
    let mut entry = Descriptor::new(desc.media_type.clone(), desc.digest, desc.size);
    if crate::manifest::is_index(&bytes, Some(&desc.media_type)) {
        return Ok(entry);
    }
    let manifest = Manifest::parse(&bytes, Some(&desc.media_type)).map_err(|e| match e {
        Error::InvalidManifest { reason, .. } => Error::InvalidManifest {
            context: format!(" {reference}"),
            reason,
        },
        e => e,
    })?;
    if manifest.config.size <= crate::manifest::MAX_MANIFEST_SIZE
        && manifest.config.media_type != media_type::EMPTY
    {
        let config =
            content::read_all(target, &manifest.config, crate::manifest::MAX_MANIFEST_SIZE).await?;
        entry.platform = crate::manifest::Platform::of_config(&config).map(|p| p.to_value());
    }
    Ok(entry)
}

/// An OCI image index of `manifests`, as bytes to push.
pub fn pack_index(manifests: Vec<Descriptor>, annotations: Annotations) -> (Descriptor, Bytes) {
    let mut index = Index::new();
    index.manifests = manifests;
    index.annotations = (!annotations.is_empty()).then_some(annotations);
    let bytes = Bytes::from(index.to_bytes());
    (Descriptor::of(media_type::OCI_INDEX, &bytes), bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::MemoryStore;
    use crate::manifest::Platform;

    /// The most transfers of `size` bytes in flight when 64 run at once under `BigTransfers`
    /// of 4.
    async fn most_in_flight(size: Option<u64>) -> usize {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let big = BigTransfers::new(4);
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        futures_util::stream::iter(0..64)
            .map(|_| {
                big.run(size, async {
                    most.fetch_max(now.fetch_add(1, SeqCst) + 1, SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    now.fetch_sub(1, SeqCst);
                })
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        most.load(SeqCst)
    }

    #[tokio::test]
    async fn big_or_unsized_transfers_are_bounded_by_the_concurrency_small_ones_are_not() {
        assert_eq!(most_in_flight(Some(crate::registry::BULK_MIN)).await, 4);
        assert_eq!(most_in_flight(None).await, 4);
        assert_eq!(most_in_flight(Some(1000)).await, 64);
    }

    /// Pushes a one-layer manifest whose config is `config` to `store`, tagged `tag`.
    async fn push_child(store: &MemoryStore, tag: &str, config: &[u8]) -> Descriptor {
        let config = store.add("application/vnd.example.config+json", config.to_vec());
        let layer = store.add(media_type::DEFAULT_LAYER, tag.as_bytes().to_vec());
        let opts = PackOptions {
            config: Some(config),
            reproducible: true,
            ..Default::default()
        };
        let (desc, bytes) = pack_manifest(vec![layer], &opts);
        store.push_manifest(&desc, bytes, Some(tag)).await.unwrap();
        desc
    }

    #[tokio::test]
    async fn an_index_is_built_chosen_from_by_platform_and_copied_whole() {
        let src = MemoryStore::new();
        let amd = push_child(&src, "amd", br#"{"os":"linux","architecture":"amd64"}"#).await;
        let plain = push_child(&src, "plain", b"{}").await;
        let entries = vec![
            index_entry(&src, "amd").await.unwrap(),
            index_entry(&src, plain.digest.as_str()).await.unwrap(),
        ];
        assert_eq!(
            entries[0].platform,
            Some(serde_json::json!({"architecture": "amd64", "os": "linux"}))
        );
        assert_eq!(entries[1].platform, None);
        let (index, bytes) = pack_index(entries, Annotations::new());
        src.push_manifest(&index, bytes.clone(), Some("v1"))
            .await
            .unwrap();

        let amd64: Platform = "linux/amd64".parse().unwrap();
        let f = content::fetch_platform_bytes(&src, "v1", Some(&amd64))
            .await
            .unwrap();
        assert_eq!(
            (f.descriptor.digest, f.index.map(|i| i.digest)),
            (amd.digest.clone(), Some(index.digest.clone()))
        );
        assert!(content::fetch_platform_bytes(&src, "v1", None)
            .await
            .unwrap()
            .is_index());
        let arm: Platform = "linux/arm64".parse().unwrap();
        let err = content::fetch_platform_bytes(&src, "v1", Some(&arm))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("linux/amd64 {}", amd.digest)),
            "{err}"
        );
        assert!(
            err.contains(&format!("(no platform) {}", plain.digest)),
            "{err}"
        );
        let err = content::fetch_manifest(&src, "v1").await.unwrap_err();
        assert!(err.to_string().contains("--platform"), "{err}");

        let dst = MemoryStore::new();
        copy_graph(
            &src,
            &dst,
            &index,
            bytes,
            &["v1".into()],
            &Default::default(),
        )
        .await
        .unwrap();
        let copied = content::fetch_platform_bytes(&dst, "v1", Some(&amd64))
            .await
            .unwrap();
        let manifest = copied.manifest("v1").unwrap();
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            assert!(dst.exists(blob).await.unwrap(), "{}", blob.digest);
        }
        assert!(dst.resolve(plain.digest.as_str()).await.is_ok());
    }
}
