//! `WWW-Authenticate` headers from untrusted registries: no panic, and a bearer challenge
//! always has a realm.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oras_fs::auth::{parse_challenge, Challenge};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(Challenge::Bearer { realm, .. }) = parse_challenge(s) {
        // The realm may be anything (it is parsed as a URL later), but it was present.
        let _ = realm.len();
    }
});
