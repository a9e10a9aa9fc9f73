//! End-to-end tests of read-only, lazy mounts (`oras-fs mount`) against a real registry. Run
//! with `scripts/test.sh` (needs /dev/fuse and fusermount3).
//!
//! Every test pushes its own content to its own repository, mounts it on a temporary
//! mountpoint with a cache directory of its own, and unmounts whatever happens ([`Mount`]).

mod common;

use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1024 * 1024;
const EIO: i32 = libc::EIO;
const EROFS: i32 = libc::EROFS;

/// `cat PATH`, which must succeed.
#[track_caller]
fn cat(path: &Path) -> Vec<u8> {
    let out = run(Command::new("cat").arg(path));
    assert_ok(&out);
    out.stdout
}

/// The error number of reading `path` whole.
#[track_caller]
fn read_errno(path: &Path) -> i32 {
    errno_of(std::fs::read(path).map(|v| v.len()))
}

#[test]
fn listing_and_stat_show_pushed_sizes_without_fetching() {
    require_registry!();
    let repo = unique_repo("mount-ls");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("one.txt", format!("one of {repo}\n").into_bytes()),
        ("empty.txt", Vec::new()),
        ("a/b/c.txt", format!("nested in {repo}\n").into_bytes()),
        ("a/data.bin", random_bytes(&format!("{repo}-data"), 300_000)),
        (
            "big.bin",
            random_bytes(&format!("{repo}-big"), 5 * MIB as usize),
        ),
    ];
    let borrowed: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    push_contents(&reference(&repo, "v1"), &borrowed);

    let m = Mount::new(&reference(&repo, "v1"), &[]);
    let log = registry_log();
    let before = log_offset(&log);

    assert_eq!(
        list_dir(m.path()),
        [".oras", "a", "big.bin", "empty.txt", "one.txt"]
    );
    assert_eq!(list_dir(&m.join("a")), ["b", "data.bin"]);
    assert_eq!(list_dir(&m.join("a/b")), ["c.txt"]);
    for (name, data) in &files {
        let meta = std::fs::metadata(m.join(name)).unwrap_or_else(|e| panic!("stat {name}: {e}"));
        assert!(meta.is_file(), "{name} is not a file");
        assert_eq!(meta.len(), data.len() as u64, "size of {name}");
    }
    assert!(std::fs::metadata(m.join("a/b")).unwrap().is_dir());
    // `ls -lR` goes through readdir and stat of every entry.
    let out = run(Command::new("ls").arg("-lR").arg(m.path()));
    let listing = assert_ok(&out);
    for (name, data) in &files {
        let base = Path::new(name).file_name().unwrap().to_str().unwrap();
        let size = data.len().to_string();
        assert!(
            listing.lines().any(
                |l| l.ends_with(&format!(" {base}")) && l.split_whitespace().any(|w| w == size)
            ),
            "`ls -lR` shows no line for {name} with size {size}:\n{listing}"
        );
    }

    settle_log();
    let gets = blob_gets_since(&log, before, &repo);
    assert!(gets.is_empty(), "listing and stat fetched blobs: {gets:#?}");
}

#[test]
fn cat_returns_pushed_bytes_and_oras_files_describe_the_manifest() {
    require_registry!();
    let repo = unique_repo("mount-cat");
    let small = format!("small file of {repo}\n").into_bytes();
    let nested = random_bytes(&format!("{repo}-nested"), 70_000);
    let digest = push_contents(
        &reference(&repo, "v1"),
        &[("small.txt", &small), ("x/y/z.bin", &nested)],
    );

    let m = Mount::new(&reference(&repo, "v1"), &["--read-only"]);
    assert_eq!(cat(&m.join("small.txt")), small);
    assert_eq!(cat(&m.join("x/y/z.bin")), nested);
    // Again, now from the cache.
    assert_eq!(read_file(&m.join("x/y/z.bin")), nested);

    let shown = String::from_utf8(read_file(&m.join(".oras/digest"))).unwrap();
    assert_eq!(shown.trim(), digest);
    let manifest = read_file(&m.join(".oras/manifest.json"));
    assert_eq!(sha256_bytes(&manifest), digest, ".oras/manifest.json");
    let (_, from_registry) = get_manifest(&repo, "v1");
    assert_eq!(manifest, from_registry);
    let config = read_file(&m.join(".oras/config.json"));
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        sha256_bytes(&config),
        manifest["config"]["digest"].as_str().unwrap(),
        ".oras/config.json"
    );
}

