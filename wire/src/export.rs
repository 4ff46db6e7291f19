//! The export stream of serve `ImportPaths` / `ExportPaths`.
//!
//! ```text
//! per path   u64 1 · NAR · u64 EXPORT_MAGIC ("NIXE") · str path · set<path> references
//!            · str deriver ("" = none) · u64 0   (1 would be followed by a legacy signature str)
//! end        u64 0
//! ```
//! Paths appear references first. The NAR is self-delimiting: the caller
//! streams it through the NAR tokenizer between [`read_next`] and [`read_trailer`].

use std::collections::BTreeSet;

use tokio::io::AsyncRead;

use super::primitives::*;
use super::store_path::StorePath;
use super::{Error, Limits, Result};

pub const EXPORT_MAGIC: u64 = 0x4558_494e;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportTrailer {
    pub path: StorePath,
    pub references: BTreeSet<StorePath>,
    pub deriver: Option<StorePath>,
}

/// `true` when another path (its NAR first) follows, `false` at the end.
pub async fn read_next<R: AsyncRead + Unpin>(r: &mut R) -> Result<bool> {
    match read_u64(r, "export marker").await? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(Error::BadValue {
            field: "export marker",
            value: v,
        }),
    }
}

pub async fn read_trailer<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &Limits,
) -> Result<ExportTrailer> {
    let magic = read_u64(r, "export magic").await?;
    if magic != EXPORT_MAGIC {
        return Err(Error::BadMagic {
            got: magic,
            expected: EXPORT_MAGIC,
        });
    }
    let t = ExportTrailer {
        path: read_path(r, "export path").await?,
        references: read_path_set(r, "export references", limits).await?,
        deriver: read_opt_path(r, "export deriver").await?,
    };
    if read_bool(r, "export signature flag").await? {
        // Legacy signatures are obsolete; read and drop.
        read_bytes(r, "export signature", limits.max_string_bytes).await?;
    }
    Ok(t)
}

pub fn write_next(buf: &mut Vec<u8>, more: bool) {
    put_bool(buf, more);
}

pub fn write_trailer(buf: &mut Vec<u8>, t: &ExportTrailer) {
    put_u64(buf, EXPORT_MAGIC);
    put_str(buf, t.path.as_str());
    put_paths(buf, t.references.iter());
    put_opt_path(buf, t.deriver.as_ref());
    put_u64(buf, 0);
}
