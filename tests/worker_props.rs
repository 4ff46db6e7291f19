//! Property tests of the worker codec: every request, STDERR message and
//! BuildResult the relay can write reads back equal at each version (with
//! the fields that version lacks reset), re-encodes to the same bytes and
//! leaves nothing over; framed streams survive any frame and buffer sizes;
//! arbitrary input never panics; over-limit lengths are refused before
//! anything is allocated.

use nix_relay::wire::build::{BasicDerivation, BuildResult, BuildStatus, DerivationOutput};
use nix_relay::wire::hash::Sha256Hash;
use nix_relay::wire::path_info::ValidPathInfo;
use nix_relay::wire::primitives::{put_bytes, put_u64};
use nix_relay::wire::store_path::StorePath;
use nix_relay::wire::worker::stderr::{STDERR_NEXT, STDERR_RESULT};
use nix_relay::wire::worker::{
    ClientOptions, DrvOutputRegistration, Field, FramedReader, FramedWriter, LegacyAddToStore,
    Request, StderrMsg, WorkerBuildResult, WorkerError, WorkerVersion,
};
use nix_relay::wire::{Error, Limits};
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::props::{SMALL, block_on, bytes, store_path};

const VERSIONS: [u8; 6] = [21, 25, 32, 34, 37, 38];

fn v(minor: u8) -> WorkerVersion {
    WorkerVersion::new(1, minor)
}

fn paths() -> impl Strategy<Value = Vec<StorePath>> {
    vec(store_path(), 0..4)
}

fn derived() -> impl Strategy<Value = Vec<String>> {
    vec(
        (
            store_path(),
            prop_oneof![Just(""), Just("!*"), Just("!out,dev")],
        )
            .prop_map(|(p, s)| format!("{p}{s}")),
        0..4,
    )
}

fn derivation() -> impl Strategy<Value = BasicDerivation> {
    let output = ("[a-z][a-z0-9]{0,8}", store_path(), "[0-9a-f]{0,8}").prop_map(|(n, p, h)| {
        DerivationOutput {
            name: n,
            path: p.to_string(),
            hash_algo: String::new(),
            hash: h,
        }
    });
    (
        vec(output, 0..3),
        paths(),
        "[a-z0-9_-]{0,20}",
        bytes(32),
        vec(bytes(16), 0..3),
        vec((bytes(16), bytes(32)), 0..4),
    )
        .prop_map(
            |(outputs, input_srcs, platform, builder, args, env)| BasicDerivation {
                outputs,
                input_srcs,
                platform,
                builder,
                args,
                env,
            },
        )
}

fn path_info() -> impl Strategy<Value = ValidPathInfo> {
    (
        store_path(),
        proptest::option::of(store_path()),
        any::<[u8; 32]>(),
        btree_set(store_path(), 0..4),
        any::<u64>(),
        1u64..(1 << 20),
        any::<bool>(),
        vec("[a-z0-9:+/=]{1,30}", 0..3),
        proptest::option::of("fixed:r:sha256:[0-9a-z]{52}"),
    )
        .prop_map(
            |(path, deriver, h, references, t, size, ult, sigs, ca)| ValidPathInfo {
                path,
                deriver,
                nar_hash: Sha256Hash(h),
                references,
                registration_time: t,
                nar_size: size,
                ultimate: ult,
                sigs,
                ca,
            },
        )
}

fn client_options() -> impl Strategy<Value = ClientOptions> {
    (
        any::<[bool; 5]>(),
        any::<[u64; 6]>(),
        vec(("[a-z-]{1,20}", ".{0,20}"), 0..4),
    )
        .prop_map(|(b, n, overrides)| ClientOptions {
            keep_failed: b[0],
            keep_going: b[1],
            try_fallback: b[2],
            verbosity: n[0],
            max_build_jobs: n[1],
            max_silent_time: n[2],
            use_build_hook: b[3],
            verbose_build: n[3],
            log_type: 0,
            print_build_trace: 0,
            build_cores: n[4],
            use_substitutes: b[4],
            overrides,
        })
}

