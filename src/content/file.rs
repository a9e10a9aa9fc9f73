//! A directory of files named by their title annotation: the source of `push` and the
//! destination of `pull`.
//!
//! Files are written to a temporary name beside their destination and renamed into place only
//! after their digest matched, so a failed pull never leaves a truncated file. Untitled content
//! (configs, manifests) is kept in memory.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ByteStream, MemoryStore, Target, IO_CHUNK};
use crate::archive::seekable;
use crate::digest::{Digest, Digester};
use crate::error::{Error, IoContext, Result};
use crate::manifest::{annotation, media_type, Descriptor};

#[derive(Clone, Debug, Default)]
pub struct FileStoreOptions {
    /// Accept titles that leave the root (`../x`, `/etc/x`) and unsafe tar entries.
    pub allow_path_traversal: bool,
    /// Fail instead of replacing files that exist.
    pub keep_old_files: bool,
    /// Pack directories with fixed metadata (mtime 0, uid/gid 0) for reproducible digests.
    pub reproducible: bool,
    /// How much a directory layer may unpack to (its uncompressed tar stream).
    pub max_unpacked_size: UnpackLimit,
}

/// A bound on what one directory layer unpacks to, counted as the bytes of its uncompressed
/// tar stream (file contents plus tar headers): a gzip bomb of 1 MB can hold 1 GiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnpackLimit {
    /// No bound (the library default: callers that take untrusted layers choose one).
    #[default]
    Unlimited,
    /// At most this many bytes.
    Bytes(u64),
    /// `pull`'s default: [`AUTO_UNPACK_RATIO`] times the compressed size, at least
    /// [`AUTO_UNPACK_FLOOR`].
    Auto,
}

/// Real directories compress 2-10x (text, source, logs); 32x leaves room for very redundant
/// ones, while a gzip bomb (~1000x) stops after writing 32 times what it cost to download.
pub const AUTO_UNPACK_RATIO: u64 = 32;
/// Small layers of very redundant content (zero-filled fixtures) unpack up to this much; a
/// 1 MB bomb of 1 GiB stops here.
pub const AUTO_UNPACK_FLOOR: u64 = 256 << 20;

impl UnpackLimit {
    /// The bound for a layer of `compressed` bytes; `None`: unbounded.
    pub fn for_layer(self, compressed: u64) -> Option<u64> {
        match self {
            UnpackLimit::Unlimited => None,
            UnpackLimit::Bytes(n) => Some(n),
            UnpackLimit::Auto => Some(
                compressed
                    .saturating_mul(AUTO_UNPACK_RATIO)
                    .max(AUTO_UNPACK_FLOOR),
            ),
        }
    }
}

pub struct FileStore {
    root: PathBuf,
    options: FileStoreOptions,
    /// Where the content of each added or pulled digest lives.
    files: Mutex<HashMap<Digest, PathBuf>>,
    fallback: MemoryStore,
    /// Holds the tar.gz files made for directories until the store is dropped.
    scratch: Mutex<Option<Arc<tempfile::TempDir>>>,
}

