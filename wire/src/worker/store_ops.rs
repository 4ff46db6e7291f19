//! Store-maintenance and obsolete worker ops (Nix still sends them:
//! `nix-store --gc`, `nix path-info --all`, Nix < 2.4's AddTextToStore …).
//!
//! ```text
//!  8 AddTextToStore         str name · str text · set<path> refs     → str path
//! 13 SyncWithGC             (nothing)                                → u64 1
//! 14 FindRoots              (nothing)                 → u64 n · n × (str link · str path)
//! 18 QueryDeriver           str path                                 → str path ("" none)
//! 20 CollectGarbage         u64 action · set<path> · u64 ignoreLiveness · u64 maxFreed
//!                           · u64 · u64 · u64 (obsolete)  → set<str> paths · u64 bytesFreed · u64 0
//! 21 QuerySubstitutablePathInfo  str path        → u64 0 | u64 1 · deriver · refs · sizes
//! 22 QueryDerivationOutputs str drvPath                              → set<path>
//! 23 QueryAllValidPaths     (nothing)                                → set<path>
//! 28 QueryDerivationOutputNames str drvPath                          → set<str>
//! 30 QuerySubstitutablePathInfos [<1.22] set<path> | [≥1.22] u64 n · n × (str path · str ca)
//!                                                    → u64 n · n × info
//! 34 OptimiseStore          (nothing)                                → u64 1
//! 35 VerifyStore            u64 checkContents · u64 repair           → u64 errors
//! ```
//! The relay offers no protocol features, so CollectGarbage has the
//! layout without `delete-dead-specific-referrers`.

use tokio::io::AsyncRead;

use super::super::primitives::*;
use super::super::store_path::StorePath;
use super::super::{Error, Limits, Result};
use super::{Op, WorkerVersion};

/// CollectGarbage's action (Nix `GCOptions::GCAction`).
pub const GC_RETURN_LIVE: u64 = 0;
pub const GC_RETURN_DEAD: u64 = 1;
pub const GC_DELETE_DEAD: u64 = 2;
pub const GC_DELETE_SPECIFIC: u64 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcRequest {
    pub action: u64,
    pub paths: Vec<StorePath>,
    pub ignore_liveness: bool,
    pub max_freed: u64,
}

/// What a substituter has of a path: QuerySubstitutablePathInfo(s)'s
/// `deriver · refs · downloadSize · narSize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubstitutableInfo {
    pub deriver: Option<StorePath>,
    pub references: Vec<StorePath>,
    pub download_size: u64,
    pub nar_size: u64,
}

impl SubstitutableInfo {
    pub fn write(&self, buf: &mut Vec<u8>) {
        put_opt_path(buf, self.deriver.as_ref());
        put_paths(buf, self.references.iter());
        put_u64(buf, self.download_size);
        put_u64(buf, self.nar_size);
    }