fn simple_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        store_path().prop_map(|path| Request::IsValidPath { path }),
        store_path().prop_map(|path| Request::QueryReferrers { path }),
        store_path().prop_map(|path| Request::EnsurePath { path }),
        store_path().prop_map(|path| Request::AddTempRoot { path }),
        "/[a-z/]{1,30}".prop_map(|path| Request::AddIndirectRoot { path }),
        store_path().prop_map(|path| Request::QueryPathInfo { path }),
        "[0-9a-z]{32}".prop_map(|hash_part| Request::QueryPathFromHashPart { hash_part }),
        paths().prop_map(|paths| Request::QuerySubstitutablePaths { paths }),
        store_path().prop_map(|path| Request::QueryValidDerivers { path }),
        store_path().prop_map(|path| Request::NarFromPath { path }),
        derived().prop_map(|paths| Request::QueryMissing { paths }),
        store_path().prop_map(|drv_path| Request::QueryDerivationOutputMap { drv_path }),
        "sha256:[0-9a-f]{64}!out".prop_map(|id| Request::QueryRealisation { id }),
        store_path().prop_map(|drv_path| Request::AddBuildLog { drv_path }),
    ]
}

fn complex_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            "[a-z.-]{1,20}",
            "fixed:r:sha256|text:sha256",
            paths(),
            any::<bool>()
        )
            .prop_map(|(name, cam_str, refs, repair)| Request::AddToStore {
                name,
                cam_str,
                refs,
                repair,
            }),
        ("[a-z.-]{1,20}", any::<[bool; 2]>(), "sha256|sha1").prop_map(|(n, b, a)| {
            Request::AddToStoreLegacy(LegacyAddToStore {
                base_name: n,
                fixed: b[0],
                recursive: b[1],
                hash_algo: a,
            })
        }),
        (derived(), 0u64..3).prop_map(|(paths, mode)| Request::BuildPaths { paths, mode }),
        client_options().prop_map(Request::SetOptions),
        (paths(), any::<bool>())
            .prop_map(|(paths, substitute)| Request::QueryValidPaths { paths, substitute }),
        (store_path(), derivation(), 0u64..3).prop_map(|(drv_path, drv, mode)| {
            Request::BuildDerivation {
                drv_path,
                drv,
                mode,
            }
        }),
        (path_info(), any::<[bool; 2]>()).prop_map(|(info, b)| Request::AddToStoreNar {
            info,
            repair: b[0],
            dont_check_sigs: b[1],
        }),
        ("sha256:[0-9a-f]{64}!out", "[0-9a-z]{32}-x").prop_map(|(id, out_path)| {
            Request::RegisterDrvOutput(DrvOutputRegistration::Old { id, out_path })
        }),
        "\\{.{0,60}\\}".prop_map(|j| Request::RegisterDrvOutput(DrvOutputRegistration::Json(j))),
        any::<[bool; 2]>().prop_map(|b| Request::AddMultipleToStore {
            repair: b[0],
            dont_check_sigs: b[1],
        }),
        (derived(), 0u64..3)
            .prop_map(|(paths, mode)| Request::BuildPathsWithResults { paths, mode }),
        (store_path(), "/[a-z/]{1,30}")
            .prop_map(|(path, gc_root)| Request::AddPermRoot { path, gc_root }),
        (
            store_path(),
            proptest::collection::vec("[a-z0-9-]{1,12}:[A-Za-z0-9+/=]{1,40}", 0..3)
        )
            .prop_map(|(path, sigs)| Request::AddSignatures { path, sigs }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![simple_request(), complex_request()]
}

/// What `req` reads back as at `minor`: `None` when the op (or this form
/// of it) does not exist at that version.
fn request_at(req: &Request, minor: u8) -> Option<Request> {
    let since = match req {
        Request::QueryDerivationOutputMap { .. } => 22,
        Request::RegisterDrvOutput(DrvOutputRegistration::Json(_)) => 31,
        Request::RegisterDrvOutput(_) | Request::QueryRealisation { .. } => 27,
        Request::AddMultipleToStore { .. } | Request::AddBuildLog { .. } => 32,
        Request::BuildPathsWithResults { .. } => 34,
        Request::AddPermRoot { .. } => 36,
        Request::AddToStore { .. } => 25,
        _ => 0,
    };
    let until = match req {
        Request::AddToStoreLegacy(_) => 25,
        Request::RegisterDrvOutput(DrvOutputRegistration::Old { .. }) => 31,
        _ => u8::MAX,
    };
    if minor < since || minor >= until {
        return None;
    }
    Some(match req {
        Request::QueryValidPaths { paths, substitute } => Request::QueryValidPaths {
            paths: paths.clone(),
            substitute: *substitute && minor >= 27,
        },
        other => other.clone(),
    })
}