#[test]
fn reading_a_range_of_a_large_file_fetches_only_that_range() {
    require_registry!();
    let repo = unique_repo("mount-range");
    let src = temp_dir();
    let big = src.path().join("big");
    write_random_file(&big, &repo, 256 * MIB);
    push_files(src.path(), &reference(&repo, "v1"), &["big"]);
    let layer = sha256_file(&big);

    let m = Mount::new(&reference(&repo, "v1"), &["--read-only"]);
    let log = registry_log();
    let before = log_offset(&log);
    let out = run(Command::new("dd")
        .arg(format!("if={}", m.join("big").display()))
        .args(["bs=1M", "skip=200", "count=1", "status=none"]));
    assert_ok(&out);
    let mut expected = vec![0u8; MIB as usize];
    let mut f = std::fs::File::open(&big).unwrap();
    f.seek(SeekFrom::Start(200 * MIB)).unwrap();
    f.read_exact(&mut expected).unwrap();
    assert!(
        out.stdout == expected,
        "dd of MiB 200 differs from the source"
    );

    settle_log();
    let served = bytes_served(&log, before, &layer);
    eprintln!("a 1 MiB read at 200 MiB fetched {served} bytes");
    assert!(
        served >= MIB,
        "only {served} bytes of {layer} served for a 1 MiB read"
    );
    assert!(
        served <= 4 * MIB,
        "a 1 MiB read of a 256 MiB file fetched {served} bytes ({} MiB)\n{}",
        served / MIB,
        m.daemon_log()
    );

    // A whole sequential read is right too.
    assert_eq!(sha256_file(&m.join("big")), layer);
}

