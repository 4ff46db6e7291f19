//! Queries over the whole store as one client sees it (public entries
//! plus its private scope): QueryPathFromHashPart, QueryReferrers,
//! QueryValidDerivers, QueryAllValidPaths.
//!
//! The store keeps no reverse index: referrers and the full listing scan
//! the narinfo files of the two scopes once per query (one directory read
//! and one small file per entry; memory grows with the number of entries,
//! never with NAR sizes). A hash-part lookup is one file read per scope.

use std::collections::BTreeSet;

use super::{Error, NarInfo, Scope, Store, io_err};
use crate::wire::hash::NIX32_ALPHABET;
use crate::wire::store_path::{HASH_LEN, StorePath};

impl Store {
    fn scopes(client: Option<&str>) -> Vec<Scope> {
        let mut v = vec![Scope::Public];
        if let Some(c) = client {
            v.push(Scope::Private(c.to_owned()));
        }
        v
    }

    /// The path whose hash part is `hash_part`, if `client` can see it.
    /// A string that is not a hash part finds nothing.
    pub async fn path_from_hash_part(
        &self,
        hash_part: &str,
        client: Option<&str>,
    ) -> Result<Option<StorePath>, Error> {
        let ok =
            hash_part.len() == HASH_LEN && hash_part.bytes().all(|b| NIX32_ALPHABET.contains(&b));
        if !ok {
            return Ok(None);
        }
        for scope in Self::scopes(client) {
            let file = self.scope_dir(&scope).join(format!("{hash_part}.narinfo"));
            let text = match tokio::fs::read_to_string(&file).await {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("reading", &file)(e)),
            };
            let info = NarInfo::parse(&text).map_err(|source| Error::BadNarInfo {
                path: file.clone(),
                source,
            })?;
            if info.store_path.hash_part() == hash_part {
                return Ok(Some(info.store_path));
            }
        }
        Ok(None)
    }

    /// Every entry `client` can see (the scan described above). An
    /// unreadable narinfo is skipped, as eviction skips it.
    pub async fn visible_entries(&self, client: Option<&str>) -> Result<Vec<NarInfo>, Error> {
        let mut out = Vec::new();
        for scope in Self::scopes(client) {
            let dir = self.scope_dir(&scope);
            let mut rd = match tokio::fs::read_dir(&dir).await {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("listing", &dir)(e)),
            };
            while let Some(e) = rd.next_entry().await.map_err(io_err("listing", &dir))? {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "narinfo") {
                    continue;
                }
                let Ok(text) = tokio::fs::read_to_string(&p).await else {
                    continue;
                };
                if let Ok(info) = NarInfo::parse(&text) {
                    out.push(info);
                }
            }
        }
        Ok(out)
    }

    /// QueryAllValidPaths: every path `client` can see, sorted.
    pub async fn all_paths(&self, client: Option<&str>) -> Result<Vec<StorePath>, Error> {
        let set: BTreeSet<StorePath> = (self.visible_entries(client).await?)
            .into_iter()
            .map(|n| n.store_path)
            .collect();
        Ok(set.into_iter().collect())
    }

    /// QueryReferrers: the visible paths whose references include `path`
    /// (itself too, if it refers to itself, as Nix answers).
    pub async fn referrers(
        &self,
        path: &StorePath,
        client: Option<&str>,
    ) -> Result<Vec<StorePath>, Error> {
        let set: BTreeSet<StorePath> = (self.visible_entries(client).await?)
            .into_iter()
            .filter(|n| n.references.contains(path))
            .map(|n| n.store_path)
            .collect();
        Ok(set.into_iter().collect())
    }

    /// QueryValidDerivers: the deriver recorded for `path`, if that
    /// derivation is itself in the store for `client`.
    pub async fn valid_derivers(
        &self,
        path: &StorePath,
        client: Option<&str>,
    ) -> Result<Vec<StorePath>, Error> {
        let Some(deriver) = self.narinfo(path, client).await?.and_then(|n| n.deriver) else {
            return Ok(Vec::new());
        };
        Ok(if self.contains(&deriver, client).await? {
            vec![deriver]
        } else {
            Vec::new()
        })
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