fn build_result() -> impl Strategy<Value = WorkerBuildResult> {
    (
        (0u64..15).prop_map(|s| BuildStatus::from_u64(s).unwrap()),
        bytes(100),
        any::<(u64, bool, u64, u64)>(),
        vec((".{0,40}", ".{0,80}"), 0..3),
        any::<(Option<i64>, Option<i64>)>(),
    )
        .prop_map(
            |(status, msg, (tb, nd, start, stop), outs, (cu, cs))| WorkerBuildResult {
                base: BuildResult {
                    status,
                    error_msg: msg,
                    times_built: tb,
                    is_non_deterministic: nd,
                    start_time: start,
                    stop_time: stop,
                    built_outputs: outs,
                },
                cpu_user: cu,
                cpu_system: cs,
            },
        )
}

fn build_result_at(r: &WorkerBuildResult, minor: u8) -> WorkerBuildResult {
    let mut out = WorkerBuildResult::from(BuildResult::failure(
        r.base.status,
        r.base.error_msg.clone(),
    ));
    if minor >= 29 {
        out.base.times_built = r.base.times_built;
        out.base.is_non_deterministic = r.base.is_non_deterministic;
        out.base.start_time = r.base.start_time;
        out.base.stop_time = r.base.stop_time;
    }
    if minor >= 37 {
        (out.cpu_user, out.cpu_system) = (r.cpu_user, r.cpu_system);
    }
    if minor >= 28 {
        out.base.built_outputs = r.base.built_outputs.clone();
    }
    out
}

fn fields() -> impl Strategy<Value = Vec<Field>> {
    vec(
        prop_oneof![
            any::<u64>().prop_map(Field::Int),
            bytes(40).prop_map(Field::Str)
        ],
        0..5,
    )
}

fn stderr_msg() -> impl Strategy<Value = StderrMsg> {
    let error = (
        any::<u64>(),
        bytes(10),
        bytes(60),
        vec(bytes(30), 0..3),
        any::<u64>(),
    )
        .prop_map(|(level, name, message, traces, exit_status)| WorkerError {
            level,
            name,
            message,
            traces,
            exit_status,
        });
    prop_oneof![
        bytes(80).prop_map(StderrMsg::Next),
        any::<u64>().prop_map(StderrMsg::Read),
        bytes(80).prop_map(StderrMsg::Write),
        Just(StderrMsg::Last),
        error.prop_map(StderrMsg::Error),
        (any::<[u64; 4]>(), bytes(40), fields()).prop_map(|(n, text, fields)| {
            StderrMsg::StartActivity {
                id: n[0],
                level: n[1],
                kind: n[2],
                text,
                fields,
                parent: n[3],
            }
        }),
        any::<u64>().prop_map(|id| StderrMsg::StopActivity { id }),
        (any::<[u64; 2]>(), fields()).prop_map(|(n, fields)| StderrMsg::Result {
            id: n[0],
            kind: n[1],
            fields,
        }),
    ]
}

fn stderr_at(m: &StderrMsg, minor: u8) -> StderrMsg {
    match m {
        StderrMsg::Error(e) if minor < 26 => {
            let mut n = WorkerError::new(e.message.clone());
            n.exit_status = e.exit_status;
            StderrMsg::Error(n)
        }
        StderrMsg::Error(e) => StderrMsg::Error(WorkerError {
            exit_status: 1,
            ..e.clone()
        }),
        other => other.clone(),
    }
}

