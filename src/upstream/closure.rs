//! A build's input closure as the relay can serve it: what the store has,
//! and what only an upstream has (not fetched: the backend may substitute
//! it itself; the push fetches what it still lacks).

use std::collections::HashSet;
use std::sync::Arc;

use super::Upstream;
use crate::store::Closure;
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
        let lookup = |p: StorePath| -> crate::store::Elsewhere {
            let this = self.clone();
            Box::pin(async move { this.lookup(&p).await.map(|f| f.narinfo.clone()) })
        };
        let (closure, remote) = self.store.closure_or(roots, client, lookup).await?;
        Ok(Reach { closure, remote })
    }
}