impl FileStore {
    pub fn new(root: impl Into<PathBuf>, options: FileStoreOptions) -> Self {
        FileStore {
            root: root.into(),
            options,
            files: Mutex::new(HashMap::new()),
            fallback: MemoryStore::new(),
            scratch: Mutex::new(None),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Adds the file or directory at `path` (relative to the current directory) under `title`.
    /// A directory becomes one tar+gzip layer with the oras unpack annotations.
    pub async fn add(
        &self,
        title: &str,
        media_type: Option<&str>,
        path: &Path,
    ) -> Result<Descriptor> {
        let meta = tokio::fs::metadata(path)
            .await
            .ctx(|| format!("cannot read {}", path.display()))?;
        let mut desc = if meta.is_dir() {
            let scratch = self.scratch_dir()?;
            let (path, title, reproducible) = (
                path.to_path_buf(),
                title.to_string(),
                self.options.reproducible,
            );
            let (tgz, desc) = tokio::task::spawn_blocking(move || {
                pack_directory(&path, &title, scratch.path(), reproducible)
            })
            .await
            .expect("packing task panicked")?;
            self.files.lock().unwrap().insert(desc.digest.clone(), tgz);
            let mut desc = desc;
            if let Some(mt) = media_type {
                desc.media_type = mt.to_string();
            }
            desc
        } else {
            let (digest, size) = hash_file(path).await?;
            self.files
                .lock()
                .unwrap()
                .insert(digest.clone(), path.to_path_buf());
            Descriptor::new(
                media_type.unwrap_or(media_type::DEFAULT_LAYER),
                digest,
                size,
            )
        };
        desc.set_annotation(annotation::TITLE, title);
        Ok(desc)
    }

    /// Adds small in-memory content (a config, a manifest) that has no file.
    pub fn add_bytes(&self, media_type: &str, data: impl Into<Bytes>) -> Descriptor {
        self.fallback.add(media_type, data)
    }

    fn scratch_dir(&self) -> Result<Arc<tempfile::TempDir>> {
        let mut s = self.scratch.lock().unwrap();
        if s.is_none() {
            *s = Some(Arc::new(
                tempfile::Builder::new()
                    .prefix("oras-fs-pack-")
                    .tempdir()
                    .ctx(|| "creating a temporary directory".into())?,
            ));
        }
        Ok(s.clone().expect("set above"))
    }

    /// Where a titled blob lands, refusing titles that escape the root unless allowed.
    pub fn path_for(&self, title: &str) -> Result<PathBuf> {
        safe_join(&self.root, title, self.options.allow_path_traversal)
    }

    async fn write_file(&self, desc: &Descriptor, title: &str, content: ByteStream) -> Result<()> {
        let dest = self.path_for(title)?;
        if self.options.keep_old_files && tokio::fs::symlink_metadata(&dest).await.is_ok() {
            return Err(Error::FileExists { path: dest });
        }
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        if !self.options.allow_path_traversal {
            // Check before creating anything: a symlink already in the output directory must
            // not lead the new directories outside it.
            let mut existing = parent.as_path();
            while tokio::fs::symlink_metadata(existing).await.is_err() {
                match existing.parent() {
                    Some(p) => existing = p,
                    None => break,
                }
            }
            check_inside(&self.root, existing, title)?;
        }
        tokio::fs::create_dir_all(&parent)
            .await
            .ctx(|| format!("creating {}", parent.display()))?;
        if !self.options.allow_path_traversal {
            check_inside(&self.root, &parent, title)?;
        }
        let tmp = super::write_verified(&parent, desc, content, &dest).await?;
        // Temporary files are 0600; a pulled file gets the usual 0666 & ~umask.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = tmp
                .as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o666 & !umask()));
        }
        if desc.is_directory() {
            let (tmp, dest, desc, opts) = (tmp, dest.clone(), desc.clone(), self.options.clone());
            tokio::task::spawn_blocking(move || unpack_directory(tmp.path(), &dest, &desc, &opts))
                .await
                .expect("unpack task panicked")?;
        } else {
            let persisted = if self.options.keep_old_files {
                tmp.persist_noclobber(&dest)
            } else {
                tmp.persist(&dest)
            };
            persisted
                .map_err(|e| Error::io(format!("renaming into {}", dest.display()), e.error))?;
        }
        self.files.lock().unwrap().insert(desc.digest.clone(), dest);
        Ok(())
    }
}

#[async_trait]
impl Target for FileStore {
    fn name(&self) -> String {
        format!("file store {}", self.root.display())
    }

    async fn resolve(&self, reference: &str) -> Result<Descriptor> {
        self.fallback.resolve(reference).await
    }

    async fn fetch(&self, desc: &Descriptor) -> Result<ByteStream> {
        let path = self.files.lock().unwrap().get(&desc.digest).cloned();
        let Some(path) = path else {
            return self.fallback.fetch(desc).await;
        };
        let file = tokio::fs::File::open(&path)
            .await
            .ctx(|| format!("opening {}", path.display()))?;
        Ok(super::file_stream(file, path))
    }

    async fn fetch_range(&self, desc: &Descriptor, offset: u64, len: u64) -> Result<ByteStream> {
        let path = self.files.lock().unwrap().get(&desc.digest).cloned();
        let Some(path) = path else {
            return self.fallback.fetch_range(desc, offset, len).await;
        };
        super::file_range_stream(&path, offset, len).await
    }

