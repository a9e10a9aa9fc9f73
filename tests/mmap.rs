//! A mounted file read through mmap (issue #16): random page faults get the right bytes and
//! fetch little more than the kernel's read-around of each (no sequential prefetch window
//! for a reader that jumps). Bytes are counted from the registry's log. Run with
//! `scripts/test.sh` (needs /dev/fuse and fusermount3).

mod common;

use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use common::*;

const MIB: u64 = 1024 * 1024;
const PAGE: usize = 4096;

/// A read-only mapping of a whole file, unmapped on drop.
struct Mapped {
    at: *const u8,
    len: usize,
}

impl Mapped {
    fn of(file: &std::fs::File, len: usize) -> Mapped {
        // SAFETY: a fresh private read-only mapping of a file we keep open; checked below.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            at,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Mapped {
            at: at as *const u8,
            len,
        }
    }

    fn page(&self, offset: usize) -> &[u8] {
        assert!(offset + PAGE <= self.len);
        // SAFETY: within the mapping, which lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.at.add(offset), PAGE) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `of`.
        unsafe { libc::munmap(self.at as *mut libc::c_void, self.len) };
    }
}

#[test]
fn random_pages_of_an_mmapped_file_are_right_and_fetch_little() {
    require_registry!();
    let repo = unique_repo("mmap-random");
    let src = temp_dir();
    let big = src.path().join("big");
    let size = 64 * MIB;
    write_random_file(&big, &repo, size);
    push_files(src.path(), &reference(&repo, "v1"), &["big"]);
    let layer = sha256_file(&big);
    let source = std::fs::File::open(&big).unwrap();

    let m = Mount::new(&reference(&repo, "v1"), &["--read-only"]);
    let log = registry_log();
    let before = log_offset(&log);
    let file = std::fs::File::open(m.join("big")).unwrap();
    let map = Mapped::of(&file, size as usize);
    // Pages far apart (13 MiB or more, in no order a readahead would follow).
    const PAGES: u64 = 48;
    let mut expected = vec![0u8; PAGE];
    for i in 1..=PAGES {
        let at = ((i * 13 * MIB + i * 3 * PAGE as u64) % size) as usize;
        source.read_exact_at(&mut expected, at as u64).unwrap();
        assert!(map.page(at) == &expected[..], "page at {at} differs");
    }
    drop(map);

    settle_log();
    let served = bytes_served(&log, before, &layer);
    eprintln!("{PAGES} random pages through mmap fetched {served} bytes");
    // Each fault makes the kernel read up to 128 KiB around it (its readahead bound for a
    // FUSE file); that read spans at most three 64 KiB blocks.
    assert!(
        served <= PAGES * 192 * 1024,
        "{PAGES} random pages fetched {served} bytes ({} KiB a page)\n{}",
        served / PAGES / 1024,
        m.daemon_log()
    );
}
