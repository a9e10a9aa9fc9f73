//! What a mount shows: the tree built from a manifest (or from an earlier mount's journal),
//! the layers it does not show, why it may be read-only, and the `.oras/` files.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::staging::{Entry, Journal, Staging};
use super::tree::{empty_dir, AddError, Ino, Kind, LayerFile, Pending, Source, Tree, ROOT};
use crate::manifest::{annotation, media_type, Descriptor, Manifest};
use crate::oras::LayerFilter;

/// What is mounted: one manifest, or an image index with its manifests, resolved once.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The reference as given (`registry/repo:tag`).
    pub reference: String,
    /// The manifest's (or the index's) descriptor.
    pub descriptor: Descriptor,
    pub manifest_bytes: Bytes,
    /// Of an index mounted whole, an empty manifest: what it shows is in `children`.
    pub manifest: Manifest,
    pub config_bytes: Bytes,
    /// The image index `manifest` was chosen from (by platform), if any.
    pub index: Option<Descriptor>,
    /// Of an image index mounted whole (no `--platform`): each child manifest, by the name of
    /// the directory that shows it (see [`child_dir_names`]).
    pub children: Vec<(String, Snapshot)>,
}

/// The directory names of an index's children, as docker buildx names multi-platform output
/// (`linux_amd64`, `linux_arm64_v8`); a child without a platform, or whose name another child
/// also has (buildx's `unknown/unknown` attestations), is named by its digest (`sha256-<hex>`).
pub fn child_dir_names(children: &[Descriptor]) -> Vec<String> {
    let by_platform: Vec<Option<String>> = children
        .iter()
        .map(|c| {
            c.platform
                .as_ref()
                .and_then(crate::manifest::Platform::of)
                .map(|p| p.dir_name())
                .filter(|n| !n.is_empty() && n != "." && n != ".." && n != ".oras")
        })
        .collect();
    children
        .iter()
        .zip(&by_platform)
        .map(|(c, name)| match name {
            Some(n) if by_platform.iter().filter(|o| o.as_ref() == Some(n)).count() == 1 => {
                n.clone()
            }
            _ => format!("{}-{}", c.digest.algorithm(), c.digest.hex()),
        })
        .collect()
}

/// The tree of a mount and what it leaves out.
pub struct View {
    pub tree: Tree,
    /// Indexes of the manifest's layers not shown; a sync keeps them where they are.
    pub hidden: Vec<usize>,
    /// What the user should know (one sentence each).
    pub notices: Vec<String>,
}

pub fn file_perm(read_only: bool) -> u16 {
    if read_only {
        0o444
    } else {
        0o644
    }
}

pub fn dir_perm(read_only: bool) -> u16 {
    if read_only {
        0o555
    } else {
        0o755
    }
}

/// Config media types of container images: their layers are a root filesystem whose digests
/// the config lists (`diff_ids`), so adding or dropping a layer would break the image.
const IMAGE_CONFIGS: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Layer media types of root filesystems (tar diffs), as images use them.
fn is_rootfs_layer(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.")
}

/// Why a mount must not change what it shows, if it must not: a mount shows files, and a
/// push of files would destroy what it does not understand.
pub fn read_only_reason(snapshot: &Snapshot) -> Option<String> {
    if !snapshot.children.is_empty() {
        return Some(format!(
            "mounted read-only: {} is an image index, shown as one directory per manifest \
             (mount with --platform to see one of them alone)",
            snapshot.reference
        ));
    }
    if let Some(index) = &snapshot.index {
        return Some(format!(
            "mounted read-only: {} is an image index ({}); this is its manifest {}, and a push \
             would replace the whole index with it",
            snapshot.reference, index.digest, snapshot.descriptor.digest
        ));
    }
    manifest_read_only_reason(&snapshot.manifest)
}

