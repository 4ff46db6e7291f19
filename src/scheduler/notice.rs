//! Telling waiting jobs that capacity is being launched for them: the EC2
//! manager announces each launch ([`Scheduler::announce_launch`]) to every
//! job waiting with the system and required features it was for; a job
//! that is waiting reads them from its [`Notices`] and writes each into its
//! build's log. Nothing waits for a slow reader: a reader that lags loses
//! the oldest notices.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::elastic::Reason;
use super::{JobSpec, Scheduler};

/// Notices kept for readers that lag.
pub const NOTICE_BACKLOG: usize = 64;

/// Instances launched for one group of waiting jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchNotice {
    pub system: String,
    /// Sorted and deduplicated, as the queues key them.
    pub required_features: Vec<String>,
    pub template: String,
    pub instance_type: String,
    /// `spot`, `on-demand`, or `on-demand (no spot capacity: <code>)`.
    pub market: String,
    pub instances: u32,
    pub reason: Reason,
    pub boot_estimate: Duration,
}

impl LaunchNotice {
    /// The line a waiting client reads (the log adds `nix-relay: `).
    pub fn text(&self) -> String {
        let what = match self.instances {
            1 => "an EC2 instance".to_owned(),
            n => format!("{n} EC2 instances"),
        };
        let jobs = match self.required_features.as_slice() {
            [] => self.system.clone(),
            f => format!("{} with {}", self.system, f.join(", ")),
        };
        let why = match self.reason {
            Reason::NoStaticBackend => format!("no static backend serves {jobs}"),
            Reason::WaitedLonger { waited } => format!(
                "the oldest {jobs} build waited {} s, longer than the boot estimate",
                waited.as_secs()
            ),
        };
        format!(
            "launching {what} (template {}, {}, {}) for this build: {why}; boot estimate {} s",
            self.template,
            self.instance_type,
            self.market,
            self.boot_estimate.as_secs()
        )
    }
}

/// What one waiting job listens for.
pub struct Notices {
    rx: broadcast::Receiver<Arc<LaunchNotice>>,
    system: String,
    features: Vec<String>,
    untrusted: bool,
}

impl Notices {
    /// The next notice for this job; None once the scheduler is gone.
    pub async fn next(&mut self) -> Option<Arc<LaunchNotice>> {
        loop {
            match self.rx.recv().await {
                Ok(n) if self.concerns(&n) => return Some(n),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Launches are only for trusted jobs (untrusted ones never run on EC2).
    fn concerns(&self, n: &LaunchNotice) -> bool {
        !self.untrusted && n.system == self.system && n.required_features == self.features
    }
}

impl Scheduler {
    /// Tells the jobs waiting for `n`'s system and features about it.
    pub fn announce_launch(&self, n: LaunchNotice) {
        // No receiver: nobody waits any more; nothing to tell.
        let _ = self.launches.send(Arc::new(n));
    }

    /// Listens for launches for `job`. Taken before the job is queued, so
    /// no launch for it goes unseen.
    pub fn launch_notices(&self, job: &JobSpec) -> Notices {
        let mut features = job.required_features.clone();
        features.sort();
        features.dedup();
        Notices {
            rx: self.launches.subscribe(),
            system: job.system.clone(),
            features,
            untrusted: job.untrusted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(system: &str, features: &[&str], reason: Reason) -> LaunchNotice {
        LaunchNotice {
            system: system.into(),
            required_features: features.iter().map(|f| f.to_string()).collect(),
            template: "arm".into(),
            instance_type: "c7g.large".into(),
            market: "spot".into(),
            instances: 1,
            reason,
            boot_estimate: Duration::from_secs(90),
        }
    }

    fn job(system: &str, features: &[&str], untrusted: bool) -> JobSpec {
        JobSpec {
            system: system.into(),
            required_features: features.iter().map(|f| f.to_string()).collect(),
            untrusted,
            ..Default::default()
        }
    }

    #[test]
    fn the_text_names_template_type_market_reason_and_estimate() {
        let n = notice("aarch64-linux", &[], Reason::NoStaticBackend);
        assert_eq!(
            n.text(),
            "launching an EC2 instance (template arm, c7g.large, spot) for this build: \
             no static backend serves aarch64-linux; boot estimate 90 s"
        );
        let waited = Duration::from_secs(200);
        let mut n = notice("x86_64-linux", &["kvm"], Reason::WaitedLonger { waited });
        n.instances = 2;
        assert_eq!(
            n.text(),
            "launching 2 EC2 instances (template arm, c7g.large, spot) for this build: \
             the oldest x86_64-linux with kvm build waited 200 s, longer than the boot \
             estimate; boot estimate 90 s"
        );
    }

    #[tokio::test]
    async fn only_jobs_of_the_launchs_group_hear_of_it() {
        let s = Scheduler::new(vec![], 10);
        let mut arm = s.launch_notices(&job("aarch64-linux", &["kvm", "big-parallel"], false));
        let mut plain = s.launch_notices(&job("aarch64-linux", &[], false));
        let mut untrusted = s.launch_notices(&job("aarch64-linux", &["big-parallel", "kvm"], true));
        let mut x86 = s.launch_notices(&job("x86_64-linux", &["big-parallel", "kvm"], false));
        let features = ["big-parallel", "kvm"];
        s.announce_launch(notice("aarch64-linux", &features, Reason::NoStaticBackend));
        s.announce_launch(notice("riscv64-linux", &[], Reason::NoStaticBackend));
        let got = arm.next().await.unwrap();
        assert_eq!(got.required_features, features);
        drop(s);
        assert!(arm.next().await.is_none(), "one notice only");
        for (name, other) in [
            ("plain", &mut plain),
            ("untrusted", &mut untrusted),
            ("x86", &mut x86),
        ] {
            assert!(other.next().await.is_none(), "{name} heard of it");
        }
    }
}