    async fn exists(&self, desc: &Descriptor) -> Result<bool> {
        if self.files.lock().unwrap().contains_key(&desc.digest) {
            return Ok(true);
        }
        self.fallback.exists(desc).await
    }

    async fn push(&self, desc: &Descriptor, content: ByteStream) -> Result<()> {
        match desc.title() {
            Some(title) => {
                let title = title.to_string();
                self.write_file(desc, &title, content).await
            }
            None => self.fallback.push(desc, content).await,
        }
    }

    async fn push_manifest(
        &self,
        desc: &Descriptor,
        bytes: Bytes,
        tag: Option<&str>,
    ) -> Result<()> {
        self.fallback.push_manifest(desc, bytes, tag).await
    }

    async fn tag(&self, desc: &Descriptor, tag: &str) -> Result<()> {
        self.fallback.tag(desc, tag).await
    }
}

/// The process umask, read without changing it (`umask(2)` can only set).
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Hashes a file without holding it in memory, on a blocking thread: hashing is CPU-bound
/// (~350 MB/s without SHA extensions) and must neither stall other transfers nor wait on them.
pub async fn hash_file(path: &Path) -> Result<(Digest, u64)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file =
            std::fs::File::open(&path).ctx(|| format!("cannot read {}", path.display()))?;
        let mut digester = Digester::sha256();
        // Small files (hashed many at once) get small buffers.
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut buf = vec![0u8; (len as usize + 1).clamp(4096, IO_CHUNK)];
        let mut size = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .ctx(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            digester.update(&buf[..n]);
            size += n as u64;
        }
        Ok((digester.finish(), size))
    })
    .await
    .expect("hashing task panicked")
}

/// Checks that a title is a plain relative path (no `..`, not absolute, no NUL) and joins it.
pub fn safe_join(root: &Path, title: &str, allow_traversal: bool) -> Result<PathBuf> {
    let refuse = |reason: &str| Error::UnsafePath {
        path: title.to_string(),
        reason: reason.to_string(),
    };
    if title.is_empty() {
        return Err(refuse("empty name"));
    }
    if title.contains('\0') {
        return Err(refuse("contains a NUL byte"));
    }
    if title.split('/').any(|c| c.len() > 255) {
        return Err(refuse("a path component is longer than 255 bytes"));
    }
    let path = Path::new(title);
    if allow_traversal {
        return Ok(root.join(path));
    }
    if path.is_absolute() {
        return Err(refuse("absolute path"));
    }
    let mut depth = 0usize;
    for c in path.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse("contains '..'")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("absolute path")),
        }
    }
    if depth == 0 {
        return Err(refuse("names no file"));
    }
    Ok(root.join(path))
}

/// Refuses a directory that, through symlinks already on disk, lies outside `root`.
fn check_inside(root: &Path, dir: &Path, title: &str) -> Result<()> {
    let root = std::fs::canonicalize(root).ctx(|| format!("resolving {}", root.display()))?;
    let dir = std::fs::canonicalize(dir).ctx(|| format!("resolving {}", dir.display()))?;
    if dir.starts_with(&root) {
        Ok(())
    } else {
        Err(Error::UnsafePath {
            path: title.to_string(),
            reason: "a symlink in the output directory points outside it".into(),
        })
    }
}

struct HashingReader<R> {
    inner: R,
    digester: Digester,
    /// Bytes read so far.
    total: u64,
    /// Fail reads that would go past this many bytes (a gzip bomb).
    limit: Option<u64>,
    /// The digest of the bytes through the tar's end-of-archive marker, when it has one:
    /// what oras-go checks, and what seekable layers annotate (their TOC follows it).
    through_end_marker: Option<Digest>,
}

impl<R: Read> HashingReader<R> {
    fn over_limit(&self) -> bool {
        self.limit.is_some_and(|l| self.total > l)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.total += n as u64;
        if self.over_limit() {
            // The caller tells this apart from other I/O errors with `over_limit`.
            return Err(std::io::Error::other("unpack limit reached"));
        }
        self.digester.update(&buf[..n]);
        Ok(n)
    }
}

