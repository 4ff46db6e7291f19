//! The day's EC2 spend on disk, so a restart (or a crash loop) cannot
//! launch past `budget_per_day`: `<state_dir>/ec2-ledger.json`, replaced
//! crash-safely ([`crate::durable`]) after every launch and every tick
//! that changed it.
//!
//! It holds the UTC day, the dollars spent on it, and the instances open
//! at the time of writing with the wall time their cost was accrued to.
//! On load only today's spend counts; each instance still open in the file
//! (the previous run ended without terminating it, and this run's first
//! reconcile terminates it) is charged from its last accrual, or from
//! today's midnight, until now.
//!
//! A missing file is a first start: nothing spent. An unreadable or
//! corrupt one is logged as an error and counts as the whole day's budget
//! spent (no launches until the next UTC day); it is renamed to
//! `ec2-ledger.json.corrupt` for inspection, and the relay writes a new
//! file. Delete that new file with the relay stopped to launch again today.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Error;

/// The file in the state dir.
pub const FILE_NAME: &str = "ec2-ledger.json";
const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LedgerFile {
    pub version: u32,
    /// Days since 1970-01-01 UTC.
    pub day: u64,
    /// Dollars spent on `day`.
    pub spent: f64,
    pub open: Vec<OpenInstance>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OpenInstance {
    pub id: String,
    pub template: String,
    pub price_per_hour: f64,
    /// Unix seconds its cost is accrued to.
    pub accrued_to_unix: f64,
}

impl LedgerFile {
    pub fn new(day: u64, spent: f64, open: Vec<OpenInstance>) -> LedgerFile {
        LedgerFile {
            version: VERSION,
            day,
            spent,
            open,
        }
    }

    fn is_valid(&self) -> bool {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        self.version == VERSION
            && ok(self.spent)
            && (self.open.iter()).all(|o| ok(o.price_per_hour) && ok(o.accrued_to_unix))
    }

    /// Dollars spent today (`now`'s UTC day): the file's spend if it is
    /// today's, plus each open instance from max(accrual, midnight) to now.
    fn spent_today(&self, now: SystemTime) -> f64 {
        let now = unix(now);
        let today = day_of(now);
        let midnight = (today * 86_400) as f64;
        let base = if self.day == today { self.spent } else { 0.0 };
        let open: f64 = (self.open.iter())
            .map(|o| (now - o.accrued_to_unix.max(midnight)).max(0.0) * o.price_per_hour / 3600.0)
            .sum();
        base + open
    }
}

pub(super) fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn day_of(unix_secs: f64) -> u64 {
    (unix_secs / 86_400.0) as u64
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// The file at `path`; None when there is none.
fn read(path: &Path) -> Result<Option<LedgerFile>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::LedgerRead {
                path: path.to_owned(),
                source,
            });
        }
    };
    let f: LedgerFile = serde_json::from_slice(&bytes).map_err(|source| Error::LedgerParse {
        path: path.to_owned(),
        source,
    })?;
    if !f.is_valid() {
        return Err(Error::LedgerInvalid(path.to_owned()));
    }
    Ok(Some(f))
}

/// Today's spend as the file at `path` says, at wall time `now`; an
/// unusable file counts as `budget_per_day` (see the module doc).
pub(super) fn load(path: &Path, now: SystemTime, budget_per_day: f64) -> f64 {
    match read(path) {
        Ok(None) => 0.0,
        Ok(Some(f)) => {
            let spent = f.spent_today(now);
            tracing::info!(path = %path.display(), spent_today = spent, open_instances = f.open.len(), "EC2 spend ledger loaded");
            spent
        }
        Err(e) => {
            let corrupt = path.with_extension("json.corrupt");
            let kept = std::fs::rename(path, &corrupt).is_ok();
            tracing::error!(
                error = %crate::error_chain(&e),
                kept_as = %if kept { corrupt.display().to_string() } else { "-".into() },
                "EC2 spend ledger unusable: counting today's whole budget as spent, so nothing launches until the next UTC day (delete {} with the relay stopped to launch again today)",
                path.display()
            );
            budget_per_day
        }
    }
}

