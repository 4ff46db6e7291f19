//! Request bodies with more than a couple of fields.
//!
//! ```text
//! SetOptions          u64 keepFailed · u64 keepGoing · u64 tryFallback · u64 verbosity
//!                     · u64 maxBuildJobs · u64 maxSilentTime · u64 useBuildHook (obsolete, 1)
//!                     · u64 verboseBuild (a level: 0 = verbose) · u64 logType (0)
//!                     · u64 printBuildTrace (0) · u64 buildCores · u64 useSubstitutes
//!                     · [V ≥ 1.12 u64 n · n × (str name · str value)]
//! RegisterDrvOutput   [V < 1.31 str drvOutputId · str outPath (base name)] | [V ≥ 1.31 str realisationJson]
//! AddToStore (< 1.25) str baseName · u64 fixed · u64 recursive · str hashAlgo     (raw NAR follows)
//! ```

use tokio::io::AsyncRead;

use super::super::primitives::*;
use super::super::{Limits, Result};
use super::WorkerVersion;

/// The SetOptions request, fields as sent (obsolete ones kept for
/// byte-exact re-encoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    pub keep_failed: bool,
    pub keep_going: bool,
    pub try_fallback: bool,
    pub verbosity: u64,
    pub max_build_jobs: u64,
    pub max_silent_time: u64,
    pub use_build_hook: bool,
    /// A verbosity level: 0 (lvlError) means "verbose build".
    pub verbose_build: u64,
    pub log_type: u64,
    pub print_build_trace: u64,
    pub build_cores: u64,
    pub use_substitutes: bool,
    pub overrides: Vec<(String, String)>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            keep_failed: false,
            keep_going: false,
            try_fallback: false,
            verbosity: 0,
            max_build_jobs: 1,
            max_silent_time: 0,
            use_build_hook: true,
            verbose_build: 7,
            log_type: 0,
            print_build_trace: 0,
            build_cores: 0,
            use_substitutes: true,
            overrides: Vec::new(),
        }
    }
}

impl ClientOptions {
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut R,
        version: WorkerVersion,
        limits: &Limits,
    ) -> Result<Self> {
        let mut o = ClientOptions {
            keep_failed: read_bool(r, "keepFailed").await?,
            keep_going: read_bool(r, "keepGoing").await?,
            try_fallback: read_bool(r, "tryFallback").await?,
            verbosity: read_u64(r, "verbosity").await?,
            max_build_jobs: read_u64(r, "maxBuildJobs").await?,
            max_silent_time: read_u64(r, "maxSilentTime").await?,
            use_build_hook: read_bool(r, "useBuildHook").await?,
            verbose_build: read_u64(r, "verboseBuild").await?,
            log_type: read_u64(r, "logType").await?,
            print_build_trace: read_u64(r, "printBuildTrace").await?,
            build_cores: read_u64(r, "buildCores").await?,
            use_substitutes: read_bool(r, "useSubstitutes").await?,
            overrides: Vec::new(),
        };
        if version.minor() >= 12 {
            let n = read_len(r, "overrides", limits.max_collection_len).await?;
            o.overrides.reserve(n.min(64));
            for _ in 0..n {
                let k = read_string(r, "override name", limits.max_string_bytes).await?;
                let v = read_string(r, "override value", limits.max_string_bytes).await?;
                o.overrides.push((k, v));
            }
        }
        Ok(o)
    }

    pub fn write(&self, buf: &mut Vec<u8>, version: WorkerVersion) {
        put_bool(buf, self.keep_failed);
        put_bool(buf, self.keep_going);
        put_bool(buf, self.try_fallback);
        put_u64(buf, self.verbosity);
        put_u64(buf, self.max_build_jobs);
        put_u64(buf, self.max_silent_time);
        put_bool(buf, self.use_build_hook);
        put_u64(buf, self.verbose_build);
        put_u64(buf, self.log_type);
        put_u64(buf, self.print_build_trace);
        put_u64(buf, self.build_cores);
        put_bool(buf, self.use_substitutes);
        if version.minor() >= 12 {
            put_u64(buf, self.overrides.len() as u64);
            for (k, v) in &self.overrides {
                put_str(buf, k);
                put_str(buf, v);
            }
        }
    }
}

/// RegisterDrvOutput's argument in its two pre-feature forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrvOutputRegistration {
    /// V < 1.31: `sha256:<hex>!<out>` and the output's base name.
    Old { id: String, out_path: String },
    /// V ≥ 1.31: the Realisation as JSON.
    Json(String),
}

impl DrvOutputRegistration {
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut R,
        version: WorkerVersion,
        limits: &Limits,
    ) -> Result<Self> {
        if version.minor() < 31 {
            Ok(DrvOutputRegistration::Old {
                id: read_string(r, "drvOutputId", Limits::MAX_PATH_BYTES).await?,
                out_path: read_string(r, "outPath", Limits::MAX_PATH_BYTES).await?,
            })
        } else {
            let json = read_string(r, "realisation", limits.max_string_bytes).await?;
            Ok(DrvOutputRegistration::Json(json))
        }
    }

    /// Writes the form the variant holds; the caller picks the variant
    /// matching the version ([`DrvOutputRegistration::read`] does).
    pub fn write(&self, buf: &mut Vec<u8>) {
        match self {
            DrvOutputRegistration::Old { id, out_path } => {
                put_str(buf, id);
                put_str(buf, out_path);
            }
            DrvOutputRegistration::Json(json) => put_str(buf, json),
        }
    }
}

/// AddToStore before 1.25; a raw NAR follows (also for flat files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyAddToStore {
    pub base_name: String,
    pub fixed: bool,
    pub recursive: bool,
    pub hash_algo: String,
}

impl LegacyAddToStore {
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Self> {
        Ok(LegacyAddToStore {
            base_name: read_string(r, "baseName", Limits::MAX_PATH_BYTES).await?,
            fixed: read_bool(r, "fixed").await?,
            recursive: read_bool(r, "recursive").await?,
            hash_algo: read_string(r, "hashAlgo", 64).await?,
        })
    }

    pub fn write(&self, buf: &mut Vec<u8>) {
        put_str(buf, &self.base_name);
        put_bool(buf, self.fixed);
        put_bool(buf, self.recursive);
        put_str(buf, &self.hash_algo);
    }
}
