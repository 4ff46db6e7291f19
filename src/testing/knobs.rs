//! Process-wide test knobs for production timings that are too long for
//! an in-process test. Each is unset (the production value holds) until a
//! test sets it; set one only in a test binary whose tests all want it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static WATCHDOG_GRACE_MS: AtomicU64 = AtomicU64::new(u64::MAX);

/// Replaces the build watchdog's grace beyond `timeout` /
/// `max-silent-time` (`session::watchdog::GRACE`, 10 s) in this process.
pub fn set_watchdog_grace(d: Duration) {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX - 1);
    WATCHDOG_GRACE_MS.store(ms, Ordering::Relaxed);
}

/// The grace a test set, if any.
pub fn watchdog_grace() -> Option<Duration> {
    let ms = WATCHDOG_GRACE_MS.load(Ordering::Relaxed);
    (ms != u64::MAX).then(|| Duration::from_millis(ms))
}
