//! Sync: pushes a writable mount's changes as one new manifest. Unchanged files stay references
//! to their blobs, layers the mount does not show are carried through in their places, and
//! files a crashed writer may have left incomplete are held back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::filesystem::{OrasFs, SyncOptions, Writer};
use super::tree::{Ino, Kind, Node, Source, Tree, ROOT};
use super::view;
use crate::content::{FileStore, Overlay, Target};
use crate::manifest::{annotation, Descriptor};
use crate::oras::{self, CopyOptions};
use crate::{Error, Result};

/// Where each layer of a new manifest comes from.
#[derive(Debug, PartialEq)]
pub enum Slot {
    /// A base layer kept as it was (hidden by the mount, or a file held back).
    Kept(usize),
    /// The k-th file of the plan.
    File(usize),
}

/// Orders a new manifest's layers: every base layer a file came from keeps its place (so an
/// edited file stays where it was), kept layers stay where they were, and new files follow in
/// plan (path) order.
pub fn arrange(base_len: usize, kept: &[usize], origins: &[Option<usize>]) -> Vec<Slot> {
    let mut slots: Vec<Option<Slot>> = (0..base_len).map(|_| None).collect();
    for &i in kept {
        if i < base_len {
            slots[i] = Some(Slot::Kept(i));
        }
    }
    let mut extra = Vec::new();
    for (k, origin) in origins.iter().enumerate() {
        match origin {
            Some(i) if *i < base_len && slots[*i].is_none() => slots[*i] = Some(Slot::File(k)),
            _ => extra.push(Slot::File(k)),
        }
    }
    slots.into_iter().flatten().chain(extra).collect()
}

/// Files (and directory layers) to push, with their paths.
type Planned = Vec<(String, Node)>;

/// Every file and directory layer below `ino`, with its path, in path order.
fn collect_files(tree: &Tree, ino: Ino, out: &mut Vec<(String, Node)>) {
    for n in tree.children(ino) {
        if n.internal {
            continue;
        }
        match (&n.kind, &n.layer) {
            (Kind::Dir { .. }, Some(_)) | (Kind::File(_), _) => {
                out.push((tree.path_of(n.ino), n.clone()))
            }
            (Kind::Dir { .. }, None) => collect_files(tree, n.ino, out),
            _ => {}
        }
    }
}

/// An error about a staged file, with its path in the mount instead of the staging area's.
fn in_mount_terms(e: Error, staged: &std::path::Path, path: &str) -> Error {
    let text = e.to_string().replace(
        &staged.display().to_string(),
        &format!("{path} (its staged copy)"),
    );
    Error::Other(format!("pushing {path}: {text}"))
}

/// The layers of a new manifest, and where each node and hidden layer is in it.
#[derive(Default)]
struct LaidOut {
    layers: Vec<Descriptor>,
    /// Node → its layer's index.
    origins: HashMap<Ino, usize>,
    /// Indexes of the layers the mount does not show.
    hidden: Vec<usize>,
}

/// A manifest just pushed, and where everything is in it.
struct Pushed {
    desc: Descriptor,
    manifest: crate::manifest::Manifest,
    bytes: Bytes,
    origins: HashMap<Ino, usize>,
    hidden: Vec<usize>,
}

/// Refuses to overwrite a tag that someone else moved since it was mounted.
async fn check_not_moved(w: &Writer, base: &super::view::Snapshot) -> Result<()> {
    // At the origin: a mirror's copy of the tag may be stale.
    let current = match w.target.resolve_for_write(&w.tag).await {
        Ok(d) => Some(d.digest),
        Err(Error::NotFound { .. }) => None,
        Err(e) => return Err(e),
    };
    if current.as_ref() == Some(&base.descriptor.digest) {
        return Ok(());
    }
    Err(Error::TagMoved {
        reference: base.reference.clone(),
        mounted: base.descriptor.digest.clone(),
        now: current
            .map(|d| d.to_string())
            .unwrap_or_else(|| "deleted".into()),
    })
}

/// Sends the staged files (large ones hash while they upload), a few at once; their
/// descriptors in the same order.
async fn send_staged(
    store: &FileStore,
    dst: &dyn Target,
    media_type: &str,
    staged: &[(&String, &Node, &PathBuf)],
    copy_opts: &CopyOptions,
) -> Result<Vec<Descriptor>> {
    use futures_util::{StreamExt, TryStreamExt};
    // Made first, not mapped lazily in the stream: that keeps the sync future spawnable.
    let sends: Vec<_> = staged
        .iter()
        .map(|(path, _, p)| async move {
            oras::send_file(store, dst, path, Some(media_type), p, copy_opts)
                .await
                .map_err(|e| in_mount_terms(e, p, path))
        })
        .collect();
    futures_util::stream::iter(sends)
        .buffered(copy_opts.concurrency)
        .try_collect()
        .await
}

