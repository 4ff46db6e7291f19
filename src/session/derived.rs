//! Remote-store builds: BuildPaths, BuildPathsWithResults and QueryMissing
//! for derivations (`drv!out`, `drv!*`) whose `.drv` files a client copied
//! into the relay store (`nix build --store ssh-ng://relay`, `nix copy`).
//!
//! A request is read once into a [`Graph`] (every `.drv` it reaches, each
//! checked: its output paths must be the ones its hash names, as Nix
//! computes them), then [`plan`]ned — a pure function of the graph and the
//! outputs already valid: which derivations to build, inputs first — and
//! [`run`]: each derivation goes through [`super::build::run`] exactly like
//! a hook build (routing, dedup, cache hits, retries, logs), as soon as its
//! inputs are built, and its outputs are stored before anything that
//! needs them starts.
//!
//! Invariant: nothing is built whose `.drv` is not in the relay store, as
//! the client may see it, and whose outputs are not input-addressed or
//! fixed-output (floating content-addressed derivations are refused).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ClientId, Relay};
use crate::wire::build::{BuildOptions, BuildResult, BuildStatus};
use crate::wire::derivation::{
    Addressing, Derivation, DerivedPath, hash_modulo, output_path, realisation,
};
use crate::wire::hash::Sha256Hash;
use crate::wire::store_path::StorePath;

