//! Placement: a pure function of (job, backend views, now).
//!
//! Eligible: the job's system is one of the backend's systems, its required
//! features are all supported, and every mandatory feature of the backend is
//! required by the job; an untrusted job (an untrusted client's build) only
//! on a backend marked `untrusted_clients`, a trusted one never there. A backend marked down is skipped until its backoff
//! ends. No free slot anywhere eligible: wait. Nothing eligible: fail.
//!
//! Among eligible backends with a free slot, the one expected to finish
//! first wins (ties: configuration order). The estimate, in seconds:
//!
//! ```text
//! estimate = missing_bytes / LINK_BYTES_PER_SEC
//!          + NOMINAL_BUILD_SECS × (1 + running / max_jobs) / speed_factor
//! ```
//!
//! * transfer: the input bytes the relay believes the backend lacks
//!   ([`super::locality`]), pushed at an assumed [`LINK_BYTES_PER_SEC`]
//!   (50 MiB/s: a gigabit link into a board's storage);
//! * build: the relay cannot know how long a build takes, so every job is
//!   assumed to take [`NOMINAL_BUILD_SECS`] (60 s) on an idle backend of
//!   speed factor 1; running builds share the machine, so the time grows
//!   with the load, and shrinks with the speed factor.
//!
//! With nothing missing anywhere this is the old rule, made continuous: the
//! fastest backend wins unless it is much busier. A board with speed 1 that
//! already has a 2 GiB toolchain (60 s) beats one with speed 1.2 lacking it
//! (50 s + 41 s). The cost is O(backends); the missing bytes are computed
//! from a bounded summary of the job's inputs before the call.

use std::sync::Arc;

use tokio::time::Instant;

use super::locality::InputSummary;

