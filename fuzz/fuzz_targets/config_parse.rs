//! Config parsing and validation on arbitrary text. Checks: an error is
//! never a panic, a refused config names at least one problem, and the
//! verdict is deterministic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nix_relay::config::{Config, Error};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = std::path::Path::new("/etc/nix-relay/fuzz.toml");
    let first = Config::parse(text, origin);
    if let Err(Error::Invalid { problems, .. }) = &first {
        assert!(!problems.is_empty(), "a refused config names a problem");
        assert!(problems.iter().all(|p| !p.is_empty()), "{problems:?}");
    }
    let second = Config::parse(text, origin);
    assert_eq!(
        first.as_ref().map(|_| ()).map_err(ToString::to_string),
        second.as_ref().map(|_| ()).map_err(ToString::to_string),
        "same text, same verdict"
    );
});
