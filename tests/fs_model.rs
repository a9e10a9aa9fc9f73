//! A model-based test of the writable mount (as mountpoint-s3's reference tests): random
//! sequences of create, write at offsets, truncate, rename, unlink, mkdir, rmdir, sync and
//! remount run against `OrasFs` (over `TestTarget`, no FUSE, no registry) and against a plain
//! in-memory tree. After every step the mount shows the model; after every sync the pushed
//! manifest holds exactly the model's files. `PROPTEST_CASES` sets how many sequences.

mod fs_harness;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;

use fs_harness::*;
use oras_fs::content::Target;
use oras_fs::fs::error::Errno;
use oras_fs::fs::filesystem::{FileKind, OrasFs, RenameHow, SetAttr, SyncOptions};
use oras_fs::fs::tree::{Ino, ROOT};
use proptest::prelude::*;

/// Directories ops may use ("" is the root) and file names in them: few, so ops collide.
const DIRS: &[&str] = &["", "d", "e", "d/f"];
const NAMES: &[&str] = &["a", "b", "d", "f"];

#[derive(Clone, Debug)]
enum Op {
    Create(String, Vec<u8>),
    Write(String, u64, Vec<u8>),
    Truncate(String, u64),
    Rename(String, String),
    Unlink(String),
    Mkdir(String),
    Rmdir(String),
    Sync,
    Remount,
}

fn path() -> impl Strategy<Value = String> {
    (0..DIRS.len(), 0..NAMES.len()).prop_map(|(d, n)| match DIRS[d] {
        "" => NAMES[n].to_string(),
        dir => format!("{dir}/{}", NAMES[n]),
    })
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..48)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (path(), data()).prop_map(|(p, d)| Op::Create(p, d)),
        3 => (path(), 0..64u64, data()).prop_map(|(p, o, d)| Op::Write(p, o, d)),
        1 => (path(), 0..64u64).prop_map(|(p, s)| Op::Truncate(p, s)),
        2 => (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => path().prop_map(Op::Unlink),
        2 => path().prop_map(Op::Mkdir),
        1 => path().prop_map(Op::Rmdir),
        1 => Just(Op::Sync),
        1 => Just(Op::Remount),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    File(Vec<u8>),
    Dir,
}

/// The reference: paths to files and directories, as a plain map.
#[derive(Clone, Debug, Default)]
struct Model(BTreeMap<String, Node>);

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

fn below(p: &str, dir: &str) -> bool {
    p.starts_with(dir) && p.as_bytes().get(dir.len()) == Some(&b'/')
}

impl Model {
    fn is_dir(&self, p: &str) -> bool {
        p.is_empty() || self.0.get(p) == Some(&Node::Dir)
    }
    fn is_file(&self, p: &str) -> bool {
        matches!(self.0.get(p), Some(Node::File(_)))
    }
    fn is_empty_dir(&self, p: &str) -> bool {
        self.is_dir(p) && !self.0.keys().any(|k| below(k, p))
    }

    /// Applies `op` if POSIX (and the mount) allow it; returns whether it did.
    fn apply(&mut self, op: &Op) -> bool {
        match op {
            Op::Create(p, d) => {
                let ok = self.is_dir(parent(p)) && !self.0.contains_key(p);
                if ok {
                    self.0.insert(p.clone(), Node::File(d.clone()));
                }
                ok
            }
            Op::Write(p, off, d) => match self.0.get_mut(p) {
                Some(Node::File(_)) if d.is_empty() => true,
                Some(Node::File(f)) => {
                    let end = *off as usize + d.len();
                    if f.len() < end {
                        f.resize(end, 0);
                    }
                    f[*off as usize..end].copy_from_slice(d);
                    true
                }
                _ => false,
            },
            Op::Truncate(p, s) => match self.0.get_mut(p) {
                Some(Node::File(f)) => {
                    f.resize(*s as usize, 0);
                    true
                }
                _ => false,
            },
            Op::Unlink(p) => self.is_file(p) && self.0.remove(p).is_some(),
            Op::Mkdir(p) => {
                let ok = self.is_dir(parent(p)) && !self.0.contains_key(p);
                if ok {
                    self.0.insert(p.clone(), Node::Dir);
                }
                ok
            }
            Op::Rmdir(p) => {
                let ok = !p.is_empty() && self.0.get(p) == Some(&Node::Dir) && self.is_empty_dir(p);
                if ok {
                    self.0.remove(p);
                }
                ok
            }
            Op::Rename(a, b) => self.rename(a, b),
            Op::Sync | Op::Remount => true,
        }
    }

    fn rename(&mut self, a: &str, b: &str) -> bool {
        let Some(src) = self.0.get(a).cloned() else {
            return false;
        };
        if !self.is_dir(parent(b)) {
            return false;
        }
        if a == b {
            return true;
        }
        let src_dir = src == Node::Dir;
        if src_dir && below(b, a) {
            return false;
        }
        match (self.0.get(b), src_dir) {
            (Some(Node::File(_)), true) | (Some(Node::Dir), false) => return false,
            (Some(Node::Dir), true) if !self.is_empty_dir(b) => return false,
            _ => {}
        }
        self.0.remove(b);
        let moved: Vec<String> = self
            .0
            .keys()
            .filter(|k| *k == a || below(k, a))
            .cloned()
            .collect();
        for k in moved {
            let v = self.0.remove(&k).unwrap();
            self.0.insert(format!("{b}{}", &k[a.len()..]), v);
        }
        true
    }

