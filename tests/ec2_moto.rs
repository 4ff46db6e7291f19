//! EC2 lifecycle against a real EC2 API double: a moto server on
//! 127.0.0.1 (installed by tests/setup.sh into /opt/nix-relay-test/moto;
//! `NIX_RELAY_MOTO` overrides the path). Without moto the tests say so and
//! pass, except under CI (`CI` set), where a missing moto is a failure.
#![cfg(feature = "ec2")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use nix_relay::config::ec2::{Ec2Config, Template};
use nix_relay::ec2::api::{self, ErrorKind, RetryPolicy};
use nix_relay::ec2::manager::{Manager, Phase, Probe};
use nix_relay::ec2::{Ec2Api, LaunchSpec, Market, query, reconcile};
use nix_relay::scheduler::{Acquired, JobSpec, Scheduler};

#[path = "ec2_moto/proxy.rs"]
mod proxy;
use proxy::throttling_server;

const BUILDER: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGsl9bcFHoLUq3ANWXnbW6LpSeLX/vfMeDfPmkl2aNB1";

struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn moto() -> Option<Moto> {
    let bin = std::env::var("NIX_RELAY_MOTO")
        .unwrap_or_else(|_| "/opt/nix-relay-test/moto/bin/moto_server".into());
    if !std::path::Path::new(&bin).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{bin} missing under CI: tests/setup.sh installs it"
        );
        eprintln!("SKIPPED: {bin} not found (run tests/setup.sh as root to install moto)");
        return None;
    }
    let port = free_port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting moto_server");
    let m = Moto { child, port };
    for _ in 0..300 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(m);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moto_server did not listen on {port} within 30 s");
}

fn arm() -> Template {
    Template {
        name: "arm".into(),
        systems: vec!["aarch64-linux".into()],
        supported_features: vec![],
        instance_type: "c7g.2xlarge".into(),
        ami: "ami-12c6146b".into(),
        subnet: None,
        security_group: None,
        spot: false,
        price_per_hour: 0.29,
        on_demand_price_per_hour: None,
        boot_estimate: Duration::from_secs(120),
        idle_grace: Duration::from_secs(1),
        max_lifetime: Duration::from_secs(3600),
        max_instances: 2,
        speed_factor: 1.0,
        max_jobs: None,
    }
}

fn config(port: u16, relay_id: &str, budget: f64) -> Ec2Config {
    let mut x86 = arm();
    x86.name = "x86".into();
    x86.systems = vec!["x86_64-linux".into()];
    x86.instance_type = "c7i.2xlarge".into();
    Ec2Config {
        region: "us-east-1".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        budget_per_day: budget,
        relay_id: relay_id.into(),
        ssh_key: "/nonexistent".into(),
        ssh_user: "nix-relay".into(),
        dead_man_switch: Duration::from_secs(1800),
        reconcile_interval: Duration::from_secs(60),
        templates: vec![x86, arm()],
    }
}

async fn api(cfg: &Ec2Config) -> Arc<dyn Ec2Api> {
    Arc::new(query::connect_with_keys(cfg, "testing", "testing").expect("the endpoint"))
}

async fn manager(cfg: &Ec2Config) -> (Manager, Arc<Scheduler>) {
    manager_in(cfg, None).await
}

/// A manager that keeps its spend ledger in `state_dir`, if given.
async fn manager_in(
    cfg: &Ec2Config,
    state_dir: Option<&std::path::Path>,
) -> (Manager, Arc<Scheduler>) {
    let sched = Scheduler::new(vec![], 100);
    let probe: Probe = Arc::new(|_| Box::pin(async { true }));
    let mut m = Manager::new(
        api(cfg).await,
        cfg.clone(),
        sched.clone(),
        BUILDER.into(),
        probe,
        SystemTime::now(),
    );
    if let Some(dir) = state_dir {
        m = m.with_ledger_file(dir);
    }
    m.start().await.expect("DescribeInstanceTypes");
    (m, sched)
}