fn manifest_read_only_reason(manifest: &Manifest) -> Option<String> {
    if IMAGE_CONFIGS.contains(&manifest.config.media_type.as_str()) {
        return Some(format!(
            "mounted read-only: this is a container image (config {}), shown as its root \
             filesystem; a push of files would break it",
            manifest.config.media_type
        ));
    }
    if manifest.media_type.as_deref() == Some(media_type::DOCKER_MANIFEST) {
        return Some(
            "mounted read-only: a Docker image manifest, which a push of files would break".into(),
        );
    }
    let untitled_rootfs = manifest
        .layers
        .iter()
        .filter(|l| l.title().is_none() && is_rootfs_layer(&l.media_type))
        .count();
    if untitled_rootfs > 0 {
        return Some(format!(
            "mounted read-only: {untitled_rootfs} layer(s) are filesystem layers without a title \
             (as in a container image), which the mount cannot show as files"
        ));
    }
    None
}

/// The layers of a container image's root filesystem (indexes into the manifest's layers),
/// if the manifest is an image: an image config, a Docker manifest, or untitled filesystem
/// layers.
pub fn image_layers(manifest: &Manifest) -> Option<Vec<usize>> {
    let rootfs: Vec<usize> = (0..manifest.layers.len())
        .filter(|&i| is_rootfs_layer(&manifest.layers[i].media_type))
        .collect();
    let image = IMAGE_CONFIGS.contains(&manifest.config.media_type.as_str())
        || manifest.media_type.as_deref() == Some(media_type::DOCKER_MANIFEST)
        || rootfs.iter().any(|&i| manifest.layers[i].title().is_none());
    image.then_some(rootfs)
}

/// An image's view: its root filesystem, the layers merged on first access (or, `apart`, one
/// directory per layer, `0`, `1`, ...). Read-only; other layers are listed as hidden.
fn build_image(snapshot: &Snapshot, rootfs: &[usize], apart: bool) -> View {
    let manifest = &snapshot.manifest;
    let mut tree = Tree::new(created_time(manifest), dir_perm(true));
    let hidden: Vec<usize> = (0..manifest.layers.len())
        .filter(|i| !rootfs.contains(i))
        .collect();
    let layers: Vec<Descriptor> = rootfs.iter().map(|&i| manifest.layers[i].clone()).collect();
    if apart {
        for (i, layer) in layers.into_iter().enumerate() {
            let kind = Kind::Dir {
                children: Default::default(),
                pending: Some(Box::new(Pending::Rootfs(layer))),
            };
            tree.add_child(
                ROOT,
                OsStr::new(&i.to_string()),
                kind,
                0,
                0o555,
                tree.default_mtime,
            )
            .expect("fresh root");
        }
    } else if let Some(Kind::Dir { pending, .. }) = tree.get_mut(ROOT).map(|n| &mut n.kind) {
        *pending = Some(Box::new(Pending::Image(layers)));
    }
    let mut notices = Vec::new();
    if !hidden.is_empty() {
        notices.push(format!(
            "{} layer(s) of this image are not filesystem layers and are not shown",
            hidden.len()
        ));
    }
    View {
        tree,
        hidden,
        notices,
    }
}

