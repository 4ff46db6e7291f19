//! Every metric the relay exports, defined in one place (prefix `nix_relay_`).
//!
//! Labels come only from closed sets or configured names: `protocol`
//! (`serve`, `worker`), `system` (a configured backend system, else `other`),
//! `backend` (a configured backend name), `outcome` (below), `direction`
//! (below). Never a store path or a peer address. The README lists them all.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static SYSTEMS: OnceLock<BTreeSet<String>> = OnceLock::new();

/// Seconds; builds range from milliseconds to hours.
const DURATION_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

/// Installs the global recorder. `systems` is the allow-list for the
/// `system` label (the union of the backends' systems).
pub fn install(systems: BTreeSet<String>) -> Result<PrometheusHandle, String> {
    let _ = SYSTEMS.set(systems);
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
        .and_then(|b| b.install_recorder())
        .map_err(|e| e.to_string())?;
    describe();
    describe_ec2();
    describe_upstream();
    describe_s3();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "nix_relay_sessions_total",
        "Client sessions started, by protocol"
    );
    describe_gauge!(
        "nix_relay_sessions_active",
        "Client sessions open now, by protocol"
    );
    describe_counter!(
        "nix_relay_builds_total",
        "Backend builds finished, by system, backend and outcome"
    );
    describe_histogram!(
        "nix_relay_build_duration_seconds",
        "Backend build time, by system and backend"
    );
    describe_histogram!(
        "nix_relay_queue_wait_seconds",
        "Time a build waited for a slot, by system"
    );
    describe_gauge!(
        "nix_relay_queue_depth",
        "Builds waiting for a slot, by system"
    );
    describe_gauge!(
        "nix_relay_backend_up",
        "1 if the last connection to the backend worked, else 0"
    );
    describe_gauge!(
        "nix_relay_backend_slots_used",
        "Build slots in use, by backend"
    );
    describe_gauge!(
        "nix_relay_backend_slots",
        "Build slots configured (max_jobs), by backend"
    );
    describe_gauge!(
        "nix_relay_backend_draining",
        "1 if the backend is draining (drained or removed: takes no new build), else 0"
    );
    describe_counter!("nix_relay_nar_bytes_total", "NAR bytes moved, by direction");
    describe_counter!(
        "nix_relay_cache_hits_total",
        "Builds answered from the relay store"
    );
    describe_counter!(
        "nix_relay_cache_misses_total",
        "Builds the relay store could not answer"
    );
    describe_counter!(
        "nix_relay_dedup_attaches_total",
        "Builds joined by another client while in flight"
    );
    describe_counter!(
        "nix_relay_retries_total",
        "Builds requeued after an infrastructure failure"
    );
    describe_counter!(
        "nix_relay_backend_sessions_total",
        "Backend sessions checked out, by backend and kind (new: connected, reused: from the pool)"
    );
    describe_gauge!(
        "nix_relay_backend_sessions_idle",
        "Warm backend sessions in the pool now, by backend"
    );
    describe_gauge!(
        "nix_relay_store_bytes",
        "Bytes of NAR files in the relay store"
    );
}

/// `system` label: a configured system, or `other`.
fn system(s: &str) -> String {
    match SYSTEMS.get() {
        Some(set) if set.contains(s) => s.to_owned(),
        _ => "other".to_owned(),
    }
}

pub fn session_started(protocol: &'static str) {
    counter!("nix_relay_sessions_total", "protocol" => protocol).increment(1);
    gauge!("nix_relay_sessions_active", "protocol" => protocol).increment(1.0);
}

pub fn session_ended(protocol: &'static str) {
    gauge!("nix_relay_sessions_active", "protocol" => protocol).decrement(1.0);
}

/// How a backend build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The build succeeded.
    Success,
    /// The builder failed (non-zero exit, output check, timeout).
    Failure,
    /// The relay could not get a result (connection, protocol, store).
    Error,
    /// Every waiting client left and the build was stopped.
    Cancelled,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
        }
    }
}