fn queue_arm(
    s: &Arc<Scheduler>,
) -> tokio::sync::oneshot::Receiver<Result<nix_relay::scheduler::Slot, nix_relay::scheduler::Error>>
{
    let job = JobSpec {
        client: "c".into(),
        system: "aarch64-linux".into(),
        required_features: vec![],
        ..Default::default()
    };
    match s.try_acquire(job).unwrap() {
        Acquired::Queued { rx, .. } => rx,
        Acquired::Now(_) => panic!("nothing should be free"),
    }
}

/// An unsigned EC2 Query API GET (moto does not check signatures).
fn query(port: u16, params: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=x";
    write!(
        s,
        "GET /?{params}&Version=2016-11-15 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn between<'a>(s: &'a str, a: &str, b: &str) -> &'a str {
    let i = s.find(a).unwrap_or_else(|| panic!("{a} not in {s}")) + a.len();
    &s[i..i + s[i..].find(b).unwrap()]
}

async fn live(cfg: &Ec2Config) -> Vec<nix_relay::ec2::Instance> {
    let all = api(cfg).await.describe_owned(&cfg.relay_id).await.unwrap();
    all.into_iter().filter(|i| !i.state.is_gone()).collect()
}

#[tokio::test]
async fn an_aarch64_job_launches_the_arm_template_with_tags_user_data_and_terminate_on_shutdown() {
    let Some(moto) = moto() else { return };
    let cfg = config(moto.port, "relay-launch", 100.0);
    let (mut m, sched) = manager(&cfg).await;
    let _rx = queue_arm(&sched);
    m.tick().await;
    let up = live(&cfg).await;
    assert_eq!(up.len(), 1, "one instance for one aarch64 job");
    let id = &up[0].id;
    assert_eq!(up[0].template.as_deref(), Some("arm"));
    let desc = query(
        moto.port,
        &format!("Action=DescribeInstances&InstanceId.1={id}"),
    );
    assert!(
        desc.contains("<instanceType>c7g.2xlarge</instanceType>"),
        "{desc}"
    );
    for tag in [
        "<key>owner</key><value>relay-launch</value>",
        "<key>nix-relay-template</key><value>arm</value>",
        "<key>Name</key><value>nix-relay relay-launch arm</value>",
    ] {
        assert!(
            desc.replace(['\n', ' '], "")
                .contains(&tag.replace(' ', "")),
            "tag {tag} missing: {desc}"
        );
    }
    let sd = query(
        moto.port,
        &format!(
            "Action=DescribeInstanceAttribute&InstanceId={id}&Attribute=instanceInitiatedShutdownBehavior"
        ),
    );
    assert!(
        sd.replace(['\n', ' '], "")
            .contains("<value>terminate</value>"),
        "{sd}"
    );
    let ud = query(
        moto.port,
        &format!("Action=DescribeInstanceAttribute&InstanceId={id}&Attribute=userData"),
    );
    let b64 = between(
        &ud.replace(['\n', ' '], ""),
        "<userData><value>",
        "</value>",
    )
    .to_owned();
    let script = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap();
    let (builder, host) =
        nix_relay::ec2::userdata::extract(&script).expect("keys in the user data");
    assert_eq!(builder, BUILDER);
    let host = russh::keys::PrivateKey::from_openssh(&host).unwrap();
    let t = m.tracked().next().unwrap();
    assert_eq!(
        t.host_key.key_data(),
        host.public_key().key_data(),
        "pinned = installed"
    );
    m.tick().await;
    let t = m.tracked().next().unwrap();
    assert_eq!(t.phase, Phase::Joined);
    let snap = sched.snapshot();
    let b = snap
        .backends
        .iter()
        .find(|b| b.name == "ec2-arm-0")
        .unwrap();
    assert_eq!(
        b.max_jobs, 8,
        "max_jobs from DescribeInstanceTypes (c7g.2xlarge: 8 vCPUs)"
    );
}

#[tokio::test]
async fn an_idle_instance_is_terminated() {
    let Some(moto) = moto() else { return };
    let cfg = config(moto.port, "relay-idle", 100.0);
    let (mut m, sched) = manager(&cfg).await;
    let mut rx = queue_arm(&sched);
    m.tick().await;
    m.tick().await;
    let slot = rx.try_recv().expect("granted").expect("a slot");
    drop(slot);
    m.tick().await;
    assert_eq!(live(&cfg).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await; // idle_grace is 1 s
    m.tick().await;
    assert!(live(&cfg).await.is_empty(), "terminated after idle_grace");
    assert_eq!(m.tracked().count(), 0);
}

#[tokio::test]
async fn after_kill_9_a_restarted_relay_and_the_sweep_leave_nothing() {
    let Some(moto) = moto() else { return };
    let cfg = config(moto.port, "relay-crash", 100.0);
    let (mut m, sched) = manager(&cfg).await;
    let _rx = queue_arm(&sched);
    m.tick().await;
    assert_eq!(live(&cfg).await.len(), 1);
    drop(m); // the relay dies without terminating anything
    let listed = reconcile::sweep(api(&cfg).await, &cfg.relay_id, true)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "dry run lists the leftover");
    assert_eq!(live(&cfg).await.len(), 1, "dry run touches nothing");
    let (mut m2, _s2) = manager(&cfg).await;
    m2.tick().await;
    assert!(
        live(&cfg).await.is_empty(),
        "the restarted relay terminated it"
    );
    let listed = reconcile::sweep(api(&cfg).await, &cfg.relay_id, false)
        .await
        .unwrap();
    assert!(listed.is_empty());
}

#[tokio::test]
async fn the_days_spend_survives_a_kill_9() {
    let Some(moto) = moto() else { return };
    let mut cfg = config(moto.port, "relay-ledger", 1000.0);
    cfg.templates[1].price_per_hour = 3600.0; // 1 $ a second
    cfg.templates[1].max_lifetime = Duration::from_secs(60);
    let dir = tempfile::tempdir().unwrap();
    let (mut m, sched) = manager_in(&cfg, Some(dir.path())).await;
    let _rx = queue_arm(&sched);
    m.tick().await;
    assert_eq!(live(&cfg).await.len(), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(m); // kill -9: the instance runs on, its last second never accrued
    let (mut m2, _s2) = manager_in(&cfg, Some(dir.path())).await;
    let today = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    let spent = m2.ledger().spent_on(today);
    assert!(spent >= 1.0, "the leftover's second is charged: {spent}");
    m2.tick().await;
    assert!(live(&cfg).await.is_empty(), "and it was terminated");
}

#[tokio::test]
async fn the_budget_cap_refuses_a_launch() {
    let Some(moto) = moto() else { return };
    // arm: 0.29 $/h × 1 h max_lifetime does not fit in 0.25 $.
    let cfg = config(moto.port, "relay-budget", 0.25);
    let (mut m, sched) = manager(&cfg).await;
    let _rx = queue_arm(&sched);
    m.tick().await;
    assert!(live(&cfg).await.is_empty());
}

#[tokio::test]
async fn throttling_from_the_endpoint_is_retried_with_backoff_then_reported() {
    let (port, calls, _) = throttling_server();
    let cfg = config(port, "relay-throttle", 100.0);
    let api = api(&cfg).await;
    let policy = RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
    };
    let r = api::retry("DescribeInstances", policy, || api.describe_owned("x")).await;
    let Err(nix_relay::ec2::Error::Api { source, .. }) = r else {
        panic!("expected an API error, got {r:?}");
    };
    assert_eq!(source.kind, ErrorKind::Throttled, "{source}");
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "three attempts"
    );
}

