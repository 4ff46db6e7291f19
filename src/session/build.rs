//! One BuildDerivation ([`Core::build`]): answer from the store (cache
//! hit), attach to the same build in flight, or start one ([`fly`]): claim
//! a slot (placed by speed, load and input locality), take a session from
//! the backend pool, push the inputs the backend lacks, build with the
//! client's options, and keep the session so the outputs can be streamed
//! out afterwards; it goes back to the pool when the last output is out,
//! unless an operation on it failed or was abandoned. The caller gets a
//! [`BuildHandle`]: the flight's events, then the result.
//!
//! Every failure becomes a failing [`BuildResult`] whose message says which
//! step failed; the client's session goes on.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::BuildRecord;
pub use super::error::{BuildError, Class, JobError};
use super::flight::{Flight, FlightKey, Outcome};
pub use super::handle::{BuildEvent, BuildHandle, Pending};
use super::log::{FlightLog, effective_max_log_size};
pub use super::outputs::Finished;
use super::push::{Inputs, input_closure};
use super::{ClientId, Core};
use crate::backend::Options;
use crate::error_chain as chain;
use crate::metrics::Outcome as BuildOutcome;
use crate::scheduler::locality::InputSummary;
use crate::scheduler::notice::Notices;
use crate::scheduler::{Acquired, JobSpec, Scheduler, Slot};
use crate::store::Scope;
use crate::wire::build::{BasicDerivation, BuildResult, BuildStatus, drv_name};
use crate::wire::store_path::StorePath;

