//! Truncation and corruption sweeps over the golden serve transcripts.
//!
//! A client (or backend) can hang up at any byte. For every prefix of each
//! recorded stream this checks that the wire readers and a whole relay
//! session end (Ok or Err) promptly, never panic, report truncation as end
//! of stream, and leave the store with complete entries only.
//!
//! Prefix choice (`common::prefix_lengths`): the wire-level sweeps try
//! every length for streams up to 8 KiB (all c2s files, all s2c files but
//! one); legacy-many.s2c (67 KB, one big NAR) is sampled: every length up
//! to 4 KiB, ±16 bytes around every message boundary and every 61st length
//! elsewhere. The session sweep tries every length of every c2s file up to
//! 4 KiB; legacy-top.c2s (7 KB, ten uploads) gets every length up to 4 KiB,
//! ±16 around each boundary and every 7th length beyond.
//!
//! Hangs: each decode/session runs under `tokio::time::timeout` (5 s), and
//! each sweep runs on a watchdog thread, which also catches busy loops
//! that never yield to the timer.

mod common;

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ClientStream, Payload, TRANSCRIPTS, Transcript, decode_client, decode_server, load};
use nix_relay::error_chain;
use nix_relay::scheduler::Scheduler;
use nix_relay::session::{Core, serve};
use nix_relay::store::{NarInfo, Store};
use nix_relay::wire::Limits;
use nix_relay::wire::hash::Sha256Hash;
use nix_relay::wire::store_path::StorePath;
use tokio::time::timeout;

const PER_CASE: Duration = Duration::from_secs(5);
const PER_SWEEP: Duration = Duration::from_secs(300);

fn set(progress: &Mutex<String>, s: String) {
    *progress.lock().unwrap() = s;
}

/// Message boundaries of the client stream: after the hello and after
/// each whole message (payload included).
fn client_boundaries(c: &ClientStream) -> Vec<usize> {
    std::iter::once(16)
        .chain(c.msgs.iter().map(|m| m.end()))
        .collect()
}

/// Prefix lengths plus, for each, how many whole messages it holds (or
/// None when it ends inside one).
fn cases(len: usize, boundaries: &[usize]) -> Vec<(usize, Option<usize>)> {
    cases_with(len, boundaries, 8192, 61)
}

fn cases_with(
    len: usize,
    boundaries: &[usize],
    full_below: usize,
    stride: usize,
) -> Vec<(usize, Option<usize>)> {
    common::prefix_lengths(len, boundaries, full_below, stride)
        .into_iter()
        .map(|l| (l, boundaries.iter().position(|&b| b == l)))
        .collect()
}

#[test]
fn every_client_prefix_decodes_to_whole_messages_or_end_of_stream() {
    common::with_watchdog(PER_SWEEP, |progress| {
        common::runtime().block_on(async {
            let limits = Limits::default();
            let mut n = 0;
            for name in TRANSCRIPTS {
                let t = load(name);
                let full = decode_client(&t.c2s, &limits).await.unwrap();
                let b = client_boundaries(&full);
                for (l, whole) in cases(t.c2s.len(), &b) {
                    set(&progress, format!("{name} c2s[..{l}]"));
                    let r = timeout(PER_CASE, decode_client(&t.c2s[..l], &limits)).await;
                    let r = r.unwrap_or_else(|_| panic!("{name} c2s[..{l}]: timed out"));
                    match (whole, r) {
                        (Some(k), Ok(s)) => {
                            assert_eq!(s.end, l);
                            assert_eq!(s.requests(), full.requests()[..k], "{name} [..{l}]");
                        }
                        (None, Err(e)) => assert!(e.is_eof(), "{name} c2s[..{l}]: {e}"),
                        (w, r) => panic!("{name} c2s[..{l}]: boundary {w:?} but {r:?}"),
                    }
                    n += 1;
                }
            }
            eprintln!("client prefixes decoded: {n}");
        });
    });
}

#[test]
fn every_server_prefix_decodes_to_whole_responses_or_end_of_stream() {
    common::with_watchdog(PER_SWEEP, |progress| {
        common::runtime().block_on(async {
            let limits = Limits::default();
            let mut n = 0;
            for name in TRANSCRIPTS {
                let t = load(name);
                let c = decode_client(&t.c2s, &limits).await.unwrap();
                let (reqs, v) = (c.requests(), c.negotiated());
                let full = decode_server(&t.s2c, &reqs, v, &limits).await.unwrap();
                let b: Vec<usize> = std::iter::once(16)
                    .chain(full.responses.iter().map(|(_, r)| r.end))
                    .collect();
                for (l, whole) in cases(t.s2c.len(), &b) {
                    set(&progress, format!("{name} s2c[..{l}]"));
                    let r = timeout(PER_CASE, decode_server(&t.s2c[..l], &reqs, v, &limits)).await;
                    let r = r.unwrap_or_else(|_| panic!("{name} s2c[..{l}]: timed out"));
                    match (whole, r) {
                        (Some(k), Ok(s)) => assert_eq!((s.end, s.responses.len()), (l, k)),
                        (None, Err(e)) => assert!(e.is_eof(), "{name} s2c[..{l}]: {e}"),
                        (w, r) => panic!("{name} s2c[..{l}]: boundary {w:?} but {r:?}"),
                    }
                    n += 1;
                }
            }
            eprintln!("server prefixes decoded: {n}");
        });
    });
}

