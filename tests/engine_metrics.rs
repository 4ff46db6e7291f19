//! Metrics and status in-process (feature `testing`): the counters move by
//! exactly what a build and a cache hit account for, the Prometheus text
//! is well formed with no store path or address in a label, and `/status`
//! has its documented schema. The recorder is process-global: this binary
//! has ONE test, so nothing else moves the counters.

use std::collections::HashMap;
use std::time::Duration;

use nix_relay::config::Protocol;
use nix_relay::testing::drv;
use nix_relay::testing::fake::Script;
use nix_relay::testing::harness::{SYSTEM, TestRelay, fake_backend};
use nix_relay::wire::build::BuildStatus;
use serde_json::Value;

const SYS: &str = SYSTEM;
const WAIT: Duration = Duration::from_secs(10);

/// Samples by `name{labels}`, checking the text as promtool would: every
/// sample a number, of a family with a `# TYPE`.
fn samples(text: &str) -> HashMap<String, f64> {
    let mut typed = Vec::new();
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.push(rest.split_whitespace().next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        let name = key.split('{').next().unwrap();
        assert!(
            typed.iter().any(|f| name
                .strip_prefix(f.as_str())
                .is_some_and(|s| s.is_empty() || s.starts_with('_'))),
            "{name} has no # TYPE"
        );
        assert!(
            !key.contains("/nix/store") && !key.contains("127.0.0.1"),
            "label with a path or address: {line}"
        );
        out.insert(key.to_owned(), v);
    }
    out
}

fn need(obj: &Value, keys: &[&str], what: &str) {
    let missing: Vec<_> = keys.iter().filter(|k| obj.get(**k).is_none()).collect();
    assert!(missing.is_empty(), "{what}: missing {missing:?} in {obj}");
}

fn status_has_its_schema(status: &Value) {
    let top = [
        "version",
        "uptime_seconds",
        "backends",
        "queues",
        "flights",
        "recent_builds",
        "store_bytes",
        "store_max_bytes",
    ];
    need(status, &top, "status");
    let backends = status["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 1, "{backends:?}");
    for b in backends {
        need(
            b,
            &[
                "name",
                "systems",
                "features",
                "state",
                "running",
                "max_jobs",
                "speed_factor",
            ],
            "backend",
        );
        assert!(
            ["up", "down", "unknown"].contains(&b["state"].as_str().unwrap()),
            "{b}"
        );
    }
    for q in status["queues"].as_array().unwrap() {
        need(q, &["system", "waiting_seconds"], "queue");
    }
    for f in status["flights"].as_array().unwrap() {
        need(
            f,
            &[
                "outputs",
                "private",
                "attached",
                "state",
                "age_seconds",
                "log_bytes",
            ],
            "flight",
        );
    }
    let recent = status["recent_builds"].as_array().unwrap();
    for r in recent {
        need(
            r,
            &[
                "drv",
                "system",
                "backend",
                "outcome",
                "duration_seconds",
                "finished_unix",
            ],
            "build",
        );
    }
    let ours =
        |r: &&Value| r["drv"] == "metered" && r["backend"] == "a" && r["outcome"] == "success";
    assert_eq!(recent.iter().filter(ours).count(), 1, "{recent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_exactly_for_a_build_and_a_cache_hit_and_status_has_its_schema() {
    let handle = nix_relay::metrics::install([SYS.to_owned()].into()).unwrap();
    nix_relay::metrics::register_zeroes(&[("a".to_owned(), 1)]);
    let config = fake_backend("a", "fake://a", "");
    let t = TestRelay::start(&config, &[("a", Script::default())]).await;
    let before = samples(&handle.render());
    let (src, src_nar) = drv::source("metered-src", b"counted", &[]);
    let (drv_path, d) = drv::derivation("metered", SYS, std::slice::from_ref(&src.path));
    let out = drv::out_path(&d);
    let mut c = t.client(Protocol::Serve, "alice").await;
    c.upload(&src, &src_nar).await.unwrap();
    assert_eq!(
        c.build(&drv_path, &d).await.unwrap().status,
        BuildStatus::Built
    );
    let nar = c.fetch(&out).await.unwrap();
    c.close().await.unwrap();
    t.wait_stored(&out, WAIT).await;
    let mut c = t.client(Protocol::Serve, "bob").await;
    assert_eq!(
        c.build(&drv_path, &d).await.unwrap().status,
        BuildStatus::AlreadyValid
    );
    assert_eq!(c.fetch(&out).await.unwrap(), nar);
    c.close().await.unwrap();

    let after = samples(&handle.render());
    let delta =
        |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let (out_n, src_n) = (nar.len() as f64, src_nar.len() as f64);
    let expected = [
        (
            r#"nix_relay_builds_total{system="x86_64-linux",backend="a",outcome="success"}"#,
            1.0,
        ),
        ("nix_relay_cache_hits_total", 1.0),
        ("nix_relay_cache_misses_total", 1.0),
        ("nix_relay_dedup_attaches_total", 0.0),
        ("nix_relay_retries_total", 0.0),
        // Sessions are counted by the SSH front (front/server.rs), which
        // the harness does not run: they must not move here.
        (r#"nix_relay_sessions_total{protocol="serve"}"#, 0.0),
        (r#"nix_relay_sessions_total{protocol="worker"}"#, 0.0),
        (r#"nix_relay_sessions_active{protocol="serve"}"#, 0.0),
        (
            r#"nix_relay_nar_bytes_total{direction="from_client"}"#,
            src_n,
        ),
        (
            r#"nix_relay_nar_bytes_total{direction="to_backend"}"#,
            src_n,
        ),
        (
            r#"nix_relay_nar_bytes_total{direction="from_backend"}"#,
            out_n,
        ),
        (
            r#"nix_relay_nar_bytes_total{direction="to_client"}"#,
            2.0 * out_n,
        ),
    ];
    let moved: Vec<_> = expected.iter().map(|(k, _)| (*k, delta(k))).collect();
    assert_eq!(moved, expected, "counter deltas");

    let status = serde_json::to_value(nix_relay::http::status::collect(&t.relay)).unwrap();
    status_has_its_schema(&status);
    let table = nix_relay::status::render(&status, 100);
    assert!(
        table.lines().any(|l| l.starts_with("a ")),
        "no row for a:\n{table}"
    );
}
