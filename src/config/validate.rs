//! RawConfig → Config. Every problem is collected, none stops the others.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use russh::keys::PublicKey;

use super::raw::{RawBackend, RawCache, RawConfig, RawLimits, SizeValue};
use super::{Backend, BackendUri, Cache, Client, Config, Limits, Protocol, Server, defaults};
use crate::store::Compression;
use crate::store::signing::PublicKey as CacheKey;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn validate(raw: RawConfig) -> Result<Config, Vec<String>> {
    let mut p = Vec::new();
    let server = raw.server.unwrap_or_default();
    let listen = server.listen.as_deref().unwrap_or(defaults::LISTEN);
    let listen: SocketAddr = listen.parse().unwrap_or_else(|e| {
        p.push(format!("server.listen {listen:?}: {e}"));
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    let state_dir = PathBuf::from(server.state_dir.as_deref().unwrap_or(defaults::STATE_DIR));
    let host_key = server
        .host_key
        .map(PathBuf::from)
        .unwrap_or_else(|| state_dir.join("ssh_host_ed25519_key"));
    let mut clients = Vec::new();
    // where each entry of `clients` comes from, for the uniqueness check
    let mut origins = Vec::new();
    for (i, c) in raw.client.into_iter().enumerate() {
        match parse_public_key(&c.key) {
            Ok(key) => {
                origins.push(format!("client[{i}]"));
                let what = format!("client[{i}]");
                let timeouts = timeouts(&what, c.max_silent_time, c.build_timeout, &mut p);
                clients.push(Client {
                    name: c.name,
                    key,
                    trusted: c.trusted,
                    timeouts,
                })
            }
            Err(e) => p.push(format!("client[{i}] ({}): key: {e}", c.name)),
        }
    }
    if let Some(path) = server.authorized_keys {
        match read_authorized_keys(&path) {
            Ok(keys) => {
                origins.extend(
                    keys.iter()
                        .map(|_| format!("server.authorized_keys {path:?}")),
                );
                clients.extend(keys);
            }
            Err(e) => p.push(format!("server.authorized_keys {path:?}: {e}")),
        }
    }
    check_clients_unique(&clients, &origins, &mut p);
    let mut names = HashSet::new();
    let mut backends = Vec::new();
    let has_ec2 = raw.ec2.is_some();
    let ec2 = raw.ec2.and_then(|e| super::ec2::validate(e, &mut p));
    if raw.backend.is_empty() && !has_ec2 {
        p.push("no [[backend]] and no [ec2]: the relay needs at least one".into());
    }
    for (i, b) in raw.backend.into_iter().enumerate() {
        if !names.insert(b.name.clone()) {
            p.push(format!("backend[{i}]: duplicate name {:?}", b.name));
        }
        if let Some(b) = validate_backend(i, b, &mut p) {
            backends.push(b);
        }
    }
    let limits = validate_limits(raw.limits.unwrap_or_default(), &mut p);
    let cache = validate_cache(raw.cache.unwrap_or_default(), &state_dir, &mut p);
    let http_listen = raw
        .http
        .and_then(|h| h.listen)
        .and_then(|l| match l.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                p.push(format!("http.listen {l:?}: {e}"));
                None
            }
        });
    let admin_listen = raw
        .admin
        .and_then(|a| a.listen)
        .and_then(|l| validate_admin_listen(&l, &mut p));
    if !p.is_empty() {
        return Err(p);
    }
    Ok(Config {
        server: Server {
            listen,
            host_key,
            state_dir,
        },
        clients,
        backends,
        limits,
        cache,
        http_listen,
        ec2,
        admin_listen,
    })
}

/// A client's name is its identity (private scope, logs, metrics, queue
/// fairness) and its key picks the client at login: both must be unique.
fn check_clients_unique(clients: &[Client], origins: &[String], p: &mut Vec<String>) {
    let (mut names, mut keys) = (HashMap::new(), HashMap::new());
    for (c, at) in clients.iter().zip(origins) {
        if let Some(first) = names.get(c.name.as_str()) {
            p.push(format!(
                "{at}: duplicate client name {:?} (also {first}); client names must be unique",
                c.name
            ));
        } else {
            names.insert(c.name.as_str(), at);
        }
        if let Some((first, name)) = keys.get(c.key.key_data()) {
            p.push(format!(
                "{at} ({}): the same key as {first} ({name}); a key belongs to one client only",
                c.name
            ));
        } else {
            keys.insert(c.key.key_data(), (at, &c.name));
        }
    }
}

