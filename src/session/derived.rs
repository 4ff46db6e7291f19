//! Remote-store builds: BuildPaths, BuildPathsWithResults and QueryMissing
//! for derivations (`drv!out`, `drv!*`) whose `.drv` files a client copied
//! into the relay store (`nix build --store ssh-ng://relay`, `nix copy`).
//!
//! A request is read once into a [`Graph`] (every `.drv` it reaches, each
//! checked: its output paths must be the ones its hash names, as Nix
//! computes them), then [`plan`]ned — a pure function of the graph and the
//! outputs already valid: which derivations to build, inputs first — and
//! [`Run`]: each derivation goes through [`Core::build`] exactly like a
//! hook build (routing, dedup, cache hits, retries, logs), as soon as its
//! inputs are built, and its outputs are stored before anything that
//! needs them starts. The session reads every build's events from its
//! handle, in its own task.
//!
//! Invariant: nothing is built whose `.drv` is not in the relay store, as
//! the client may see it, and whose outputs are not input-addressed or
//! fixed-output (floating content-addressed derivations are refused).

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::handle::{BuildEvent, BuildHandle, Pending};
use super::{Class, ClientId, Core, CoreError};
use crate::backend::Options;
use crate::wire::build::{BuildResult, BuildStatus};
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

impl DerivedError {
    pub fn class(&self) -> Class {
        match self {
            DerivedError::Store(..) | DerivedError::ReadNar(..) => Class::Infrastructure,
            _ => Class::Client,
        }
    }
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
        relay: &Core,
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
    relay: &Core,
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
    relay: &Core,
    client: &ClientId,
    graph: &Graph,
) -> Result<HashSet<StorePath>, CoreError> {
    let mut valid = HashSet::new();
    for drv in graph.drvs.values() {
        for o in &drv.outputs {
            if let Some(p) = StorePath::parse(&o.path).ok()
                && relay.path_info(client, None, &p).await?.is_some()
            {
                valid.insert(p);
            }
        }
    }
    Ok(valid)
}

/// What the builds of a remote-store request say, for the client's log.
pub enum Event {
    Started(StorePath),
    /// One of that derivation's build events (never its `Done`).
    Build(StorePath, BuildEvent),
    Finished(StorePath, BuildStatus),
}

/// One step of one derivation's build, as [`Run`] polls it.
type Step = Pin<Box<dyn Future<Output = (StorePath, Progress)> + Send>>;

enum Progress {
    Event(BuildHandle, BuildEvent),
    /// Built (or failed), and its outputs stored.
    Stored(BuildResult),
}

/// A remote-store request's builds under way: each derivation as soon as
/// its inputs are built (a derivation whose input failed is not built,
/// DependencyFailed; independent ones go on, keep-going). The session
/// reads their events with [`Run::next`] in its own task, straight from
/// each build's handle.
pub struct Run<'a> {
    core: Arc<Core>,
    client: ClientId,
    gone: CancellationToken,
    options: Options,
    graph: &'a Graph,
    plan: &'a Plan,
    left: Vec<StorePath>,
    results: HashMap<StorePath, BuildResult>,
    running: FuturesUnordered<Step>,
    ready: VecDeque<Event>,
}

impl Run<'_> {
    /// The next event of any build; `None` once every build is done.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            self.start_ready();
            if !self.ready.is_empty() {
                continue;
            }
            let (drv, progress) = self.running.next().await?;
            match progress {
                Progress::Event(_, BuildEvent::Done { result, pending }) => {
                    self.running
                        .push(Box::pin(stored(&self.core, drv, result, pending)));
                }
                Progress::Event(handle, event) => {
                    self.running.push(Box::pin(step(drv.clone(), handle)));
                    return Some(Event::Build(drv, event));
                }
                Progress::Stored(result) => {
                    self.ready
                        .push_back(Event::Finished(drv.clone(), result.status));
                    self.results.insert(drv, result);
                }
            }
        }
    }

    /// Each build's result, once [`Run::next`] said `None`.
    pub fn results(self) -> HashMap<StorePath, BuildResult> {
        self.results
    }

    /// Starts what waits for nothing any more; fails what waits for a
    /// failure.
    fn start_ready(&mut self) {
        let mut i = 0;
        while i < self.left.len() {
            let drv = &self.left[i];
            let waits = &self.plan.waits_for[drv];
            let results = &self.results;
            if waits
                .iter()
                .any(|w| results.get(w).is_some_and(|r| !r.status.is_success()))
            {
                let msg = format!("a dependency of '{drv}' failed");
                let failed = BuildResult::failure(BuildStatus::DependencyFailed, msg);
                let drv = self.left.remove(i);
                self.results.insert(drv, failed);
                continue;
            }
            if waits.iter().all(|w| results.contains_key(w)) {
                let drv = self.left.remove(i);
                self.ready.push_back(Event::Started(drv.clone()));
                self.running.push(Box::pin(self.first_step(drv)));
                continue;
            }
            i += 1;
        }
    }

    /// One derivation of the request: a hook-style build of it as a
    /// BasicDerivation, up to its first event.
    fn first_step(
        &self,
        drv_path: StorePath,
    ) -> impl Future<Output = (StorePath, Progress)> + Send + 'static {
        let drv = &self.graph.drvs[&drv_path];
        let inputs: Vec<StorePath> = (drv.input_drvs.iter())
            .flat_map(|(i, outs)| self.graph.outputs(i, Some(outs)).unwrap_or_default())
            .map(|(_, p)| p)
            .collect();
        let basic = drv.to_basic(inputs);
        let (core, client, gone, options) = (
            self.core.clone(),
            self.client.clone(),
            self.gone.clone(),
            self.options.clone(),
        );
        async move {
            let handle = core.build(&client, &drv_path, &basic, options, &gone).await;
            step(drv_path, handle).await
        }
    }
}

