//! Builds `OrasFs` over a `TestTarget`: an artifact in memory, a cache and staging area in a
//! temporary directory, and the mount's view of it, with no kernel and no registry.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use oras_fs::content::testing::TestTarget;
use oras_fs::content::{self, Target};
use oras_fs::digest::Digest;
use oras_fs::fs::cache::{BlobCache, CacheOptions};
use oras_fs::fs::error::Errno;
use oras_fs::fs::filesystem::{MountOptions, OrasFs, Snapshot, Writer};
use oras_fs::fs::staging::Staging;
use oras_fs::fs::tree::{Ino, ROOT};
use oras_fs::manifest::{annotation, media_type, Descriptor, Manifest, MAX_MANIFEST_SIZE};
use oras_fs::oras::LayerFilter;

/// The in-memory store answers at once: its futures are ready on the first poll.
fn ready<T>(f: impl std::future::Future<Output = T>) -> T {
    use futures_util::FutureExt;
    Box::pin(f)
        .now_or_never()
        .expect("the memory store answers at once")
}

pub const REFERENCE: &str = "test.invalid/repo:v1";

/// A layer of the artifact under test.
pub struct Layer {
    pub title: Option<String>,
    pub data: Vec<u8>,
    pub media_type: String,
}

impl Layer {
    pub fn file(title: &str, data: &[u8], media_type: Option<&str>) -> Layer {
        Layer {
            title: Some(title.into()),
            data: data.to_vec(),
            media_type: media_type.unwrap_or(media_type::DEFAULT_LAYER).into(),
        }
    }

    pub fn untitled(data: &[u8], media_type: &str) -> Layer {
        Layer {
            title: None,
            data: data.to_vec(),
            media_type: media_type.into(),
        }
    }
}

pub struct Harness {
    pub target: TestTarget,
    dir: tempfile::TempDir,
    pub base: Descriptor,
    /// `--cache-size` of the mounts.
    pub cache_size: u64,
}

/// A directory layer (tar+gzip, as `oras-fs push DIR` makes) titled `title`, of `files`.
pub fn directory_layer(target: &TestTarget, title: &str, files: &[(&str, Vec<u8>)]) -> Descriptor {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, format!("{title}/{name}"), &data[..])
            .expect("tar");
    }
    let tar = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let mut d = target.store().add(media_type::DIRECTORY_LAYER, gz);
    d.set_annotation(annotation::TITLE, title);
    d.set_annotation(annotation::UNPACK, "true");
    d.set_annotation(annotation::CONTENT_DIGEST, Digest::of(&tar).to_string());
    d
}

/// Deterministic bytes that gzip cannot shrink (xorshift), for layers that must stay large.
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Deterministic, non-repeating-ish bytes.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n as u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

impl Harness {
    /// An artifact of files (`path`, bytes) with the default media type, tagged `v1`.
    pub fn new(files: &[(&str, Vec<u8>)]) -> Harness {
        let layers: Vec<Layer> = files.iter().map(|(p, d)| Layer::file(p, d, None)).collect();
        Self::with_layers(&layers)
    }

    pub fn with_layers(layers: &[Layer]) -> Harness {
        Self::with_layers_and(TestTarget::new(), Vec::new(), layers)
    }

    /// An artifact of `first` layers (made on `target`, e.g. by [`directory_layer`]), then
    /// `layers`.
    pub fn with_layers_and(
        target: TestTarget,
        first: Vec<Descriptor>,
        layers: &[Layer],
    ) -> Harness {
        let descs = first
            .into_iter()
            .chain(layers.iter().map(|l| {
                let mut d = target.store().add(&l.media_type, l.data.clone());
                if let Some(t) = &l.title {
                    d.set_annotation(annotation::TITLE, t.clone());
                }
                d
            }))
            .collect();
        let config = target.store().add(media_type::EMPTY, &b"{}"[..]);
        Self::with_manifest(target, Manifest::new(config, descs))
    }

    /// A one-layer container image (untitled rootfs layer, image config).
    pub fn image() -> Harness {
        let target = TestTarget::new();
        let layer = target.store().add(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &b"not really a tar"[..],
        );
        let config = target.store().add(
            "application/vnd.oci.image.config.v1+json",
            &br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#[..],
        );
        Self::with_manifest(target, Manifest::new(config, vec![layer]))
    }

