//! The NAR tokenizer on arbitrary bytes, fed in two pieces.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nix_relay::wire::nar::{NarLimits, NarParser};

fuzz_target!(|data: &[u8]| {
    let mut p = NarParser::new(NarLimits { max_nar_bytes: 1 << 20, ..Default::default() });
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let Ok(n) = p.feed(&data[..split]) else { return };
    if n == split {
        let _ = p.feed(&data[split..]);
    }
    let _ = p.finish();
});
