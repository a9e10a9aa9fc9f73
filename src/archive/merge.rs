//! Container image layers applied in order, as the OCI image-layer spec says: later layers
//! replace earlier entries, `.wh.NAME` hides `NAME` of the layers below, `.wh..wh..opq` hides
//! everything the layers below put in its directory. The result is the root filesystem a
//! container would see, listed, without unpacking anything.

use std::collections::BTreeMap;

use super::{Entry, EntryKind};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// An entry of the merged tree and the layer (index) its data comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged {
    pub layer: usize,
    pub entry: Entry,
}

/// What a merge left out, for the mount's notes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Hard links whose target is in no layer at or below theirs.
    pub dangling_links: usize,
}

/// Applies `layers` (bottom first) and returns the merged tree, parents before children,
/// with every parent directory present (implicit ones are `0o755`, owned by root). Hard links
/// become entries of their own that share the target's data (a file's content is what
/// matters to a reader; `stat` shows them as separate inodes).
pub fn merge<L: AsRef<[Entry]>>(layers: &[L]) -> (Vec<Merged>, Skipped) {
    let mut tree: BTreeMap<String, Merged> = BTreeMap::new();
    let mut skipped = Skipped::default();
    for (layer, entries) in layers.iter().enumerate() {
        let entries = entries.as_ref();
        // Whiteouts hide only what the layers below put there, so they apply first.
        for e in entries {
            let (dir, name) = split(&e.path);
            if name == OPAQUE {
                remove_below(&mut tree, dir);
            } else if let Some(hidden) = name.strip_prefix(WHITEOUT).filter(|h| !h.is_empty()) {
                remove_subtree(&mut tree, &join(dir, hidden));
            }
        }
        for e in entries {
            if split(&e.path).1.starts_with(WHITEOUT) {
                continue;
            }
            apply(&mut tree, layer, e, &mut skipped);
        }
    }
    (tree.into_values().collect(), skipped)
}

/// One layer on its own (for the side-by-side view): the same rules, whiteout files shown as
/// the empty files they are.
pub fn single(entries: &[Entry]) -> (Vec<Merged>, Skipped) {
    let mut tree = BTreeMap::new();
    let mut skipped = Skipped::default();
    for e in entries {
        apply(&mut tree, 0, e, &mut skipped);
    }
    (tree.into_values().collect(), skipped)
}

fn apply(tree: &mut BTreeMap<String, Merged>, layer: usize, e: &Entry, skipped: &mut Skipped) {
    let mut merged = Merged {
        layer,
        entry: e.clone(),
    };
    if let EntryKind::Hardlink { target } = &e.kind {
        // A link shares its target's data; a link to a directory or to nothing is dropped.
        match tree.get(target.as_str()) {
            Some(t) if !matches!(t.entry.kind, EntryKind::Dir | EntryKind::Hardlink { .. }) => {
                merged.layer = t.layer;
                merged.entry = Entry {
                    path: e.path.clone(),
                    ..t.entry.clone()
                };
            }
            _ => {
                skipped.dangling_links += 1;
                return;
            }
        }
    }
    ensure_parents(tree, &e.path, layer);
    let is_dir = matches!(merged.entry.kind, EntryKind::Dir);
    match tree.get(&e.path) {
        // A directory over a directory keeps what is in it, with the new attributes.
        Some(old) if is_dir && matches!(old.entry.kind, EntryKind::Dir) => {}
        Some(_) => remove_subtree(tree, &e.path),
        None => {}
    }
    tree.insert(e.path.clone(), merged);
}

/// Makes every ancestor of `path` a directory (replacing a non-directory in the way, as
/// extracting the tar would).
fn ensure_parents(tree: &mut BTreeMap<String, Merged>, path: &str, layer: usize) {
    let mut end = 0;
    while let Some(i) = path[end..].find('/') {
        let dir = &path[..end + i];
        match tree.get(dir) {
            Some(m) if matches!(m.entry.kind, EntryKind::Dir) => {}
            _ => {
                remove_subtree(tree, dir);
                tree.insert(
                    dir.to_string(),
                    Merged {
                        layer,
                        entry: Entry {
                            path: dir.to_string(),
                            kind: EntryKind::Dir,
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                            mtime: 0,
                        },
                    },
                );
            }
        }
        end += i + 1;
    }
}