/// Writes `f` to `path` crash-safely (blocking I/O).
pub(super) fn write(path: &Path, f: &LedgerFile) -> Result<(), Error> {
    let bytes = serde_json::to_vec(f).map_err(Error::LedgerEncode)?;
    crate::durable::write_atomically(path, &bytes).map_err(|source| Error::LedgerWrite {
        path: path.to_owned(),
        source,
    })
}

impl super::manager::Manager {
    /// Keeps the day's spend in `<state_dir>/ec2-ledger.json`: loads it
    /// now (see the module doc) and writes it from then on.
    pub fn with_ledger_file(mut self, state_dir: &Path) -> Self {
        let file = path(state_dir);
        let now = tokio::time::Instant::now();
        let spent = load(&file, self.clock.wall(now), self.cfg.budget_per_day);
        self.ledger = super::cost::Ledger::restored(self.clock.day(now), spent);
        self.ledger_path = Some(file);
        self
    }

    /// Writes the ledger file if it changed since the last write. A failed
    /// write is logged; the next call retries.
    pub(super) async fn persist(&mut self) {
        let Some(file) = self.ledger_path.clone() else {
            return;
        };
        let f = self.ledger_snapshot();
        if self.ledger_saved.as_ref() == Some(&f) {
            return;
        }
        let g = f.clone();
        match tokio::task::spawn_blocking(move || write(&file, &g)).await {
            Ok(Ok(())) => self.ledger_saved = Some(f),
            Ok(Err(e)) => {
                tracing::error!(error = %crate::error_chain(&e), "EC2 spend not persisted; retrying next tick")
            }
            Err(e) => tracing::error!(error = %e, "EC2 spend ledger write task failed"),
        }
    }

    fn ledger_snapshot(&self) -> LedgerFile {
        let open = (self.tracked.values())
            .map(|t| OpenInstance {
                id: t.id.clone(),
                template: t.template.clone(),
                price_per_hour: t.price_per_hour,
                accrued_to_unix: unix(self.clock.wall(t.accrued_to)),
            })
            .collect();
        let day = self.ledger.day();
        LedgerFile::new(day, self.ledger.spent_on(day), open)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const DAY: u64 = 86_400;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn open(accrued_to: u64, price: f64) -> OpenInstance {
        OpenInstance {
            id: "i-1".into(),
            template: "arm".into(),
            price_per_hour: price,
            accrued_to_unix: accrued_to as f64,
        }
    }

    #[test]
    fn only_today_counts_and_open_instances_are_charged_until_now() {
        let f = LedgerFile::new(10, 5.0, vec![open(10 * DAY + 3600, 1.0)]);
        // Same day, two hours later: 5 $ + 1 h still open at 1 $/h.
        assert!((f.spent_today(at(10 * DAY + 7200)) - 6.0).abs() < 1e-9);
        // The next day at 01:00: yesterday's 5 $ is gone; the open
        // instance is charged from midnight only.
        assert!((f.spent_today(at(11 * DAY + 3600)) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_round_trip_and_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        assert_eq!(load(&p, at(10 * DAY), 20.0), 0.0, "first start");
        write(&p, &LedgerFile::new(10, 2.5, vec![])).unwrap();
        assert_eq!(load(&p, at(10 * DAY + 60), 20.0), 2.5);
    }

    #[test]
    fn a_corrupt_file_counts_as_the_whole_budget_and_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        std::fs::write(&p, b"{\"version\":1,\"day\":").unwrap();
        assert_eq!(load(&p, at(10 * DAY), 20.0), 20.0);
        assert!(dir.path().join("ec2-ledger.json.corrupt").exists());
        assert!(!p.exists());
        let nan = r#"{"version":1,"day":10,"spent":-1.0,"open":[]}"#;
        std::fs::write(&p, nan).unwrap();
        assert_eq!(load(&p, at(10 * DAY), 20.0), 20.0, "negative spend");
    }
}