/// Most derivations one request may reach, its inputs' inputs included.
pub const MAX_DRV_CLOSURE: usize = 200_000;
/// Largest `.drv` file the relay reads.
pub const MAX_DRV_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DerivedError {
    #[error("{0} is not in the relay store: copy it there first (nix copy --derivation --to ...)")]
    NoDrv(StorePath),
    #[error("reading {0}")]
    Read(StorePath, #[source] crate::wire::Error),
    #[error("reading {0} from the relay store")]
    Store(StorePath, #[source] crate::store::Error),
    #[error("reading the NAR of {0} from the relay store")]
    ReadNar(StorePath, #[source] std::io::Error),
    #[error("{0} is larger than {MAX_DRV_BYTES} bytes")]
    TooBig(StorePath),
    #[error("the request reaches more than {MAX_DRV_CLOSURE} derivations")]
    TooMany,
    #[error(
        "{0}: content-addressed derivations with floating outputs (__contentAddressed) are not supported by nix-relay"
    )]
    Floating(StorePath),
    #[error("{drv} has no output '{output}'")]
    NoOutput { drv: StorePath, output: String },
    #[error("{drv}: output '{output}' is {declared}, but the derivation names {computed}")]
    Mismatch {
        drv: StorePath,
        output: String,
        declared: String,
        computed: StorePath,
    },
}

/// Every derivation a request reaches, read and checked once.
pub struct Graph {
    pub drvs: HashMap<StorePath, Derivation>,
    /// The masked hash modulo of each (what names its outputs).
    pub hashes: HashMap<StorePath, Sha256Hash>,
}

impl Graph {
    /// Reads `roots` and every input derivation they reach.
    pub async fn load(
        relay: &Relay,
        client: &ClientId,
        roots: &[StorePath],
    ) -> Result<Graph, DerivedError> {
        let mut drvs = HashMap::new();
        let mut todo: Vec<StorePath> = roots.to_vec();
        while let Some(p) = todo.pop() {
            if drvs.contains_key(&p) {
                continue;
            }
            if drvs.len() == MAX_DRV_CLOSURE {
                return Err(DerivedError::TooMany);
            }
            let drv = read_drv(relay, client, &p).await?;
            todo.extend(drv.input_drvs.iter().map(|(i, _)| i.clone()));
            drvs.insert(p, drv);
        }
        let hashes = masked_hashes(&drvs)?;
        Ok(Graph { drvs, hashes })
    }

    /// The output paths `outputs` (all, for `None`) of `drv`.
    pub fn outputs(
        &self,
        drv: &StorePath,
        outputs: Option<&[String]>,
    ) -> Result<Vec<(String, StorePath)>, DerivedError> {
        let d = &self.drvs[drv];
        let names: Vec<String> = match outputs {
            Some(o) => o.to_vec(),
            None => d.outputs.iter().map(|o| o.name.clone()).collect(),
        };
        names
            .into_iter()
            .map(|name| match d.output(&name) {
                Some(p) => Ok((name, p)),
                None => Err(DerivedError::NoOutput {
                    drv: drv.clone(),
                    output: name,
                }),
            })
            .collect()
    }
}

pub async fn read_drv(
    relay: &Relay,
    client: &ClientId,
    path: &StorePath,
) -> Result<Derivation, DerivedError> {
    let store_err = |e| DerivedError::Store(path.clone(), e);
    let (info, nar) = match relay.store.open_nar(path, Some(&client.name)).await {
        Ok(x) => x,
        Err(crate::store::Error::Missing(_)) => return Err(DerivedError::NoDrv(path.clone())),
        Err(e) => return Err(store_err(e)),
    };
    if info.nar_size > MAX_DRV_BYTES + 4096 {
        return Err(DerivedError::TooBig(path.clone()));
    }
    let mut bytes = Vec::new();
    let mut nar = nar.take(MAX_DRV_BYTES + 4097);
    nar.read_to_end(&mut bytes)
        .await
        .map_err(|e| DerivedError::ReadNar(path.clone(), e))?;
    let limits = crate::wire::nar::NarLimits::default();
    let read = |e| DerivedError::Read(path.clone(), e);
    let text = crate::wire::nar::file_contents(&bytes, limits).map_err(read)?;
    Derivation::parse(&text).map_err(read)
}

/// Each derivation's masked hash modulo, checked against the output
/// paths it declares (a `.drv` whose outputs its hash does not name was
/// not written by Nix, and is not built).
fn masked_hashes(
    drvs: &HashMap<StorePath, Derivation>,
) -> Result<HashMap<StorePath, Sha256Hash>, DerivedError> {
    let mut plain: HashMap<StorePath, Sha256Hash> = HashMap::new();
    let mut masked = HashMap::new();
    for (path, drv) in drvs {
        if drv.addressing() == Addressing::Floating {
            return Err(DerivedError::Floating(path.clone()));
        }
        let h = hash_modulo(drv, true, |i| modulo(drvs, &mut plain, i))
            .map_err(|e| DerivedError::Read(path.clone(), e))?;
        if drv.addressing() == Addressing::Input {
            for o in &drv.outputs {
                let computed = output_path(path, &o.name, &h)
                    .map_err(|e| DerivedError::Read(path.clone(), e))?;
                if computed.as_str() != o.path {
                    return Err(DerivedError::Mismatch {
                        drv: path.clone(),
                        output: o.name.clone(),
                        declared: o.path.clone(),
                        computed,
                    });
                }
            }
        }
        masked.insert(path.clone(), h);
    }
    Ok(masked)
}

/// The unmasked hash modulo of `path`, memoised (iterative: a chain of
/// inputs may be deeper than the stack).
fn modulo(
    drvs: &HashMap<StorePath, Derivation>,
    memo: &mut HashMap<StorePath, Sha256Hash>,
    path: &StorePath,
) -> crate::wire::Result<Sha256Hash> {
    let mut stack = vec![path.clone()];
    while let Some(p) = stack.last().cloned() {
        if memo.contains_key(&p) {
            stack.pop();
            continue;
        }
        let drv = &drvs[&p];
        let missing: Vec<StorePath> = (drv.input_drvs.iter())
            .filter(|(i, _)| !memo.contains_key(i))
            .map(|(i, _)| i.clone())
            .collect();
        if missing.is_empty() {
            let h = hash_modulo(drv, false, |i| Ok(memo[i]))?;
            memo.insert(p, h);
            stack.pop();
        } else {
            stack.extend(missing);
        }
    }
    Ok(memo[path])
}

/// What a request needs built: derivations in an order where every
/// input comes before what uses it, and for each the ones it waits for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub order: Vec<StorePath>,
    pub waits_for: HashMap<StorePath, Vec<StorePath>>,
}

