//! docs/SEMANTICS.md, row by row, on the filesystem core itself: no kernel mount, no registry.
//! `OrasFs` runs over `content::testing::TestTarget`, which counts what each call fetches and
//! can fail or lie. Runs in plain `cargo test`.

mod fs_harness;

use std::ffi::OsStr;
use std::time::Duration;

use fs_harness::*;
use oras_fs::content::testing::Op;
use oras_fs::content::Target;
use oras_fs::fs::cache::BLOCK;
use oras_fs::fs::filesystem::{FileKind, OrasFs, RenameHow, SetAttr, SyncOptions};
use oras_fs::fs::tree::ROOT;

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn ls_and_stat_fetch_nothing() {
    let h = Harness::new(&[("a.txt", b"a\n".to_vec()), ("d/b.bin", vec![7; 300_000])]);
    let fs = h.mount(true).await;
    let names: Vec<_> = fs
        .readdir(ROOT)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.2)
        .collect();
    assert_eq!(names, [".oras", "a.txt", "d"]);
    let d = fs.lookup(ROOT, OsStr::new("d")).await.unwrap();
    assert_eq!(d.kind, FileKind::Dir);
    let b = fs.lookup(d.ino, OsStr::new("b.bin")).await.unwrap();
    assert_eq!(b.size, 300_000);
    assert_eq!(fs.getattr(b.ino).unwrap().size, 300_000);
    let c = h.target.counts();
    assert_eq!(c.calls(Op::Fetch) + c.calls(Op::FetchRange), 0, "{c:?}");
    assert_eq!(
        fs.lookup(ROOT, OsStr::new("nope")).await.unwrap_err(),
        libc::ENOENT
    );
}

#[tokio::test]
async fn a_small_random_read_of_a_large_file_fetches_one_block() {
    let (big, h, fs, fh) = one_open_file(16 * MIB).await;
    let at = 9 * MIB as u64 + 12_345;
    let got = fs.read(fh, at, 4096).await.unwrap();
    assert_eq!(&got[..], &big[at as usize..at as usize + 4096]);
    assert_eq!(h.target.counts().bytes_served, BLOCK);
    assert_eq!(h.target.counts().calls(Op::FetchRange), 1);
    // Read again: from the cache.
    fs.read(fh, at, 4096).await.unwrap();
    assert_eq!(h.target.counts().calls(Op::FetchRange), 1);
}

#[tokio::test]
async fn two_readers_of_one_block_share_one_fetch() {
    let big = pattern(8 * MIB);
    let h = Harness::new(&[("big.bin", big.clone())]);
    let fs = h.mount(true).await;
    let ino = path_ino(&fs, "big.bin").await;
    h.target.delay_fetches(Some(Duration::from_millis(200)));
    let (a, b) = (
        fs.open(ino, false, false).await.unwrap(),
        fs.open(ino, false, false).await.unwrap(),
    );
    let at = 5 * MIB as u64;
    let (x, y) = tokio::join!(fs.read(a.fh, at, 4096), fs.read(b.fh, at + 8192, 4096));
    assert_eq!(&x.unwrap()[..], &big[5 * MIB..5 * MIB + 4096]);
    assert_eq!(&y.unwrap()[..], &big[5 * MIB + 8192..5 * MIB + 12288]);
    assert_eq!(h.target.counts().calls(Op::FetchRange), 1);
}

#[tokio::test]
async fn a_corrupt_blob_reads_as_eio_and_is_not_cached() {
    let h = Harness::new(&[("small.txt", b"small and precious\n".to_vec())]);
    let fs = h.mount(true).await;
    let ino = path_ino(&fs, "small.txt").await;
    let digest = h.layer_digest("small.txt");
    h.target.corrupt(&digest);
    let o = fs.open(ino, false, false).await.unwrap();
    assert_eq!(fs.read(o.fh, 0, 100).await.unwrap_err(), libc::EIO);
    assert_eq!(fs.read(o.fh, 0, 100).await.unwrap_err(), libc::EIO);
    assert!(!h
        .cache_dir()
        .join("blobs/sha256")
        .join(digest.hex())
        .exists());
}

#[tokio::test]
async fn opening_for_writing_and_truncating_fetch_nothing() {
    let h = Harness::new(&[
        ("a.bin", pattern(6 * MIB)),
        ("b.bin", pattern(100)),
        ("c.bin", pattern(1000)),
    ]);
    let fs = h.mount(false).await;
    let a = path_ino(&fs, "a.bin").await;
    let o = fs.open(a, true, false).await.unwrap();
    fs.release(o.fh);
    let o = fs.open(a, true, true).await.unwrap();
    fs.write(o.fh, 0, b"new").await.unwrap();
    fs.release(o.fh);
    let b = path_ino(&fs, "b.bin").await;
    let change = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    assert_eq!(fs.setattr(b, change).await.unwrap().size, 0);
    assert_eq!(h.target.counts().bytes_served, 0);
    assert_eq!(read_all(&fs, "a.bin").await, b"new");
    // A write into an untouched file copies it first (and only then).
    let c = path_ino(&fs, "c.bin").await;
    let o = fs.open(c, true, false).await.unwrap();
    assert_eq!(h.target.counts().bytes_served, 0);
    fs.write(o.fh, 10, b"XY").await.unwrap();
    fs.release(o.fh);
    assert_eq!(h.target.counts().bytes_served, 1000);
    let mut want = pattern(1000);
    want[10..12].copy_from_slice(b"XY");
    assert_eq!(read_all(&fs, "c.bin").await, want);
}

#[tokio::test]
async fn a_renamed_unchanged_file_uploads_nothing() {
    let h = Harness::new(&[("a.txt", b"a\n".to_vec())]);
    let fs = h.mount(false).await;
    fs.rename(
        ROOT,
        OsStr::new("a.txt"),
        ROOT,
        OsStr::new("b.txt"),
        RenameHow::default(),
    )
    .await
    .unwrap();
    h.target.reset_counts();
    let pushed = fs.sync(&SyncOptions::default()).await.unwrap().unwrap();
    assert_eq!(h.target.counts().calls(Op::Push), 0);
    assert_eq!(h.titles(&pushed), ["b.txt"]);
}

#[tokio::test]
async fn a_moved_tag_is_refused_and_the_changes_stay() {
    let h = Harness::new(&[("a.txt", b"a\n".to_vec())]);
    let fs = h.mount(false).await;
    let (_, fh) = fs.create(ROOT, OsStr::new("new.txt"), 0o644).unwrap();
    fs.write(fh, 0, b"mine\n").await.unwrap();
    fs.release(fh);
    h.retag_elsewhere();
    let err = fs.sync(&SyncOptions::default()).await.unwrap_err();
    assert!(
        err.to_string().contains("moved since it was mounted"),
        "{err}"
    );
    assert!(fs.is_dirty());
    assert_eq!(fs.pending_changes(), ["+ new.txt"]);
    let forced = SyncOptions {
        force: true,
        ..Default::default()
    };
    let pushed = fs.sync(&forced).await.unwrap().unwrap();
    assert_eq!(h.titles(&pushed), ["a.txt", "new.txt"]);
}

#[tokio::test]
async fn the_journal_is_restored_by_the_next_mount() {
    let h = Harness::new(&[("a.txt", b"a\n".to_vec()), ("gone.txt", b"g\n".to_vec())]);
    {
        let fs = h.mount(false).await;
        let (_, fh) = fs.create(ROOT, OsStr::new("new.txt"), 0o640).unwrap();
        fs.write(fh, 0, b"kept\n").await.unwrap();
        fs.release(fh);
        fs.mkdir(ROOT, OsStr::new("d"), 0o755).unwrap();
        fs.rename(
            ROOT,
            OsStr::new("a.txt"),
            ROOT,
            OsStr::new("d"),
            RenameHow::default(),
        )
        .await
        .unwrap_err();
        fs.unlink(ROOT, OsStr::new("gone.txt")).await.unwrap();
        // Dropped without a sync: as after kill -9.
    }
    let fs = h.mount(false).await;
    assert!(fs.is_dirty());
    assert_eq!(read_all(&fs, "new.txt").await, b"kept\n");
    assert_eq!(
        fs.getattr(path_ino(&fs, "new.txt").await).unwrap().perm,
        0o640
    );
    assert_eq!(path_ino_err(&fs, "gone.txt").await, libc::ENOENT);
    let pushed = fs.sync(&SyncOptions::default()).await.unwrap().unwrap();
    assert_eq!(h.titles(&pushed), ["a.txt", "new.txt"]);
}

