//! The worker client against an in-memory fake daemon (framing, STDERR
//! handling); the real daemon is exercised in `tests/ng_backend.rs`.

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

use super::*;
use crate::wire::hash::Sha256Hash;
use crate::wire::primitives::{put_paths, put_u64};
use crate::wire::worker::stderr::{ACT_BUILD, ACT_BUILDS, ACT_COPY_PATHS, read_read_reply};
use crate::wire::worker::{FramedReader, Trust, WorkerBuildResult, server_handshake};

type Client = WorkerClient<BufReader<ReadHalf<DuplexStream>>, WriteHalf<DuplexStream>>;
type Server = (
    ReadHalf<DuplexStream>,
    WriteHalf<DuplexStream>,
    WorkerVersion,
);

fn path(name: &str) -> StorePath {
    StorePath::parse(&format!("/nix/store/{}-{name}", "a".repeat(32))).unwrap()
}

fn info(nar: &[u8]) -> ValidPathInfo {
    ValidPathInfo {
        path: path("up"),
        deriver: None,
        nar_hash: Sha256Hash::digest(nar),
        references: Default::default(),
        registration_time: 7,
        nar_size: nar.len() as u64,
        ultimate: false,
        sigs: Vec::new(),
        ca: None,
    }
}

/// A connected client and the fake daemon's ends, at `daemon_max`.
async fn pair(daemon_max: WorkerVersion) -> (Client, Server) {
    let (c, s) = tokio::io::duplex(1 << 20);
    let (cr, mut cw) = tokio::io::split(c);
    let (mut sr, mut sw) = tokio::io::split(s);
    let server = async {
        let hs = server_handshake(&mut sr, &mut sw, daemon_max, "2.8.0", Trust::Trusted).await;
        let mut buf = Vec::new();
        StderrMsg::Last.write(&mut buf, daemon_max);
        sw.write_all(&buf).await.unwrap();
        hs.unwrap().version
    };
    let mut cr = BufReader::new(cr);
    let limits = Limits::default();
    let client =
        crate::wire::worker::client_handshake(&mut cr, &mut cw, WorkerVersion::LATEST, &limits);
    let (v, hs) = tokio::join!(server, client);
    assert_eq!(hs.unwrap().version, v);
    (WorkerClient::new(cr, cw, v, limits), (sr, sw, v))
}

async fn send(w: &mut WriteHalf<DuplexStream>, msgs: &[StderrMsg], v: WorkerVersion, tail: &[u8]) {
    let mut buf = Vec::new();
    for m in msgs {
        m.write(&mut buf, v);
    }
    buf.extend_from_slice(tail);
    w.write_all(&buf).await.unwrap();
}

/// A derivation with nothing in it: what the fake daemon builds.
fn empty_drv() -> BasicDerivation {
    BasicDerivation {
        outputs: Vec::new(),
        input_srcs: Vec::new(),
        platform: "x86_64-linux".into(),
        builder: b"/bin/sh".to_vec(),
        args: Vec::new(),
        env: Vec::new(),
    }
}

fn activity(kind: u64, text: &str) -> StderrMsg {
    StderrMsg::StartActivity {
        id: 1,
        level: LVL_INFO,
        kind,
        text: text.into(),
        fields: Vec::new(),
        parent: 0,
    }
}