    /// A container image of `layers` (media type, bytes), bottom first.
    pub fn image_of(layers: &[(&str, Vec<u8>)]) -> Harness {
        Self::image_with_config(layers, br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#)
    }

    /// A container image of `layers` with this image config.
    pub fn image_with_config(layers: &[(&str, Vec<u8>)], config: &[u8]) -> Harness {
        let target = TestTarget::new();
        let descs = layers
            .iter()
            .map(|(ty, data)| target.store().add(ty, data.clone()))
            .collect();
        let config = target.store().add(
            "application/vnd.oci.image.config.v1+json",
            Bytes::copy_from_slice(config),
        );
        Self::with_manifest(target, Manifest::new(config, descs))
    }

    fn with_manifest(target: TestTarget, manifest: Manifest) -> Harness {
        let bytes = Bytes::from(manifest.to_bytes());
        let base = Descriptor::of(manifest.media_type().to_string(), &bytes);
        ready(target.store().push_manifest(&base, bytes, Some("v1")))
            .expect("pushing the test manifest");
        target.reset_counts();
        Harness {
            target,
            dir: tempfile::tempdir().expect("temp dir"),
            base,
            cache_size: 1 << 30,
        }
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The mount's view, as `oras-fs mount` builds it (a writable one finds an earlier
    /// mount's journal in the same cache directory).
    pub async fn mount(&self, read_only: bool) -> Arc<OrasFs> {
        let target: Arc<dyn Target> = Arc::new(self.target.clone());
        let cache = BlobCache::new(
            target.clone(),
            CacheOptions {
                dir: self.cache_dir(),
                disk_limit: self.cache_size,
                memory_limit: 16 << 20,
            },
        )
        .expect("cache");
        let (writer, journal) = if read_only {
            (None, None)
        } else {
            let staging = Staging::open(&self.cache_dir(), REFERENCE).expect("staging");
            let journal = staging.load().expect("journal");
            staging.collect_garbage(journal.as_ref());
            let w = Writer {
                target: target.clone(),
                tag: "v1".into(),
                staging,
                media_type: media_type::DEFAULT_LAYER.into(),
            };
            (Some(w), journal)
        };
        let at = journal
            .as_ref()
            .map(|j| j.base.to_string())
            .unwrap_or_else(|| "v1".into());
        let (descriptor, manifest_bytes, manifest) = content::fetch_manifest(target.as_ref(), &at)
            .await
            .expect("manifest");
        let config_bytes = content::read_all(target.as_ref(), &manifest.config, MAX_MANIFEST_SIZE)
            .await
            .expect("config");
        let snapshot = Snapshot {
            reference: REFERENCE.into(),
            descriptor,
            manifest_bytes,
            manifest,
            config_bytes,
            index: None,
            children: Vec::new(),
        };
        let options = MountOptions {
            filter: LayerFilter::default(),
            read_only,
            layers_apart: false,
        };
        let fs = OrasFs::new(cache, snapshot, options, writer, journal).expect("view");
        self.target.reset_counts();
        Arc::new(fs)
    }

    pub fn manifest(&self, desc: &Descriptor) -> Manifest {
        let bytes =
            ready(content::read_manifest(self.target.store(), desc)).expect("a pushed manifest");
        Manifest::parse(&bytes, None).expect("parses")
    }

    pub fn base_manifest(&self) -> Manifest {
        self.manifest(&self.base)
    }

    /// The titles of a manifest's layers, in order (`(untitled)` for none).
    pub fn titles(&self, desc: &Descriptor) -> Vec<String> {
        self.manifest(desc)
            .layers
            .iter()
            .map(|l| l.title().unwrap_or("(untitled)").to_string())
            .collect()
    }

    /// The bytes of the layer titled `title` in a manifest.
    pub fn file(&self, desc: &Descriptor, title: &str) -> Vec<u8> {
        let m = self.manifest(desc);
        let l = m
            .layers
            .iter()
            .find(|l| l.title() == Some(title))
            .unwrap_or_else(|| panic!("no layer {title}"));
        ready(content::read_all(self.target.store(), l, 1 << 30))
            .expect("layer")
            .to_vec()
    }

    pub fn layer_digest(&self, title: &str) -> Digest {
        self.base_manifest()
            .layers
            .iter()
            .find(|l| l.title() == Some(title))
            .expect("layer")
            .digest
            .clone()
    }

    /// Someone else moves the tag `v1`.
    pub fn retag_elsewhere(&self) {
        let mut m = self.base_manifest();
        m.annotations
            .get_or_insert_with(Default::default)
            .insert("moved".into(), "by someone else".into());
        let bytes = Bytes::from(m.to_bytes());
        let d = Descriptor::of(m.media_type().to_string(), &bytes);
        ready(self.target.store().push_manifest(&d, bytes, Some("v1"))).expect("retag");
    }
}

/// One read-only mount of a single file `big.bin` of `len` patterned bytes, open for reading:
/// its bytes, the harness (for its counters), the filesystem and the file handle.
pub async fn one_open_file(len: usize) -> (Vec<u8>, Harness, Arc<OrasFs>, u64) {
    let big = pattern(len);
    let h = Harness::new(&[("big.bin", big.clone())]);
    let fs = h.mount(true).await;
    let ino = path_ino(&fs, "big.bin").await;
    let fh = fs.open(ino, false, false).await.expect("open big.bin").fh;
    (big, h, fs, fh)
}

/// The inode at `path` (`a/b.txt`), looked up from the root.
pub async fn path_ino(fs: &OrasFs, path: &str) -> Ino {
    match try_path_ino(fs, path).await {
        Ok(i) => i,
        Err(e) => panic!("{path}: errno {e}"),
    }
}

pub async fn path_ino_err(fs: &OrasFs, path: &str) -> Errno {
    try_path_ino(fs, path).await.expect_err(path)
}

pub async fn try_path_ino(fs: &OrasFs, path: &str) -> Result<Ino, Errno> {
    let mut ino = ROOT;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        ino = fs.lookup(ino, std::ffi::OsStr::new(c)).await?.ino;
    }
    Ok(ino)
}

/// A whole file's bytes, read through an open handle.
pub async fn read_all(fs: &OrasFs, path: &str) -> Vec<u8> {
    let ino = path_ino(fs, path).await;
    let o = fs.open(ino, false, false).await.expect("open");
    let mut out = Vec::new();
    loop {
        let chunk = fs
            .read(o.fh, out.len() as u64, 128 * 1024)
            .await
            .expect("read");
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    fs.release(o.fh);
    out
}