#[tokio::test]
async fn every_errno_in_the_table() {
    let h = Harness::new(&[("a.txt", b"a\n".to_vec()), ("d/x.txt", b"x\n".to_vec())]);
    let ro = h.mount(true).await;
    assert_eq!(
        ro.create(ROOT, OsStr::new("n"), 0o644).unwrap_err(),
        libc::EROFS
    );
    let a = path_ino(&ro, "a.txt").await;
    assert_eq!(ro.open(a, true, false).await.unwrap_err(), libc::EROFS);
    drop(ro);

    let fs = h.mount(false).await;
    let a = path_ino(&fs, "a.txt").await;
    let d = path_ino(&fs, "d").await;
    let name = |n: &str| OsStr::new(n).to_os_string();
    assert_eq!(
        fs.create(ROOT, &name("a.txt"), 0o644).unwrap_err(),
        libc::EEXIST
    );
    assert_eq!(
        fs.create(ROOT, &name(&"n".repeat(256)), 0o644).unwrap_err(),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        fs.create(ROOT, &name(".oras"), 0o644).unwrap_err(),
        libc::EPERM
    );
    assert_eq!(fs.mkdir(ROOT, &name("d"), 0o755).unwrap_err(), libc::EEXIST);
    assert_eq!(fs.unlink(ROOT, &name("d")).await.unwrap_err(), libc::EISDIR);
    assert_eq!(
        fs.rmdir(ROOT, &name("a.txt")).await.unwrap_err(),
        libc::ENOTDIR
    );
    assert_eq!(
        fs.rmdir(ROOT, &name("d")).await.unwrap_err(),
        libc::ENOTEMPTY
    );
    assert_eq!(fs.open(d, false, false).await.unwrap_err(), libc::EISDIR);
    let how = RenameHow::default();
    assert_eq!(
        fs.rename(ROOT, &name("d"), d, &name("inside"), how)
            .await
            .unwrap_err(),
        libc::EINVAL
    );
    let exchange = RenameHow {
        exchange: true,
        ..Default::default()
    };
    assert_eq!(
        fs.rename(ROOT, &name("a.txt"), d, &name("x.txt"), exchange)
            .await
            .unwrap_err(),
        libc::EINVAL
    );
    let noreplace = RenameHow {
        noreplace: true,
        ..Default::default()
    };
    assert_eq!(
        fs.rename(ROOT, &name("a.txt"), d, &name("x.txt"), noreplace)
            .await
            .unwrap_err(),
        libc::EEXIST
    );
    assert_eq!(
        fs.rename(ROOT, &name("a.txt"), ROOT, &name("d"), how)
            .await
            .unwrap_err(),
        libc::EISDIR
    );
    assert_eq!(
        fs.rename(ROOT, &name("d"), ROOT, &name("a.txt"), how)
            .await
            .unwrap_err(),
        libc::ENOTDIR
    );
    let chown = SetAttr {
        uid: Some(fs.getattr(a).unwrap().uid + 1),
        ..Default::default()
    };
    assert_eq!(fs.setattr(a, chown).await.unwrap_err(), libc::EPERM);
    assert_eq!(fs.unsupported_node(), libc::EPERM);
    let r = fs.open(a, false, false).await.unwrap();
    assert_eq!(fs.write(r.fh, 0, b"x").await.unwrap_err(), libc::EBADF);
    let meta = path_ino(&fs, ".oras/digest").await;
    assert_eq!(fs.open(meta, true, false).await.unwrap_err(), libc::EROFS);
    assert_eq!(fs.readlink(a).unwrap_err(), libc::EINVAL);
    assert_eq!(fs.read(999_999, 0, 1).await.unwrap_err(), libc::EBADF);
}

#[tokio::test]
async fn a_sync_keeps_hidden_layers_in_their_places() {
    let h = Harness::with_layers(&[
        Layer::file("a.txt", b"a\n", None),
        Layer::file("b.dat", b"b\n", Some("application/vnd.example.data")),
        Layer::untitled(b"sig", "application/vnd.example.sig"),
        Layer::file("z.txt", b"z\n", None),
    ]);
    let fs = h.mount(false).await;
    assert!(fs.notices().iter().any(|n| n.contains("media-type filter")));
    fs.unlink(ROOT, OsStr::new("z.txt")).await.unwrap();
    let (_, fh) = fs.create(ROOT, OsStr::new("c.txt"), 0o644).unwrap();
    fs.release(fh);
    let pushed = fs.sync(&SyncOptions::default()).await.unwrap().unwrap();
    assert_eq!(h.titles(&pushed), ["a.txt", "b.dat", "(untitled)", "c.txt"]);
    let before = h.base_manifest();
    let after = h.manifest(&pushed);
    assert_eq!(after.layers[1..3], before.layers[1..3]);
}

#[tokio::test]
async fn an_image_mounts_read_only() {
    let h = Harness::image();
    let fs = h.mount(false).await;
    assert!(fs.read_only());
    assert!(
        fs.notices()[0].contains("container image"),
        "{:?}",
        fs.notices()
    );
    assert_eq!(
        fs.create(ROOT, OsStr::new("NOTE.txt"), 0o644).unwrap_err(),
        libc::EROFS
    );
    let _ = h.target.resolve("v1").await.unwrap();
}

#[tokio::test]
async fn a_redundant_directory_layer_is_read_lazily_without_unpacking() {
    let target = oras_fs::content::testing::TestTarget::new();
    // A gzip bomb in small: 4 MiB of zeros compress to a few KiB; the cache holds 1 MiB.
    let bomb = directory_layer(&target, "bomb", &[("zeros", vec![0; 4 << 20])]);
    let fine = directory_layer(&target, "fine", &[("hello.txt", b"hello\n".to_vec())]);
    let mut h = Harness::with_layers_and(target, vec![bomb, fine], &[]);
    h.cache_size = 1 << 20;
    let fs = h.mount(true).await;
    // Indexed, not unpacked: it is read in verified 1 MiB pieces, nothing lands on disk.
    assert_eq!(read_all(&fs, "bomb/zeros").await, vec![0; 4 << 20]);
    assert_eq!(read_all(&fs, "fine/hello.txt").await, b"hello\n");
    assert_eq!(fs.readdir(ROOT).await.unwrap().len(), 3);
    let left: u64 = walk_size(&h.cache_dir().join("unpacked"));
    assert_eq!(left, 0, "{left} bytes unpacked");
}

