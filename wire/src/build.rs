//! Values shared by both protocols: the inline derivation of
//! BuildDerivation, the serve build options and the build result.
//!
//! ```text
//! BasicDerivation = u64 n · n × (str name, str path, str hashAlgo, str hash)   sorted by name
//!                   set<path> inputSrcs · str platform · str builder
//!                   list<str> args · u64 n · n × (str key, str value)        sorted by key
//! BuildOptions (serve) = u64 maxSilentTime · u64 buildTimeout
//!                   [≥2.2 u64 maxLogSize] [≥2.3 u64 nrRepeats · u64 enforceDeterminism]
//!                   [≥2.7 u64 keepFailed]
//! BuildResult (serve) = u64 status · str errorMsg
//!                   [≥2.3 u64 timesBuilt · u64 isNonDeterministic · u64 startTime · u64 stopTime]
//!                   [≥2.6 u64 n · n × (str drvOutputId, str realisationJson)]
//! ```

use tokio::io::AsyncRead;

use super::primitives::*;
use super::store_path::StorePath;
use super::{Limits, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivationOutput {
    pub name: String,
    /// Full output path; empty for floating content-addressed outputs.
    pub path: String,
    pub hash_algo: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicDerivation {
    pub outputs: Vec<DerivationOutput>,
    pub input_srcs: Vec<StorePath>,
    pub platform: String,
    pub builder: Vec<u8>,
    pub args: Vec<Vec<u8>>,
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
}

impl BasicDerivation {
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R, limits: &Limits) -> Result<Self> {
        let n = read_len(r, "derivation outputs", limits.max_collection_len).await?;
        let mut outputs = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            outputs.push(DerivationOutput {
                name: read_string(r, "output name", Limits::MAX_PATH_BYTES).await?,
                path: read_string(r, "output path", Limits::MAX_PATH_BYTES).await?,
                hash_algo: read_string(r, "output hashAlgo", 64).await?,
                hash: read_string(r, "output hash", 256).await?,
            });
        }
        let input_srcs = read_paths(r, "inputSrcs", limits).await?;
        let platform = read_string(r, "platform", 256).await?;
        let builder = read_bytes(r, "builder", limits.max_string_bytes).await?;
        let args = read_byte_list(r, "args", limits).await?;
        let n = read_len(r, "env", limits.max_collection_len).await?;
        let mut env = Vec::with_capacity(n.min(256));
        for _ in 0..n {
            let k = read_bytes(r, "env key", limits.max_string_bytes).await?;
            let v = read_bytes(r, "env value", limits.max_string_bytes).await?;
            env.push((k, v));
        }
        Ok(BasicDerivation {
            outputs,
            input_srcs,
            platform,
            builder,
            args,
            env,
        })
    }

    pub fn write(&self, buf: &mut Vec<u8>) {
        put_u64(buf, self.outputs.len() as u64);
        for o in &self.outputs {
            put_str(buf, &o.name);
            put_str(buf, &o.path);
            put_str(buf, &o.hash_algo);
            put_str(buf, &o.hash);
        }
        put_paths(buf, self.input_srcs.iter());
        put_str(buf, &self.platform);
        put_bytes(buf, &self.builder);
        put_byte_list(buf, &self.args);
        put_u64(buf, self.env.len() as u64);
        for (k, v) in &self.env {
            put_bytes(buf, k);
            put_bytes(buf, v);
        }
    }

    pub fn env_var(&self, key: &str) -> Option<&[u8]> {
        self.env
            .iter()
            .find(|(k, _)| k == key.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// `requiredSystemFeatures`: with `__structuredAttrs` (an env var
    /// `__json` holding a JSON object) the list of strings there, as Nix
    /// reads it, else the env var split on whitespace. The `__json` value
    /// is bounded by the wire's `max_string_size`; other attributes are
    /// skipped without being kept. Malformed JSON or a value that is not a
    /// list of strings is an error, as in Nix.
    pub fn required_features(&self) -> std::result::Result<Vec<String>, AttrsError> {
        if let Some(json) = self.env_var("__json") {
            return structured_features(json);
        }
        let v = self.env_var("requiredSystemFeatures").unwrap_or(b"");
        Ok(String::from_utf8_lossy(v)
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    }

    /// Output paths that are known in advance (input-addressed and fixed).
    pub fn output_paths(&self) -> Result<Vec<StorePath>> {
        self.outputs
            .iter()
            .filter(|o| !o.path.is_empty())
            .map(|o| StorePath::parse(&o.path))
            .collect()
    }
}

/// A derivation's structured attributes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AttrsError {
    #[error("the structured attributes (__json) are not valid JSON")]
    Json(#[source] serde_json::Error),
    #[error("the structured attributes (__json) are not a JSON object")]
    NotObject,
    #[error(
        "requiredSystemFeatures in the structured attributes (__json) is not a list of strings"
    )]
    NotStringList,
}

/// `requiredSystemFeatures` of a `__json` object; absent: none.
fn structured_features(json: &[u8]) -> std::result::Result<Vec<String>, AttrsError> {
    use serde::Deserialize;
    #[derive(Deserialize)]
    struct Attrs {
        // Present (even `null`): Some; absent: None.
        #[serde(
            rename = "requiredSystemFeatures",
            default,
            deserialize_with = "present"
        )]
        features: Option<serde_json::Value>,
    }
    fn present<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<serde_json::Value>, D::Error> {
        serde_json::Value::deserialize(d).map(Some)
    }
    // A derived struct would also take a JSON array (as a sequence).
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(AttrsError::NotObject);
    }
    let attrs: Attrs = serde_json::from_slice(json).map_err(AttrsError::Json)?;
    let Some(v) = attrs.features else {
        return Ok(Vec::new());
    };
    let list = v.as_array().ok_or(AttrsError::NotStringList)?;
    (list.iter())
        .map(|f| {
            f.as_str()
                .map(str::to_owned)
                .ok_or(AttrsError::NotStringList)
        })
        .collect()
}

