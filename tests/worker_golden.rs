//! Golden tests of the worker protocol codec (tests/golden/worker).
//!
//! `ng-top|fail|multi|many`: real Nix 2.8.0 `nix-daemon --stdio`
//! conversations (worker 1.34); `ng-226-*`, `ng-234-*`: real Nix 2.26.3 /
//! 2.34.8 clients against a real Nix 2.34.8 daemon (worker 1.38, with the
//! feature exchange).
//! Both directions are decoded with the crate's readers in lock step (each
//! reply with the reader for its request), every message is re-encoded and
//! must equal the recorded bytes, and nothing may be left over. The
//! handshakes run against the recorded other side and must produce the
//! recorded bytes.
//!
//! Hand-written vectors for newer versions and the handshake orders:
//! `worker_vectors.rs`.
//!
//! Truncation sweeps: every prefix of every c2s and s2c stream decodes to
//! whole messages (at a message boundary) or an end-of-stream error, within
//! 5 s, without panicking.

use std::ops::Range;
use std::time::Duration;

use nix_relay::wire::nar::{NarLimits, NarSummary, copy_nar};
use nix_relay::wire::path_info::ValidPathInfo;
use nix_relay::wire::primitives::read_u64;
use nix_relay::wire::store_path::StorePath;
use nix_relay::wire::worker::stderr::{STDERR_LAST, StderrMsg};
use nix_relay::wire::worker::values::read_upload_path_info;
use nix_relay::wire::worker::{
    FramedReader, FramedWriter, Reply, Request, Trust, WorkerVersion, client_handshake,
    server_handshake, write_worker_valid_path_info,
};
use nix_relay::wire::{Error, Limits};
use tokio::io::{AsyncReadExt, BufReader};
use tokio::time::timeout;

const NG: [&str; 4] = ["ng-top", "ng-fail", "ng-multi", "ng-many"];
const PER_CASE: Duration = Duration::from_secs(5);

