//! `nix-relay status`: renders the relay's `/status` JSON
//! (`crate::http::status`) as tables.

use std::fmt::Write as _;

use serde_json::Value;

fn secs(v: &Value) -> String {
    let s = v.as_f64().unwrap_or(0.0);
    if s < 120.0 {
        format!("{s:.0}s")
    } else if s < 7200.0 {
        format!("{:.0}m", s / 60.0)
    } else {
        format!("{:.1}h", s / 3600.0)
    }
}

fn strs(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Renders `/status` JSON as tables no wider than `width`.
pub fn render(status: &Value, width: usize) -> String {
    let mut o = String::new();
    let cut = |s: String| -> String { s.chars().take(width).collect() };
    let _ = writeln!(
        o,
        "nix-relay {} up {}",
        status["version"].as_str().unwrap_or("?"),
        secs(&status["uptime_seconds"])
    );
    let _ = writeln!(
        o,
        "\n{:<12} {:<16} {:>7} {:>5}  systems",
        "BACKEND", "STATE", "SLOTS", "SPEED"
    );
    for b in status["backends"].as_array().into_iter().flatten() {
        let slots = format!("{}/{}", b["running"], b["max_jobs"]);
        let mut state = b["state"].as_str().unwrap_or("?").to_owned();
        if let Some(admin) = b["admin"].as_str().filter(|a| *a != "active") {
            state = format!("{state} {admin}");
        }
        let line = format!(
            "{:<12} {:<16} {:>7} {:>5}  {}",
            b["name"].as_str().unwrap_or("?"),
            state,
            slots,
            b["speed_factor"],
            strs(&b["systems"])
        );
        let _ = writeln!(o, "{}", cut(line));
    }
    let queues = status["queues"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(o, "\nQUEUE                 WAITING  OLDEST");
    if queues.is_empty() {
        let _ = writeln!(o, "(empty)");
    }
    for q in &queues {
        let w = q["waiting_seconds"].as_array().cloned().unwrap_or_default();
        let oldest = w.first().map(secs).unwrap_or_default();
        let mut queue = q["system"].as_str().unwrap_or("?").to_owned();
        if let Some(f) = q["features"].as_array().filter(|f| !f.is_empty()) {
            queue = format!("{queue} [{}]", strs(&Value::Array(f.clone())));
        }
        let _ = writeln!(o, "{queue:<21} {:>7}  {}", w.len(), oldest);
    }
    let _ = writeln!(
        o,
        "\nIN FLIGHT                          STATE            CLIENTS  AGE"
    );
    for f in status["flights"].as_array().into_iter().flatten() {
        let line = format!(
            "{:<34} {:<16} {:>7}  {}",
            strs(&f["outputs"]),
            f["state"].as_str().unwrap_or("?"),
            f["attached"],
            secs(&f["age_seconds"])
        );
        let _ = writeln!(o, "{}", cut(line));
    }
    let _ = writeln!(
        o,
        "\nRECENT BUILDS                      BACKEND      OUTCOME    TIME"
    );
    let recent = status["recent_builds"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for b in recent.iter().rev().take(10) {
        let line = format!(
            "{:<34} {:<12} {:<10} {}",
            b["drv"].as_str().unwrap_or("?"),
            b["backend"].as_str().unwrap_or("?"),
            b["outcome"].as_str().unwrap_or("?"),
            secs(&b["duration_seconds"])
        );
        let _ = writeln!(o, "{}", cut(line));
    }
    render_ec2(&mut o, &status["ec2"], width);
    let mib = status["store_bytes"].as_u64().unwrap_or(0) as f64 / f64::from(1 << 20);
    let _ = writeln!(o, "\nstore: {mib:.1} MiB");
    render_traffic(&mut o, &status["traffic"]);
    o
}

/// NAR bytes by direction since the relay started (nothing if absent).
fn render_traffic(o: &mut String, t: &Value) {
    if !t.is_object() {
        return;
    }
    let m = |k: &str| t[k].as_u64().unwrap_or(0) as f64 / f64::from(1 << 20);
    let _ = writeln!(
        o,
        "NARs (MiB): from clients {:.1}, to clients {:.1}, pushed to backends {:.1}, from backends {:.1}, backends substituted {:.1}, from upstream {:.1}",
        m("from_client"),
        m("to_client"),
        m("to_backend"),
        m("from_backend"),
        m("backend_substituted"),
        m("upstream"),
    );
}

/// The EC2 part of the table: today's spend against the budget and the
/// instances (nothing without `[ec2]`).
fn render_ec2(o: &mut String, ec2: &Value, width: usize) {
    if !ec2.is_object() {
        return;
    }
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let _ = writeln!(
        o,
        "\nEC2 owner={}  spent today ${:.2} of ${:.2}",
        text(&ec2["relay_id"]),
        ec2["spent_today"].as_f64().unwrap_or(0.0),
        ec2["budget_per_day"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        o,
        "{:<20} {:<12} {:<16} {:<10} {:<10} AGE",
        "INSTANCE", "TEMPLATE", "BACKEND", "PHASE", "STATE"
    );
    let instances = ec2["instances"].as_array().cloned().unwrap_or_default();
    if instances.is_empty() {
        let _ = writeln!(o, "(none)");
    }
    for i in &instances {
        let line = format!(
            "{:<20} {:<12} {:<16} {:<10} {:<10} {}",
            text(&i["id"]),
            text(&i["template"]),
            text(&i["backend"]),
            text(&i["phase"]),
            text(&i["state"]),
            secs(&i["age_seconds"])
        );
        let _ = writeln!(o, "{}", line.chars().take(width).collect::<String>());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::client::http_get;
    use crate::http::status::router;
    use crate::session::BuildRecord;
    use crate::session::Core;
    use crate::session::flight::FlightKey;
    use crate::store::Scope;
    use crate::wire::store_path::StorePath;
    use std::sync::Arc;

    fn path(name: &str) -> StorePath {
        StorePath::parse(&format!("/nix/store/{}-{name}", "1".repeat(32))).unwrap()
    }

    #[tokio::test]
    async fn status_shows_no_private_derivation_name_and_still_renders() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), Default::default()).unwrap();
        let sched = crate::scheduler::Scheduler::new(vec![], 10);
        let relay = Arc::new(Core::new(store, sched, Default::default(), false));
        let bob = Scope::Private("bob".into());
        let ok = crate::metrics::Outcome::Success;
        let took = std::time::Duration::from_secs(3);
        for (name, scope) in [
            ("secret-thing-1.0.drv", &bob),
            ("hello-2.12.drv", &Scope::Public),
        ] {
            relay.record(BuildRecord::new(
                &path(name),
                scope,
                "x86_64-linux",
                "h1",
                ok,
                took,
            ));
        }
        let (_a, _) = relay.flights().attach(
            FlightKey {
                scope: bob,
                outputs: vec![path("secret-out")],
            },
            false,
        );
        let pubkey = FlightKey {
            scope: Scope::Public,
            outputs: vec![path("public-out")],
        };
        let (_b, _) = relay.flights().attach(pubkey, false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/status", listener.local_addr().unwrap());
        tokio::spawn(crate::http::serve(listener, router(relay, None)));
        let body = http_get(&url).await.unwrap();
        assert!(!body.contains("secret"), "{body}");
        assert!(
            body.contains("hello-2.12") && body.contains("public-out"),
            "{body}"
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["recent_builds"][0]["drv"], "(private)");
        assert_eq!(v["recent_builds"][0]["private"], true);
        let table = render(&v, 120);
        assert!(
            table.contains("(private)") && table.contains("hello-2.12"),
            "{table}"
        );
        assert!(!table.contains("secret"), "{table}");
    }

    #[test]
    fn draining_backends_and_feature_queues_show_in_the_table() {
        let status = serde_json::json!({
            "version": "0.1.0",
            "uptime_seconds": 5,
            "backends": [
                {"name": "h1", "state": "up", "admin": "draining", "running": 1,
                 "max_jobs": 2, "speed_factor": 1.0, "systems": ["x86_64-linux"]},
                {"name": "h2", "state": "up", "admin": "active", "running": 0,
                 "max_jobs": 2, "speed_factor": 1.0, "systems": ["x86_64-linux"]}
            ],
            "queues": [{"system": "x86_64-linux", "features": ["kvm"], "waiting_seconds": [3.0]}],
            "flights": [], "recent_builds": [], "store_bytes": 0,
            "traffic": {"from_client": 1048576, "to_backend": 0, "backend_substituted": 222298112}
        });
        let out = render(&status, 100);
        assert!(out.contains("from clients 1.0,"), "{out}");
        assert!(out.contains("backends substituted 212.0"), "{out}");
        assert!(out.contains("h1           up draining"), "{out}");
        assert!(out.contains("h2           up  "), "{out}");
        assert!(out.contains("x86_64-linux [kvm]"), "{out}");
        assert!(!out.contains("EC2"), "no [ec2], no EC2 table: {out}");
    }

    #[test]
    fn ec2_spend_and_instances_show_in_the_table() {
        let status = serde_json::json!({
            "version": "0.1.0", "uptime_seconds": 5, "backends": [], "queues": [],
            "flights": [], "recent_builds": [], "store_bytes": 0,
            "ec2": {"relay_id": "ser5", "budget_per_day": 20.0, "spent_today": 1.5,
                    "instances": [{"id": "i-0abc", "template": "graviton",
                                   "backend": "ec2-graviton-1", "phase": "joined",
                                   "state": "running", "age_seconds": 600}],
                    "cost": {}}
        });
        let out = render(&status, 120);
        assert!(
            out.contains("EC2 owner=ser5  spent today $1.50 of $20.00"),
            "{out}"
        );
        assert!(
            out.contains(
                "i-0abc               graviton     ec2-graviton-1   joined     running    10m"
            ),
            "{out}"
        );
    }
}