fn walk_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let m = std::fs::symlink_metadata(e.path()).unwrap();
                    if m.is_dir() {
                        walk_size(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn chmod_and_times_stay_in_the_mount_and_fsync_and_statfs_answer() {
    let h = Harness::new(&[("a.txt", b"a\n".to_vec())]);
    let fs = h.mount(false).await;
    let a = path_ino(&fs, "a.txt").await;
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let change = SetAttr {
        mode: Some(0o600),
        mtime: Some(t),
        ..Default::default()
    };
    let attr = fs.setattr(a, change).await.unwrap();
    assert_eq!((attr.perm, attr.mtime), (0o600, t));
    // Modes and times are not pushed: nothing to push.
    assert!(fs.sync(&SyncOptions::default()).await.unwrap().is_none());
    let o = fs.open(a, true, false).await.unwrap();
    fs.write(o.fh, 0, b"b").await.unwrap();
    fs.fsync(o.fh).unwrap();
    fs.release(o.fh);
    let s = fs.statfs();
    assert!(s.blocks_available > 0, "{s:?}");
    assert_eq!(fs.xattr_unsupported(), libc::ENOSYS);
    let ro = {
        drop(fs);
        h.mount(true).await
    };
    assert_eq!(ro.statfs().blocks_available, 0);
}

#[tokio::test]
async fn a_change_made_during_a_push_survives_a_crash() {
    let h = Harness::new(&[("a.txt", b"a\n".to_vec()), ("b.txt", b"b\n".to_vec())]);
    {
        let fs = h.mount(false).await;
        let (_, fh) = fs.create(ROOT, OsStr::new("new.txt"), 0o644).unwrap();
        fs.write(fh, 0, b"n\n").await.unwrap();
        fs.release(fh);
        h.target.delay_fetches(Some(Duration::from_millis(300)));
        // A sync can run as a task of its own (library users spawn it).
        let syncing = {
            let fs = fs.clone();
            tokio::spawn(async move { fs.sync(&SyncOptions::default()).await })
        };
        // While the manifest is on its way: remove an unchanged file.
        tokio::time::sleep(Duration::from_millis(100)).await;
        fs.unlink(ROOT, OsStr::new("b.txt")).await.unwrap();
        let pushed = syncing.await.unwrap().unwrap().unwrap();
        assert_eq!(h.titles(&pushed), ["a.txt", "b.txt", "new.txt"]);
        h.target.delay_fetches(None);
        // The mount dies before the next sync.
    }
    let fs = h.mount(false).await;
    assert_eq!(
        path_ino_err(&fs, "b.txt").await,
        libc::ENOENT,
        "the removal was lost"
    );
    let pushed = fs.sync(&SyncOptions::default()).await.unwrap().unwrap();
    assert_eq!(h.titles(&pushed), ["a.txt", "new.txt"]);
}

#[tokio::test]
async fn a_file_stays_marked_as_being_written_until_its_last_writer_closes() {
    let h = Harness::new(&[("a.txt", b"a\n".to_vec())]);
    {
        let fs = h.mount(false).await;
        let (_, first) = fs.create(ROOT, OsStr::new("two.bin"), 0o644).unwrap();
        let ino = path_ino(&fs, "two.bin").await;
        let second = fs.open(ino, true, false).await.unwrap().fh;
        fs.write(first, 0, b"first").await.unwrap();
        fs.write(second, 5, b" and second").await.unwrap();
        fs.release(first);
        // The second writer is still busy when the mount dies.
    }
    let fs = h.mount(false).await;
    assert!(
        fs.notices()
            .iter()
            .any(|n| n.contains("two.bin was still open for writing")),
        "{:?}",
        fs.notices()
    );
}

/// A seekable directory layer titled `title` (as `oras-fs push DIR` makes it) of `files`,
/// its bytes passed through `tamper` first; the TOC digest annotation is `toc` if given.
fn seekable_layer(
    target: &oras_fs::content::testing::TestTarget,
    title: &str,
    files: &[(&str, Vec<u8>)],
    tamper: impl FnOnce(&mut Vec<u8>, &[oras_fs::archive::Entry]),
    toc: Option<&str>,
) -> oras_fs::manifest::Descriptor {
    use oras_fs::archive::seekable;
    use oras_fs::manifest::{annotation, media_type};
    let src = tempfile::tempdir().unwrap();
    for (name, data) in files {
        std::fs::write(src.path().join(name), data).unwrap();
    }
    let (mut bytes, layer) = seekable::write_seekable(src.path(), title, Vec::new(), true).unwrap();
    let footer = &bytes[bytes.len() - seekable::FOOTER_SIZE as usize..];
    let at = seekable::locate_toc(footer, bytes.len() as u64).unwrap();
    let entries = seekable::parse_toc(
        &bytes[at.start as usize..at.end as usize],
        bytes.len() as u64,
        None,
    )
    .unwrap();
    tamper(&mut bytes, &entries);
    let mut d = target.store().add(media_type::DIRECTORY_LAYER, bytes);
    d.set_annotation(annotation::TITLE, title);
    d.set_annotation(annotation::UNPACK, "true");
    d.set_annotation(annotation::CONTENT_DIGEST, layer.content_digest.to_string());
    let toc = toc.map_or(layer.toc_digest.to_string(), str::to_string);
    d.set_annotation(seekable::TOC_DIGEST_ANNOTATION, toc);
    d
}

/// The compressed start of `path`'s first chunk in a seekable layer.
fn first_member(entries: &[oras_fs::archive::Entry], path: &str) -> usize {
    use oras_fs::archive::{ChunkAt, EntryKind};
    let e = entries.iter().find(|e| e.path == path).unwrap();
    match &e.kind {
        EntryKind::File { chunks, .. } => match chunks[0].at {
            ChunkAt::Member { offset, .. } => offset as usize,
            _ => unreachable!(),
        },
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn a_seekable_layer_lists_from_its_toc_and_reads_one_file_by_its_chunks() {
    let target = oras_fs::content::testing::TestTarget::new();
    // Incompressible, so that the layer is larger than what the cache fetches whole.
    let big = noise(0x9e37_79b9_7f4a_7c15, 9 * MIB);
    let files = vec![("big.bin", big.clone()), ("small.txt", b"small\n".to_vec())];
    let layer = seekable_layer(&target, "d", &files, |_, _| {}, None);
    let size = layer.size;
    let h = Harness::with_layers_and(target, vec![layer], &[]);
    let fs = h.mount(true).await;
    let d = path_ino(&fs, "d").await;
    let names: Vec<_> = fs
        .readdir(d)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.2)
        .collect();
    assert_eq!(names, ["big.bin", "small.txt"]);
    let listed = h.target.counts().bytes_served;
    assert!(
        listed < size / 4,
        "listing fetched {listed} of {size} bytes"
    );
    assert_eq!(read_all(&fs, "d/small.txt").await, b"small\n");
    assert!(h.target.counts().bytes_served < size / 2);
    assert_eq!(read_all(&fs, "d/big.bin").await, big);
    // Files inside a layer are read-only, even on a writable mount.
    let fs = h.mount(false).await;
    let d = path_ino(&fs, "d").await;
    assert_eq!(
        fs.create(d, OsStr::new("new"), 0o644).unwrap_err(),
        libc::EROFS
    );
}

#[tokio::test]
async fn a_toc_that_fails_its_digest_is_never_used() {
    let target = oras_fs::content::testing::TestTarget::new();
    let files = vec![("a.txt", b"a\n".to_vec())];
    let wrong = format!("sha256:{}", "0".repeat(64));
    let layer = seekable_layer(&target, "d", &files, |_, _| {}, Some(&wrong));
    let h = Harness::with_layers_and(target, vec![layer], &[]);
    let fs = h.mount(true).await;
    let d = path_ino(&fs, "d").await;
    assert_eq!(fs.readdir(d).await.unwrap_err(), libc::EIO);
    let why = fs.status().last_error.unwrap();
    assert!(why.contains("digest"), "{why}");
}

#[tokio::test]
async fn a_corrupt_chunk_fails_its_file_only() {
    let target = oras_fs::content::testing::TestTarget::new();
    let files = vec![
        ("bad.bin", pattern(300_000)),
        ("good.txt", b"good\n".to_vec()),
    ];
    let layer = seekable_layer(
        &target,
        "d",
        &files,
        |bytes, entries| {
            // A byte in the middle of bad.bin's compressed data.
            let at = first_member(entries, "d/bad.bin") + 2_000;
            bytes[at] ^= 0x55;
        },
        None,
    );
    let h = Harness::with_layers_and(target, vec![layer], &[]);
    let fs = h.mount(true).await;
    assert_eq!(read_all(&fs, "d/good.txt").await, b"good\n");
    let bad = path_ino(&fs, "d/bad.bin").await;
    let fh = fs.open(bad, false, false).await.unwrap().fh;
    assert_eq!(fs.read(fh, 0, 4096).await.unwrap_err(), libc::EIO);
    fs.release(fh);
    assert!(fs.status().last_error.unwrap().contains("chunk"));
}

/// A tar of (path, content) files; a path ending in `/` is a directory.
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        let dir = path.ends_with('/');
        h.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_size(data.len() as u64);
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[tokio::test]
async fn an_image_of_gzip_and_plain_tar_layers_merges_with_whiteouts() {
    let lower = tar_of(&[
        ("etc/", b""),
        ("etc/a", b"lower a\n"),
        ("etc/b", b"lower b\n"),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &lower).unwrap();
    let upper = tar_of(&[("etc/.wh.b", b""), ("etc/c", b"upper c\n")]);
    let h = Harness::image_of(&[
        (
            "application/vnd.oci.image.layer.v1.tar+gzip",
            gz.finish().unwrap(),
        ),
        ("application/vnd.oci.image.layer.v1.tar", upper),
    ]);
    let fs = h.mount(true).await;
    assert!(fs.read_only());
    expect_merged_etc(&fs).await;
    // `.oras/` answers even before the root is listed, and an unknown layer type fails alone.
    let h = Harness::image_of(&[(
        "application/vnd.oci.image.layer.v1.tar+bzip2",
        b"?".to_vec(),
    )]);
    let fs = h.mount(true).await;
    assert!(path_ino_err(&fs, "etc").await == libc::EIO);
    assert_eq!(read_all(&fs, ".oras/digest").await.len(), 72);
}

/// What the two-layer test images show in `etc/`: the lower layer's `b` whited out by the
/// upper one, its `a` and the upper `c` as they were written.
async fn expect_merged_etc(fs: &OrasFs) {
    let etc = path_ino(fs, "etc").await;
    let names: Vec<_> = fs
        .readdir(etc)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.2)
        .collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(read_all(fs, "etc/a").await, b"lower a\n");
    assert_eq!(read_all(fs, "etc/c").await, b"upper c\n");
}

const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

#[tokio::test]
async fn an_image_of_zstd_layers_is_decompressed_once_into_the_cache() {
    let big = noise(7, 3 << 20);
    let lower = tar_of(&[
        ("etc/", b""),
        ("etc/a", b"lower a\n"),
        ("etc/b", b"lower b\n"),
        ("big.bin", &big),
    ]);
    // The upper layer as zstd:chunked writes one: several frames, then a skippable frame
    // (where its TOC is).
    let upper = tar_of(&[("etc/.wh.b", b""), ("etc/c", b"upper c\n")]);
    let (head, tail) = upper.split_at(1536);
    let mut chunked = zstd::encode_all(head, 3).unwrap();
    chunked.extend(zstd::encode_all(tail, 3).unwrap());
    chunked.extend(0x184D_2A50u32.to_le_bytes());
    chunked.extend(5u32.to_le_bytes());
    chunked.extend(b"{toc}");
    let lower_zst = zstd::encode_all(&lower[..], 3).unwrap();
    // The config names each layer's uncompressed digest, which the decompressed copy is
    // checked against.
    let config = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [
        sha256_hex(&lower), sha256_hex(&upper)]}});
    let config = serde_json::to_vec(&config).unwrap();
    let h = Harness::image_with_config(
        &[
            (ZSTD_LAYER, lower_zst.clone()),
            (ZSTD_LAYER, chunked.clone()),
        ],
        &config,
    );
    let fs = h.mount(true).await;
    expect_merged_etc(&fs).await;
    assert_eq!(read_all(&fs, "big.bin").await, big);
    let tars = names_in(&h.cache_dir().join("unpacked/sha256"));
    assert_eq!(tars.len(), 2, "one decompressed tar a layer: {tars:?}");
    drop(fs);

    // Another mount with the same cache lists and reads from those files: no fetch at all,
    // though the compressed layers are gone from the cache.
    for sub in ["blobs/sha256", "partial/sha256"] {
        std::fs::remove_dir_all(h.cache_dir().join(sub)).unwrap();
        std::fs::create_dir(h.cache_dir().join(sub)).unwrap();
    }
    h.target.reset_counts();
    let fs = h.mount(true).await;
    assert_eq!(read_all(&fs, "big.bin").await, big);
    assert_eq!(h.target.counts().calls(Op::FetchRange), 0);
    drop(fs);

    // A layer whose bytes decompress to other than its diff_id: refused, nothing kept.
    let swapped = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [
        sha256_hex(&upper), sha256_hex(&lower)]}});
    let h = Harness::image_with_config(
        &[(ZSTD_LAYER, lower_zst.clone()), (ZSTD_LAYER, chunked)],
        &serde_json::to_vec(&swapped).unwrap(),
    );
    let fs = h.mount(true).await;
    assert_eq!(path_ino_err(&fs, "etc").await, libc::EIO);
    let why = fs.status().last_error.unwrap();
    assert!(why.contains("diff_id"), "{why}");
    assert_eq!(names_in(&h.cache_dir().join("unpacked/sha256")), [""; 0]);
    drop(fs);

    // A zstd layer that does not decompress fails alone, and says which and why.
    let h = Harness::image_of(&[(ZSTD_LAYER, lower_zst[..lower_zst.len() / 2].to_vec())]);
    let fs = h.mount(true).await;
    assert_eq!(path_ino_err(&fs, "etc").await, libc::EIO);
    let why = fs.status().last_error.unwrap();
    assert!(why.contains("decompressing layer sha256:"), "{why}");
    assert_eq!(read_all(&fs, ".oras/digest").await.len(), 72);
    // One that decompresses past the room left under --cache-size is refused, not stored.
    let zeros = tar_of(&[("zeros", &vec![0; 3 << 20])]);
    let mut h = Harness::image_of(&[(ZSTD_LAYER, zstd::encode_all(&zeros[..], 3).unwrap())]);
    h.cache_size = 2 << 20;
    let fs = h.mount(true).await;
    assert_eq!(path_ino_err(&fs, "etc").await, libc::ENOSPC);
    let why = fs.status().last_error.unwrap();
    assert!(why.contains("--cache-size"), "{why}");
    assert_eq!(names_in(&h.cache_dir().join("unpacked/sha256")), [""; 0]);
}

