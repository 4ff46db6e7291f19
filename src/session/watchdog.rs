//! The relay's own enforcement of a client's `timeout` and
//! `max-silent-time`: backends enforce them too, but a wedged backend (or a
//! link that went quiet without closing) must not hang the client.
//!
//! The relay allows [`GRACE`] beyond each limit, so that a working backend's
//! own, more precise message normally wins.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::wire::build::BuildOptions;

pub const GRACE: Duration = Duration::from_secs(10);

/// [`GRACE`], or what a test set (feature `testing`, [`crate::testing::knobs`]).
fn grace() -> Duration {
    #[cfg(feature = "testing")]
    if let Some(g) = crate::testing::knobs::watchdog_grace() {
        return g;
    }
    GRACE
}

/// When the backend last said something.
#[derive(Clone)]
pub struct Activity(Arc<Mutex<Instant>>);

impl Activity {
    /// Activity as of now (the start of a backend attempt).
    pub fn now() -> Self {
        Activity(Arc::new(Mutex::new(Instant::now())))
    }

    /// The backend said something.
    pub fn touch(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn last(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Resolves with the reason once a limit (plus [`GRACE`]) has passed;
/// never, when neither limit is set.
pub async fn expired(options: BuildOptions, started: Instant, activity: Activity) -> String {
    let total = (options.build_timeout > 0).then(|| Duration::from_secs(options.build_timeout));
    let silence =
        (options.max_silent_time > 0).then(|| Duration::from_secs(options.max_silent_time));
    if total.is_none() && silence.is_none() {
        return std::future::pending().await;
    }
    let grace = grace();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = Instant::now();
        if let Some(t) = total
            && now - started > t + grace
        {
            return format!(
                "nix-relay: the build timed out after {} seconds",
                t.as_secs()
            );
        }
        if let Some(s) = silence
            && now - activity.last() > s + grace
        {
            return format!(
                "nix-relay: the backend produced no output for {} seconds",
                s.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildlog::{EventSink, LogEvent};
    use crate::session::log::FlightLog;
    use bytes::Bytes;

    fn opts(timeout: u64, silent: u64) -> BuildOptions {
        BuildOptions {
            build_timeout: timeout,
            max_silent_time: silent,
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_backend_is_given_up_after_max_silent_time_and_grace() {
        let activity = Activity::now();
        let (sink, _) = FlightLog::new().attempt(u64::MAX, activity.clone());
        let started = Instant::now();
        let watch = tokio::spawn(expired(opts(0, 30), started, activity));
        tokio::time::sleep(Duration::from_secs(35)).await;
        sink.publish(LogEvent::Log(Bytes::from_static(b"still alive\n")));
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert!(!watch.is_finished(), "output resets the silence clock");
        tokio::time::sleep(Duration::from_secs(10)).await;
        let why = watch.await.unwrap();
        assert!(why.contains("no output for 30 seconds"), "{why}");
        assert!(Instant::now() - started >= Duration::from_secs(75));
    }

    #[tokio::test(start_paused = true)]
    async fn the_total_timeout_holds_even_with_output() {
        let activity = Activity::now();
        let (sink, _) = FlightLog::new().attempt(u64::MAX, activity.clone());
        let started = Instant::now();
        let watch = tokio::spawn(expired(opts(20, 0), started, activity));
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            sink.publish(LogEvent::Log(Bytes::from_static(b"x\n")));
        }
        let why = watch.await.unwrap();
        assert!(why.contains("timed out after 20 seconds"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_limits_means_no_watchdog() {
        let activity = Activity::now();
        let r = tokio::time::timeout(
            Duration::from_secs(3600),
            expired(opts(0, 0), Instant::now(), activity),
        )
        .await;
        assert!(r.is_err());
    }
}
