//! narinfo parsing; whatever parses must render and parse back equal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nix_relay::store::NarInfo;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(n) = NarInfo::parse(text) {
        let again = NarInfo::parse(&n.render()).expect("rendered narinfo parses");
        assert_eq!(again, n);
    }
});
