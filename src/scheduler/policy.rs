//! Placement: a pure function of (job, backend views, now).
//!
//! Eligible: the job's system is one of the backend's systems, its required
//! features are all supported, and every mandatory feature of the backend is
//! required by the job. Among eligible backends with a free slot the fastest
//! wins: highest speed factor, then lowest load (running / max_jobs), then
//! configuration order. A backend marked down is skipped until its backoff
//! ends. No free slot: wait. Nothing eligible: fail.

use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// The client asking (queues are fair across clients).
    pub client: String,
    pub system: String,
    pub required_features: Vec<String>,
}

/// What the policy may know about a backend at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendView<'a> {
    pub name: &'a str,
    pub systems: &'a [String],
    pub supported_features: &'a [String],
    pub mandatory_features: &'a [String],
    pub max_jobs: u32,
    pub running: u32,
    pub speed_factor: f64,
    /// Marked down until this instant (a failed connection, backing off).
    pub down_until: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run on the backend at this index.
    Run(usize),
    /// Some eligible backend exists, but none has a free slot.
    Wait,
    /// No backend could ever serve this job.
    NoneEligible,
}

pub fn eligible(job: &JobSpec, b: &BackendView<'_>) -> bool {
    b.systems.contains(&job.system)
        && job
            .required_features
            .iter()
            .all(|f| b.supported_features.contains(f) || b.mandatory_features.contains(f))
        && b.mandatory_features
            .iter()
            .all(|m| job.required_features.contains(m))
}

pub fn pick(job: &JobSpec, backends: &[BackendView<'_>], now: Instant) -> Decision {
    let mut any_eligible = false;
    let mut best: Option<(usize, &BackendView<'_>)> = None;
    for (i, b) in backends.iter().enumerate() {
        if !eligible(job, b) {
            continue;
        }
        any_eligible = true;
        if b.running >= b.max_jobs || b.down_until.is_some_and(|t| t > now) {
            continue;
        }
        if best.is_none_or(|(_, cur)| better(b, cur)) {
            best = Some((i, b));
        }
    }
    match (best, any_eligible) {
        (Some((i, _)), _) => Decision::Run(i),
        (None, true) => Decision::Wait,
        (None, false) => Decision::NoneEligible,
    }
}

fn load(b: &BackendView<'_>) -> f64 {
    f64::from(b.running) / f64::from(b.max_jobs.max(1))
}

/// Strictly better: faster, or as fast and less loaded (ties keep the earlier).
fn better(a: &BackendView<'_>, b: &BackendView<'_>) -> bool {
    if a.speed_factor != b.speed_factor {
        return a.speed_factor > b.speed_factor;
    }
    load(a) < load(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    struct B {
        down_until: Option<Instant>,
        systems: Vec<String>,
        feats: Vec<String>,
        mand: Vec<String>,
        max: u32,
        running: u32,
        speed: f64,
    }

    fn b(systems: &[&str], feats: &[&str], max: u32, running: u32, speed: f64) -> B {
        B {
            down_until: None,
            systems: s(systems),
            feats: s(feats),
            mand: vec![],
            max,
            running,
            speed,
        }
    }

    fn views(bs: &[B]) -> Vec<BackendView<'_>> {
        bs.iter()
            .map(|b| BackendView {
                name: "b",
                systems: &b.systems,
                supported_features: &b.feats,
                mandatory_features: &b.mand,
                max_jobs: b.max,
                running: b.running,
                speed_factor: b.speed,
                down_until: b.down_until,
            })
            .collect()
    }

    fn job(system: &str, feats: &[&str]) -> JobSpec {
        JobSpec {
            client: String::new(),
            system: system.into(),
            required_features: s(feats),
        }
    }

    #[test]
    fn a_required_feature_limits_the_choice_to_backends_that_have_it() {
        let bs = [
            b(&["x86_64-linux"], &[], 2, 0, 9.0),
            b(&["x86_64-linux"], &["big-parallel"], 2, 0, 1.0),
        ];
        let now = Instant::now();
        assert_eq!(
            pick(&job("x86_64-linux", &["big-parallel"]), &views(&bs), now),
            Decision::Run(1)
        );
        assert_eq!(
            pick(&job("x86_64-linux", &[]), &views(&bs), now),
            Decision::Run(0)
        );
    }

    #[test]
    fn a_foreign_system_goes_only_where_it_is_claimed() {
        let bs = [
            b(&["x86_64-linux"], &[], 2, 0, 1.0),
            b(&["x86_64-linux", "aarch64-linux"], &[], 2, 0, 1.0),
        ];
        assert_eq!(
            pick(&job("aarch64-linux", &[]), &views(&bs), Instant::now()),
            Decision::Run(1)
        );
        assert_eq!(
            pick(&job("riscv64-linux", &[]), &views(&bs), Instant::now()),
            Decision::NoneEligible
        );
    }

    #[test]
    fn mandatory_features_keep_ordinary_jobs_away() {
        let mut fast = b(&["x86_64-linux"], &["benchmark"], 4, 0, 10.0);
        fast.mand = s(&["benchmark"]);
        let bs = [fast, b(&["x86_64-linux"], &[], 1, 0, 1.0)];
        assert_eq!(
            pick(&job("x86_64-linux", &[]), &views(&bs), Instant::now()),
            Decision::Run(1)
        );
        assert_eq!(
            pick(
                &job("x86_64-linux", &["benchmark"]),
                &views(&bs),
                Instant::now()
            ),
            Decision::Run(0)
        );
    }

    #[test]
    fn the_fastest_free_backend_wins_then_the_least_loaded() {
        let bs = [
            b(&["x"], &[], 4, 1, 1.0),
            b(&["x"], &[], 4, 3, 2.0),
            b(&["x"], &[], 4, 0, 1.0),
        ];
        assert_eq!(
            pick(&job("x", &[]), &views(&bs), Instant::now()),
            Decision::Run(1)
        );
        let bs = [
            b(&["x"], &[], 4, 1, 1.0),
            b(&["x"], &[], 4, 4, 2.0),
            b(&["x"], &[], 4, 0, 1.0),
        ];
        assert_eq!(
            pick(&job("x", &[]), &views(&bs), Instant::now()),
            Decision::Run(2)
        );
    }

    #[test]
    fn full_backends_mean_waiting() {
        let bs = [b(&["x"], &[], 1, 1, 1.0)];
        assert_eq!(
            pick(&job("x", &[]), &views(&bs), Instant::now()),
            Decision::Wait
        );
    }

    #[test]
    fn a_backend_marked_down_is_skipped_until_its_backoff_ends() {
        let now = Instant::now();
        let mut dead = b(&["x"], &[], 4, 0, 9.0);
        dead.down_until = Some(now + std::time::Duration::from_secs(10));
        let mut only = b(&["x"], &[], 4, 0, 9.0);
        only.down_until = dead.down_until;
        let bs = [dead, b(&["x"], &[], 1, 0, 1.0)];
        assert_eq!(pick(&job("x", &[]), &views(&bs), now), Decision::Run(1));
        let later = now + std::time::Duration::from_secs(11);
        assert_eq!(
            pick(&job("x", &[]), &views(&bs), later),
            Decision::Run(0),
            "re-probed after the backoff"
        );
        assert_eq!(
            pick(&job("x", &[]), &views(&[only]), now),
            Decision::Wait,
            "down is not ineligible"
        );
    }
}
