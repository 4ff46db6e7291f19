//! Serve requests (client → relay) at every protocol minor: never a panic,
//! never an allocation beyond the (small) limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nix_relay::wire::{Limits, serve::{Request, ServeVersion}};

fuzz_target!(|data: &[u8]| {
    let Some((&minor, rest)) = data.split_first() else { return };
    let version = ServeVersion(0x200 | u64::from(minor % 8));
    let limits = Limits { max_string_bytes: 1 << 16, max_collection_len: 1 << 10, max_nar_bytes: 1 << 20 };
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async {
        let mut r = rest;
        while let Ok(Some(req)) = Request::read(&mut r, version, &limits).await {
            let mut buf = Vec::new();
            req.write(&mut buf, version);
        }
    });
});
