//! One BuildDerivation: answer from the store (cache hit), attach to the
//! same build in flight, or start one ([`fly`]): claim a slot (placed by
//! speed, load and input locality), take a session from the backend pool,
//! push the inputs the backend lacks, build with the client's options, and
//! keep the session so the outputs can be streamed out afterwards; it goes
//! back to the pool when the last output is out, unless an operation on it
//! failed or was abandoned.
//!
//! Every failure becomes a failing [`BuildResult`] whose message says which
//! step failed; the client's session goes on.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::BuildRecord;
pub use super::error::{BuildError, Class, JobError};
use super::flight::{Attachment, Flight, FlightKey, Outcome};
use super::log::{Recv, effective_max_log_size};
pub use super::outputs::Finished;
use super::{ClientId, Relay, say};
use crate::backend::BackendConn;
use crate::buildlog::LogSink;
use crate::error_chain as chain;
use crate::metrics::{Direction, Outcome as BuildOutcome};
use crate::scheduler::locality::InputSummary;
use crate::scheduler::{Acquired, JobSpec, Scheduler, Slot};
use crate::store::Scope;
use crate::wire::build::{BasicDerivation, BuildOptions, BuildResult, BuildStatus, drv_name};
use crate::wire::store_path::StorePath;

/// What a session keeps after a successful build: its claim on the
/// flight, and the outputs it can stream from the backend.
pub struct Pending {
    pub finished: Arc<tokio::sync::Mutex<Finished>>,
    attachment: Attachment,
}

impl Pending {
    /// Whether `path` is one of this build's outputs.
    pub fn holds(&self, path: &StorePath) -> bool {
        self.attachment.flight.key.outputs.contains(path)
    }
}

/// Builds `drv` for `client`. Never fails: errors become results.
pub async fn run(
    relay: &Arc<Relay>,
    log: &LogSink,
    client: &ClientId,
    gone: &CancellationToken,
    drv_path: &StorePath,
    drv: &BasicDerivation,
    options: BuildOptions,
) -> (BuildResult, Option<Pending>) {
    let span = info_span!("job", drv = drv_name(drv_path), system = %drv.platform);
    let options = relay.timeouts(&client.name).apply(options);
    async {
        match prepare(relay, log, client, drv).await {
            Ok(Prepared::Hit) => {
                crate::metrics::cache_lookup(true);
                (cache_hit(), None)
            }
            Ok(Prepared::Build(key, closure)) => {
                crate::metrics::cache_lookup(false);
                let job = ToBuild {
                    key,
                    closure,
                    drv_path,
                    drv,
                };
                attach_and_wait(relay, log, client, gone, job, options).await
            }
            Err(e) => (failed(log, &e).await, None),
        }
    }
    .instrument(span)
    .await
}

/// The failing result a client gets for `e`, said on its log too.
async fn failed(log: &LogSink, e: &JobError) -> BuildResult {
    let msg = chain(e);
    match e.class() {
        Class::Client => info!(class = "client", "{msg}"),
        Class::Infrastructure => warn!(class = "infrastructure", "{msg}"),
        Class::Cancelled => info!(class = "cancelled", "{msg}"),
    }
    say(log, &msg).await;
    BuildResult::failure(BuildStatus::MiscFailure, format!("nix-relay: {msg}"))
}

enum Prepared {
    Hit,
    /// To build: the flight's key and the input closure (read once here).
    Build(FlightKey, crate::store::Closure),
}

/// A derivation to build, as [`prepare`] found it.
struct ToBuild<'a> {
    key: FlightKey,
    closure: crate::store::Closure,
    drv_path: &'a StorePath,
    drv: &'a BasicDerivation,
}

