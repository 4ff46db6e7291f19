//! Placement and scheduler operations in-process (feature `testing`): a
//! refusing fast backend, fairness between clients, drain / undrain
//! through the admin endpoint, and a SIGHUP reload mid-build.

use std::time::Duration;

use nix_relay::cli::{AdminTarget, drain};
use nix_relay::config::Protocol;
use nix_relay::testing::drv;
use nix_relay::testing::fake::{Connect, Script};
use nix_relay::testing::harness::{SYSTEM, TestClient, TestRelay, fake_backend};
use nix_relay::wire::build::{BasicDerivation, BuildResult, BuildStatus};
use nix_relay::wire::store_path::StorePath;
use tokio::task::JoinHandle;

const SYS: &str = SYSTEM;
const WAIT: Duration = Duration::from_secs(10);

/// `[[backend]]` NAME on `fake://NAME` with extra TOML lines.
fn backend(name: &str, extra: &str) -> String {
    let lines = format!("max_jobs = 2\nconnect_timeout = \"1s\"\n{extra}\n");
    fake_backend(name, &format!("fake://{name}"), &lines)
}

/// Starts `c` building `drv`; the task gives back the client and result.
fn spawn_build(
    mut c: TestClient,
    drv: &(StorePath, BasicDerivation),
) -> JoinHandle<(TestClient, BuildResult)> {
    let (p, d) = drv.clone();
    tokio::spawn(async move {
        let r = c.build(&p, &d).await.unwrap();
        (c, r)
    })
}

async fn built(h: JoinHandle<(TestClient, BuildResult)>) -> TestClient {
    let (c, r) = h.await.unwrap();
    assert_eq!(r.status, BuildStatus::Built, "log:\n{}", c.log());
    c
}

/// A derivation only a backend with the `big-parallel` feature builds.
fn big_parallel(name: &str) -> (StorePath, BasicDerivation) {
    let (p, mut d) = drv::derivation(name, SYS, &[]);
    d.env
        .push((b"requiredSystemFeatures".to_vec(), b"big-parallel".to_vec()));
    (p, d)
}

