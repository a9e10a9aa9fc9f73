//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`) as a
//! [`Target`]: the local store when no registry is at hand. Tags are the
//! `org.opencontainers.image.ref.name` annotations of `index.json`, which is replaced atomically.
//! Layouts written by other tools (skopeo, oras) read as they are. A layout packed in a `.tar`
//! archive reads in place (see [`super::layout_tar`]) and refuses every write.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::layout_tar::TarIndex;
use super::{ByteStream, Target};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::manifest::{media_type, Descriptor, MAX_MANIFEST_SIZE};

/// The annotation that names a manifest in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The most of an archive's `index.json` read into memory (it lists manifests, not content).
const MAX_INDEX_JSON: u64 = 64 << 20;

/// Whether a path names a tar archive (`.tar`, any case, as oras judges it).
pub fn is_tar_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("tar"))
}

fn read_only_archive(path: &Path) -> Error {
    Error::Usage(format!(
        "{} is an OCI layout tar archive, which is read-only: write into a layout directory \
         instead (`oras-fs backup -o FILE.tar` makes a new archive from a registry)",
        path.display()
    ))
}

pub struct OciLayout {
    root: PathBuf,
    /// Set when the layout is a `.tar` archive: read in place, read-only.
    archive: Option<TarIndex>,
    /// Serializes read-modify-write of `index.json` within this process (with [`Self::lock`]
    /// across processes).
    index_lock: Mutex<()>,
}

/// Held while `index.json` is read, changed and written.
struct IndexGuard<'a> {
    _dir: std::fs::File,
    _guard: std::sync::MutexGuard<'a, ()>,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(flatten)]
    extra: std::collections::BTreeMap<String, serde_json::Value>,
}

impl OciLayout {
    /// Opens a layout directory, creating it (with `oci-layout` and an empty index) if needed,
    /// or a layout `.tar` archive (a regular file), which is read-only: with `create` (the
    /// caller means to write) an archive is refused.
    pub fn open(root: impl Into<PathBuf>, create: bool) -> Result<OciLayout> {
        let root = root.into();
        if root.is_file() {
            if create {
                return Err(read_only_archive(&root));
            }
            return Self::open_archive(root);
        }
        if create && !root.exists() && is_tar_name(&root) {
            return Err(read_only_archive(&root));
        }
        let marker = root.join("oci-layout");
        if !marker.exists() {
            if !create {
                return Err(Error::NotFound {
                    what: "OCI layout",
                    name: format!("{} (no oci-layout file)", root.display()),
                });
            }
            std::fs::create_dir_all(root.join("blobs/sha256"))
                .ctx(|| format!("creating {}", root.display()))?;
            std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .ctx(|| format!("writing {}", marker.display()))?;
        }
        let layout = OciLayout {
            root,
            archive: None,
            index_lock: Mutex::new(()),
        };
        if !layout.root.join("index.json").exists() {
            layout.write_index(&Index {
                schema_version: 2,
                media_type: Some(media_type::OCI_INDEX.into()),
                ..Default::default()
            })?;
        }
        Ok(layout)
    }