/// Packs `dir` as `title/...` into a seekable tar+gzip file in `scratch` (see
/// [`crate::archive::seekable`]): what oras makes, plus a TOC tar tools never see.
fn pack_directory(
    dir: &Path,
    title: &str,
    scratch: &Path,
    reproducible: bool,
) -> Result<(PathBuf, Descriptor)> {
    let out = tempfile::Builder::new()
        .suffix(".tar.gz")
        .tempfile_in(scratch)
        .ctx(|| "creating a temporary file".into())?;
    let (file, out_path) = out
        .keep()
        .map_err(|e| Error::io("keeping a temporary file", e.error))?;
    let ctx = || format!("packing {}", dir.display());
    let (file, layer) = seekable::write_seekable(
        dir,
        title,
        std::io::BufWriter::with_capacity(IO_CHUNK, file),
        reproducible,
    )?;
    // Flushes the buffer; the file is closed here.
    file.into_inner()
        .map_err(|e| Error::io(ctx(), e.into_error()))?;
    let mut desc = Descriptor::new(
        media_type::DIRECTORY_LAYER,
        layer.layer_digest,
        layer.layer_size,
    );
    desc.set_annotation(annotation::CONTENT_DIGEST, layer.content_digest.to_string());
    desc.set_annotation(annotation::UNPACK, "true");
    desc.set_annotation(
        seekable::TOC_DIGEST_ANNOTATION,
        layer.toc_digest.to_string(),
    );
    Ok((out_path, desc))
}

/// Unpacks a verified tar+gzip at `tgz` to `dest` (whose last component is the title), via a
/// temporary directory beside it, checking every entry and the uncompressed-tar digest first.
pub fn unpack_directory(
    tgz: &Path,
    dest: &Path,
    desc: &Descriptor,
    opts: &FileStoreOptions,
) -> Result<()> {
    let title = desc.title().unwrap_or_default().to_string();
    let parent = dest.parent().expect("dest is root/title");
    let staging = tempfile::Builder::new()
        .prefix(".oras-fs-unpack-")
        .tempdir_in(parent)
        .ctx(|| format!("creating a temporary directory in {}", parent.display()))?;
    let file = std::fs::File::open(tgz).ctx(|| "reading the downloaded layer".into())?;
    let limit = opts.max_unpacked_size.for_layer(desc.size);
    let mut reader = HashingReader {
        // All members: seekable layers (and pigz's) are many gzip members in a row.
        inner: flate2::read::MultiGzDecoder::new(std::io::BufReader::with_capacity(IO_CHUNK, file)),
        digester: Digester::sha256(),
        total: 0,
        limit,
        through_end_marker: None,
    };
    // Errors past the limit say so, whatever the tar reader made of the failed read.
    let seekable = desc.annotation(seekable::TOC_DIGEST_ANNOTATION).is_some();
    let result = unpack_checked(&mut reader, staging.path(), &title, seekable, opts);
    if reader.over_limit() {
        return Err(Error::UnpackTooLarge {
            title,
            limit: limit.unwrap_or_default(),
        });
    }
    result?;
    if let Some(want) = desc.annotation(annotation::CONTENT_DIGEST) {
        // Either the tar through its end marker (seekable layers, oras-go's reading) or the
        // whole stream (older layers, other tools).
        let want: Digest = want.parse()?;
        if reader.through_end_marker.as_ref() != Some(&want) {
            reader.digester.check(&want)?;
        }
    }
    // Move the unpacked tree into place only now that everything checked out.
    let base = Path::new(&title);
    let unpacked_root = staging.path().join(base);
    let src = if unpacked_root.exists() {
        unpacked_root
    } else {
        staging.path().to_path_buf()
    };
    if std::fs::symlink_metadata(dest).is_ok() {
        if opts.keep_old_files {
            return Err(Error::FileExists {
                path: dest.to_path_buf(),
            });
        }
        let old = staging.path().join(".oras-fs-old");
        std::fs::rename(dest, &old).ctx(|| format!("replacing {}", dest.display()))?;
    }
    std::fs::rename(&src, dest)
        .ctx(|| format!("moving the unpacked {} into place", dest.display()))?;
    Ok(())
}