/// Assumed transfer rate from the relay to a backend, bytes per second.
pub const LINK_BYTES_PER_SEC: f64 = 50.0 * 1024.0 * 1024.0;
/// Assumed build time of a job on an idle backend of speed factor 1.
pub const NOMINAL_BUILD_SECS: f64 = 60.0;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobSpec {
    /// The client asking (queues are fair across clients).
    pub client: String,
    /// The derivation's name (`hello-2.12`, no hash; a `.drv` suffix is
    /// ignored): its build history orders the queue.
    pub name: String,
    pub system: String,
    pub required_features: Vec<String>,
    /// The job's input closure, summarised (locality).
    pub inputs: Arc<InputSummary>,
    /// An untrusted client's build (private scope): it runs only on
    /// backends marked `untrusted_clients`.
    pub untrusted: bool,
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
    /// Input bytes of the job the backend is believed to lack.
    pub missing_bytes: u64,
    /// Runs untrusted clients' builds, and only those.
    pub untrusted_clients: bool,
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
    job.untrusted == b.untrusted_clients
        && b.systems.contains(&job.system)
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
    let mut best: Option<(usize, f64)> = None;
    for (i, b) in backends.iter().enumerate() {
        if !eligible(job, b) {
            continue;
        }
        any_eligible = true;
        if b.running >= b.max_jobs || b.down_until.is_some_and(|t| t > now) {
            continue;
        }
        let est = estimate_secs(b);
        if best.is_none_or(|(_, cur)| est < cur) {
            best = Some((i, est));
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

/// When the job would finish on `b`, in seconds from now (see the module
/// doc for the model).
pub fn estimate_secs(b: &BackendView<'_>) -> f64 {
    let transfer = b.missing_bytes as f64 / LINK_BYTES_PER_SEC;
    let build = NOMINAL_BUILD_SECS * (1.0 + load(b)) / b.speed_factor.max(1e-3);
    transfer + build
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
        missing: u64,
        untrusted: bool,
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
            missing: 0,
            untrusted: false,
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
                missing_bytes: b.missing,
                untrusted_clients: b.untrusted,
            })
            .collect()
    }

    fn job(system: &str, feats: &[&str]) -> JobSpec {
        JobSpec {
            client: String::new(),
            system: system.into(),
            required_features: s(feats),
            ..Default::default()
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

    const GIB: u64 = 1 << 30;

    fn lacking(mut b: B, missing: u64) -> B {
        b.missing = missing;
        b
    }

    #[test]
    fn a_slightly_slower_board_that_has_the_2gib_toolchain_beats_a_fast_one_lacking_it() {
        let bs = [
            lacking(b(&["aarch64-linux"], &[], 4, 0, 1.2), 2 * GIB),
            lacking(b(&["aarch64-linux"], &[], 4, 0, 1.0), 0),
        ];
        assert_eq!(
            pick(&job("aarch64-linux", &[]), &views(&bs), Instant::now()),
            Decision::Run(1)
        );
    }

    #[test]
    fn a_much_faster_backend_still_wins_when_it_lacks_only_a_little() {
        let bs = [
            lacking(b(&["x"], &[], 4, 0, 1.0), 0),
            lacking(b(&["x"], &[], 4, 0, 4.0), 50 << 20),
        ];
        assert_eq!(
            pick(&job("x", &[]), &views(&bs), Instant::now()),
            Decision::Run(1)
        );
    }

    #[test]
    fn locality_never_picks_a_backend_without_a_free_slot() {
        let bs = [
            lacking(b(&["x"], &[], 2, 2, 1.0), 0),
            lacking(b(&["x"], &[], 2, 0, 1.0), 10 * GIB),
        ];
        assert_eq!(
            pick(&job("x", &[]), &views(&bs), Instant::now()),
            Decision::Run(1)
        );
        let full = [lacking(b(&["x"], &[], 2, 2, 1.0), 0)];
        assert_eq!(
            pick(&job("x", &[]), &views(&full), Instant::now()),
            Decision::Wait
        );
    }

    #[test]
    fn locality_never_picks_a_backend_marked_down_or_ineligible() {
        let now = Instant::now();
        let mut down = lacking(b(&["x"], &[], 2, 0, 1.0), 0);
        down.down_until = Some(now + std::time::Duration::from_secs(5));
        let bs = [
            down,
            lacking(b(&["y"], &[], 2, 0, 1.0), 0),
            lacking(b(&["x"], &[], 2, 0, 1.0), 10 * GIB),
        ];
        assert_eq!(pick(&job("x", &[]), &views(&bs), now), Decision::Run(2));
    }

    #[test]
    fn a_busier_backend_loses_to_an_idle_one_of_the_same_speed_and_contents() {
        let bs = [
            lacking(b(&["x"], &[], 4, 2, 1.0), GIB),
            lacking(b(&["x"], &[], 4, 0, 1.0), GIB),
        ];
        assert_eq!(
            pick(&job("x", &[]), &views(&bs), Instant::now()),
            Decision::Run(1)
        );
    }

    #[test]
    fn equal_estimates_keep_configuration_order() {
        let bs = [b(&["x"], &[], 4, 1, 1.0), b(&["x"], &[], 4, 1, 1.0)];
        assert_eq!(
            pick(&job("x", &[]), &views(&bs), Instant::now()),
            Decision::Run(0)
        );
    }

    #[test]
    fn the_estimate_grows_with_missing_bytes_and_load_and_shrinks_with_speed() {
        let base = b(&["x"], &[], 4, 1, 1.0);
        let est = |b: &B| estimate_secs(&views(std::slice::from_ref(b))[0]);
        let e = est(&base);
        assert!(est(&lacking(b(&["x"], &[], 4, 1, 1.0), GIB)) > e);
        assert!(est(&b(&["x"], &[], 4, 2, 1.0)) > e);
        assert!(est(&b(&["x"], &[], 4, 1, 2.0)) < e);
        assert!(
            est(&b(&["x"], &[], 4, 1, 0.0)).is_finite(),
            "speed 0 is guarded"
        );
    }

    #[test]
    fn untrusted_jobs_run_only_on_untrusted_backends_and_trusted_never_there() {
        let mut bs = [
            b(&["x86_64-linux"], &[], 2, 0, 9.0),
            b(&["x86_64-linux"], &[], 2, 0, 1.0),
        ];
        bs[1].untrusted = true;
        let now = Instant::now();
        let trusted = job("x86_64-linux", &[]);
        let untrusted = JobSpec {
            untrusted: true,
            ..job("x86_64-linux", &[])
        };
        assert_eq!(pick(&trusted, &views(&bs), now), Decision::Run(0));
        assert_eq!(pick(&untrusted, &views(&bs), now), Decision::Run(1));
        // Busy: each waits for its own kind, never takes the other's slot.
        bs[0].running = 2;
        bs[1].running = 2;
        assert_eq!(pick(&trusted, &views(&bs), now), Decision::Wait);
        assert_eq!(pick(&untrusted, &views(&bs), now), Decision::Wait);
        bs[0].running = 0;
        assert_eq!(pick(&untrusted, &views(&bs), now), Decision::Wait);
        bs[0].running = 2;
        bs[1].running = 0;
        assert_eq!(pick(&trusted, &views(&bs), now), Decision::Wait);
        // Only one kind configured: the other kind can never run.
        assert_eq!(
            pick(&untrusted, &views(&bs[..1]), now),
            Decision::NoneEligible
        );
        assert_eq!(
            pick(&trusted, &views(&bs[1..]), now),
            Decision::NoneEligible
        );
    }
}
