//! Leftovers: instances tagged `owner = relay_id` that the running relay
//! does not track (a crash, a failed terminate, a launch whose answer was
//! lost). They are terminated, never adopted: the relay that launched them
//! held their host key in memory and the sessions they served are gone.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::manager::Tracked;
use super::{Ec2Api, Error, Instance};

/// Ids of listed, not yet terminated instances that are not tracked.
pub fn untracked(listed: &[Instance], tracked: &BTreeMap<String, Tracked>) -> Vec<String> {
    (listed.iter())
        .filter(|i| !i.state.is_gone() && !tracked.contains_key(&i.id))
        .map(|i| i.id.clone())
        .collect()
}

/// `nix-relay ec2 sweep`: every live instance tagged with `relay_id`
/// (a running relay's too: run it with the relay stopped). Terminates them
/// unless `dry_run`; returns what it touched (or would).
pub async fn sweep(
    api: Arc<dyn Ec2Api>,
    relay_id: &str,
    dry_run: bool,
) -> Result<Vec<Instance>, Error> {
    let listed = super::api::retry("DescribeInstances", super::api::RETRY, || {
        let api = api.clone();
        async move { api.describe_owned(relay_id).await }
    })
    .await?;
    let live: Vec<Instance> = listed.into_iter().filter(|i| !i.state.is_gone()).collect();
    if !dry_run && !live.is_empty() {
        let ids: Vec<String> = live.iter().map(|i| i.id.clone()).collect();
        super::api::retry("TerminateInstances", super::api::RETRY, || {
            let (api, ids) = (api.clone(), ids.clone());
            async move { api.terminate(&ids).await }
        })
        .await?;
    }
    Ok(live)
}
