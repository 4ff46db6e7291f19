//! Config parsing and validation on arbitrary text: errors, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = nix_relay::config::Config::parse(text, std::path::Path::new("fuzz.toml"));
});