/// Builds the view of a manifest. Layers the filter leaves out, untitled layers, and layers with
/// unsafe or clashing titles are not shown (and not fatal: the rest stays readable).
pub fn build(snapshot: &Snapshot, filter: &LayerFilter, read_only: bool, apart: bool) -> View {
    if !snapshot.children.is_empty() {
        return build_index(snapshot, filter, apart);
    }
    if let Some(rootfs) = image_layers(&snapshot.manifest) {
        return build_image(snapshot, &rootfs, apart);
    }
    let ro = read_only;
    let mut tree = Tree::new(created_time(&snapshot.manifest), dir_perm(ro));
    let mut hidden = Vec::new();
    let mut notices = Vec::new();
    let (mut filtered, mut untitled) = (Vec::new(), 0);
    for (i, layer) in snapshot.manifest.layers.iter().enumerate() {
        let Some(title) = layer.title() else {
            untitled += 1;
            hidden.push(i);
            continue;
        };
        if !filter.allows(layer) {
            filtered.push(layer.media_type.clone());
            hidden.push(i);
            continue;
        }
        let title = title.trim_end_matches('/').to_string();
        let added = if layer.is_directory() {
            add_layer_dir(&mut tree, &title, layer, ro)
        } else {
            tree.add_path(
                &title,
                Kind::File(Source::Blob(Arc::new(untitled_copy(layer)))),
                layer.size,
                file_perm(ro),
                dir_perm(ro),
            )
        };
        let why = match added {
            Ok(ino) => {
                tree.get_mut(ino).expect("just added").origin = Some(i);
                continue;
            }
            Err(AddError::Unsafe) => "an unsafe title",
            Err(AddError::Conflict) => "a title that clashes with another layer",
        };
        hidden.push(i);
        tracing::warn!("skipping layer {}: {why} {title:?}", layer.digest);
        notices.push(format!(
            "layer {} is not shown: {why} {title:?}; a sync keeps it",
            layer.digest
        ));
    }
    if !filtered.is_empty() {
        let n = filtered.len();
        filtered.sort();
        filtered.dedup();
        notices.push(format!(
            "{n} layer(s) of other media types ({}) are hidden by the media-type filter; mount \
             with -t TYPE or -a to see them (a sync keeps them)",
            filtered.join(", ")
        ));
    }
    if untitled > 0 {
        notices.push(format!(
            "{untitled} layer(s) without a title are not shown (a sync keeps them)"
        ));
    }
    View {
        tree,
        hidden,
        notices,
    }
}

/// An image index's view: one read-only directory per child manifest, showing what a mount of
/// that child shows (its files, or an image's root filesystem). Nothing is hidden from a sync:
/// an index mount never syncs.
fn build_index(snapshot: &Snapshot, filter: &LayerFilter, apart: bool) -> View {
    let mut tree = Tree::new(created_time(&snapshot.manifest), dir_perm(true));
    let mut notices = Vec::new();
    for (name, child) in &snapshot.children {
        let mtime = created_time(&child.manifest);
        let Ok(dir) = tree.add_child(
            ROOT,
            OsStr::new(name),
            empty_dir(),
            0,
            dir_perm(true),
            mtime,
        ) else {
            notices.push(format!(
                "manifest {} is not shown: the name {name:?} is taken",
                child.descriptor.digest
            ));
            continue;
        };
        let shown = show_in(&mut tree, dir, child, filter, apart);
        notices.extend(shown.iter().map(|n| format!("{name}: {n}")));
    }
    View {
        tree,
        hidden: Vec::new(),
        notices,
    }
}

/// Shows what a read-only mount of `snapshot` shows below the (empty) directory `dir`, dated
/// as the manifest: an index's child, a repository mount's tag. Returns the view's notices.
pub fn show_in(
    tree: &mut Tree,
    dir: Ino,
    snapshot: &Snapshot,
    filter: &LayerFilter,
    apart: bool,
) -> Vec<String> {
    let view = build(snapshot, filter, true, apart);
    graft(tree, dir, &view.tree, ROOT);
    if let Some(n) = tree.get_mut(dir) {
        n.mtime = created_time(&snapshot.manifest);
    }
    view.notices
}

/// Copies the nodes below `from` in `src` (and `from`'s pending contents) below `to`.
fn graft(tree: &mut Tree, to: Ino, src: &Tree, from: Ino) {
    if let (Some(Kind::Dir { pending: p, .. }), Some(Kind::Dir { pending, .. })) = (
        src.get(from).map(|n| &n.kind),
        tree.get_mut(to).map(|n| &mut n.kind),
    ) {
        pending.clone_from(p);
    }
    for n in src.children(from) {
        let kind = match &n.kind {
            Kind::Dir { pending, .. } => Kind::Dir {
                children: Default::default(),
                pending: pending.clone(),
            },
            k => k.clone(),
        };
        let Ok(ino) = tree.add_child(to, &n.name, kind, n.size, n.perm, n.mtime) else {
            continue;
        };
        let copy = tree.get_mut(ino).expect("just added");
        copy.layer.clone_from(&n.layer);
        copy.frozen = n.frozen;
        copy.owner = n.owner;
        if n.is_dir() {
            graft(tree, ino, src, n.ino);
        }
    }
}