/// Decides the build's scope from its inputs and checks for a cache hit.
async fn prepare(
    relay: &Relay,
    log: &LogSink,
    client: &ClientId,
    drv: &BasicDerivation,
) -> Result<Prepared, JobError> {
    let closure = relay
        .store
        .closure(&drv.input_srcs, Some(&client.name))
        .await?;
    // A floating output has no path yet: nothing to key a flight or a
    // cache hit on.
    if drv.outputs.iter().any(|o| o.path.is_empty()) {
        return Err(JobError::FloatingOutputs);
    }
    let mut outputs = drv.output_paths().map_err(JobError::Derivation)?;
    outputs.sort();
    let mut all_there = !outputs.is_empty();
    for o in &outputs {
        all_there &= relay
            .store
            .contains(o, Some(&client.name))
            .await
            .map_err(JobError::Store)?;
    }
    if all_there {
        say(log, "cache hit: every output is in the relay store").await;
        return Ok(Prepared::Hit);
    }
    let scope = build_scope(client, closure.private);
    Ok(Prepared::Build(FlightKey { scope, outputs }, closure))
}

/// A build is public only when a trusted client asks for it and every
/// input is public. An untrusted client sends the derivation itself, and
/// nobody checks that its outputs are what its builder makes: whatever it
/// builds stays private to it (never signed, served or used for others),
/// and as a private build it runs only on `untrusted_clients` backends.
pub(super) fn build_scope(client: &ClientId, private_inputs: bool) -> Scope {
    if client.trusted && !private_inputs {
        Scope::Public
    } else {
        Scope::Private(client.name.clone())
    }
}

fn cache_hit() -> BuildResult {
    BuildResult::failure(BuildStatus::AlreadyValid, "")
}

#[allow(clippy::too_many_arguments)]
async fn attach_and_wait(
    relay: &Arc<Relay>,
    log: &LogSink,
    client: &ClientId,
    gone: &CancellationToken,
    job: ToBuild<'_>,
    options: BuildOptions,
) -> (BuildResult, Option<Pending>) {
    let ToBuild {
        key,
        closure,
        drv_path,
        drv,
    } = job;
    let (attachment, created) = relay.flights.attach(key, relay.keep_going);
    let flight = attachment.flight.clone();
    let mut log_rx = flight.log.subscribe();
    let mut outcome_rx = flight.outcome.subscribe();
    if created {
        let task = fly(
            relay.clone(),
            flight.clone(),
            client.name.clone(),
            drv_path.clone(),
            drv.clone(),
            closure,
            options,
        );
        tokio::spawn(task.in_current_span());
    } else {
        crate::metrics::dedup_attach();
        say(
            log,
            format!("attached to the build of '{drv_path}' already running for another client"),
        )
        .await;
    }
    let outcome = loop {
        if let Some(o) = outcome_rx.borrow_and_update().clone() {
            break o;
        }
        tokio::select! {
            chunk = log_rx.recv() => forward(log, chunk).await,
            changed = outcome_rx.changed() => if changed.is_err() { break lost() },
            _ = gone.cancelled() => return (BuildResult::failure(BuildStatus::MiscFailure, "client gone"), None),
        }
    };
    while let Some(chunk) = log_rx.try_recv() {
        forward(log, chunk).await;
    }
    let pending = outcome.finished.map(|finished| Pending {
        finished,
        attachment,
    });
    (outcome.result, pending)
}

fn lost() -> Outcome {
    Outcome {
        result: BuildResult::failure(
            BuildStatus::MiscFailure,
            "nix-relay: the build task ended without a result",
        ),
        finished: None,
    }
}

/// Passes a chunk on; a client that fell behind the flight's backlog is
/// told how much it missed.
async fn forward(log: &LogSink, chunk: Recv) {
    match chunk {
        Recv::Chunk(c) => {
            let _ = log.send(c).await;
        }
        Recv::Skipped(n) => say(log, format!("attached mid-build: {n} log bytes went by")).await,
        Recv::Dropped(n) => {
            say(
                log,
                format!("{n} bytes of log dropped (this client fell behind)"),
            )
            .await
        }
    }
}