#[tokio::test]
async fn a_call_is_a_signed_form_post_of_the_query_api() {
    let (port, _, first) = throttling_server();
    let cfg = config(port, "relay-wire", 100.0);
    let _ = api(&cfg).await.describe_owned("relay-wire").await;
    let req = first.lock().unwrap().clone();
    let (head, body) = req.split_once("\r\n\r\n").expect("a whole request");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("post / http/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\nhost: 127.0.0.1:{port}\r\n")),
        "{head}"
    );
    assert!(
        head.contains("\r\ncontent-type: application/x-www-form-urlencoded; charset=utf-8\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nx-amz-date: "), "{head}");
    let auth = between(&head, "\r\nauthorization: ", "\r\n");
    assert!(
        auth.starts_with("aws4-hmac-sha256 credential=testing/"),
        "{auth}"
    );
    assert!(
        auth.contains(
            "/us-east-1/ec2/aws4_request, signedheaders=content-type;host;x-amz-date, signature="
        ),
        "{auth}"
    );
    assert_eq!(
        body,
        "Action=DescribeInstances&Filter.1.Name=tag%3Aowner&Filter.1.Value.1=relay-wire&MaxResults=100&Version=2016-11-15"
    );
}

#[tokio::test]
async fn describe_follows_next_token_across_pages() {
    let Some(moto) = moto() else { return };
    let cfg = config(moto.port, "relay-pages", 100.0);
    let client = query::connect_with_keys(&cfg, "testing", "testing")
        .unwrap()
        .with_page_size(5);
    let spec = LaunchSpec {
        name: "nix-relay relay-pages arm".into(),
        template: "arm".into(),
        relay_id: "relay-pages".into(),
        instance_type: "c7g.2xlarge".into(),
        ami: "ami-12c6146b".into(),
        subnet: None,
        security_group: None,
        market: Market::OnDemand,
        user_data: "#!/bin/sh\n".into(),
    };
    let mut launched = Vec::new();
    for _ in 0..7 {
        launched.push(client.run_instance(&spec).await.unwrap().id);
    }
    let mut seen: Vec<String> = client
        .describe_owned("relay-pages")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    seen.sort();
    launched.sort();
    assert_eq!(seen, launched, "7 instances over pages of 5");
    assert!(client.describe_owned("nobody").await.unwrap().is_empty());
}

