//! OCI image layouts packed in a `.tar` archive (what `oras backup -o x.tar` and
//! `skopeo copy … oci-archive:x.tar` write): read in place, never extracted. The archive's
//! headers are read once into an index of regular files (path → offset and size of their
//! data), so a blob read is a seek and a bounded read of the archive file. Writing goes the
//! other way: [`write_archive`] packs a layout directory into a new archive.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use super::ByteStream;
use crate::error::{Error, IoContext, Result};

/// Where a member's data lies in the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub offset: u64,
    pub size: u64,
}

/// The regular files of a tar archive, by their normalised path (`blobs/sha256/<hex>`).
pub struct TarIndex {
    path: PathBuf,
    members: HashMap<String, Member>,
}

impl TarIndex {
    /// Reads every header of the archive at `path` (skipping over the data). An entry whose
    /// path is absolute or climbs out with `..`, a sparse file (its data is not stored as one
    /// run) or a link to a missing member is refused, naming the entry.
    pub fn open(path: &Path) -> Result<TarIndex> {
        let file = std::fs::File::open(path).ctx(|| format!("opening {}", path.display()))?;
        let bad = |reason: String| Error::InvalidManifest {
            context: format!(" {} (an OCI layout archive)", path.display()),
            reason,
        };
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        let mut links = Vec::new();
        let entries = archive
            .entries_with_seek()
            .ctx(|| format!("reading {}", path.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| bad(format!("not a readable tar archive: {e}")))?;
            let raw = entry
                .path()
                .map_err(|e| bad(format!("an entry has an unreadable path: {e}")))?
                .into_owned();
            let name = normalise(&raw)
                .map_err(|reason| bad(format!("entry {:?} {reason}; refusing the archive", raw)))?;
            let kind = entry.header().entry_type();
            if kind.is_gnu_sparse() {
                return Err(bad(format!(
                    "entry {name:?} is a sparse file, which cannot be read in place"
                )));
            }
            if kind.is_file() || kind.is_contiguous() {
                let size = entry.size();
                let offset = entry.raw_file_position();
                members.insert(name, Member { offset, size });
            } else if kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| bad(format!("hard link {name:?} has no target")))?;
                let target = normalise(&target).map_err(|reason| {
                    bad(format!("hard link {name:?} points to a path that {reason}"))
                })?;
                links.push((name, target));
            }
            // Directories carry nothing; symbolic links and devices are not layout content,
            // so a blob behind one reads as missing.
        }
        // A member cut short by the archive's end would read as short data later: refuse now.
        let len = std::fs::metadata(path)
            .ctx(|| format!("reading {}", path.display()))?
            .len();
        if let Some((name, _)) = members.iter().find(|(_, m)| m.offset + m.size > len) {
            return Err(truncated(path, name));
        }
        for (name, target) in links {
            let m = *members
                .get(&target)
                .ok_or_else(|| bad(format!("hard link {name:?} points to missing {target:?}")))?;
            members.insert(name, m);
        }
        Ok(TarIndex {
            path: path.to_path_buf(),
            members,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, name: &str) -> Option<Member> {
        self.members.get(name).copied()
    }

    /// Reads a whole small member, refusing one over `cap` bytes.
    pub fn read_small(&self, name: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        use std::io::{Seek, SeekFrom};
        let Some(m) = self.get(name) else {
            return Ok(None);
        };
        if m.size > cap {
            return Err(Error::InvalidManifest {
                context: format!(" {name} in {}", self.path.display()),
                reason: format!("{} bytes, over the {cap}-byte limit", m.size),
            });
        }
        let mut file =
            std::fs::File::open(&self.path).ctx(|| format!("opening {}", self.path.display()))?;
        let mut buf = Vec::with_capacity(m.size as usize);
        file.seek(SeekFrom::Start(m.offset))
            .and_then(|_| file.take(m.size).read_to_end(&mut buf))
            .ctx(|| format!("reading {name} in {}", self.path.display()))?;
        if buf.len() as u64 != m.size {
            return Err(truncated(&self.path, name));
        }
        Ok(Some(buf))
    }

    /// Streams `len` bytes at `offset` of a member (fewer at its end).
    pub async fn range(&self, m: Member, offset: u64, len: u64) -> Result<ByteStream> {
        let offset = offset.min(m.size);
        let len = len.min(m.size - offset);
        super::file_range_stream(&self.path, m.offset + offset, len).await
    }
}

fn truncated(archive: &Path, name: &str) -> Error {
    Error::InvalidManifest {
        context: format!(" {}", archive.display()),
        reason: format!("the archive ends inside {name}: it is truncated"),
    }
}

/// A member path as `a/b/c` (no `./`, no trailing `/`), or why it is refused.
fn normalise(path: &Path) -> std::result::Result<String, &'static str> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(p) => {
                parts.push(p.to_str().ok_or("is not valid UTF-8")?);
            }
            Component::ParentDir => return Err("climbs out of the archive with '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok(parts.join("/"))
}