/// The admin endpoint has no authentication: loopback addresses only.
fn validate_admin_listen(l: &str, p: &mut Vec<String>) -> Option<SocketAddr> {
    match l.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_loopback() => Some(a),
        Ok(_) => {
            p.push(format!(
                "admin.listen {l:?}: must be a loopback address (127.0.0.1 or [::1]); the admin endpoint has no authentication"
            ));
            None
        }
        Err(e) => {
            p.push(format!("admin.listen {l:?}: {e}"));
            None
        }
    }
}

fn validate_cache(mut c: RawCache, state_dir: &std::path::Path, p: &mut Vec<String>) -> Cache {
    let upstream = super::upstream::validate(&mut c, p);
    let store_given = c.store.is_some();
    let s3 = match c.store.take().map(|u| crate::s3::Location::parse(&u)) {
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            p.push(format!("cache.store: {e}"));
            None
        }
        None => None,
    };
    let compression = c.compression.as_deref().unwrap_or("zstd");
    let compression = Compression::parse(compression).unwrap_or_else(|| {
        p.push(format!(
            "cache.compression {compression:?}: use zstd, xz or none"
        ));
        Compression::default()
    });
    let mut trusted = Vec::new();
    for (i, k) in c.trusted_public_keys.iter().enumerate() {
        match CacheKey::parse(k) {
            Ok(k) => trusted.push(k),
            Err(e) => p.push(format!("cache.trusted_public_keys[{i}]: {e}")),
        }
    }
    if !upstream.urls.is_empty() && trusted.is_empty() && c.trusted_public_keys.is_empty() {
        p.push("cache.upstream needs cache.trusted_public_keys: only paths signed by a trusted key are fetched".into());
    }
    let max_size = match c.max_size.map(size_of) {
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            p.push(format!("cache.max_size: {e}"));
            None
        }
        None => None,
    };
    let store_max_size = match c.store_max_size.map(size_of) {
        Some(Ok(n)) if store_given => Some(n),
        Some(Ok(_)) => {
            p.push("cache.store_max_size needs cache.store (an s3:// bucket)".into());
            None
        }
        Some(Err(e)) => {
            p.push(format!("cache.store_max_size: {e}"));
            None
        }
        None => None,
    };
    let max_stored_log_bytes = match c.max_stored_log_bytes.map(size_of) {
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            p.push(format!("cache.max_stored_log_bytes: {e}"));
            None
        }
        None => None,
    };
    Cache {
        signing_key: c
            .signing_key
            .map(PathBuf::from)
            .unwrap_or_else(|| state_dir.join("cache-priv-key.pem")),
        key_name: c.key_name.unwrap_or_else(defaults::key_name),
        compression,
        trusted_public_keys: trusted,
        keep_going: c.keep_going.unwrap_or(false),
        max_size,
        max_stored_log_bytes,
        upstream,
        s3,
        store_max_size,
    }
}

fn validate_backend(i: usize, b: RawBackend, p: &mut Vec<String>) -> Option<Backend> {
    let at = format!("backend[{i}] ({})", b.name);
    let n = p.len();
    let uri = parse_backend_uri(&b.uri).map_err(|e| p.push(format!("{at}: uri {:?}: {e}", b.uri)));
    let host_key = match b.host_key.as_deref().map(parse_public_key) {
        Some(Err(e)) => {
            p.push(format!("{at}: host_key: {e}"));
            None
        }
        Some(Ok(k)) => Some(k),
        None => None,
    };
    if let Ok(BackendUri::Ssh { .. }) = uri {
        if b.ssh_key.is_none() {
            p.push(format!("{at}: ssh:// and ssh-ng:// backends need ssh_key"));
        }
        if b.host_key.is_none() {
            p.push(format!("{at}: ssh:// and ssh-ng:// backends need host_key (pinned, e.g. the contents of ssh_host_ed25519_key.pub)"));
        }
    }
    if let Some(s) = &b.store
        && (s.is_empty() || s.contains(['\'', '\n']))
    {
        p.push(format!(
            "{at}: store must be a non-empty path or URI without quotes"
        ));
    }
    if b.systems.is_empty() {
        p.push(format!("{at}: systems is empty"));
    }
    let max_jobs = b.max_jobs.unwrap_or(1);
    if max_jobs == 0 {
        p.push(format!("{at}: max_jobs must be at least 1"));
    }
    let speed_factor = b.speed_factor.unwrap_or(1.0);
    if !(speed_factor.is_finite() && speed_factor > 0.0) {
        p.push(format!("{at}: speed_factor must be a positive number"));
    }
    let connect_timeout = match b.connect_timeout.as_deref().map(parse_duration) {
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            p.push(format!("{at}: connect_timeout: {e}"));
            DEFAULT_CONNECT_TIMEOUT
        }
        None => DEFAULT_CONNECT_TIMEOUT,
    };
    if p.len() > n {
        return None;
    }
    Some(Backend {
        name: b.name,
        uri: uri.ok()?,
        ssh_key: b.ssh_key.map(PathBuf::from),
        host_key,
        systems: b.systems,
        max_jobs,
        speed_factor,
        supported_features: b.supported_features,
        mandatory_features: b.mandatory_features,
        connect_timeout,
        store: b.store,
        untrusted_clients: b.untrusted_clients,
    })
}

