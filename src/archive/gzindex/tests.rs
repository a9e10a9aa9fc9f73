use std::io::{Read, Write};

use super::*;
use crate::archive::{ChunkAt, EntryKind};
use crate::digest::Digest;

/// Text-like bytes from a tiny PRNG: compressible, yet with many distinct deflate blocks.
fn words(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "layer ", "oras ", "gzip ", "window ", "block ", "tar\n", "index ", "seek ", "zran ",
        "chunk ", "blob ", "42 ",
    ];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 7 == 0 {
            out.push((x >> 24) as u8);
        } else {
            out.extend_from_slice(WORDS[(x >> 32) as usize % WORDS.len()].as_bytes());
        }
    }
    out.truncate(len);
    out
}

fn header(ty: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(ty);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(100);
    h.set_mtime(1_700_000_000);
    h
}

/// A tar with files of many sizes, a directory, links and a name too long for the header.
fn sample_tar(big: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32| {
        let mut h = header(tar::EntryType::Regular, data.len() as u64, mode);
        b.append_data(&mut h, path, data).unwrap();
    };
    add(&mut b, "empty", b"", 0o644);
    add(&mut b, "small.txt", b"hello", 0o600);
    add(&mut b, "dir/big.bin", &words(big, 7), 0o755);
    add(&mut b, "dir/exact", &words(PIECE_SIZE as usize, 9), 0o644);
    let long = format!("dir/{}/file", "long-name".repeat(20));
    add(&mut b, &long, &words(100_000, 11), 0o4755);
    // A PAX path and fractional mtime override the header's.
    let pax_path = format!("dir/pax-{}", "p".repeat(150));
    let pax = [
        pax_record("path", &pax_path),
        pax_record("mtime", "1700000000.25"),
    ]
    .concat();
    let mut h = header(tar::EntryType::XHeader, pax.len() as u64, 0o644);
    b.append_data(&mut h, "PaxHeaders/short", &pax[..]).unwrap();
    let mut h = header(tar::EntryType::Regular, 3000, 0o640);
    h.set_mtime(5);
    b.append_data(&mut h, "short", &words(3000, 17)[..])
        .unwrap();
    let mut h = header(tar::EntryType::Directory, 0, 0o755);
    b.append_data(&mut h, "dir/sub/", &[][..]).unwrap();
    let mut h = header(tar::EntryType::Symlink, 0, 0o777);
    b.append_link(&mut h, "link", "dir/../small.txt").unwrap();
    let mut h = header(tar::EntryType::Link, 0, 0o644);
    b.append_link(&mut h, "hard", "small.txt").unwrap();
    add(&mut b, "tail", &words(3 * 1024 * 1024 + 5, 13), 0o644);
    b.into_inner().unwrap()
}

/// One PAX record: `LEN key=value\n`, where LEN counts the whole record.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}").len() + body.len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn opts(span: u64) -> BuildOptions {
    BuildOptions {
        span,
        ..BuildOptions::default()
    }
}

/// Ranges from a tiny PRNG, plus the edges.
fn ranges(size: u64, n: usize) -> Vec<Range<u64>> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = vec![0..1, 0..size, size - 1..size, size..size];
    for _ in 0..n {
        let start = next() % size;
        let len = next() % (3 * 1024 * 1024);
        out.push(start..(start + len).min(size));
    }
    out
}