fn load(name: &str, ext: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/worker")
        .join(format!("{name}.{ext}"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn used(all: &[u8], rest: &[u8]) -> usize {
    all.len() - rest.len()
}

/// Who spoke: the versions each side announced (the u64 after each magic)
/// and the daemon's identity, read from the recorded server hello.
#[derive(Debug, Clone)]
struct Peers {
    client: WorkerVersion,
    server: WorkerVersion,
    daemon_version: Option<String>,
    trust: Option<Trust>,
}

impl Peers {
    async fn of(c2s: &[u8], s2c: &[u8], limits: &Limits) -> Peers {
        let v = |b: &[u8]| WorkerVersion(u64::from_le_bytes(b[8..16].try_into().unwrap()));
        let (client, server) = (v(c2s), v(s2c));
        let hs = client_handshake(&mut &s2c[..], &mut Vec::new(), client, limits)
            .await
            .unwrap();
        assert_eq!(hs.version, client.min(server));
        Peers {
            client,
            server,
            daemon_version: hs.daemon_version,
            trust: hs.trust,
        }
    }
    fn negotiated(&self) -> WorkerVersion {
        self.client.min(self.server)
    }
}

/// What followed a request on the client stream.
#[derive(Debug)]
enum Payload {
    None,
    /// A framed stream: its decoded content, re-encoded, and the NARs in it.
    Framed {
        content: Vec<u8>,
        nars: Vec<(ValidPathInfo, NarSummary)>,
    },
}

#[derive(Debug)]
struct ClientMsg {
    req: Request,
    range: Range<usize>,
    payload: Payload,
    end: usize,
}

/// Reads one framed stream. AddMultipleToStore content is parsed (count,
/// then ValidPathInfo + NAR each) and re-encoded; other content is kept.
async fn read_framed(r: &mut &[u8], req: &Request, limits: &Limits) -> Result<Payload, Error> {
    let mut fr = BufReader::new(FramedReader::new(r, limits));
    let mut content = Vec::new();
    let mut nars = Vec::new();
    if let Request::AddMultipleToStore { .. } = req {
        let n = read_u64(&mut fr, "count").await?;
        nix_relay::wire::primitives::put_u64(&mut content, n);
        for _ in 0..n {
            let info = read_upload_path_info(&mut fr, limits).await?;
            write_worker_valid_path_info(&mut content, &info, WorkerVersion::new(1, 16));
            let start = content.len();
            let sum = copy_nar(&mut fr, &mut content, NarLimits::default()).await?;
            assert_eq!(content.len() - start, sum.size as usize);
            nars.push((info, sum));
        }
    }
    let mut rest = Vec::new();
    fr.read_to_end(&mut rest)
        .await
        .map_err(|e| Error::read("framed", e))?;
    assert!(fr.get_ref().is_done());
    if !matches!(req, Request::AddMultipleToStore { .. }) {
        content = rest;
    } else if !rest.is_empty() {
        return Err(Error::Protocol("bytes after the last NAR".into()));
    }
    Ok(Payload::Framed { content, nars })
}

fn has_framed_payload(req: &Request, v: WorkerVersion) -> bool {
    match req {
        Request::AddMultipleToStore { .. } | Request::AddBuildLog { .. } => true,
        Request::AddToStore { .. } => true,
        Request::AddToStoreNar { .. } => v.minor() >= 23,
        _ => false,
    }
}

/// Server side of the c2s stream: handshake (its output and the client
/// hello's length returned), then every request and payload.
async fn decode_c2s(
    c2s: &[u8],
    p: &Peers,
    limits: &Limits,
) -> Result<(Vec<u8>, usize, Vec<ClientMsg>), Error> {
    let mut r = c2s;
    let mut hello = Vec::new();
    let nix = p.daemon_version.as_deref().unwrap_or("");
    let trust = p.trust.unwrap_or(Trust::Unknown);
    let hs = server_handshake(&mut r, &mut hello, p.server, nix, trust).await?;
    assert_eq!(hs.version, p.negotiated());
    let hello_end = used(c2s, r);
    let mut msgs = Vec::new();
    loop {
        let start = used(c2s, r);
        let Some(req) = Request::read(&mut r, hs.version, limits).await? else {
            break;
        };
        let range = start..used(c2s, r);
        let payload = if has_framed_payload(&req, hs.version) {
            read_framed(&mut r, &req, limits).await?
        } else {
            Payload::None
        };
        let end = used(c2s, r);
        msgs.push(ClientMsg {
            req,
            range,
            payload,
            end,
        });
    }
    Ok((hello, hello_end, msgs))
}

#[derive(Debug)]
struct ServerMsg {
    stderr: Vec<(StderrMsg, Range<usize>)>,
    reply: Option<(Reply, Range<usize>)>,
    nar: Option<NarSummary>,
    end: usize,
}

/// Client side of the s2c stream: handshake (its output returned), then
/// per request its STDERR messages, result and NAR, until the stream ends.
async fn decode_s2c(
    s2c: &[u8],
    p: &Peers,
    reqs: &[Request],
    limits: &Limits,
) -> Result<(Vec<u8>, usize, Vec<ServerMsg>), Error> {
    let mut r = s2c;
    let mut hello = Vec::new();
    let hs = client_handshake(&mut r, &mut hello, p.client, limits).await?;
    assert_eq!(hs.version, p.negotiated());
    assert_eq!(hs.daemon_version, p.daemon_version);
    assert_eq!((hs.trust, hs.messages.len()), (p.trust, 0));
    let hello_end = used(s2c, r);
    let mut out = Vec::new();
    for req in reqs {
        if r.is_empty() {
            break;
        }
        out.push(decode_reply(s2c, &mut r, req, hs.version, limits).await?);
    }
    Ok((hello, hello_end, out))
}

async fn decode_reply(
    s2c: &[u8],
    r: &mut &[u8],
    req: &Request,
    v: WorkerVersion,
    limits: &Limits,
) -> Result<ServerMsg, Error> {
    let mut m = ServerMsg {
        stderr: Vec::new(),
        reply: None,
        nar: None,
        end: 0,
    };
    loop {
        let start = used(s2c, r);
        let msg = StderrMsg::read(r, v, limits).await?;
        let done = msg.is_end();
        m.stderr.push((msg, start..used(s2c, r)));
        if done {
            break;
        }
    }
    if m.stderr.last().map(|(s, _)| s) == Some(&StderrMsg::Last) {
        let start = used(s2c, r);
        let reply = Reply::read(r, req, v, limits).await?;
        m.reply = Some((reply, start..used(s2c, r)));
        if let Some((Reply::Nar, _)) = m.reply {
            m.nar = Some(copy_nar(r, &mut tokio::io::sink(), NarLimits::default()).await?);
        }
    }
    m.end = used(s2c, r);
    Ok(m)
}

/// The decoded c2s stream: the server hello the crate wrote in answer to
/// it, where the client hello ended, and the requests.
type C2s = (Vec<u8>, usize, Vec<ClientMsg>);

fn check_client(name: &str, c2s: &[u8], s2c: &[u8], decoded: &C2s, v: WorkerVersion) {
    let &(ref hello, mut at, ref msgs) = decoded;
    let mut last = Vec::new();
    nix_relay::wire::primitives::put_u64(&mut last, STDERR_LAST);
    assert_eq!(
        [&hello[..], &last].concat(),
        s2c[..hello.len() + 8],
        "{name}: server hello"
    );
    for m in msgs {
        let what = format!("{name}: {:?} at c2s@{}", m.req.op(), m.range.start);
        assert_eq!(m.range.start, at, "{what}: gap");
        let mut buf = Vec::new();
        m.req.write(&mut buf, v);
        assert_eq!(buf, c2s[m.range.clone()], "{what}: re-encoding");
        if let Payload::Framed { content, nars } = &m.payload {
            let mut framed = Vec::new();
            let size = content.len().max(1);
            let mut w = FramedWriter::new(&mut framed, size);
            futures_block(async {
                tokio::io::AsyncWriteExt::write_all(&mut w, content)
                    .await
                    .unwrap();
                w.finish().await.unwrap();
            });
            assert_eq!(framed, c2s[m.range.end..m.end], "{what}: framed payload");
            for (info, sum) in nars {
                assert_eq!(
                    (info.nar_hash, info.nar_size),
                    (sum.sha256, sum.size),
                    "{what}"
                );
            }
        }
        at = m.end;
    }
    assert_eq!(at, c2s.len(), "{name}: c2s not consumed");
}

fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    use futures_util::FutureExt;
    f.now_or_never().expect("writing to a Vec never waits")
}

fn check_server(name: &str, s2c: &[u8], decoded: &S2c, reqs: &[Request], v: WorkerVersion) {
    let &(_, mut at, ref msgs) = decoded;
    let mut infos = std::collections::BTreeMap::<StorePath, ValidPathInfo>::new();
    for (m, req) in msgs.iter().zip(reqs) {
        let what = format!("{name}: reply to {:?} at s2c@{at}", req.op());
        for (msg, range) in &m.stderr {
            assert_eq!(range.start, at, "{what}: gap");
            let mut buf = Vec::new();
            msg.write(&mut buf, v);
            assert_eq!(buf, s2c[range.clone()], "{what}: {msg:?}");
            at = range.end;
        }
        if let Some((reply, range)) = &m.reply {
            assert_eq!(range.start, at, "{what}: gap");
            let mut buf = Vec::new();
            reply.write(&mut buf, v);
            assert_eq!(buf, s2c[range.clone()], "{what}: {reply:?}");
            if let Reply::PathInfo(Some(info)) = reply {
                infos.insert(info.path.clone(), info.clone());
            }
        }
        // A NAR is checked against the info the same session got for it;
        // a 2.26 client also fetches NARs alone on extra connections.
        if let (Some(sum), Request::NarFromPath { path }) = (&m.nar, req)
            && let Some(info) = infos.get(path)
        {
            assert_eq!(
                (sum.sha256, sum.size),
                (info.nar_hash, info.nar_size),
                "{what}"
            );
        }
        at = m.end;
    }
    assert_eq!(msgs.len(), reqs.len(), "{name}: replies");
    assert_eq!(at, s2c.len(), "{name}: s2c not consumed");
}

type S2c = (Vec<u8>, usize, Vec<ServerMsg>);

/// Replays one transcript; returns who spoke, the requests and the replies.
async fn golden(name: &str) -> (Peers, Vec<Request>, Vec<ServerMsg>) {
    let (c2s, s2c) = (load(name, "c2s"), load(name, "s2c"));
    let limits = Limits::default();
    let p = Peers::of(&c2s, &s2c, &limits).await;
    let v = p.negotiated();
    let client = decode_c2s(&c2s, &p, &limits).await.unwrap();
    check_client(name, &c2s, &s2c, &client, v);
    let reqs: Vec<Request> = client.2.iter().map(|m| m.req.clone()).collect();
    let server = decode_s2c(&s2c, &p, &reqs, &limits).await.unwrap();
    assert_eq!(server.0, c2s[..client.1], "{name}: client hello");
    check_server(name, &s2c, &server, &reqs, v);
    (p, reqs, server.2)
}

/// What the 2.8 captures are known to contain (NOTES.md).
fn shape(name: &str, reqs: &[Request], replies: &[ServerMsg]) {
    let ops: Vec<u64> = reqs.iter().map(|r| r.op() as u64).collect();
    let outputs = match name {
        "ng-multi" => 2,
        "ng-fail" => 0,
        _ => 1,
    };
    let mut want = vec![31, 44, 36];
    want.extend(std::iter::repeat_n(26, outputs));
    want.extend(std::iter::repeat_n(38, outputs));
    assert_eq!(ops, want, "{name}");
    let Some((Reply::Build(res), _)) = &replies[2].reply else {
        panic!("{name}: no BuildResult");
    };
    assert_eq!(res.base.status.is_success(), name != "ng-fail", "{name}");
    let logs = replies[2]
        .stderr
        .iter()
        .filter(|(m, _)| m.flatten().is_some());
    assert!(logs.count() > 0, "{name}: build activity");
}

#[tokio::test]
async fn ng_top_reencodes_byte_exactly() {
    let (p, reqs, replies) = golden("ng-top").await;
    assert_eq!(
        (p.client, p.server),
        (WorkerVersion::V1_34, WorkerVersion::V1_34)
    );
    assert_eq!(p.daemon_version.as_deref(), Some("2.8.0"));
    shape("ng-top", &reqs, &replies);
}
#[tokio::test]
async fn ng_fail_reencodes_byte_exactly() {
    let (p, reqs, replies) = golden("ng-fail").await;
    assert_eq!(
        (p.client, p.server),
        (WorkerVersion::V1_34, WorkerVersion::V1_34)
    );
    assert_eq!(p.daemon_version.as_deref(), Some("2.8.0"));
    shape("ng-fail", &reqs, &replies);
}
#[tokio::test]
async fn ng_multi_reencodes_byte_exactly() {
    let (p, reqs, replies) = golden("ng-multi").await;
    assert_eq!(
        (p.client, p.server),
        (WorkerVersion::V1_34, WorkerVersion::V1_34)
    );
    assert_eq!(p.daemon_version.as_deref(), Some("2.8.0"));
    shape("ng-multi", &reqs, &replies);
}
#[tokio::test]
async fn ng_many_reencodes_byte_exactly() {
    let (p, reqs, replies) = golden("ng-many").await;
    assert_eq!(
        (p.client, p.server),
        (WorkerVersion::V1_34, WorkerVersion::V1_34)
    );
    assert_eq!(p.daemon_version.as_deref(), Some("2.8.0"));
    shape("ng-many", &reqs, &replies);
}

/// Real Nix 2.26.3 / 2.34.8 clients against a real Nix 2.34.8 daemon
/// (tests/lab/capture-golden-modern.sh), both at worker 1.38: a build-hook
/// session per derivation (`.2`, `.3`: the second leaf and the top), `nix copy`.
async fn modern(name: &str, client: WorkerVersion) -> (Vec<Request>, Vec<ServerMsg>) {
    let (p, reqs, replies) = golden(name).await;
    assert_eq!(
        (p.client, p.server),
        (client, WorkerVersion::V1_38),
        "{name}"
    );
    assert_eq!(p.daemon_version.as_deref(), Some("2.34.8"), "{name}");
    assert_eq!(p.trust, Some(Trust::Trusted), "{name}");
    // The 1.38 feature exchange: after both versions, the client's list,
    // then the server's; both empty in 2.26 and 2.34 (checked against the
    // crate's handshakes, which offer none, in `golden`).
    let (c2s, s2c) = (load(name, "c2s"), load(name, "s2c"));
    assert_eq!(c2s[16..24], [0; 8], "{name}: client features");
    assert_eq!(s2c[16..24], [0; 8], "{name}: server features");
    (reqs, replies)
}

fn ops(reqs: &[Request]) -> Vec<u64> {
    reqs.iter().map(|r| r.op() as u64).collect()
}

macro_rules! modern_builds {
    ($($fn_name:ident => $file:literal, $v:ident, $outputs:literal;)*) => {$(
        #[tokio::test]
        async fn $fn_name() {
            let (reqs, replies) = modern($file, WorkerVersion::$v).await;
            let mut want = vec![31, 44, 36];
            want.extend(std::iter::repeat_n(26, $outputs));
            want.extend(std::iter::repeat_n(38, $outputs));
            assert_eq!(ops(&reqs), want, $file);
            let Some((Reply::Build(res), _)) = &replies[2].reply else {
                panic!("{}: no BuildResult", $file);
            };
            assert!(res.base.status.is_success(), $file);
        }
    )*};
}

modern_builds! {
    ng_234_build_leaf_reencodes_byte_exactly => "ng-234-build", V1_38, 1;
    ng_234_build_leaf2_reencodes_byte_exactly => "ng-234-build.2", V1_38, 1;
    ng_234_build_top_reencodes_byte_exactly => "ng-234-build.3", V1_38, 1;
    ng_226_build_leaf_reencodes_byte_exactly => "ng-226-build", V1_38, 1;
    ng_226_build_leaf2_reencodes_byte_exactly => "ng-226-build.2", V1_38, 1;
    ng_226_build_top_reencodes_byte_exactly => "ng-226-build.3", V1_38, 1;
}

#[tokio::test]
async fn ng_234_copy_from_reencodes_byte_exactly() {
    let (reqs, _) = modern("ng-234-copy-from", WorkerVersion::V1_38).await;
    // QueryMissing, BuildPathsWithResults, 3× QueryPathInfo, 3× NarFromPath
    assert_eq!(ops(&reqs), [40, 46, 26, 26, 26, 38, 38, 38]);
}

#[test]
fn every_real_capture_in_the_directory_is_replayed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/worker");
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".c2s").map(str::to_owned)
        })
        .collect();
    found.sort();
    let mut replayed: Vec<&str> = NG.iter().chain(MODERN.iter()).copied().collect();
    replayed.sort();
    assert_eq!(found, replayed);
}

