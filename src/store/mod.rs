//! The relay store: NARs + metadata on disk in Nix's binary-cache layout.
//!
//! ```text
//! <root>/<hashpart>.narinfo        metadata (narinfo.rs); its existence = the path is valid
//! <root>/nar/<nix32 filehash>.nar  the NAR bytes
//! <root>/tmp/                      uploads in progress (emptied on open)
//! ```
//! Invariant: an entry becomes visible only when complete. A NAR is written
//! to `tmp/`, its hash and size verified, fsynced and renamed into `nar/`;
//! only then is the narinfo written the same way. A crash leaves at most an
//! orphan file in `tmp/` or `nar/`, never a narinfo without its NAR.
//! Memory use is bounded: NARs are streamed in fixed-size chunks.

pub mod narinfo;
mod writer;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use tokio::io::BufReader;

use crate::wire::hash::{Sha256Hash, nix32_encode};
use crate::wire::nar::NarLimits;
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;
pub use narinfo::NarInfo;
pub use writer::{NarWriter, Verify};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step} {}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("NAR of {path} does not match: expected {expected}, got {got}")]
    Mismatch {
        path: StorePath,
        expected: String,
        got: String,
    },
    #[error("streaming the NAR of {path}")]
    Nar {
        path: StorePath,
        #[source]
        source: crate::wire::Error,
    },
    #[error("reading metadata of {path}")]
    BadNarInfo {
        path: PathBuf,
        #[source]
        source: narinfo::ParseError,
    },
    #[error("{0} is not in the relay store")]
    Missing(StorePath),
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        step,
        path: path.to_owned(),
        source,
    }
}

/// Handle to the on-disk store. Cheap to clone; all state is on disk.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store under `root`, discarding
    /// uploads a previous run left unfinished.
    pub fn open(root: &Path) -> Result<Store, Error> {
        for d in [root.to_owned(), root.join("nar"), root.join("tmp")] {
            std::fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        let tmp = root.join("tmp");
        for e in std::fs::read_dir(&tmp).map_err(io_err("listing", &tmp))? {
            let p = e.map_err(io_err("listing", &tmp))?.path();
            std::fs::remove_file(&p).map_err(io_err("removing stale upload", &p))?;
        }
        Ok(Store {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn narinfo_path(&self, hash_part: &str) -> PathBuf {
        self.root.join(format!("{hash_part}.narinfo"))
    }

    pub(crate) fn nar_rel_url(file_hash: &Sha256Hash) -> String {
        format!("nar/{}.nar", nix32_encode(&file_hash.0))
    }

    /// The narinfo of `path`, if the store holds it.
    pub async fn narinfo(&self, path: &StorePath) -> Result<Option<NarInfo>, Error> {
        let file = self.narinfo_path(path.hash_part());
        let text = match tokio::fs::read_to_string(&file).await {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", &file)(e)),
        };
        let info = NarInfo::parse(&text).map_err(|source| Error::BadNarInfo {
            path: file.clone(),
            source,
        })?;
        Ok((info.store_path == *path).then_some(info))
    }

    pub async fn path_info(&self, path: &StorePath) -> Result<Option<ValidPathInfo>, Error> {
        Ok(self.narinfo(path).await?.map(|n| to_path_info(&n)))
    }

    pub async fn contains(&self, path: &StorePath) -> Result<bool, Error> {
        Ok(self.narinfo(path).await?.is_some())
    }

    /// The subset of `paths` the store holds, in the given order.
    pub async fn valid_subset(&self, paths: &[StorePath]) -> Result<Vec<StorePath>, Error> {
        let mut out = Vec::new();
        for p in paths {
            if self.contains(p).await? {
                out.push(p.clone());
            }
        }
        Ok(out)
    }

    /// Opens the NAR of `path` for reading.
    pub async fn open_nar(
        &self,
        path: &StorePath,
    ) -> Result<(NarInfo, BufReader<tokio::fs::File>), Error> {
        let info = self
            .narinfo(path)
            .await?
            .ok_or_else(|| Error::Missing(path.clone()))?;
        let file = self.root.join(&info.url);
        let f = tokio::fs::File::open(&file)
            .await
            .map_err(io_err("opening NAR", &file))?;
        Ok((info, BufReader::with_capacity(256 << 10, f)))
    }

    /// Starts storing a NAR; the entry appears when [`NarWriter::commit`]
    /// has verified it.
    pub async fn begin(&self, limits: NarLimits) -> Result<NarWriter, Error> {
        NarWriter::create(self.clone(), limits).await
    }

    /// Closure of `roots` over references, references before referrers.
    /// Fails if any path in it is missing from the store.
    pub async fn closure_sorted(&self, roots: &[StorePath]) -> Result<Vec<StorePath>, Error> {
        let mut refs: HashMap<StorePath, BTreeSet<StorePath>> = HashMap::new();
        let mut todo: Vec<StorePath> = roots.to_vec();
        while let Some(p) = todo.pop() {
            if refs.contains_key(&p) {
                continue;
            }
            let info = self
                .path_info(&p)
                .await?
                .ok_or_else(|| Error::Missing(p.clone()))?;
            todo.extend(info.references.iter().filter(|r| **r != p).cloned());
            refs.insert(p, info.references);
        }
        Ok(topo_sort(&refs))
    }
}

/// Depth-first post-order: every path after all of its references.
pub fn topo_sort(refs: &HashMap<StorePath, BTreeSet<StorePath>>) -> Vec<StorePath> {
    let mut keys: Vec<&StorePath> = refs.keys().collect();
    keys.sort();
    let mut done = HashSet::new();
    let mut entered = HashSet::new();
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let mut stack = vec![(k, false)];
        while let Some((p, expanded)) = stack.pop() {
            if expanded {
                if done.insert(p.clone()) {
                    out.push(p.clone());
                }
                continue;
            }
            // `entered` also breaks reference cycles a hostile upload could claim.
            if done.contains(p) || !entered.insert(p.clone()) {
                continue;
            }
            stack.push((p, true));
            for r in refs.get(p).into_iter().flatten() {
                if r != p && !done.contains(r) && refs.contains_key(r) {
                    stack.push((r, false));
                }
            }
        }
    }
    out
}

pub fn to_path_info(n: &NarInfo) -> ValidPathInfo {
    ValidPathInfo {
        path: n.store_path.clone(),
        deriver: n.deriver.clone(),
        nar_hash: n.nar_hash,
        references: n.references.iter().cloned().collect(),
        registration_time: 0,
        nar_size: n.nar_size,
        ultimate: false,
        sigs: n.sigs.clone(),
        ca: n.ca.clone(),
    }
}

#[cfg(test)]
mod tests;