/// A layer's descriptor without its title: the title lives in the tree, so a rename must not
/// keep the old one.
pub fn untitled_copy(layer: &Descriptor) -> Descriptor {
    let mut plain = layer.clone();
    if let Some(a) = plain.annotations.as_mut() {
        a.remove(annotation::TITLE);
    }
    plain
}

/// Rebuilds the view an earlier mount left in its journal.
pub fn from_journal(snapshot: &Snapshot, journal: &Journal, staging: &Staging) -> View {
    let mut tree = Tree::new(created_time(&snapshot.manifest), dir_perm(false));
    let mut notices = Vec::new();
    for e in &journal.entries {
        let r = match e {
            Entry::Blob {
                path,
                descriptor,
                mode,
                origin,
            } => tree
                .add_path(
                    path,
                    Kind::File(Source::Blob(Arc::new(descriptor.clone()))),
                    descriptor.size,
                    *mode,
                    dir_perm(false),
                )
                .map(|ino| tree.get_mut(ino).expect("just added").origin = *origin),
            Entry::Staged {
                path,
                file,
                mode,
                origin,
                writing,
            } => {
                let p = staging.path_of(file);
                let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                let r = tree.add_path(
                    path,
                    Kind::File(Source::Staged(p)),
                    size,
                    *mode,
                    dir_perm(false),
                );
                if let Ok(ino) = r {
                    let n = tree.get_mut(ino).expect("just added");
                    n.origin = *origin;
                    n.incomplete = *writing;
                    if *writing {
                        notices.push(incomplete_notice(path));
                    }
                }
                r.map(|_| ())
            }
            Entry::Dir { path, mode } => {
                match tree.add_path(path, empty_dir(), 0, *mode, dir_perm(false)) {
                    Err(AddError::Conflict) => Ok(()),
                    r => r.map(|_| ()),
                }
            }
            Entry::Layer {
                path,
                descriptor,
                origin,
            } => add_layer_dir(&mut tree, path, descriptor, false)
                .map(|ino| tree.get_mut(ino).expect("just added").origin = *origin),
        };
        if let Err(err) = r {
            tracing::warn!("journal entry {e:?} could not be restored: {err:?}");
        }
    }
    View {
        tree,
        hidden: journal.hidden.clone().unwrap_or_default(),
        notices,
    }
}

pub fn incomplete_notice(path: &str) -> String {
    format!(
        "{path} was still open for writing when an earlier mount ended, so it may be \
         incomplete: it is held back from pushes until it is written again (check it, then \
         `touch` it to push it as it is)"
    )
}

/// The journal entry of one node (`None` for what the journal does not keep).
pub fn entry_of(tree: &Tree, ino: Ino, writing: bool) -> Option<Entry> {
    let n = tree.get(ino)?;
    if n.internal || n.frozen {
        return None;
    }
    let path = tree.path_of(ino);
    Some(match (&n.kind, &n.layer) {
        (Kind::Dir { .. }, Some(d)) => Entry::Layer {
            path,
            descriptor: d.clone(),
            origin: n.origin,
        },
        (Kind::Dir { .. }, None) => Entry::Dir { path, mode: n.perm },
        (Kind::File(Source::Blob(d)), _) => Entry::Blob {
            path,
            descriptor: d.as_ref().clone(),
            mode: n.perm,
            origin: n.origin,
        },
        (Kind::File(Source::Staged(p)), _) => Entry::Staged {
            path,
            file: p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            mode: n.perm,
            origin: n.origin,
            writing: writing || n.incomplete,
        },
        _ => return None,
    })
}

