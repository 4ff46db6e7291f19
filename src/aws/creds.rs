//! AWS credentials: where they come from and when they are fetched again.
//!
//! The chain, first match wins (each source below is tried only if the
//! ones before it have nothing):
//!
//! 1. environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional
//!    `AWS_SESSION_TOKEN`;
//! 2. the shared files' profile `AWS_PROFILE` (else `default`):
//!    `AWS_SHARED_CREDENTIALS_FILE` (else `~/.aws/credentials`) and
//!    `AWS_CONFIG_FILE` (else `~/.aws/config`), static keys or
//!    `credential_process`; a profile that needs assume-role, SSO or web
//!    identity is refused with that reason (`profile`);
//! 3. ECS/EKS container credentials (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`
//!    or `_FULL_URI`, optional `AWS_CONTAINER_AUTHORIZATION_TOKEN`);
//! 4. the EC2 instance role over IMDSv2, unless
//!    `AWS_EC2_METADATA_DISABLED=true` (`imds`).
//!
//! Credentials that expire are fetched again [`REFRESH_BEFORE`] their
//! expiry; if that fails while they are still valid, they are used on.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::Error;

/// Temporary credentials are renewed this long before they expire.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// None: they do not expire.
    pub expires: Option<SystemTime>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires", &self.expires)
            .finish()
    }
}

impl Credentials {
    fn fresh_at(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|e| {
            e.duration_since(now)
                .is_ok_and(|left| left > REFRESH_BEFORE)
        })
    }

    fn valid_at(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// The environment the chain reads: the process's, or a test's.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    pub fn process() -> Env {
        Env {
            vars: std::env::vars().collect(),
        }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Env {
        Env {
            vars: (pairs.into_iter())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// A variable, if set and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

enum Source {
    Fixed(Credentials),
    Chain(Env),
}

/// Hands out credentials, loading them on first use and again before
/// temporary ones expire.
pub struct Provider {
    source: Source,
    cached: tokio::sync::Mutex<Option<Credentials>>,
}

impl Provider {
    /// The chain described in the module doc, over `env`.
    pub fn chain(env: Env) -> Provider {
        Provider {
            source: Source::Chain(env),
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// Always these credentials.
    pub fn fixed(creds: Credentials) -> Provider {
        Provider {
            source: Source::Fixed(creds),
            cached: tokio::sync::Mutex::new(None),
        }
    }

    pub async fn get(&self) -> Result<Credentials, Error> {
        let env = match &self.source {
            Source::Fixed(c) => return Ok(c.clone()),
            Source::Chain(env) => env,
        };
        let mut cached = self.cached.lock().await;
        let now = SystemTime::now();
        if let Some(c) = cached.as_ref().filter(|c| c.fresh_at(now)) {
            return Ok(c.clone());
        }
        match load(env).await {
            Ok(c) => {
                tracing::debug!(access_key_id = %c.access_key_id, expires = ?c.expires, "AWS credentials loaded");
                *cached = Some(c.clone());
                Ok(c)
            }
            Err(e) => match cached.as_ref().filter(|c| c.valid_at(now)) {
                Some(c) => {
                    tracing::warn!(error = %crate::error_chain(&e), "renewing AWS credentials failed; using the current ones until they expire");
                    Ok(c.clone())
                }
                None => Err(e),
            },
        }
    }
}

/// One pass down the chain.
pub async fn load(env: &Env) -> Result<Credentials, Error> {
    let mut tried = Vec::new();
    if let Some(c) = from_env(env)? {
        return Ok(c);
    }
    tried.push("environment");
    if let Some(c) = super::profile::load(env).await? {
        return Ok(c);
    }
    tried.push("shared credentials/config files");
    if let Some(c) = super::imds::container(env).await? {
        return Ok(c);
    }
    tried.push("container credentials (not set)");
    if env
        .get("AWS_EC2_METADATA_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        tried.push("EC2 instance metadata (disabled)");
        return Err(Error::NoCredentials {
            tried: tried.join(", "),
        });
    }
    super::imds::instance_role(env).await
}

fn from_env(env: &Env) -> Result<Option<Credentials>, Error> {
    let id = env.get("AWS_ACCESS_KEY_ID");
    let secret = env.get("AWS_SECRET_ACCESS_KEY");
    match (id, secret) {
        (None, None) => Ok(None),
        (Some(id), Some(secret)) => Ok(Some(Credentials {
            access_key_id: id.to_owned(),
            secret_access_key: secret.to_owned(),
            session_token: env.get("AWS_SESSION_TOKEN").map(str::to_owned),
            expires: None,
        })),
        _ => Err(Error::Credentials {
            source_name: "the environment".into(),
            reason: "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together".into(),
        }),
    }
}

/// The JSON credentials document of IMDS, ECS and `credential_process`
/// (`Token` or `SessionToken`; `Expiration` ISO 8601, optional).
pub(super) fn from_json(source_name: &str, body: &[u8]) -> Result<Credentials, Error> {
    let bad = |reason: String| Error::Credentials {
        source_name: source_name.to_owned(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).filter(|s| !s.is_empty());
    if let Some(code) = field("Code").filter(|c| *c != "Success") {
        let msg = field("Message").unwrap_or("");
        return Err(bad(format!("{code}: {msg}")));
    }
    let expires = match field("Expiration") {
        Some(t) => Some(
            super::time::parse_iso8601(t)
                .ok_or_else(|| bad(format!("Expiration {t:?} is not an ISO 8601 instant")))?,
        ),
        None => None,
    };
    Ok(Credentials {
        access_key_id: field("AccessKeyId")
            .ok_or_else(|| bad("no AccessKeyId".into()))?
            .to_owned(),
        secret_access_key: (field("SecretAccessKey"))
            .ok_or_else(|| bad("no SecretAccessKey".into()))?
            .to_owned(),
        session_token: field("Token").or(field("SessionToken")).map(str::to_owned),
        expires,
    })
}
