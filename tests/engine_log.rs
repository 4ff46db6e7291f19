//! Build-log bounds in-process (feature `testing`): a builder writing a
//! huge log without a newline. The relay stops the build at `[limits]
//! max_log_size` (LogLimitExceeded), a client gets at most about that much
//! log, a flight's backlog stays within its bound and the relay's memory
//! does not follow what the builder writes.

use std::time::Duration;

use nix_relay::config::Protocol;
use nix_relay::session::flight::FlightKey;
use nix_relay::session::log::{LOG_BACKLOG_BYTES, MAX_LOG_LINE};
use nix_relay::store::Scope;
use nix_relay::testing::drv;
use nix_relay::testing::fake::Script;
use nix_relay::testing::fake_flood::Flood;
use nix_relay::testing::harness::{SYSTEM, TestClient, TestRelay, fake_backend};
use nix_relay::wire::build::{BuildResult, BuildStatus};
use nix_relay::wire::store_path::StorePath;

const SYS: &str = SYSTEM;
const WAIT: Duration = Duration::from_secs(10);
const MAX_LOG: u64 = 8 << 20;
const FLOOD: u64 = 256 << 20;
/// What the relay may grow by while a flood passes (the lab's bound).
const MEMORY: u64 = 64 << 20;

/// Flood tests measure the process's peak RSS: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with(field));
    let n = line.and_then(|l| l.split_whitespace().nth(1));
    n.and_then(|n| n.parse().ok()).expect(field)
}

/// Resets the peak RSS; returns the RSS now, in bytes.
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
    kib("VmRSS:") << 10
}

struct Flooded {
    result: BuildResult,
    log: String,
    /// The most the flight's backlog held while the build ran.
    backlog_peak: usize,
    /// How much the process's peak RSS rose over its RSS before.
    grew: u64,
}

/// One build from a `client` against backend `uri` flooding as `flood`;
/// waits until the client's log says `told`.
async fn flood_build(
    client: Protocol,
    uri: &str,
    flood: Flood,
    told: &str,
) -> (TestRelay, StorePath, Flooded) {
    let config = format!(
        "[limits]\nmax_log_size = \"8MiB\"\n{}",
        fake_backend("a", uri, "")
    );
    let script = Script::default().log(&["flooding"]).flood(flood);
    let t = TestRelay::start(&config, &[("a", script)]).await;
    let (drv_path, d) = drv::derivation(&format!("flood-{client}"), SYS, &[]);
    let before = reset_peak();
    let mut c = t.client(client, "alice").await;
    let building = tokio::spawn(async move {
        let r = c.build(&drv_path, &d).await;
        (c, r)
    });
    let (drv_path, d) = drv::derivation(&format!("flood-{client}"), SYS, &[]);
    t.fake("a")
        .wait_for("building", WAIT, |r| r.builds_started.len() == 1)
        .await;
    let key = FlightKey {
        scope: Scope::Public,
        outputs: vec![drv::out_path(&d)],
    };
    let (watch, created) = t.relay.flights().attach(key, true);
    assert!(!created, "the build's flight exists");
    let mut backlog_peak = 0;
    while !building.is_finished() {
        backlog_peak = backlog_peak.max(watch.flight.log.held());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(watch);
    let (c, result): (TestClient, _) = building.await.unwrap();
    let result = result.unwrap();
    let grew = (kib("VmHWM:") << 10).saturating_sub(before);
    let log = c.wait_log(told, WAIT).await;
    c.close().await.unwrap();
    let f = Flooded {
        result,
        log,
        backlog_peak,
        grew,
    };
    (t, drv_path, f)
}

/// A flood in chunks is stopped at max_log_size: LogLimitExceeded with
/// Nix's wording, at most about max_log_size of log to the client, the
/// fake's build cancelled before it wrote it all.
async fn stopped_at_max_log_size(client: Protocol, uri: &str) {
    let _one = SERIAL.lock().await;
    let why = "killed after writing more than 8388608 bytes of log output";
    let (t, drv_path, f) = flood_build(client, uri, Flood::Chunks(FLOOD), why).await;
    let what = format!("{client} client, {uri}");
    assert_eq!(
        f.result.status,
        BuildStatus::LogLimitExceeded,
        "{what}: {:?}",
        f.result
    );
    assert!(
        String::from_utf8_lossy(&f.result.error_msg).contains(why),
        "{what}"
    );
    assert!(
        f.log.contains("xxxxxxxxxxxxxxxx"),
        "{what}: no flood reached the client"
    );
    let slack = 2 * MAX_LOG_LINE as u64 + 4096;
    assert!(
        (f.log.len() as u64) <= MAX_LOG + slack,
        "{what}: {} bytes of log",
        f.log.len()
    );
    assert!(
        f.backlog_peak <= LOG_BACKLOG_BYTES,
        "{what}: backlog {}",
        f.backlog_peak
    );
    let fake = t.fake("a");
    let rec = fake
        .wait_for("cancelled", WAIT, |r| !r.builds_cancelled.is_empty())
        .await;
    assert_eq!(rec.builds_cancelled, [drv_path], "{what}");
    assert!(rec.flood_bytes < FLOOD, "{what}: not stopped: {rec:?}");
    // A client that falls behind the flight's backlog is told how much it
    // missed (a loaded machine makes that likely): that counts as reached.
    let got = f.log.len() as u64 + dropped(&f.log);
    assert!(got + slack >= MAX_LOG, "{what}: only {got} bytes of log");
    assert!(
        f.grew < MEMORY,
        "{what}: peak RSS grew by {} MiB",
        f.grew >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_flood_from_a_serve_backend_stops_at_max_log_size() {
    stopped_at_max_log_size(Protocol::Serve, "fake://a").await;
    stopped_at_max_log_size(Protocol::Worker, "fake://a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_flood_from_a_worker_backend_stops_at_max_log_size() {
    stopped_at_max_log_size(Protocol::Worker, "fake-ng://a").await;
    stopped_at_max_log_size(Protocol::Serve, "fake-ng://a").await;
}

/// A daemon's one 256 MiB log message is cut on reading: the build
/// succeeds with a note, every byte passed through the relay and its
/// memory did not follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_huge_log_message_from_a_worker_backend_is_cut_with_bounded_memory() {
    for client in [Protocol::Serve, Protocol::Worker] {
        let _one = SERIAL.lock().await;
        let note = "more bytes of this log line dropped";
        let one = Flood::OneMessage(FLOOD);
        let (t, _, f) = flood_build(client, "fake-ng://a", one, note).await;
        assert_eq!(
            f.result.status,
            BuildStatus::Built,
            "{client}: {:?}",
            f.result
        );
        assert!(
            (f.log.len() as u64) < 2 << 20,
            "{client}: {} bytes of log",
            f.log.len()
        );
        assert_eq!(t.fake("a").record().flood_bytes, FLOOD, "{client}");
        assert!(
            f.grew < MEMORY,
            "{client}: peak RSS grew by {} MiB",
            f.grew >> 20
        );
    }
}

/// The bytes the relay said it dropped for this client (its
/// "nix-relay: N bytes of log dropped" notes).
fn dropped(log: &str) -> u64 {
    log.match_indices(" bytes of log dropped")
        .filter_map(|(at, _)| {
            let before = &log[..at];
            let start = before.rfind(|c: char| !c.is_ascii_digit())? + 1;
            before[start..].parse::<u64>().ok()
        })
        .sum()
}
