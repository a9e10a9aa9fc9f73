#![no_main]
// Placeholder: filled in with the reader it fuzzes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = data;
});
