//! References, digests and output paths from untrusted strings: no panic, and what parses
//! round-trips; a path `safe_join` accepts never leaves its root.
#![no_main]

use std::path::{Component, Path};
use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use oras_fs::content::file::safe_join;
use oras_fs::digest::Digest;
use oras_fs::reference::Reference;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Reference::from_str(s) {
        let again = Reference::from_str(&r.to_string())
            .unwrap_or_else(|e| panic!("{s:?} parsed, but its display {r} does not: {e}"));
        assert_eq!(again, r, "{s:?} does not round-trip");
        assert!(!r.target().is_empty());
        let _ = r.is_localhost();
        let _ = r.with_target(s);
    }
    if let Ok(d) = Digest::from_str(s) {
        assert_eq!(d.to_string(), s);
        assert_eq!(format!("{}:{}", d.algorithm(), d.hex()), s);
    }
    let root = Path::new("/fuzz/root");
    if let Ok(p) = safe_join(root, s, false) {
        let rel = p
            .strip_prefix(root)
            .unwrap_or_else(|_| panic!("safe_join({s:?}) = {} is outside the root", p.display()));
        assert!(
            rel.components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
            "safe_join({s:?}) = {} climbs or is absolute",
            p.display()
        );
        assert!(
            rel.components().any(|c| matches!(c, Component::Normal(_))),
            "safe_join({s:?}) names no file"
        );
    }
});
