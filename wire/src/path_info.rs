//! Store path metadata as the protocols carry it.
//!
//! ```text
//! serve AddToStoreNar header = str path · str deriver · str narHash (hex) · set<path> refs
//!                  · u64 registrationTime · u64 narSize · u64 ultimate · set<str> sigs · str ca
//! serve QueryPathInfos record = str path · str deriver · set<path> refs · u64 downloadSize
//!                  · u64 narSize · [≥2.4 str narHash (sha256:nix32) · str ca · set<str> sigs]
//! ```

use std::collections::BTreeSet;

use tokio::io::AsyncRead;

use super::hash::Sha256Hash;
use super::primitives::*;
use super::store_path::StorePath;
use super::{Error, Limits, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPathInfo {
    pub path: StorePath,
    pub deriver: Option<StorePath>,
    pub nar_hash: Sha256Hash,
    pub references: BTreeSet<StorePath>,
    pub registration_time: u64,
    pub nar_size: u64,
    pub ultimate: bool,
    pub sigs: Vec<String>,
    /// Content address, e.g. `fixed:r:sha256:<nix32>`; None when input-addressed.
    pub ca: Option<String>,
}

async fn read_hash<R: AsyncRead + Unpin>(r: &mut R, field: &'static str) -> Result<Sha256Hash> {
    Sha256Hash::parse_any(&read_string(r, field, 256).await?)
}

impl ValidPathInfo {
    /// The header of serve `AddToStoreNar` (the NAR follows).
    pub async fn read_add_header<R: AsyncRead + Unpin>(r: &mut R, limits: &Limits) -> Result<Self> {
        let info = ValidPathInfo {
            path: read_path(r, "path").await?,
            deriver: read_opt_path(r, "deriver").await?,
            nar_hash: read_hash(r, "narHash").await?,
            references: read_path_set(r, "references", limits).await?,
            registration_time: read_u64(r, "registrationTime").await?,
            nar_size: read_u64(r, "narSize").await?,
            ultimate: read_bool(r, "ultimate").await?,
            sigs: read_strings(r, "sigs", limits).await?,
            ca: read_opt_string(r, "ca").await?,
        };
        if info.nar_size == 0 {
            return Err(Error::BadValue {
                field: "narSize",
                value: 0,
            });
        }
        if info.nar_size > limits.max_nar_bytes {
            return Err(Error::TooLong {
                field: "narSize",
                len: info.nar_size,
                max: limits.max_nar_bytes,
            });
        }
        Ok(info)
    }

    pub fn write_add_header(&self, buf: &mut Vec<u8>) {
        put_str(buf, self.path.as_str());
        put_opt_path(buf, self.deriver.as_ref());
        put_str(buf, &self.nar_hash.to_hex());
        put_paths(buf, self.references.iter());
        put_u64(buf, self.registration_time);
        put_u64(buf, self.nar_size);
        put_bool(buf, self.ultimate);
        put_strings(buf, &self.sigs);
        put_str(buf, self.ca.as_deref().unwrap_or(""));
    }

    /// One record of a serve `QueryPathInfos` reply (after the path).
    pub async fn read_serve_record<R: AsyncRead + Unpin>(
        r: &mut R,
        path: StorePath,
        minor: u8,
        limits: &Limits,
    ) -> Result<(Self, u64)> {
        let deriver = read_opt_path(r, "deriver").await?;
        let references = read_path_set(r, "references", limits).await?;
        let download_size = read_u64(r, "downloadSize").await?;
        let nar_size = read_u64(r, "narSize").await?;
        let mut info = ValidPathInfo {
            path,
            deriver,
            nar_hash: Sha256Hash([0; 32]),
            references,
            registration_time: 0,
            nar_size,
            ultimate: false,
            sigs: Vec::new(),
            ca: None,
        };
        if minor >= 4 {
            info.nar_hash = read_hash(r, "narHash").await?;
            info.ca = read_opt_string(r, "ca").await?;
            info.sigs = read_strings(r, "sigs", limits).await?;
        }
        Ok((info, download_size))
    }

    pub fn write_serve_record(&self, buf: &mut Vec<u8>, download_size: u64, minor: u8) {
        put_str(buf, self.path.as_str());
        put_opt_path(buf, self.deriver.as_ref());
        put_paths(buf, self.references.iter());
        put_u64(buf, download_size);
        put_u64(buf, self.nar_size);
        if minor >= 4 {
            put_str(buf, &self.nar_hash.to_nix32_prefixed());
            put_str(buf, self.ca.as_deref().unwrap_or(""));
            put_strings(buf, &self.sigs);
        }
    }
}