/// The journal's picture of the whole tree (parents before children).
pub fn journal_entries(tree: &Tree, writing: &dyn Fn(Ino) -> bool) -> Vec<Entry> {
    fn walk(tree: &Tree, ino: Ino, writing: &dyn Fn(Ino) -> bool, out: &mut Vec<Entry>) {
        for n in tree.children(ino) {
            out.extend(entry_of(tree, n.ino, writing(n.ino)));
            if n.is_dir() && n.layer.is_none() && !n.internal {
                walk(tree, n.ino, writing, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(tree, ROOT, writing, &mut out);
    out
}

pub fn add_layer_dir(
    tree: &mut Tree,
    path: &str,
    layer: &Descriptor,
    ro: bool,
) -> Result<Ino, AddError> {
    let kind = Kind::Dir {
        children: Default::default(),
        pending: Some(Box::new(Pending::Layer(layer.clone()))),
    };
    let ino = tree.add_path(path, kind, 0, dir_perm(ro), dir_perm(ro))?;
    tree.get_mut(ino).expect("just added").layer = Some(layer.clone());
    Ok(ino)
}

fn created_time(manifest: &Manifest) -> SystemTime {
    manifest
        .annotation(annotation::CREATED)
        .and_then(|c| humantime::parse_rfc3339_weak(c).ok())
        .unwrap_or_else(SystemTime::now)
}

/// `.oras/`: what is mounted, for scripts.
pub fn add_meta_dir(tree: &mut Tree, snapshot: &Snapshot, notices: &[String]) -> crate::Result<()> {
    let meta = tree
        .add_child(
            ROOT,
            OsStr::new(".oras"),
            empty_dir(),
            0,
            0o555,
            tree.default_mtime,
        )
        .map_err(|_| {
            crate::Error::Other("a layer is titled .oras, which the mount reserves".into())
        })?;
    tree.get_mut(meta).expect("just added").internal = true;
    for (name, data) in meta_files(snapshot, notices) {
        let len = data.len() as u64;
        let ino = tree
            .add_child(
                meta,
                OsStr::new(name),
                Kind::File(Source::Inline(data)),
                len,
                0o444,
                tree.default_mtime,
            )
            .expect("fresh directory");
        tree.get_mut(ino).expect("just added").internal = true;
    }
    Ok(())
}

fn meta_files(snapshot: &Snapshot, notices: &[String]) -> [(&'static str, Bytes); 4] {
    let notes: String = notices.iter().map(|n| format!("{n}\n")).collect();
    [
        ("manifest.json", snapshot.manifest_bytes.clone()),
        ("config.json", snapshot.config_bytes.clone()),
        (
            "digest",
            Bytes::from(format!("{}\n", snapshot.descriptor.digest)),
        ),
        ("notes", Bytes::from(notes)),
    ]
}

/// After a push (or a change of notices), the `.oras/` files describe the new state. Returns
/// the files changed: a read-only mount opens them with the kernel's cache kept, which must
/// be told (see `repository`).
pub fn refresh_meta_dir(tree: &mut Tree, snapshot: &Snapshot, notices: &[String]) -> Vec<Ino> {
    let mut changed = Vec::new();
    let Some(meta) = tree.lookup(ROOT, OsStr::new(".oras")).map(|n| n.ino) else {
        return changed;
    };
    for (name, data) in meta_files(snapshot, notices) {
        let Some(ino) = tree.lookup(meta, OsStr::new(name)).map(|n| n.ino) else {
            continue;
        };
        let n = tree.get_mut(ino).expect("looked up");
        if n.size == data.len() as u64
            && matches!(&n.kind, Kind::File(Source::Inline(b)) if *b == data)
        {
            continue;
        }
        n.size = data.len() as u64;
        n.kind = Kind::File(Source::Inline(data));
        n.mtime = SystemTime::now();
        changed.push(ino);
    }
    changed
}

/// Adds a layer's entries (parents before children, paths relative to `parent`) below
/// `parent`, read-only. `owners`: show the tar's owners (an image), else the mounting user's.
/// Returns how many entries were left out (devices, FIFOs, names taken).
pub fn add_entries(
    tree: &mut Tree,
    parent: Ino,
    entries: Vec<super::filesystem::LayerEntry>,
    owners: bool,
) -> usize {
    use crate::archive::EntryKind;
    let mut dirs: HashMap<String, Ino> = HashMap::from([(String::new(), parent)]);
    let mut skipped = 0;
    for (e, layer, stream) in entries {
        let (dir, name) = match e.path.rfind('/') {
            Some(i) => (&e.path[..i], &e.path[i + 1..]),
            None => ("", e.path.as_str()),
        };
        let Some(&dir_ino) = dirs.get(dir) else {
            skipped += 1;
            continue;
        };
        let mtime = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(e.mtime.max(0) as u64);
        // An image's modes as they are (the mount is nosuid); an artifact's as `pull` would
        // unpack them: permission bits only.
        let perm = (e.mode & if owners { 0o7777 } else { 0o777 }) as u16;
        let (kind, size) = match e.kind {
            EntryKind::Dir => (empty_dir(), 0),
            EntryKind::File { size, chunks } => (
                Kind::File(Source::Layer(Arc::new(LayerFile {
                    layer,
                    chunks,
                    stream,
                }))),
                size,
            ),
            EntryKind::Symlink { target } => {
                let len = target.len() as u64;
                (Kind::Symlink(target.into()), len)
            }
            EntryKind::Hardlink { .. } | EntryKind::Special => {
                skipped += 1;
                continue;
            }
        };
        let is_dir = matches!(kind, Kind::Dir { .. });
        let Ok(ino) = tree.add_child(dir_ino, OsStr::new(name), kind, size, perm, mtime) else {
            skipped += 1;
            continue;
        };
        let n = tree.get_mut(ino).expect("just added");
        n.frozen = true;
        if owners {
            n.owner = Some((e.uid, e.gid));
        }
        if is_dir {
            dirs.insert(e.path, ino);
        }
    }
    skipped
}

/// Mirrors an unpacked directory on disk into the tree below `parent`.
pub fn add_local_tree(tree: &mut Tree, parent: Ino, dir: &Path, read_only: bool) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let mtime = meta.modified().unwrap_or(tree.default_mtime);
        let mut perm = (meta.permissions().mode() & 0o777) as u16;
        if read_only {
            perm &= !0o222;
        }
        let name = e.file_name();
        let added = if meta.is_dir() {
            if let Ok(ino) = tree.add_child(parent, &name, empty_dir(), 0, perm, mtime) {
                add_local_tree(tree, ino, &e.path(), read_only);
                Ok(ino)
            } else {
                continue;
            }
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            let len = target.as_os_str().len() as u64;
            tree.add_child(parent, &name, Kind::Symlink(target), len, 0o777, mtime)
        } else if meta.is_file() {
            tree.add_child(
                parent,
                &name,
                Kind::File(Source::Unpacked(e.path())),
                meta.len(),
                perm,
                mtime,
            )
        } else {
            continue;
        };
        // Inside a directory layer: read-only even on a writable mount.
        if let Ok(ino) = added {
            tree.get_mut(ino).expect("just added").frozen = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn layer(title: Option<&str>, media_type: &str) -> Descriptor {
        let mut d = Descriptor::of(media_type.to_string(), title.unwrap_or("x").as_bytes());
        if let Some(t) = title {
            d.set_annotation(annotation::TITLE, t);
        }
        d
    }

    fn snapshot(config: &str, layers: Vec<Descriptor>) -> Snapshot {
        let manifest = Manifest::new(Descriptor::of(config.to_string(), b"{}"), layers);
        let bytes = Bytes::from(manifest.to_bytes());
        Snapshot {
            reference: "r:t".into(),
            descriptor: Descriptor::of(media_type::OCI_MANIFEST.to_string(), &bytes),
            manifest_bytes: bytes,
            manifest,
            config_bytes: Bytes::from_static(b"{}"),
            index: None,
            children: Vec::new(),
        }
    }

    #[test]
    fn hidden_layers_are_recorded_with_their_reasons() {
        let s = snapshot(
            media_type::EMPTY,
            vec![
                layer(Some("a.txt"), media_type::DEFAULT_LAYER),
                layer(Some("b.dat"), "application/vnd.example.data"),
                layer(None, "application/vnd.example.sig"),
                layer(Some("../x"), media_type::DEFAULT_LAYER),
                layer(Some("c.txt"), media_type::DEFAULT_LAYER),
            ],
        );
        let v = build(&s, &LayerFilter::default(), false, false);
        assert_eq!(v.hidden, [1, 2, 3]);
        let origins: Vec<_> = v
            .tree
            .children(ROOT)
            .iter()
            .map(|n| (n.name.clone(), n.origin))
            .collect();
        assert_eq!(
            origins,
            [("a.txt".into(), Some(0)), ("c.txt".into(), Some(4))]
        );
        let notes = v.notices.join("\n");
        assert!(
            notes.contains(
                "1 layer(s) of other media types (application/vnd.example.data) are hidden"
            ),
            "{notes}"
        );
        assert!(notes.contains("1 layer(s) without a title"), "{notes}");
        assert!(notes.contains("unsafe title \"../x\""), "{notes}");
        assert!(read_only_reason(&s).is_none());
    }

    #[test]
    fn index_children_are_named_by_platform_else_by_digest() {
        let child = |data: &[u8], platform: Option<serde_json::Value>| {
            let mut d = Descriptor::of(media_type::OCI_MANIFEST, data);
            d.platform = platform;
            d
        };
        let p = |os: &str, arch: &str, variant: Option<&str>| {
            let mut v = serde_json::json!({"os": os, "architecture": arch});
            if let Some(variant) = variant {
                v["variant"] = variant.into();
            }
            Some(v)
        };
        let children = [
            child(b"a", p("linux", "amd64", None)),
            child(b"b", p("linux", "arm64", Some("v8"))),
            child(b"c", None),
            child(b"d", p("unknown", "unknown", None)),
            child(b"e", p("unknown", "unknown", None)),
        ];
        let names = child_dir_names(&children);
        assert_eq!(names[..2], ["linux_amd64", "linux_arm64_v8"]);
        for (name, c) in names[2..].iter().zip(&children[2..]) {
            assert_eq!(name, &format!("sha256-{}", c.digest.hex()));
        }
    }

    #[test]
    fn an_index_shows_each_child_in_its_own_read_only_directory() {
        let mut index = snapshot(media_type::EMPTY, Vec::new());
        let artifact = snapshot(
            media_type::EMPTY,
            vec![layer(Some("a.txt"), media_type::DEFAULT_LAYER)],
        );
        let image = snapshot(
            "application/vnd.oci.image.config.v1+json",
            vec![layer(None, "application/vnd.oci.image.layer.v1.tar+gzip")],
        );
        index.children = vec![("linux_amd64".into(), artifact), ("img".into(), image)];
        assert!(read_only_reason(&index).unwrap().contains("image index"));
        let v = build(&index, &LayerFilter::default(), false, false);
        let top: Vec<_> = v
            .tree
            .children(ROOT)
            .iter()
            .map(|n| n.name.clone())
            .collect();
        assert_eq!(top, ["img", "linux_amd64"]);
        let dir = v.tree.lookup(ROOT, OsStr::new("linux_amd64")).unwrap();
        assert_eq!(dir.perm, 0o555);
        let file = v.tree.lookup(dir.ino, OsStr::new("a.txt")).unwrap();
        assert_eq!(file.perm, 0o444);
        let img = v.tree.lookup(ROOT, OsStr::new("img")).unwrap();
        assert!(matches!(
            &img.kind,
            Kind::Dir { pending: Some(p), .. } if matches!(**p, Pending::Image(_))
        ));
    }

    #[test]
    fn images_are_read_only() {
        let img = snapshot(
            "application/vnd.oci.image.config.v1+json",
            vec![layer(None, "application/vnd.oci.image.layer.v1.tar+gzip")],
        );
        assert!(read_only_reason(&img).unwrap().contains("container image"));
        let untitled_rootfs = snapshot(
            media_type::EMPTY,
            vec![layer(
                None,
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            )],
        );
        assert!(read_only_reason(&untitled_rootfs).is_some());
        let _ = Digest::of(b"");
    }
}
