//! What `/status` and the waiting message show of the scheduler.

use tokio::time::Instant;

use super::Scheduler;

/// What `/status` shows of the scheduler.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub backends: Vec<BackendStatus>,
    pub queues: Vec<QueueStatus>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendStatus {
    pub name: String,
    pub systems: Vec<String>,
    pub features: Vec<String>,
    /// `up`, `down` (failed, backing off), `probing` (backoff over, next
    /// job tries it) or `unknown` (not tried yet).
    pub state: &'static str,
    /// `active`, `draining` (finishes its builds, takes no new ones) or
    /// `removing` (draining, then forgotten: gone from the config).
    pub admin: &'static str,
    pub running: u32,
    pub max_jobs: u32,
    pub speed_factor: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueStatus {
    pub system: String,
    /// The required features shared by the queue's jobs.
    pub features: Vec<String>,
    /// Seconds each waiting job has waited, oldest first.
    pub waiting_seconds: Vec<f64>,
}

impl Scheduler {
    /// `2 running on opi01, opi02`: builds on the backends serving `system`.
    pub fn running_summary(&self, system: &str) -> String {
        let st = self.lock();
        let serving =
            || (st.entries.iter()).filter(|e| e.config.systems.iter().any(|s| s == system));
        let on: Vec<&str> = serving()
            .filter(|e| e.running > 0)
            .map(|e| e.config.name.as_str())
            .collect();
        let n: u32 = serving().map(|e| e.running).sum();
        format!(
            "{n} running on {}",
            if on.is_empty() {
                "none".into()
            } else {
                on.join(", ")
            }
        )
    }

    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        let now = Instant::now();
        let backends = (st.entries.iter())
            .map(|e| BackendStatus {
                name: e.config.name.clone(),
                systems: e.config.systems.clone(),
                features: e.config.supported_features.clone(),
                state: match (e.health.last_ok, e.health.down_until) {
                    (_, Some(t)) if t > now => "down",
                    (Some(true), _) => "up",
                    (Some(false), _) => "probing",
                    (None, _) => "unknown",
                },
                admin: match (e.removing, e.drained) {
                    (true, _) => "removing",
                    (false, true) => "draining",
                    (false, false) => "active",
                },
                running: e.running,
                max_jobs: e.config.max_jobs,
                speed_factor: e.config.speed_factor,
            })
            .collect();
        let queues = (st.queues.iter())
            .map(|(k, q)| QueueStatus {
                system: k.system.clone(),
                features: k.features.clone(),
                waiting_seconds: q.iter().map(|w| (now - w.since).as_secs_f64()).collect(),
            })
            .collect();
        Snapshot { backends, queues }
    }
}