fn validate_limits(l: RawLimits, p: &mut Vec<String>) -> Limits {
    let d = Limits::default();
    let mut size = |name: &str, v: Option<SizeValue>, default: u64| match v.map(size_of) {
        None => default,
        Some(Ok(0)) => {
            p.push(format!("limits.{name} must be positive"));
            default
        }
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            p.push(format!("limits.{name}: {e}"));
            default
        }
    };
    let mut out = Limits {
        max_nar_size: size("max_nar_size", l.max_nar_size, d.max_nar_size),
        max_string_size: size("max_string_size", l.max_string_size, d.max_string_size),
        max_collection_len: size(
            "max_collection_len",
            l.max_collection_len.map(SizeValue::Bytes),
            d.max_collection_len,
        ),
        max_sessions: size(
            "max_sessions",
            l.max_sessions.map(SizeValue::Bytes),
            d.max_sessions,
        ),
        max_handshakes: size(
            "max_handshakes",
            l.max_handshakes.map(SizeValue::Bytes),
            d.max_handshakes,
        ),
        max_waiting_jobs: size(
            "max_waiting_jobs",
            l.max_waiting_jobs.map(SizeValue::Bytes),
            d.max_waiting_jobs,
        ),
        handshake_timeout: d.handshake_timeout,
        // 0 is allowed: it turns pooling off.
        backend_idle_sessions: l.backend_idle_sessions.unwrap_or(d.backend_idle_sessions),
        backend_idle_timeout: d.backend_idle_timeout,
        backend_stall_timeout: d.backend_stall_timeout,
        backend_keepalive_interval: d.backend_keepalive_interval,
        max_log_size: size("max_log_size", l.max_log_size, d.max_log_size),
        timeouts: d.timeouts,
    };
    if let Some(t) = l.handshake_timeout {
        match parse_duration(&t) {
            Ok(v) => out.handshake_timeout = v,
            Err(e) => p.push(format!("limits.handshake_timeout: {e}")),
        }
    }
    if let Some(t) = l.backend_idle_timeout {
        match parse_duration(&t) {
            Ok(v) => out.backend_idle_timeout = v,
            Err(e) => p.push(format!("limits.backend_idle_timeout: {e}")),
        }
    }
    out.timeouts = timeouts("limits", l.max_silent_time, l.build_timeout, p);
    validate_liveness(
        l.backend_stall_timeout,
        l.backend_keepalive_interval,
        &mut out,
        p,
    );
    out
}

/// `max_silent_time` and `build_timeout` of `what` (`"0"`: no limit).
fn timeouts(
    what: &str,
    silent: Option<String>,
    total: Option<String>,
    p: &mut Vec<String>,
) -> super::Timeouts {
    let mut read = |name: &str, v: Option<String>| match v.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            p.push(format!("{what}.{name}: {e}"));
            None
        }
    };
    super::Timeouts {
        max_silent_time: read("max_silent_time", silent),
        build_timeout: read("build_timeout", total),
    }
}

