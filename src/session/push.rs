//! Inputs to a backend: what it lacks of a build's input closure, after
//! it substituted what its own caches have (when the client allows it),
//! pushed over its session, references first.

use std::collections::HashSet;

use super::Core;
use super::error::BuildError;
use super::log::FlightLog;
use crate::backend::{BackendConn, Options};
use crate::config::Backend;
use crate::metrics::Direction;
use crate::scheduler::locality::InputSummary;
use crate::store::NarInfo;
use crate::wire::store_path::StorePath;

/// A build's input closure, references first, and its summary for placement.
pub(super) struct Inputs {
    pub(super) closure: crate::store::Closure,
    /// Paths of `closure` only an upstream has (not in the store yet).
    pub(super) remote: HashSet<StorePath>,
    /// The closure's paths, in the same order.
    pub(super) paths: Vec<StorePath>,
    pub(super) summary: InputSummary,
}

/// The closure, pinned in the store while the guard lives.
pub(super) fn input_closure(
    relay: &Core,
    reach: crate::upstream::Reach,
) -> (Inputs, crate::store::Pin) {
    let crate::upstream::Reach { closure, remote } = reach;
    let paths = closure.paths();
    let pin = relay.store.pin(&paths);
    let sized: Vec<_> = (closure.entries.iter())
        .map(|(_, n)| (n.store_path.clone(), n.nar_size))
        .collect();
    let summary = InputSummary::new(sized);
    let inputs = Inputs {
        closure,
        remote,
        paths,
        summary,
    };
    (inputs, pin)
}

/// Uploads the input closure (references first) minus what the backend
/// already has, which one batched QueryValidPaths tells. With `substitute`
/// (the client allows it), a second QueryValidPaths of the rest lets the
/// backend substitute from its own caches first (the relay's HTTP cache
/// among them, if the backend lists it), so only what no cache has is
/// pushed over SSH.
pub(super) async fn push_inputs(
    relay: &Core,
    (b, conn): (&Backend, &mut BackendConn),
    inputs: &Inputs,
    options: &Options,
    log: &FlightLog,
) -> Result<(), BuildError> {
    let substitute = options.substitute;
    let client = &mut conn.client;
    let query = client.query_valid_paths(inputs.paths.clone(), false);
    let mut valid: HashSet<StorePath> = query
        .await
        .map_err(BuildError::Inputs)?
        .into_iter()
        .collect();
    let absent = |valid: &HashSet<StorePath>| -> Vec<_> {
        (inputs.closure.entries.iter())
            .filter(|(_, n)| !valid.contains(&n.store_path))
            .collect()
    };
    if substitute && !absent(&valid).is_empty() {
        let ask: Vec<StorePath> = absent(&valid)
            .iter()
            .map(|(_, n)| n.store_path.clone())
            .collect();
        // If the backend substitutes from the relay's HTTP cache, what only
        // upstream has is fetched side by side meanwhile.
        let remote = ask.iter().filter(|p| inputs.remote.contains(p));
        let _expected = (relay.upstream.as_ref()).map(|u| u.expect(remote.cloned().collect()));
        let got = if client.substitutes() {
            client.query_substituting(ask, options).await
        } else {
            substitute_on_fresh_session(relay, b, ask, options).await?
        };
        let got: HashSet<StorePath> = got.map_err(BuildError::Inputs)?.into_iter().collect();
        let bytes = (inputs.closure.entries.iter())
            .filter(|(_, n)| got.contains(&n.store_path))
            .map(|(_, n)| n.nar_size)
            .sum::<u64>();
        crate::metrics::nar_bytes(Direction::BackendSubstituted, bytes);
        if !got.is_empty() {
            log.note(format!(
                "the backend substituted {} input(s), {}, from its caches",
                got.len(),
                mib(bytes)
            ));
        }
        valid.extend(got);
    }
    let missing = absent(&valid);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let pushed: u64 = missing.iter().map(|(_, n)| n.nar_size).sum();
    if substitute && !missing.is_empty() {
        log.note(format!(
            "pushing {} input(s) no cache of the backend has, {}",
            missing.len(),
            mib(pushed)
        ));
    }
    for (scope, narinfo) in missing {
        let fetched;
        let narinfo = if inputs.remote.contains(&narinfo.store_path) {
            fetched = fetch_for_push(relay, &narinfo.store_path).await?;
            &fetched
        } else {
            narinfo
        };
        let mut nar = relay.store.open_nar_of(scope, narinfo).await?;
        let mut info = crate::store::to_path_info(narinfo);
        info.registration_time = now;
        client
            .add_to_store_nar(&info, &mut nar)
            .await
            .map_err(BuildError::Inputs)?;
        crate::metrics::nar_bytes(Direction::ToBackend, info.nar_size);
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// An input only an upstream had, which the backend did not substitute:
/// fetched into the store now (public, verified), and its stored narinfo.
async fn fetch_for_push(relay: &Core, path: &StorePath) -> Result<NarInfo, BuildError> {
    let fetched = match &relay.upstream {
        Some(u) => u.fetch(path).await.map_err(BuildError::Fetch)?,
        None => false,
    };
    if !fetched {
        return Err(BuildError::Store(crate::store::Error::Missing(
            path.clone(),
        )));
    }
    let found = relay.store.narinfo(path, None).await?;
    found.ok_or_else(|| BuildError::Store(crate::store::Error::Missing(path.clone())))
}

/// QueryValidPaths with the substitute flag on a session of its own: a
/// `nix-store --serve` session that ran a build no longer substitutes
/// (`Client::substitutes`). Its stderr (a failed substitution's warning)
/// goes nowhere; what it did not substitute is pushed.
async fn substitute_on_fresh_session(
    relay: &Core,
    b: &Backend,
    ask: Vec<StorePath>,
    options: &Options,
) -> Result<Result<Vec<StorePath>, crate::wire::Error>, BuildError> {
    let mut fresh = crate::backend::connect(b, None, relay.limits.wire()).await?;
    Ok(fresh.client.query_substituting(ask, options).await)
}