const MODERN: [&str; 15] = [
    "ng-226-build",
    "ng-226-build.2",
    "ng-226-build.3",
    "ng-226-copy-from",
    "ng-226-copy-from.2",
    "ng-226-copy-from.3",
    "ng-226-copy-to",
    "ng-226-multi",
    "ng-226-multi.2",
    "ng-234-build",
    "ng-234-build.2",
    "ng-234-build.3",
    "ng-234-copy-from",
    "ng-234-copy-to",
    "ng-234-multi",
];

/// Each session's operations, as recorded (the numbering of sessions is the
/// order the recorder started them).
const MODERN_OPS: [(&str, &[u64]); 8] = [
    // QueryValidPaths, AddMultipleToStore
    ("ng-226-copy-to", &[31, 44]),
    // QueryMissing, BuildPathsWithResults, 3× QueryPathInfo, NarFromPath of
    // one path; the other two NARs come over two more connections
    ("ng-226-copy-from", &[40, 46, 26, 26, 26, 38]),
    ("ng-226-copy-from.2", &[38]),
    ("ng-226-copy-from.3", &[38]),
    // Multiple outputs from 2.26: both infos, but only `out`'s NAR in the
    // build session; `dev` comes over a second connection (`.2`): the
    // pattern behind the relay's "path ...-dev is not valid" bug
    ("ng-226-multi", &[31, 44, 36, 26, 26, 38]),
    ("ng-226-multi.2", &[38]),
    // 2.34 fetches both outputs in the build session
    ("ng-234-multi", &[31, 44, 36, 26, 26, 38, 38]),
    ("ng-234-copy-to", &[31, 44]),
];