#[test]
fn a_stalled_blob_does_not_block_other_files() {
    require_registry!();
    let repo = unique_repo("mount-stall");
    let slow = random_bytes(&format!("{repo}-slow"), 1024 * 1024);
    let fast = format!("fast file of {repo}\n").into_bytes();
    push_contents(
        &reference(&repo, "v1"),
        &[("slow.bin", &slow), ("fast.txt", &fast)],
    );
    let slow_digest = sha256_bytes(&slow);

    const STALL: Duration = Duration::from_secs(10);
    let proxy = StallProxy::start(&registry(), &format!("/blobs/{slow_digest}"), STALL);
    let m = Mount::new(&format!("{}/{repo}:v1", proxy.addr), &["--read-only"]);

    let started = Instant::now();
    let mut slow_cat = KillOnDrop::spawn(
        Command::new("cat")
            .arg(m.join("slow.bin"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // Wait until the slow blob's request is held by the proxy.
    while proxy.stalled.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the read of slow.bin never reached the registry\n{}",
            m.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let (mnt, fast_path) = (m.path().to_path_buf(), m.join("fast.txt"));
    let t = Instant::now();
    let seen = within(Duration::from_secs(2), move || {
        let names = list_dir(&mnt);
        let size = std::fs::metadata(&fast_path).map(|m| m.len()).ok();
        let data = std::fs::read(&fast_path).ok();
        (names, size, data)
    });
    let (names, size, data) = seen.unwrap_or_else(|| {
        panic!("ls/stat/cat of other files blocked behind the stalled blob for over 2 s")
    });
    eprintln!(
        "ls + stat + cat took {:?} while slow.bin stalls",
        t.elapsed()
    );
    assert_eq!(names, [".oras", "fast.txt", "slow.bin"]);
    assert_eq!(size, Some(fast.len() as u64));
    assert_eq!(data.as_deref(), Some(fast.as_slice()));
    assert!(
        slow_cat.try_wait().is_none(),
        "cat of the stalled file ended already (after {:?})",
        started.elapsed()
    );
    drop(slow_cat);
}

#[test]
fn corrupted_blobs_read_as_eio() {
    require_registry!();
    let repo = unique_repo("mount-corrupt");
    let small = random_bytes(&format!("{repo}-small"), 100_000);
    let large = random_bytes(&format!("{repo}-large"), 8 * MIB as usize);
    push_contents(
        &reference(&repo, "v1"),
        &[("small.bin", &small), ("large.bin", &large)],
    );
    // Flip bytes of the registry's copies, keeping their length.
    for (data, offsets) in [
        (&small, vec![50_000usize]),
        (&large, vec![100, 3 * MIB as usize + 7, 7 * MIB as usize]),
    ] {
        let path = blob_path(&registry_dir(), &sha256_bytes(data));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        for off in offsets {
            let mut b = [0u8; 1];
            f.seek(SeekFrom::Start(off as u64)).unwrap();
            f.read_exact(&mut b).unwrap();
            f.seek(SeekFrom::Start(off as u64)).unwrap();
            f.write_all(&[!b[0]]).unwrap();
        }
        assert_eq!(f.metadata().unwrap().len(), data.len() as u64);
    }

    let m = Mount::new(&reference(&repo, "v1"), &["--read-only"]);
    for name in ["small.bin", "large.bin"] {
        let p = m.join(name);
        assert_eq!(read_errno(&p), EIO, "first read of corrupted {name}");
        assert_eq!(read_errno(&p), EIO, "second read of corrupted {name}");
    }
    // Nothing corrupted is left in the cache to be served later.
    let blobs: Vec<String> = std::fs::read_dir(m.cache_dir().join("blobs/sha256"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for data in [&small, &large] {
        let hex = sha256_bytes(data)["sha256:".len()..].to_string();
        assert!(
            !blobs.contains(&hex),
            "corrupted blob {hex} kept as complete in the cache"
        );
    }
}

#[test]
fn unmount_works_while_a_file_is_open() {
    require_registry!();
    let repo = unique_repo("mount-busy");
    let data = random_bytes(&repo, 200_000);
    push_contents(&reference(&repo, "v1"), &[("held.bin", &data)]);
    let m = Mount::new(&reference(&repo, "v1"), &["--read-only"]);
    let mut held = std::fs::File::open(m.join("held.bin")).expect("opening held.bin");
    let mut head = [0u8; 1000];
    held.read_exact(&mut head).unwrap();
    assert_eq!(&head[..], &data[..1000]);

    let pid = m.daemon_pid();
    let t = Instant::now();
    let out = run_with_timeout(
        &mut oras_fs_cmd([OsStr::new("unmount"), m.path().as_os_str()]),
        b"",
        CONTROL_TIMEOUT,
    );
    assert_ok(&out);
    assert!(
        wait_unmounted(m.path(), Duration::from_secs(5)),
        "{} still mounted {:?} after `oras-fs unmount` with a file open",
        m.path().display(),
        t.elapsed()
    );
    // Detached: the process serves the open file until it is closed, then ends.
    assert!(stderr_of(&out).contains("Detached"), "{}", describe(&out));
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).unwrap();
    assert_eq!(&rest[..], &data[1000..], "the open file still reads");
    assert!(pid_alive(pid));
    drop(held);
    assert!(
        m.wait_for_daemon(Duration::from_secs(10)),
        "the mount process did not end after the last close"
    );
}

#[test]
fn mounting_a_missing_tag_fails_fast() {
    require_registry!();
    let repo = unique_repo("mount-missing");
    push_contents(&reference(&repo, "v1"), &[("x.txt", b"present\n")]);
    for r in [
        reference(&repo, "no-such-tag"),
        reference(&unique_repo("mount-no-repo"), "v1"),
    ] {
        let t = Instant::now();
        let out = match Mount::try_new(&r, None, &[]) {
            Ok(m) => panic!(
                "mounting the missing {r} succeeded\n{}",
                describe(&m.output)
            ),
            Err(out) => out,
        };
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "mount of missing {r} took {took:?}"
        );
        let stderr = stderr_of(&out).to_lowercase();
        assert!(
            stderr.contains("manifest") && stderr.contains("not found"),
            "the error does not say the manifest was not found\n{}",
            describe(&out)
        );
    }
}

#[test]
fn media_type_filter_hides_other_layers_unless_asked() {
    require_registry!();
    const OTHER: &str = "application/vnd.oras-fs.test.other";
    let repo = unique_repo("mount-filter");
    let src = temp_dir();
    let plain = format!("plain of {repo}\n");
    let other = format!("other of {repo}\n");
    write_file(&src.path().join("plain.txt"), &plain);
    write_file(&src.path().join("other.dat"), &other);
    let other_arg = format!("other.dat:{OTHER}");
    push_files(
        src.path(),
        &reference(&repo, "v1"),
        &["plain.txt", &other_arg],
    );
    let r = reference(&repo, "v1");

    let m = Mount::new(&r, &["--read-only"]);
    assert_eq!(list_dir(m.path()), [".oras", "plain.txt"]);
    drop(m);

    let m = Mount::new(&r, &["--read-only", "-a"]);
    assert_eq!(list_dir(m.path()), [".oras", "other.dat", "plain.txt"]);
    assert_eq!(read_file(&m.join("other.dat")), other.as_bytes());
    drop(m);

    let m = Mount::new(&r, &["--read-only", "-t", OTHER]);
    assert_eq!(list_dir(m.path()), [".oras", "other.dat"]);
    assert_eq!(read_file(&m.join("other.dat")), other.as_bytes());
}

#[test]
fn a_directory_layer_appears_as_a_directory() {
    require_registry!();
    let repo = unique_repo("mount-dir");
    let src = temp_dir();
    write_file(&src.path().join("tree/x.txt"), format!("x of {repo}\n"));
    write_file(
        &src.path().join("tree/sub/y.bin"),
        random_bytes(&repo, 40_000),
    );
    write_file(&src.path().join("tree/sub/deeper/z.txt"), "z\n");
    write_file(&src.path().join("loose.txt"), "loose\n");
    push_files(src.path(), &reference(&repo, "v1"), &["tree", "loose.txt"]);

    let m = Mount::new(&reference(&repo, "v1"), &["--read-only"]);
    assert_eq!(list_dir(m.path()), [".oras", "loose.txt", "tree"]);
    assert!(std::fs::metadata(m.join("tree")).unwrap().is_dir());
    assert!(std::fs::metadata(m.join("tree/sub/deeper"))
        .unwrap()
        .is_dir());
    assert_eq!(tree(&m.join("tree")), tree(&src.path().join("tree")));
    assert_eq!(cat(&m.join("tree/sub/y.bin")), random_bytes(&repo, 40_000));
}

#[test]
fn a_read_only_mount_refuses_writes_with_erofs() {
    require_registry!();
    let repo = unique_repo("mount-ro");
    let data = format!("read-only {repo}\n").into_bytes();
    push_contents(&reference(&repo, "v1"), &[("f.txt", &data)]);
    let m = Mount::new(&reference(&repo, "v1"), &["--read-only"]);
    let f = m.join("f.txt");
    assert_eq!(
        errno_of(std::fs::OpenOptions::new().write(true).open(&f)),
        EROFS,
        "opening for writing"
    );
    assert_eq!(
        errno_of(std::fs::OpenOptions::new().append(true).open(&f)),
        EROFS,
        "opening for appending"
    );
    assert_eq!(
        errno_of(std::fs::write(m.join("new.txt"), b"x")),
        EROFS,
        "creating"
    );
    assert_eq!(errno_of(std::fs::create_dir(m.join("d"))), EROFS, "mkdir");
    assert_eq!(errno_of(std::fs::remove_file(&f)), EROFS, "unlink");
    assert_eq!(
        errno_of(std::fs::rename(&f, m.join("g.txt"))),
        EROFS,
        "rename"
    );
    assert_eq!(read_file(&f), data, "the file is unchanged");
    let line = mount_line(m.path()).expect("mounted");
    assert!(
        line.split(' ')
            .nth(3)
            .unwrap_or("")
            .split(',')
            .any(|o| o == "ro"),
        "{line}"
    );
}

/// Two readers of the same cold blocks share the fetches: the registry sends the file once.
#[test]
fn concurrent_readers_of_one_file_cause_one_fetch() {
    require_registry!();
    let repo = unique_repo("mount-singleflight");
    let src = temp_dir();
    let file = src.path().join("data");
    write_random_file(&file, &repo, 24 * MIB);
    push_files(src.path(), &reference(&repo, "v1"), &["data"]);
    let layer = sha256_file(&file);

    let m = Mount::new(&reference(&repo, "v1"), &["--read-only"]);
    let log = registry_log();
    let before = log_offset(&log);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let path = m.join("data");
            std::thread::spawn(move || sha256_file(&path))
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), layer);
    }
    settle_log();
    let served = bytes_served(&log, before, &layer);
    assert_eq!(
        served,
        24 * MIB,
        "two concurrent readers fetched {served} bytes of a 24 MiB file"
    );
}

