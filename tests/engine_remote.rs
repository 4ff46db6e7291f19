//! Remote-store builds in-process (feature `testing`): a worker client
//! copies real `.drv` files into the relay and asks BuildPathsWithResults,
//! BuildPaths and QueryMissing for `drv!out`; the relay builds the DAG on
//! fake backends, inputs first, and answers as a Nix daemon would.

use nix_relay::config::Protocol;
use nix_relay::testing::drv_aterm::{DrvFile, drv_file};
use nix_relay::testing::fake::{Outcome, Script};
use nix_relay::testing::harness::{SYSTEM, TestClient, TestRelay, fake_backend};
use nix_relay::wire::build::BuildStatus;
use nix_relay::wire::worker::{Reply, Request};

fn relay_config() -> String {
    fake_backend("a", "fake-ng://a", "max_jobs = 4\n")
}

/// leaf-a, leaf-b (two outputs) and top using both.
fn dag() -> (DrvFile, DrvFile, DrvFile) {
    let a = drv_file("leaf-a", SYSTEM, &["out"], &[]);
    let b = drv_file("leaf-b", SYSTEM, &["out", "dev"], &[]);
    let top = drv_file("top", SYSTEM, &["out"], &[&a, &b]);
    (a, b, top)
}

async fn copy(c: &mut TestClient, drvs: &[&DrvFile]) {
    for d in drvs {
        c.upload(&d.info, &d.nar).await.unwrap();
    }
}

async fn build_with_results(
    c: &mut TestClient,
    paths: &[String],
) -> Vec<(String, BuildStatus, Vec<(String, String)>)> {
    let req = Request::BuildPathsWithResults {
        paths: paths.to_vec(),
        mode: 0,
    };
    match c.call(req).await.unwrap() {
        Reply::BuildResults(r) => r
            .into_iter()
            .map(|(p, r)| (p, r.base.status, r.base.built_outputs))
            .collect(),
        other => panic!("unexpected reply {other:?}"),
    }
}

async fn missing(c: &mut TestClient, paths: &[String]) -> (Vec<String>, Vec<String>) {
    match c
        .call(Request::QueryMissing {
            paths: paths.to_vec(),
        })
        .await
        .unwrap()
    {
        Reply::Missing(m) => (
            m.will_build.iter().map(|p| p.to_string()).collect(),
            m.unknown.iter().map(|p| p.to_string()).collect(),
        ),
        other => panic!("unexpected reply {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_dag_builds_inputs_first_and_answers_with_realisations() {
    let t = TestRelay::start(
        &relay_config(),
        &[("a", Script::default().log(&["hello from the fake"]))],
    )
    .await;
    let (a, b, top) = dag();
    let mut c = t.client(Protocol::Worker, "alice").await;
    copy(&mut c, &[&a, &b, &top]).await;
    let want = vec![format!("{}!out", top.path)];

    let (mut will, unknown) = missing(&mut c, &want).await;
    will.sort();
    let mut expect = vec![a.path.to_string(), b.path.to_string(), top.path.to_string()];
    expect.sort();
    assert_eq!(
        (will, unknown),
        (expect, vec![]),
        "QueryMissing before the build"
    );

    let res = build_with_results(&mut c, &want).await;
    assert_eq!(res.len(), 1);
    let (path, status, outs) = &res[0];
    assert_eq!(
        (path, *status),
        (&want[0], BuildStatus::Built),
        "log:\n{}",
        c.log()
    );
    assert_eq!(outs.len(), 1);
    assert!(
        outs[0].0.ends_with("!out") && outs[0].1.contains(top.out("out").base_name()),
        "{outs:?}"
    );

    let started = t.fake("a").record().builds_started;
    assert_eq!(started.len(), 3, "{started:?}");
    assert_eq!(started[2], top.path, "top is built after its inputs");
    for p in [a.out("out"), b.out("out"), b.out("dev"), top.out("out")] {
        assert!(t.stored(&p).await.is_some(), "{p} stored in the relay");
    }
    assert!(c.log().contains("hello from the fake"), "log:\n{}", c.log());

    assert_eq!(
        missing(&mut c, &want).await,
        (vec![], vec![]),
        "nothing left to build"
    );
    let again = build_with_results(&mut c, &want).await;
    assert_eq!(again[0].1, BuildStatus::AlreadyValid);
    assert_eq!(
        again[0].2.len(),
        1,
        "realisations for an already valid output too"
    );
    let all = build_with_results(&mut c, &[format!("{}!*", b.path)]).await;
    assert_eq!(all[0].2.len(), 2, "drv!* names every output");
    assert_eq!(
        t.fake("a").record().builds_started.len(),
        3,
        "no second build"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_input_fails_what_depends_on_it_and_build_paths_says_why() {
    let failing = Script::default().outcome(Outcome::Fail("leaf exploded".into()));
    let t = TestRelay::start(&relay_config(), &[("a", failing)]).await;
    let (a, b, top) = dag();
    let mut c = t.client(Protocol::Worker, "alice").await;
    copy(&mut c, &[&a, &b, &top]).await;
    let want = vec![format!("{}!out", top.path)];
    let res = build_with_results(&mut c, &want).await;
    assert_eq!(res[0].1, BuildStatus::DependencyFailed, "log:\n{}", c.log());
    assert_eq!(
        t.fake("a").record().builds_started.len(),
        2,
        "both leaves tried, top never"
    );

    let err = c
        .call(Request::BuildPaths {
            paths: want,
            mode: 0,
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("build failed"), "{err}");
    // The session goes on after an op's error.
    let valid = c
        .call(Request::IsValidPath {
            path: top.path.clone(),
        })
        .await
        .unwrap();
    assert_eq!(valid, Reply::Bool(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_derivation_not_copied_or_not_written_by_nix_is_refused_clearly() {
    let t = TestRelay::start(&relay_config(), &[("a", Script::default())]).await;
    let (a, b, top) = dag();
    let mut c = t.client(Protocol::Worker, "alice").await;
    copy(&mut c, &[&a, &top]).await;
    let want = vec![format!("{}!out", top.path)];
    let err = c
        .call(Request::BuildPaths {
            paths: want.clone(),
            mode: 0,
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("is not in the relay store"),
        "{err}"
    );
    assert_eq!(missing(&mut c, &want).await.1, vec![b.path.to_string()]);

    // A .drv whose output path is not what its hash names.
    let mut forged = drv_file("forged", SYSTEM, &["out"], &[]);
    forged.drv.outputs[0].path = a.out("out").to_string();
    let forged = rewrap(forged);
    copy(&mut c, &[&forged]).await;
    let req = Request::BuildPaths {
        paths: vec![format!("{}!out", forged.path)],
        mode: 0,
    };
    let err = c.call(req).await.unwrap_err().to_string();
    assert!(err.contains("but the derivation names"), "{err}");
    assert!(t.fake("a").record().builds_started.is_empty());
}

/// `f` with its ATerm as changed, stored under its new text hash.
fn rewrap(f: DrvFile) -> DrvFile {
    nix_relay::testing::drv_aterm::store_as_is("forged", f.drv)
}
