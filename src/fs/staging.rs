//! Staged changes of a writable mount: new and modified files as local files, and a journal of
//! the tree, under `<cache>/staging/<key of the reference>/`.
//!
//! The journal is an append-only log (`journal.log`, one JSON record a line): a `base` record
//! and the whole tree as `put`s, then one small record per change (`put`, `remove`, `rename`),
//! so a change costs what it changes, not what the tree holds. When the appended records
//! outgrow the snapshot, the log is rewritten whole (atomically). A staged file is in the
//! journal from its creation on, so a crash or `kill -9` of the mount loses nothing: the next
//! mount of the reference replays the log. Records are written without fsync (a crash of the
//! process keeps them; `fsync` on any file and every sync flush the log too).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::paths::{private_dir, private_file};
use crate::digest::Digest;
use crate::manifest::Descriptor;

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Entry {
    /// An unchanged layer (possibly renamed).
    Blob {
        path: String,
        descriptor: Descriptor,
        mode: u16,
        /// Its index among the base manifest's layers (where a sync keeps it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<usize>,
    },
    /// A new or changed file, staged in `files/<file>`.
    Staged {
        path: String,
        file: String,
        mode: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<usize>,
        /// Open for writing: a mount that ends before it is closed leaves it possibly
        /// incomplete, and the next mount holds it back from pushes until it is written again.
        #[serde(default, skip_serializing_if = "is_false")]
        writing: bool,
    },
    /// A directory made in the mount.
    Dir { path: String, mode: u16 },
    /// A directory layer, kept as is.
    Layer {
        path: String,
        descriptor: Descriptor,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<usize>,
    },
}

impl Entry {
    pub fn path(&self) -> &str {
        match self {
            Entry::Blob { path, .. }
            | Entry::Staged { path, .. }
            | Entry::Dir { path, .. }
            | Entry::Layer { path, .. } => path,
        }
    }

    fn path_mut(&mut self) -> &mut String {
        match self {
            Entry::Blob { path, .. }
            | Entry::Staged { path, .. }
            | Entry::Dir { path, .. }
            | Entry::Layer { path, .. } => path,
        }
    }
}

/// The pending changes of a mount: the tree as it was last written.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    /// The reference mounted.
    pub reference: String,
    /// The manifest the changes were made on.
    pub base: Digest,
    /// Indexes of the base manifest's layers the mount does not show; a sync keeps them.
    /// `None` in journals of versions that did not record them.
    #[serde(default)]
    pub hidden: Option<Vec<usize>>,
    pub entries: Vec<Entry>,
}

/// One line of the log (short-lived: their sizes don't matter).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Record {
    /// Starts the log: what the changes were made on.
    Base {
        reference: String,
        base: Digest,
        #[serde(default)]
        hidden: Option<Vec<usize>>,
    },
    /// Adds or replaces the entry at its path.
    Put { entry: Entry },
    /// Removes a path and everything below it.
    Remove { path: String },
    /// Moves a path and everything below it, replacing what was at `to`.
    Rename { from: String, to: String },
}

/// The open log and how much was appended since the last rewrite.
struct Log {
    file: Option<File>,
    snapshot_len: u64,
    appended: u64,
}

pub struct Staging {
    dir: PathBuf,
    next: AtomicU64,
    log: Mutex<Log>,
    /// Held for the mount's life: one writable mount per reference at a time.
    _lock: File,
}

/// Whether `path` is `prefix` or lies below it (`a/b` is below `a`, `ab` is not).
fn is_below(path: &str, prefix: &str) -> bool {
    path == prefix
        || (path.len() > prefix.len()
            && path.starts_with(prefix)
            && path.as_bytes()[prefix.len()] == b'/')
}

/// Applies one change record to the entries, keyed by path.
fn apply(entries: &mut BTreeMap<String, Entry>, record: Record) {
    match record {
        Record::Base { .. } => {}
        Record::Put { entry } => {
            entries.insert(entry.path().to_string(), entry);
        }
        Record::Remove { path } => entries.retain(|p, _| !is_below(p, &path)),
        Record::Rename { from, to } => {
            if from == to {
                return;
            }
            entries.retain(|p, _| !is_below(p, &to));
            let moved: Vec<String> = entries
                .keys()
                .filter(|p| is_below(p, &from))
                .cloned()
                .collect();
            for old in moved {
                let mut e = entries.remove(&old).expect("listed");
                let new = format!("{to}{}", &old[from.len()..]);
                *e.path_mut() = new.clone();
                entries.insert(new, e);
            }
        }
    }
}

