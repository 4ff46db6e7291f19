//! What the relay believes each backend already has, for placement.
//!
//! The relay learns it from its own traffic: after `push_inputs`' batched
//! QueryValidPaths a backend holds the whole input closure (what it had
//! plus what was pushed), and after a successful build it holds the
//! outputs. It is a belief, not a mirror: a backend may garbage-collect
//! behind the relay's back, which only costs a mis-estimate (the next
//! push finds out and re-sends).
//!
//! Bounded: per backend at most [`MAX_PATHS_PER_BACKEND`] paths, least
//! recently confirmed forgotten first. A job is summarised by its
//! [`SUMMARY_PATHS`] largest input paths ([`InputSummary`]), so a placement
//! costs at most `SUMMARY_PATHS` lookups per candidate backend whatever the
//! closure size; the small paths left out weigh little in a transfer time.
//! Paths are remembered by a 64-bit key of their hash part (already
//! random, so it needs no further hashing); a collision only mis-estimates.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};

use crate::wire::store_path::StorePath;

/// Paths remembered per backend.
pub const MAX_PATHS_PER_BACKEND: usize = 65_536;
/// Input paths a job's summary keeps (the largest).
pub const SUMMARY_PATHS: usize = 32;

/// The largest paths of a job's input closure with their NAR sizes,
/// largest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputSummary {
    /// (path key, NAR size), largest first.
    pub largest: Vec<(u64, u64)>,
    /// NAR bytes of the whole closure, summarised or not.
    pub total_bytes: u64,
}

/// A path's key: FNV-1a of its hash part.
pub fn key(p: &StorePath) -> u64 {
    p.hash_part().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Keys are hashes already: used as they are.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<Identity>>;

impl InputSummary {
    pub fn new(closure: impl IntoIterator<Item = (StorePath, u64)>) -> Self {
        let mut all: Vec<(StorePath, u64)> = closure.into_iter().collect();
        let total_bytes = all.iter().map(|(_, n)| *n).sum();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(SUMMARY_PATHS);
        InputSummary {
            largest: all.iter().map(|(p, n)| (key(p), *n)).collect(),
            total_bytes,
        }
    }
}

/// One backend's remembered paths: each with the tick it was last
/// confirmed at, and the confirmations in order (stale ones skipped).
#[derive(Default)]
struct Known {
    present: KeyMap<u64>,
    order: VecDeque<(u64, u64)>,
    tick: u64,
}

impl Known {
    fn confirm(&mut self, p: u64, max: usize) {
        self.tick += 1;
        self.present.insert(p, self.tick);
        self.order.push_back((self.tick, p));
        while self.present.len() > max {
            let Some((t, old)) = self.order.pop_front() else {
                break;
            };
            if self.present.get(&old) == Some(&t) {
                self.present.remove(&old);
            }
        }
        // Re-confirmations leave stale entries behind; keep the queue
        // within twice the map.
        if self.order.len() > 2 * max.max(1) {
            let present = &self.present;
            self.order.retain(|(t, p)| present.get(p) == Some(t));
        }
    }
}

/// Per backend, the paths the relay believes it has.
pub struct Locality {
    max_paths: usize,
    known: Mutex<HashMap<String, Known>>,
}

impl Default for Locality {
    fn default() -> Self {
        Locality::new(MAX_PATHS_PER_BACKEND)
    }
}

impl Locality {
    pub fn new(max_paths: usize) -> Self {
        Locality {
            max_paths,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `backend` has every path in `paths` (confirmed, pushed or built).
    pub fn confirm<'a>(&self, backend: &str, paths: impl IntoIterator<Item = &'a StorePath>) {
        let mut known = self.lock();
        let k = known.entry(backend.to_owned()).or_default();
        for p in paths {
            k.confirm(key(p), self.max_paths);
        }
    }

    /// One look at every backend's memory (one lock for a whole placement).
    pub fn view(&self) -> LocalityView<'_> {
        LocalityView(self.lock())
    }

    /// NAR bytes of the summarised inputs `backend` is not known to have.
    pub fn missing_bytes(&self, backend: &str, inputs: &InputSummary) -> u64 {
        self.view().missing_bytes(backend, inputs)
    }

    /// Paths remembered for `backend`.
    pub fn len(&self, backend: &str) -> usize {
        self.lock().get(backend).map_or(0, |k| k.present.len())
    }
}

/// The locked memory, for several lookups in a row.
pub struct LocalityView<'a>(MutexGuard<'a, HashMap<String, Known>>);

