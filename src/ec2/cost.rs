//! What the instances cost: instance-seconds × price, per template (since
//! start) and per UTC day (for the budget). Time comes from a [`Clock`] so
//! paused-time tests can cross midnight.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Wall-clock time derived from the (possibly paused) tokio clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin_wall: SystemTime,
    origin: Instant,
}

impl Clock {
    pub fn new(wall_now: SystemTime) -> Clock {
        Clock {
            origin_wall: wall_now,
            origin: Instant::now(),
        }
    }

    pub fn wall(&self, at: Instant) -> SystemTime {
        self.origin_wall + (at - self.origin)
    }

    /// Days since 1970-01-01 UTC.
    pub fn day(&self, at: Instant) -> u64 {
        self.wall(at)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 86_400)
    }
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TemplateCost {
    pub instance_seconds: f64,
    pub dollars: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Ledger {
    day: u64,
    spent_today: f64,
    per_template: BTreeMap<String, TemplateCost>,
}

impl Ledger {
    /// A ledger that starts with `spent` dollars on `day` (a restart).
    pub fn restored(day: u64, spent: f64) -> Ledger {
        crate::metrics::ec2_spent_today(spent);
        Ledger {
            day,
            spent_today: spent,
            per_template: BTreeMap::new(),
        }
    }

    /// The UTC day `spent_on` last accrued to.
    pub fn day(&self) -> u64 {
        self.day
    }

    /// Adds `secs` of one instance of `template` at `price` $/h, on `day`.
    pub fn accrue(&mut self, template: &str, elapsed: Duration, price_per_hour: f64, day: u64) {
        if day != self.day {
            self.day = day;
            self.spent_today = 0.0;
        }
        let secs = elapsed.as_secs_f64();
        let dollars = secs * price_per_hour / 3600.0;
        self.spent_today += dollars;
        let t = self.per_template.entry(template.to_owned()).or_default();
        t.instance_seconds += secs;
        t.dollars += dollars;
        crate::metrics::ec2_spent_today(self.spent_today);
    }

    /// Dollars spent on `day` (0 on a day nothing accrued yet).
    pub fn spent_on(&self, day: u64) -> f64 {
        if day == self.day {
            self.spent_today
        } else {
            0.0
        }
    }

    pub fn per_template(&self) -> &BTreeMap<String, TemplateCost> {
        &self.per_template
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_seconds_times_price_and_the_day_resets_at_midnight() {
        let mut l = Ledger::default();
        l.accrue("arm", Duration::from_secs(1800), 0.5, 10);
        l.accrue("arm", Duration::from_secs(1800), 0.5, 10);
        assert!((l.spent_on(10) - 0.5).abs() < 1e-9);
        l.accrue("arm", Duration::from_secs(3600), 0.5, 11);
        assert!((l.spent_on(11) - 0.5).abs() < 1e-9);
        assert_eq!(l.spent_on(10), 0.0);
        let t = &l.per_template()["arm"];
        assert!((t.instance_seconds - 7200.0).abs() < 1e-9);
        assert!((t.dollars - 1.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_paused_time_across_midnight() {
        let c = Clock::new(UNIX_EPOCH + Duration::from_secs(86_400 - 10));
        assert_eq!(c.day(Instant::now()), 0);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(c.day(Instant::now()), 1);
    }
}