/// Extraction through the index gives the same bytes as a full decompression.
fn check_extracts(index: &Index, gz: &[u8], full: &[u8]) {
    assert_eq!(index.uncompressed_size(), full.len() as u64);
    assert_eq!(index.compressed_size(), gz.len() as u64);
    let mut likely_enough = 0;
    for r in ranges(full.len() as u64, 40) {
        let (id, c) = index.compressed_range(r.clone());
        assert_eq!(
            c.start,
            index.checkpoints()[id].compressed_offset(),
            "range starts at its checkpoint"
        );
        let got = index
            .extract(id, &gz[c.start as usize..c.end as usize], r.clone())
            .unwrap_or_else(|e| panic!("extract {r:?} from {id}: {e}"));
        assert!(
            got == full[r.start as usize..r.end as usize],
            "bytes of {r:?}"
        );
        // The likely range starts at the same checkpoint, ends no later, and gives the same
        // bytes or an error, never others.
        let (lid, l) = index.likely_range(r.clone());
        assert_eq!((lid, l.start), (id, c.start));
        assert!(l.end <= c.end, "{l:?} past {c:?}");
        if let Ok(got) = index.extract(id, &gz[l.start as usize..l.end as usize], r.clone()) {
            assert!(
                got == full[r.start as usize..r.end as usize],
                "likely bytes of {r:?}"
            );
            likely_enough += 1;
        }
    }
    assert!(
        likely_enough * 2 >= 40,
        "the likely range was enough {likely_enough} times of 40"
    );
}

/// The listing matches what the tar crate reads, and each piece's digest verifies.
fn check_listing(index: &Index, tar_bytes: &[u8]) {
    let mut archive = tar::Archive::new(tar_bytes);
    let expected: Vec<(String, u64, u32, u64, Option<String>)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string(),
                e.size(),
                e.header().mode().unwrap(),
                e.raw_file_position(),
                e.link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned()),
            )
        })
        .collect();
    assert_eq!(index.entries().len(), expected.len());
    for (entry, (path, size, mode, pos, link)) in index.entries().iter().zip(expected) {
        assert_eq!(entry.path, path);
        assert_eq!(entry.mode, mode);
        assert_eq!(
            (entry.uid, entry.gid, entry.mtime),
            (1000, 100, 1_700_000_000)
        );
        match &entry.kind {
            EntryKind::File { size: s, chunks } => {
                assert_eq!(*s, size);
                let mut at = 0;
                for c in chunks {
                    assert_eq!(c.file_offset, at);
                    assert!(c.len <= PIECE_SIZE && c.len > 0);
                    let ChunkAt::Stream { offset } = c.at else {
                        panic!("not a stream chunk")
                    };
                    assert_eq!(offset, pos + at);
                    let piece = &tar_bytes[offset as usize..(offset + c.len) as usize];
                    c.digest.verify(piece).unwrap();
                    at += c.len;
                }
                assert_eq!(at, size);
            }
            EntryKind::Symlink { target } => assert_eq!(Some(target.clone()), link),
            EntryKind::Hardlink { target } => assert_eq!(Some(target.clone()), link),
            EntryKind::Dir => assert!(path.starts_with("dir/sub")),
            EntryKind::Special => panic!("no special entries here"),
        }
    }
}

#[test]
fn single_member_with_many_checkpoints() {
    let tar_bytes = sample_tar(5 * 1024 * 1024 + 17);
    let gz = gzip(&tar_bytes);
    let index = build(&gz[..], gz.len() as u64, &opts(64 * 1024)).unwrap();
    assert!(
        index.checkpoints().len() > 20,
        "{}",
        index.checkpoints().len()
    );
    assert!(index.checkpoints()[1..]
        .iter()
        .all(|c| !c.is_member_start()));
    // Block boundaries are rarely byte-aligned: priming must have been exercised.
    assert!(index
        .checkpoints()
        .iter()
        .any(|c| c.compressed_bits % 8 != 0));
    check_extracts(&index, &gz, &tar_bytes);
    check_listing(&index, &tar_bytes);
    let pax = index
        .entries()
        .iter()
        .find(|e| e.path.starts_with("dir/pax-ppp"));
    assert_eq!(pax.map(|e| e.mtime), Some(1_700_000_000));
}

#[test]
fn default_span_and_fast_compression() {
    let tar_bytes = sample_tar(12 * 1024 * 1024);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&tar_bytes).unwrap();
    let gz = e.finish().unwrap();
    let index = build(&gz[..], gz.len() as u64, &BuildOptions::default()).unwrap();
    check_extracts(&index, &gz, &tar_bytes);
    check_listing(&index, &tar_bytes);
}