#[tokio::test]
async fn spot_launches_carry_the_market_options_and_errors_keep_their_code() {
    let Some(moto) = moto() else { return };
    let cfg = config(moto.port, "relay-spot", 100.0);
    let client = api(&cfg).await;
    let mut spec = LaunchSpec {
        name: "n".into(),
        template: "arm".into(),
        relay_id: "relay-spot".into(),
        instance_type: "c7g.2xlarge".into(),
        ami: "ami-12c6146b".into(),
        subnet: None,
        security_group: None,
        market: Market::Spot,
        user_data: "#!/bin/sh\n".into(),
    };
    let id = client.run_instance(&spec).await.unwrap().id;
    let desc = query(
        moto.port,
        &format!("Action=DescribeInstances&InstanceId.1={id}"),
    );
    assert!(
        desc.contains("<instanceLifecycle>spot</instanceLifecycle>"),
        "{desc}"
    );
    let t = client.instance_type("c7g.2xlarge").await.unwrap().unwrap();
    assert_eq!((t.vcpus, t.architectures), (Some(8), vec!["arm64".into()]));
    let e = client.instance_type("c7g.nonesuch").await.unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.kind),
        ("InvalidInstanceType", ErrorKind::Fatal),
        "{e}"
    );
    spec.subnet = Some("subnet-nonexistent".into());
    let e = client.run_instance(&spec).await.unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.kind),
        ("InvalidSubnetID.NotFound", ErrorKind::Fatal),
        "{e}"
    );
    client.terminate(&[id]).await.unwrap();
    assert!(live(&cfg).await.is_empty());
}

/// A manager for `cfg` against moto, started: Err is what refuses the relay.
async fn start_only(cfg: &Ec2Config) -> Result<(), nix_relay::ec2::Error> {
    let probe: Probe = Arc::new(|_| Box::pin(async { true }));
    let sched = Scheduler::new(vec![], 100);
    let mut m = Manager::new(
        api(cfg).await,
        cfg.clone(),
        sched,
        BUILDER.into(),
        probe,
        SystemTime::now(),
    );
    m.start().await
}