#[tokio::test]
async fn modern_copies_and_multi_output_builds_reencode_byte_exactly() {
    for (name, want) in MODERN_OPS {
        let (reqs, _) = modern(name, WorkerVersion::V1_38).await;
        assert_eq!(ops(&reqs), want, "{name}");
    }
}

#[tokio::test]
async fn every_c2s_prefix_is_whole_requests_or_end_of_stream() {
    let limits = Limits::default();
    for name in NG.iter().chain(MODERN.iter()) {
        let (c2s, s2c) = (load(name, "c2s"), load(name, "s2c"));
        let p = Peers::of(&c2s, &s2c, &limits).await;
        let (_, hello_end, full) = decode_c2s(&c2s, &p, &limits).await.unwrap();
        let bounds: Vec<usize> = std::iter::once(hello_end)
            .chain(full.iter().map(|m| m.end))
            .collect();
        for l in 0..=c2s.len() {
            let r = timeout(PER_CASE, decode_c2s(&c2s[..l], &p, &limits)).await;
            let r = r.unwrap_or_else(|_| panic!("{name} c2s[..{l}]: timed out"));
            match (bounds.iter().position(|&b| b == l), r) {
                (Some(k), Ok((_, _, msgs))) => assert_eq!(msgs.len(), k, "{name} c2s[..{l}]"),
                (None, Err(e)) => assert!(e.is_eof(), "{name} c2s[..{l}]: {e}"),
                (w, r) => panic!("{name} c2s[..{l}]: boundary {w:?} but {r:?}"),
            }
        }
    }
}

