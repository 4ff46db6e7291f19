//! Worker protocol vectors beyond the Nix 2.8 captures.
//!
//! `hand-*.hex` (tests/golden/worker): vectors WRITTEN BY HAND from
//! nix-protocols.md §4 for versions no captured peer speaks (1.35, 1.37,
//! 1.38); not captures. Plus the two handshake orders (Nix ≤ 2.22 waits
//! after the magic) and the relay's own client against its own server at
//! every version.

use std::time::Duration;

use nix_relay::wire::worker::stderr::StderrMsg;
use nix_relay::wire::worker::{Reply, Trust, WorkerVersion, client_handshake, server_handshake};
use nix_relay::wire::{Error, Limits};
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

const PER_CASE: Duration = Duration::from_secs(5);

// ---- Hand-written vectors (tests/golden/worker/hand-*.hex, NOT captures) ----

/// Parses a `.hex` vector into (c2s, s2c).
fn load_hex(name: &str) -> (Vec<u8>, Vec<u8>) {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/worker")
        .join(format!("{name}.hex"));
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let text = String::from_utf8(bytes).unwrap();
    let (mut c2s, mut s2c) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let line = line.split('#').next().unwrap().trim();
        let Some((dir, hex)) = line.split_once(' ') else {
            continue;
        };
        let hex: String = hex.split_whitespace().collect();
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap());
        match dir {
            "C" => c2s.extend(bytes),
            "S" => s2c.extend(bytes),
            d => panic!("{name}: bad direction {d:?}"),
        }
    }
    (c2s, s2c)
}

struct HandHello {
    file: &'static str,
    version: WorkerVersion,
    nix: &'static str,
    trust: Trust,
    client_side: bool,
    client_features: &'static [&'static str],
}

const HAND_HELLOS: [HandHello; 4] = [
    HandHello {
        file: "hand-handshake-1.35",
        version: WorkerVersion::V1_35,
        nix: "2.18.1",
        trust: Trust::Trusted,
        client_side: true,
        client_features: &[],
    },
    HandHello {
        file: "hand-handshake-1.37",
        version: WorkerVersion::V1_37,
        nix: "2.20.0",
        trust: Trust::NotTrusted,
        client_side: true,
        client_features: &[],
    },
    HandHello {
        file: "hand-handshake-1.38",
        version: WorkerVersion::V1_38,
        nix: "2.24.0",
        trust: Trust::Trusted,
        client_side: true,
        client_features: &[],
    },
    HandHello {
        file: "hand-handshake-1.38-features",
        version: WorkerVersion::V1_38,
        nix: "2.35.0",
        trust: Trust::Trusted,
        client_side: false,
        client_features: &["add-to-store-scanning", "realisation-with-path-not-hash"],
    },
];

#[tokio::test]
async fn hand_written_handshakes_match_both_sides() {
    for h in &HAND_HELLOS {
        let (c2s, s2c) = load_hex(h.file);
        let (mut r, mut out) = (&c2s[..], Vec::new());
        let hs = server_handshake(&mut r, &mut out, h.version, h.nix, h.trust)
            .await
            .unwrap();
        assert!(r.is_empty(), "{}: c2s left", h.file);
        assert_eq!(hs.version, h.version, "{}", h.file);
        assert_eq!(hs.client_features, h.client_features, "{}", h.file);
        assert!(hs.features.is_empty(), "{}", h.file);
        StderrMsg::Last.write(&mut out, hs.version);
        assert_eq!(out, s2c, "{}: server side", h.file);
        if !h.client_side {
            assert_eq!(hs.cpu_affinity, Some(3), "{}", h.file);
            continue;
        }
        let (mut r, mut out) = (&s2c[..], Vec::new());
        let hs = client_handshake(&mut r, &mut out, h.version, &Limits::default())
            .await
            .unwrap();
        assert!(r.is_empty(), "{}: s2c left", h.file);
        assert_eq!(out, c2s, "{}: client side", h.file);
        assert_eq!(hs.version, h.version);
        assert_eq!(hs.daemon_version.as_deref(), Some(h.nix));
        assert_eq!(hs.trust, Some(h.trust));
    }
}