    fn files(&self) -> BTreeMap<String, Vec<u8>> {
        self.0
            .iter()
            .filter_map(|(k, v)| match v {
                Node::File(d) => Some((k.clone(), d.clone())),
                Node::Dir => None,
            })
            .collect()
    }

    /// What survives a remount with no journal: directories holding no file are not pushed.
    fn forget_empty_dirs(&mut self) {
        let files: Vec<String> = self.files().into_keys().collect();
        self.0.retain(|k, v| match v {
            Node::File(_) => true,
            Node::Dir => files.iter().any(|f| below(f, k)),
        });
    }
}

async fn lookup_parent(fs: &OrasFs, p: &str) -> Result<(Ino, String), Errno> {
    let (dir, name) = p.rsplit_once('/').unwrap_or(("", p));
    Ok((try_path_ino(fs, dir).await?, name.to_string()))
}

/// Runs `op` on the mount; `Ok` if it succeeded.
async fn run(fs: &OrasFs, op: &Op) -> Result<(), Errno> {
    match op {
        Op::Create(p, d) => {
            let (dir, name) = lookup_parent(fs, p).await?;
            let (_, fh) = fs.create(dir, OsStr::new(&name), 0o644)?;
            let w = fs.write(fh, 0, d).await;
            fs.release(fh);
            w.map(|_| ())
        }
        Op::Write(p, off, d) => {
            let ino = try_path_ino(fs, p).await?;
            let o = fs.open(ino, true, false).await?;
            let w = fs.write(o.fh, *off, d).await;
            fs.release(o.fh);
            w.map(|_| ())
        }
        Op::Truncate(p, s) => {
            let ino = try_path_ino(fs, p).await?;
            if fs.getattr(ino)?.kind != FileKind::File {
                return Err(libc::EISDIR.into());
            }
            let change = SetAttr {
                size: Some(*s),
                ..Default::default()
            };
            fs.setattr(ino, change).await.map(|_| ())
        }
        Op::Unlink(p) => {
            let (dir, name) = lookup_parent(fs, p).await?;
            fs.unlink(dir, OsStr::new(&name)).await
        }
        Op::Mkdir(p) => {
            let (dir, name) = lookup_parent(fs, p).await?;
            fs.mkdir(dir, OsStr::new(&name), 0o755).map(|_| ())
        }
        Op::Rmdir(p) => {
            let (dir, name) = lookup_parent(fs, p).await?;
            fs.rmdir(dir, OsStr::new(&name)).await
        }
        Op::Rename(a, b) => {
            let (da, na) = lookup_parent(fs, a).await?;
            let (db, nb) = lookup_parent(fs, b).await?;
            let how = RenameHow::default();
            fs.rename(da, OsStr::new(&na), db, OsStr::new(&nb), how)
                .await
        }
        Op::Sync | Op::Remount => Ok(()),
    }
}

/// Everything the mount shows (but `.oras/`), as the model would.
async fn shown(fs: &OrasFs) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut todo = vec![(ROOT, String::new())];
    while let Some((ino, dir)) = todo.pop() {
        for (child, kind, name) in fs.readdir(ino).await.unwrap() {
            let name = name.to_string_lossy().into_owned();
            if ino == ROOT && name == ".oras" {
                continue;
            }
            let p = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            if kind == FileKind::Dir {
                out.insert(p.clone(), Node::Dir);
                todo.push((child, p));
            } else {
                out.insert(p.clone(), Node::File(read_all(fs, &p).await));
            }
        }
    }
    out
}

async fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let h = Harness::new(&[("a", b"base a".to_vec()), ("e/b", b"base b".to_vec())]);
    let mut model = Model::default();
    model.0.insert("a".into(), Node::File(b"base a".to_vec()));
    model.0.insert("e".into(), Node::Dir);
    model.0.insert("e/b".into(), Node::File(b"base b".to_vec()));
    let mut fs: Arc<OrasFs> = h.mount(false).await;
    // Whether the mount has a journal: empty directories live only there (layers can't hold
    // them), and a sync that pushes everything clears it.
    let mut journal = false;
    for (i, op) in ops.iter().enumerate() {
        let expected = model.clone().apply(op);
        let got = run(&fs, op).await;
        let no_op = match op {
            Op::Sync | Op::Remount => true,
            Op::Rename(a, b) => a == b,
            Op::Write(_, _, d) => d.is_empty(),
            _ => false,
        };
        journal |= got.is_ok() && !no_op;
        prop_assert_eq!(
            got.is_ok(),
            expected,
            "step {} {:?}: mount said {:?}",
            i,
            op,
            got
        );
        model.apply(op);
        match op {
            Op::Sync => {
                let pushed = fs
                    .sync(&SyncOptions::default())
                    .await
                    .map_err(|e| TestCaseError::fail(format!("sync: {e}")))?;
                journal &= pushed.is_none();
                let tag = h.target.store().resolve("v1").await.unwrap();
                let pushed: BTreeMap<String, Vec<u8>> = h
                    .titles(&tag)
                    .into_iter()
                    .map(|t| {
                        let data = h.file(&tag, &t);
                        (t, data)
                    })
                    .collect();
                prop_assert_eq!(pushed, model.files(), "pushed after step {}", i);
            }
            Op::Remount => {
                if !journal {
                    model.forget_empty_dirs();
                }
                drop(fs);
                fs = h.mount(false).await;
            }
            _ => {}
        }
        prop_assert_eq!(
            shown(&fs).await,
            model.0.clone(),
            "after step {} {:?}",
            i,
            op
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(500),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_mount_behaves_like_a_plain_tree(ops in proptest::collection::vec(op(), 1..24)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(check(ops))?;
    }
}