/// Writes `payload` through a FramedWriter in `chunk`-sized writes.
fn frame(payload: &[u8], frame_size: usize, chunk: usize) -> Vec<u8> {
    block_on(async {
        let mut out = Vec::new();
        let mut w = FramedWriter::new(&mut out, frame_size);
        for c in payload.chunks(chunk.max(1)) {
            w.write_all(c).await.unwrap();
        }
        w.finish().await.unwrap();
        out
    })
}

/// Frame lengths of a framed stream, terminator included, and its length.
fn frame_lengths(mut b: &[u8]) -> (Vec<u64>, usize) {
    let total = b.len();
    let mut v = Vec::new();
    loop {
        let len = u64::from_le_bytes(b[..8].try_into().unwrap());
        v.push(len);
        b = &b[8 + len as usize..];
        if len == 0 {
            return (v, total - b.len());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn requests_round_trip_at_every_version(req in request(), i in 0..VERSIONS.len()) {
        let minor = VERSIONS[i];
        let mut buf = Vec::new();
        req.write(&mut buf, v(minor));
        let mut r = &buf[..];
        let got = block_on(Request::read(&mut r, v(minor), &SMALL));
        match request_at(&req, minor) {
            None => prop_assert!(got.is_err() || got.as_ref().unwrap().as_ref() != Some(&req)),
            Some(want) => {
                prop_assert_eq!(got.unwrap(), Some(want.clone()));
                prop_assert!(r.is_empty(), "{} bytes left", r.len());
                let mut again = Vec::new();
                want.write(&mut again, v(minor));
                if want == req {
                    prop_assert_eq!(again, buf);
                }
            }
        }
    }

    #[test]
    fn stderr_messages_round_trip(m in stderr_msg(), minor in prop_oneof![Just(25u8), Just(34u8)]) {
        let mut buf = Vec::new();
        m.write(&mut buf, v(minor));
        let mut r = &buf[..];
        let got = block_on(StderrMsg::read(&mut r, v(minor), &SMALL)).unwrap();
        prop_assert_eq!(&got, &stderr_at(&m, minor));
        prop_assert!(r.is_empty());
        let mut again = Vec::new();
        got.write(&mut again, v(minor));
        prop_assert_eq!(again, buf);
    }

    #[test]
    fn build_results_round_trip(
        res in build_result(),
        minor in prop_oneof![Just(27u8), Just(28u8), Just(29u8), Just(37u8)],
    ) {
        let mut buf = Vec::new();
        res.write(&mut buf, v(minor));
        let mut r = &buf[..];
        let got = block_on(WorkerBuildResult::read(&mut r, v(minor), &SMALL)).unwrap();
        prop_assert_eq!(got, build_result_at(&res, minor));
        prop_assert!(r.is_empty());
    }

    #[test]
    fn framed_streams_round_trip(
        payload in bytes(20_000),
        frame_size in 1usize..5000,
        chunk in 1usize..7000,
        read_buf in 1usize..9000,
        trailer in bytes(20),
    ) {
        let mut wire = frame(&payload, frame_size, chunk);
        let (lens, end) = frame_lengths(&wire);
        prop_assert_eq!(end, wire.len());
        prop_assert!(lens.iter().all(|&l| l as usize <= frame_size));
        prop_assert_eq!(lens[..lens.len() - 1].iter().sum::<u64>(), payload.len() as u64);
        wire.extend_from_slice(&trailer);
        let limits = Limits { max_string_bytes: frame_size, ..SMALL };
        let (got, rest) = block_on(async {
            let mut r = &wire[..];
            let mut fr = FramedReader::new(&mut r, &limits);
            let mut got = Vec::new();
            let mut b = vec![0u8; read_buf];
            loop {
                let n = fr.read(&mut b).await.unwrap();
                if n == 0 { break; }
                got.extend_from_slice(&b[..n]);
            }
            assert!(fr.is_done());
            (got, r.to_vec())
        });
        prop_assert_eq!(got, payload);
        prop_assert_eq!(rest, trailer);
    }

    #[test]
    fn drain_skips_over_limit_frames_to_the_terminator(
        sizes in vec(1usize..3000, 1..6),
        limit in 1usize..1000,
        trailer in bytes(20),
    ) {
        let mut wire = Vec::new();
        for (i, s) in sizes.iter().enumerate() {
            put_u64(&mut wire, *s as u64);
            wire.extend(std::iter::repeat_n(i as u8, *s));
        }
        put_u64(&mut wire, 0);
        wire.extend_from_slice(&trailer);
        let limits = Limits { max_string_bytes: limit, ..SMALL };
        let rest = block_on(async {
            let mut r = &wire[..];
            let mut fr = FramedReader::new(&mut r, &limits);
            let mut all = Vec::new();
            let res = fr.read_to_end(&mut all).await;
            assert_eq!(res.is_err(), sizes.iter().any(|&s| s > limit));
            fr.drain().await.unwrap();
            assert!(fr.is_done());
            r.to_vec()
        });
        prop_assert_eq!(rest, trailer);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in bytes(300), i in 0..VERSIONS.len()) {
        let ver = v(VERSIONS[i]);
        let _ = block_on(Request::read(&mut &data[..], ver, &SMALL));
        let _ = block_on(StderrMsg::read(&mut &data[..], ver, &SMALL));
        let _ = block_on(WorkerBuildResult::read(&mut &data[..], ver, &SMALL));
        let _ = block_on(async {
            let mut all = Vec::new();
            FramedReader::new(&data[..], &SMALL).read_to_end(&mut all).await
        });
    }
}

/// A length or count over the limit fails with TooLong, reading nothing more.
#[test]
fn over_limit_lengths_are_refused_before_allocating() {
    let huge = u64::MAX / 2;
    let cases: Vec<(Vec<u64>, &str)> = vec![
        (vec![31, huge], "QueryValidPaths count"),
        (vec![9, huge], "BuildPaths count"),
        (vec![7, huge], "AddToStore name"),
        (
            vec![19, 0, 0, 0, 0, 0, 0, 1, 7, 0, 0, 0, 1, huge],
            "SetOptions overrides",
        ),
        (vec![42, huge], "RegisterDrvOutput"),
    ];
    for (words, what) in cases {
        let mut buf = Vec::new();
        words.iter().for_each(|w| put_u64(&mut buf, *w));
        let err = block_on(Request::read(&mut &buf[..], v(34), &SMALL)).unwrap_err();
        assert!(matches!(err, Error::TooLong { .. }), "{what}: {err}");
    }
    for words in [vec![STDERR_NEXT, huge], vec![STDERR_RESULT, 1, 101, huge]] {
        let mut buf = Vec::new();
        words.iter().for_each(|w| put_u64(&mut buf, *w));
        let err = block_on(StderrMsg::read(&mut &buf[..], v(34), &SMALL)).unwrap_err();
        assert!(matches!(err, Error::TooLong { .. }), "{err}");
    }
    let mut buf = Vec::new();
    put_u64(&mut buf, 0);
    put_bytes(&mut buf, b"");
    put_u64(&mut buf, huge);
    let err = block_on(WorkerBuildResult::read(&mut &buf[..], v(28), &SMALL)).unwrap_err();
    assert!(matches!(err, Error::TooLong { .. }), "builtOutputs: {err}");
    // An answer to STDERR_READ longer than asked for.
    let mut buf = Vec::new();
    read_reply_roundtrip(&mut buf);
    // A frame header over the limit is refused without reading its body.
    let mut buf = Vec::new();
    put_u64(&mut buf, huge);
    let err = block_on(async {
        let mut all = Vec::new();
        FramedReader::new(&buf[..], &SMALL)
            .read_to_end(&mut all)
            .await
    })
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

fn read_reply_roundtrip(buf: &mut Vec<u8>) {
    use nix_relay::wire::worker::stderr::{read_read_reply, write_read_reply};
    write_read_reply(buf, b"0123456789");
    let got = block_on(read_read_reply(&mut &buf[..], 10, &SMALL)).unwrap();
    assert_eq!(got, b"0123456789");
    let err = block_on(read_read_reply(&mut &buf[..], 9, &SMALL)).unwrap_err();
    assert!(matches!(err, Error::TooLong { .. }), "{err}");
}
