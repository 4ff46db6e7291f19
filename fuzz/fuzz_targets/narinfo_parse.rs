//! narinfo parsing on arbitrary text. Checks: whatever parses renders and
//! parses back equal, and rendering is stable; memory stays within a budget
//! proportional to the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nix_relay::store::NarInfo;
use nix_relay_fuzz::{Budget, budget_for};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _b = Budget::new(budget_for(data.len()));
    if let Ok(n) = NarInfo::parse(text) {
        let rendered = n.render();
        let again = NarInfo::parse(&rendered).expect("a rendered narinfo parses");
        assert_eq!(again, n);
        assert_eq!(again.render(), rendered, "rendering is stable");
    }
});
