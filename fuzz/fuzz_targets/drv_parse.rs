//! `.drv` ATerm parsing (what a remote-store build reads from a client's
//! upload) on arbitrary bytes. Checks: whatever parses prints back to the
//! same bytes and parses again equal; the hash modulo and output paths of
//! a parsed derivation never panic; memory stays within a budget
//! proportional to the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nix_relay::wire::derivation::{Derivation, DerivedPath, hash_modulo, output_path};
use nix_relay::wire::hash::Sha256Hash;
use nix_relay::wire::store_path::StorePath;
use nix_relay_fuzz::{Budget, budget_for};

fuzz_target!(|data: &[u8]| {
    let _b = Budget::new(budget_for(data.len()));
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = DerivedPath::parse(s);
    }
    let Ok(drv) = Derivation::parse(data) else {
        return;
    };
    let printed = drv.unparse(false, None);
    let again = Derivation::parse(&printed).expect("a printed derivation parses");
    assert_eq!(again, drv);
    assert_eq!(again.unparse(false, None), printed, "printing is stable");
    let zero = Sha256Hash::digest(b"input");
    if let Ok(h) = hash_modulo(&drv, true, |_| Ok(zero)) {
        let p = StorePath::parse("/nix/store/00000000000000000000000000000000-x.drv").unwrap();
        for o in &drv.outputs {
            let _ = output_path(&p, &o.name, &h);
        }
    }
});