#[test]
fn multi_member() {
    let tar_bytes = sample_tar(2 * 1024 * 1024);
    // Members cut at arbitrary points (like pigz or eStargz, whose members follow files).
    let cuts = [
        0,
        700,
        1_500_000,
        1_500_000,
        1_500_001,
        2_600_000,
        tar_bytes.len(),
    ];
    let gz: Vec<u8> = cuts
        .windows(2)
        .flat_map(|w| gzip(&tar_bytes[w[0]..w[1]]))
        .collect();
    let index = build(&gz[..], gz.len() as u64, &opts(100 * 1024)).unwrap();
    let member_starts = index
        .checkpoints()
        .iter()
        .filter(|c| c.is_member_start())
        .count();
    assert!(member_starts >= 2, "{:?}", index.checkpoints().len());
    check_extracts(&index, &gz, &tar_bytes);
    check_listing(&index, &tar_bytes);
}

#[test]
fn matches_gzip_dc_and_gztool() {
    let tar_bytes = sample_tar(3 * 1024 * 1024);
    let gz = gzip(&tar_bytes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer.tgz");
    std::fs::write(&path, &gz).unwrap();
    let Ok(out) = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(&path)
        .output()
    else {
        return; // no gzip here
    };
    assert!(out.status.success());
    let index = build(&gz[..], gz.len() as u64, &opts(32 * 1024)).unwrap();
    check_extracts(&index, &gz, &out.stdout);
    // gztool (another zran implementation), when installed: same bytes from the same offsets.
    let n = index.uncompressed_size();
    for start in [n / 3, n / 2 + 12_345, n - 70_000] {
        let r = start..start + 65_536;
        let Ok(out) = std::process::Command::new("gztool")
            .arg("-b")
            .arg(start.to_string())
            .arg("-I")
            .arg(dir.path().join("layer.gzi"))
            .arg(&path)
            .output()
        else {
            return;
        };
        assert!(out.status.success() && out.stdout.len() as u64 >= 65_536);
        let (id, c) = index.compressed_range(r.clone());
        let ours = index
            .extract(id, &gz[c.start as usize..c.end as usize], r)
            .unwrap();
        assert!(ours == out.stdout[..65_536], "gztool disagrees at {start}");
    }
}

#[test]
fn round_trip() {
    let tar_bytes = sample_tar(2 * 1024 * 1024);
    let gz = gzip(&tar_bytes);
    let index = build(&gz[..], gz.len() as u64, &opts(128 * 1024)).unwrap();
    let bytes = index.to_bytes();
    let back = Index::from_bytes(&bytes).unwrap();
    assert_eq!(back, index);
    check_extracts(&back, &gz, &tar_bytes);
}

#[test]
fn corrupt_index_bytes_are_refused() {
    let tar_bytes = sample_tar(300 * 1024);
    let gz = gzip(&tar_bytes);
    let index = build(&gz[..], gz.len() as u64, &opts(16 * 1024)).unwrap();
    let bytes = index.to_bytes();
    for len in (0..bytes.len()).step_by(7) {
        assert!(
            Index::from_bytes(&bytes[..len]).is_err(),
            "truncated to {len}"
        );
    }
    for i in (0..bytes.len()).step_by(3) {
        let mut b = bytes.clone();
        b[i] ^= 0x41;
        assert!(Index::from_bytes(&b).is_err(), "byte {i} flipped");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Index::from_bytes(&longer).is_err());
    // Huge counts and lengths behind a valid checksum.
    for at in [12usize, 16] {
        let mut b = bytes[..bytes.len() - 32].to_vec();
        let field = if at == 12 {
            12
        } else {
            16 + u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize
        };
        b[field..field + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let sum = Digest::of(&b);
        let hex = sum.hex();
        b.extend((0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()));
        assert!(Index::from_bytes(&b).is_err());
    }
}

#[test]
fn bad_layers_are_refused() {
    let tar_bytes = sample_tar(200 * 1024);
    let gz = gzip(&tar_bytes);
    let o = opts(16 * 1024);
    // Truncated, longer or shorter than announced, trailing garbage, not gzip.
    assert!(build(&gz[..gz.len() - 5], gz.len() as u64 - 5, &o).is_err());
    assert!(build(&gz[..], gz.len() as u64 - 1, &o).is_err());
    assert!(build(&gz[..], gz.len() as u64 + 1, &o).is_err());
    // Cut at and around every block boundary the index found: refused, never a hang.
    let index = build(&gz[..], gz.len() as u64, &o).unwrap();
    for cp in &index.checkpoints()[1..] {
        let at = cp.compressed_offset() as usize;
        for cut in [at, at + 1, at + 2] {
            assert!(build(&gz[..cut], cut as u64, &o).is_err(), "cut at {cut}");
        }
    }
    let mut garbage = gz.clone();
    garbage.extend_from_slice(b"junk");
    assert!(build(&garbage[..], garbage.len() as u64, &o).is_err());
    assert!(build(&tar_bytes[..], tar_bytes.len() as u64, &o).is_err());
    assert!(build(&[][..], 0, &o).is_err());
    let mut flipped = gz.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    assert!(build(&flipped[..], flipped.len() as u64, &o).is_err());
    // A gzip bomb stops at the limit.
    let bomb = gzip(&vec![0u8; 50 * 1024 * 1024]);
    let limited = BuildOptions {
        max_uncompressed: 10 * 1024 * 1024,
        ..o.clone()
    };
    let err = build(&bomb[..], bomb.len() as u64, &limited).unwrap_err();
    assert!(err.0.contains("inflates to more than"), "{err}");
    // An entry that climbs out refuses the whole index.
    let mut h = header(tar::EntryType::Regular, 1, 0o644);
    h.as_old_mut().name[..7].copy_from_slice(b"../evil");
    h.set_cksum();
    let mut t = h.as_bytes().to_vec();
    t.extend_from_slice(&[b'x'; 512]);
    t.extend_from_slice(&[0; 1024]);
    let gz = gzip(&t);
    let err = build(&gz[..], gz.len() as u64, &o).unwrap_err();
    assert!(err.0.contains(".."), "{err}");
    // A GNU long name claiming 64 MiB is not read into memory.
    let mut h = header(tar::EntryType::GNULongName, 64 << 20, 0o644);
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_cksum();
    let mut t = h.as_bytes().to_vec();
    t.resize(512 + (64 << 20) + 1024, b'a');
    let gz = gzip(&t);
    let err = build(&gz[..], gz.len() as u64, &o).unwrap_err();
    assert!(err.0.contains("bytes of headers"), "{err}");
}

#[test]
fn extract_refuses_bad_requests() {
    let tar_bytes = sample_tar(300 * 1024);
    let gz = gzip(&tar_bytes);
    let index = build(&gz[..], gz.len() as u64, &opts(16 * 1024)).unwrap();
    let n = index.uncompressed_size();
    assert!(index.extract(index.checkpoints().len(), &gz, 0..1).is_err());
    assert!(index.extract(0, &gz, 0..n + 1).is_err());
    let last = index.checkpoints().len() - 1;
    assert!(index.extract(last, &gz, 0..1).is_err());
    // Too few compressed bytes, or garbage: an error, not a panic.
    assert!(index.extract(0, &gz[..100], 0..n).is_err());
    let (id, _) = index.compressed_range(n / 2..n / 2 + 10);
    assert!(index.extract(id, &[0xff; 64], n / 2..n / 2 + 10).is_err());
}

#[test]
#[ignore = "benchmark: GZINDEX_BENCH=path/to/layer.tar.gz cargo test --release gzindex -- --ignored"]
fn bench_build() {
    use std::io::{Seek, SeekFrom};
    let Ok(path) = std::env::var("GZINDEX_BENCH") else {
        return;
    };
    let hwm = || {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .unwrap_or("");
        line.trim_start_matches("VmHWM:").trim().to_string()
    };
    let size = std::fs::metadata(&path).unwrap().len();
    // The pass streams from the file: the peak RSS right after it is the build's.
    let t = std::time::Instant::now();
    let file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    let index = build(file, size, &BuildOptions::default()).unwrap();
    let built = t.elapsed();
    let peak = hwm();
    let n = index.uncompressed_size();
    let mid = n / 2;
    let piece = 1024 * 1024;

    let t = std::time::Instant::now();
    let file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    let mut dec = flate2::read::MultiGzDecoder::new(file);
    std::io::copy(&mut (&mut dec).take(mid), &mut std::io::sink()).unwrap();
    let mut expected = vec![0u8; piece as usize];
    dec.read_exact(&mut expected).unwrap();
    std::io::copy(&mut dec, &mut std::io::sink()).unwrap();
    let flate = t.elapsed();

    let bytes = index.to_bytes();
    let windows: usize = index.checkpoints().iter().map(|c| c.window.len()).sum();
    if let Ok(out) = std::env::var("GZINDEX_BENCH_INDEX") {
        std::fs::write(out, &bytes).unwrap();
    }
    let t = std::time::Instant::now();
    let (id, c) = index.compressed_range(mid..mid + piece);
    let mut file = std::fs::File::open(&path).unwrap();
    file.seek(SeekFrom::Start(c.start)).unwrap();
    let mut compressed = vec![0u8; (c.end - c.start) as usize];
    file.read_exact(&mut compressed).unwrap();
    let got = index.extract(id, &compressed, mid..mid + piece).unwrap();
    let extract = t.elapsed();
    assert!(got == expected);
    if let Ok(out) = std::env::var("GZINDEX_BENCH_OUT") {
        std::fs::write(out, &got).unwrap();
        eprintln!("wrote 1 MiB from {mid}");
    }
    let mb = n as f64 / 1e6;
    eprintln!(
        "compressed {size} B, uncompressed {n} B, {} entries, {} checkpoints\n\
         index build {built:.2?} ({:.0} MB/s uncompressed, {:.0} MB/s compressed), peak RSS {peak}\n\
         MultiGzDecoder to a sink {flate:.2?} ({:.0} MB/s uncompressed)\n\
         index {} B ({:.2} MiB per GiB compressed; windows {windows} B)\n\
         extract 1 MiB from the middle: {extract:.2?}, {} compressed bytes from checkpoint {id}",
        index.entries().len(),
        index.checkpoints().len(),
        mb / built.as_secs_f64(),
        size as f64 / 1e6 / built.as_secs_f64(),
        mb / flate.as_secs_f64(),
        bytes.len(),
        bytes.len() as f64 / (size as f64 / (1u64 << 30) as f64) / (1 << 20) as f64,
        c.end - c.start,
    );
}

#[test]
fn the_root_entry_of_tar_dash_c_dot_is_not_listed() {
    let mut b = tar::Builder::new(Vec::new());
    for (name, ty) in [
        ("./", tar::EntryType::Directory),
        ("./etc/", tar::EntryType::Directory),
    ] {
        let mut h = header(ty, 0, 0o755);
        b.append_data(&mut h, name, &b""[..]).unwrap();
    }
    let mut h = header(tar::EntryType::Regular, 3, 0o644);
    b.append_data(&mut h, "./etc/hello", &b"hi\n"[..]).unwrap();
    let tar_bytes = b.into_inner().unwrap();
    let gz = gzip(&tar_bytes);
    let index = build(&gz[..], gz.len() as u64, &opts(1 << 20)).unwrap();
    let paths: Vec<&str> = index.entries().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["etc", "etc/hello"]);
}