/// A fresh relay store on tmpfs when there is one (fsync is then free).
fn store_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    tempfile::Builder::new()
        .prefix("nix-relay-sweep-")
        .tempdir_in(base)
        .unwrap()
}

/// A relay with no backends: BuildDerivation fails at once, no network.
fn relay(root: &Path) -> Arc<Core> {
    // Uncompressed and unsigned, so the checks below can read NARs
    // directly and replays reproduce real Nix's bytes.
    Arc::new(Core::new(
        Store::open(
            root,
            nix_relay::store::Settings {
                compression: nix_relay::store::Compression::None,
                ..Default::default()
            },
        )
        .unwrap(),
        Scheduler::new(vec![], 10),
        nix_relay::config::Limits::default(),
        false,
    ))
}

/// Runs one serve session on `input`. Outer Err: panic or timeout.
async fn session(
    relay: Arc<Core>,
    input: Vec<u8>,
    writable: bool,
) -> Result<(Result<(), String>, Vec<u8>), String> {
    let log = nix_relay::front::server::null_log();
    let mut task = tokio::spawn(async move {
        let mut out = Vec::new();
        let client = nix_relay::session::ClientId {
            name: "sweep".into(),
            trusted: true,
        };
        let gone = tokio_util::sync::CancellationToken::new();
        let r = serve::run(
            relay,
            Cursor::new(input),
            &mut out,
            log,
            writable,
            client,
            gone,
        )
        .await;
        (r.map_err(|e| error_chain(&e)), out)
    });
    match timeout(PER_CASE, &mut task).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) if e.is_panic() => Err(format!("panicked: {e}")),
        Ok(Err(e)) => Err(format!("task failed: {e}")),
        Err(_) => {
            task.abort();
            Err("timed out".into())
        }
    }
}

/// The store invariant: every narinfo's NAR is present with the declared
/// size and hash, and no upload is left in tmp/. Returns the valid paths.
fn check_store(root: &Path) -> Result<BTreeSet<StorePath>, String> {
    let mut valid = BTreeSet::new();
    for e in std::fs::read_dir(root).map_err(|e| e.to_string())? {
        let p = e.map_err(|e| e.to_string())?.path();
        if p.extension().is_none_or(|x| x != "narinfo") {
            continue;
        }
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let info = NarInfo::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        let nar = std::fs::read(root.join(&info.url))
            .map_err(|e| format!("{}: NAR {}: {e}", info.store_path, info.url))?;
        if nar.len() as u64 != info.nar_size || info.file_size != Some(info.nar_size) {
            return Err(format!("{}: NAR has {} bytes", info.store_path, nar.len()));
        }
        if Sha256Hash::digest(&nar) != info.nar_hash {
            return Err(format!("{}: NAR hash differs", info.store_path));
        }
        valid.insert(info.store_path);
    }
    let tmp: Vec<_> = std::fs::read_dir(root.join("tmp"))
        .map_err(|e| e.to_string())?
        .collect();
    if !tmp.is_empty() {
        return Err(format!("{} files left in tmp/", tmp.len()));
    }
    Ok(valid)
}

/// Paths whose upload is complete within the first `l` bytes.
fn uploaded_within(c: &ClientStream, l: usize) -> BTreeSet<StorePath> {
    let mut s = BTreeSet::new();
    for m in &c.msgs {
        match (&m.req, &m.payload) {
            (nix_relay::wire::serve::Request::AddToStoreNar { info }, _) if m.end() <= l => {
                s.insert(info.path.clone());
            }
            (_, Payload::Export(x)) => {
                for e in x.entries.iter().filter(|e| e.trailer_range.end <= l) {
                    s.insert(e.trailer.path.clone());
                }
            }
            _ => {}
        }
    }
    s
}

