//! Manifests (and indexes) from untrusted bytes: no panic; whatever parses serializes to bytes
//! that parse to the same manifest; layer selection and title checks never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use oras_fs::content::file::safe_join;
use oras_fs::manifest::{media_type, Manifest};
use oras_fs::oras::LayerFilter;
use serde_json::Value;

/// Equal JSON, floats within a relative 1e-15.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= 1e-15 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks what the registry claimed the content type was.
    let (declared, bytes) = match data.split_first() {
        Some((b, rest)) => (
            match b % 4 {
                0 => None,
                1 => Some(media_type::OCI_MANIFEST),
                2 => Some(media_type::OCI_INDEX),
                _ => Some(media_type::DOCKER_MANIFEST),
            },
            rest,
        ),
        None => (None, data),
    };
    let Ok(m) = Manifest::parse(bytes, declared) else {
        return;
    };
    let out = m.to_bytes();
    let again = Manifest::parse(&out, declared)
        .unwrap_or_else(|e| panic!("re-parsing our own serialization failed: {e}"));
    // Floats in unknown fields may move by one ULP: serde_json parses without the
    // `float_roundtrip` feature (fuzz/regressions/manifest/float-round-trip).
    let (a, b) = (
        serde_json::to_value(&again).unwrap(),
        serde_json::to_value(&m).unwrap(),
    );
    assert!(same(&a, &b), "manifest does not round-trip:\n{a}\n{b}");
    let _ = m.media_type();
    for filter in [
        LayerFilter::default(),
        LayerFilter {
            media_types: vec![],
            allow_all: true,
        },
    ] {
        if let Ok((taken, _skipped)) = filter.select(&m) {
            for layer in taken {
                let title = layer.title().expect("only titled layers are taken");
                if let Ok(p) = safe_join(Path::new("/fuzz/out"), title, false) {
                    assert!(p.starts_with("/fuzz/out"), "{title:?} -> {}", p.display());
                }
                let _ = layer.is_directory();
            }
        }
    }
});