/// Waits until `n` jobs wait in the scheduler's queues.
async fn wait_queued(t: &TestRelay, n: usize) {
    let waiting = || -> usize {
        let snap = t.relay.scheduler().snapshot();
        snap.queues.iter().map(|q| q.waiting_seconds.len()).sum()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while waiting() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {n} waiting: {:?}",
            t.relay.scheduler().snapshot().queues
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_fastest_backend_is_shown_down_and_a_dag_builds_on_the_others() {
    let mut config = String::new();
    for n in ["h1", "h2", "h3"] {
        config += &backend(n, "");
    }
    config += &backend("h9", "speed_factor = 10.0");
    let mut fakes = vec![("h9", Script::default().connect(Connect::Refuse))];
    fakes.extend(["h1", "h2", "h3"].map(|n| (n, Script::default())));
    let t = TestRelay::start(&config, &fakes).await;

    let leaves: Vec<_> = (0..3)
        .map(|i| drv::derivation(&format!("leaf-{i}"), SYS, &[]))
        .collect();
    let mut running = Vec::new();
    for (i, leaf) in leaves.iter().enumerate() {
        running.push(spawn_build(
            t.client(Protocol::Serve, &format!("c{i}")).await,
            leaf,
        ));
    }
    let mut logs = String::new();
    for h in running {
        logs += &built(h).await.log();
    }
    let outs: Vec<StorePath> = leaves.iter().map(|(_, d)| drv::out_path(d)).collect();
    for o in &outs {
        t.wait_stored(o, WAIT).await;
    }
    let (top_path, top) = drv::derivation("top", SYS, &outs);
    let mut c = t.client(Protocol::Serve, "c-top").await;
    let res = c.build(&top_path, &top).await.unwrap();
    assert_eq!(res.status, BuildStatus::Built, "log:\n{}", c.log());
    assert!(!c.fetch(&drv::out_path(&top)).await.unwrap().is_empty());
    logs += &c.log();

    assert!(logs.contains(" on h9"), "h9 (fastest) was tried:\n{logs}");
    assert!(logs.contains("retrying elsewhere"), "{logs}");
    let h9 = t.fake("h9").record();
    assert!(
        h9.connections >= 1 && h9.builds_started.is_empty(),
        "{h9:?}"
    );
    let mut on_others: Vec<StorePath> = ["h1", "h2", "h3"]
        .iter()
        .flat_map(|n| t.fake(n).record().builds_started)
        .collect();
    on_others.sort();
    let mut all: Vec<StorePath> = leaves.iter().map(|(p, _)| p.clone()).collect();
    all.push(top_path);
    all.sort();
    assert_eq!(on_others, all, "every build ran once, on h1..h3");
    assert_eq!(t.backend_state("h9"), "down");
    let line = t.status_line("h9");
    assert_eq!(line.split_whitespace().nth(1), Some("down"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_slot_a_second_clients_build_runs_before_the_first_clients_queue_drains() {
    let config = backend("h1", "").replace("max_jobs = 2", "max_jobs = 1");
    let slow = Script::default().taking(Duration::from_millis(60));
    let t = TestRelay::start(&config, &[("h1", slow)]).await;
    let wide: Vec<_> = (0..12)
        .map(|i| drv::derivation(&format!("wide-{i}"), SYS, &[]))
        .collect();
    let mut a_builds = Vec::new();
    for w in &wide {
        a_builds.push(spawn_build(t.client(Protocol::Serve, "lab").await, w));
    }
    wait_queued(&t, 8).await;
    let snap = t.relay.scheduler().snapshot();
    let w: usize = snap.queues.iter().map(|q| q.waiting_seconds.len()).sum();
    let b = drv::derivation("slow-1s", SYS, &[]);
    let b_client = built(spawn_build(t.client(Protocol::Serve, "lab2").await, &b)).await;
    for h in a_builds {
        built(h).await;
    }
    let log = b_client.log();
    let pos: usize = (log.split("waiting: position ").nth(1))
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("lab2's build never waited:\n{log}"));
    assert!(
        pos <= 2,
        "lab2 queued at position {pos} behind {w} of lab's"
    );
    let order = t.fake("h1").record().builds_started;
    assert_eq!(order.len(), 13, "{order:?}");
    let at = order
        .iter()
        .position(|p| *p == b.0)
        .expect("lab2's build ran");
    let after = order.len() - at - 1;
    // Round-robin: of the w waiting when lab2 arrived, at most one more
    // (plus one that may have started meanwhile) runs before lab2's.
    assert!(
        after + 2 >= w,
        "only {after} of lab's builds ran after lab2's ({w} waiting when it arrived)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_backend_finishes_its_build_takes_no_new_one_until_undrained() {
    let config = backend("h1", "supported_features = [\"big-parallel\"]") + &backend("h2", "");
    let slow = Script::default().taking(Duration::from_millis(400));
    let t = TestRelay::start(&config, &[("h1", slow), ("h2", Script::default())]).await;
    let admin = AdminTarget {
        config: None,
        url: Some(t.admin_url().await),
    };
    let h1 = t.fake("h1");
    let slow_drv = drv::derivation("slow", SYS, &[]);
    let running = spawn_build(t.client(Protocol::Serve, "lab").await, &slow_drv);
    h1.wait_for("building", WAIT, |r| r.builds_started.len() == 1)
        .await;

    drain("h1", true, &admin).await.expect("nix-relay drain h1");
    assert_eq!(t.backend_admin("h1"), "draining");
    assert!(
        t.status_line("h1").contains("draining"),
        "{}",
        t.status_table()
    );
    let e = drain("h7", true, &admin)
        .await
        .expect_err("unknown backend");
    assert!(
        format!("{e:#}").contains("no backend named \"h7\""),
        "{e:#}"
    );

    let feature = big_parallel("feature");
    let waiter = t.client(Protocol::Serve, "lab").await;
    let only_h1 = spawn_build(waiter, &feature);
    wait_queued(&t, 1).await;
    let many = drv::derivation("many", SYS, &[]);
    built(spawn_build(t.client(Protocol::Serve, "lab").await, &many)).await;
    assert_eq!(t.fake("h2").record().builds_started, [many.0]);
    built(running).await;
    let rec = h1.record();
    assert_eq!(
        rec.builds_finished,
        std::slice::from_ref(&slow_drv.0),
        "survived the drain"
    );
    assert_eq!(rec.builds_started, [slow_drv.0], "no new build on h1");
    assert!(!only_h1.is_finished(), "the big-parallel job waits for h1");
    assert_eq!(
        t.relay.scheduler().snapshot().queues.len(),
        1,
        "it is queued"
    );

    h1.set_script(Script::default());
    drain("h1", false, &admin)
        .await
        .expect("nix-relay undrain h1");
    assert_eq!(t.backend_admin("h1"), "active");
    built(only_h1).await;
    let after = drv::derivation("after", SYS, &[]);
    built(spawn_build(t.client(Protocol::Serve, "lab").await, &after)).await;
    let started = h1.record().builds_started;
    assert_eq!(started[1..], [feature.0, after.0], "h1 serves again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_mid_build_removes_adds_and_changes_backends_and_a_broken_config_changes_nothing() {
    let config = backend("h1", "") + &backend("h2", "") + &backend("h3", "");
    let slow = Script::default().taking(Duration::from_millis(400));
    let scripts = [
        ("h1", slow),
        ("h2", Script::default()),
        ("h3", Script::default()),
    ];
    let mut t = TestRelay::start(&config, &scripts).await;
    let slow_drv = drv::derivation("slow", SYS, &[]);
    let running = spawn_build(t.client(Protocol::Serve, "lab").await, &slow_drv);
    (t.fake("h1"))
        .wait_for("building", WAIT, |r| r.builds_started.len() == 1)
        .await;

    let h3b = backend("h3b", "speed_factor = 5.0");
    let new = backend("h2", "speed_factor = 0.5") + &backend("h3", "") + &h3b;
    let summary = t.reload(&new, &[("h3b", Script::default())]);
    assert_eq!(summary.unwrap().to_string(), "+h3b -h1 ~h2");
    assert_eq!(t.backend_admin("h1"), "removing");
    let many = drv::derivation("many", SYS, &[]);
    built(spawn_build(t.client(Protocol::Serve, "lab").await, &many)).await;
    assert_eq!(t.fake("h3b").record().builds_started, [many.0]);
    let mut more = Vec::new();
    for i in 0..4 {
        let d = drv::derivation(&format!("top-{i}"), SYS, &[]);
        more.push(spawn_build(t.client(Protocol::Serve, "lab").await, &d));
    }
    for h in more {
        built(h).await;
    }
    built(running).await;
    let h1 = t.fake("h1").record();
    assert_eq!(
        h1.builds_finished,
        std::slice::from_ref(&slow_drv.0),
        "completed"
    );
    assert_eq!(
        h1.builds_started,
        [slow_drv.0],
        "no new work on the removed h1"
    );
    assert_eq!(t.backend_admin("h1"), "absent", "forgotten after its build");

    broken_reload_changes_nothing(&mut t, &h3b);
}

/// A reload of a config with problems (empty systems, no slots) is refused
/// with every problem named, and leaves the backends as they were.
fn broken_reload_changes_nothing(t: &mut TestRelay, h3b: &str) {
    let no_systems = backend("h2", "").replace(&format!("[\"{SYS}\"]"), "[]");
    let no_slots = backend("h3", "").replace("max_jobs = 2", "max_jobs = 0");
    let broken = no_systems + &no_slots + h3b;
    let problems = t
        .reload(&broken, &[])
        .expect_err("a broken config is refused");
    let all = problems.join("\n");
    assert!(all.contains("systems is empty"), "{all}");
    assert!(all.contains("max_jobs must be at least 1"), "{all}");
    assert_eq!(t.backend_admin("h3b"), "active");
    let snap = t.relay.scheduler().snapshot();
    let names: Vec<_> = snap
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.speed_factor))
        .collect();
    assert_eq!(
        names,
        [("h2", 0.5), ("h3", 1.0), ("h3b", 5.0)],
        "nothing changed"
    );
}
