//! What a client waiting for a slot is told.

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