/// The next event of `drv`'s build.
async fn step(drv: StorePath, mut handle: BuildHandle) -> (StorePath, Progress) {
    match handle.next().await {
        Some(event) => (drv, Progress::Event(handle, event)),
        None => (drv, Progress::Stored(super::handle::lost())),
    }
}

/// Stores `drv`'s outputs: what comes next builds on them.
fn stored(
    core: &Arc<Core>,
    drv: StorePath,
    result: BuildResult,
    pending: Option<Pending>,
) -> impl Future<Output = (StorePath, Progress)> + Send + 'static {
    let core = core.clone();
    async move {
        if let Some(p) = pending {
            p.finished.lock().await.settle(&core).await;
        }
        (drv, Progress::Stored(result))
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

/// QueryMissing's sets (see [`Request::missing`]).
pub struct Missing {
    pub build: Vec<StorePath>,
    pub substitute: Vec<StorePath>,
    pub unknown: Vec<StorePath>,
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
        relay: &Core,
        client: &ClientId,
        wanted: Vec<DerivedPath>,
    ) -> Result<Request, CoreError> {
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
                    if relay.path_info(client, None, p).await?.is_some() {
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

    /// Starts building what the plan says (see [`Run`]).
    pub fn run(
        &self,
        core: &Arc<Core>,
        client: &ClientId,
        gone: &CancellationToken,
        options: Options,
    ) -> Run<'_> {
        Run {
            core: core.clone(),
            client: client.clone(),
            gone: gone.clone(),
            options,
            graph: &self.graph,
            plan: &self.plan,
            left: self.plan.order.clone(),
            results: HashMap::new(),
            running: FuturesUnordered::new(),
            ready: VecDeque::new(),
        }
    }

    /// One result per wanted path, in order, once `run` is done.
    pub fn results(&self, run: Run<'_>) -> Vec<BuildResult> {
        results(&self.graph, &self.wanted, &self.valid, &run.results())
    }

    /// QueryMissing's answer, given the outputs an upstream has (see
    /// [`Request::unbuilt_outputs`]): what will be built, which of those
    /// outputs will be substituted instead (their derivations, and inputs
    /// only they need, are not built), and the opaque paths that are
    /// neither valid nor buildable.
    pub fn missing(&self, upstream: &HashSet<StorePath>) -> Result<Missing, DerivedError> {
        let wanted: Vec<_> = (self.wanted.iter())
            .filter_map(|w| match w {
                DerivedPath::Built { drv, outputs } => Some((drv.clone(), outputs.clone())),
                DerivedPath::Opaque(_) => None,
            })
            .collect();
        let valid = self.valid.union(upstream).cloned().collect();
        let build = plan(&self.graph, &valid, &wanted)?.order;
        // Needed: what is wanted, and the inputs of what is built.
        let inputs = (build.iter())
            .flat_map(|d| self.graph.drvs[d].input_drvs.iter())
            .map(|(i, outs)| (i.clone(), Some(outs.clone())));
        let needed = (wanted.iter().cloned()).chain(inputs);
        let mut substitute: Vec<StorePath> = needed
            .flat_map(|(d, outs)| self.graph.outputs(&d, outs.as_deref()).unwrap_or_default())
            .map(|(_, p)| p)
            .filter(|p| upstream.contains(p) && !self.valid.contains(p))
            .collect();
        substitute.sort();
        substitute.dedup();
        let unknown = (self.wanted.iter())
            .filter_map(|w| match w {
                DerivedPath::Opaque(p) if !self.valid.contains(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        Ok(Missing {
            build,
            substitute,
            unknown,
        })
    }

    /// The outputs of the derivations the plan builds (an upstream may have them).
    pub fn unbuilt_outputs(&self) -> Vec<StorePath> {
        (self.plan.order.iter())
            .flat_map(|d| self.graph.outputs(d, None).unwrap_or_default())
            .map(|(_, p)| p)
            .collect()
    }
}
