//! Content-addressed additions (worker AddToStore, AddTextToStore): the
//! relay computes the path from the payload, as Nix's daemon does.
//!
//! Trust: a content-addressed path is self-verifying — its name is the hash
//! of its contents and references — so nobody can poison one, which is why
//! Nix's daemon accepts them from untrusted users into its one store. The
//! relay follows it: such a path is **public** when the client is trusted or
//! when every reference is public (a public entry must not need a private
//! one); otherwise it stays in the untrusted client's private scope.

use super::{Error, NarWriter, Scope, Store};
use crate::wire::nar::{NarNode, encode_nar};
use crate::wire::path_info::ValidPathInfo;

impl Store {
    /// Publishes a content-addressed path whose NAR `writer` holds
    /// (`info.ca` set, path computed by the caller). A path already public
    /// is left as it is and its info returned.
    pub async fn commit_ca(
        &self,
        writer: NarWriter,
        info: ValidPathInfo,
        client: &str,
        trusted: bool,
    ) -> Result<ValidPathInfo, Error> {
        if let Some(n) = self.narinfo_in(&Scope::Public, &info.path).await? {
            return Ok(super::to_path_info(&n));
        }
        let mut public = trusted;
        if !public {
            public = true;
            for r in info.references.iter().filter(|r| **r != info.path) {
                if self.narinfo_in(&Scope::Public, r).await?.is_none() {
                    public = false;
                    break;
                }
            }
        }
        let (scope, prov) = super::uploaded(client, trusted, public);
        writer
            .commit(info, super::Verify::Computed, &scope, &prov)
            .await
    }
}

/// The NAR of one regular, non-executable file (how a flat or text
/// payload is stored).
pub fn flat_nar(contents: Vec<u8>) -> Vec<u8> {
    encode_nar(&NarNode::Regular {
        executable: false,
        contents,
    })
}