#[test]
fn log_lines_from_stderr_messages() {
    let t = |m: StderrMsg| {
        let text = event_of(m, 0).and_then(|e| e.text());
        text.map(|v| String::from_utf8(v.to_vec()).unwrap())
    };
    assert_eq!(
        t(StderrMsg::Next(b"warning: x\n".to_vec())).unwrap(),
        "warning: x\n"
    );
    assert_eq!(
        t(StderrMsg::Next(b"no newline".to_vec())).unwrap(),
        "no newline\n"
    );
    assert_eq!(
        t(activity(ACT_BUILD, "building 'x.drv'")).unwrap(),
        "building 'x.drv'\n"
    );
    assert_eq!(t(activity(ACT_COPY_PATHS, "copying")), None);
    let line = |kind| StderrMsg::Result {
        id: 1,
        kind,
        fields: vec![Field::Str(b"hello".to_vec())],
    };
    assert_eq!(t(line(RES_BUILD_LOG_LINE)).unwrap(), "hello\n");
    assert_eq!(t(line(RES_POST_BUILD_LOG_LINE)).unwrap(), "hello\n");
    assert_eq!(t(line(105)), None);
    assert_eq!(t(StderrMsg::StopActivity { id: 1 }), None);
}

#[test]
fn activities_other_than_log_lines_stay_typed() {
    let start = activity(ACT_COPY_PATHS, "copying");
    let phase = StderrMsg::Result {
        id: 1,
        kind: crate::wire::worker::stderr::RES_SET_PHASE,
        fields: vec![Field::Str(b"buildPhase".to_vec())],
    };
    for m in [start, phase, StderrMsg::StopActivity { id: 1 }] {
        assert_eq!(
            event_of(m.clone(), 0),
            Some(LogEvent::Activity(Arc::new(m)))
        );
    }
    let line = StderrMsg::Result {
        id: 1,
        kind: RES_BUILD_LOG_LINE,
        fields: vec![Field::Str(b"x".to_vec())],
    };
    assert_eq!(event_of(line, 0), Some(LogEvent::Log("x\n".into())));
}

#[test]
fn a_worker_clients_own_settings_pass_through_and_the_relays_limits_win() {
    let client = ClientOptions {
        keep_failed: true,
        keep_going: true,
        verbosity: 5,
        max_build_jobs: 0,
        max_silent_time: 999,
        verbose_build: 7,
        build_cores: 6,
        use_substitutes: true,
        overrides: vec![("post-build-hook".into(), "/bin/evil".into())],
        ..ClientOptions::default()
    };
    let o = client_options(&Options {
        build: BuildOptions {
            max_silent_time: 11,
            build_timeout: 22,
            max_log_size: 33,
            ..Default::default()
        },
        worker: Some(Arc::new(client)),
        substitute: false,
    });
    assert!(o.keep_failed && o.keep_going);
    assert_eq!((o.verbosity, o.build_cores), (5, 6), "passed through");
    assert_eq!(o.max_build_jobs, 1, "the backend builds this one job");
    assert_eq!(o.max_silent_time, 11, "the relay's limit");
    assert!(o.verbose_build == 0 && !o.use_substitutes);
    assert_eq!(
        o.overrides,
        [
            ("timeout".to_string(), "22".to_string()),
            ("max-build-log-size".to_string(), "33".to_string())
        ],
        "no client override reaches the backend"
    );
}

#[test]
fn build_options_become_client_options() {
    let o = client_options(&Options::from(BuildOptions {
        max_silent_time: 11,
        build_timeout: 22,
        max_log_size: 33,
        keep_failed: true,
        ..Default::default()
    }));
    assert!(o.keep_failed && !o.use_substitutes);
    assert_eq!(
        (o.max_silent_time, o.verbosity, o.build_cores),
        (11, LVL_INFO, 0)
    );
    assert_eq!(
        o.overrides,
        [
            ("timeout".to_string(), "22".to_string()),
            ("max-build-log-size".to_string(), "33".to_string())
        ]
    );
}