/// The stall timeout and keepalive interval: both positive, and at least
/// two keepalives per stall timeout, so one lost answer loses no backend.
fn validate_liveness(
    stall: Option<String>,
    keepalive: Option<String>,
    out: &mut Limits,
    p: &mut Vec<String>,
) {
    let mut read =
        |name: &str, v: Option<String>, into: &mut Duration| match v.as_deref().map(parse_duration)
        {
            None => {}
            Some(Ok(d)) if d.is_zero() => p.push(format!("limits.{name} must be positive")),
            Some(Ok(d)) => *into = d,
            Some(Err(e)) => p.push(format!("limits.{name}: {e}")),
        };
    read(
        "backend_stall_timeout",
        stall,
        &mut out.backend_stall_timeout,
    );
    if keepalive.is_none() {
        // Unset: every 30 s, or 4 per stall timeout if that is shorter.
        let quarter = out.backend_stall_timeout / 4;
        out.backend_keepalive_interval = out.backend_keepalive_interval.min(quarter);
    }
    read(
        "backend_keepalive_interval",
        keepalive,
        &mut out.backend_keepalive_interval,
    );
    if out.backend_keepalive_interval * 2 > out.backend_stall_timeout {
        p.push(format!(
            "limits.backend_keepalive_interval ({:?}) must be at most half of limits.backend_stall_timeout ({:?})",
            out.backend_keepalive_interval, out.backend_stall_timeout
        ));
    }
}

fn size_of(v: SizeValue) -> Result<u64, String> {
    match v {
        SizeValue::Bytes(n) => Ok(n),
        SizeValue::Text(t) => parse_size(&t),
    }
}

/// `ssh://user@host[:port]`, `ssh-ng://user@host[:port]` or `local`.
pub fn parse_backend_uri(s: &str) -> Result<BackendUri, String> {
    if s == "local" {
        return Ok(BackendUri::Local);
    }
    #[cfg(feature = "testing")]
    if let Some(uri) = fake_uri(s) {
        return uri;
    }
    let (rest, protocol) = if let Some(rest) = s.strip_prefix("ssh://") {
        (rest, Protocol::Serve)
    } else if let Some(rest) = s.strip_prefix("ssh-ng://") {
        (rest, Protocol::Worker)
    } else {
        return Err(
            "expected ssh://user@host[:port], ssh-ng://user@host[:port] or \"local\"".into(),
        );
    };
    let (user, hostport) = rest.split_once('@').ok_or("missing user@")?;
    if user.is_empty() {
        return Err("empty user".into());
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?)
        }
        _ => (hostport, 22),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err("bad host".into());
    }
    Ok(BackendUri::Ssh {
        user: user.into(),
        host: host.into(),
        port,
        protocol,
    })
}

/// `fake://NAME` / `fake-ng://NAME` (only with the `testing` feature).
#[cfg(feature = "testing")]
fn fake_uri(s: &str) -> Option<Result<BackendUri, String>> {
    let (name, protocol) = if let Some(n) = s.strip_prefix("fake://") {
        (n, Protocol::Serve)
    } else {
        (s.strip_prefix("fake-ng://")?, Protocol::Worker)
    };
    Some(if name.is_empty() {
        Err("empty fake backend name".into())
    } else {
        Ok(BackendUri::Fake {
            name: name.into(),
            protocol,
        })
    })
}

pub fn parse_public_key(s: &str) -> Result<PublicKey, String> {
    PublicKey::from_openssh(s.trim()).map_err(|e| format!("not an OpenSSH public key ({e})"))
}

fn read_authorized_keys(path: &str) -> Result<Vec<Client>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = parse_public_key(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let name = key.comment().to_string();
        out.push(Client {
            name: if name.is_empty() {
                format!("key{}", n + 1)
            } else {
                name
            },
            key,
            trusted: true,
            timeouts: Default::default(),
        });
    }
    Ok(out)
}

/// The longest duration a config value may name (10 years: "never" in
/// practice). Longer ones are refused: deadlines computed from them
/// (`Instant + duration`) must not overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86400);

/// `"30s"`, `"5m"`, `"2h"`, `"250ms"`, or a bare number of seconds; at most
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let too_long = || {
        format!(
            "duration {s:?} is too long (at most {} days)",
            MAX_DURATION.as_secs() / 86400
        )
    };
    if num.is_empty() {
        return Err(format!("bad duration {s:?}"));
    }
    // Only digits: a parse failure is an overflow of u64.
    let n: u64 = num.parse().map_err(|_| too_long())?;
    let secs = |per: u64| n.checked_mul(per).map(Duration::from_secs);
    let d = match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" | "min" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m, h, d)")),
    }
    .ok_or_else(too_long)?;
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

/// `"200GiB"`, `"512MiB"`, `"1TB"`, `"4096"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "bad size unit in {s:?} (use B, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}