/// The derivation's name as Nix derives it: drv base name minus `.drv`.
pub fn drv_name(drv_path: &StorePath) -> &str {
    drv_path
        .name()
        .strip_suffix(".drv")
        .unwrap_or(drv_path.name())
}

/// Options a serve client sends with every build. Zero means "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BuildOptions {
    pub max_silent_time: u64,
    pub build_timeout: u64,
    pub max_log_size: u64,
    pub nr_repeats: u64,
    pub enforce_determinism: bool,
    pub keep_failed: bool,
}

impl BuildOptions {
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R, minor: u8) -> Result<Self> {
        let mut o = BuildOptions {
            max_silent_time: read_u64(r, "maxSilentTime").await?,
            build_timeout: read_u64(r, "buildTimeout").await?,
            ..Default::default()
        };
        if minor >= 2 {
            o.max_log_size = read_u64(r, "maxLogSize").await?;
        }
        if minor >= 3 {
            o.nr_repeats = read_u64(r, "nrRepeats").await?;
            o.enforce_determinism = read_bool(r, "enforceDeterminism").await?;
        }
        if minor >= 7 {
            o.keep_failed = read_bool(r, "keepFailed").await?;
        }
        Ok(o)
    }

    pub fn write(&self, buf: &mut Vec<u8>, minor: u8) {
        put_u64(buf, self.max_silent_time);
        put_u64(buf, self.build_timeout);
        if minor >= 2 {
            put_u64(buf, self.max_log_size);
        }
        if minor >= 3 {
            put_u64(buf, self.nr_repeats);
            put_bool(buf, self.enforce_determinism);
        }
        if minor >= 7 {
            put_bool(buf, self.keep_failed);
        }
    }
}

/// BuildResult status codes (both protocols).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum BuildStatus {
    Built = 0,
    Substituted = 1,
    AlreadyValid = 2,
    PermanentFailure = 3,
    InputRejected = 4,
    OutputRejected = 5,
    TransientFailure = 6,
    CachedFailure = 7,
    TimedOut = 8,
    MiscFailure = 9,
    DependencyFailed = 10,
    LogLimitExceeded = 11,
    NotDeterministic = 12,
    ResolvesToAlreadyValid = 13,
    NoSubstituters = 14,
}

impl BuildStatus {
    pub fn from_u64(v: u64) -> Option<Self> {
        use BuildStatus::*;
        const ALL: [BuildStatus; 15] = [
            Built,
            Substituted,
            AlreadyValid,
            PermanentFailure,
            InputRejected,
            OutputRejected,
            TransientFailure,
            CachedFailure,
            TimedOut,
            MiscFailure,
            DependencyFailed,
            LogLimitExceeded,
            NotDeterministic,
            ResolvesToAlreadyValid,
            NoSubstituters,
        ];
        ALL.get(usize::try_from(v).ok()?).copied()
    }

