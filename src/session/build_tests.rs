//! What a client waiting for a slot is told, and where a job may go.

use super::*;
use crate::config::{Backend, BackendUri};

fn backend(name: &str) -> Backend {
    Backend {
        name: name.into(),
        uri: BackendUri::Local,
        ssh_key: None,
        host_key: None,
        systems: vec!["aarch64-linux".into()],
        max_jobs: 1,
        speed_factor: 1.0,
        supported_features: Vec::new(),
        mandatory_features: Vec::new(),
        connect_timeout: std::time::Duration::from_secs(10),
        store: None,
    }
}

fn job() -> JobSpec {
    JobSpec {
        client: "c".into(),
        system: "aarch64-linux".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_queued_job_is_told_its_position_and_what_runs_then_gets_the_slot() {
    let sched = Scheduler::new(vec![backend("opi01"), backend("opi02")], 10);
    let Ok(Acquired::Now(a)) = sched.try_acquire(job()) else {
        panic!("a free slot");
    };
    let Ok(Acquired::Now(b)) = sched.try_acquire(job()) else {
        panic!("a free slot");
    };
    let (log, mut rx) = mpsc::channel(8);
    let waiting = tokio::spawn({
        let sched = sched.clone();
        async move { claim(&sched, job(), &log).await }
    });
    let line = rx.recv().await.expect("a log line");
    assert_eq!(
        String::from_utf8_lossy(&line),
        "nix-relay: waiting: position 1 for aarch64-linux (2 running on opi01, opi02)\n"
    );
    drop(b);
    let slot = waiting.await.unwrap().expect("the freed slot");
    assert_eq!(slot.backend().name, "opi02");
    drop(a);
}

fn structured_drv(json: &str) -> BasicDerivation {
    BasicDerivation {
        outputs: vec![],
        input_srcs: vec![],
        platform: "aarch64-linux".into(),
        builder: b"/bin/sh".to_vec(),
        args: vec![],
        env: vec![(b"__json".to_vec(), json.as_bytes().to_vec())],
    }
}

fn drv_path() -> StorePath {
    StorePath::parse("/nix/store/ffffffffffffffffffffffffffffffff-vm-test.drv").unwrap()
}

#[tokio::test]
async fn a_structured_attrs_drv_requiring_kvm_only_lands_on_a_kvm_backend() {
    let mut fast = backend("plain");
    fast.speed_factor = 10.0;
    fast.max_jobs = 4;
    let mut kvm = backend("kvm-box");
    kvm.supported_features = vec!["kvm".into()];
    let sched = Scheduler::new(vec![fast, kvm], 10);
    let drv = structured_drv(r#"{"name":"vm-test","requiredSystemFeatures":["kvm"]}"#);
    let job = job_spec("c", &drv_path(), &drv, Default::default()).unwrap();
    assert_eq!(job.required_features, ["kvm"]);
    let Ok(Acquired::Now(slot)) = sched.try_acquire(job.clone()) else {
        panic!("the kvm backend is free");
    };
    assert_eq!(slot.backend().name, "kvm-box");
    // The only kvm slot is taken: the job waits rather than go elsewhere.
    assert!(matches!(
        sched.try_acquire(job),
        Ok(Acquired::Queued { .. })
    ));
}

#[test]
fn malformed_structured_attrs_fail_the_build_with_a_reason() {
    let drv = structured_drv(r#"{"requiredSystemFeatures":["kvm""#);
    let e = job_spec("c", &drv_path(), &drv, Default::default()).unwrap_err();
    assert!(e.starts_with("reading requiredSystemFeatures: "), "{e}");
    assert!(e.contains("__json"), "{e}");
}