/// The flight's own task: build, publish the outcome, then keep the
/// backend connection until every attached session is done with it.
async fn fly(
    relay: Arc<Relay>,
    flight: Arc<Flight>,
    client: String,
    drv_path: StorePath,
    drv: BasicDerivation,
    closure: crate::store::Closure,
    options: BuildOptions,
) {
    let (log_tx, mut log_rx) = mpsc::channel::<bytes::Bytes>(64);
    let fan_out = flight.log.clone();
    let fanning = tokio::spawn(async move {
        let mut kept = crate::store::logs::LogTail::default();
        while let Some(chunk) = log_rx.recv().await {
            kept.push(&chunk);
            // Never waits: a slow client loses log, the build goes on.
            fan_out.publish(chunk);
        }
        kept
    });
    let scope = flight.key.scope.clone();
    let result = tokio::select! {
        r = build(&relay, &log_tx, &client, &scope, &drv_path, &drv, closure, options) => r,
        _ = flight.cancel.cancelled() => {
            crate::metrics::build_finished(&drv.platform, "none", BuildOutcome::Cancelled, None);
            Err(JobError::Cancelled)
        }
    };
    let outcome = match result {
        Ok((result, finished)) => Outcome {
            result,
            finished: finished.map(|mut f| {
                f.spoiled = flight.spoiled.clone();
                Arc::new(tokio::sync::Mutex::new(f))
            }),
        },
        Err(e) => Outcome {
            result: failed(&log_tx, &e).await,
            finished: None,
        },
    };
    // Every byte the build logged reaches the backlog before the outcome
    // does: a client that sees the outcome reads no more log, so the tail
    // (often the lines saying why a build failed) would be lost.
    drop(log_tx);
    let kept = match tokio::time::timeout(LOG_DRAIN, fanning).await {
        Ok(Ok(kept)) => Some(kept),
        _ => {
            warn!("the build log was not drained within {LOG_DRAIN:?}; its tail may be lost");
            None
        }
    };
    let finished = outcome.finished.clone();
    let cancelled = flight.cancel.is_cancelled();
    flight.outcome.send_replace(Some(outcome));
    if let Some(kept) = kept.filter(|_| !cancelled) {
        // `nix log` reads it from the cache's log/ (served over HTTP).
        if let Err(e) = relay
            .store
            .put_build_log(&drv_path, &kept.finish(), &scope)
            .await
        {
            warn!(error = %chain(&e), "could not keep the build log");
        }
    }
    if let Some(f) = finished {
        flight.all_detached().await;
        f.lock().await.settle(&relay).await;
    }
    relay.flights.remove(&flight);
}

/// How long a finished build's log may take to reach the flight's backlog
/// (normally at once: every sender is gone when the build returns).
const LOG_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Tries a build up to this many times when backends fail under it.
const MAX_ATTEMPTS: u32 = 3;

/// Builds on the best backend; a build lost to infrastructure (the backend
/// unreachable or gone mid-build) is retried on another, up to
/// [`MAX_ATTEMPTS`]. A build that fails on its own is not retried.
#[allow(clippy::too_many_arguments)]
async fn build(
    relay: &Relay,
    log: &LogSink,
    client: &str,
    scope: &Scope,
    drv_path: &StorePath,
    drv: &BasicDerivation,
    closure: crate::store::Closure,
    options: BuildOptions,
) -> Result<(BuildResult, Option<Finished>), JobError> {
    let system = drv.platform.clone();
    // What this build needs stays in the store until it is done.
    let (inputs, _pin) = input_closure(relay, closure);
    let summary = Arc::new(inputs.summary.clone());
    let spec = job_spec(client, drv_path, drv, summary, *scope != Scope::Public)?;
    for attempt in 1..=MAX_ATTEMPTS {
        let job = spec.clone();
        let queued = tokio::time::Instant::now();
        let slot = claim(&relay.scheduler, job, log).await?;
        crate::metrics::queue_wait(&system, queued.elapsed());
        let name = slot.backend().name.clone();
        let speed = slot.backend().speed_factor;
        let started = tokio::time::Instant::now();
        let job = Job {
            scope,
            drv_path,
            drv,
            inputs: &inputs,
        };
        let r = on_backend(relay, log, slot, &job, options).await;
        let outcome = match &r {
            Ok((res, _)) if res.status.is_success() => BuildOutcome::Success,
            Ok(_) => BuildOutcome::Failure,
            Err(_) => BuildOutcome::Error,
        };
        crate::metrics::build_finished(&system, &name, outcome, Some(started.elapsed()));
        if outcome == BuildOutcome::Success {
            let h = relay.scheduler.history();
            h.record(drv_path.name(), &system, started.elapsed(), speed);
        }
        relay.record(BuildRecord::new(
            drv_path,
            scope,
            &system,
            &name,
            outcome,
            started.elapsed(),
        ));
        match r {
            Ok(done) => return Ok(done),
            Err(e) if e.is_infrastructure() && attempt < MAX_ATTEMPTS => {
                backend_failed(relay, &name, &e);
                crate::metrics::retry();
                let msg = format!(
                    "backend {name} failed ({}); retrying elsewhere (attempt {}/{MAX_ATTEMPTS})",
                    chain(&e),
                    attempt + 1
                );
                warn!("{msg}");
                say(log, msg).await;
            }
            Err(e) => {
                if e.is_infrastructure() {
                    backend_failed(relay, &name, &e);
                }
                return Err(JobError::Backend {
                    backend: name,
                    source: e,
                });
            }
        }
    }
    Err(JobError::Exhausted(MAX_ATTEMPTS))
}