/// Unpacks the tar `reader` yields into `staging`, checking every entry, and reads the
/// reader to its end (the caller checks its digest).
fn unpack_checked<R: Read>(
    reader: &mut HashingReader<R>,
    staging: &Path,
    title: &str,
    seekable: bool,
    opts: &FileStoreOptions,
) -> Result<()> {
    let bad = |reason: String| Error::UnsafePath {
        path: title.to_string(),
        reason,
    };
    // Paths of the symlinks unpacked so far: no later entry may lead through one of them.
    let mut links: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    {
        let mut archive = tar::Archive::new(&mut *reader);
        archive.set_overwrite(true);
        // Modes as a plain `tar x` by a user gives them: permission bits only (never setuid,
        // setgid or sticky from an untrusted archive, even as root), less the umask.
        archive.set_preserve_permissions(false);
        archive.set_mask(umask());
        for entry in archive
            .entries()
            .ctx(|| format!("reading the tar of {title}"))?
        {
            let mut entry = entry.ctx(|| format!("reading the tar of {title}"))?;
            let path = entry
                .path()
                .ctx(|| format!("reading the tar of {title}"))?
                .into_owned();
            // A seekable layer's TOC is not part of the directory (ours is past the end
            // marker and never seen here; other eStargz writers put it inside the tar). In
            // any other layer a file of that name is the user's.
            if seekable
                && path
                    .components()
                    .filter(|c| matches!(c, Component::Normal(_)))
                    .eq(Path::new(seekable::TOC_NAME).components())
            {
                continue;
            }
            if !opts.allow_path_traversal {
                check_tar_entry(&path, &entry)
                    .map_err(|r| bad(format!("{}: {r}", path.display())))?;
                let normal: PathBuf = path
                    .components()
                    .filter(|c| matches!(c, Component::Normal(_)))
                    .collect();
                if normal.ancestors().skip(1).any(|a| links.contains(a)) {
                    return Err(bad(format!(
                        "{}: leads through a symlink of the archive",
                        path.display()
                    )));
                }
                let kind = entry.header().entry_type();
                if kind.is_symlink() || kind.is_hard_link() {
                    if let Ok(Some(target)) = entry.link_name() {
                        let base = if kind.is_symlink() {
                            normal.parent().unwrap_or(Path::new("")).to_path_buf()
                        } else {
                            PathBuf::new()
                        };
                        if resolves_through(&base.join(&target), &links) {
                            return Err(bad(format!(
                                "{}: link to {} leads through a symlink of the archive",
                                path.display(),
                                target.display()
                            )));
                        }
                    }
                }
                if kind.is_symlink() {
                    links.insert(normal);
                }
            }
            entry
                .unpack_in(staging)
                .ctx(|| format!("unpacking {} of {title}", path.display()))?;
        }
    }
    // The tar reader stops after the first zero block of the end marker: read the second,
    // then what follows (padding, a seekable layer's TOC), hashing it too.
    let mut second = [0u8; 512];
    let n = read_up_to(reader, &mut second).ctx(|| format!("reading the tar of {title}"))?;
    if n == second.len() && second.iter().all(|&b| b == 0) {
        reader.through_end_marker = Some(reader.digester.clone().finish());
    }
    std::io::copy(reader, &mut std::io::sink()).ctx(|| format!("reading the tar of {title}"))?;
    Ok(())
}

/// Reads until `buf` is full or the end; returns how much was read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The checks for one tar entry: a relative path inside the archive; links that stay inside.
fn check_tar_entry<R: Read>(path: &Path, entry: &tar::Entry<R>) -> std::result::Result<(), String> {
    if path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err("entry path leaves the directory".into());
    }
    let kind = entry.header().entry_type();
    if kind.is_symlink() || kind.is_hard_link() {
        let target = entry
            .link_name()
            .map_err(|e| e.to_string())?
            .ok_or("link without a target")?;
        // A symlink resolves from its own directory; a hard link from the archive root.
        let base = if kind.is_symlink() {
            path.parent().unwrap_or(Path::new("")).to_path_buf()
        } else {
            PathBuf::new()
        };
        if target.is_absolute() || crate::archive::escapes(&base.join(&target)) {
            return Err(format!(
                "link to {} points outside the directory",
                target.display()
            ));
        }
    } else if !(kind.is_file()
        || kind.is_dir()
        || kind.is_pax_global_extensions()
        || kind.is_pax_local_extensions()
        || kind.is_gnu_longname()
        || kind.is_gnu_longlink())
    {
        return Err(format!("unsupported entry type {kind:?}"));
    }
    Ok(())
}

