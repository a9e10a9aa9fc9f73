//! Seek indexes of a manifest's gzip layers, published as one referrer artifact, so that a
//! machine that never saw a layer reads one file of it with a few Range requests.
//!
//! The artifact (see docs/DESIGN.md, "Seek-index artifacts"): `artifactType`
//! [`ARTIFACT_TYPE`], `subject` the indexed manifest, one layer per indexed layer of media
//! type [`INDEX_MEDIA_TYPE`] (the bytes of [`gzindex::Index::to_bytes`]) with the indexed
//! layer's digest in the annotation [`LAYER_ANNOTATION`]. Seekable layers (with a TOC) need
//! no index and get none.

use std::collections::HashMap;

use bytes::Bytes;

use crate::archive::{gzindex, seekable};
use crate::content::{self, Target};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, Manifest};
use crate::oras::{self, PackOptions};

pub const ARTIFACT_TYPE: &str = "application/vnd.oras-fs.layer-indexes.v1";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oras-fs.gzip-index.v1";
pub const LAYER_ANNOTATION: &str = "dev.oras-fs.layer.digest";
/// Compressed bytes between two checkpoints: one span is what a read of a small file costs
/// beyond the file.
pub const SPAN: u64 = 4 << 20;
/// The largest index fetched from a registry (an index is ~1% of its layer).
pub const MAX_INDEX: u64 = 256 << 20;

/// Whether a layer gets a seek index: a directory layer or an image's filesystem layer,
/// tar+gzip, without a TOC (titled `.tar.gz` files are files, not trees).
pub fn wants_index(layer: &Descriptor) -> bool {
    let rootfs = layer
        .media_type
        .starts_with("application/vnd.oci.image.layer.")
        || layer
            .media_type
            .starts_with("application/vnd.docker.image.rootfs.");
    let tree = layer.is_directory() || (rootfs && layer.title().is_none());
    tree && layer.media_type.ends_with("gzip")
        && layer.annotation(seekable::TOC_DIGEST_ANNOTATION).is_none()
}

/// Builds the index of one layer in one streaming pass over a (verified) download. `limit`
/// bounds the uncompressed bytes (a gzip bomb stops there).
pub async fn build(target: &dyn Target, layer: &Descriptor, limit: u64) -> Result<gzindex::Index> {
    let stream = content::verified(layer, target.fetch(layer).await?);
    let reader = tokio_util::io::StreamReader::new(futures_util::StreamExt::map(stream, |r| {
        r.map_err(std::io::Error::other)
    }));
    let size = layer.size;
    let digest = layer.digest.clone();
    tokio::task::spawn_blocking(move || {
        index_of(tokio_util::io::SyncIoBridge::new(reader), size, limit)
            .map_err(|e| Error::Other(format!("indexing layer {digest}: {e}")))
    })
    .await
    .map_err(|e| Error::Other(format!("indexing task failed: {e}")))?
}

/// The seek index of the tar+gzip blob `reader` yields (`size` compressed bytes), with
/// checkpoints every [`SPAN`] and at most `limit` bytes uncompressed. Blocking.
pub fn index_of(
    reader: impl std::io::Read,
    size: u64,
    limit: u64,
) -> std::result::Result<gzindex::Index, crate::archive::FormatError> {
    let opts = gzindex::BuildOptions {
        span: SPAN,
        max_uncompressed: limit,
        ..Default::default()
    };
    gzindex::build(
        std::io::BufReader::with_capacity(1 << 20, reader),
        size,
        &opts,
    )
}

/// Indexes every gzip layer of `manifest` (whose descriptor is `subject`) and pushes the
/// indexes as one referrer of it. Returns the referrer's descriptor and how many layers it
/// indexes (`None` when no layer needs an index).
pub async fn publish(
    target: &dyn Target,
    subject: &Descriptor,
    manifest: &Manifest,
    limit_for: impl Fn(&Descriptor) -> u64,
) -> Result<Option<(Descriptor, usize)>> {
    let store = content::memory::MemoryStore::new();
    let mut layers = Vec::new();
    for layer in manifest.layers.iter().filter(|l| wants_index(l)) {
        // A layer that is no tar (or fails its checks) is left out, said, not fatal: mounts
        // then index it themselves, or unpack it.
        let index = match build(target, layer, limit_for(layer)).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!("not indexing layer {}: {e}", layer.digest);
                continue;
            }
        };
        let mut desc = store.add(INDEX_MEDIA_TYPE, Bytes::from(index.to_bytes()));
        desc.set_annotation(LAYER_ANNOTATION, layer.digest.to_string());
        layers.push(desc);
    }
    if layers.is_empty() {
        return Ok(None);
    }
    let n = layers.len();
    let pack = PackOptions {
        artifact_type: Some(ARTIFACT_TYPE.into()),
        subject: Some(subject.clone()),
        ..Default::default()
    };
    let (desc, bytes) = oras::pack_manifest(layers.clone(), &pack);
    // The empty config too: an image's repository need not have it.
    let config = store.add(
        crate::manifest::media_type::EMPTY,
        crate::manifest::EMPTY_JSON,
    );
    for l in layers.iter().chain([&config]) {
        if !target.exists(l).await? {
            target.push(l, store.fetch(l).await?).await?;
        }
    }
    target.push_manifest(&desc, bytes, None).await?;
    Ok(Some((desc, n)))
}

/// The index blobs of `subject`'s newest seek-index referrer, by indexed layer digest
/// (empty when there is none).
pub async fn find(
    target: &dyn Target,
    subject: &Descriptor,
) -> Result<HashMap<Digest, Descriptor>> {
    let mut found = HashMap::new();
    let referrers = target.referrers(subject).await?;
    let Some(newest) = referrers
        .iter()
        .filter(|r| r.artifact_type.as_deref() == Some(ARTIFACT_TYPE))
        .max_by(|a, b| {
            let created = |d: &Descriptor| {
                d.annotation(crate::manifest::annotation::CREATED)
                    .unwrap_or_default()
                    .to_string()
            };
            created(a).cmp(&created(b))
        })
    else {
        return Ok(found);
    };
    let (_, _, manifest) = content::fetch_manifest(target, newest.digest.as_str()).await?;
    for l in manifest.layers {
        if l.media_type != INDEX_MEDIA_TYPE {
            continue;
        }
        if let Some(Ok(d)) = l.annotation(LAYER_ANNOTATION).map(str::parse::<Digest>) {
            found.insert(d, l);
        }
    }
    Ok(found)
}

/// Fetches and checks one index blob found by [`find`] for `layer`.
pub async fn fetch(
    target: &dyn Target,
    blob: &Descriptor,
    layer: &Descriptor,
) -> Result<gzindex::Index> {
    let bytes = content::read_all(target, blob, MAX_INDEX).await?;
    let index = gzindex::Index::from_bytes(&bytes).map_err(|e| {
        Error::Other(format!(
            "the seek index {} of {}: {e}",
            blob.digest, layer.digest
        ))
    })?;
    if index.compressed_size() != layer.size {
        return Err(Error::Other(format!(
            "the seek index {} is for a layer of {} bytes, not {} ({})",
            blob.digest,
            index.compressed_size(),
            layer.size,
            layer.digest
        )));
    }
    Ok(index)
}
