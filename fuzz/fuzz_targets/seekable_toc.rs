//! Seekable layers from untrusted registries: `parse_footer`, `locate_toc` and `parse_toc`
//! never panic on arbitrary bytes, and whatever `parse_toc` accepts keeps its promises
//! (checked paths, chunks covering each file in order, member ranges inside the data).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oras_fs::archive::seekable::{locate_toc, parse_footer, parse_toc, FOOTER_SIZE};
use oras_fs::archive::{clean_path, ChunkAt, Entry, EntryKind};
use oras_fs::digest::Digest;

fn check(entries: &[Entry], toc_offset: u64) {
    let mut last = None;
    for e in entries {
        assert_eq!(clean_path(&e.path).expect("a checked path"), e.path);
        assert!(e.mode <= 0o7777);
        if let EntryKind::Hardlink { target } = &e.kind {
            assert_eq!(&clean_path(target).expect("a checked target"), target);
        }
        let EntryKind::File { size, chunks } = &e.kind else {
            continue;
        };
        let mut covered = 0;
        for c in chunks {
            assert_eq!(c.file_offset, covered);
            assert!(c.len > 0);
            covered += c.len;
            let ChunkAt::Member { offset, end } = c.at else {
                panic!("a seekable layer's chunk not in a member");
            };
            assert!(
                offset < end && end <= toc_offset,
                "{offset}..{end} past {toc_offset}"
            );
            assert!(last.is_none_or(|l| l < offset), "offsets go back");
            last = Some(offset);
        }
        assert_eq!(covered, *size);
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_footer(data);
    let len = data.len() as u64;
    if let Ok(range) = locate_toc(data, len) {
        let _ = parse_toc(&data[range.start as usize..range.end as usize], len, None);
    }
    // As a TOC member in a layer with room for the data it points at.
    let size = len + FOOTER_SIZE + (1 << 20);
    if let Ok(entries) = parse_toc(data, size, None) {
        check(&entries, size - FOOTER_SIZE - len);
    }
    let _ = parse_toc(data, size, Some(&Digest::of(data)));
    let _ = parse_toc(data, 0, None);
});
