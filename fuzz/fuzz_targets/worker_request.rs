//! Worker-protocol ops (client → relay) at the versions real clients speak
//! (the first byte picks one), with their payloads consumed as the session
//! does: framed streams (AddToStore ≥ 1.25, AddToStoreNar ≥ 1.23,
//! AddMultipleToStore with its paths and NARs, AddBuildLog) and the raw NAR
//! of the legacy AddToStore. Checks: memory stays within a budget
//! proportional to the input; every parsed request re-encodes and parses
//! back equal; every accepted NAR re-encodes byte for byte.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nix_relay_fuzz::{Budget, LIMITS, budget_for, run, stream_nar};
use nix_relay_wire::worker::values::PATH_INFO_LAYOUT;
use nix_relay_wire::worker::{
    FramedReader, NarUpload, Request, WorkerCodec, WorkerVersion, write_worker_valid_path_info,
};
use nix_relay_wire::{Error, Result};
use tokio::io::AsyncReadExt;

/// 1.21 (Nix 2.3) … 1.38 (Nix ≥ 2.24): every minor where a field or an op
/// appears or changes.
const MINORS: [u8; 12] = [21, 22, 23, 25, 27, 30, 32, 34, 35, 36, 37, 38];

async fn roundtrip(req: &Request, version: WorkerVersion) {
    let mut buf = Vec::new();
    req.write(&mut buf, version);
    let mut r = &buf[..];
    let back = Request::read(&mut r, version, &LIMITS).await;
    let back = back
        .expect("a re-encoded request parses")
        .expect("not at EOF");
    assert_eq!(&back, req, "request round trip at {version}");
    assert!(r.is_empty(), "re-encoded request read exactly");
}

/// AddMultipleToStore's framed content: count, then (info · NAR) each,
/// read with the session's decoders.
async fn add_multiple(r: &mut &[u8], codec: WorkerCodec) -> Result<()> {
    let n = codec.read_add_multiple_count(r).await?;
    for _ in 0..n {
        let info = codec.read_upload_path_info(r).await?;
        let mut buf = Vec::new();
        write_worker_valid_path_info(&mut buf, &info, PATH_INFO_LAYOUT);
        let back = codec.read_upload_path_info(&mut &buf[..]).await;
        assert_eq!(back.expect("path info round trip"), info);
        stream_nar(r).await?;
    }
    Ok(())
}

/// A framed payload, read whole (it is bounded by the input) and then
/// interpreted; the reader must end exactly at the terminator.
async fn framed(r: &mut &[u8], multiple: Option<WorkerCodec>) -> Result<()> {
    let mut fr = FramedReader::new(*r, &LIMITS);
    let mut content = Vec::new();
    let res = fr.read_to_end(&mut content).await;
    let done = fr.is_done();
    *r = fr.into_inner();
    res.map_err(|e| Error::read("framed payload", e))?;
    assert!(done, "read_to_end stops only at the terminator");
    if let Some(codec) = multiple {
        add_multiple(&mut &content[..], codec).await?;
    }
    Ok(())
}

/// As `session::worker` runs it: the same codec, the same version gates.
async fn session(mut r: &[u8], version: WorkerVersion) -> Result<()> {
    let codec = WorkerCodec::new(version, LIMITS);
    while let Some(req) = codec.read_request(&mut r).await? {
        roundtrip(&req, version).await;
        match req {
            Request::AddToStore { .. } | Request::AddBuildLog { .. } => {
                framed(&mut r, None).await?
            }
            Request::AddMultipleToStore { .. } => framed(&mut r, Some(codec)).await?,
            Request::AddToStoreNar { .. } if codec.nar_upload() == NarUpload::Framed => {
                framed(&mut r, None).await?
            }
            Request::AddToStoreLegacy(_) => stream_nar(&mut r).await?,
            // Below 1.23 the NAR is pulled with STDERR_READ: a dialogue.
            Request::AddToStoreNar { .. } => return Ok(()),
            _ => {}
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&v, rest)) = data.split_first() else {
        return;
    };
    let version = WorkerVersion::new(1, MINORS[usize::from(v) % MINORS.len()]);
    let _b = Budget::new(budget_for(data.len()));
    let _ = run(session(rest, version));
});
