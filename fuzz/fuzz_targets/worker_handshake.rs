//! Both sides of the worker handshake on arbitrary peer bytes, at several
//! of our maximum versions; the client side then goes on reading what a
//! backend sends after an op (STDERR streams, each ended by LAST and a
//! BuildResult or by ERROR) with the decoders `backend::worker` runs
//! (`WorkerCodec::read_stderr_log_capped`, `read_build_result`). The first
//! byte picks the side and our version.
//! Checks: the negotiated version is min(ours, theirs) within 1.21 – ours;
//! only offered features are negotiated; every STDERR message and
//! BuildResult re-encodes and parses back equal; memory stays within a
//! budget proportional to the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nix_relay_fuzz::{Budget, LIMITS, budget_for, run};
use nix_relay_wire::Result;
use nix_relay_wire::worker::{
    StderrMsg, Trust, WorkerBuildResult, WorkerCodec, WorkerVersion, client_handshake,
    server_handshake,
};

const MINORS: [u8; 6] = [21, 25, 30, 34, 35, 38];

fn msg_roundtrip(m: &StderrMsg, version: WorkerVersion) {
    let mut buf = Vec::new();
    m.write(&mut buf, version);
    let back = run(StderrMsg::read(&mut &buf[..], version, &LIMITS));
    assert_eq!(
        &back.expect("a re-encoded message parses"),
        m,
        "at {version}"
    );
}

async fn server_side(mut r: &[u8], ours: WorkerVersion) {
    let mut out = Vec::new();
    let Ok(hs) = server_handshake(&mut r, &mut out, ours, "2.8.0", Trust::Trusted).await else {
        return;
    };
    assert!(
        WorkerVersion::MIN <= hs.version && hs.version <= ours,
        "{hs:?}"
    );
    assert!(hs.features.iter().all(|f| hs.client_features.contains(f)));
}

/// After the handshake: op replies as a backend sends them.
async fn client_side(mut r: &[u8], ours: WorkerVersion) -> Result<()> {
    let mut out = Vec::new();
    let hs = client_handshake(&mut r, &mut out, ours, &LIMITS).await?;
    let v = hs.version;
    assert!(WorkerVersion::MIN <= v && v <= ours, "{hs:?}");
    for m in &hs.messages {
        msg_roundtrip(m, v);
    }
    let codec = WorkerCodec::new(v, LIMITS);
    while !r.is_empty() {
        let (msg, _dropped) = codec.read_stderr_log_capped(&mut r).await?;
        msg_roundtrip(&msg, v);
        match msg {
            StderrMsg::Last => {
                let res = codec.read_build_result(&mut r).await?;
                let mut buf = Vec::new();
                res.write(&mut buf, v);
                let back = run(WorkerBuildResult::read(&mut &buf[..], v, &LIMITS));
                assert_eq!(
                    back.expect("a re-encoded BuildResult parses"),
                    res,
                    "at {v}"
                );
            }
            _ => {}
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let ours = WorkerVersion::new(1, MINORS[usize::from(sel >> 1) % MINORS.len()]);
    let _b = Budget::new(budget_for(data.len()));
    if sel & 1 == 0 {
        run(server_side(rest, ours));
    } else {
        let _ = run(client_side(rest, ours));
    }
});