/// Whether resolving `path` (relative to the archive root) would pass through one of `links`
/// before its last component: where a symlink leads cannot be checked lexically.
fn resolves_through(path: &Path, links: &std::collections::HashSet<PathBuf>) -> bool {
    let comps: Vec<Component> = path.components().collect();
    let mut cur = PathBuf::new();
    for (i, c) in comps.iter().enumerate() {
        match c {
            Component::Normal(n) => cur.push(n),
            Component::ParentDir => {
                cur.pop();
            }
            _ => {}
        }
        if i + 1 < comps.len() && links.contains(&cur) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_join_refuses_escapes() {
        let root = Path::new("/out");
        assert_eq!(
            safe_join(root, "a/b.txt", false).unwrap(),
            Path::new("/out/a/b.txt")
        );
        for bad in ["../x", "/etc/x", "a/../../x", "", ".", "a\0b"] {
            assert!(safe_join(root, bad, false).is_err(), "{bad:?}");
        }
        assert!(safe_join(root, "../x", true).is_ok());
    }

    /// A tar+gzip of `entries` (path, mode, content; a path ending in '/' is a directory) in
    /// `dir`, and a descriptor titled `title` for it.
    fn tgz(dir: &Path, title: &str, entries: &[(&str, u32, &[u8])]) -> (PathBuf, Descriptor) {
        let path = dir.join("layer.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::default(),
        );
        let mut b = tar::Builder::new(gz);
        for (name, mode, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(*mode);
            if name.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, name, std::io::empty()).unwrap();
            } else {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
        }
        b.into_inner().unwrap().finish().unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        let mut desc = Descriptor::new(media_type::DIRECTORY_LAYER, Digest::of(b""), size);
        desc.set_annotation(annotation::TITLE, title);
        (path, desc)
    }

    fn mode_of(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn unpacking_never_makes_setuid_setgid_or_sticky_files() {
        let dir = tempfile::tempdir().unwrap();
        let (tgz, desc) = tgz(
            dir.path(),
            "d",
            &[
                ("d/", 0o7777, b""),
                ("d/suid", 0o4777, b"#!/bin/sh\n"),
                ("d/sgid", 0o2755, b"x"),
                ("d/sticky/", 0o1777, b""),
                ("d/plain", 0o640, b"y"),
            ],
        );
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let dest = out.join("d");
        unpack_directory(&tgz, &dest, &desc, &FileStoreOptions::default()).unwrap();
        let mask = !umask();
        assert_eq!(mode_of(&dest), 0o777 & mask);
        assert_eq!(mode_of(&dest.join("suid")), 0o777 & mask);
        assert_eq!(mode_of(&dest.join("sgid")), 0o755 & mask);
        assert_eq!(mode_of(&dest.join("sticky")), 0o777 & mask);
        assert_eq!(mode_of(&dest.join("plain")), 0o640 & mask);
    }

    #[test]
    fn unpacking_stops_at_the_limit_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let zeros = vec![0u8; 4 << 20];
        let (tgz, desc) = tgz(dir.path(), "bomb", &[("bomb/zeros", 0o644, &zeros)]);
        assert!(desc.size < 64 << 10, "{} bytes compressed", desc.size);
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let dest = out.join("bomb");
        let opts = FileStoreOptions {
            max_unpacked_size: UnpackLimit::Bytes(1 << 20),
            ..Default::default()
        };
        let err = unpack_directory(&tgz, &dest, &desc, &opts).unwrap_err();
        match &err {
            Error::UnpackTooLarge { title, limit } => {
                assert_eq!((title.as_str(), *limit), ("bomb", 1 << 20))
            }
            e => panic!("not the limit: {e}"),
        }
        assert!(err.to_string().contains("--max-unpacked-size"), "{err}");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "leftovers");

        // Just above what the tar holds: unpacked in full.
        let opts = FileStoreOptions {
            max_unpacked_size: UnpackLimit::Bytes((4 << 20) + 4096),
            ..Default::default()
        };
        unpack_directory(&tgz, &dest, &desc, &opts).unwrap();
        assert_eq!(std::fs::read(dest.join("zeros")).unwrap(), zeros);
    }

    #[test]
    fn the_automatic_unpack_limit_is_a_multiple_with_a_floor() {
        assert_eq!(UnpackLimit::Unlimited.for_layer(1 << 20), None);
        assert_eq!(UnpackLimit::Bytes(5).for_layer(1 << 20), Some(5));
        assert_eq!(
            UnpackLimit::Auto.for_layer(1 << 20),
            Some(AUTO_UNPACK_FLOOR)
        );
        assert_eq!(
            UnpackLimit::Auto.for_layer(1 << 30),
            Some(AUTO_UNPACK_RATIO << 30)
        );
        assert_eq!(UnpackLimit::Auto.for_layer(u64::MAX), Some(u64::MAX));
    }

    /// The tree under `dir` as (relative path, kind, bytes or link target).
    fn tree(dir: &Path) -> Vec<(String, &'static str, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                let meta = std::fs::symlink_metadata(&p).unwrap();
                if meta.is_symlink() {
                    let t = std::fs::read_link(&p).unwrap();
                    out.push((rel, "link", t.to_string_lossy().as_bytes().to_vec()));
                } else if meta.is_dir() {
                    out.push((rel, "dir", Vec::new()));
                    stack.push(p);
                } else {
                    out.push((rel, "file", std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_packed_seekable_directory_unpacks_to_the_same_tree_without_its_toc() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a"), b"hello").unwrap();
        std::fs::write(src.join("empty"), b"").unwrap();
        let big: Vec<u8> = (0..(9u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(src.join("sub/big"), &big).unwrap();
        std::os::unix::fs::symlink("../a", src.join("sub/l")).unwrap();
        let (tgz, mut desc) = pack_directory(&src, "d", dir.path(), true).unwrap();
        assert!(desc.annotation(seekable::TOC_DIGEST_ANNOTATION).is_some());
        desc.set_annotation(annotation::TITLE, "d");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let opts = FileStoreOptions {
            max_unpacked_size: UnpackLimit::Auto,
            ..Default::default()
        };
        unpack_directory(&tgz, &out.join("d"), &desc, &opts).unwrap();
        assert_eq!(tree(&out.join("d")), tree(&src));
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            1,
            "{:?}",
            tree(&out)
        );

        // A wrong content digest is still refused.
        desc.set_annotation(annotation::CONTENT_DIGEST, Digest::of(b"x").to_string());
        assert!(unpack_directory(&tgz, &out.join("d2"), &desc, &opts).is_err());
        assert!(!out.join("d2").exists());
    }

    #[test]
    fn multi_member_layers_unpack_whole_and_either_digest_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        // A tar with two entries, gzipped as two members (as pigz or a seekable writer do).
        let mut tar_bytes = Vec::new();
        {
            let mut b = tar::Builder::new(&mut tar_bytes);
            for (name, data) in [("d/one", &b"first"[..]), ("d/two", &b"second"[..])] {
                let mut h = tar::Header::new_gnu();
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, data).unwrap();
            }
            b.finish().unwrap();
        }
        // Trailing zeros past the end marker: only the whole-stream digest covers them.
        let mut whole = tar_bytes.clone();
        whole.extend([0u8; 2048]);
        let mut layer = Vec::new();
        for part in [&whole[..1024], &whole[1024..]] {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, part).unwrap();
            layer.extend(gz.finish().unwrap());
        }
        let tgz = dir.path().join("l.tgz");
        std::fs::write(&tgz, &layer).unwrap();
        for (i, digest) in [Digest::of(&tar_bytes), Digest::of(&whole)]
            .into_iter()
            .enumerate()
        {
            let mut desc = Descriptor::new(
                media_type::DIRECTORY_LAYER,
                Digest::of(&layer),
                layer.len() as u64,
            );
            desc.set_annotation(annotation::TITLE, "d");
            desc.set_annotation(annotation::CONTENT_DIGEST, digest.to_string());
            let dest = dir.path().join(format!("out{i}")).join("d");
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            unpack_directory(&tgz, &dest, &desc, &FileStoreOptions::default()).unwrap();
            assert_eq!(std::fs::read(dest.join("two")).unwrap(), b"second");
        }
    }

    #[test]
    fn escapes_detects_climbing_links() {
        assert!(crate::archive::escapes(Path::new("a/../../b")));
        assert!(!crate::archive::escapes(Path::new("a/../b")));
    }
}
