//! A build's input closure as the relay can serve it: what the store has,
//! and what only an upstream has (not fetched: the backend may substitute
//! it itself; the push fetches what it still lacks).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::Upstream;
use crate::store::{Closure, NarInfo, Scope, topo_sort};
use crate::wire::store_path::StorePath;

/// [`Upstream::closure`]'s answer.
#[derive(Debug, Default)]
pub struct Reach {
    /// References first; a path only upstream has carries the upstream's
    /// narinfo (its `url` is the upstream's, not the store's) and the
    /// public scope.
    pub closure: Closure,
    /// The paths of `closure` only upstream has.
    pub remote: HashSet<StorePath>,
}

impl Upstream {
    /// The closure of `roots` as `client` sees it: each path from the
    /// store, else from an upstream (looked up, not fetched). A path in
    /// neither is an `Err(Missing)`.
    pub async fn closure(
        self: &Arc<Self>,
        roots: &[StorePath],
        client: Option<&str>,
    ) -> Result<Reach, crate::store::Error> {
        let mut found: HashMap<StorePath, (Scope, NarInfo)> = HashMap::new();
        let mut refs: HashMap<StorePath, BTreeSet<StorePath>> = HashMap::new();
        let mut remote = HashSet::new();
        let mut todo: Vec<StorePath> = roots.to_vec();
        while let Some(p) = todo.pop() {
            if refs.contains_key(&p) {
                continue;
            }
            let (scope, info) = match self.store.find(&p, client).await? {
                Some(hit) => hit,
                None => {
                    let up = self.lookup(&p).await;
                    let up = up.ok_or_else(|| crate::store::Error::Missing(p.clone()))?;
                    remote.insert(p.clone());
                    (Scope::Public, up.narinfo.clone())
                }
            };
            let r: BTreeSet<StorePath> = info.references.iter().cloned().collect();
            todo.extend(r.iter().filter(|r| **r != p).cloned());
            refs.insert(p.clone(), r);
            found.insert(p, (scope, info));
        }
        let entries: Vec<(Scope, NarInfo)> = topo_sort(&refs)
            .into_iter()
            .filter_map(|p| found.remove(&p))
            .collect();
        let private = entries.iter().any(|(s, _)| *s != Scope::Public);
        let closure = Closure { entries, private };
        Ok(Reach { closure, remote })
    }
}
