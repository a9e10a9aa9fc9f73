//! Where a model file's tensors lie, so that a reader jumping to a tensor gets the whole
//! tensor fetched at once instead of a window that grows over several round trips. Model
//! loaders mmap a file and read whole tensors, in file order or picked at random; only the
//! jumps between tensors are unpredictable, and a safetensors file says in its header where
//! each tensor starts and ends.
//!
//! The safetensors layout: an 8-byte little-endian header length `n`, `n` bytes of JSON
//! mapping each tensor's name to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets
//! relative to the end of the header), then the tensors. Anything else, or a header that
//! does not parse, gives no extents: reads then go by the plain access pattern.

use std::ops::Range;
use std::sync::Arc;

use super::filesystem::OrasFs;
use super::handle::TensorHint;
use super::tree::Source;

/// Larger headers are not read for a hint (the format allows 100 MB; real ones are well
/// under 1 MiB).
pub(super) const MAX_HEADER: u64 = 16 * 1024 * 1024;

/// Whether a file is worth reading a header for, by its name.
pub(super) fn is_candidate(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.to_ascii_lowercase().ends_with(".safetensors"))
}

/// The byte ranges of a file's tensors, sorted, absolute.
#[derive(Debug, PartialEq)]
pub(super) struct Extents(Vec<Range<u64>>);

impl Extents {
    /// Parses a safetensors header (`header` is the `n` bytes after the length) of a file of
    /// `size` bytes; None if it is not one, or names a tensor past the end of the file.
    pub(super) fn from_safetensors(header: &[u8], size: u64) -> Option<Extents> {
        let base = 8 + header.len() as u64;
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(header).ok()?;
        let mut ranges = Vec::with_capacity(map.len());
        for (name, v) in &map {
            if name == "__metadata__" {
                continue;
            }
            let offsets = v.get("data_offsets")?.as_array()?;
            let (b, e) = match offsets.as_slice() {
                [b, e] => (b.as_u64()?, e.as_u64()?),
                _ => return None,
            };
            let (b, e) = (base.checked_add(b)?, base.checked_add(e)?);
            if b > e || e > size {
                return None;
            }
            if b < e {
                ranges.push(b..e);
            }
        }
        ranges.sort_by_key(|r| r.start);
        Some(Extents(ranges))
    }

    /// The end of the last tensor overlapping `range`: a read that straddles two tensors
    /// (the kernel's read-around starts before the page asked for) is after the second.
    pub(super) fn end_of_last_overlapping(&self, range: Range<u64>) -> Option<u64> {
        // Tensors starting before the range's end, the last of which may overlap it.
        let i = self.0.partition_point(|r| r.start < range.end);
        let last = self.0.get(i.checked_sub(1)?)?;
        (last.end > range.start).then_some(last.end)
    }
}

impl OrasFs {
    /// Reads the tensor extents of an open model file once, at its first read past the
    /// header's length field (a loader has read the header by then, so it comes from the
    /// cache). Reads meanwhile go by the plain pattern; a failure only loses the hint.
    pub(super) async fn read_tensor_extents(&self, fh: u64) {
        let desc = {
            let mut handles = self.handles.lock().unwrap();
            match handles.get_mut(&fh) {
                Some(h) if matches!(h.tensors, TensorHint::Unread) => match &h.source {
                    Source::Blob(d) => {
                        h.tensors = TensorHint::Loading;
                        d.clone()
                    }
                    _ => return,
                },
                _ => return,
            }
        };
        let extents = async {
            let len = self.cache.read(&desc, 0, 8, 0..0).await.ok()?;
            let n = u64::from_le_bytes(len.as_ref().try_into().ok()?);
            if n > MAX_HEADER || 8 + n > desc.size {
                return None;
            }
            let header = self.cache.read(&desc, 8, n, 0..0).await.ok()?;
            (header.len() as u64 == n).then(|| Extents::from_safetensors(&header, desc.size))?
        }
        .await;
        if let Some(h) = self.handles.lock().unwrap().get_mut(&fh) {
            h.tensors = match extents {
                Some(e) => {
                    tracing::debug!("{}: {} tensors", desc.digest, e.0.len());
                    TensorHint::Known(Arc::new(e))
                }
                None => TensorHint::None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(json: &str) -> Vec<u8> {
        json.as_bytes().to_vec()
    }

    #[test]
    fn a_safetensors_header_gives_absolute_sorted_extents() {
        let h = header(
            r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F16","shape":[2],"data_offsets":[4,100]},"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#,
        );
        let base = 8 + h.len() as u64;
        let e = Extents::from_safetensors(&h, base + 100).unwrap();
        assert_eq!(e, Extents(vec![base..base + 4, base + 4..base + 100]));
        // A read-around window from inside the first tensor into the second ends after
        // the second; one inside the first ends with it.
        assert_eq!(
            e.end_of_last_overlapping(base + 2..base + 10),
            Some(base + 100)
        );
        assert_eq!(e.end_of_last_overlapping(base..base + 3), Some(base + 4));
        // The header itself, or past the end, is no tensor.
        assert_eq!(e.end_of_last_overlapping(0..8), None);
        assert_eq!(e.end_of_last_overlapping(base + 100..base + 200), None);
    }

    #[test]
    fn anything_else_gives_no_extents() {
        for bad in [
            "not json",
            "[1,2]",
            r#"{"a":{"data_offsets":[5,1]}}"#,
            r#"{"a":{"data_offsets":[0]}}"#,
            r#"{"a":{"data_offsets":[0,-1]}}"#,
            r#"{"a":{"shape":[1]}}"#,
            r#"{"a":{"data_offsets":[0,1000000]}}"#,
        ] {
            assert_eq!(Extents::from_safetensors(&header(bad), 1000), None, "{bad}");
        }
        assert!(is_candidate("model-00001-of-00002.SafeTensors".as_ref()));
        assert!(!is_candidate("model.bin".as_ref()));
    }
}
