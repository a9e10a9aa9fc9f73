//! Gzip seek indexes from untrusted registries (referrer artifacts): `Index::from_bytes` on
//! arbitrary bytes never panics, and an index it accepts never makes `extract` panic or
//! run away, whatever compressed bytes it is given.
//!
//! Input: `len: u32 LE`, then `len` bytes of an index *without* its trailing sha256 (the
//! target appends it, so mutations reach the parser behind the checksum), then the compressed
//! bytes handed to `extract`. The raw input is also tried as a whole index.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oras_fs::archive::gzindex::Index;
use oras_fs::digest::Digest;

fn with_checksum(body: &[u8]) -> Vec<u8> {
    let hex = Digest::of(body).hex().to_string();
    let mut out = body.to_vec();
    out.extend((0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()));
    out
}

fuzz_target!(|data: &[u8]| {
    let _ = Index::from_bytes(data);
    let Some((len, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (body, compressed) = rest.split_at(len);
    let Ok(index) = Index::from_bytes(&with_checksum(body)) else {
        return;
    };
    let size = index.uncompressed_size();
    for (id, cp) in index.checkpoints().iter().enumerate().take(8) {
        let start = cp.uncompressed_offset();
        let end = start.saturating_add(64 * 1024).min(size);
        if let Ok(got) = index.extract(id, compressed, start..end) {
            assert_eq!(got.len() as u64, end - start);
        }
        let (first, range) = index.compressed_range(start..end);
        assert!(first <= id && range.start <= range.end);
    }
    // Ranges beyond the stream or before the checkpoint are refused, not served.
    assert!(index
        .extract(0, compressed, 0..size.saturating_add(1))
        .is_err());
});
