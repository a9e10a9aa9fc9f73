//! FUSE-free tests of the cache: several caches on one directory stand for several processes
//! (their `flock`s conflict just as well within one process).

use super::*;
use crate::content::testing::{Op, TestTarget};
use crate::content::ByteStream;
use crate::error::Result;
use async_trait::async_trait;
use std::time::{Instant, SystemTime};

const MIB: u64 = 1024 * 1024;

fn bytes_of(seed: u64, len: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A [`TestTarget`] that serves blobs as a network does: in 64 KiB chunks with a pause
/// between them, so that fetches overlap and blocks arrive in pieces.
#[derive(Default)]
struct Source(TestTarget);

impl Source {
    fn new() -> Arc<Source> {
        Arc::new(Source::default())
    }

    /// A source whose every request stalls.
    fn stalling() -> Arc<Source> {
        let s = Source::new();
        s.0.delay_fetches(Some(Duration::from_secs(3600)));
        s
    }

    fn add(&self, data: &[u8]) -> Descriptor {
        self.0
            .store()
            .add("application/octet-stream", Bytes::copy_from_slice(data))
    }

    /// A descriptor of `data` whose bytes are served with the first one flipped.
    fn add_corrupt(&self, data: &[u8]) -> Descriptor {
        let desc = self.add(data);
        self.0.corrupt(&desc.digest);
        desc
    }
}

#[async_trait]
impl Target for Source {
    fn name(&self) -> String {
        self.0.name()
    }
    async fn resolve(&self, reference: &str) -> Result<Descriptor> {
        self.0.resolve(reference).await
    }
    async fn fetch(&self, desc: &Descriptor) -> Result<ByteStream> {
        self.fetch_range(desc, 0, desc.size).await
    }
    async fn fetch_range(&self, desc: &Descriptor, offset: u64, len: u64) -> Result<ByteStream> {
        let chunks = self.0.fetch_range(desc, offset, len).await?;
        let chunks = chunks.flat_map(|chunk| {
            let pieces: Vec<Result<Bytes>> = match chunk {
                Ok(b) => (0..b.len())
                    .step_by(64 * 1024)
                    .map(|i| Ok(b.slice(i..(i + 64 * 1024).min(b.len()))))
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            futures_util::stream::iter(pieces)
        });
        Ok(Box::pin(chunks.then(|c| async move {
            tokio::time::sleep(Duration::from_micros(200)).await;
            c
        })))
    }
    async fn exists(&self, desc: &Descriptor) -> Result<bool> {
        self.0.exists(desc).await
    }
    async fn push(&self, desc: &Descriptor, content: ByteStream) -> Result<()> {
        self.0.push(desc, content).await
    }
    async fn push_manifest(
        &self,
        desc: &Descriptor,
        bytes: Bytes,
        tag: Option<&str>,
    ) -> Result<()> {
        self.0.push_manifest(desc, bytes, tag).await
    }
    async fn tag(&self, desc: &Descriptor, tag: &str) -> Result<()> {
        self.0.tag(desc, tag).await
    }
}

fn open(dir: &Path, source: &Arc<Source>, disk_limit: u64) -> Arc<BlobCache> {
    open_with_memory(dir, source, disk_limit, 64 * MIB)
}

fn open_with_memory(
    dir: &Path,
    source: &Arc<Source>,
    disk_limit: u64,
    memory_limit: u64,
) -> Arc<BlobCache> {
    BlobCache::new(
        source.clone(),
        CacheOptions {
            dir: dir.to_path_buf(),
            disk_limit,
            memory_limit,
        },
    )
    .unwrap()
}

/// Reads a whole blob as the kernel does: 128 KiB at a time, with a prefetch window ahead.
async fn read_all(
    cache: &Arc<BlobCache>,
    desc: &Descriptor,
) -> std::result::Result<Vec<u8>, Errno> {
    let mut out = Vec::with_capacity(desc.size as usize);
    let step = 128 * 1024;
    while (out.len() as u64) < desc.size {
        let at = out.len() as u64;
        let b = cache.read(desc, at, step, at..at + 4 * MIB).await?;
        assert!(!b.is_empty(), "short read at {at}");
        out.extend_from_slice(&b);
    }
    Ok(out)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_caches_on_one_dir_read_one_blob_at_once_and_keep_it() {
    let dir = tempfile::tempdir().unwrap();
    let source = Source::new();
    let data = bytes_of(4, 20 * MIB);
    let desc = source.add(&data);
    let complete = dir.path().join("blobs/sha256").join(desc.digest.hex());
    for round in 0..4 {
        // New caches each round, as new mounts; the blob is gone so that both fetch it.
        let _ = std::fs::remove_file(&complete);
        let (a, b) = (
            open(dir.path(), &source, 1 << 40),
            open(dir.path(), &source, 1 << 40),
        );
        let (ra, rb) = tokio::join!(read_all(&a, &desc), read_all(&b, &desc));
        assert!(
            ra == Ok(data.clone()),
            "round {round}: first cache read wrong bytes"
        );
        assert!(
            rb == Ok(data.clone()),
            "round {round}: second cache read wrong bytes"
        );
        for c in [&a, &b] {
            assert!(
                !c.is_poisoned(&desc.digest),
                "round {round}: {:?}",
                c.last_error()
            );
            assert!(c.is_verified(&desc), "round {round}");
            // And it keeps reading.
            assert_eq!(
                c.read(&desc, 5 * MIB, 100, 0..0).await.unwrap(),
                data[5 << 20..][..100]
            );
        }
        assert!(
            complete.exists(),
            "round {round}: the verified blob was deleted"
        );
        assert_eq!(
            names(&dir.path().join("partial/sha256")),
            Vec::<String>::new(),
            "round {round}: partial files left"
        );
        // A third "process" finds it complete and fetches nothing.
        let c = open(dir.path(), &source, 1 << 40);
        assert_eq!(read_all(&c, &desc).await.unwrap(), data);
        assert_eq!(c.fetched.load(Ordering::Relaxed), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_by_another_cache_never_breaks_a_blob_being_read() {
    let dir = tempfile::tempdir().unwrap();
    let source = Source::new();
    let (d1, d2) = (bytes_of(5, 6 * MIB), bytes_of(6, 6 * MIB));
    let (b1, b2) = (source.add(&d1), source.add(&d2));
    let a = open(dir.path(), &source, 1 << 40);
    // Half of b1 in a partial file that `a` fills.
    for at in (0..3 * MIB).step_by(128 * 1024) {
        a.read(&b1, at, 128 * 1024, 0..0).await.unwrap();
    }
    // Another cache with a tiny bound evicts all it can: not `a`'s partial file.
    let small = open(dir.path(), &source, 1);
    assert_eq!(read_all(&small, &b2).await.unwrap(), d2);
    small.enforce_disk_limit();
    assert!(dir
        .path()
        .join("partial/sha256")
        .join(b1.digest.hex())
        .exists());
    assert_eq!(read_all(&a, &b1).await.unwrap(), d1);
    assert!(a.is_verified(&b1), "{:?}", a.last_error());
    // Evicting a complete blob that `a` reads leaves `a` reading it.
    small.enforce_disk_limit();
    assert!(!dir
        .path()
        .join("blobs/sha256")
        .join(b1.digest.hex())
        .exists());
    assert_eq!(read_all(&a, &b1).await.unwrap(), d1);
    assert!(a.last_error().is_none(), "{:?}", a.last_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_larger_than_the_bound_is_read_and_verified_without_touching_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let source = Source::new();
    let data = bytes_of(7, 20 * MIB);
    let desc = source.add(&data);
    let cache = open(dir.path(), &source, 4 * MIB);
    assert_eq!(read_all(&cache, &desc).await.unwrap(), data);
    assert_eq!(cache.disk_usage().0, 0);
    let why = cache.last_error().expect("the reason is kept");
    assert!(why.contains("larger than the cache bound"), "{why}");
    let blob = cache.blobs.lock().unwrap()[&desc.digest].clone();
    assert!(
        blob.state.lock().unwrap().verified,
        "a sequential read verifies it"
    );
    // Random reads after eviction from memory fetch again.
    let small = open_with_memory(dir.path(), &source, 4 * MIB, MIB);
    for at in [15 * MIB, MIB, 19 * MIB + 5, 3] {
        let got = small
            .read(&desc, at, 300_000, at..at + 2 * MIB)
            .await
            .unwrap();
        assert_eq!(
            got,
            data[at as usize..][..300_000.min(data.len() - at as usize)]
        );
    }
    assert_eq!(small.disk_usage().0, 0);
    // Whole copies stream to their destination.
    let dest = dir.path().join("copy");
    small.copy_to(&desc, &dest).await.unwrap();
    assert!(std::fs::read(&dest).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_bytes_of_an_uncached_blob_fail_a_sequential_reader_before_eof() {
    let dir = tempfile::tempdir().unwrap();
    let source = Source::new();
    let data = bytes_of(8, 12 * MIB);
    let desc = source.add_corrupt(&data);
    let cache = open(dir.path(), &source, 4 * MIB);
    assert_eq!(read_all(&cache, &desc).await, Err(libc::EIO.into()));
    assert!(cache.is_poisoned(&desc.digest));
    let small = source.add_corrupt(&data[..MIB as usize]);
    assert_eq!(cache.read(&small, 0, 10, 0..0).await, Err(libc::EIO.into()));
    assert_eq!(cache.disk_usage().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_files_count_against_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let source = Source::new();
    let (d1, d2) = (bytes_of(9, 8 * MIB), bytes_of(10, 8 * MIB));
    let (b1, b2) = (source.add(&d1), source.add(&d2));
    let limit = 10 * MIB;
    let cache = open(dir.path(), &source, limit);
    // b1 half-read: a partial file being filled, which eviction must spare.
    for at in (0..4 * MIB).step_by(128 * 1024) {
        cache.read(&b1, at, 128 * 1024, 0..0).await.unwrap();
    }
    assert_eq!(read_all(&cache, &b2).await.unwrap(), d2);
    let (used, bound) = cache.disk_usage();
    assert!(used <= bound, "{used} bytes on disk, bound {bound}");
    assert!(cache.last_error().unwrap().contains("cache is full"));
    assert_eq!(read_all(&cache, &b1).await.unwrap(), d1);
    assert!(cache.is_verified(&b1));
    assert!(cache.disk_usage().0 <= limit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_block_fails_at_the_deadline_and_a_retry_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let source = Source::stalling();
    let desc = source.add(&bytes_of(11, 6 * MIB));
    let cache = open(dir.path(), &source, 1 << 40);
    cache.set_read_deadline(Duration::from_millis(700));
    let started = Instant::now();
    let first = tokio::time::timeout(Duration::from_secs(10), cache.read(&desc, 0, 4096, 0..MIB))
        .await
        .expect("a stalled read must not hang");
    assert_eq!(first, Err(libc::EIO.into()));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(650), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    // The kernel's retry of the failed read joins the stalled request: it fails at once.
    let again = Instant::now();
    assert_eq!(
        cache.read(&desc, 4096, 4096, 0..0).await,
        Err(libc::EIO.into())
    );
    assert!(
        again.elapsed() < Duration::from_millis(200),
        "{:?}",
        again.elapsed()
    );
    assert_eq!(source.0.counts().calls(Op::FetchRange), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_of_a_verified_uncached_blob_fetched_again_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let source = Source::new();
    let data = bytes_of(12, 12 * MIB);
    let desc = source.add(&data);
    // Memory for 4 blocks: everything read is fetched again later.
    let cache = open_with_memory(dir.path(), &source, 4 * MIB, MIB);
    assert_eq!(read_all(&cache, &desc).await.unwrap(), data);
    assert!(
        cache.blobs.lock().unwrap()[&desc.digest]
            .state
            .lock()
            .unwrap()
            .verified
    );
    assert_eq!(
        cache.read(&desc, 3 * MIB, 10, 0..0).await.unwrap(),
        data[3 << 20..][..10]
    );
    // The registry now serves other bytes for block 0, long out of memory.
    source.0.corrupt(&desc.digest);
    assert_eq!(cache.read(&desc, 0, 10, 0..0).await, Err(libc::EIO.into()));
    assert!(cache.is_poisoned(&desc.digest));
    assert!(cache.last_error().unwrap().contains("differs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_file_deleted_under_the_filler_costs_the_disk_copy_not_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let source = Source::new();
    let data = bytes_of(13, 6 * MIB);
    let desc = source.add(&data);
    let cache = open(dir.path(), &source, 1 << 40);
    for at in (0..3 * MIB).step_by(128 * 1024) {
        cache.read(&desc, at, 128 * 1024, 0..0).await.unwrap();
    }
    // Someone (a process ignoring the locks, a user) deletes the partial file.
    let partial = dir.path().join("partial/sha256").join(desc.digest.hex());
    std::fs::remove_file(&partial).unwrap();
    assert_eq!(read_all(&cache, &desc).await.unwrap(), data);
    assert!(!cache.is_poisoned(&desc.digest));
    assert!(cache.is_verified(&desc));
    assert_eq!(read_all(&cache, &desc).await.unwrap(), data);
    // Nothing was published from the deleted file; a later mount fetches the blob again.
    assert!(!dir
        .path()
        .join("blobs/sha256")
        .join(desc.digest.hex())
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_is_counted_again_after_a_sixteenth_of_the_bound_not_per_blob() {
    let dir = tempfile::tempdir().unwrap();
    let source = Source::new();
    let a = open(dir.path(), &source, 16 * MIB);
    // Another process stores 3 MiB after `a` counted the directory.
    let other = open(dir.path(), &source, 1 << 40);
    let big = source.add(&bytes_of(1, 3 * MIB));
    read_all(&other, &big).await.unwrap();
    let usage = || a.usage.load(Ordering::Relaxed);
    // Small blobs published one after another: `a` counts what it stores itself...
    let small: Vec<_> = (0..17)
        .map(|i| source.add(&bytes_of(10 + i, BLOCK)))
        .collect();
    for d in &small[..8] {
        read_all(&a, d).await.unwrap();
    }
    assert!(usage() < MIB, "counted the directory per blob: {}", usage());
    // ... and, past a sixteenth of its bound (1 MiB), the directory again.
    for d in &small[8..] {
        read_all(&a, d).await.unwrap();
    }
    assert!(usage() >= 4 * MIB, "never counted again: {}", usage());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_map_left_by_256_kib_blocks_is_ignored_not_misread() {
    // An older version cut blobs into 256 KiB blocks: its map of a 16 MiB blob has 64 bits,
    // here all set, over a partial file whose bytes are not the blob's. Read with that map,
    // the blob would come out as those bytes; ignored, every block is fetched again.
    let dir = tempfile::tempdir().unwrap();
    let source = Source::new();
    let data = bytes_of(7, 16 * MIB);
    let desc = source.add(&data);
    let partial = dir.path().join("partial/sha256").join(desc.digest.hex());
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::write(&partial, vec![0u8; data.len()]).unwrap();
    std::fs::write(
        disk::map_of(&partial),
        [0xffu8; (16 * MIB / (256 * 1024) / 8) as usize],
    )
    .unwrap();
    let cache = open(dir.path(), &source, 1 << 30);
    assert_eq!(read_all(&cache, &desc).await.unwrap(), data);
    assert_eq!(cache.fetched.load(Ordering::Relaxed), data.len() as u64);
}

#[test]
fn only_temporaries_nobody_wrote_to_for_ten_minutes_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let old = SystemTime::now() - Duration::from_secs(3600);
    let make = |name: &str, modified: SystemTime| {
        let f = std::fs::File::create(dir.path().join(name)).unwrap();
        f.set_modified(modified).unwrap();
    };
    make(".oras-fs-unzstd-killed", old);
    make(".oras-fs-unzstd-running", SystemTime::now());
    make("0123.tar", old);
    disk::remove_stale_temporaries(dir.path());
    assert_eq!(names(dir.path()), [".oras-fs-unzstd-running", "0123.tar"]);
}
