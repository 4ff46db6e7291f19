//! One derivation's way through a backend: claim a slot, connect, push the
//! inputs the backend lacks, build with the client's options, and keep the
//! connection so the outputs can be streamed out afterwards.
//!
//! Every failure becomes a failing [`BuildResult`] whose message says which
//! step failed; the client's session goes on.

use std::collections::BTreeMap;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::{Instrument, info, info_span, warn};

use super::{Error, Relay, chain, say};
use crate::backend::{self, BackendConn};
use crate::scheduler::{Acquired, JobSpec, Scheduler, Slot};
use crate::ssh::LogSink;
use crate::store::Verify;
use crate::wire::build::{BasicDerivation, BuildOptions, BuildResult, BuildStatus, drv_name};
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;

/// A successful build whose outputs are still on the backend.
pub struct Finished {
    pub backend: String,
    conn: BackendConn,
    pub outputs: BTreeMap<StorePath, ValidPathInfo>,
}

impl Finished {
    /// Streams one output from the backend into the store, and to `tee`.
    pub async fn fetch<W: AsyncWrite + Unpin>(
        &mut self,
        relay: &Relay,
        path: &StorePath,
        mut tee: Option<&mut W>,
    ) -> Result<(), Error> {
        let Some(info) = self.outputs.remove(path) else {
            return Err(crate::store::Error::Missing(path.clone()).into());
        };
        let client = &mut self.conn.client;
        client.dump_store_path(path).await?;
        let mut writer = relay.store.begin(relay.limits.nar()).await?;
        writer.pump(&mut client.r, tee.as_deref_mut(), path).await?;
        if let Some(t) = tee {
            t.flush().await.map_err(crate::wire::Error::Write)?;
        }
        writer.commit(info, Verify::Declared).await?;
        Ok(())
    }
}

/// Builds `drv` on the best backend. Never fails: errors become results.
pub async fn run(
    relay: &Relay,
    log: &LogSink,
    drv_path: &StorePath,
    drv: &BasicDerivation,
    options: BuildOptions,
) -> (BuildResult, Option<Finished>) {
    let job = JobSpec {
        system: drv.platform.clone(),
        required_features: drv.required_features(),
    };
    let span = info_span!("job", drv = drv_name(drv_path), system = %job.system);
    async {
        let slot = match claim(&relay.scheduler, job, log).await {
            Ok(s) => s,
            Err(msg) => return (BuildResult::failure(BuildStatus::MiscFailure, msg), None),
        };
        let name = slot.backend().name.clone();
        match on_backend(relay, log, slot, drv_path, drv, options).await {
            Ok(done) => done,
            Err(e) => {
                let msg = format!("nix-relay: building on {name} failed: {}", chain(&e));
                warn!(backend = %name, "{msg}");
                say(log, &msg[11..]).await;
                (BuildResult::failure(BuildStatus::MiscFailure, msg), None)
            }
        }
    }
    .instrument(span)
    .await
}

async fn claim(
    sched: &std::sync::Arc<Scheduler>,
    job: JobSpec,
    log: &LogSink,
) -> Result<Slot, String> {
    let system = job.system.clone();
    match sched.try_acquire(job) {
        Ok(Acquired::Now(slot)) => Ok(slot),
        Ok(Acquired::Queued { position, rx }) => {
            say(log, format!("waiting: position {position} for {system}")).await;
            Scheduler::wait(rx)
                .await
                .ok_or_else(|| "nix-relay: the scheduler dropped the job".to_string())
        }
        Err(e) => {
            say(log, &e).await;
            Err(format!("nix-relay: {e}"))
        }
    }
}

async fn on_backend(
    relay: &Relay,
    log: &LogSink,
    slot: Slot,
    drv_path: &StorePath,
    drv: &BasicDerivation,
    options: BuildOptions,
) -> Result<(BuildResult, Option<Finished>), BuildError> {
    let b = slot.backend().clone();
    say(log, format!("building '{drv_path}' on {}", b.name)).await;
    let mut conn = backend::connect(&b, log.clone(), relay.limits.wire()).await?;
    push_inputs(relay, &mut conn, &drv.input_srcs).await?;
    let started = tokio::time::Instant::now();
    let result = conn
        .client
        .build_derivation(drv_path, drv, options)
        .await
        .map_err(BuildError::Build)?;
    drop(slot);
    info!(backend = %b.name, status = ?result.status, secs = started.elapsed().as_secs_f32(), "build finished");
    if !result.status.is_success() {
        return Ok((result, None));
    }
    let wanted = drv.output_paths().map_err(BuildError::Build)?;
    let infos = conn
        .client
        .query_path_infos(wanted)
        .await
        .map_err(BuildError::Outputs)?;
    let outputs = infos.into_iter().map(|i| (i.path.clone(), i)).collect();
    let finished = Finished {
        backend: b.name,
        conn,
        outputs,
    };
    Ok((result, Some(finished)))
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("connecting")]
    Connect(#[from] backend::Error),
    #[error("input {0} is not in the relay store (the client did not upload it)")]
    MissingInput(StorePath),
    #[error("reading the relay store")]
    Store(#[from] crate::store::Error),
    #[error("copying inputs")]
    Inputs(#[source] crate::wire::Error),
    #[error("BuildDerivation")]
    Build(#[source] crate::wire::Error),
    #[error("querying outputs")]
    Outputs(#[source] crate::wire::Error),
}

/// Uploads the inputs' closure minus what the backend already has,
/// references first.
async fn push_inputs(
    relay: &Relay,
    conn: &mut BackendConn,
    srcs: &[StorePath],
) -> Result<(), BuildError> {
    let closure = relay
        .store
        .closure_sorted(srcs)
        .await
        .map_err(|e| match e {
            crate::store::Error::Missing(p) => BuildError::MissingInput(p),
            e => BuildError::Store(e),
        })?;
    let valid: std::collections::HashSet<StorePath> = conn
        .client
        .query_valid_paths(closure.clone())
        .await
        .map_err(BuildError::Inputs)?
        .into_iter()
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for p in closure.iter().filter(|p| !valid.contains(*p)) {
        let (narinfo, mut nar) = relay.store.open_nar(p).await?;
        let mut info = crate::store::to_path_info(&narinfo);
        info.registration_time = now;
        conn.client
            .add_to_store_nar(&info, &mut nar)
            .await
            .map_err(BuildError::Inputs)?;
    }
    Ok(())
}