/// Replays a log into a journal. A torn last line (a crash mid-write) is dropped; damage
/// anywhere else is an error, since replaying past it would lose changes silently.
fn replay(text: &str) -> Result<Journal, String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut journal: Option<Journal> = None;
    let mut entries = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let record: Record = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {
                tracing::warn!("the journal's last record is incomplete (a crash?); ignoring it");
                break;
            }
            Err(e) => return Err(format!("line {}: {e}", i + 1)),
        };
        match (&record, &journal) {
            (
                Record::Base {
                    reference,
                    base,
                    hidden,
                },
                None,
            ) => {
                journal = Some(Journal {
                    version: 2,
                    reference: reference.clone(),
                    base: base.clone(),
                    hidden: hidden.clone(),
                    entries: Vec::new(),
                })
            }
            (Record::Base { .. }, Some(_)) => return Err(format!("line {}: a second base", i + 1)),
            (_, None) => return Err("it does not start with a base record".into()),
            _ => apply(&mut entries, record),
        }
    }
    let mut journal = journal.ok_or("it is empty")?;
    journal.entries = entries.into_values().collect();
    Ok(journal)
}

impl Staging {
    /// Opens (creating) the staging area of `reference`, refusing if another mount holds it.
    pub fn open(cache_dir: &Path, reference: &str) -> crate::Result<Staging> {
        let key = Digest::of(reference.as_bytes());
        let dir = cache_dir.join("staging").join(&key.hex()[..24]);
        let io = |what: &str, e: std::io::Error| {
            crate::Error::io(format!("{what} {}", dir.display()), e)
        };
        private_dir(&dir.join("files")).map_err(|e| io("creating", e))?;
        let lock = private_file(&dir.join("lock"), true).map_err(|e| io("locking", e))?;
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
            log: Mutex::new(Log {
                file: None,
                snapshot_len: 0,
                appended: 0,
            }),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("journal.log")
    }

    /// The whole-tree journal of versions before the log; still read, so nothing staged by
    /// them is lost.
    fn legacy_path(&self) -> PathBuf {
        self.dir.join("journal.json")
    }

