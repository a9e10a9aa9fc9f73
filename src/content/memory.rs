//! An in-memory store for small content: manifests, configs, examples and tests.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{collect, once, ByteStream, Target};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, MAX_MANIFEST_SIZE};

#[derive(Default)]
pub struct MemoryStore {
    blobs: Mutex<HashMap<Digest, Bytes>>,
    tags: Mutex<HashMap<String, Descriptor>>,
    /// Manifests by digest, so that a digest resolves as it does in a registry.
    manifests: Mutex<HashMap<Digest, Descriptor>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `data` as a blob of `media_type` and returns its descriptor.
    pub fn add(&self, media_type: &str, data: impl Into<Bytes>) -> Descriptor {
        let data = data.into();
        let desc = Descriptor::of(media_type, &data);
        self.blobs.lock().unwrap().insert(desc.digest.clone(), data);
        desc
    }

    fn get(&self, digest: &Digest) -> Result<Bytes> {
        self.blobs
            .lock()
            .unwrap()
            .get(digest)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: "blob",
                name: digest.to_string(),
            })
    }
}

#[async_trait]
impl Target for MemoryStore {
    fn name(&self) -> String {
        "memory store".into()
    }

    async fn resolve(&self, reference: &str) -> Result<Descriptor> {
        if let Some(d) = self.tags.lock().unwrap().get(reference) {
            return Ok(d.clone());
        }
        if let Ok(digest) = reference.parse::<Digest>() {
            if let Some(d) = self.manifests.lock().unwrap().get(&digest) {
                return Ok(d.clone());
            }
        }
        Err(Error::NotFound {
            what: "reference",
            name: reference.to_string(),
        })
    }

    async fn fetch(&self, desc: &Descriptor) -> Result<ByteStream> {
        Ok(once(self.get(&desc.digest)?))
    }

    async fn fetch_range(&self, desc: &Descriptor, offset: u64, len: u64) -> Result<ByteStream> {
        let b = self.get(&desc.digest)?;
        let start = (offset as usize).min(b.len());
        let end = start.saturating_add(len as usize).min(b.len());
        Ok(once(b.slice(start..end)))
    }

    async fn exists(&self, desc: &Descriptor) -> Result<bool> {
        Ok(self.blobs.lock().unwrap().contains_key(&desc.digest))
    }

    async fn push(&self, desc: &Descriptor, content: ByteStream) -> Result<()> {
        // Memory stores hold small content only: a blob is bounded like a manifest.
        let data = collect(desc, content, MAX_MANIFEST_SIZE).await?;
        self.blobs.lock().unwrap().insert(desc.digest.clone(), data);
        Ok(())
    }

    async fn push_manifest(
        &self,
        desc: &Descriptor,
        bytes: Bytes,
        tag: Option<&str>,
    ) -> Result<()> {
        self.push(desc, once(bytes)).await?;
        self.manifests
            .lock()
            .unwrap()
            .insert(desc.digest.clone(), desc.clone());
        if let Some(t) = tag {
            self.tag(desc, t).await?;
        }
        Ok(())
    }

    async fn tag(&self, desc: &Descriptor, tag: &str) -> Result<()> {
        self.tags
            .lock()
            .unwrap()
            .insert(tag.to_string(), desc.clone());
        Ok(())
    }
}