/// Removes `path` and everything below it.
fn remove_subtree(tree: &mut BTreeMap<String, Merged>, path: &str) {
    tree.remove(path);
    remove_below(tree, path);
}

/// Removes everything below the directory `dir` (`""`: the root), keeping `dir`.
fn remove_below(tree: &mut BTreeMap<String, Merged>, dir: &str) {
    if dir.is_empty() {
        tree.clear();
        return;
    }
    let prefix = format!("{dir}/");
    let doomed: Vec<String> = tree
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        tree.remove(&k);
    }
}

fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File {
                size,
                chunks: vec![],
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            kind: EntryKind::Dir,
            mode: 0o755,
            ..file(path, 0)
        }
    }

    fn paths(m: &[Merged]) -> Vec<(String, usize)> {
        m.iter().map(|m| (m.entry.path.clone(), m.layer)).collect()
    }

    #[test]
    fn later_layers_replace_and_whiteouts_hide() {
        let l0 = vec![
            dir("etc"),
            file("etc/a", 1),
            file("etc/b", 1),
            dir("var"),
            file("var/x", 1),
        ];
        let l1 = vec![file("etc/a", 2), file("etc/.wh.b", 0), file(".wh.var", 0)];
        let (m, _) = merge(&[l0, l1]);
        assert_eq!(
            paths(&m),
            vec![("etc".into(), 0), ("etc/a".into(), 1)],
            "{m:#?}"
        );
    }

    #[test]
    fn opaque_directories_hide_only_lower_layers() {
        let l0 = vec![dir("d"), file("d/old", 1), file("keep", 1)];
        let l1 = vec![dir("d"), file("d/.wh..wh..opq", 0), file("d/new", 1)];
        let (m, _) = merge(&[l0, l1]);
        assert_eq!(
            paths(&m),
            vec![("d".into(), 1), ("d/new".into(), 1), ("keep".into(), 0)]
        );
    }

    #[test]
    fn a_whiteout_does_not_hide_its_own_layer() {
        let l0 = vec![file("a", 1)];
        let l1 = vec![file(".wh.a", 0), file("a", 5)];
        let (m, _) = merge(&[l0, l1]);
        assert_eq!(paths(&m), vec![("a".into(), 1)]);
    }

    #[test]
    fn a_file_replacing_a_directory_removes_its_tree_and_parents_appear() {
        let l0 = vec![dir("x"), file("x/y", 1)];
        let l1 = vec![file("x", 3), file("deep/er/f", 1)];
        let (m, _) = merge(&[l0, l1]);
        assert_eq!(
            paths(&m),
            vec![
                ("deep".into(), 1),
                ("deep/er".into(), 1),
                ("deep/er/f".into(), 1),
                ("x".into(), 1)
            ]
        );
    }

    #[test]
    fn hard_links_share_their_targets_data() {
        let l0 = vec![file("bin/a", 7)];
        let link = Entry {
            kind: EntryKind::Hardlink {
                target: "bin/a".into(),
            },
            ..file("bin/b", 0)
        };
        let dangling = Entry {
            kind: EntryKind::Hardlink {
                target: "nowhere".into(),
            },
            ..file("bin/c", 0)
        };
        let (m, skipped) = merge(&[l0, vec![link, dangling]]);
        let b = m.iter().find(|m| m.entry.path == "bin/b").unwrap();
        assert_eq!(b.layer, 0);
        assert!(matches!(b.entry.kind, EntryKind::File { size: 7, .. }));
        assert_eq!(skipped.dangling_links, 1);
    }

    #[test]
    fn a_whiteout_without_a_name_hides_nothing() {
        let (m, _) = merge(&[vec![file("a", 1)], vec![file(".wh.", 0)]]);
        assert_eq!(paths(&m), vec![("a".into(), 0)]);
    }

    #[test]
    fn a_root_opaque_whiteout_hides_everything_below() {
        let (m, _) = merge(&[vec![file("a", 1)], vec![file(".wh..wh..opq", 0)]]);
        assert!(m.is_empty());
    }
}