#[tokio::test]
async fn describe_instance_types_architectures_must_match_the_templates_systems() {
    let Some(moto) = moto() else { return };
    let mut cfg = config(moto.port, "relay-arch", 100.0);
    let x86 = client_type(&cfg, "c7i.2xlarge").await;
    assert_eq!(x86.architectures, ["x86_64"], "moto's table");
    cfg.templates[0].systems = vec!["x86_64-linux".into(), "i686-linux".into()];
    start_only(&cfg)
        .await
        .expect("c7i builds x86_64 and i686, c7g aarch64");
    cfg.templates[1].instance_type = "c7i.2xlarge".into();
    let msg = start_only(&cfg).await.unwrap_err().to_string();
    assert_eq!(
        msg,
        "EC2 template arm: instance type c7i.2xlarge supports x86_64 (DescribeInstanceTypes), \
         which cannot build aarch64-linux (needs arm64); the template's systems: aarch64-linux"
    );
    cfg.templates[1].instance_type = "t4g.micro".into();
    cfg.templates[0].instance_type = "t4g.micro".into();
    let msg = start_only(&cfg).await.unwrap_err().to_string();
    assert!(
        msg.starts_with("EC2 template x86: instance type t4g.micro supports arm64"),
        "{msg}"
    );
}

async fn client_type(cfg: &Ec2Config, name: &str) -> nix_relay::ec2::TypeInfo {
    let t = api(cfg).await.instance_type(name).await.unwrap();
    t.unwrap_or_else(|| panic!("moto lists {name}"))
}

#[tokio::test]
async fn a_spot_launch_reaches_moto_and_no_spot_capacity_falls_back_to_on_demand() {
    let Some(moto) = moto() else { return };
    let proxy = proxy::spot_proxy(moto.port);
    let mut cfg = config(proxy.port, "relay-fallback", 100.0);
    cfg.templates[1].spot = true;
    cfg.templates[1].on_demand_price_per_hour = Some(0.58);
    let (mut m, sched) = manager(&cfg).await;
    let _rx = queue_arm(&sched);
    m.tick().await;
    let runs: Vec<String> = (proxy.bodies.lock().unwrap().iter())
        .filter(|b| b.contains("Action=RunInstances"))
        .cloned()
        .collect();
    let heads: Vec<&str> = runs.iter().map(|b| &b[..b.len().min(140)]).collect();
    assert_eq!(runs.len(), 2, "spot refused, then on-demand: {heads:?}");
    assert!(runs[0].contains("InstanceMarketOptions.MarketType=spot"));
    assert!(!runs[1].contains("InstanceMarketOptions"), "{}", runs[1]);
    let up = live(&cfg).await;
    assert_eq!(up.len(), 1);
    let desc = query(
        moto.port,
        &format!("Action=DescribeInstances&InstanceId.1={}", up[0].id),
    );
    assert!(!desc.contains("<instanceLifecycle>spot"), "{desc}");
    let t = m.tracked().next().unwrap();
    assert_eq!((t.market, t.price_per_hour), (Market::OnDemand, 0.58));

    m.shutdown().await;

    // With capacity, the same template launches a spot instance.
    proxy
        .refuse_spot
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let cfg = Ec2Config {
        relay_id: "relay-spot-ok".into(),
        ..cfg
    };
    let (mut m, sched) = manager(&cfg).await;
    let _rx = queue_arm(&sched);
    m.tick().await;
    let t = m.tracked().next().expect("launched");
    assert_eq!((t.market, t.price_per_hour), (Market::Spot, 0.29));
    let desc = query(
        moto.port,
        &format!("Action=DescribeInstances&InstanceId.1={}", t.id),
    );
    assert!(
        desc.contains("<instanceLifecycle>spot</instanceLifecycle>"),
        "{desc}"
    );
    m.shutdown().await;
}