/// The plan for `wanted` (derivation, outputs it needs; `None` all),
/// given the output paths already `valid`. A derivation is built when an
/// output somebody needs is not valid; then each of its inputs whose
/// needed outputs are not valid is built first. Pure.
pub fn plan(
    graph: &Graph,
    valid: &HashSet<StorePath>,
    wanted: &[(StorePath, Option<Vec<String>>)],
) -> Result<Plan, DerivedError> {
    let mut plan = Plan::default();
    let mut seen: HashSet<StorePath> = HashSet::new();
    // (drv, outputs needed, inputs expanded yet)
    let mut stack: Vec<(StorePath, Option<Vec<String>>, bool)> = wanted
        .iter()
        .rev()
        .map(|(d, o)| (d.clone(), o.clone(), false))
        .collect();
    while let Some((drv, outs, expanded)) = stack.pop() {
        if expanded {
            plan.order.push(drv);
            continue;
        }
        if seen.contains(&drv) {
            continue;
        }
        let needed = graph.outputs(&drv, outs.as_deref())?;
        if needed.iter().all(|(_, p)| valid.contains(p)) {
            continue;
        }
        seen.insert(drv.clone());
        stack.push((drv.clone(), None, true));
        let mut waits = Vec::new();
        for (input, input_outs) in &graph.drvs[&drv].input_drvs {
            let needs = graph.outputs(input, Some(input_outs))?;
            if !needs.iter().all(|(_, p)| valid.contains(p)) {
                waits.push(input.clone());
                stack.push((input.clone(), Some(input_outs.clone()), false));
            }
        }
        plan.waits_for.insert(drv, waits);
    }
    Ok(plan)
}

/// Every output path of every derivation in `graph` that `client` sees
/// as valid now.
pub async fn valid_outputs(
    relay: &Relay,
    client: &ClientId,
    graph: &Graph,
) -> Result<HashSet<StorePath>, super::Error> {
    let mut valid = HashSet::new();
    for drv in graph.drvs.values() {
        for o in &drv.outputs {
            if let Some(p) = StorePath::parse(&o.path).ok()
                && super::lookup(relay, None, client, &p).await?.is_some()
            {
                valid.insert(p);
            }
        }
    }
    Ok(valid)
}

/// What one build of a remote-store request says, for the client's log.
#[derive(Debug)]
pub enum Event {
    Started(StorePath),
    Log(StorePath, bytes::Bytes),
    Finished(StorePath, BuildStatus),
}

/// Builds `plan`, each derivation once its inputs are built (at most
/// `limit` at once). A derivation whose input failed is not built
/// (DependencyFailed); independent ones go on (keep-going).
pub async fn run(
    relay: &Arc<Relay>,
    client: &ClientId,
    gone: &CancellationToken,
    options: BuildOptions,
    graph: &Graph,
    plan: &Plan,
    events: &mpsc::Sender<Event>,
) -> HashMap<StorePath, BuildResult> {
    let mut results: HashMap<StorePath, BuildResult> = HashMap::new();
    let mut running = tokio::task::JoinSet::new();
    let mut left: Vec<StorePath> = plan.order.clone();
    loop {
        let mut i = 0;
        while i < left.len() {
            let drv = &left[i];
            let waits = &plan.waits_for[drv];
            if waits
                .iter()
                .any(|w| results.get(w).is_some_and(|r| !r.status.is_success()))
            {
                let msg = format!("a dependency of '{drv}' failed");
                results.insert(
                    drv.clone(),
                    BuildResult::failure(BuildStatus::DependencyFailed, msg),
                );
                left.remove(i);
                continue;
            }
            if waits.iter().all(|w| results.contains_key(w)) {
                let drv = left.remove(i);
                let job = one_build(relay, client, gone, options, graph, drv, events);
                running.spawn(job);
                continue;
            }
            i += 1;
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        match done {
            Ok((drv, r)) => {
                results.insert(drv, r);
            }
            Err(e) => tracing::warn!("a remote-store build task ended: {e}"),
        }
    }
    results
}

/// One derivation of a remote-store request: a hook-style build of it as
/// a BasicDerivation, its outputs then stored.
fn one_build(
    relay: &Arc<Relay>,
    client: &ClientId,
    gone: &CancellationToken,
    options: BuildOptions,
    graph: &Graph,
    drv_path: StorePath,
    events: &mpsc::Sender<Event>,
) -> impl std::future::Future<Output = (StorePath, BuildResult)> + Send + 'static {
    let drv = &graph.drvs[&drv_path];
    let inputs: Vec<StorePath> = (drv.input_drvs.iter())
        .flat_map(|(i, outs)| graph.outputs(i, Some(outs)).unwrap_or_default())
        .map(|(_, p)| p)
        .collect();
    let basic = drv.to_basic(inputs);
    let (relay, client, gone, events) =
        (relay.clone(), client.clone(), gone.clone(), events.clone());
    async move {
        let _ = events.send(Event::Started(drv_path.clone())).await;
        let (log, mut log_rx) = mpsc::channel::<bytes::Bytes>(64);
        let tagged = events.clone();
        let tag = drv_path.clone();
        let forward = tokio::spawn(async move {
            while let Some(chunk) = log_rx.recv().await {
                let _ = tagged.send(Event::Log(tag.clone(), chunk)).await;
            }
        });
        let (result, pending) =
            super::build::run(&relay, &log, &client, &gone, &drv_path, &basic, options).await;
        if let Some(p) = pending {
            // What comes next builds on these outputs: store them now.
            p.finished.lock().await.settle(&relay).await;
        }
        drop(log);
        let _ = forward.await;
        let _ = events
            .send(Event::Finished(drv_path.clone(), result.status))
            .await;
        (drv_path, result)
    }
}