#[tokio::test]
async fn framed_upload_and_activities_at_1_34() {
    let (mut c, (mut sr, mut sw, v)) = pair(WorkerVersion::V1_34).await;
    assert_eq!(v, WorkerVersion::V1_34);
    let nar: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let daemon = async {
        let limits = Limits::default();
        let req = Request::read(&mut sr, v, &limits).await.unwrap().unwrap();
        let Request::AddToStoreNar {
            info: got,
            dont_check_sigs,
            repair,
        } = req
        else {
            panic!("{req:?}")
        };
        assert!(dont_check_sigs && !repair);
        let mut framed = FramedReader::new(&mut sr, &limits);
        let mut body = Vec::new();
        framed.read_to_end(&mut body).await.unwrap();
        assert!(framed.is_done());
        send(
            &mut sw,
            &[activity(ACT_COPY_PATHS, "x"), StderrMsg::Last],
            v,
            &[],
        )
        .await;
        // QueryValidPaths: activities, then the set.
        let req = Request::read(&mut sr, v, &limits).await.unwrap().unwrap();
        assert!(matches!(
            req,
            Request::QueryValidPaths {
                substitute: false,
                ..
            }
        ));
        let mut tail = Vec::new();
        put_paths(&mut tail, [path("up")].iter());
        let msgs = [
            activity(ACT_BUILDS, ""),
            StderrMsg::StopActivity { id: 1 },
            StderrMsg::Last,
        ];
        send(&mut sw, &msgs, v, &tail).await;
        (got, body)
    };
    let client = async {
        c.add_to_store_nar(&info(&nar), &mut &nar[..])
            .await
            .unwrap();
        c.query_valid_paths(vec![path("up"), path("other")], false)
            .await
            .unwrap()
    };
    let ((got, body), valid) = tokio::join!(daemon, client);
    assert_eq!(got, info(&nar));
    assert_eq!(body, nar);
    assert_eq!(valid, [path("up")]);
}

#[tokio::test]
async fn upload_answers_stderr_read_at_1_22() {
    let (mut c, (mut sr, mut sw, v)) = pair(WorkerVersion::new(1, 22)).await;
    let nar: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
    let daemon = async {
        let limits = Limits::default();
        let req = Request::read(&mut sr, v, &limits).await.unwrap().unwrap();
        assert!(matches!(req, Request::AddToStoreNar { .. }));
        let mut body = Vec::new();
        while body.len() < 70_000 {
            send(&mut sw, &[StderrMsg::Read(30_000)], v, &[]).await;
            let chunk = read_read_reply(&mut sr, 30_000, &limits).await.unwrap();
            assert!(!chunk.is_empty());
            body.extend_from_slice(&chunk);
        }
        send(&mut sw, &[StderrMsg::Last], v, &[]).await;
        body
    };
    let (up, mut src) = (info(&nar), &nar[..]);
    let client = c.add_to_store_nar(&up, &mut src);
    let (body, res) = tokio::join!(daemon, client);
    res.unwrap();
    assert_eq!(body, nar);
}

