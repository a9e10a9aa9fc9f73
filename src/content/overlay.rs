//! Two targets seen as one: content comes from `upper` when it has it, else from `lower`.
//! A writable mount's sync pushes from its staged files over the mounted repository.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ByteStream, Target};
use crate::error::Result;
use crate::manifest::Descriptor;

pub struct Overlay {
    pub upper: Arc<dyn Target>,
    pub lower: Arc<dyn Target>,
}

impl Overlay {
    async fn pick(&self, desc: &Descriptor) -> Result<&dyn Target> {
        Ok(if self.upper.exists(desc).await? {
            self.upper.as_ref()
        } else {
            self.lower.as_ref()
        })
    }
}

#[async_trait]
impl Target for Overlay {
    fn name(&self) -> String {
        format!("{} over {}", self.upper.name(), self.lower.name())
    }

    async fn resolve(&self, reference: &str) -> Result<Descriptor> {
        match self.upper.resolve(reference).await {
            Ok(d) => Ok(d),
            Err(_) => self.lower.resolve(reference).await,
        }
    }

    async fn fetch(&self, desc: &Descriptor) -> Result<ByteStream> {
        self.pick(desc).await?.fetch(desc).await
    }

    async fn fetch_manifest(&self, desc: &Descriptor) -> Result<ByteStream> {
        self.pick(desc).await?.fetch_manifest(desc).await
    }

    async fn fetch_range(&self, desc: &Descriptor, offset: u64, len: u64) -> Result<ByteStream> {
        self.pick(desc).await?.fetch_range(desc, offset, len).await
    }

    async fn exists(&self, desc: &Descriptor) -> Result<bool> {
        Ok(self.upper.exists(desc).await? || self.lower.exists(desc).await?)
    }

    async fn push(&self, desc: &Descriptor, content: ByteStream) -> Result<()> {
        self.upper.push(desc, content).await
    }

    async fn push_manifest(
        &self,
        desc: &Descriptor,
        bytes: Bytes,
        tag: Option<&str>,
    ) -> Result<()> {
        self.upper.push_manifest(desc, bytes, tag).await
    }

    async fn tag(&self, desc: &Descriptor, tag: &str) -> Result<()> {
        self.upper.tag(desc, tag).await
    }

    async fn referrers(&self, subject: &Descriptor) -> Result<Vec<Descriptor>> {
        self.lower.referrers(subject).await
    }
}