/// The results a client gets for `wanted`, in its order: each built
/// derivation's result (with its realisations), `AlreadyValid` for what
/// was there, a failure for what is neither.
pub fn results(
    graph: &Graph,
    wanted: &[DerivedPath],
    valid: &HashSet<StorePath>,
    built: &HashMap<StorePath, BuildResult>,
) -> Vec<BuildResult> {
    wanted
        .iter()
        .map(|w| match w {
            DerivedPath::Opaque(p) if valid.contains(p) => {
                BuildResult::failure(BuildStatus::AlreadyValid, "")
            }
            DerivedPath::Opaque(p) => BuildResult::failure(
                BuildStatus::MiscFailure,
                format!("path '{p}' is not valid on nix-relay, and it does not substitute"),
            ),
            DerivedPath::Built { drv, outputs } => {
                let mut r = built
                    .get(drv)
                    .cloned()
                    .unwrap_or_else(|| BuildResult::failure(BuildStatus::AlreadyValid, ""));
                if r.status.is_success() {
                    let outs = graph.outputs(drv, outputs.as_deref()).unwrap_or_default();
                    r.built_outputs = (outs.iter())
                        .map(|(name, p)| realisation(&graph.hashes[drv], name, p))
                        .collect();
                }
                r
            }
        })
        .collect()
}

/// A remote-store request read and planned: what is built, what is there.
pub struct Request {
    pub wanted: Vec<DerivedPath>,
    pub graph: Graph,
    pub valid: HashSet<StorePath>,
    pub plan: Plan,
}

impl Request {
    /// Reads every `.drv` `wanted` reaches and plans the builds.
    pub async fn read(
        relay: &Relay,
        client: &ClientId,
        wanted: Vec<DerivedPath>,
    ) -> Result<Request, super::Error> {
        let mut roots = Vec::new();
        let mut want_outputs = Vec::new();
        let mut valid = HashSet::new();
        for w in &wanted {
            match w {
                DerivedPath::Built { drv, outputs } => {
                    roots.push(drv.clone());
                    want_outputs.push((drv.clone(), outputs.clone()));
                }
                DerivedPath::Opaque(p) => {
                    if super::lookup(relay, None, client, p).await?.is_some() {
                        valid.insert(p.clone());
                    }
                }
            }
        }
        let graph = Graph::load(relay, client, &roots).await?;
        valid.extend(valid_outputs(relay, client, &graph).await?);
        let plan = plan(&graph, &valid, &want_outputs)?;
        Ok(Request {
            wanted,
            graph,
            valid,
            plan,
        })
    }

    /// Builds what the plan says; one result per wanted path, in order.
    pub async fn build(
        &self,
        relay: &Arc<Relay>,
        client: &ClientId,
        gone: &CancellationToken,
        options: BuildOptions,
        events: &mpsc::Sender<Event>,
    ) -> Vec<BuildResult> {
        let built = run(
            relay,
            client,
            gone,
            options,
            &self.graph,
            &self.plan,
            events,
        )
        .await;
        results(&self.graph, &self.wanted, &self.valid, &built)
    }

    /// QueryMissing's answer: the derivations that will be built, and the
    /// opaque paths that are neither valid nor buildable.
    pub fn missing(&self) -> (Vec<StorePath>, Vec<StorePath>) {
        let unknown = (self.wanted.iter())
            .filter_map(|w| match w {
                DerivedPath::Opaque(p) if !self.valid.contains(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        (self.plan.order.clone(), unknown)
    }
}
