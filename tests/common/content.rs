//! Test content and local files: deterministic pseudo-random bytes, writing, reading, hashing
//! and listing trees, temporary directories.

use std::io::{BufWriter, Read, Write};
use std::path::Path;

/// A temporary directory, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("oras-fs-test-")
        .tempdir()
        .expect("cannot create a temporary directory")
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

/// A cheap deterministic PRNG (SplitMix64): good enough to make content nothing compresses
/// or dedupes by accident.
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Self {
        Prng(seed)
    }

    /// A generator seeded from a string (e.g. a unique repository name).
    pub fn from_str_seed(seed: &str) -> Self {
        // FNV-1a.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Prng(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Prng::from_str_seed(seed).fill(&mut v);
    v
}

/// Writes `size` pseudo-random bytes (from `seed`) to `path`, creating parent directories.
/// Large files are written quickly: one 1 MiB random block, with each copy stamped with its
/// index so that no two blocks are equal (a misplaced range would not go unnoticed).
pub fn write_random_file(path: &Path, seed: &str, size: u64) {
    const BLOCK: usize = 1 << 20;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("creating parent directories");
    }
    let file =
        std::fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    let mut w = BufWriter::with_capacity(4 * BLOCK, file);
    let mut block = vec![0u8; BLOCK.min(size as usize).max(1)];
    Prng::from_str_seed(seed).fill(&mut block);
    let mut written = 0u64;
    let mut index = 0u64;
    while written < size {
        let n = (size - written).min(block.len() as u64) as usize;
        let stamp = index.to_le_bytes();
        let k = stamp.len().min(n);
        block[..k].copy_from_slice(&stamp[..k]);
        w.write_all(&block[..n]).expect("writing a random file");
        written += n as u64;
        index += 1;
    }
    w.flush().expect("writing a random file");
}

/// Writes `contents` to `path`, creating parent directories.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("creating parent directories");
    }
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

pub fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of `data`.
pub fn sha256_bytes(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex(&sha2::Sha256::digest(data)))
}

/// `sha256:<hex>` of a file, read in chunks.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("reading a file to hash");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("sha256:{}", hex(&hasher.finalize()))
}

/// Every file under `root` (relative path with '/' separators -> contents), directories
/// left out; symlinks are listed with their target as content, prefixed `symlink:`.
pub fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
        for e in entries {
            let e = e.expect("listing a directory");
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/");
            let ty = e.file_type().expect("file type");
            if ty.is_symlink() {
                let target = std::fs::read_link(&path).expect("reading a symlink");
                out.insert(rel, format!("symlink:{}", target.display()).into_bytes());
            } else if ty.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(rel, read_file(&path));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// What [`tree`] returns for a directory holding just `files` (path, contents).
pub fn expect_tree(files: &[(&str, &[u8])]) -> std::collections::BTreeMap<String, Vec<u8>> {
    files
        .iter()
        .map(|(n, d)| (n.to_string(), d.to_vec()))
        .collect()
}

/// Names of the entries directly in `dir`, sorted.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| {
            e.expect("listing")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Names in `dir` that oras-fs gives its temporary files (`.oras-fs-partial-*`, ...), sorted:
/// what a finished or failed command must not leave behind. None if `dir` does not exist.
pub fn leftovers(dir: &Path) -> Vec<String> {
    if !dir.exists() {
        return Vec::new();
    }
    list_dir(dir)
        .into_iter()
        .filter(|n| n.starts_with(".oras-fs"))
        .collect()
}

/// `%XX` escapes decoded (invalid ones kept as they are).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