impl LocalityView<'_> {
    /// NAR bytes of the summarised inputs `backend` is not known to have.
    pub fn missing_bytes(&self, backend: &str, inputs: &InputSummary) -> u64 {
        let Some(k) = self.0.get(backend) else {
            return inputs.largest.iter().map(|(_, n)| n).sum();
        };
        inputs
            .largest
            .iter()
            .filter(|(p, _)| !k.present.contains_key(p))
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: usize) -> StorePath {
        StorePath::parse(&format!("/nix/store/{i:032}-p")).unwrap()
    }

    #[test]
    fn a_summary_keeps_the_largest_paths_and_the_whole_closures_size() {
        let s = InputSummary::new((0..100).map(|i| (p(i), i as u64)));
        assert_eq!(s.largest.len(), SUMMARY_PATHS);
        assert_eq!(s.largest[0], (key(&p(99)), 99));
        assert!(
            s.largest
                .iter()
                .all(|(_, n)| *n >= 100 - SUMMARY_PATHS as u64)
        );
        assert_eq!(s.total_bytes, (0..100).sum::<u64>());
    }

    #[test]
    fn a_backend_lacks_what_it_was_never_seen_with() {
        let l = Locality::default();
        let s = InputSummary::new([(p(1), 2_000), (p(2), 30)]);
        assert_eq!(l.missing_bytes("h1", &s), 2_030);
        l.confirm("h1", [&p(1)]);
        assert_eq!(l.missing_bytes("h1", &s), 30);
        assert_eq!(l.missing_bytes("h2", &s), 2_030, "backends are apart");
    }

    #[test]
    fn memory_is_bounded_and_forgets_the_least_recently_confirmed_first() {
        let l = Locality::new(3);
        l.confirm("h1", [&p(1), &p(2), &p(3)]);
        l.confirm("h1", [&p(1)]);
        l.confirm("h1", [&p(4)]);
        assert_eq!(l.len("h1"), 3);
        let has = |i| l.missing_bytes("h1", &InputSummary::new([(p(i), 1)])) == 0;
        assert!(has(1), "re-confirmed, so kept");
        assert!(!has(2), "oldest, so forgotten");
        assert!(has(3) && has(4));
        for _ in 0..100 {
            l.confirm("h1", [&p(1), &p(3), &p(4)]);
        }
        assert_eq!(l.len("h1"), 3);
        assert!(
            l.lock()["h1"].order.len() <= 6,
            "stale entries are compacted"
        );
    }

    fn backend(name: &str, speed: f64) -> crate::config::Backend {
        crate::config::Backend {
            name: name.into(),
            uri: crate::config::BackendUri::Local,
            ssh_key: None,
            host_key: None,
            systems: vec!["aarch64-linux".into()],
            max_jobs: 2,
            speed_factor: speed,
            supported_features: Vec::new(),
            mandatory_features: Vec::new(),
            connect_timeout: std::time::Duration::from_secs(10),
            store: None,
            untrusted_clients: false,
        }
    }

    #[test]
    fn the_scheduler_sends_a_job_where_its_big_inputs_already_are() {
        let sched = super::super::Scheduler::new(
            vec![backend("opi-fast", 1.2), backend("opi-warm", 1.0)],
            10,
        );
        let toolchain = p(7);
        let job = super::super::JobSpec {
            system: "aarch64-linux".into(),
            inputs: std::sync::Arc::new(InputSummary::new([(toolchain.clone(), 2 << 30)])),
            ..Default::default()
        };
        let on = |job| match sched.try_acquire(job) {
            Ok(super::super::Acquired::Now(slot)) => slot.backend().name.clone(),
            _ => panic!("a free slot"),
        };
        assert_eq!(on(job.clone()), "opi-fast", "nothing known: the faster");
        sched.locality().confirm("opi-warm", [&toolchain]);
        assert_eq!(on(job), "opi-warm", "the toolchain is there");
    }
}
