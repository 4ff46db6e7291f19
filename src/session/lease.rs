//! A public build under the bucket's lease (`s3::lease`): the relay that
//! holds it builds; another relay waits for the outputs to appear in the
//! bucket and answers with a cache hit.

use std::future::Future;
use std::sync::Arc;

use tracing::warn;

use super::Core;
use super::error::JobError;
use super::log::FlightLog;
use super::outputs::Finished;
use crate::s3::lease::{Acquired, MAX_WAIT, POLL_EVERY};
use crate::store::Scope;
use crate::wire::build::{BuildResult, BuildStatus};
use crate::wire::store_path::StorePath;

type Built = Result<(BuildResult, Option<Finished>), JobError>;

/// Runs `build` under the lease of `drv_path` (public flights of a relay
/// with a bucket; a bucket that fails never holds a build back). While
/// another relay holds a live lease, waits for `outputs` in the bucket
/// instead: they are fetched and the flight is a cache hit.
pub(super) async fn leased(
    relay: &Core,
    log: &Arc<FlightLog>,
    (scope, drv_path, outputs): (&Scope, &StorePath, &[StorePath]),
    build: impl Future<Output = Built>,
) -> Built {
    let Some(leases) = relay.leases.as_ref().filter(|_| *scope == Scope::Public) else {
        return build.await;
    };
    let give_up = tokio::time::Instant::now() + MAX_WAIT;
    let held = loop {
        if tokio::time::Instant::now() >= give_up {
            log.note(format!(
                "waited {} s for another relay's build of '{drv_path}': building here",
                MAX_WAIT.as_secs()
            ));
            break None;
        }
        match leases.acquire(drv_path).await {
            Ok(Acquired::Mine(h)) => break Some(h),
            Err(e) => {
                warn!(
                    "S3 lease of {drv_path}: {}; building",
                    crate::error_chain(&e)
                );
                break None;
            }
            Ok(Acquired::Theirs { relay: other }) => {
                log.note(format!(
                    "relay {other} is building '{drv_path}': waiting for its outputs in the bucket"
                ));
                if wait_for_outputs(relay, leases, drv_path, outputs, give_up).await {
                    crate::metrics::cache_lookup(true);
                    let hit = BuildResult::failure(BuildStatus::AlreadyValid, "");
                    return Ok((hit, None));
                }
                log.note(format!(
                    "the lease of '{drv_path}' ended without its outputs"
                ));
            }
        }
    };
    let r = build.await;
    let ok = matches!(&r, Ok((res, _)) if res.status.is_success());
    match held {
        Some(h) if ok => h.built().await,
        held => drop(held),
    }
    r
}

/// Polls until every output is in the store (fetched from the bucket):
/// true; or until the other relay's lease is gone or expired, or
/// `give_up`: false.
async fn wait_for_outputs(
    relay: &Core,
    leases: &crate::s3::lease::Leases,
    drv_path: &StorePath,
    outputs: &[StorePath],
    give_up: tokio::time::Instant,
) -> bool {
    loop {
        if tokio::time::Instant::now() >= give_up {
            return false;
        }
        tokio::time::sleep(POLL_EVERY).await;
        if outputs_here(relay, outputs).await {
            return true;
        }
        if !leases.held_live(drv_path).await.unwrap_or(false) {
            // It may have finished just now: one last look.
            return outputs_here(relay, outputs).await;
        }
    }
}

async fn outputs_here(relay: &Core, outputs: &[StorePath]) -> bool {
    let Some(u) = &relay.upstream else {
        return false;
    };
    for o in outputs {
        if !u.fetch(o).await.unwrap_or(false) {
            return false;
        }
    }
    true
}