    fn open_archive(root: PathBuf) -> Result<OciLayout> {
        let archive = TarIndex::open(&root)?;
        for needed in ["oci-layout", "index.json"] {
            if archive.get(needed).is_none() {
                return Err(Error::NotFound {
                    what: "OCI layout",
                    name: format!("{} (a tar archive with no {needed} in it)", root.display()),
                });
            }
        }
        Ok(OciLayout {
            root,
            archive: Some(archive),
            index_lock: Mutex::new(()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this layout is a `.tar` archive (read-only).
    pub fn is_archive(&self) -> bool {
        self.archive.is_some()
    }

    /// Refuses a write to an archive.
    fn writable(&self) -> Result<()> {
        match self.archive {
            Some(_) => Err(read_only_archive(&self.root)),
            None => Ok(()),
        }
    }

    /// A blob's path inside the layout.
    fn blob_name(digest: &Digest) -> String {
        format!("blobs/{}/{}", digest.algorithm(), digest.hex())
    }

    /// Reads a whole blob of at most [`MAX_MANIFEST_SIZE`] bytes (a manifest); `None` if it
    /// is missing. Unverified: callers hash what they keep.
    fn read_small_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        if let Some(a) = &self.archive {
            return a.read_small(&Self::blob_name(digest), MAX_MANIFEST_SIZE);
        }
        let path = self.blob_path(digest);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        };
        let mut bytes = Vec::new();
        use std::io::Read;
        file.take(MAX_MANIFEST_SIZE + 1)
            .read_to_end(&mut bytes)
            .ctx(|| format!("reading {}", path.display()))?;
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(Error::InvalidManifest {
                context: format!(" {digest}"),
                reason: "over the 4 MiB limit".into(),
            });
        }
        Ok(Some(bytes))
    }

    /// Locks `index.json` for a read-modify-write, against this process's threads and other
    /// processes (an exclusive `flock` on the layout directory: `index.json` itself is replaced
    /// by rename, so it cannot carry the lock).
    fn lock(&self) -> Result<IndexGuard<'_>> {
        let guard = self.index_lock.lock().unwrap();
        let dir =
            std::fs::File::open(&self.root).ctx(|| format!("opening {}", self.root.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own; released when `dir` is closed.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io(
                format!("locking {}", self.root.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(IndexGuard {
            _dir: dir,
            _guard: guard,
        })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    fn read_index(&self) -> Result<Index> {
        let path = self.root.join("index.json");
        let bytes = match &self.archive {
            Some(a) => a
                .read_small("index.json", MAX_INDEX_JSON)?
                .unwrap_or_default(),
            None => std::fs::read(&path).ctx(|| format!("reading {}", path.display()))?,
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::InvalidManifest {
            context: format!(" {}", path.display()),
            reason: e.to_string(),
        })
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.root)
            .ctx(|| format!("writing in {}", self.root.display()))?;
        tmp.write_all(&serde_json::to_vec(index).expect("index serializes"))
            .ctx(|| "writing index.json".into())?;
        tmp.as_file()
            .sync_data()
            .ctx(|| "writing index.json".into())?;
        tmp.persist(self.root.join("index.json"))
            .map_err(|e| Error::io("replacing index.json", e.error))?;
        Ok(())
    }

    /// Every manifest `index.json` lists.
    pub fn manifests(&self) -> Result<Vec<Descriptor>> {
        Ok(self.read_index()?.manifests)
    }

    /// The tags of `index.json`.
    pub fn tags(&self) -> Result<Vec<String>> {
        Ok(self
            .manifests()?
            .iter()
            .filter_map(|d| d.annotation(REF_NAME).map(str::to_string))
            .collect())
    }

    /// Adds a manifest to `index.json`, untagged, unless it is listed already.
    fn list_manifest(&self, desc: &Descriptor) -> Result<()> {
        let _g = self.lock()?;
        let mut index = self.read_index()?;
        if !index.manifests.iter().any(|m| m.digest == desc.digest) {
            let mut d = desc.clone();
            d.annotations = None;
            index.manifests.push(d);
            self.write_index(&index)?;
        }
        Ok(())
    }

    /// Removes a manifest (every entry of its digest) from `index.json`.
    pub fn unlist(&self, digest: &Digest) -> Result<()> {
        self.writable()?;
        let _g = self.lock()?;
        let mut index = self.read_index()?;
        index.manifests.retain(|m| &m.digest != digest);
        self.write_index(&index)
    }

    /// Deletes a blob file.
    pub fn delete_blob(&self, digest: &Digest) -> Result<()> {
        self.writable()?;
        std::fs::remove_file(self.blob_path(digest)).ctx(|| format!("deleting {digest}"))
    }
}

#[async_trait]
impl Target for OciLayout {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        if let Some(a) = &self.archive {
            return Ok(a.get(&Self::blob_name(digest)).map(|m| m.size));
        }
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(
                format!("reading {}", self.blob_path(digest).display()),
                e,
            )),
        }
    }

    fn name(&self) -> String {
        match self.archive {
            Some(_) => format!("OCI layout archive {}", self.root.display()),
            None => format!("OCI layout {}", self.root.display()),
        }
    }

    async fn resolve(&self, reference: &str) -> Result<Descriptor> {
        let index = self.read_index()?;
        if let Ok(d) = reference.parse::<Digest>() {
            if let Some(m) = index.manifests.iter().find(|m| m.digest == d) {
                let mut m = m.clone();
                m.annotations = None;
                return Ok(m);
            }
            // Not listed: read the blob and take its media type from it.
            let bytes = self.read_small_blob(&d)?.ok_or_else(|| Error::NotFound {
                what: "manifest",
                name: format!("{}@{d}", self.root.display()),
            })?;
            let mt = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
                .unwrap_or_else(|| media_type::OCI_MANIFEST.to_string());
            return Ok(Descriptor::new(mt, d, bytes.len() as u64));
        }
        index
            .manifests
            .iter()
            .rev()
            .find(|m| m.annotation(REF_NAME) == Some(reference))
            .map(|m| {
                let mut m = m.clone();
                m.annotations = None;
                m
            })
            .ok_or_else(|| Error::NotFound {
                what: "manifest",
                name: format!("{}:{reference}", self.root.display()),
            })
    }

    async fn fetch(&self, desc: &Descriptor) -> Result<ByteStream> {
        if self.archive.is_some() {
            return self.fetch_range(desc, 0, u64::MAX).await;
        }
        let path = self.blob_path(&desc.digest);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|_| Error::NotFound {
                what: "blob",
                name: format!("{} in {}", desc.digest, self.root.display()),
            })?;
        Ok(super::file_stream(file, path))
    }

