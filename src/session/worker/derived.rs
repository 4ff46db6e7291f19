//! Remote-store builds over the worker protocol: BuildPaths,
//! BuildPathsWithResults and QueryMissing for `drv!outputs` paths, through
//! [`crate::session::derived`]. Each derivation built shows as its own
//! build activity with its log lines, as a Nix daemon shows them.

use std::collections::{HashMap, HashSet};

use tokio::io::{AsyncBufRead, AsyncWrite};

use super::build::{ClientActs, build_activity};
use super::{OpError, WorkerSession};
use crate::session::derived::{DerivedError, Event, Request as Derived};
use crate::session::{CoreError, Error};
use crate::wire::build::BuildResult;
use crate::wire::derivation::DerivedPath;
use crate::wire::store_path::StorePath;
use crate::wire::worker::Reply;
use crate::wire::worker::values::{QueryMissingReply, WorkerBuildResult};

impl<R, W> WorkerSession<R, W>
where
    R: AsyncBufRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// BuildPaths (`with_results` false: one ack, or an error naming
    /// every failure) and BuildPathsWithResults.
    pub(super) async fn build_paths(
        &mut self,
        paths: Vec<String>,
        mode: u64,
        with_results: bool,
    ) -> Result<Result<(), OpError>, Error> {
        if mode != 0 {
            return Ok(Err(OpError::Unbuildable(format!(
                "nix-relay builds only in normal mode (not repair or check: mode {mode})"
            ))));
        }
        let wanted = match parse_all(&paths) {
            Ok(w) => w,
            Err(msg) => return Ok(Err(OpError::Unbuildable(msg))),
        };
        let req = match Derived::read(&self.core, &self.client, wanted).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(OpError::Unbuildable(crate::error_chain(&e)))),
        };
        let results = self.run_builds(&req).await?;
        if with_results {
            let keyed = (paths.into_iter().zip(results))
                .map(|(p, r)| (p, WorkerBuildResult::from(r)))
                .collect();
            return self.ok(Reply::BuildResults(keyed)).await;
        }
        let failed: Vec<String> = (paths.iter().zip(&results))
            .filter(|(_, r)| !r.status.is_success())
            .map(|(p, r)| format!("{p}: {}", String::from_utf8_lossy(&r.error_msg)))
            .collect();
        if failed.is_empty() {
            self.ok(Reply::Ack).await
        } else {
            Ok(Err(OpError::Unbuildable(format!(
                "build failed: {}",
                failed.join("; ")
            ))))
        }
    }

    /// Runs the builds, writing their activities and logs as they come.
    async fn run_builds(&mut self, req: &Derived) -> Result<Vec<BuildResult>, Error> {
        let options = self.options.clone();
        let mut run = req.run(&self.core, &self.client, &self.gone, options);
        let mut acts: HashMap<StorePath, ClientActs> = HashMap::new();
        while let Some(event) = run.next().await {
            let msgs = match event {
                Event::Started(drv) => {
                    let act = self.new_activity();
                    acts.insert(drv.clone(), ClientActs::new(act));
                    vec![build_activity(act, &drv)]
                }
                Event::Build(drv, e) => match acts.get_mut(&drv) {
                    Some(a) => a.event(e, &mut self.next_activity),
                    None => Vec::new(),
                },
                Event::Finished(drv, _) => {
                    acts.remove(&drv).map_or_else(Vec::new, |mut a| a.finish())
                }
            };
            self.reply(&msgs, None).await?;
        }
        Ok(req.results(run))
    }

    /// QueryDerivationOutputMap: each output of the `.drv` (in the relay
    /// store) and its path; none for a floating one.
    pub(super) async fn output_map(
        &mut self,
        drv: StorePath,
    ) -> Result<Result<(), OpError>, Error> {
        let d = match crate::session::derived::read_drv(&self.core, &self.client, &drv).await {
            Ok(d) => d,
            Err(e) => return Ok(Err(OpError::Unbuildable(crate::error_chain(&e)))),
        };
        let map = d
            .outputs
            .iter()
            .map(|o| (o.name.clone(), d.output(&o.name)))
            .collect();
        self.ok(Reply::OutputMap(map)).await
    }

    /// QueryMissing: what building `paths` would build, what the relay
    /// would fetch from upstream instead (outputs an upstream has: their
    /// derivations are not built; and opaque paths; with download and NAR
    /// sizes), and what is none of these.
    pub(super) async fn query_missing(
        &mut self,
        paths: Vec<String>,
    ) -> Result<Result<(), OpError>, Error> {
        let wanted = match parse_all(&paths) {
            Ok(w) => w,
            Err(msg) => return Ok(Err(OpError::Unbuildable(msg))),
        };
        let (will_build, mut upstream, mut unknown) =
            match Derived::read(&self.core, &self.client, wanted).await {
                Ok(req) => {
                    let outs = req.unbuilt_outputs();
                    let found = self.core.substitutable(&self.client, &outs).await?;
                    let have = found.iter().map(|(p, _)| p.clone()).collect();
                    let m = match req.missing(&have) {
                        Ok(m) => m,
                        Err(e) => return Ok(Err(OpError::Unbuildable(crate::error_chain(&e)))),
                    };
                    let used: HashSet<_> = m.substitute.into_iter().collect();
                    let found = found.into_iter().filter(|(p, _)| used.contains(p));
                    (m.build, found.collect::<Vec<_>>(), m.unknown)
                }
                Err(CoreError::Derived(DerivedError::NoDrv(drv))) => (vec![], vec![], vec![drv]),
                Err(e) => return Ok(Err(OpError::Unbuildable(crate::error_chain(&e)))),
            };
        let opaque = self.core.substitutable(&self.client, &unknown).await?;
        unknown.retain(|p| !opaque.iter().any(|(u, _)| u == p));
        upstream.extend(opaque);
        let reply = QueryMissingReply {
            will_build,
            download_size: upstream.iter().map(|(_, f)| f.download_size()).sum(),
            nar_size: upstream.iter().map(|(_, f)| f.narinfo.nar_size).sum(),
            will_substitute: upstream.into_iter().map(|(p, _)| p).collect(),
            unknown,
        };
        self.ok(Reply::Missing(reply)).await
    }
}

fn parse_all(paths: &[String]) -> Result<Vec<DerivedPath>, String> {
    (paths.iter())
        .map(|p| DerivedPath::parse(p).map_err(|e| format!("'{p}': {e}")))
        .collect()
}