#[test]
fn a_session_cut_at_any_byte_ends_and_keeps_exactly_the_complete_uploads() {
    common::with_watchdog(PER_SWEEP, |progress| {
        common::runtime().block_on(async {
            let mut failures = Vec::new();
            let mut n = 0;
            for name in TRANSCRIPTS {
                let t = load(name);
                let started = std::time::Instant::now();
                let full = decode_client(&t.c2s, &Limits::default()).await.unwrap();
                // Every prefix costs a session with up to 10 fsynced
                // commits: legacy-top (7 KB) is sampled past 4 KiB.
                let cases = cases_with(t.c2s.len(), &client_boundaries(&full), 4096, 7);
                let count = cases.len();
                for (l, _) in cases {
                    set(&progress, format!("session {name} c2s[..{l}]"));
                    let dir = store_dir();
                    let r = session(relay(dir.path()), t.c2s[..l].to_vec(), true).await;
                    n += 1;
                    let what = format!("{name} c2s[..{l}]");
                    match r {
                        Err(e) => failures.push(format!("{what}: {e}")),
                        Ok((res, _)) if l < 16 && res.is_ok() => {
                            failures.push(format!("{what}: Ok without a hello"));
                        }
                        Ok(_) => match check_store(dir.path()) {
                            Err(e) => failures.push(format!("{what}: {e}")),
                            Ok(valid) if valid != uploaded_within(&full, l) => {
                                failures.push(format!(
                                    "{what}: store holds {valid:?}, uploads complete: {:?}",
                                    uploaded_within(&full, l)
                                ))
                            }
                            Ok(_) => {}
                        },
                    }
                }
                eprintln!(
                    "{name}: {count} truncated sessions in {:?}",
                    started.elapsed()
                );
            }
            eprintln!("truncated sessions run: {n}");
            assert!(
                failures.is_empty(),
                "{} failures:\n{}",
                failures.len(),
                failures[..failures.len().min(20)].join("\n")
            );
        });
    });
}

#[test]
fn a_session_fed_one_corrupted_byte_ends_and_keeps_the_store_consistent() {
    const POSITIONS: usize = 256;
    common::with_watchdog(PER_SWEEP, |progress| {
        common::runtime().block_on(async {
            let mut failures = Vec::new();
            let mut n = 0;
            for name in TRANSCRIPTS {
                let t = load(name);
                let len = t.c2s.len();
                let mut positions: Vec<usize> =
                    (0..POSITIONS).map(|i| i * len / POSITIONS).collect();
                positions.dedup();
                for (i, pos) in positions.into_iter().enumerate() {
                    let mut input = t.c2s.clone();
                    // Alternate a full flip and a low-bit flip.
                    input[pos] ^= if i % 2 == 0 { 0xff } else { 0x01 };
                    let what = format!("{name} c2s[{pos}] ^= {:#04x}", t.c2s[pos] ^ input[pos]);
                    set(&progress, format!("session {what}"));
                    let dir = store_dir();
                    n += 1;
                    match session(relay(dir.path()), input, true).await {
                        Err(e) => failures.push(format!("{what}: {e}")),
                        Ok(_) => {
                            if let Err(e) = check_store(dir.path()) {
                                failures.push(format!("{what}: {e}"));
                            }
                        }
                    }
                }
            }
            eprintln!("corrupted sessions run: {n}");
            assert!(
                failures.is_empty(),
                "{} failures:\n{}",
                failures.len(),
                failures[..failures.len().min(20)].join("\n")
            );
        });
    });
}

async fn replay(relay: &Arc<Core>, t: &Transcript) -> Vec<u8> {
    let (res, out) = session(relay.clone(), t.c2s.clone(), true).await.unwrap();
    res.unwrap_or_else(|e| panic!("{}: {e}", t.name));
    out
}

#[tokio::test]
async fn the_relay_answers_upload_import_and_export_as_nix_did_byte_for_byte() {
    let dir = store_dir();
    let relay = relay(dir.path());
    let copy_to = load("legacy-copy-to");
    assert_eq!(replay(&relay, &copy_to).await, copy_to.s2c);

    let dir = store_dir();
    let relay = self::relay(dir.path());
    let import = load("legacy-import-paths");
    assert_eq!(replay(&relay, &import).await, import.s2c);
    assert_eq!(check_store(dir.path()).unwrap().len(), 2);
    let export = load("legacy-export-paths");
    assert_eq!(replay(&relay, &export).await, export.s2c);
}

#[tokio::test]
async fn a_read_only_session_refuses_uploads_and_stores_nothing() {
    let dir = store_dir();
    let t = load("legacy-copy-to");
    let (res, out) = session(relay(dir.path()), t.c2s.clone(), false)
        .await
        .unwrap();
    let err = res.unwrap_err();
    assert!(err.contains("AddToStoreNar needs"), "{err}");
    assert_eq!(out, t.s2c[..24], "hello and the QueryValidPaths reply only");
    assert!(check_store(dir.path()).unwrap().is_empty());
}

#[tokio::test]
async fn the_store_check_catches_a_missing_nar_and_a_leftover_upload() {
    let dir = store_dir();
    let t = load("legacy-copy-to");
    replay(&relay(dir.path()), &t).await;
    assert_eq!(check_store(dir.path()).unwrap().len(), 1);
    let leftover = dir.path().join("tmp/upload.nar");
    std::fs::write(&leftover, b"partial").unwrap();
    assert!(check_store(dir.path()).unwrap_err().contains("tmp/"));
    std::fs::remove_file(leftover).unwrap();
    for e in std::fs::read_dir(dir.path().join("nar")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    assert!(check_store(dir.path()).unwrap_err().contains("NAR"));
}