/// The names in `dir` (none if it does not exist), sorted.
fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn reading_a_seekable_layers_files_in_order_fetches_ahead_in_few_requests() {
    // Without latency the reader is ahead of the decoder; with it, the reader catches up
    // with the decoder and joins its decodes, and must still ask for the next batch.
    for delay in [None, Some(Duration::from_millis(5))] {
        files_in_order_fetch_ahead_in_few_requests(delay).await;
    }
}

async fn files_in_order_fetch_ahead_in_few_requests(delay: Option<Duration>) {
    // 96 files of 200 kB (19 MB): past the largest read-ahead window, so the walk must keep
    // going across files whose members were decoded ahead of the reader (cache hits).
    let target = oras_fs::content::testing::TestTarget::new();
    let files: Vec<(String, Vec<u8>)> = (0..96)
        .map(|i| (format!("f{i:02}"), noise(i + 1, 200_000)))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let layer = seekable_layer(&target, "d", &refs, |_, _| {}, None);
    let h = Harness::with_layers_and(target, vec![layer.clone()], &[]);
    let fs = h.mount(true).await;
    let _ = path_ino(&fs, "d/f00").await;
    h.target.delay_fetches(delay);
    let (listed, listed_bytes) = (
        h.target.counts().calls(Op::FetchRange),
        h.target.counts().bytes_served,
    );
    for (name, data) in &files {
        assert_eq!(read_all(&fs, &format!("d/{name}")).await, *data);
    }
    let fetches = h.target.counts().calls(Op::FetchRange) - listed;
    let bytes = h.target.counts().bytes_served - listed_bytes;
    // A window doubling from 1 MiB to 16 MiB, the rest asked for when half of it is used,
    // at most 8 MiB a request: 11 requests, where sliding the window a file at a time took
    // one or two per file.
    assert!(
        fetches <= 12,
        "{fetches} range requests for 96 files read in order (latency {delay:?})"
    );
    assert!(
        bytes <= layer.size + (1 << 20),
        "{bytes} bytes fetched for a layer of {}",
        layer.size
    );
}

