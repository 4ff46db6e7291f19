//! Boot visibility in-process (feature `testing`): a build no static
//! backend can serve waits while the EC2 manager (the real one, on an
//! in-memory EC2 double) launches an instance for it, and the waiting
//! client's log says so — template, instance type, market, why, and the
//! boot estimate — on both protocols.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix_relay::config::Protocol;
use nix_relay::config::ec2::{Ec2Config, Template};
use nix_relay::ec2::manager::{Manager, Probe};
use nix_relay::ec2::{ApiError, Ec2Api, Instance, InstanceState, LaunchSpec, TypeInfo};
use nix_relay::scheduler::Scheduler;
use nix_relay::testing::drv;
use nix_relay::testing::fake::Script;
use nix_relay::testing::harness::{TestRelay, fake_backend};

const BUILDER: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGsl9bcFHoLUq3ANWXnbW6LpSeLX/vfMeDfPmkl2aNB1";

type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

/// An EC2 that launches whatever it is asked (running at once) and
/// describes c7g.2xlarge as 8 arm64 vCPUs.
#[derive(Default)]
struct Ec2Double {
    instances: Mutex<Vec<Instance>>,
}

impl Ec2Api for Ec2Double {
    fn run_instance<'a>(&'a self, spec: &'a LaunchSpec) -> Fut<'a, Instance> {
        let mut all = self.instances.lock().unwrap();
        let inst = Instance {
            id: format!("i-{}", all.len() + 1),
            state: InstanceState::Running,
            template: Some(spec.template.clone()),
            private_ip: Some("127.0.3.1".into()),
            launched_at: None,
        };
        all.push(inst.clone());
        Box::pin(async move { Ok(inst) })
    }

    fn describe_owned<'a>(&'a self, _relay_id: &'a str) -> Fut<'a, Vec<Instance>> {
        let all = self.instances.lock().unwrap().clone();
        Box::pin(async move { Ok(all) })
    }

    fn terminate<'a>(&'a self, _ids: &'a [String]) -> Fut<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn instance_type<'a>(&'a self, _instance_type: &'a str) -> Fut<'a, Option<TypeInfo>> {
        let info = TypeInfo {
            vcpus: Some(8),
            architectures: vec!["arm64".into()],
        };
        Box::pin(async move { Ok(Some(info)) })
    }
}

fn ec2_config() -> Ec2Config {
    Ec2Config {
        region: "us-east-1".into(),
        endpoint: None,
        budget_per_day: 100.0,
        relay_id: "relay-e".into(),
        ssh_key: "/nonexistent".into(),
        ssh_user: "nix-relay".into(),
        dead_man_switch: Duration::from_secs(1800),
        reconcile_interval: Duration::from_secs(60),
        templates: vec![Template {
            name: "arm".into(),
            systems: vec!["aarch64-linux".into()],
            supported_features: vec![],
            instance_type: "c7g.2xlarge".into(),
            ami: "ami-1".into(),
            subnet: None,
            security_group: None,
            spot: false,
            price_per_hour: 0.29,
            on_demand_price_per_hour: None,
            boot_estimate: Duration::from_secs(90),
            idle_grace: Duration::from_secs(300),
            max_lifetime: Duration::from_secs(3600),
            max_instances: 1,
            speed_factor: 1.0,
            max_jobs: None,
        }],
    }
}

/// Polls until a job waits in the scheduler's queues.
async fn until_waiting(sched: &Scheduler) {
    for _ in 0..2000 {
        if sched.waiting_summary().iter().any(|w| w.count > 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the build never queued");
}

async fn told_of_the_launch(protocol: Protocol) {
    let t = TestRelay::start(
        &fake_backend("a", "fake://a", ""),
        &[("a", Script::default())],
    )
    .await;
    let sched = t.relay.scheduler().clone();
    // The instance never answers SSH: it boots for as long as the test runs.
    let probe: Probe = Arc::new(|_| Box::pin(async { false }));
    let api = Arc::new(Ec2Double::default());
    let (cfg, key) = (ec2_config(), BUILDER.to_owned());
    let now = SystemTime::now();
    let mut m = Manager::new(api.clone(), cfg, sched.clone(), key, probe, now);
    m.start()
        .await
        .expect("the template is checked and queued for");
    let (drv_path, d) = drv::derivation(&format!("arm-only-{protocol}"), "aarch64-linux", &[]);
    let mut c = t.client(protocol, "alice").await;
    let arm = nix_relay::scheduler::JobSpec {
        system: "aarch64-linux".into(),
        ..Default::default()
    };
    let mut heard = sched.launch_notices(&arm);
    let drive = async {
        until_waiting(&sched).await;
        m.tick().await;
        assert_eq!(api.instances.lock().unwrap().len(), 1, "launched");
        // The launch is announced (the build's own listener has it too).
        heard.next().await.expect("a launch notice");
        // End the wait: without the template nothing can serve the job.
        sched.set_elastic(vec![]);
    };
    let (res, ()) = tokio::join!(c.build(&drv_path, &d), drive);
    let res = res.expect("a build result");
    assert!(!res.status.is_success(), "{res:?}");
    let note = "nix-relay: launching an EC2 instance (template arm, c7g.2xlarge, on-demand) \
                for this build: no static backend serves aarch64-linux; boot estimate 90 s\n";
    // A serve client's log is its stderr channel, read apart from the
    // result: the last lines may come after it.
    let log = c.wait_log(note, Duration::from_secs(10)).await;
    assert!(log.contains(note), "{protocol}: no launch note in:\n{log}");
    let waiting = log
        .find("nix-relay: waiting: position 1")
        .expect("the wait told first");
    assert!(waiting < log.find(note).unwrap(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serve_client_waiting_for_an_ec2_launch_is_told_why_and_how_long() {
    told_of_the_launch(Protocol::Serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_client_waiting_for_an_ec2_launch_is_told_why_and_how_long() {
    told_of_the_launch(Protocol::Worker).await;
}