    async fn fetch_range(&self, desc: &Descriptor, offset: u64, len: u64) -> Result<ByteStream> {
        if let Some(a) = &self.archive {
            let m = a
                .get(&Self::blob_name(&desc.digest))
                .ok_or_else(|| Error::NotFound {
                    what: "blob",
                    name: format!("{} in {}", desc.digest, self.root.display()),
                })?;
            return a.range(m, offset, len).await;
        }
        super::file_range_stream(&self.blob_path(&desc.digest), offset, len).await
    }

    async fn exists(&self, desc: &Descriptor) -> Result<bool> {
        if let Some(a) = &self.archive {
            return Ok(a.get(&Self::blob_name(&desc.digest)).is_some());
        }
        Ok(tokio::fs::metadata(self.blob_path(&desc.digest))
            .await
            .is_ok())
    }

    async fn push(&self, desc: &Descriptor, content: ByteStream) -> Result<()> {
        self.writable()?;
        let dest = self.blob_path(&desc.digest);
        let dir = dest.parent().expect("blobs/<alg>").to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .ctx(|| format!("creating {}", dir.display()))?;
        super::write_verified(&dir, desc, content, &dest)
            .await?
            .persist(&dest)
            .map_err(|e| Error::io(format!("renaming into {}", dest.display()), e.error))?;
        Ok(())
    }

    async fn push_manifest(
        &self,
        desc: &Descriptor,
        bytes: Bytes,
        tag: Option<&str>,
    ) -> Result<()> {
        self.push(desc, super::once(bytes)).await?;
        match tag {
            Some(t) => self.tag(desc, t).await,
            None => self.list_manifest(desc),
        }
    }

    async fn tag(&self, desc: &Descriptor, tag: &str) -> Result<()> {
        self.writable()?;
        if !self.exists(desc).await? {
            return Err(Error::NotFound {
                what: "manifest",
                name: desc.digest.to_string(),
            });
        }
        let _g = self.lock()?;
        let mut index = self.read_index()?;
        // A tag names one manifest: move it; drop an untagged duplicate entry of the same digest.
        index.manifests.retain(|m| {
            m.annotation(REF_NAME) != Some(tag)
                && !(m.digest == desc.digest && m.annotation(REF_NAME).is_none())
        });
        let mut d = desc.clone();
        d.annotations = None;
        d.set_annotation(REF_NAME, tag);
        index.manifests.push(d);
        self.write_index(&index)
    }

    async fn referrers(&self, subject: &Descriptor) -> Result<Vec<Descriptor>> {
        let mut out = Vec::new();
        for m in self.manifests()? {
            let Ok(Some(bytes)) = self.read_small_blob(&m.digest) else {
                continue;
            };
            if let Ok(man) = crate::manifest::Manifest::parse(&bytes, Some(&m.media_type)) {
                if man
                    .subject
                    .as_ref()
                    .is_some_and(|s| s.digest == subject.digest)
                    && !out.iter().any(|d: &Descriptor| d.digest == m.digest)
                {
                    let mut d = Descriptor::of(man.media_type().to_string(), &bytes);
                    d.artifact_type = man
                        .artifact_type
                        .clone()
                        .or_else(|| Some(man.config.media_type.clone()));
                    d.annotations = man.annotations.clone();
                    out.push(d);
                }
            }
        }
        Ok(out)
    }
}