pub fn build_finished(sys: &str, backend: &str, outcome: Outcome, took: Option<Duration>) {
    let sys = system(sys);
    counter!("nix_relay_builds_total", "system" => sys.clone(), "backend" => backend.to_owned(), "outcome" => outcome.label())
        .increment(1);
    if let Some(d) = took {
        histogram!("nix_relay_build_duration_seconds", "system" => sys, "backend" => backend.to_owned())
            .record(d.as_secs_f64());
    }
}

pub fn queue_wait(sys: &str, waited: Duration) {
    histogram!("nix_relay_queue_wait_seconds", "system" => system(sys))
        .record(waited.as_secs_f64());
}

pub fn queue_depth(sys: &str, depth: usize) {
    gauge!("nix_relay_queue_depth", "system" => system(sys)).set(depth as f64);
}

pub fn backend_up(backend: &str, up: bool) {
    gauge!("nix_relay_backend_up", "backend" => backend.to_owned()).set(if up { 1.0 } else { 0.0 });
}

pub fn backend_slots(backend: &str, used: u32, total: u32) {
    gauge!("nix_relay_backend_slots_used", "backend" => backend.to_owned()).set(f64::from(used));
    gauge!("nix_relay_backend_slots", "backend" => backend.to_owned()).set(f64::from(total));
}

pub fn backend_draining(backend: &str, draining: bool) {
    gauge!("nix_relay_backend_draining", "backend" => backend.to_owned()).set(if draining {
        1.0
    } else {
        0.0
    });
}

/// Which way NAR bytes went.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// A client uploaded to the relay.
    FromClient,
    /// The relay sent to a client.
    ToClient,
    /// The relay pushed inputs to a backend.
    ToBackend,
    /// The relay fetched outputs from a backend.
    FromBackend,
    /// A backend substituted a build's inputs from its own caches (the
    /// relay pushed nothing for them): their NAR size.
    BackendSubstituted,
}

/// NAR bytes moved since the relay started, by direction: `/status`'s
/// `traffic` (the same sums as `nix_relay_nar_bytes_total`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    pub from_client: u64,
    pub to_client: u64,
    pub to_backend: u64,
    pub from_backend: u64,
    pub backend_substituted: u64,
    /// Fetched from upstream caches into the store.
    pub upstream: u64,
}

static UPSTREAM_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

static TRAFFIC: [std::sync::atomic::AtomicU64; 5] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 5];

/// The [`Traffic`] so far.
pub fn traffic() -> Traffic {
    let get = |d: Direction| TRAFFIC[d as usize].load(std::sync::atomic::Ordering::Relaxed);
    Traffic {
        from_client: get(Direction::FromClient),
        to_client: get(Direction::ToClient),
        to_backend: get(Direction::ToBackend),
        from_backend: get(Direction::FromBackend),
        backend_substituted: get(Direction::BackendSubstituted),
        upstream: UPSTREAM_BYTES.load(std::sync::atomic::Ordering::Relaxed),
    }
}

pub fn nar_bytes(dir: Direction, n: u64) {
    TRAFFIC[dir as usize].fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    let d = match dir {
        Direction::FromClient => "from_client",
        Direction::ToClient => "to_client",
        Direction::ToBackend => "to_backend",
        Direction::FromBackend => "from_backend",
        Direction::BackendSubstituted => "backend_substituted",
    };
    counter!("nix_relay_nar_bytes_total", "direction" => d).increment(n);
}

pub fn cache_lookup(hit: bool) {
    if hit {
        counter!("nix_relay_cache_hits_total").increment(1);
    } else {
        counter!("nix_relay_cache_misses_total").increment(1);
    }
}

pub fn retry() {
    counter!("nix_relay_retries_total").increment(1);
}

pub fn dedup_attach() {
    counter!("nix_relay_dedup_attaches_total").increment(1);
}

