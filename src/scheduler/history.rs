//! Build history: how long each derivation takes, learned from the relay's
//! own successful builds, so the queue can start long builds first.
//!
//! Key: the derivation's name without its version (Nix's `parseDrvName`:
//! the name ends at the first `-` followed by a digit, so `llvm-16.0.6`
//! and `llvm-17.0.1` share `llvm`) and its system. Value: an EWMA
//! ([`EWMA_WEIGHT`] for the newest build) of build durations on a
//! speed-normalised scale, `seconds × speed_factor`: what the build takes
//! on a backend of speed factor 1.
//!
//! Unknown derivations are expected to take [`DEFAULT_SECS`], or
//! [`DEFAULT_BIG_PARALLEL_SECS`] when they require `big-parallel` (the
//! feature nixpkgs puts on llvm, gcc, the kernel, browsers).
//!
//! Bounded: at most [`MAX_KEYS`] keys; a new key beyond that evicts the
//! least recently updated one (an O(keys) scan, once per new key). Persisted
//! as JSON in `<state_dir>/history.json`, written whole to a temporary
//! file, fsynced and renamed over the old one: a crash leaves the old file
//! or the new one. The relay writes it every [`SAVE_INTERVAL`] when it
//! changed, and on shutdown. A missing file is an empty history; an
//! unreadable or corrupt one too, with a warning: history only orders
//! the queue, it never stops the relay.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::JobSpec;

/// Most keys remembered; beyond, the least recently updated is forgotten.
pub const MAX_KEYS: usize = 10_000;
/// Weight of the newest build in the average (the rest: the history).
pub const EWMA_WEIGHT: f64 = 0.5;
/// Expected seconds (at speed 1) of a derivation never built here.
pub const DEFAULT_SECS: f64 = 60.0;
/// Expected seconds (at speed 1) of an unknown `big-parallel` derivation.
pub const DEFAULT_BIG_PARALLEL_SECS: f64 = 1800.0;
/// How often a changed history is written to disk.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(60);
/// The file in the state dir.
pub const FILE_NAME: &str = "history.json";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing build history {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding build history")]
    Encode(#[source] serde_json::Error),
}

/// The name without its version: `hello-2.12.1` -> `hello`,
/// `python3.11-requests-2.31.0` -> `python3.11-requests`; a `.drv` suffix
/// is ignored.
pub fn pname(drv_name: &str) -> &str {
    let name = drv_name.strip_suffix(".drv").unwrap_or(drv_name);
    let b = name.as_bytes();
    let cut = (0..b.len().saturating_sub(1)).find(|&i| b[i] == b'-' && b[i + 1].is_ascii_digit());
    cut.map_or(name, |i| &name[..i])
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    name: String,
    system: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    name: String,
    system: String,
    /// EWMA of speed-normalised build seconds.
    secs: f64,
    /// Update counter when last updated (eviction order).
    updated: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    version: u32,
    entries: Vec<Record>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, (f64, u64)>,
    clock: u64,
    dirty: bool,
}

/// Learned build durations; cheap to query (one hash lookup).
#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
    /// Where it is saved; none: in memory only.
    path: Option<PathBuf>,
}

impl History {
    /// An empty history kept in memory only.
    pub fn in_memory() -> History {
        History::default()
    }

    /// Loads `<state_dir>/history.json`; a missing or corrupt file gives
    /// an empty history (corrupt: with a warning) that saves there.
    pub fn load(state_dir: &Path) -> History {
        let path = state_dir.join(FILE_NAME);
        let h = History {
            inner: Mutex::default(),
            path: Some(path.clone()),
        };
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<File>(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return h,
            Err(e) => {
                tracing::warn!(path = %path.display(), "build history unreadable, starting empty: {e}");
                return h;
            }
        };
        match file {
            Ok(f) => {
                let mut inner = h.lock();
                for r in f.entries.into_iter().filter(|r| r.secs.is_finite()) {
                    inner.clock = inner.clock.max(r.updated + 1);
                    let key = Key {
                        name: r.name,
                        system: r.system,
                    };
                    inner.entries.insert(key, (r.secs.max(0.0), r.updated));
                }
                while inner.entries.len() > MAX_KEYS {
                    inner.evict_oldest();
                }
                tracing::info!(keys = inner.entries.len(), "build history loaded");
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "build history corrupt, starting empty: {e}")
            }
        }
        h
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Speed-normalised seconds `job` is expected to take: learned, else
    /// the default for its features.
    pub fn expected_secs(&self, job: &JobSpec) -> f64 {
        let key = Key {
            name: pname(&job.name).to_owned(),
            system: job.system.clone(),
        };
        if let Some(&(secs, _)) = self.lock().entries.get(&key) {
            return secs;
        }
        if job.required_features.iter().any(|f| f == "big-parallel") {
            DEFAULT_BIG_PARALLEL_SECS
        } else {
            DEFAULT_SECS
        }
    }

    /// Learns that derivation `drv_name` for `system` built in `took` on a
    /// backend of `speed_factor`.
    pub fn record(&self, drv_name: &str, system: &str, took: Duration, speed_factor: f64) {
        let secs = took.as_secs_f64() * speed_factor.max(1e-3);
        let key = Key {
            name: pname(drv_name).to_owned(),
            system: system.to_owned(),
        };
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        if !inner.entries.contains_key(&key) && inner.entries.len() >= MAX_KEYS {
            inner.evict_oldest();
        }
        let e = inner.entries.entry(key).or_insert((secs, now));
        e.0 = EWMA_WEIGHT * secs + (1.0 - EWMA_WEIGHT) * e.0;
        e.1 = now;
        inner.dirty = true;
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the history if it changed since the last save (and has a
    /// file). Blocking I/O: call it off the async workers.
    pub fn save_if_changed(&self) -> Result<(), Error> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = {
            let mut inner = self.lock();
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            inner.encode()?
        };
        let r = write_atomically(path, &bytes);
        if r.is_err() {
            self.lock().dirty = true;
        }
        r
    }
}

impl Inner {
    fn evict_oldest(&mut self) {
        let oldest = (self.entries.iter())
            .min_by_key(|(_, (_, updated))| *updated)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.entries.remove(&k);
        }
    }

    fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut entries: Vec<Record> = (self.entries.iter())
            .map(|(k, &(secs, updated))| Record {
                name: k.name.clone(),
                system: k.system.clone(),
                secs,
                updated,
            })
            .collect();
        entries.sort_by_key(|r| r.updated);
        serde_json::to_vec(&File {
            version: 1,
            entries,
        })
        .map_err(Error::Encode)
    }
}

/// tmp + fsync + rename + fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    crate::durable::write_atomically(path, bytes).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