    pub fn is_success(self) -> bool {
        use BuildStatus::*;
        matches!(
            self,
            Built | Substituted | AlreadyValid | ResolvesToAlreadyValid
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    pub status: BuildStatus,
    pub error_msg: Vec<u8>,
    pub times_built: u64,
    pub is_non_deterministic: bool,
    pub start_time: u64,
    pub stop_time: u64,
    /// Old-form realisations: (`sha256:<hex>!<output>`, Realisation JSON).
    pub built_outputs: Vec<(String, String)>,
}

impl BuildResult {
    pub fn failure(status: BuildStatus, msg: impl Into<Vec<u8>>) -> Self {
        BuildResult {
            status,
            error_msg: msg.into(),
            times_built: 0,
            is_non_deterministic: false,
            start_time: 0,
            stop_time: 0,
            built_outputs: Vec::new(),
        }
    }

    pub async fn read_serve<R: AsyncRead + Unpin>(
        r: &mut R,
        minor: u8,
        limits: &Limits,
    ) -> Result<Self> {
        let raw = read_u64(r, "build status").await?;
        let status = BuildStatus::from_u64(raw).ok_or(super::Error::BadValue {
            field: "build status",
            value: raw,
        })?;
        let mut res = BuildResult::failure(
            status,
            read_bytes(r, "errorMsg", limits.max_string_bytes).await?,
        );
        if minor >= 3 {
            res.times_built = read_u64(r, "timesBuilt").await?;
            res.is_non_deterministic = read_bool(r, "isNonDeterministic").await?;
            res.start_time = read_u64(r, "startTime").await?;
            res.stop_time = read_u64(r, "stopTime").await?;
        }
        if minor >= 6 {
            let n = read_len(r, "builtOutputs", limits.max_collection_len).await?;
            for _ in 0..n {
                let id = read_string(r, "drvOutputId", Limits::MAX_PATH_BYTES).await?;
                let json = read_string(r, "realisation", limits.max_string_bytes).await?;
                res.built_outputs.push((id, json));
            }
        }
        Ok(res)
    }

    pub fn write_serve(&self, buf: &mut Vec<u8>, minor: u8) {
        put_u64(buf, self.status as u64);
        put_bytes(buf, &self.error_msg);
        if minor >= 3 {
            put_u64(buf, self.times_built);
            put_bool(buf, self.is_non_deterministic);
            put_u64(buf, self.start_time);
            put_u64(buf, self.stop_time);
        }
        if minor >= 6 {
            put_u64(buf, self.built_outputs.len() as u64);
            for (id, json) in &self.built_outputs {
                put_str(buf, id);
                put_str(buf, json);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drv(env: &[(&str, &str)]) -> BasicDerivation {
        BasicDerivation {
            outputs: vec![],
            input_srcs: vec![],
            platform: "x86_64-linux".into(),
            builder: b"/bin/sh".to_vec(),
            args: vec![],
            env: (env.iter())
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn required_features_from_the_env() {
        let d = drv(&[("requiredSystemFeatures", "kvm  big-parallel")]);
        assert_eq!(d.required_features().unwrap(), ["kvm", "big-parallel"]);
        assert!(drv(&[]).required_features().unwrap().is_empty());
    }

    #[test]
    fn required_features_from_structured_attrs() {
        let json = r#"{"builder":"/bin/sh","env":{"x":[1,{"y":null}]},"requiredSystemFeatures":["kvm","nixos-test"]}"#;
        // With __json, Nix ignores a plain env var of the same name.
        let d = drv(&[("__json", json), ("requiredSystemFeatures", "other")]);
        assert_eq!(d.required_features().unwrap(), ["kvm", "nixos-test"]);
        let none = drv(&[("__json", r#"{"name":"x"}"#)]);
        assert!(none.required_features().unwrap().is_empty());
    }

    #[test]
    fn malformed_structured_attrs_are_an_error_that_says_so() {
        let e = drv(&[("__json", r#"{"requiredSystemFeatures":["kvm""#)])
            .required_features()
            .unwrap_err();
        assert!(matches!(e, AttrsError::Json(_)), "{e}");
        assert!(e.to_string().contains("__json"), "{e}");
        for bad in [
            r#"{"requiredSystemFeatures":"kvm"}"#,
            r#"{"requiredSystemFeatures":["kvm",1]}"#,
            r#"{"requiredSystemFeatures":null}"#,
        ] {
            let e = drv(&[("__json", bad)]).required_features().unwrap_err();
            assert!(matches!(e, AttrsError::NotStringList), "{bad}: {e}");
        }
        let e = drv(&[("__json", "[1]")]).required_features().unwrap_err();
        assert!(matches!(e, AttrsError::NotObject), "{e}");
    }
}