/// A build got a backend session: `kind` is `new` or `reused`.
pub fn backend_session(backend: &str, kind: &'static str) {
    counter!("nix_relay_backend_sessions_total", "backend" => backend.to_owned(), "kind" => kind)
        .increment(1);
}

pub fn backend_sessions_idle(backend: &str, n: usize) {
    gauge!("nix_relay_backend_sessions_idle", "backend" => backend.to_owned()).set(n as f64);
}

pub fn store_bytes(n: u64) {
    gauge!("nix_relay_store_bytes").set(n as f64);
}

/// Makes every counter appear from the start (at zero), so dashboards and
/// alerts see the series before the first event.
pub fn register_zeroes(backends: &[(String, u32)]) {
    counter!("nix_relay_cache_hits_total").absolute(0);
    counter!("nix_relay_cache_misses_total").absolute(0);
    counter!("nix_relay_dedup_attaches_total").absolute(0);
    counter!("nix_relay_retries_total").absolute(0);
    for p in ["serve", "worker"] {
        counter!("nix_relay_sessions_total", "protocol" => p).absolute(0);
        gauge!("nix_relay_sessions_active", "protocol" => p).set(0.0);
    }
    for (name, slots) in backends {
        backend_slots(name, 0, *slots);
        backend_draining(name, false);
        backend_sessions_idle(name, 0);
        for kind in ["new", "reused"] {
            counter!("nix_relay_backend_sessions_total", "backend" => name.clone(), "kind" => kind)
                .absolute(0);
        }
    }
}

// EC2 builders (src/ec2). The fractional counters
// nix_relay_ec2_instance_seconds_total and nix_relay_ec2_dollars_total are
// rendered as text by `ec2_cost_text` (this recorder's counters are integers).
// Labels: `template` (a configured template name),
// `state` (`booting`, `joined`), `reason` (why an instance ended), `outcome`
// (of a launch), `op` (an EC2 API operation), `code` (an EC2 no-spot-capacity
// error code). Never an instance id.

fn describe_ec2() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "nix_relay_ec2_instances",
        "EC2 instances this relay runs, by state (booting, joined) and template"
    );
    describe_gauge!(
        "nix_relay_ec2_spent_today_dollars",
        "Dollars accrued in the current UTC day (the budget_per_day cap applies)"
    );
    describe_counter!(
        "nix_relay_ec2_launches_total",
        "Launch attempts, by template and outcome (launched, failed, refused_budget)"
    );
    describe_counter!(
        "nix_relay_ec2_terminations_total",
        "Instances ended, by template and reason (idle, max_lifetime, budget, unreachable, untracked, vanished, shutdown)"
    );
    describe_counter!(
        "nix_relay_ec2_spot_fallbacks_total",
        "Spot launches refused for capacity and launched on-demand instead, by template and EC2 error code"
    );
    describe_counter!(
        "nix_relay_ec2_api_retries_total",
        "EC2 API calls retried after throttling or a transient error, by operation"
    );
}

pub fn ec2_instances(state: &'static str, template: &str, n: usize) {
    gauge!("nix_relay_ec2_instances", "state" => state, "template" => template.to_owned())
        .set(n as f64);
}

pub fn ec2_spent_today(dollars: f64) {
    gauge!("nix_relay_ec2_spent_today_dollars").set(dollars);
}

pub fn ec2_launch(template: &str, outcome: &'static str) {
    counter!("nix_relay_ec2_launches_total", "template" => template.to_owned(), "outcome" => outcome)
        .increment(1);
}

pub fn ec2_terminated(template: &str, reason: &'static str) {
    counter!("nix_relay_ec2_terminations_total", "template" => template.to_owned(), "reason" => reason)
        .increment(1);
}

/// A spot launch refused for capacity (`code`: the EC2 error code, a closed
/// set) that was retried on-demand.
pub fn ec2_spot_fallback(template: &str, code: &'static str) {
    counter!("nix_relay_ec2_spot_fallbacks_total", "template" => template.to_owned(), "code" => code)
        .increment(1);
}