impl OrasFs {
    pub(super) async fn push_changes(
        &self,
        w: &Writer,
        opts: &SyncOptions,
    ) -> Result<Option<Descriptor>> {
        let base = self.snapshot();
        let (plan, held) = self.plan(opts);
        let (dst, tag): (Arc<dyn Target>, String) = match &opts.push_to {
            Some((t, tag)) => (t.clone(), tag.clone()),
            None => (w.target.clone(), w.tag.clone()),
        };
        if opts.push_to.is_none() && !opts.force {
            check_not_moved(w, &base).await?;
        }
        // The staged journal must be durable before anything it names is pushed.
        let _ = w.staging.flush();
        let store = Arc::new(FileStore::new(w.staging.dir(), Default::default()));
        let staged: Vec<(&String, &Node, &PathBuf)> = plan
            .iter()
            .filter_map(|(path, node)| match &node.kind {
                Kind::File(Source::Staged(p)) => Some((path, node, p)),
                _ => None,
            })
            .collect();
        let copy_opts = CopyOptions::default();
        let sent = send_staged(&store, dst.as_ref(), &w.media_type, &staged, &copy_opts).await?;
        let sent_by_ino: HashMap<Ino, Descriptor> = staged
            .iter()
            .zip(&sent)
            .map(|((_, node, _), d)| (node.ino, d.clone()))
            .collect();
        let laid = self.lay_out(&base, &plan, &held, &sent_by_ino);
        // What was held back is still to be pushed by a later sync.
        if !held.is_empty() {
            self.changed
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if opts.push_to.is_none() && laid.layers == base.manifest.layers {
            // Nothing that can be pushed changed (only held-back files, modes or times).
            return Ok(None);
        }
        let mut manifest = base.manifest.clone();
        manifest.layers = laid.layers;
        let mut annotations = manifest.annotations.clone().unwrap_or_default();
        annotations.insert(
            annotation::CREATED.to_string(),
            humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        );
        manifest.annotations = Some(annotations);
        let bytes = Bytes::from(manifest.to_bytes());
        let desc = Descriptor::of(manifest.media_type().to_string(), &bytes);
        if opts.push_to.is_none() {
            // Every layer is in the mounted repository already (unchanged ones are in the
            // mounted manifest, changed ones were just sent), and so is the config: asking
            // about each again would double the requests of a sync of many small files.
            dst.push_manifest(&desc, bytes.clone(), Some(&tag)).await?;
        } else {
            let src = Overlay {
                upper: store.clone(),
                lower: w.target.clone(),
            };
            oras::copy_graph(&src, dst.as_ref(), &desc, bytes.clone(), &[tag], &copy_opts).await?;
        }
        let pushed = Pushed {
            desc: desc.clone(),
            manifest,
            bytes,
            origins: laid.origins,
            hidden: laid.hidden,
        };
        self.adopt_pushed(w, &staged, &sent, pushed)?;
        Ok(Some(desc))
    }

    /// What to push and what to hold back (files a crash may have left incomplete, and with
    /// `hold_open_files` those open for writing), each with its path, in path order.
    fn plan(&self, opts: &SyncOptions) -> (Planned, Planned) {
        let open = if opts.hold_open_files {
            self.writable_inos()
        } else {
            Default::default()
        };
        let (plan, held): (Planned, Planned) = {
            let tree = self.tree.read().unwrap();
            let mut out = Vec::new();
            collect_files(&tree, ROOT, &mut out);
            out.into_iter()
                .partition(|(_, n)| !n.incomplete && !open.contains(&n.ino))
        };
        for (path, n) in &held {
            if n.incomplete {
                tracing::warn!("not pushing {path}: {}", view::incomplete_notice(path));
            } else {
                tracing::warn!("not pushing {path}: it is still open for writing; it stays staged");
            }
        }
        (plan, held)
    }

    /// The new manifest's layers, in order (see [`arrange`]), and where each node and each
    /// hidden layer ends up in it.
    fn lay_out(
        &self,
        base: &super::view::Snapshot,
        plan: &Planned,
        held: &Planned,
        sent_by_ino: &HashMap<Ino, Descriptor>,
    ) -> LaidOut {
        // Each planned node's layer, with its title.
        let mut files: Vec<(Ino, Option<usize>, Descriptor)> = Vec::new();
        for (path, node) in plan {
            let mut d = match (&node.kind, &node.layer) {
                (Kind::Dir { .. }, Some(layer)) => layer.clone(),
                (Kind::File(Source::Blob(d)), _) => d.as_ref().clone(),
                (Kind::File(Source::Staged(_)), _) => match sent_by_ino.get(&node.ino) {
                    Some(d) => d.clone(),
                    None => continue,
                },
                _ => continue,
            };
            d.set_annotation(annotation::TITLE, path.clone());
            files.push((node.ino, node.origin, d));
        }
        let hidden = self.hidden.read().unwrap().clone();
        // A held-back file that replaced a base layer keeps that layer as it was.
        let kept: Vec<usize> = hidden
            .iter()
            .copied()
            .chain(held.iter().filter_map(|(_, n)| n.origin))
            .collect();
        let origins: Vec<Option<usize>> = files.iter().map(|f| f.1).collect();
        let mut out = LaidOut::default();
        for (j, slot) in arrange(base.manifest.layers.len(), &kept, &origins)
            .into_iter()
            .enumerate()
        {
            match slot {
                Slot::Kept(i) => {
                    if hidden.contains(&i) {
                        out.hidden.push(j);
                    } else if let Some((_, n)) = held.iter().find(|(_, n)| n.origin == Some(i)) {
                        out.origins.insert(n.ino, j);
                    }
                    out.layers.push(base.manifest.layers[i].clone());
                }
                Slot::File(k) => {
                    out.origins.insert(files[k].0, j);
                    out.layers.push(files[k].2.clone());
                }
            }
        }
        out
    }

    /// After a push: the new manifest is the base; pushed files become cached blobs unless
    /// they changed (or are still open for writing); the journal is rewritten or cleared.
    fn adopt_pushed(
        &self,
        w: &Writer,
        staged: &[(&String, &Node, &PathBuf)],
        sent: &[Descriptor],
        pushed: Pushed,
    ) -> Result<()> {
        let mut tree = self.tree.write().unwrap();
        // Taken under the tree lock: `open` adds handles under it too.
        let open_for_write = self.writable_inos();
        for ((_, node, path), d) in staged.iter().zip(sent) {
            let unchanged = tree
                .get(node.ino)
                .is_some_and(|n| n.version == node.version);
            if !unchanged || open_for_write.contains(&node.ino) {
                continue;
            }
            if self.cache.adopt(d, path).is_ok() {
                if let Some(n) = tree.get_mut(node.ino) {
                    n.kind = Kind::File(Source::Blob(Arc::new(view::untitled_copy(d))));
                }
            }
        }
        // Origins now index the new manifest; nodes it does not hold have none.
        let inos: Vec<Ino> = tree.nodes().map(|n| n.ino).collect();
        for ino in inos {
            tree.get_mut(ino).expect("listed").origin = pushed.origins.get(&ino).copied();
        }
        *self.hidden.write().unwrap() = pushed.hidden;
        {
            let mut snap = self.snapshot.write().unwrap();
            snap.descriptor = pushed.desc;
            snap.manifest = pushed.manifest;
            snap.manifest_bytes = pushed.bytes;
        }
        let notices = self.notices_in(&tree);
        view::refresh_meta_dir(&mut tree, &self.snapshot(), &notices);
        let still_staged = tree
            .nodes()
            .any(|n| matches!(n.kind, Kind::File(Source::Staged(_))));
        // A change made during the push (a remove, a rename) is in the journal only.
        if still_staged || self.changed.load(std::sync::atomic::Ordering::SeqCst) {
            self.rewrite_journal(&tree)
                .map_err(|e| Error::Other(format!("writing the journal: errno {e}")))
        } else {
            w.staging
                .clear()
                .map_err(|e| Error::io("clearing the journal", e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_keep_their_places_around_kept_layers() {
        // Base: 0 a (file), 1 hidden, 2 b (file, deleted now), 3 hidden, 4 c (file).
        // Plan in path order: a (origin 0), c (origin 4), new n.
        let slots = arrange(5, &[1, 3], &[Some(0), Some(4), None]);
        assert_eq!(
            slots,
            [
                Slot::File(0),
                Slot::Kept(1),
                Slot::Kept(3),
                Slot::File(1),
                Slot::File(2)
            ]
        );
        // Everything new (an empty base) is in plan order.
        assert_eq!(
            arrange(0, &[], &[None, None]),
            [Slot::File(0), Slot::File(1)]
        );
        // A stale origin past the end, or claimed twice, goes after the rest.
        assert_eq!(
            arrange(1, &[0], &[Some(0), Some(7)]),
            [Slot::Kept(0), Slot::File(0), Slot::File(1)]
        );
    }
}