impl Core {
    /// Builds `drv` for `client`, with `options` (the client's; where it
    /// sent no timeouts, its `[[client]]` or `[limits]` ones). Never fails:
    /// errors become results. Until the handle ends or is dropped, the
    /// client is attached to the build; `gone` ends the handle at once.
    pub async fn build(
        self: &Arc<Self>,
        client: &ClientId,
        drv_path: &StorePath,
        drv: &BasicDerivation,
        mut options: Options,
        gone: &CancellationToken,
    ) -> BuildHandle {
        let span = info_span!("job", drv = drv_name(drv_path), system = %drv.platform);
        options.build = self.timeouts(&client.name).apply(options.build);
        async {
            match prepare(self, client, drv).await {
                Ok(Prepared::Hit) => {
                    crate::metrics::cache_lookup(true);
                    let hit = "cache hit: every output is in the relay store";
                    BuildHandle::done(vec![hit.into()], cache_hit())
                }
                Ok(Prepared::Build(key, closure)) => {
                    crate::metrics::cache_lookup(false);
                    let job = ToBuild {
                        key,
                        closure,
                        drv_path,
                        drv,
                    };
                    self.attach(client, gone, job, options)
                }
                Err(e) => {
                    let (msg, result) = failed(&e);
                    BuildHandle::done(vec![msg], result)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Attaches to the flight for `job`, starting it if there is none.
    fn attach(
        self: &Arc<Self>,
        client: &ClientId,
        gone: &CancellationToken,
        job: ToBuild<'_>,
        options: Options,
    ) -> BuildHandle {
        let ToBuild {
            key,
            closure,
            drv_path,
            drv,
        } = job;
        let (attachment, created) = self.flights.attach(key, self.keep_going);
        let flight = attachment.flight.clone();
        let reader = flight.log.subscribe();
        let mut notes = Vec::new();
        if created {
            let task = fly(
                self.clone(),
                flight,
                client.name.clone(),
                drv_path.clone(),
                drv.clone(),
                closure,
                options,
            );
            tokio::spawn(task.in_current_span());
        } else {
            crate::metrics::dedup_attach();
            notes.push(format!(
                "attached to the build of '{drv_path}' already running for another client"
            ));
        }
        BuildHandle::attached(notes, attachment, reader, gone.clone())
    }
}

/// The failing result a client gets for `e`, and the note saying why.
fn failed(e: &JobError) -> (String, BuildResult) {
    let msg = chain(e);
    let class = e.class().label();
    match e.class() {
        Class::Infrastructure => warn!(class, "{msg}"),
        Class::Client | Class::Build | Class::Cancelled => info!(class, "{msg}"),
    }
    let result = BuildResult::failure(BuildStatus::MiscFailure, format!("nix-relay: {msg}"));
    (msg, result)
}

enum Prepared {
    Hit,
    /// To build: the flight's key and the input closure (read once here).
    Build(FlightKey, crate::upstream::Reach),
}

/// A derivation to build, as [`prepare`] found it.
struct ToBuild<'a> {
    key: FlightKey,
    closure: crate::upstream::Reach,
    drv_path: &'a StorePath,
    drv: &'a BasicDerivation,
}

/// Decides the build's scope from its inputs and checks for a cache hit.
async fn prepare(
    relay: &Core,
    client: &ClientId,
    drv: &BasicDerivation,
) -> Result<Prepared, JobError> {
    // Inputs only an upstream has stay there for now: the backend may
    // substitute them itself; the push fetches what it still lacks.
    let (roots, client_name) = (&drv.input_srcs, Some(client.name.as_str()));
    // An untrusted client's inputs may be in its private scope in the
    // bucket (uploaded through another relay).
    if relay.private.is_some() && !client.trusted {
        for r in roots {
            relay.pull_private(client, r).await;
        }
    }
    let closure = match &relay.upstream {
        Some(u) => u.closure(roots, client_name).await?,
        None => crate::upstream::Reach {
            closure: relay.store.closure(roots, client_name).await?,
            remote: Default::default(),
        },
    };
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
    if !all_there && relay.private.is_some() && !client.trusted {
        all_there = !outputs.is_empty();
        for o in &outputs {
            all_there &= relay.pull_private(client, o).await;
        }
    }
    if !all_there && let Some(u) = &relay.upstream {
        all_there = substitute_outputs(u, relay, client, &outputs).await;
    }
    if all_there {
        return Ok(Prepared::Hit);
    }
    let scope = build_scope(client, closure.closure.private);
    Ok(Prepared::Build(FlightKey { scope, outputs }, closure))
}

/// Fetches the outputs missing from the store if an upstream has every one
/// of them: true if all are in the store now. A failure is logged (by the
/// fetch) and the derivation is built instead.
async fn substitute_outputs(
    u: &Arc<crate::upstream::Upstream>,
    relay: &Core,
    client: &ClientId,
    outputs: &[StorePath],
) -> bool {
    let mut missing = Vec::new();
    for o in outputs {
        if !matches!(relay.store.contains(o, Some(&client.name)).await, Ok(true)) {
            missing.push(o.clone());
        }
    }
    if u.lookup_many(&missing).await.len() != missing.len() {
        return false;
    }
    let fetched = futures_util::future::join_all(missing.iter().map(|o| u.fetch(o))).await;
    fetched.into_iter().all(|r| matches!(r, Ok(true)))
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

/// The flight's own task: build, publish the outcome, then keep the
/// backend connection until every attached session is done with it.
async fn fly(
    relay: Arc<Core>,
    flight: Arc<Flight>,
    client: String,
    drv_path: StorePath,
    drv: BasicDerivation,
    closure: crate::upstream::Reach,
    options: Options,
) {
    let log = &flight.log;
    let scope = flight.key.scope.clone();
    let result = tokio::select! {
        r = super::lease::leased(
            &relay,
            log,
            (&scope, &drv_path, &flight.key.outputs),
            build(&relay, log, &client, &scope, &drv_path, &drv, closure, options),
        ) => r,
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
        Err(e) => {
            let (msg, result) = failed(&e);
            log.note(msg);
            Outcome {
                result,
                finished: None,
            }
        }
    };
    // Every event of the build is in the backlog already (publishing is
    // synchronous): a client that sees the outcome has seen the whole log.
    let finished = outcome.finished.clone();
    let cancelled = flight.cancel.is_cancelled();
    flight.outcome.send_replace(Some(outcome));
    if !cancelled {
        // `nix log` reads it from the cache's log/ (served over HTTP).
        let kept = log.take_kept();
        if let Err(e) = relay.store.put_build_log(&drv_path, &kept, &scope).await {
            warn!(error = %chain(&e), "could not keep the build log");
        }
    }
    if let Some(f) = finished {
        flight.all_detached().await;
        f.lock().await.settle(&relay).await;
    }
    relay.flights.remove(&flight);
}

/// Tries a build up to this many times when backends fail under it.
const MAX_ATTEMPTS: u32 = 3;

/// Builds on the best backend; a build lost to infrastructure (the backend
/// unreachable or gone mid-build) is retried on another, up to
/// [`MAX_ATTEMPTS`]. A build that fails on its own is not retried.
#[allow(clippy::too_many_arguments)]
async fn build(
    relay: &Core,
    log: &Arc<FlightLog>,
    client: &str,
    scope: &Scope,
    drv_path: &StorePath,
    drv: &BasicDerivation,
    closure: crate::upstream::Reach,
    options: Options,
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
        let r = on_backend(relay, log, slot, &job, &options).await;
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
                log.note(msg);
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
fn backend_failed(relay: &Core, name: &str, e: &BuildError) {
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

async fn claim(sched: &Arc<Scheduler>, job: JobSpec, log: &FlightLog) -> Result<Slot, JobError> {
    let system = job.system.clone();
    let notices = sched.launch_notices(&job);
    match sched.try_acquire(job) {
        Ok(Acquired::Now(slot)) => Ok(slot),
        Ok(Acquired::Queued { position, rx }) => {
            let running = sched.running_summary(&system);
            log.note(format!(
                "waiting: position {position} for {system} ({running})"
            ));
            wait_for_slot(rx, notices, log).await
        }
        Err(e) => Err(JobError::Placement(e)),
    }
}

/// Waits for a queued job's slot, telling its log of each instance
/// launched for it (`scheduler::notice`).
async fn wait_for_slot(
    rx: tokio::sync::oneshot::Receiver<Result<Slot, crate::scheduler::Error>>,
    mut notices: Notices,
    log: &FlightLog,
) -> Result<Slot, JobError> {
    let slot = Scheduler::wait(rx);
    tokio::pin!(slot);
    loop {
        tokio::select! {
            // A launch told before the wait's outcome (a refusal right after it).
            biased;
            Some(n) = notices.next() => {
                info!(template = %n.template, "an EC2 launch for a waiting build");
                log.note(n.text());
            }
            r = &mut slot => return r.map_err(JobError::Placement),
        }
    }
}

async fn on_backend(
    relay: &Core,
    log: &Arc<FlightLog>,
    slot: Slot,
    job: &Job<'_>,
    options: &Options,
) -> Result<(BuildResult, Option<Finished>), BuildError> {
    let b = slot.backend().clone();
    let private = *job.scope != Scope::Public || job.inputs.closure.private;
    if b.untrusted_clients != private {
        // The scheduler never places it so; a private path must never
        // reach a trusted backend's store, nor a public build an untrusted one.
        return Err(BuildError::Trust(b.name));
    }
    log.note(format!("building '{}' on {}", job.drv_path, b.name));
    let activity = super::watchdog::Activity::now();
    let max_log = effective_max_log_size(options.build.max_log_size, relay.limits.max_log_size);
    let (sink, log_full) = log.attempt(max_log, activity.clone());
    let conn = (relay.pool)
        .checkout(&b, sink.clone(), relay.limits.wire())
        .await;
    relay.scheduler.report_connect(&b.name, conn.is_ok());
    let (mut conn, kind) = conn?;
    crate::metrics::backend_session(&b.name, kind.label());
    let push = super::push::push_inputs(relay, (&b, &mut conn), job.inputs, options, log);
    push.await?;
    relay
        .scheduler
        .locality()
        .confirm(&b.name, &job.inputs.paths);
    let started = tokio::time::Instant::now();
    let building = conn
        .client
        .build_derivation(job.drv_path, job.drv, options, &*sink);
    let result = tokio::select! {
        r = building => r.map_err(BuildError::Build)?,
        why = super::watchdog::expired(options.build, started, activity) => {
            // The session is mid-build, so dropping it closes the
            // connection, which stops the backend's build.
            warn!(backend = %b.name, "{why}");
            log.note(why.trim_start_matches("nix-relay: "));
            return Ok((BuildResult::failure(BuildStatus::TimedOut, why), None));
        }
        _ = log_full.cancelled() => {
            // As above: dropping the session stops the backend's build.
            let why = super::log::limit_message(max_log);
            warn!(backend = %b.name, "{why}");
            log.note(why.trim_start_matches("nix-relay: "));
            return Ok((BuildResult::failure(BuildStatus::LogLimitExceeded, why), None));
        }
    };
    drop(slot);
    // The build is over: the connection's stderr no longer feeds its log.
    conn.detach_log();
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

#[cfg(test)]
#[path = "build_tests.rs"]
mod tests;
