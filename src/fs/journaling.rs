//! How a writable mount's changes reach its journal (`staging`): one record per change, a
//! rewrite when the log outgrows its snapshot or an append failed, and the "being written"
//! mark from a file's first write until its close.

use std::sync::atomic::Ordering;

use super::cache::Errno;
use super::filesystem::OrasFs;
use super::staging::{Journal, Record};
use super::tree::{Ino, Tree};
use super::view;

impl OrasFs {
    /// Closes a handle (see [`OrasFs::flush`]).
    pub fn release(&self, fh: u64) {
        self.flush(fh);
        self.handles.lock().unwrap().remove(&fh);
    }

    /// Forgets every open handle: after a lazy unmount the kernel may never send the last
    /// releases, and a file nobody can write any more must not count as open.
    pub fn release_all(&self) {
        let fhs: Vec<u64> = self.handles.lock().unwrap().keys().copied().collect();
        for fh in fhs {
            self.release(fh);
        }
    }

    /// A close of a writable file (`close` waits for this, not for the release): the journal
    /// says the file is complete. A crash while a file is being written leaves it marked, and
    /// the next mount holds it back from pushes; a later write marks it again.
    pub fn flush(&self, fh: u64) {
        let ino = {
            let handles = self.handles.lock().unwrap();
            let ino = match handles.get(&fh) {
                Some(h) if h.writable => h.ino,
                _ => return,
            };
            // Another writer of the file still has it open: it is not complete yet.
            if handles
                .iter()
                .any(|(other, h)| *other != fh && h.writable && h.ino == ino)
            {
                return;
            }
            ino
        };
        if !self.writing.lock().unwrap().remove(&ino) {
            return;
        }
        let mut tree = self.tree.write().unwrap();
        let Some(n) = tree.get_mut(ino) else { return };
        n.incomplete = false;
        let record = self.put(&tree, ino);
        if let Err(e) = self.record(&tree, record) {
            tracing::error!("recording that {} was closed: errno {e}", tree.path_of(ino));
        }
    }

    /// Records a change in the journal: after this, it survives a crash of the mount.
    pub(super) fn record(
        &self,
        tree: &Tree,
        records: impl IntoIterator<Item = Record>,
    ) -> Result<(), Errno> {
        self.changed.store(true, Ordering::SeqCst);
        let w = self.writer()?;
        let records: Vec<Record> = records.into_iter().collect();
        if !w.staging.has_log() || self.journal_stale.load(Ordering::SeqCst) {
            return self.rewrite_journal(tree);
        }
        match w.staging.append(&records) {
            Ok(false) => Ok(()),
            Ok(true) => self.rewrite_journal(tree),
            Err(e) => {
                self.journal_stale.store(true, Ordering::SeqCst);
                self.record_error(format!("writing the journal: {e}"));
                Err(Errno::io(&e, "writing the journal"))
            }
        }
    }

    /// Writes the whole journal anew (its base is the mounted manifest).
    pub(super) fn rewrite_journal(&self, tree: &Tree) -> Result<(), Errno> {
        let w = self.writer()?;
        let writing = self.writing.lock().unwrap().clone();
        let snap = self.snapshot.read().unwrap();
        let journal = Journal {
            version: 2,
            reference: snap.reference.clone(),
            base: snap.descriptor.digest.clone(),
            hidden: Some(self.hidden.read().unwrap().clone()),
            entries: view::journal_entries(tree, &|i| writing.contains(&i)),
        };
        drop(snap);
        match w.staging.save(&journal) {
            Ok(()) => {
                self.journal_stale.store(false, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                self.journal_stale.store(true, Ordering::SeqCst);
                self.record_error(format!("writing the journal: {e}"));
                Err(Errno::io(&e, "writing the journal"))
            }
        }
    }

    /// The journal entry of `ino` as it is now.
    pub(super) fn put(&self, tree: &Tree, ino: Ino) -> Option<Record> {
        let writing = self.writing.lock().unwrap().contains(&ino);
        view::entry_of(tree, ino, writing).map(|entry| Record::Put { entry })
    }

    /// Records that a staged file is open for writing (until its last writer closes it).
    pub(super) fn mark_writing(&self, ino: Ino) -> Result<(), Errno> {
        if !self.writing.lock().unwrap().insert(ino) {
            return Ok(());
        }
        let tree = self.tree.read().unwrap();
        let record = self.put(&tree, ino);
        self.record(&tree, record)
    }
}
