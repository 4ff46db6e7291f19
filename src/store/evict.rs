//! The size cap: least-recently-used eviction.
//!
//! The store keeps a running total of its NAR files' sizes (measured once at
//! open, then adjusted on every publish and eviction). An entry's last use
//! is the modification time of its `meta/<hash>.prov`, bumped whenever its
//! NAR is read. When the total exceeds the cap, entries are removed oldest
//! first — narinfo first, so the entry disappears before its NAR does —
//! skipping every path pinned by a running build.
//!
//! Invariant: a pinned path is never evicted; an evicted entry is never
//! half-visible (its narinfo goes first).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::{NarInfo, Store};
use crate::wire::store_path::StorePath;

#[derive(Debug, Default)]
pub struct Usage {
    pub(super) bytes: AtomicU64,
    pins: Mutex<HashMap<StorePath, usize>>,
    evicting: Mutex<()>,
}

/// Keeps paths from eviction while alive.
pub struct Pin {
    store: Store,
    paths: Vec<StorePath>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self
            .store
            .usage
            .pins
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for p in &self.paths {
            if let Some(n) = pins.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(p);
                }
            }
        }
    }
}

struct Entry {
    used: SystemTime,
    narinfo: PathBuf,
    nar: PathBuf,
    prov: PathBuf,
    path: StorePath,
    size: u64,
}

impl Store {
    /// Pins `paths` for as long as the returned guard lives.
    pub fn pin(&self, paths: &[StorePath]) -> Pin {
        let mut pins = self.usage.pins.lock().unwrap_or_else(|e| e.into_inner());
        for p in paths {
            *pins.entry(p.clone()).or_default() += 1;
        }
        Pin {
            store: self.clone(),
            paths: paths.to_vec(),
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.usage.bytes.load(Ordering::Relaxed)
    }

    /// Marks an entry as used now (for LRU).
    pub(super) fn touch(&self, scope_dir: &Path, path: &StorePath) {
        touch_prov(scope_dir, path.hash_part());
        self.used(scope_dir, path.hash_part());
    }

    /// Marks a public entry as used now, by hash part (HTTP cache hits).
    pub fn touch_public(&self, hash_part: &str) {
        touch_prov(&self.root, hash_part);
        self.used(&self.root, hash_part);
    }

    /// Sums the NAR files of every scope (at open).
    pub(super) fn measure(&self) -> std::io::Result<()> {
        let mut total = 0;
        for dir in self.scope_dirs()? {
            for e in std::fs::read_dir(dir.join("nar")).into_iter().flatten() {
                total += e?.metadata()?.len();
            }
        }
        self.usage.bytes.store(total, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn scope_dirs(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut dirs = vec![self.root.clone()];
        for e in std::fs::read_dir(self.root.join("private"))? {
            dirs.push(e?.path());
        }
        Ok(dirs)
    }

    /// Evicts least recently used entries until the store fits `max`.
    /// Returns the number of entries removed.
    pub fn evict_to(&self, max: u64) -> std::io::Result<usize> {
        let _one_at_a_time = self
            .usage
            .evicting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.total_bytes() <= max {
            return Ok(0);
        }
        let mut entries = self.entries()?;
        entries.sort_by_key(|e| e.used);
        // Identical NARs of different paths share one file.
        let mut users: HashMap<PathBuf, usize> = HashMap::new();
        for e in &entries {
            *users.entry(e.nar.clone()).or_default() += 1;
        }
        let mut removed = 0;
        for e in entries {
            if self.total_bytes() <= max {
                break;
            }
            if self.is_pinned(&e.path) {
                continue;
            }
            std::fs::remove_file(&e.narinfo)?;
            remove_if_present(&e.prov)?;
            let left = users.get_mut(&e.nar).map(|n| {
                *n -= 1;
                *n
            });
            if left == Some(0) {
                remove_if_present(&e.nar)?;
                self.usage
                    .bytes
                    .fetch_sub(e.size.min(self.total_bytes()), Ordering::Relaxed);
            }
            tracing::info!(path = %e.path, bytes = e.size, "evicted (least recently used)");
            removed += 1;
        }
        Ok(removed)
    }

    fn is_pinned(&self, p: &StorePath) -> bool {
        let pins = self.usage.pins.lock().unwrap_or_else(|e| e.into_inner());
        pins.contains_key(p)
    }

    fn entries(&self) -> std::io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for dir in self.scope_dirs()? {
            for e in std::fs::read_dir(&dir)? {
                let narinfo = e?.path();
                if narinfo.extension().is_none_or(|x| x != "narinfo") {
                    continue;
                }
                let Some(info) = std::fs::read_to_string(&narinfo)
                    .ok()
                    .and_then(|t| NarInfo::parse(&t).ok())
                else {
                    continue;
                };
                let prov = dir
                    .join("meta")
                    .join(format!("{}.prov", info.store_path.hash_part()));
                let used = std::fs::metadata(&prov)
                    .or_else(|_| std::fs::metadata(&narinfo))
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                let nar = dir.join(&info.url);
                let size = std::fs::metadata(&nar).map_or(0, |m| m.len());
                out.push(Entry {
                    used,
                    narinfo,
                    nar,
                    prov,
                    path: info.store_path,
                    size,
                });
            }
        }
        Ok(out)
    }
}

/// Bumps the modification time of an entry's provenance file: its last use.
fn touch_prov(scope_dir: &Path, hash_part: &str) {
    let prov = scope_dir.join("meta").join(format!("{hash_part}.prov"));
    // Only the eviction order depends on this; failing to bump is harmless.
    if let Ok(f) = std::fs::File::options().write(true).open(&prov) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn remove_if_present(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
