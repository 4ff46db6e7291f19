//! Serve-protocol requests (client → relay) at every 2.x minor (the first
//! byte picks it), with their payloads (AddToStoreNar's NAR, ImportPaths'
//! export stream) streamed as the session does. Checks: memory stays within
//! a budget proportional to the input; every parsed request re-encodes and
//! parses back equal; every accepted NAR re-encodes byte for byte.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nix_relay_fuzz::{Budget, LIMITS, budget_for, run, stream_nar};
use nix_relay_wire::Result;
use nix_relay_wire::export::{read_next, read_trailer, write_trailer};
use nix_relay_wire::serve::{Request, ServeCodec, ServeVersion};

async fn roundtrip(req: &Request, version: ServeVersion) {
    let mut buf = Vec::new();
    req.write(&mut buf, version);
    let mut r = &buf[..];
    let back = Request::read(&mut r, version, &LIMITS).await;
    let back = back
        .expect("a re-encoded request parses")
        .expect("not at EOF");
    assert_eq!(&back, req, "request round trip at {version:?}");
    assert!(r.is_empty(), "re-encoded request read exactly");
}

/// ImportPaths: `(u64 1 · NAR · trailer)* · u64 0`.
async fn import_paths(r: &mut &[u8]) -> Result<()> {
    while read_next(r).await? {
        stream_nar(r).await?;
        let t = read_trailer(r, &LIMITS).await?;
        let mut buf = Vec::new();
        write_trailer(&mut buf, &t);
        let back = read_trailer(&mut &buf[..], &LIMITS)
            .await
            .expect("trailer round trip");
        assert_eq!(back, t);
    }
    Ok(())
}

/// As `session::serve` runs it: the same codec.
async fn session(mut r: &[u8], version: ServeVersion) -> Result<()> {
    let codec = ServeCodec::new(version, LIMITS);
    while let Some(req) = codec.read_request(&mut r).await? {
        roundtrip(&req, version).await;
        match req {
            Request::AddToStoreNar { .. } => stream_nar(&mut r).await?,
            Request::ImportPaths => import_paths(&mut r).await?,
            _ => {}
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&minor, rest)) = data.split_first() else {
        return;
    };
    let version = ServeVersion(0x200 | u64::from(minor % 8));
    let _b = Budget::new(budget_for(data.len()));
    let _ = run(session(rest, version));
});
