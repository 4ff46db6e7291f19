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
//! costs `backends × SUMMARY_PATHS` lookups whatever the closure size; the
//! small paths left out weigh little in a transfer time.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::wire::store_path::StorePath;

/// Paths remembered per backend.
pub const MAX_PATHS_PER_BACKEND: usize = 65_536;
/// Input paths a job's summary keeps (the largest).
pub const SUMMARY_PATHS: usize = 32;

/// The largest paths of a job's input closure with their NAR sizes,
/// largest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputSummary {
    pub largest: Vec<(StorePath, u64)>,
    /// NAR bytes of the whole closure, summarised or not.
    pub total_bytes: u64,
}

impl InputSummary {
    pub fn new(closure: impl IntoIterator<Item = (StorePath, u64)>) -> Self {
        let mut all: Vec<(StorePath, u64)> = closure.into_iter().collect();
        let total_bytes = all.iter().map(|(_, n)| *n).sum();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(SUMMARY_PATHS);
        InputSummary {
            largest: all,
            total_bytes,
        }
    }
}

/// One backend's remembered paths: each with the tick it was last
/// confirmed at, and the confirmations in order (stale ones skipped).
#[derive(Default)]
struct Known {
    present: HashMap<StorePath, u64>,
    order: VecDeque<(u64, StorePath)>,
    tick: u64,
}

impl Known {
    fn confirm(&mut self, p: &StorePath, max: usize) {
        self.tick += 1;
        self.present.insert(p.clone(), self.tick);
        self.order.push_back((self.tick, p.clone()));
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
            k.confirm(p, self.max_paths);
        }
    }

    /// NAR bytes of the summarised inputs `backend` is not known to have.
    pub fn missing_bytes(&self, backend: &str, inputs: &InputSummary) -> u64 {
        let known = self.lock();
        let Some(k) = known.get(backend) else {
            return inputs.largest.iter().map(|(_, n)| n).sum();
        };
        inputs
            .largest
            .iter()
            .filter(|(p, _)| !k.present.contains_key(p))
            .map(|(_, n)| n)
            .sum()
    }

    /// Paths remembered for `backend`.
    pub fn len(&self, backend: &str) -> usize {
        self.lock().get(backend).map_or(0, |k| k.present.len())
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
        assert_eq!(s.largest[0], (p(99), 99));
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
}
