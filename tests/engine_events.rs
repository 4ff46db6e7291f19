//! A build's event stream in-process (feature `testing`), as each client
//! reads it through its build handle: a worker backend's activities reach
//! a worker client typed (the backend's build activity folded into the
//! relay's, the rest nested under it), a worker client's own settings reach
//! a worker backend, a client attaching mid-build gets the log's start,
//! how much went by, then the live log, and a client that falls behind is
//! told how much it lost. (max-log-size through the handle: engine_log.)

use std::time::Duration;

use nix_relay::config::Protocol;
use nix_relay::session::ClientId;
use nix_relay::testing::drv;
use nix_relay::testing::fake::Script;
use nix_relay::testing::fake_flood::Flood;
use nix_relay::testing::harness::{SYSTEM, TestRelay, fake_backend};
use nix_relay::wire::Limits;
use nix_relay::wire::build::BuildStatus;
use nix_relay::wire::worker::stderr::{
    ACT_BUILD, ACT_UNKNOWN, Field, RES_BUILD_LOG_LINE, RES_SET_PHASE, StderrMsg,
};
use nix_relay::wire::worker::{
    ClientOptions, Reply, Request, StderrEnd, WorkerCodec, WorkerVersion, client_handshake,
    read_stderr_stream,
};
use tokio::io::{AsyncWriteExt, BufReader};

const WAIT: Duration = Duration::from_secs(20);

fn relay_config(uri: &str) -> String {
    format!(
        "[limits]\nmax_log_size = \"64MiB\"\n{}",
        fake_backend("a", uri, "max_jobs = 4\n")
    )
}