#[tokio::test]
async fn reading_a_directorys_files_in_order_fetches_the_next_ones_concurrently() {
    let names: Vec<String> = (0..40).map(|i| format!("f{i:02}")).collect();
    let files: Vec<(&str, Vec<u8>)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.as_str(),
                [n.as_bytes(), &noise(i as u64 + 1, 10_000)].concat(),
            )
        })
        .collect();
    let h = Harness::new(&files);
    let fs = h.mount(true).await;
    let fetches = || {
        let c = h.target.counts();
        c.calls(Op::Fetch) + c.calls(Op::FetchRange)
    };
    let base = fetches();
    // Files opened out of order fetch only themselves.
    for name in ["f30", "f10", "f20"] {
        let _ = read_all(&fs, name).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fetches() - base, 3, "out-of-order opens fetched ahead");
    // Two files in order start a walk: the next ones arrive without being opened.
    let _ = read_all(&fs, "f00").await;
    let _ = read_all(&fs, "f01").await;
    let mut waited = 0;
    while fetches() - base < 5 + 4 && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert!(
        fetches() - base >= 5 + 4,
        "no files fetched ahead of a reader going through the directory: {}",
        fetches() - base
    );
    // Every file is right, and fetched once, whoever fetched it.
    for (name, data) in &files {
        assert_eq!(read_all(&fs, name).await, *data, "{name}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fetches() - base, 40, "a file was fetched twice");
}

#[tokio::test]
async fn a_walk_fetches_as_many_files_at_once_as_the_target_takes() {
    // 16: what `pull` runs over HTTP/1.1; 64: what a registry over HTTP/2 takes.
    for at_once in [16, 64] {
        let names: Vec<String> = (0..300).map(|i| format!("f{i:03}")).collect();
        let files: Vec<(&str, Vec<u8>)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let data = [n.as_bytes(), &noise(i as u64 + 1, 1_000)].concat();
                (n.as_str(), data)
            })
            .collect();
        let h = Harness::new(&files);
        h.target.set_transfers_at_once(at_once);
        let fs = h.mount(true).await;
        h.target.delay_fetches(Some(Duration::from_millis(50)));
        for (name, data) in &files {
            assert_eq!(read_all(&fs, name).await, *data, "{name}");
        }
        let most = h.target.most_fetches_at_once();
        // The reader's own fetch (of the first files, before the walk is seen) may add one.
        assert!(
            most > at_once * 3 / 4 && most <= at_once + 1,
            "{most} fetches at once for a target that takes {at_once}"
        );
        let c = h.target.counts();
        assert_eq!(
            c.calls(Op::Fetch) + c.calls(Op::FetchRange),
            300,
            "a file was fetched twice"
        );
    }
}

/// Bytes the target has served so far, once background fetches have settled.
async fn served_after_settling(h: &Harness) -> u64 {
    let mut last = h.target.counts().bytes_served;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = h.target.counts().bytes_served;
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test]
async fn random_4k_reads_fetch_at_most_64_kib_each() {
    let (big, h, fs, fh) = one_open_file(64 * MIB).await;
    let mut before = served_after_settling(&h).await;
    // Each read lands tens of MiB from the one before: no locality, no sequence. Aligned to
    // 4 KiB as fio's are (one straddling two blocks would need both).
    for i in 1..=24u64 {
        let at = (i * 37 * MIB as u64 + i * 4096) % (64 * MIB as u64);
        let got = fs.read(fh, at, 4096).await.unwrap();
        assert_eq!(&got[..], &big[at as usize..at as usize + 4096], "at {at}");
        let now = served_after_settling(&h).await;
        assert!(
            now - before <= 64 * 1024,
            "a 4 KiB read at {at} fetched {} bytes",
            now - before
        );
        before = now;
    }
}

#[tokio::test]
async fn sequential_reads_still_fetch_a_growing_window_ahead() {
    let (big, h, fs, fh) = one_open_file(16 * MIB).await;
    let base = h.target.counts().calls(Op::FetchRange);
    let step = 128 * 1024;
    for at in (0..16 * MIB).step_by(step) {
        let got = fs.read(fh, at as u64, step as u32).await.unwrap();
        assert_eq!(&got[..], &big[at..at + step]);
    }
    let c = h.target.counts();
    // Ahead of the reader, half of what it has read (at least 1 MiB), asked for once half
    // of that is used: a few requests (14), not one per read (128).
    assert!(
        c.calls(Op::FetchRange) - base <= 16,
        "{} range requests for 16 MiB read in order",
        c.calls(Op::FetchRange) - base
    );
    assert!(served_after_settling(&h).await <= 16 * MIB as u64 + 64 * 1024);
}

#[tokio::test]
async fn misses_close_together_grow_the_fetch() {
    let (big, h, fs, fh) = one_open_file(64 * MIB).await;
    let mut before = served_after_settling(&h).await;
    let mut fetched = Vec::new();
    // 3 MiB apart: too far to be a sequence, close enough to be one region.
    for i in 0..8u64 {
        let at = 20 * MIB as u64 + i * 3 * MIB as u64 + 5000;
        let got = fs.read(fh, at, 4096).await.unwrap();
        assert_eq!(&got[..], &big[at as usize..at as usize + 4096]);
        let now = served_after_settling(&h).await;
        fetched.push(now - before);
        before = now;
    }
    assert_eq!(fetched[0], BLOCK, "{fetched:?}");
    assert!(fetched.windows(2).all(|w| w[1] >= w[0]), "{fetched:?}");
    assert_eq!(*fetched.last().unwrap(), MIB as u64, "{fetched:?}");
}

#[tokio::test]
async fn a_reader_that_stops_leaves_at_most_half_as_much_again_fetched() {
    // A model loader reads one tensor through, then jumps to another.
    let (big, h, fs, fh) = one_open_file(64 * MIB).await;
    let before = served_after_settling(&h).await;
    let (from, len, step) = (8 * MIB, 16 * MIB, 128 * 1024);
    for at in (from..from + len).step_by(step) {
        let got = fs.read(fh, at as u64, step as u32).await.unwrap();
        assert_eq!(&got[..], &big[at..at + step]);
    }
    let at = 50 * MIB as u64;
    let got = fs.read(fh, at, 4096).await.unwrap();
    assert_eq!(&got[..], &big[at as usize..at as usize + 4096]);
    let fetched = served_after_settling(&h).await - before;
    assert!(
        fetched <= (len + len / 2) as u64 + BLOCK,
        "{fetched} bytes fetched for {len} read in order and 4 KiB elsewhere"
    );
}

/// A safetensors file: its 8-byte header length, a JSON header, then tensors of these sizes;
/// returns the bytes and where each tensor lies in them.
fn safetensors_file(sizes: &[usize]) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut at = 0;
    for (i, n) in sizes.iter().enumerate() {
        header += &format!(
            ",\"t{i}\":{{\"dtype\":\"U8\",\"shape\":[{n}],\"data_offsets\":[{at},{}]}}",
            at + n
        );
        at += n;
    }
    header += "}";
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let base = 8 + header.len();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&pattern(at));
    let mut ranges = Vec::new();
    let mut b = base;
    for n in sizes {
        ranges.push(b..b + n);
        b += n;
    }
    (bytes, ranges)
}