#[tokio::test]
async fn build_streams_the_log_and_an_error_keeps_the_connection() {
    let (mut c, (mut sr, mut sw, v)) = pair(WorkerVersion::LATEST).await;
    let log = crate::buildlog::Collect::default();
    let drv = empty_drv();
    let daemon = async {
        let limits = Limits::default();
        let req = Request::read(&mut sr, v, &limits).await.unwrap().unwrap();
        let Request::SetOptions(o) = req else {
            panic!("{req:?}")
        };
        assert_eq!(o.max_silent_time, 5);
        send(
            &mut sw,
            &[StderrMsg::Next(b"warning: w\n".to_vec()), StderrMsg::Last],
            v,
            &[],
        )
        .await;
        let req = Request::read(&mut sr, v, &limits).await.unwrap().unwrap();
        assert!(matches!(req, Request::BuildDerivation { mode: 0, .. }));
        let line = StderrMsg::Result {
            id: 1,
            kind: RES_BUILD_LOG_LINE,
            fields: vec![Field::Str(b"hi".to_vec())],
        };
        let mut res = Vec::new();
        WorkerBuildResult::from(BuildResult::failure(
            crate::wire::build::BuildStatus::PermanentFailure,
            "builder failed",
        ))
        .write(&mut res, v);
        let msgs = [activity(ACT_BUILD, "building 'd'"), line, StderrMsg::Last];
        send(&mut sw, &msgs, v, &res).await;
        // A daemon error, then the next op still works.
        let req = Request::read(&mut sr, v, &limits).await.unwrap().unwrap();
        assert!(matches!(req, Request::NarFromPath { .. }));
        send(
            &mut sw,
            &[StderrMsg::Error(WorkerError::new("path is not valid"))],
            v,
            &[],
        )
        .await;
        Request::read(&mut sr, v, &limits).await.unwrap().unwrap();
        let mut tail = Vec::new();
        put_u64(&mut tail, 0);
        send(&mut sw, &[StderrMsg::Last], v, &tail).await;
    };
    let client = async {
        let opts = Options::from(BuildOptions {
            max_silent_time: 5,
            ..Default::default()
        });
        let res = c
            .build_derivation(&path("d.drv"), &drv, &opts, &log)
            .await
            .unwrap();
        let err = c.dump_store_path(&path("x")).await.unwrap_err().to_string();
        let infos = c.query_path_infos(vec![path("x")]).await.unwrap();
        (res, err, infos)
    };
    let ((), (res, err, infos)) = tokio::join!(daemon, client);
    assert_eq!(res.error_msg, b"builder failed");
    assert!(err.contains("path is not valid"), "{err}");
    assert_eq!(infos, []);
    assert_eq!(log.take_text(), "warning: w\nbuilding 'd'\nhi\n");
}

#[tokio::test]
async fn a_log_line_longer_than_any_limit_is_cut_and_the_stream_stays_in_step() {
    use crate::wire::worker::stderr::{MAX_LOG_MESSAGE, STDERR_RESULT};
    // Longer than the string limit (64 MiB), sent as Nix sends a line
    // without a newline: one buildLogLine at the end of the build.
    const LINE: u64 = 80 << 20;
    let (mut c, (mut sr, mut sw, v)) = pair(WorkerVersion::LATEST).await;
    let log = crate::buildlog::Collect::default();
    let drv = empty_drv();
    let daemon = async {
        let limits = Limits::default();
        Request::read(&mut sr, v, &limits).await.unwrap().unwrap();
        send(&mut sw, &[StderrMsg::Last], v, &[]).await;
        Request::read(&mut sr, v, &limits).await.unwrap().unwrap();
        let mut head = Vec::new();
        for n in [STDERR_RESULT, 1, RES_BUILD_LOG_LINE, 1, 1, LINE] {
            put_u64(&mut head, n);
        }
        sw.write_all(&head).await.unwrap();
        let block = vec![b'x'; 1 << 20];
        for _ in 0..LINE >> 20 {
            sw.write_all(&block).await.unwrap();
        }
        let mut res = Vec::new();
        WorkerBuildResult::from(BuildResult::failure(
            crate::wire::build::BuildStatus::Built,
            "",
        ))
        .write(&mut res, v);
        send(&mut sw, &[StderrMsg::Last], v, &res).await;
    };
    let (opts, drv_path) = (Options::default(), path("d.drv"));
    let client = c.build_derivation(&drv_path, &drv, &opts, &log);
    let ((), res) = tokio::join!(daemon, client);
    let (mut text, mut biggest) = (Vec::new(), 0);
    for e in log.take() {
        let b = e.text().unwrap();
        biggest = biggest.max(b.len());
        text.extend_from_slice(&b);
    }
    assert!(
        res.unwrap().status.is_success(),
        "the stream stayed in step"
    );
    assert!(
        biggest <= crate::buildlog::MAX_LOG_LINE,
        "piece of {biggest} bytes"
    );
    let note = format!(
        "\nnix-relay: {} more bytes of this log line dropped\n",
        LINE - MAX_LOG_MESSAGE as u64
    );
    assert_eq!(text.len(), MAX_LOG_MESSAGE + note.len());
    assert!(text.ends_with(note.as_bytes()));
}