fn text(fields: &[Field]) -> String {
    match fields.first() {
        Some(Field::Str(s)) => String::from_utf8_lossy(s).into_owned(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_client_gets_a_worker_backends_activities_typed() {
    let script = Script::default()
        .log(&["hello"])
        .phases(&["configurePhase", "buildPhase"]);
    let t = TestRelay::start(&relay_config("fake-ng://a"), &[("a", script)]).await;
    let (drv_path, d) = drv::derivation("phased", SYSTEM, &[]);
    let mut c = t.client(Protocol::Worker, "alice").await;
    let res = c.build(&drv_path, &d).await.unwrap();
    assert_eq!(res.status, BuildStatus::Built, "log:\n{}", c.log());
    let acts = c.activities();
    let starts: Vec<(u64, u64, u64, String)> = (acts.iter())
        .filter_map(|m| match m {
            StderrMsg::StartActivity {
                id,
                kind,
                text,
                parent,
                ..
            } => Some((*id, *kind, *parent, String::from_utf8_lossy(text).into())),
            _ => None,
        })
        .collect();
    let [(relay_act, ACT_BUILD, 0, build_text), nested @ ..] = &starts[..] else {
        panic!("one build activity, the relay's, first: {acts:?}");
    };
    assert!(build_text.ends_with("via nix-relay"), "{build_text}");
    let phases: Vec<(u64, String)> = (acts.iter())
        .filter_map(|m| match m {
            StderrMsg::Result { id, kind, fields } if *kind == RES_SET_PHASE => {
                Some((*id, text(fields)))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        phases,
        [
            (*relay_act, "configurePhase".into()),
            (*relay_act, "buildPhase".into())
        ],
        "the backend's phases land on the relay's build activity"
    );
    assert_eq!(nested.len(), 2, "{acts:?}");
    for (id, kind, parent, what) in nested {
        assert_eq!((*kind, *parent), (ACT_UNKNOWN, *relay_act), "{what}");
        assert!(
            *id != *relay_act && *id != 1 && *id != 2,
            "renumbered: {id}"
        );
        assert!(
            acts.contains(&StderrMsg::StopActivity { id: *id }),
            "{what} stopped"
        );
    }
    assert_ne!(nested[0].0, nested[1].0, "ids never repeat");
    assert_eq!(
        acts.last(),
        Some(&StderrMsg::StopActivity { id: *relay_act }),
        "the build activity ends last"
    );
    assert!(c.log().contains("hello\n"), "{}", c.log());

    // A serve client of the same kind of build gets text only.
    let (drv_path, d) = drv::derivation("phased-serve", SYSTEM, &[]);
    let mut s = t.client(Protocol::Serve, "bob").await;
    assert_eq!(
        s.build(&drv_path, &d).await.unwrap().status,
        BuildStatus::Built
    );
    let log = s.wait_log("hello", WAIT).await;
    assert!(!log.contains("configurePhase"), "{log}");
    assert!(log.contains(&format!("building '{drv_path}'")), "{log}");
    c.close().await.unwrap();
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_client_of_a_serve_backend_gets_only_the_relays_activity() {
    let script = Script::default().log(&["hello"]).phases(&["buildPhase"]);
    let t = TestRelay::start(&relay_config("fake://a"), &[("a", script)]).await;
    let (drv_path, d) = drv::derivation("plain", SYSTEM, &[]);
    let mut c = t.client(Protocol::Worker, "alice").await;
    assert_eq!(
        c.build(&drv_path, &d).await.unwrap().status,
        BuildStatus::Built
    );
    let acts = c.activities();
    let [
        StderrMsg::StartActivity { id, kind, .. },
        StderrMsg::StopActivity { id: stop },
    ] = &acts[..]
    else {
        panic!("{acts:?}");
    };
    assert_eq!((*kind, id), (ACT_BUILD, stop));
    c.close().await.unwrap();
}

/// The derivation `d` as a worker client asks for it, after SetOptions `o`.
async fn build_with_options(
    c: &mut nix_relay::testing::harness::TestClient,
    o: ClientOptions,
    name: &str,
) -> BuildStatus {
    assert!(matches!(
        c.call(Request::SetOptions(o)).await.unwrap(),
        Reply::None
    ));
    let (drv_path, drv) = drv::derivation(name, SYSTEM, &[]);
    let req = Request::BuildDerivation {
        drv_path,
        drv,
        mode: 0,
    };
    match c.call(req).await.unwrap() {
        Reply::Build(r) => r.base.status,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_clients_own_settings_reach_a_worker_backend_and_the_relays_limits_win() {
    let config = format!(
        "[limits]\nbuild_timeout = \"2h\"\n{}",
        fake_backend("a", "fake-ng://a", "")
    );
    let t = TestRelay::start(&config, &[("a", Script::default())]).await;
    let mut c = t.client(Protocol::Worker, "alice").await;
    let mine = ClientOptions {
        keep_going: true,
        verbosity: 5,
        build_cores: 6,
        max_build_jobs: 0,
        max_silent_time: 300,
        overrides: vec![
            ("post-build-hook".into(), "/bin/evil".into()),
            ("max-build-log-size".into(), "1000000".into()),
        ],
        ..ClientOptions::default()
    };
    let status = build_with_options(&mut c, mine, "opts").await;
    assert_eq!(status, BuildStatus::Built);
    let got = t.fake("a").record().options.pop().expect("SetOptions");
    assert!(got.keep_going, "{got:?}");
    assert_eq!((got.verbosity, got.build_cores), (5, 6), "passed through");
    assert_eq!(got.max_build_jobs, 1, "one job: this build");
    assert_eq!(got.max_silent_time, 300);
    assert!(!got.use_substitutes && got.verbose_build == 0);
    assert_eq!(
        got.overrides,
        [
            ("timeout".to_string(), "7200".to_string()),
            ("max-build-log-size".to_string(), "1000000".to_string())
        ],
        "the relay's limits; no other setting of the client's"
    );
    c.close().await.unwrap();
}

/// The `n` log lines of a long log, each 1000 bytes with its newline.
fn long_log(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("line {i:03} {}", "a".repeat(990)))
        .collect()
}

/// Polls `done` until it holds; fails with `what` after [`WAIT`].
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn attach_mid_build(backend: &str, joiner: Protocol) {
    let lines = long_log(100);
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let script = Script::default()
        .log(&lines)
        .gate()
        .flood(Flood::Chunks(5000));
    let t = TestRelay::start(&relay_config(backend), &[("a", script)]).await;
    let (drv_path, d) = drv::derivation("late", SYSTEM, &[]);
    let mut first = t.client(Protocol::Serve, "alice").await;
    let (p, dd) = (drv_path.clone(), d.clone());
    let first_build = tokio::spawn(async move { (first.build(&p, &dd).await, first) });
    t.fake("a")
        .wait_for("at the gate", WAIT, |r| r.at_gate == 1)
        .await;
    // The fake is at its gate once it has written its log; the relay has
    // published it once the flight holds all of it (100 lines of 1000 bytes).
    let log_bytes = || t.relay.flights().snapshot().first().map(|f| f.log_bytes);
    until("the log never arrived", || log_bytes() >= Some(100_000)).await;
    let mut late = t.client(joiner, "bob").await;
    let late_build = tokio::spawn(async move { (late.build(&drv_path, &d).await, late) });
    let what = format!("{backend}, {joiner} joiner");
    let attached = || t.relay.flights().snapshot().first().map(|f| f.attached);
    until(&format!("{what}: never attached"), || attached() == Some(2)).await;
    t.fake("a").release();
    let (r, first) = first_build.await.unwrap();
    assert_eq!(r.unwrap().status, BuildStatus::Built, "{what}");
    let (r, late) = late_build.await.unwrap();
    assert_eq!(r.unwrap().status, BuildStatus::Built, "{what}");
    let log = late.wait_log("xxxxx", WAIT).await;
    assert_eq!(t.fake("a").record().builds_started.len(), 1, "{what}");
    let at = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("{what}: no {needle:?} in\n{log}"))
    };
    let attached = at("attached to the build of");
    let start = at("line 000 ");
    let gap = at(" log bytes went by");
    let live = at("xxxxx");
    assert!(
        attached < start && start < gap && gap < live,
        "{what}: in order"
    );
    assert!(!log.contains("line 099 "), "{what}: the middle went by");
    // What went by: the first client's whole log up to the gate, but the
    // replayed 64 KiB.
    let n: u64 = log[..gap]
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no byte count before {gap}"));
    assert!((34_000..35_000).contains(&n), "{what}: {n} bytes went by");
    first.close().await.unwrap();
    late.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_attaching_mid_build_gets_the_logs_start_what_went_by_then_the_live_log() {
    attach_mid_build("fake://a", Protocol::Worker).await;
    attach_mid_build("fake-ng://a", Protocol::Serve).await;
}

/// A worker client that reads nothing while 16 MiB of log pass (its
/// session blocked on its full pipe) is told, when it reads again, how
/// many bytes it lost; the build and the other client went on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_client_that_falls_behind_is_told_how_much_log_it_lost() {
    const FLOOD: u64 = 16 << 20;
    let script = Script::default()
        .log(&["before the flood"])
        .gate()
        .flood(Flood::Chunks(FLOOD));
    let t = TestRelay::start(&relay_config("fake://a"), &[("a", script)]).await;
    let (drv_path, d) = drv::derivation("laggard", SYSTEM, &[]);
    let mut first = t.client(Protocol::Serve, "alice").await;
    let (p, dd) = (drv_path.clone(), d.clone());
    let first_build = tokio::spawn(async move { (first.build(&p, &dd).await, first) });
    t.fake("a")
        .wait_for("at the gate", WAIT, |r| r.at_gate == 1)
        .await;

    // A raw worker client: asks for the same build, then reads nothing.
    let (c, s) = tokio::io::duplex(256 << 10);
    let (sr, sw) = tokio::io::split(s);
    let id = ClientId {
        name: "slow".into(),
        trusted: true,
    };
    let gone = tokio_util::sync::CancellationToken::new();
    let run = nix_relay::session::worker::run(t.relay.clone(), BufReader::new(sr), sw, id, gone);
    let session = tokio::spawn(run);
    let (cr, mut w) = tokio::io::split(c);
    let mut r = BufReader::new(cr);
    let limits = Limits::default();
    let hs = client_handshake(&mut r, &mut w, WorkerVersion::LATEST, &limits);
    let codec = WorkerCodec::new(hs.await.unwrap().version, limits);
    let req = Request::BuildDerivation {
        drv_path,
        drv: d,
        mode: 0,
    };
    w.write_all(&codec.encode_request(&req)).await.unwrap();
    w.flush().await.unwrap();
    let attached = || t.relay.flights().snapshot().first().map(|f| f.attached);
    until("never attached", || attached() == Some(2)).await;
    t.fake("a").release();
    let (res, first) = first_build.await.unwrap();
    assert_eq!(res.unwrap().status, BuildStatus::Built);

    let mut lines = Vec::new();
    let end = read_stderr_stream(&mut r, codec.version, &limits, |m| {
        if let StderrMsg::Result { kind, fields, .. } = &m
            && *kind == RES_BUILD_LOG_LINE
        {
            lines.push(text(fields));
        }
        Ok(())
    })
    .await
    .unwrap();
    assert!(matches!(end, StderrEnd::Last));
    let Reply::Build(res) = codec.read_reply(&mut r, &req).await.unwrap() else {
        panic!("a build result");
    };
    assert_eq!(res.base.status, BuildStatus::Built);
    let log = lines.join("\n");
    assert!(log.contains("before the flood"), "the start was read");
    let dropped: u64 = (lines.iter())
        .filter_map(|l| {
            let (n, _) = l.split_once(" bytes of log dropped (this client fell behind)")?;
            n.rsplit(' ').next()?.parse::<u64>().ok()
        })
        .sum();
    let got: u64 = (lines.iter())
        .map(|l| l.bytes().filter(|&b| b == b'x').count() as u64)
        .sum();
    assert!(dropped >= FLOOD / 2, "told of {dropped} bytes dropped");
    assert!(
        got + dropped >= FLOOD,
        "received {got} + dropped {dropped} covers the flood"
    );
    drop((r, w));
    let _ = session.await;
    first.close().await.unwrap();
}