/// What the scheduler places: the derivation's system and the features it
/// requires (from its structured attributes when it has them).
fn job_spec(
    client: &str,
    drv_path: &StorePath,
    drv: &BasicDerivation,
    inputs: Arc<InputSummary>,
    untrusted: bool,
) -> Result<JobSpec, JobError> {
    let required_features = drv.required_features().map_err(JobError::Features)?;
    Ok(JobSpec {
        client: client.to_owned(),
        name: drv_path.name().to_owned(),
        system: drv.platform.clone(),
        required_features,
        inputs,
        untrusted,
    })
}

/// Marks backend `name` down (once per failure: a failed connect was
/// reported by `on_backend` already) and closes its idle sessions.
fn backend_failed(relay: &Relay, name: &str, e: &BuildError) {
    if !matches!(e, BuildError::Connect(_)) {
        relay.scheduler.report_connect(name, false);
    }
    relay.pool.forget(name);
}

/// One build attempt's fixed inputs.
struct Job<'a> {
    scope: &'a Scope,
    drv_path: &'a StorePath,
    drv: &'a BasicDerivation,
    inputs: &'a Inputs,
}

/// A build's input closure, references first, and its summary for placement.
struct Inputs {
    closure: crate::store::Closure,
    /// The closure's paths, in the same order.
    paths: Vec<StorePath>,
    summary: InputSummary,
}

/// The closure, pinned in the store while the guard lives.
fn input_closure(relay: &Relay, closure: crate::store::Closure) -> (Inputs, crate::store::Pin) {
    let paths = closure.paths();
    let pin = relay.store.pin(&paths);
    let sized: Vec<_> = (closure.entries.iter())
        .map(|(_, n)| (n.store_path.clone(), n.nar_size))
        .collect();
    let summary = InputSummary::new(sized);
    let inputs = Inputs {
        closure,
        paths,
        summary,
    };
    (inputs, pin)
}

async fn claim(sched: &Arc<Scheduler>, job: JobSpec, log: &LogSink) -> Result<Slot, JobError> {
    let system = job.system.clone();
    match sched.try_acquire(job) {
        Ok(Acquired::Now(slot)) => Ok(slot),
        Ok(Acquired::Queued { position, rx }) => {
            let running = sched.running_summary(&system);
            say(
                log,
                format!("waiting: position {position} for {system} ({running})"),
            )
            .await;
            Scheduler::wait(rx).await.map_err(JobError::Placement)
        }
        Err(e) => Err(JobError::Placement(e)),
    }
}

