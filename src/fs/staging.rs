//! Staged changes of a writable mount: new and modified files as local files, and a journal of
//! the whole tree, under `<cache>/staging/<key of the reference>/`. The journal is rewritten
//! (atomically) after every change of names or metadata, and a staged file is in it from its
//! creation on, so a crash or `kill -9` loses nothing: the next mount of the reference finds it.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::manifest::Descriptor;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Entry {
    /// An unchanged layer (possibly renamed).
    Blob {
        path: String,
        descriptor: Descriptor,
        mode: u16,
    },
    /// A new or changed file, staged in `files/<file>`.
    Staged {
        path: String,
        file: String,
        mode: u16,
    },
    /// A directory made in the mount.
    Dir { path: String, mode: u16 },
    /// A directory layer, kept as is.
    Layer {
        path: String,
        descriptor: Descriptor,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    /// The reference mounted.
    pub reference: String,
    /// The manifest the changes were made on.
    pub base: Digest,
    pub entries: Vec<Entry>,
}

pub struct Staging {
    dir: PathBuf,
    next: AtomicU64,
    /// Held for the mount's life: one writable mount per reference at a time.
    _lock: File,
}

impl Staging {
    /// Opens (creating) the staging area of `reference`, refusing if another mount holds it.
    pub fn open(cache_dir: &Path, reference: &str) -> crate::Result<Staging> {
        let key = Digest::of(reference.as_bytes());
        let dir = cache_dir.join("staging").join(&key.hex()[..24]);
        let io = |what: &str, e: std::io::Error| {
            crate::Error::io(format!("{what} {}", dir.display()), e)
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("files"))
            .map_err(|e| io("creating", e))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("lock"))
            .map_err(|e| io("locking", e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(crate::Error::Usage(format!(
                "{reference} is mounted writable elsewhere (its staging area {} is locked); \
                 unmount that first, or mount with --read-only",
                dir.display()
            )));
        }
        let next = std::fs::read_dir(dir.join("files"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_prefix("f-")?
                            .parse::<u64>()
                            .ok()
                    })
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        Ok(Staging {
            dir,
            next: AtomicU64::new(next + 1),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join("journal.json")
    }

    /// The pending changes of an earlier mount, if any.
    pub fn load(&self) -> crate::Result<Option<Journal>> {
        match std::fs::read(self.journal_path()) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                crate::Error::Other(format!(
                    "the journal {} is damaged ({e}); move it away to mount without it",
                    self.journal_path().display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(crate::Error::io("reading the journal", e)),
        }
    }

    /// Replaces the journal atomically (and durably: it is what survives a crash).
    pub fn save(&self, journal: &Journal) -> std::io::Result<()> {
        let tmp = self.dir.join("journal.json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(journal).expect("journal serializes"))?;
        f.sync_data()?;
        std::fs::rename(&tmp, self.journal_path())
    }

    /// Removes the journal and staged files once the changes are pushed.
    pub fn clear(&self) -> std::io::Result<()> {
        match std::fs::remove_file(self.journal_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// A new staged file's name and path.
    pub fn new_file(&self) -> (String, PathBuf) {
        let name = format!("f-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let path = self.dir.join("files").join(&name);
        (name, path)
    }

    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join("files").join(name)
    }

    /// Deletes staged files the journal no longer names.
    pub fn collect_garbage(&self, journal: Option<&Journal>) {
        let keep: std::collections::HashSet<&str> = journal
            .map(|j| {
                j.entries
                    .iter()
                    .filter_map(|e| match e {
                        Entry::Staged { file, .. } => Some(file.as_str()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(rd) = std::fs::read_dir(self.dir.join("files")) {
            for e in rd.flatten() {
                let name = e.file_name();
                if !keep.contains(name.to_string_lossy().as_ref()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}