pub fn ec2_api_retry(op: &'static str) {
    counter!("nix_relay_ec2_api_retries_total", "op" => op).increment(1);
}

/// One template's accrued EC2 cost: instance-seconds and dollars.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Ec2Cost {
    pub instance_seconds: f64,
    pub dollars: f64,
}

/// The fractional EC2 cost counters in Prometheus text format, by template:
/// `nix_relay_ec2_instance_seconds_total` and `nix_relay_ec2_dollars_total`.
pub fn ec2_cost_text<'a>(cost: impl IntoIterator<Item = (&'a str, Ec2Cost)> + Clone) -> String {
    let mut out = String::new();
    for (name, help, pick) in [
        (
            "nix_relay_ec2_instance_seconds_total",
            "Instance-seconds accrued since start, by template",
            (|c: Ec2Cost| c.instance_seconds) as fn(Ec2Cost) -> f64,
        ),
        (
            "nix_relay_ec2_dollars_total",
            "Dollars accrued since start (instance-seconds x price_per_hour), by template",
            |c: Ec2Cost| c.dollars,
        ),
    ] {
        out += &format!("# HELP {name} {help}\n# TYPE {name} counter\n");
        for (template, c) in cost.clone() {
            out += &format!("{name}{{template=\"{template}\"}} {}\n", pick(c));
        }
    }
    out
}

// --- Upstream binary caches (`crate::upstream`). Labels: `result` of a
// narinfo lookup (`hit`, `miss`, `untrusted`, `error`), `reason` a fetch
// failed (`network`, `mismatch`, `nar`, `too_large`, `store`, `reference`). Never a path or URL.

fn describe_upstream() {
    use metrics::describe_counter;
    describe_counter!(
        "nix_relay_upstream_narinfo_total",
        "Narinfo requests to upstream caches, by result (hit, miss, untrusted, error)"
    );
    describe_counter!(
        "nix_relay_upstream_nar_bytes_total",
        "NAR bytes (uncompressed) fetched from upstream caches into the store"
    );
    describe_counter!(
        "nix_relay_upstream_fetch_failures_total",
        "Upstream fetches that failed, by reason (network, mismatch, nar, too_large, store, reference)"
    );
    describe_counter!(
        "nix_relay_http_nar_bytes_total",
        "NAR body bytes the HTTP cache sent, by source (stored: a stored NAR; live: pulled through while fetched)"
    );
}

/// NAR body bytes the HTTP cache sent: `stored` or `live`.
pub fn http_nar_bytes(source: &'static str, n: usize) {
    counter!("nix_relay_http_nar_bytes_total", "source" => source).increment(n as u64);
}

/// One narinfo request to an upstream: `hit`, `miss`, `untrusted`, `error`.
pub fn upstream_narinfo(result: &'static str) {
    counter!("nix_relay_upstream_narinfo_total", "result" => result).increment(1);
}

pub fn upstream_nar_bytes(n: u64) {
    UPSTREAM_BYTES.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    counter!("nix_relay_upstream_nar_bytes_total").increment(n);
}

/// A fetch failed: `network`, `mismatch`, `nar`, `too_large`, `store`, `reference`.
pub fn upstream_fetch_failed(reason: &'static str) {
    counter!("nix_relay_upstream_fetch_failures_total", "reason" => reason).increment(1);
}

/// Time one NAR's reader (the tee to a client, an upload) waited because
/// its store side (hash, compression, file) was a whole queue behind;
/// recorded only for NARs that waited.
pub fn nar_store_waited(d: Duration) {
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(|| {
        metrics::describe_histogram!(
            "nix_relay_nar_store_wait_seconds",
            "Per NAR that waited: time its reader (tee, upload) waited for its store side"
        );
    });
    histogram!("nix_relay_nar_store_wait_seconds").record(d.as_secs_f64());
}