#[tokio::test]
async fn a_jump_into_a_tensor_fetches_the_whole_tensor_and_only_the_read_around_past_it() {
    let (bytes, tensors) = safetensors_file(&[3 * MIB, 12 * MIB + 4096, 5 * MIB, 6 * MIB]);
    let h = Harness::new(&[("model.safetensors", bytes.clone())]);
    let fs = h.mount(true).await;
    let ino = path_ino(&fs, "model.safetensors").await;
    let fh = fs.open(ino, false, false).await.unwrap().fh;
    // A loader reads the header, then tensors picked at random, each through, as mmap does:
    // the kernel's read-around starts a little before the page asked for, and its readahead
    // runs a little past the end.
    let step = 128 * 1024;
    let _ = fs.read(fh, 0, step as u32).await.unwrap();
    for t in [&tensors[1], &tensors[3], &tensors[0]] {
        let before = served_after_settling(&h).await;
        let requests = h.target.counts().calls(Op::FetchRange);
        let mut at = t.start.saturating_sub(64 * 1024);
        while at < (t.end + 64 * 1024).min(bytes.len()) {
            let n = step.min(bytes.len() - at);
            let got = fs.read(fh, at as u64, n as u32).await.unwrap();
            assert_eq!(&got[..], &bytes[at..at + n], "at {at}");
            at += n;
        }
        let fetched = served_after_settling(&h).await - before;
        let requests = h.target.counts().calls(Op::FetchRange) - requests;
        let len = (t.end - t.start) as u64;
        // The tensor and the kernel's read-around past its end (128 KiB) in requests of at
        // most 8 MiB, and one for the last read, which runs up to 192 KiB past the end (the
        // window alone would have fetched MiBs past the end).
        assert!(
            requests <= (len + 256 * 1024).div_ceil(8 * MIB as u64) + 1,
            "{requests} requests for a tensor of {len} bytes"
        );
        assert!(
            fetched <= len + 8 * BLOCK,
            "{fetched} bytes fetched for a tensor of {len} bytes"
        );
    }
}

// ---- Repository and registry mounts, --follow (docs/SEMANTICS.md) ----------------------

mod browsing {
    use std::ffi::OsStr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use oras_fs::content::testing::{Op, TestTarget};
    use oras_fs::content::Target;
    use oras_fs::fs::cache::{BlobCache, CacheOptions};
    use oras_fs::fs::filesystem::{MountOptions, OrasFs};
    use oras_fs::fs::repository::{Browse, Invalidation, Router, Scope};
    use oras_fs::fs::tree::ROOT;
    use oras_fs::manifest::{annotation, media_type, Descriptor, Manifest};
    use oras_fs::oras::LayerFilter;

    use super::fs_harness::{path_ino, read_all, Harness};

    /// A registry of repositories that all live in one test store, with tag lists set by
    /// the test (the store does not list its tags).
    struct TestBrowse {
        target: TestTarget,
        repositories: Vec<String>,
        tags: Mutex<Vec<String>>,
        /// Repositories with a store of their own, not `target`.
        own: Mutex<std::collections::HashMap<String, TestTarget>>,
    }

    #[async_trait::async_trait]
    impl Browse for TestBrowse {
        async fn repositories(&self) -> oras_fs::Result<Vec<String>> {
            Ok(self.repositories.clone())
        }
        async fn tags(&self, _repository: &str) -> oras_fs::Result<Vec<String>> {
            Ok(self.tags.lock().unwrap().clone())
        }
        fn target(&self, repository: &str) -> oras_fs::Result<Arc<dyn Target>> {
            let own = self.own.lock().unwrap().get(repository).cloned();
            Ok(Arc::new(own.unwrap_or_else(|| self.target.clone())))
        }
        fn display(&self, repository: &str) -> String {
            format!("test.invalid/{repository}")
        }
    }

    /// Tags `tag` as an artifact of `files`.
    async fn push_tag(t: &TestTarget, tag: &str, files: &[(&str, &[u8])]) -> Descriptor {
        let layers = files
            .iter()
            .map(|(name, data)| {
                let mut d = t.store().add(media_type::DEFAULT_LAYER, data.to_vec());
                d.set_annotation(annotation::TITLE, *name);
                d
            })
            .collect();
        let config = t.store().add(media_type::EMPTY, &b"{}"[..]);
        let m = Manifest::new(config, layers);
        let bytes = Bytes::from(m.to_bytes());
        let d = Descriptor::of(m.media_type().to_string(), &bytes);
        t.store().push_manifest(&d, bytes, Some(tag)).await.unwrap();
        d
    }

    /// Tags `tag` as a container image of one plain tar layer of `files`.
    async fn push_image(t: &TestTarget, tag: &str, files: &[(&str, &[u8])]) -> Descriptor {
        let layer = t.store().add(
            "application/vnd.oci.image.layer.v1.tar",
            super::tar_of(files),
        );
        let config = t.store().add(
            "application/vnd.oci.image.config.v1+json",
            &br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#[..],
        );
        let m = Manifest::new(config, vec![layer]);
        let bytes = Bytes::from(m.to_bytes());
        let d = Descriptor::of(m.media_type().to_string(), &bytes);
        t.store().push_manifest(&d, bytes, Some(tag)).await.unwrap();
        d
    }

    fn fetches(t: &TestTarget) -> u64 {
        t.counts().calls(Op::Fetch) + t.counts().calls(Op::FetchRange)
    }

    struct Mounted {
        fs: OrasFs,
        browse: Arc<TestBrowse>,
        _dir: tempfile::TempDir,
    }

    async fn mount(t: &TestTarget, scope: Scope, repositories: &[&str], tags: &[&str]) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let router = Arc::new(Router::default());
        let cache = BlobCache::new(
            router.clone(),
            CacheOptions {
                dir: dir.path().join("cache"),
                disk_limit: 1 << 30,
                memory_limit: 16 << 20,
            },
        )
        .unwrap();
        let browse = Arc::new(TestBrowse {
            target: t.clone(),
            repositories: repositories.iter().map(|s| s.to_string()).collect(),
            tags: Mutex::new(tags.iter().map(|s| s.to_string()).collect()),
            own: Mutex::default(),
        });
        let options = MountOptions {
            filter: LayerFilter::default(),
            read_only: false,
            layers_apart: false,
        };
        let fs = OrasFs::browsing(
            cache,
            router,
            browse.clone(),
            scope,
            options,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        t.reset_counts();
        Mounted {
            fs,
            browse,
            _dir: dir,
        }
    }

