//! The TOML file exactly as written. Unknown keys are refused.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: Option<RawServer>,
    #[serde(default)]
    pub client: Vec<RawClient>,
    #[serde(default)]
    pub backend: Vec<RawBackend>,
    pub limits: Option<RawLimits>,
    pub cache: Option<RawCache>,
    pub http: Option<RawHttp>,
    pub ec2: Option<super::ec2::RawEc2>,
    pub admin: Option<RawAdmin>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub signing_key: Option<String>,
    pub key_name: Option<String>,
    pub compression: Option<String>,
    #[serde(default)]
    pub trusted_public_keys: Vec<String>,
    pub keep_going: Option<bool>,
    pub max_size: Option<SizeValue>,
    pub max_stored_log_bytes: Option<SizeValue>,
    /// Binary caches the relay substitutes from, in order.
    #[serde(default)]
    pub upstream: Vec<String>,
    pub upstream_connect_timeout: Option<String>,
    pub upstream_timeout: Option<String>,
    pub upstream_stall_timeout: Option<String>,
    pub upstream_negative_ttl: Option<String>,
    /// The shared copy of the cache: `s3://bucket?region=…&endpoint=…`.
    pub store: Option<String>,
    /// The bucket's cap (least recently used entries evicted above it).
    pub store_max_size: Option<SizeValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub host_key: Option<String>,
    pub state_dir: Option<String>,
    /// OpenSSH authorized_keys file; every key in it is a trusted client.
    pub authorized_keys: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub name: String,
    pub key: String,
    #[serde(default = "default_true")]
    pub trusted: bool,
    pub max_silent_time: Option<String>,
    pub build_timeout: Option<String>,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: String,
    pub uri: String,
    pub ssh_key: Option<String>,
    pub host_key: Option<String>,
    pub systems: Vec<String>,
    pub max_jobs: Option<u32>,
    pub speed_factor: Option<f64>,
    #[serde(default)]
    pub supported_features: Vec<String>,
    #[serde(default)]
    pub mandatory_features: Vec<String>,
    pub connect_timeout: Option<String>,
    pub store: Option<String>,
    #[serde(default)]
    pub untrusted_clients: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_nar_size: Option<SizeValue>,
    pub max_string_size: Option<SizeValue>,
    pub max_collection_len: Option<u64>,
    pub max_sessions: Option<u64>,
    pub max_handshakes: Option<u64>,
    pub max_waiting_jobs: Option<u64>,
    pub handshake_timeout: Option<String>,
    pub backend_idle_sessions: Option<u64>,
    pub backend_idle_timeout: Option<String>,
    pub backend_stall_timeout: Option<String>,
    pub backend_keepalive_interval: Option<String>,
    pub max_log_size: Option<SizeValue>,
    pub max_silent_time: Option<String>,
    pub build_timeout: Option<String>,
}

/// A size written as a number of bytes or a string like `"200GiB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}