// --- The cache's bucket (`crate::s3`). Labels: `step` an upload failed at
// (`local`, `nar`, `prov`, `narinfo`, `timeout`, `queue_full`), `result` of a
// narinfo read from the bucket (`hit`, `miss`, `untrusted`, `error`),
// `reason` of an eviction deletion (`lru`, `orphan`, `dangling`).

fn describe_s3() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "nix_relay_s3_uploads_total",
        "Store entries uploaded to the bucket (narinfo written)"
    );
    describe_counter!(
        "nix_relay_s3_upload_bytes_total",
        "Bytes uploaded to the bucket (NARs, provenance, narinfos)"
    );
    describe_counter!(
        "nix_relay_s3_upload_failures_total",
        "Entry uploads that failed, by step (local, nar, prov, narinfo, timeout, queue_full)"
    );
    describe_gauge!(
        "nix_relay_s3_queue_depth",
        "Entries queued for upload or uploading"
    );
    describe_counter!(
        "nix_relay_s3_reads_total",
        "Narinfo reads from the bucket, by result (hit, miss, untrusted, error)"
    );
    describe_counter!(
        "nix_relay_s3_evicted_total",
        "Objects deleted by the bucket's eviction, by reason (lru: an entry; orphan: a NAR no narinfo refers to; dangling: a narinfo whose NAR was gone)"
    );
    describe_counter!(
        "nix_relay_s3_evicted_bytes_total",
        "NAR bytes deleted by the bucket's eviction"
    );
    describe_gauge!(
        "nix_relay_s3_bucket_bytes",
        "The bucket's NAR objects' total size after the last eviction pass"
    );
    describe_counter!(
        "nix_relay_s3_refreshed_total",
        "Narinfos refreshed in the bucket (used, older than a day)"
    );
}

/// One entry uploaded, `bytes` of it sent.
pub fn s3_uploaded(bytes: u64) {
    counter!("nix_relay_s3_uploads_total").increment(1);
    counter!("nix_relay_s3_upload_bytes_total").increment(bytes);
}

/// An upload failed at `step`: `local`, `nar`, `prov`, `narinfo`, `timeout`, `queue_full`.
pub fn s3_upload_failed(step: &'static str) {
    counter!("nix_relay_s3_upload_failures_total", "step" => step).increment(1);
}

pub fn s3_queue_depth(n: usize) {
    gauge!("nix_relay_s3_queue_depth").set(n as f64);
}

/// A narinfo read from the bucket: `hit`, `miss`, `untrusted`, `error`.
pub fn s3_read(result: &'static str) {
    counter!("nix_relay_s3_reads_total", "result" => result).increment(1);
}

/// One eviction pass's deletions.
pub fn s3_evicted(lru: usize, orphan: usize, dangling: usize, bytes: u64) {
    for (reason, n) in [("lru", lru), ("orphan", orphan), ("dangling", dangling)] {
        counter!("nix_relay_s3_evicted_total", "reason" => reason).increment(n as u64);
    }
    counter!("nix_relay_s3_evicted_bytes_total").increment(bytes);
}

pub fn s3_bucket_bytes(n: u64) {
    gauge!("nix_relay_s3_bucket_bytes").set(n as f64);
}

pub fn s3_refreshed() {
    counter!("nix_relay_s3_refreshed_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::Ec2Cost;

    #[test]
    fn ec2_cost_is_rendered_as_fractional_counters_by_template() {
        let cost = [(
            "arm-big",
            Ec2Cost {
                instance_seconds: 90.5,
                dollars: 0.25,
            },
        )];
        let text = super::ec2_cost_text(cost);
        assert!(text.contains("# TYPE nix_relay_ec2_dollars_total counter\n"));
        assert!(text.contains("nix_relay_ec2_instance_seconds_total{template=\"arm-big\"} 90.5\n"));
        assert!(text.contains("nix_relay_ec2_dollars_total{template=\"arm-big\"} 0.25\n"));
        assert_eq!(super::ec2_cost_text([]).lines().count(), 4);
    }
}