#[tokio::test]
async fn hand_written_build_result_with_cpu_times_at_1_37() {
    let (_, s2c) = load_hex("hand-buildresult-1.37");
    let limits = Limits::default();
    let v = WorkerVersion::V1_37;
    let mut r = &s2c[..];
    assert_eq!(
        StderrMsg::read(&mut r, v, &limits).await.unwrap(),
        StderrMsg::Last
    );
    let res = nix_relay::wire::worker::WorkerBuildResult::read(&mut r, v, &limits)
        .await
        .unwrap();
    assert!(r.is_empty());
    assert_eq!((res.cpu_user, res.cpu_system), (Some(1_234_567), None));
    assert_eq!(
        (res.base.start_time, res.base.stop_time),
        (1_700_000_000, 1_700_000_042)
    );
    assert_eq!(res.base.built_outputs.len(), 1);
    let mut buf = Vec::new();
    StderrMsg::Last.write(&mut buf, v);
    Reply::Build(res).write(&mut buf, v);
    assert_eq!(buf, s2c);
}

#[tokio::test]
async fn hand_written_structured_error_at_1_37() {
    use nix_relay::wire::worker::{StderrEnd, read_stderr_stream};
    let (_, s2c) = load_hex("hand-error-1.37");
    let v = WorkerVersion::V1_37;
    let mut r = &s2c[..];
    let mut seen = Vec::new();
    let end = read_stderr_stream(&mut r, v, &Limits::default(), |m| {
        seen.push(m);
        Ok(())
    })
    .await
    .unwrap();
    assert!(r.is_empty());
    let StderrEnd::Error(e) = end else {
        panic!("no error")
    };
    assert_eq!(e.message, b"path '/nix/store/x' is not valid");
    assert_eq!(e.traces, [b"while adding a path".to_vec()]);
    let mut buf = Vec::new();
    for m in seen.into_iter().chain([StderrMsg::Error(e)]) {
        m.write(&mut buf, v);
    }
    assert_eq!(buf, s2c);
}

/// Nix ≤ 2.22 sends only the magic and waits: the server must answer
/// before it can read the client's version.
#[tokio::test]
async fn server_answers_a_client_that_waits_after_the_magic() {
    use tokio::io::AsyncWriteExt;
    let (mut client, server) = tokio::io::duplex(64);
    let task = tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(server);
        server_handshake(
            &mut r,
            &mut w,
            WorkerVersion::LATEST,
            "relay",
            Trust::Trusted,
        )
        .await
    });
    let mut magic = Vec::new();
    nix_relay::wire::primitives::put_u64(&mut magic, nix_relay::wire::worker::WORKER_MAGIC_1);
    client.write_all(&magic).await.unwrap();
    let mut hello = [0u8; 16];
    timeout(PER_CASE, client.read_exact(&mut hello))
        .await
        .unwrap()
        .unwrap();
    let mut rest = Vec::new();
    for v in [WorkerVersion::V1_34.0, 0, 0] {
        nix_relay::wire::primitives::put_u64(&mut rest, v);
    }
    client.write_all(&rest).await.unwrap();
    let hs = task.await.unwrap().unwrap();
    assert_eq!(hs.version, WorkerVersion::V1_34);
    let mut version = [0u8; 16];
    client.read_exact(&mut version).await.unwrap();
    assert_eq!(&version[8..13], b"relay");
}

/// The relay's client against the relay's server, at every version.
#[tokio::test]
async fn relay_client_and_server_agree_at_every_version() {
    use tokio::io::AsyncWriteExt;
    for minor in 21..=38u8 {
        let v = WorkerVersion::new(1, minor);
        let (a, b) = tokio::io::duplex(256);
        let server = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(b);
            let hs = server_handshake(
                &mut r,
                &mut w,
                WorkerVersion::LATEST,
                "2.99",
                Trust::Trusted,
            )
            .await?;
            let mut last = Vec::new();
            StderrMsg::Last.write(&mut last, hs.version);
            w.write_all(&last).await.map_err(Error::Write)?;
            Ok::<_, Error>(hs.version)
        });
        let (mut r, mut w) = tokio::io::split(a);
        let hs = timeout(
            PER_CASE,
            client_handshake(&mut r, &mut w, v, &Limits::default()),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!((hs.version, server.await.unwrap().unwrap()), (v, v));
        assert_eq!(hs.daemon_version.is_some(), minor >= 33);
        assert_eq!(hs.trust, (minor >= 35).then_some(Trust::Trusted));
    }
}