    /// The pending changes of an earlier mount, if any.
    pub fn load(&self) -> crate::Result<Option<Journal>> {
        let damaged = |path: PathBuf, e: String| {
            crate::Error::Other(format!(
                "the journal {} is damaged ({e}); move it away to mount without it",
                path.display()
            ))
        };
        match std::fs::read_to_string(self.log_path()) {
            Ok(text) => {
                return replay(&text)
                    .map(Some)
                    .map_err(|e| damaged(self.log_path(), e))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::Error::io("reading the journal", e)),
        }
        match std::fs::read(self.legacy_path()) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| damaged(self.legacy_path(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(crate::Error::io("reading the journal", e)),
        }
    }

    /// Whether the log has been started (a `base` record written) since the last clear.
    pub fn has_log(&self) -> bool {
        self.log.lock().unwrap().file.is_some()
    }

    /// Rewrites the log as one snapshot of `journal`, atomically and durably.
    pub fn save(&self, journal: &Journal) -> std::io::Result<()> {
        let mut log = self.log.lock().unwrap();
        let tmp = self.dir.join("journal.log.tmp");
        let mut text = Vec::new();
        let base = Record::Base {
            reference: journal.reference.clone(),
            base: journal.base.clone(),
            hidden: journal.hidden.clone(),
        };
        for r in std::iter::once(base).chain(
            journal
                .entries
                .iter()
                .map(|e| Record::Put { entry: e.clone() }),
        ) {
            serde_json::to_writer(&mut text, &r).expect("records serialize");
            text.push(b'\n');
        }
        let mut f = private_file(&tmp, false)?;
        f.write_all(&text)?;
        f.sync_data()?;
        std::fs::rename(&tmp, self.log_path())?;
        let _ = std::fs::remove_file(self.legacy_path());
        log.file = Some(private_file(&self.log_path(), true)?);
        log.snapshot_len = text.len() as u64;
        log.appended = 0;
        Ok(())
    }

    /// Appends change records to a started log. Returns whether the log has outgrown its
    /// snapshot, so the caller should rewrite it with [`Staging::save`].
    pub fn append(&self, records: &[Record]) -> std::io::Result<bool> {
        let mut log = self.log.lock().unwrap();
        let mut text = Vec::new();
        for r in records {
            serde_json::to_writer(&mut text, r).expect("records serialize");
            text.push(b'\n');
        }
        let file = log.file.as_mut().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "the journal is not started")
        })?;
        // One write call: a crash tears at most the last record, which replay drops.
        file.write_all(&text)?;
        log.appended += text.len() as u64;
        Ok(log.appended > (4 * log.snapshot_len).max(1 << 20))
    }

    /// Makes the log durable (on `fsync` of a file and before a push).
    pub fn flush(&self) -> std::io::Result<()> {
        match &self.log.lock().unwrap().file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// Removes the journal once the changes are pushed (the staged files go with the next
    /// mount's garbage collection, or are adopted into the cache).
    pub fn clear(&self) -> std::io::Result<()> {
        let mut log = self.log.lock().unwrap();
        log.file = None;
        for p in [self.log_path(), self.legacy_path()] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
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

    /// Whether `path` is a file of this staging area (not one unpacked from a layer).
    pub fn holds(&self, path: &Path) -> bool {
        path.starts_with(&self.dir)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(path: &str) -> Entry {
        Entry::Dir {
            path: path.into(),
            mode: 0o755,
        }
    }

    fn staged(path: &str, file: &str) -> Entry {
        Entry::Staged {
            path: path.into(),
            file: file.into(),
            mode: 0o644,
            origin: None,
            writing: false,
        }
    }

    fn journal(entries: Vec<Entry>) -> Journal {
        Journal {
            version: 2,
            reference: "r".into(),
            base: Digest::of(b"x"),
            hidden: Some(vec![1]),
            entries,
        }
    }

    #[test]
    fn records_replay_into_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Staging::open(tmp.path(), "r").unwrap();
        s.save(&journal(vec![
            dir("a"),
            staged("a/x", "f-1"),
            staged("ab", "f-2"),
        ]))
        .unwrap();
        s.append(&[
            Record::Put {
                entry: staged("a/y", "f-3"),
            },
            Record::Rename {
                from: "a".into(),
                to: "b".into(),
            },
            Record::Remove { path: "ab".into() },
            Record::Put { entry: dir("c") },
        ])
        .unwrap();
        drop(s);
        let s = Staging::open(tmp.path(), "r").unwrap();
        let j = s.load().unwrap().unwrap();
        assert_eq!(j.hidden, Some(vec![1]));
        let paths: Vec<&str> = j.entries.iter().map(|e| e.path()).collect();
        assert_eq!(paths, ["b", "b/x", "b/y", "c"]);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_damage_elsewhere_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Staging::open(tmp.path(), "r").unwrap();
        s.save(&journal(vec![staged("x", "f-1")])).unwrap();
        s.append(&[Record::Remove { path: "x".into() }]).unwrap();
        let log = s.log_path();
        let mut text = std::fs::read_to_string(&log).unwrap();
        text.push_str("{\"op\":\"put\",\"entr");
        std::fs::write(&log, &text).unwrap();
        assert!(s.load().unwrap().unwrap().entries.is_empty());
        std::fs::write(
            &log,
            text.replacen("\"op\":\"remove\"", "\"op\":\"bogus\"", 1),
        )
        .unwrap();
        let err = s.load().unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
    }

    #[test]
    fn a_legacy_journal_is_still_read() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Staging::open(tmp.path(), "r").unwrap();
        let legacy = r#"{"version":1,"reference":"r","base":"sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","entries":[{"type":"staged","path":"n.txt","file":"f-1","mode":420}]}"#;
        std::fs::write(s.legacy_path(), legacy).unwrap();
        let j = s.load().unwrap().unwrap();
        assert_eq!(j.entries, vec![staged("n.txt", "f-1")]);
        assert_eq!(j.hidden, None);
    }

    #[test]
    fn appends_ask_for_a_rewrite_once_they_outgrow_the_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Staging::open(tmp.path(), "r").unwrap();
        s.save(&journal(vec![])).unwrap();
        let rec = Record::Put {
            entry: staged(&"n".repeat(200), "f-1"),
        };
        let mut asked = false;
        for _ in 0..10_000 {
            if s.append(std::slice::from_ref(&rec)).unwrap() {
                asked = true;
                break;
            }
        }
        assert!(asked);
    }
}
