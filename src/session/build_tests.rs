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
        untrusted_clients: false,
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
    let log = FlightLog::new();
    let mut reader = log.subscribe();
    let waiting = tokio::spawn({
        let (sched, log) = (sched.clone(), log.clone());
        async move { claim(&sched, job(), &log).await }
    });
    let line = reader.recv().await;
    assert_eq!(
        line,
        super::super::log::Recv::Event(crate::buildlog::LogEvent::Note(
            "waiting: position 1 for aarch64-linux (2 running on opi01, opi02)".into()
        ))
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
    let job = job_spec("c", &drv_path(), &drv, Default::default(), false).unwrap();
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
    let e = job_spec("c", &drv_path(), &drv, Default::default(), false).unwrap_err();
    assert_eq!(e.class(), Class::Client);
    let e = crate::error_chain(&e);
    assert!(e.starts_with("reading requiredSystemFeatures: "), "{e}");
    assert!(e.contains("__json"), "{e}");
}

fn drv_claiming(out: &str) -> BasicDerivation {
    BasicDerivation {
        outputs: vec![crate::wire::build::DerivationOutput {
            name: "out".into(),
            path: out.into(),
            hash_algo: String::new(),
            hash: String::new(),
        }],
        input_srcs: Vec::new(),
        platform: "aarch64-linux".into(),
        builder: b"/bin/sh".to_vec(),
        args: Vec::new(),
        env: Vec::new(),
    }
}

/// An untrusted client's derivation names its own output paths: with no
/// private input at all (here: none), its build is still private to it,
/// so it can never publish (nor share a flight for) a trusted output path.
#[tokio::test]
async fn an_untrusted_clients_build_is_private_whatever_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(dir.path(), Default::default()).unwrap();
    let relay = Core::new(store, Scheduler::new(vec![], 10), Default::default(), false);
    let drv = drv_claiming("/nix/store/00000000000000000000000000000000-trusted-output");
    let eve = ClientId {
        name: "eve".into(),
        trusted: false,
    };
    let lab = ClientId {
        name: "lab".into(),
        trusted: true,
    };
    let key = |p| match p {
        Ok(Prepared::Build(k, _)) => k,
        Ok(Prepared::Hit) => panic!("a cache hit"),
        Err(e) => panic!("{e}"),
    };
    let eve_key = key(prepare(&relay, &eve, &drv).await);
    let lab_key = key(prepare(&relay, &lab, &drv).await);
    assert_eq!(eve_key.scope, Scope::Private("eve".into()));
    assert_eq!(lab_key.scope, Scope::Public);
    assert_eq!(eve_key.outputs, lab_key.outputs);
    assert_ne!(eve_key, lab_key, "lab must never attach to eve's flight");
    assert_eq!(build_scope(&lab, true), Scope::Private("lab".into()));
}

fn untrusted_job() -> JobSpec {
    JobSpec {
        untrusted: true,
        ..job()
    }
}

#[tokio::test]
async fn an_untrusted_job_fails_at_once_when_no_backend_takes_untrusted_work() {
    let sched = Scheduler::new(vec![backend("opi01")], 10);
    let log = FlightLog::new();
    let err = claim(&sched, untrusted_job(), &log)
        .await
        .err()
        .expect("no slot");
    assert_eq!(err.class(), Class::Client, "retrying cannot help");
    let err = crate::error_chain(&err);
    assert!(
        err.contains("untrusted clients build only on backends marked `untrusted_clients = true`; marked: none"),
        "{err}"
    );
}

#[tokio::test]
async fn untrusted_and_trusted_jobs_each_get_their_own_backends() {
    let mut sandbox = backend("sandbox");
    sandbox.untrusted_clients = true;
    let sched = Scheduler::new(vec![sandbox, backend("opi01")], 10);
    let Ok(Acquired::Now(u)) = sched.try_acquire(untrusted_job()) else {
        panic!("a free untrusted slot");
    };
    assert_eq!(u.backend().name, "sandbox");
    // The untrusted backend is busy: a second untrusted job waits rather
    // than take opi01's free slot, and a trusted job gets opi01.
    let Ok(Acquired::Queued { rx, .. }) = sched.try_acquire(untrusted_job()) else {
        panic!("the second untrusted job must wait");
    };
    // Launched (EC2) capacity is trusted: it is not asked for untrusted jobs.
    assert!(sched.waiting_summary().is_empty());
    let Ok(Acquired::Now(t)) = sched.try_acquire(job()) else {
        panic!("a free trusted slot");
    };
    assert_eq!(t.backend().name, "opi01");
    drop(t);
    drop(u);
    let next = Scheduler::wait(rx).await.expect("the freed untrusted slot");
    assert_eq!(next.backend().name, "sandbox");
}