    pub async fn read<R: AsyncRead + Unpin>(r: &mut R, limits: &Limits) -> Result<Self> {
        Ok(SubstitutableInfo {
            deriver: read_opt_path(r, "deriver").await?,
            references: read_paths(r, "references", limits).await?,
            download_size: read_u64(r, "downloadSize").await?,
            nar_size: read_u64(r, "narSize").await?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    AddTextToStore {
        name: String,
        text: Vec<u8>,
        refs: Vec<StorePath>,
    },
    SyncWithGc,
    FindRoots,
    QueryDeriver {
        path: StorePath,
    },
    CollectGarbage(GcRequest),
    QuerySubstitutablePathInfo {
        path: StorePath,
    },
    QueryDerivationOutputs {
        path: StorePath,
    },
    QueryAllValidPaths,
    QueryDerivationOutputNames {
        path: StorePath,
    },
    /// Each path with its content address ("" none; always "" before 1.22).
    QuerySubstitutablePathInfos {
        paths: Vec<(StorePath, String)>,
    },
    OptimiseStore,
    VerifyStore {
        check_contents: bool,
        repair: bool,
    },
}

impl StoreOp {
    pub fn op(&self) -> Op {
        use StoreOp as S;
        match self {
            S::AddTextToStore { .. } => Op::AddTextToStore,
            S::SyncWithGc => Op::SyncWithGc,
            S::FindRoots => Op::FindRoots,
            S::QueryDeriver { .. } => Op::QueryDeriver,
            S::CollectGarbage(_) => Op::CollectGarbage,
            S::QuerySubstitutablePathInfo { .. } => Op::QuerySubstitutablePathInfo,
            S::QueryDerivationOutputs { .. } => Op::QueryDerivationOutputs,
            S::QueryAllValidPaths => Op::QueryAllValidPaths,
            S::QueryDerivationOutputNames { .. } => Op::QueryDerivationOutputNames,
            S::QuerySubstitutablePathInfos { .. } => Op::QuerySubstitutablePathInfos,
            S::OptimiseStore => Op::OptimiseStore,
            S::VerifyStore { .. } => Op::VerifyStore,
        }
    }

    /// The body of `op`, or `None` if `op` is not one of these.
    pub(super) async fn read<R: AsyncRead + Unpin>(
        r: &mut R,
        op: Op,
        version: WorkerVersion,
        limits: &Limits,
    ) -> Result<Option<StoreOp>> {
        Ok(Some(match op {
            Op::AddTextToStore => StoreOp::AddTextToStore {
                name: read_string(r, "name", Limits::MAX_PATH_BYTES).await?,
                text: read_bytes(r, "text", limits.max_string_bytes).await?,
                refs: read_paths(r, "references", limits).await?,
            },
            Op::SyncWithGc => StoreOp::SyncWithGc,
            Op::FindRoots => StoreOp::FindRoots,
            Op::QueryAllValidPaths => StoreOp::QueryAllValidPaths,
            Op::OptimiseStore => StoreOp::OptimiseStore,
            Op::QueryDeriver => StoreOp::QueryDeriver {
                path: read_path(r, "path").await?,
            },
            Op::QuerySubstitutablePathInfo => StoreOp::QuerySubstitutablePathInfo {
                path: read_path(r, "path").await?,
            },
            Op::QueryDerivationOutputs => StoreOp::QueryDerivationOutputs {
                path: read_path(r, "drvPath").await?,
            },
            Op::QueryDerivationOutputNames => StoreOp::QueryDerivationOutputNames {
                path: read_path(r, "drvPath").await?,
            },
            Op::CollectGarbage => StoreOp::CollectGarbage(read_gc(r, limits).await?),
            Op::QuerySubstitutablePathInfos => StoreOp::QuerySubstitutablePathInfos {
                paths: read_ca_map(r, version, limits).await?,
            },
            Op::VerifyStore => StoreOp::VerifyStore {
                check_contents: read_bool(r, "checkContents").await?,
                repair: read_bool(r, "repair").await?,
            },
            _ => return Ok(None),
        }))
    }

    pub(super) fn write(&self, buf: &mut Vec<u8>, version: WorkerVersion) {
        match self {
            StoreOp::AddTextToStore { name, text, refs } => {
                put_str(buf, name);
                put_bytes(buf, text);
                put_paths(buf, refs.iter());
            }
            StoreOp::SyncWithGc
            | StoreOp::FindRoots
            | StoreOp::QueryAllValidPaths
            | StoreOp::OptimiseStore => {}
            StoreOp::QueryDeriver { path }
            | StoreOp::QuerySubstitutablePathInfo { path }
            | StoreOp::QueryDerivationOutputs { path }
            | StoreOp::QueryDerivationOutputNames { path } => put_str(buf, path.as_str()),
            StoreOp::CollectGarbage(gc) => {
                put_u64(buf, gc.action);
                put_paths(buf, gc.paths.iter());
                put_bool(buf, gc.ignore_liveness);
                put_u64(buf, gc.max_freed);
                for _ in 0..3 {
                    put_u64(buf, 0);
                }
            }
            StoreOp::QuerySubstitutablePathInfos { paths } if version.minor() < 22 => {
                put_paths(buf, paths.iter().map(|(p, _)| p));
            }
            StoreOp::QuerySubstitutablePathInfos { paths } => {
                put_u64(buf, paths.len() as u64);
                for (p, ca) in paths {
                    put_str(buf, p.as_str());
                    put_str(buf, ca);
                }
            }
            StoreOp::VerifyStore {
                check_contents,
                repair,
            } => {
                put_bool(buf, *check_contents);
                put_bool(buf, *repair);
            }
        }
    }
}

async fn read_gc<R: AsyncRead + Unpin>(r: &mut R, limits: &Limits) -> Result<GcRequest> {
    let action = read_u64(r, "gcAction").await?;
    if action > GC_DELETE_SPECIFIC {
        return Err(Error::BadValue {
            field: "gcAction",
            value: action,
        });
    }
    let gc = GcRequest {
        action,
        paths: read_paths(r, "pathsToDelete", limits).await?,
        ignore_liveness: read_bool(r, "ignoreLiveness").await?,
        max_freed: read_u64(r, "maxFreed").await?,
    };
    for _ in 0..3 {
        read_u64(r, "obsolete GC field").await?;
    }
    Ok(gc)
}

async fn read_ca_map<R: AsyncRead + Unpin>(
    r: &mut R,
    version: WorkerVersion,
    limits: &Limits,
) -> Result<Vec<(StorePath, String)>> {
    if version.minor() < 22 {
        let paths = read_paths(r, "paths", limits).await?;
        return Ok(paths.into_iter().map(|p| (p, String::new())).collect());
    }
    let n = read_len(r, "paths", limits.max_collection_len).await?;
    let mut v = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let p = read_path(r, "path").await?;
        v.push((p, read_string(r, "ca", 512).await?));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::super::Request;
    use super::*;

    fn roundtrip(op: StoreOp, version: WorkerVersion) {
        let req = Request::Store(op);
        let mut buf = Vec::new();
        req.write(&mut buf, version);
        let mut r = &buf[..];
        let back = futures_lite_block(Request::read(&mut r, version, &Limits::default()));
        assert_eq!(back.unwrap().unwrap(), req);
        assert!(r.is_empty(), "{} bytes left", r.len());
    }

    fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn every_store_op_roundtrips_whole() {
        let p = StorePath::parse("/nix/store/58s8h4wmfxv0kaaz00kg56xz2d45nhxd-hello.txt").unwrap();
        let ops = [
            StoreOp::AddTextToStore {
                name: "a.drv".into(),
                text: b"Derive(...)".to_vec(),
                refs: vec![p.clone()],
            },
            StoreOp::SyncWithGc,
            StoreOp::FindRoots,
            StoreOp::QueryDeriver { path: p.clone() },
            StoreOp::CollectGarbage(GcRequest {
                action: GC_DELETE_DEAD,
                paths: vec![p.clone()],
                ignore_liveness: false,
                max_freed: u64::MAX,
            }),
            StoreOp::QuerySubstitutablePathInfo { path: p.clone() },
            StoreOp::QueryDerivationOutputs { path: p.clone() },
            StoreOp::QueryAllValidPaths,
            StoreOp::QueryDerivationOutputNames { path: p.clone() },
            StoreOp::QuerySubstitutablePathInfos {
                paths: vec![(p.clone(), String::new())],
            },
            StoreOp::OptimiseStore,
            StoreOp::VerifyStore {
                check_contents: true,
                repair: false,
            },
        ];
        for v in [WorkerVersion::V1_21, WorkerVersion::V1_38] {
            for op in ops.clone() {
                roundtrip(op, v);
            }
        }
    }

    /// The replies as Nix's daemon writes them (daemon.cc): op 21 `u64 0`
    /// or `u64 1 · deriver ("" none) · refs · downloadSize · narSize`; op 30
    /// `u64 n` · n × (path · the same).
    #[test]
    fn substitutable_infos_read_back_as_nix_writes_them() {
        use super::super::Reply;
        let p = StorePath::parse("/nix/store/58s8h4wmfxv0kaaz00kg56xz2d45nhxd-hello.txt").unwrap();
        let d = StorePath::parse("/nix/store/9ss8h4wmfxv0kaaz00kg56xz2d45nhxd-hello.drv").unwrap();
        let info = SubstitutableInfo {
            deriver: Some(d.clone()),
            references: vec![p.clone()],
            download_size: 300,
            nar_size: 1000,
        };
        let mut nix = Vec::new();
        put_u64(&mut nix, 1);
        put_str(&mut nix, d.as_str());
        put_u64(&mut nix, 1);
        put_str(&mut nix, p.as_str());
        put_u64(&mut nix, 300);
        put_u64(&mut nix, 1000);
        let single = Request::Store(StoreOp::QuerySubstitutablePathInfo { path: p.clone() });
        let many = Request::Store(StoreOp::QuerySubstitutablePathInfos {
            paths: vec![(p.clone(), String::new())],
        });
        let none = SubstitutableInfo {
            deriver: None,
            ..info.clone()
        };
        let cases = [
            (
                single.clone(),
                Reply::SubstitutableInfo(Some(info.clone())),
                nix.clone(),
            ),
            (single, Reply::SubstitutableInfo(None), vec![0; 8]),
            (
                many.clone(),
                Reply::SubstitutableInfos(vec![(p.clone(), info)]),
                {
                    let mut b = Vec::new();
                    put_u64(&mut b, 1);
                    put_str(&mut b, p.as_str());
                    b.extend_from_slice(&nix[8..]);
                    b
                },
            ),
            (many, Reply::SubstitutableInfos(vec![(p.clone(), none)]), {
                let mut b = Vec::new();
                put_u64(&mut b, 1);
                put_str(&mut b, p.as_str());
                put_str(&mut b, "");
                b.extend_from_slice(&nix[8 + 8 + 56..]);
                b
            }),
        ];
        let v = WorkerVersion::V1_38;
        for (req, reply, bytes) in cases {
            let mut ours = Vec::new();
            reply.write(&mut ours, v);
            assert_eq!(ours, bytes, "{reply:?}");
            let mut r = &bytes[..];
            let back = futures_lite_block(Reply::read(&mut r, &req, v, &Limits::default()));
            assert_eq!(back.unwrap(), reply);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn bad_gc_action_is_refused() {
        let mut buf = Vec::new();
        put_u64(&mut buf, Op::CollectGarbage as u64);
        put_u64(&mut buf, 7);
        let mut r = &buf[..];
        let e = futures_lite_block(Request::read(
            &mut r,
            WorkerVersion::V1_38,
            &Limits::default(),
        ));
        assert!(e.unwrap_err().to_string().contains("gcAction"));
    }
}