async fn on_backend(
    relay: &Relay,
    log: &LogSink,
    slot: Slot,
    job: &Job<'_>,
    options: BuildOptions,
) -> Result<(BuildResult, Option<Finished>), BuildError> {
    let b = slot.backend().clone();
    let private = *job.scope != Scope::Public || job.inputs.closure.private;
    if b.untrusted_clients != private {
        // The scheduler never places it so; a private path must never
        // reach a trusted backend's store, nor a public build an untrusted one.
        return Err(BuildError::Trust(b.name));
    }
    say(log, format!("building '{}' on {}", job.drv_path, b.name)).await;
    let outer = log.clone();
    let activity = super::watchdog::Activity::now();
    let max_log = effective_max_log_size(options.max_log_size, relay.limits.max_log_size);
    let (log, log_full) = super::log::limited(log, max_log, activity.clone());
    let log = &log;
    let conn = relay
        .pool
        .checkout(&b, log.clone(), relay.limits.wire())
        .await;
    relay.scheduler.report_connect(&b.name, conn.is_ok());
    let (mut conn, kind) = conn?;
    crate::metrics::backend_session(&b.name, kind.label());
    push_inputs(relay, &mut conn, job.inputs).await?;
    relay
        .scheduler
        .locality()
        .confirm(&b.name, &job.inputs.paths);
    let started = tokio::time::Instant::now();
    let result = tokio::select! {
        r = conn.client.build_derivation(job.drv_path, job.drv, options, log) => r.map_err(BuildError::Build)?,
        why = super::watchdog::expired(options, started, activity) => {
            // The session is mid-build, so dropping it closes the
            // connection, which stops the backend's build.
            warn!(backend = %b.name, "{why}");
            say(log, why.trim_start_matches("nix-relay: ")).await;
            return Ok((BuildResult::failure(BuildStatus::TimedOut, why), None));
        }
        _ = log_full.cancelled() => {
            // As above: dropping the session stops the backend's build.
            let why = super::log::limit_message(max_log);
            warn!(backend = %b.name, "{why}");
            say(&outer, why.trim_start_matches("nix-relay: ")).await;
            return Ok((BuildResult::failure(BuildStatus::LogLimitExceeded, why), None));
        }
    };
    drop(slot);
    // The build is over: the connection's stderr no longer feeds this log,
    // so the log's senders are all gone once this function returns.
    conn.detach_log().await;
    info!(backend = %b.name, session = kind.label(), status = ?result.status, secs = started.elapsed().as_secs_f32(), "build finished");
    if !result.status.is_success() {
        return Ok((result, None));
    }
    let wanted = job.drv.output_paths().map_err(BuildError::Build)?;
    let infos = conn
        .client
        .query_path_infos(wanted)
        .await
        .map_err(BuildError::Outputs)?;
    relay
        .scheduler
        .locality()
        .confirm(&b.name, infos.iter().map(|i| &i.path));
    let finished = Finished {
        backend: b.name,
        conn,
        outputs: infos.into_iter().map(|i| (i.path.clone(), i)).collect(),
        scope: job.scope.clone(),
        spoiled: Default::default(),
    };
    Ok((result, Some(finished)))
}

/// Uploads the input closure (references first) minus what the backend
/// already has, which one batched QueryValidPaths tells.
async fn push_inputs(
    relay: &Relay,
    conn: &mut BackendConn,
    inputs: &Inputs,
) -> Result<(), BuildError> {
    let valid: std::collections::HashSet<StorePath> = conn
        .client
        .query_valid_paths(inputs.paths.clone())
        .await
        .map_err(BuildError::Inputs)?
        .into_iter()
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let missing = (inputs.closure.entries.iter()).filter(|(_, n)| !valid.contains(&n.store_path));
    for (scope, narinfo) in missing {
        let mut nar = relay.store.open_nar_of(scope, narinfo).await?;
        let mut info = crate::store::to_path_info(narinfo);
        info.registration_time = now;
        conn.client
            .add_to_store_nar(&info, &mut nar)
            .await
            .map_err(BuildError::Inputs)?;
        crate::metrics::nar_bytes(Direction::ToBackend, info.nar_size);
    }
    Ok(())
}

#[cfg(test)]
#[path = "build_tests.rs"]
mod tests;