#[tokio::test]
async fn every_s2c_prefix_is_whole_replies_or_end_of_stream() {
    let limits = Limits::default();
    for name in NG.iter().chain(MODERN.iter()) {
        let (c2s, s2c) = (load(name, "c2s"), load(name, "s2c"));
        let p = Peers::of(&c2s, &s2c, &limits).await;
        let (_, _, msgs) = decode_c2s(&c2s, &p, &limits).await.unwrap();
        let reqs: Vec<Request> = msgs.into_iter().map(|m| m.req).collect();
        let (_, start, full) = decode_s2c(&s2c, &p, &reqs, &limits).await.unwrap();
        let bounds: Vec<usize> = std::iter::once(start)
            .chain(full.iter().map(|m| m.end))
            .collect();
        for l in 0..=s2c.len() {
            let r = timeout(PER_CASE, decode_s2c(&s2c[..l], &p, &reqs, &limits)).await;
            let r = r.unwrap_or_else(|_| panic!("{name} s2c[..{l}]: timed out"));
            match (bounds.iter().position(|&b| b == l), r) {
                (Some(k), Ok((_, _, replies))) => assert_eq!(replies.len(), k, "{name} [..{l}]"),
                (None, Err(e)) => assert!(e.is_eof(), "{name} s2c[..{l}]: {e}"),
                (w, r) => panic!("{name} s2c[..{l}]: boundary {w:?} but {r:?}"),
            }
        }
    }
}