    async fn names(fs: &OrasFs, path: &str) -> Vec<String> {
        let ino = path_ino(fs, path).await;
        fs.readdir(ino)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.2.to_string_lossy().into_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_repository_mount_lists_tags_and_fetches_a_tags_manifest_once_on_first_access() {
        let t = TestTarget::new();
        push_tag(&t, "v1", &[("a.txt", b"one\n")]).await;
        push_tag(&t, "v2", &[("b.txt", b"two\n")]).await;
        let m = mount(&t, Scope::Repository("repo".into()), &[], &["v1", "v2"]).await;
        let fs = &m.fs;
        assert_eq!(names(fs, "").await, ["v1", "v2"]);
        // `ls` and `stat` of the tag directories fetch nothing.
        let v1 = fs.lookup(ROOT, OsStr::new("v1")).await.unwrap();
        fs.getattr(v1.ino).unwrap();
        assert_eq!(t.counts().calls(Op::Resolve), 0);
        assert_eq!(t.counts().calls(Op::Fetch), 0);
        assert_eq!(names(fs, "v1").await, ["a.txt"]);
        assert_eq!(read_all(fs, "v1/a.txt").await, b"one\n");
        assert_eq!(names(fs, "v1").await, ["a.txt"]);
        assert_eq!(t.counts().calls(Op::Resolve), 1, "v1 resolved once");
        // v2 is still not loaded; a read-only view of it.
        assert_eq!(read_all(fs, "v2/b.txt").await, b"two\n");
        assert_eq!(t.counts().calls(Op::Resolve), 2);
        let b = path_ino(fs, "v2/b.txt").await;
        assert_eq!(fs.getattr(b).unwrap().perm, 0o444);
        assert_eq!(fs.open(b, true, false).await.unwrap_err(), libc::EROFS);
        assert!(fs.read_only());
        assert!(fs.notices()[0].contains("read-only"), "{:?}", fs.notices());
        assert_eq!(fs.status().digest, "");
    }

    #[tokio::test]
    async fn two_first_looks_into_one_image_tag_at_once_both_see_its_files() {
        let t = TestTarget::new();
        push_image(&t, "v1", &[("etc/", b""), ("etc/a", b"a\n")]).await;
        let m = mount(&t, Scope::Repository("repo".into()), &[], &["v1"]).await;
        let v1 = path_ino(&m.fs, "v1").await;
        t.delay_fetches(Some(Duration::from_millis(100)));
        let (listed, etc) = tokio::join!(m.fs.readdir(v1), m.fs.lookup(v1, OsStr::new("etc")));
        let listed: Vec<_> = listed.unwrap().into_iter().map(|e| e.2).collect();
        assert_eq!(listed, ["etc"]);
        assert_eq!(etc.unwrap().kind, oras_fs::fs::filesystem::FileKind::Dir);
        assert_eq!(read_all(&m.fs, "v1/etc/a").await, b"a\n");
    }

    #[tokio::test]
    async fn a_refresh_during_a_first_listing_shows_only_the_new_image() {
        let t = TestTarget::new();
        push_image(&t, "v1", &[("old", b"old\n")]).await;
        let m = mount(&t, Scope::Repository("repo".into()), &[], &["v1"]).await;
        let v1 = path_ino(&m.fs, "v1").await;
        t.delay_fetches(Some(Duration::from_secs(1)));
        let listing = m.fs.readdir(v1);
        tokio::pin!(listing);
        // Manifest, config, then the layer: once the layer is asked for, the old image is
        // being listed.
        while fetches(&t) < 3 {
            tokio::select! {
                r = &mut listing => panic!("listed before the layer was fetched: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        t.delay_fetches(None);
        push_image(&t, "v1", &[("new", b"new\n")]).await;
        m.fs.refresh().await;
        let listed: Vec<_> = listing.await.unwrap().into_iter().map(|e| e.2).collect();
        assert_eq!(listed, ["new"]);
        assert_eq!(read_all(&m.fs, "v1/new").await, b"new\n");
    }

    #[tokio::test]
    async fn a_digest_directory_is_found_by_lookup_and_never_listed() {
        let t = TestTarget::new();
        let d = push_tag(&t, "v1", &[("a.txt", b"one\n")]).await;
        let m = mount(&t, Scope::Repository("repo".into()), &[], &["v1"]).await;
        let name = format!("@{}", d.digest);
        assert_eq!(read_all(&m.fs, &format!("{name}/a.txt")).await, b"one\n");
        assert_eq!(names(&m.fs, "").await, ["v1"]);
        let bad = "@sha256:nothex";
        assert_eq!(
            m.fs.lookup(ROOT, OsStr::new(bad)).await.unwrap_err(),
            libc::ENOENT
        );
        // A digest the repository does not have is looked for, and leaves nothing behind.
        let missing = format!("@sha256:{}", "0".repeat(64));
        t.reset_counts();
        assert_eq!(
            m.fs.lookup(ROOT, OsStr::new(&missing)).await.unwrap_err(),
            libc::ENOENT
        );
        assert_eq!(t.counts().calls(Op::Resolve), 1);
        assert_eq!(
            m.fs.lookup(ROOT, OsStr::new(&missing)).await.unwrap_err(),
            libc::ENOENT
        );
        assert_eq!(t.counts().calls(Op::Resolve), 2, "not remembered as found");
        assert_eq!(read_all(&m.fs, &format!("{name}/a.txt")).await, b"one\n");
    }

    #[tokio::test]
    async fn tags_the_kernel_would_refuse_are_not_shown() {
        let t = TestTarget::new();
        push_tag(&t, "ok", &[("a.txt", b"one\n")]).await;
        let tags = ["", "a/b", ".", "..", "-x", "ok", &"x".repeat(129)];
        let m = mount(&t, Scope::Repository("repo".into()), &[], &tags).await;
        assert_eq!(names(&m.fs, "").await, ["ok"]);
    }

    #[tokio::test]
    async fn a_refresh_adds_and_removes_tags_and_shows_a_moved_tag_while_open_files_keep_their_blobs(
    ) {
        let t = TestTarget::new();
        push_tag(&t, "v1", &[("a.txt", b"old\n")]).await;
        push_tag(&t, "v2", &[("b.txt", b"two\n")]).await;
        let m = mount(&t, Scope::Repository("repo".into()), &[], &["v1", "v2"]).await;
        let fs = &m.fs;
        let old = path_ino(fs, "v1/a.txt").await;
        let open = fs.open(old, false, false).await.unwrap();
        let v2 = path_ino(fs, "v2").await;

        push_tag(&t, "v1", &[("a.txt", b"new!\n")]).await;
        push_tag(&t, "v3", &[("c.txt", b"three\n")]).await;
        *m.browse.tags.lock().unwrap() = vec!["v1".into(), "v3".into()];
        let changes = fs.refresh().await;
        assert!(changes.contains(&Invalidation::Entry {
            parent: ROOT,
            name: "v2".into()
        }));
        assert!(changes.contains(&Invalidation::Entry {
            parent: path_ino(fs, "v1").await,
            name: "a.txt".into()
        }));
        assert_eq!(names(fs, "").await, ["v1", "v3"]);
        assert!(fs.getattr(v2).is_err(), "a deleted tag's directory is gone");
        assert_eq!(read_all(fs, "v1/a.txt").await, b"new!\n");
        assert_eq!(&fs.read(open.fh, 0, 100).await.unwrap()[..], b"old\n");
        assert_eq!(fs.getattr(old).unwrap().size, 4);
        fs.release(open.fh);
        // A refresh with nothing changed touches nothing.
        t.reset_counts();
        assert!(fs.refresh().await.is_empty());
        assert_eq!(t.counts().calls(Op::Fetch), 0, "{:?}", t.counts());
        assert_eq!(t.counts().calls(Op::Resolve), 1, "only v1 is loaded");
    }

    #[tokio::test]
    async fn a_first_look_into_a_tag_does_not_wait_for_a_refresh() {
        let t = TestTarget::new();
        for tag in ["v1", "v2", "v3"] {
            push_tag(&t, tag, &[("a.txt", b"one\n")]).await;
        }
        let m = mount(
            &t,
            Scope::Repository("repo".into()),
            &[],
            &["v1", "v2", "v3"],
        )
        .await;
        names(&m.fs, "v1").await;
        names(&m.fs, "v3").await;
        push_tag(&t, "v1", &[("a.txt", b"moved\n")]).await;
        push_tag(&t, "v3", &[("a.txt", b"moved\n")]).await;
        let v2 = path_ino(&m.fs, "v2").await;
        // The refresh fetches two moved tags (4 delays); v2's first look needs 2.
        t.delay_fetches(Some(Duration::from_millis(300)));
        let refresh = m.fs.refresh();
        tokio::pin!(refresh);
        // The refresh is polled first, as one already running would be.
        tokio::select! {
            biased;
            _ = &mut refresh => panic!("the first look waited for the whole refresh"),
            listed = m.fs.readdir(v2) => assert_eq!(listed.unwrap().len(), 1),
        }
        refresh.await;
        t.delay_fetches(None);
        assert_eq!(read_all(&m.fs, "v3/a.txt").await, b"moved\n");
    }

    #[tokio::test]
    async fn a_tag_that_cannot_be_loaded_is_an_empty_directory_with_the_reason_in_status() {
        let t = TestTarget::new();
        push_tag(&t, "v1", &[("a.txt", b"one\n")]).await;
        let m = mount(&t, Scope::Repository("repo".into()), &[], &["ghost", "v1"]).await;
        let ghost = path_ino(&m.fs, "ghost").await;
        assert!(m.fs.readdir(ghost).await.unwrap().is_empty());
        assert_eq!(
            m.fs.lookup(ghost, OsStr::new("x")).await.unwrap_err(),
            libc::EIO
        );
        let status = m.fs.status();
        assert!(
            status.notices.iter().any(|n| n.contains("repo:ghost")),
            "{status:?}"
        );
        assert!(status.last_error.unwrap().contains("ghost"));
        assert_eq!(read_all(&m.fs, "v1/a.txt").await, b"one\n");
        // Pushed later: the next refresh shows it.
        push_tag(&t, "ghost", &[("g.txt", b"boo\n")]).await;
        m.fs.refresh().await;
        assert_eq!(read_all(&m.fs, "ghost/g.txt").await, b"boo\n");
    }

    #[tokio::test]
    async fn a_registry_mount_shows_repositories_by_path_from_the_catalog() {
        let t = TestTarget::new();
        push_tag(&t, "v1", &[("a.txt", b"one\n")]).await;
        let m = mount(&t, Scope::Registry, &["a", "a/b", "c/d"], &["v1"]).await;
        let fs = &m.fs;
        assert_eq!(names(fs, "").await, ["a", "c"]);
        assert_eq!(t.counts().calls(Op::Resolve), 0);
        assert_eq!(names(fs, "a").await, ["b", "v1"]);
        assert_eq!(names(fs, "c").await, ["d"]);
        assert_eq!(read_all(fs, "a/b/v1/a.txt").await, b"one\n");
        assert_eq!(read_all(fs, "c/d/v1/a.txt").await, b"one\n");
    }

    #[tokio::test]
    async fn a_blob_shared_by_repositories_is_read_from_another_when_one_fails() {
        let shared = TestTarget::new();
        let m = mount(&shared, Scope::Registry, &["a", "b"], &["v1"]).await;
        let (a, b) = (TestTarget::new(), TestTarget::new());
        push_tag(&a, "v1", &[("x.txt", b"same\n")]).await;
        push_tag(&b, "v1", &[("x.txt", b"same\n"), ("y", b"y")]).await;
        m.browse
            .own
            .lock()
            .unwrap()
            .extend([("a".to_string(), a.clone()), ("b".to_string(), b.clone())]);
        assert_eq!(names(&m.fs, "a/v1").await, ["x.txt"]);
        assert_eq!(names(&m.fs, "b/v1").await, ["x.txt", "y"]);
        // b named the blob last, and b is gone now: a still has it.
        b.fail_next(Op::Fetch, 1000);
        b.fail_next(Op::FetchRange, 1000);
        assert_eq!(read_all(&m.fs, "b/v1/x.txt").await, b"same\n");
        assert!(b.counts().calls(Op::Fetch) + b.counts().calls(Op::FetchRange) > 0);
    }

    /// Tags `tag` as an index of one linux/amd64 artifact of `files`.
    async fn push_platform_index(t: &TestTarget, tag: &str, files: &[(&str, &[u8])]) {
        let mut child = push_tag(t, &format!("{tag}-amd64"), files).await;
        child.platform = Some(serde_json::json!({"os": "linux", "architecture": "amd64"}));
        let mut index = oras_fs::manifest::Index::new();
        index.manifests.push(child);
        let bytes = Bytes::from(index.to_bytes());
        let d = Descriptor::of(index.media_type().to_string(), &bytes);
        t.store().push_manifest(&d, bytes, Some(tag)).await.unwrap();
    }

    #[tokio::test]
    async fn a_followed_index_keeps_showing_its_platforms_manifest_after_refreshes() {
        let t = TestTarget::new();
        push_platform_index(&t, "v1", &[("a.txt", b"old\n")]).await;
        let dir = tempfile::tempdir().unwrap();
        let target: Arc<dyn Target> = Arc::new(t.clone());
        let cache = BlobCache::new(
            target.clone(),
            CacheOptions {
                dir: dir.path().join("cache"),
                disk_limit: 1 << 30,
                memory_limit: 16 << 20,
            },
        )
        .unwrap();
        let platform: oras_fs::manifest::Platform = "linux/amd64".parse().unwrap();
        let snap = oras_fs::fs::mount::snapshot(&t, "test/repo:v1", "v1", Some(&platform))
            .await
            .unwrap();
        let options = MountOptions {
            filter: LayerFilter::default(),
            read_only: true,
            layers_apart: false,
        };
        let fs = OrasFs::new(cache, snap, options, None, None)
            .unwrap()
            .following(target, "v1", Some(platform), Duration::from_secs(1))
            .unwrap();
        t.reset_counts();
        assert!(fs.refresh().await.is_empty(), "the tag did not move");
        assert_eq!(t.counts().calls(Op::Fetch), 0, "{:?}", t.counts());
        assert_eq!(read_all(&fs, "a.txt").await, b"old\n");
        push_platform_index(&t, "v1", &[("a.txt", b"new!\n")]).await;
        assert!(!fs.refresh().await.is_empty());
        assert_eq!(read_all(&fs, "a.txt").await, b"new!\n");
        assert!(fs.lookup(ROOT, OsStr::new("linux_amd64")).await.is_err());
        assert!(fs.refresh().await.is_empty(), "the tag did not move again");
    }

    #[tokio::test]
    async fn a_followed_tag_shows_its_new_manifest_and_open_files_keep_their_blobs() {
        let h = Harness::new(&[("a.txt", b"old\n".to_vec())]);
        let writable = Arc::try_unwrap(h.mount(false).await).ok().unwrap();
        let target: Arc<dyn Target> = Arc::new(h.target.clone());
        let refused = writable.following(target.clone(), "v1", None, Duration::from_secs(1));
        assert!(refused.err().unwrap().to_string().contains("--read-only"));

        let fs = Arc::try_unwrap(h.mount(true).await).ok().unwrap();
        let fs = fs
            .following(target, "v1", None, Duration::from_secs(1))
            .unwrap();
        let old = path_ino(&fs, "a.txt").await;
        let open = fs.open(old, false, false).await.unwrap();
        assert!(fs.refresh().await.is_empty(), "the tag did not move");
        let moved = push_tag(&h.target, "v1", &[("a.txt", b"new!\n"), ("b.txt", b"b")]).await;
        let changes = fs.refresh().await;
        assert!(changes.contains(&Invalidation::Entry {
            parent: ROOT,
            name: "a.txt".into()
        }));
        assert_eq!(read_all(&fs, "a.txt").await, b"new!\n");
        assert_eq!(read_all(&fs, "b.txt").await, b"b");
        assert_eq!(&fs.read(open.fh, 0, 100).await.unwrap()[..], b"old\n");
        // The kernel still asks for an open file's attributes (its size checks, fstat).
        assert_eq!(fs.getattr(old).unwrap().size, 4);
        let status = fs.status();
        assert_eq!(status.digest, moved.digest.to_string());
        assert!(
            status.notices.iter().any(|n| n.contains("moved 1 time")),
            "{status:?}"
        );
        let meta = path_ino(&fs, ".oras/digest").await;
        assert!(
            changes.contains(&Invalidation::Inode(meta)),
            "the kernel keeps .oras/ files cached: it must be told"
        );
        let digest = read_all(&fs, ".oras/digest").await;
        assert_eq!(
            String::from_utf8(digest).unwrap().trim(),
            moved.digest.to_string()
        );
    }
}

/// `sha256:<hex>` of `data`.
fn sha256_hex(data: &[u8]) -> String {
    oras_fs::digest::Digest::of(data).to_string()
}