/// `--cache-size` bounds the disk cache: least recently used blobs go, even within one mount.
#[test]
fn the_disk_cache_stays_within_its_bound() {
    require_registry!();
    let repo = unique_repo("mount-evict");
    let src = temp_dir();
    let names: Vec<String> = (0..4).map(|i| format!("f{i}")).collect();
    for n in &names {
        write_random_file(&src.path().join(n), &format!("{repo}{n}"), 6 * MIB);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    push_files(src.path(), &reference(&repo, "v1"), &refs);

    let m = Mount::new(
        &reference(&repo, "v1"),
        &["--read-only", "--cache-size", "13M"],
    );
    for n in &names {
        assert_eq!(sha256_file(&m.join(n)), sha256_file(&src.path().join(n)));
    }
    let used: u64 = ["blobs/sha256", "partial/sha256"]
        .iter()
        .filter_map(|sub| std::fs::read_dir(m.cache_dir().join(sub)).ok())
        .flat_map(|rd| rd.flatten())
        .map(|e| {
            use std::os::unix::fs::MetadataExt;
            e.metadata().map(|md| md.blocks() * 512).unwrap_or(0)
        })
        .sum();
    assert!(
        used <= 13 * MIB,
        "the cache holds {used} bytes with --cache-size 13M"
    );
    // An evicted file still reads (it is fetched again).
    assert_eq!(
        sha256_file(&m.join("f0")),
        sha256_file(&src.path().join("f0"))
    );
}