/// Packs the layout directory `dir` into a new archive at `dest`: written to a temporary file
/// beside it, then renamed into place, so `dest` is never a half-written archive. Members are
/// in a fixed order (`oci-layout`, `index.json`, then `blobs/` sorted) with normalised headers,
/// so the same layout gives the same bytes. Blob files are streamed, never held whole.
pub fn write_archive(dir: &Path, dest: &Path) -> Result<u64> {
    let parent = parent_dir(dest);
    let tmp = tempfile::Builder::new()
        .prefix(".oras-fs-partial-")
        .tempfile_in(parent)
        .ctx(|| format!("creating a temporary file in {}", parent.display()))?;
    let writing = || format!("writing {}", dest.display());
    let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(
        super::IO_CHUNK,
        tmp.as_file(),
    ));
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    for name in ["oci-layout", "index.json"] {
        builder
            .append_path_with_name(dir.join(name), name)
            .ctx(writing)?;
    }
    let blobs = dir.join("blobs");
    builder.append_dir("blobs", &blobs).ctx(writing)?;
    for alg in sorted_dir(&blobs)? {
        let alg_dir = blobs.join(&alg);
        builder
            .append_dir(format!("blobs/{alg}"), &alg_dir)
            .ctx(writing)?;
        for hex in sorted_dir(&alg_dir)? {
            // Leftovers of an interrupted write are not content.
            if hex.starts_with('.') {
                continue;
            }
            builder
                .append_path_with_name(alg_dir.join(&hex), format!("blobs/{alg}/{hex}"))
                .ctx(writing)?;
        }
    }
    let buffered = builder.into_inner().ctx(writing)?;
    buffered
        .into_inner()
        .map_err(|e| Error::io(writing(), e.into_error()))?
        .sync_all()
        .ctx(writing)?;
    let size = tmp.as_file().metadata().ctx(writing)?.len();
    // A temporary file is 0600; the archive gets the mode any new file would.
    use std::os::unix::fs::PermissionsExt;
    let mode = 0o666 & !umask();
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .ctx(writing)?;
    tmp.persist(dest)
        .map_err(|e| Error::io(format!("renaming into {}", dest.display()), e.error))?;
    Ok(size)
}

/// The directory `path` is in (`.` for a bare file name): where a file is made to be
/// renamed onto it.
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The process's umask, read without changing it (`umask(2)` can only set it, and setting
/// it races with other threads creating files); 022 where /proc does not say.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Umask:"))?;
            u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
        })
        .unwrap_or(0o022)
}

fn sorted_dir(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).ctx(|| format!("reading {}", dir.display()))? {
        let e = e.ctx(|| format!("reading {}", dir.display()))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of `(name, data)` members, headers written as given (no path checks).
    fn raw_tar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn indexes_members_and_reads_them_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.tar");
        std::fs::write(
            &path,
            raw_tar(&[("./oci-layout", b"{}"), ("blobs/sha256/ab", b"hello world")]),
        )
        .unwrap();
        let t = TarIndex::open(&path).unwrap();
        assert_eq!(t.read_small("oci-layout", 10).unwrap().unwrap(), b"{}");
        let m = t.get("blobs/sha256/ab").unwrap();
        assert_eq!(m.size, 11);
        assert!(t.read_small("blobs/sha256/ab", 5).is_err());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let s = t.range(m, 6, 100).await.unwrap();
            crate::content::collect(&crate::manifest::Descriptor::of("x", b"world"), s, 1 << 20)
                .await
                .unwrap()
        });
        assert_eq!(&got[..], b"world");
    }

    #[test]
    fn refuses_hostile_paths() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../escape", "/etc/passwd", "blobs/../../x"] {
            let path = dir.path().join("bad.tar");
            std::fs::write(&path, raw_tar(&[(bad, b"x")])).unwrap();
            let e = TarIndex::open(&path).err().expect("refused").to_string();
            assert!(e.contains(bad) || e.contains("absolute"), "{bad}: {e}");
        }
    }

    #[test]
    fn writes_a_layout_that_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        std::fs::write(layout.join("oci-layout"), "{}").unwrap();
        std::fs::write(layout.join("index.json"), "{\"schemaVersion\":2}").unwrap();
        std::fs::write(layout.join("blobs/sha256/cd"), "data").unwrap();
        std::fs::write(layout.join("blobs/sha256/.oras-fs-partial-1"), "junk").unwrap();
        let dest = dir.path().join("out.tar");
        let size = write_archive(&layout, &dest).unwrap();
        assert_eq!(size, std::fs::metadata(&dest).unwrap().len());
        let t = TarIndex::open(&dest).unwrap();
        assert_eq!(
            t.read_small("blobs/sha256/cd", 10).unwrap().unwrap(),
            b"data"
        );
        assert!(t.get("blobs/sha256/.oras-fs-partial-1").is_none());
        // Same layout, same bytes.
        let again = dir.path().join("again.tar");
        write_archive(&layout, &again).unwrap();
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            std::fs::read(&again).unwrap()
        );
    }
}
