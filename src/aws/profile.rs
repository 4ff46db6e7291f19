//! The shared credentials and config files (`~/.aws/credentials`,
//! `~/.aws/config`): one profile's static keys or `credential_process`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::Error;
use super::creds::{Credentials, Env};

/// A `credential_process` that has not answered by then is killed.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);
/// The most a `credential_process` may print.
pub const PROCESS_MAX_OUTPUT: u64 = 64 << 10;

/// Keys of profiles this chain cannot serve (they need STS or SSO).
const UNSUPPORTED: [&str; 5] = [
    "role_arn",
    "sso_session",
    "sso_start_url",
    "web_identity_token_file",
    "credential_source",
];

/// `[section]` → key → value. `config` files name profiles
/// `[profile NAME]` (and `[default]`); credentials files `[NAME]`.
pub fn parse(text: &str, config: bool) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue; // a nested sub-property (e.g. under `s3 =`)
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            current = match (config, section.strip_prefix("profile ")) {
                (true, Some(name)) => Some(name.trim().to_owned()),
                (true, None) => (section == "default").then(|| section.to_owned()),
                (false, _) => Some(section.to_owned()),
            };
            if let Some(name) = &current {
                out.entry(name.clone()).or_default();
            }
            continue;
        }
        if let (Some(name), Some((k, v))) = (&current, line.split_once('=')) {
            let props = out.entry(name.clone()).or_default();
            props.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    out
}

/// The file's text; None if it does not exist and was not named explicitly.
fn read(path: &Path, explicit: bool) -> Result<Option<String>, Error> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(None),
        Err(source) => Err(Error::File {
            path: path.to_owned(),
            source,
        }),
    }
}

fn file(env: &Env, var: &str, default: &str) -> Option<(PathBuf, bool)> {
    match env.get(var) {
        Some(p) => Some((PathBuf::from(p), true)),
        None => env.get("HOME").map(|h| (Path::new(h).join(default), false)),
    }
}

/// A profile as read from both files.
struct Found {
    /// Merged properties (the credentials file wins).
    props: HashMap<String, String>,
    /// Whether either file has the profile.
    exists: bool,
    /// The files looked at.
    looked: Vec<String>,
}

fn properties(env: &Env, name: &str) -> Result<Found, Error> {
    let sources = [
        (file(env, "AWS_CONFIG_FILE", ".aws/config"), true),
        (
            file(env, "AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
            false,
        ),
    ];
    let mut f = Found {
        props: HashMap::new(),
        exists: false,
        looked: Vec::new(),
    };
    for (path, config) in sources {
        let Some((path, named)) = path else { continue };
        f.looked.push(path.display().to_string());
        let Some(text) = read(&path, named)? else {
            continue;
        };
        if let Some(p) = parse(&text, config).remove(name) {
            f.exists = true;
            f.props.extend(p);
        }
    }
    Ok(f)
}

/// The profile's credentials; None when there is no such profile (or it
/// holds none) and none was asked for by `AWS_PROFILE`.
pub async fn load(env: &Env) -> Result<Option<Credentials>, Error> {
    let explicit = env.get("AWS_PROFILE");
    let name = explicit.unwrap_or("default");
    let Found {
        props,
        exists,
        looked,
    } = properties(env, name)?;
    let source_name = format!("profile {name:?} ({})", looked.join(", "));
    let fail = |reason: String| Error::Credentials {
        source_name: source_name.clone(),
        reason,
    };
    if let Some(id) = props.get("aws_access_key_id") {
        let secret = (props.get("aws_secret_access_key"))
            .ok_or_else(|| fail("aws_access_key_id without aws_secret_access_key".into()))?;
        return Ok(Some(Credentials {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
            session_token: props.get("aws_session_token").cloned(),
            expires: None,
        }));
    }
    if let Some(cmd) = props.get("credential_process") {
        return process(cmd, &source_name).await.map(Some);
    }
    if let Some(key) = UNSUPPORTED.iter().find(|k| props.contains_key(**k)) {
        return Err(fail(format!(
            "{key} is not supported by nix-relay; give the profile a credential_process, e.g. \
             `credential_process = aws configure export-credentials --profile {name} --format process`"
        )));
    }
    match explicit {
        Some(_) if !exists => Err(fail("no such profile".into())),
        Some(_) => Err(fail("the profile holds no credentials".into())),
        None => Ok(None),
    }
}

/// Runs `credential_process` (with `sh -c`) and reads its JSON (Version 1).
async fn process(cmd: &str, source_name: &str) -> Result<Credentials, Error> {
    let fail = |reason: String| Error::Credentials {
        source_name: format!("credential_process of {source_name}"),
        reason,
    };
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", cmd])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("starting `{cmd}`: {e}")))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let run = async {
        let mut out = Vec::new();
        (&mut stdout)
            .take(PROCESS_MAX_OUTPUT + 1)
            .read_to_end(&mut out)
            .await?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out))
    };
    let (status, out) = (tokio::time::timeout(PROCESS_TIMEOUT, run).await)
        .map_err(|_| fail(format!("no answer within {PROCESS_TIMEOUT:?}")))?
        .map_err(|e| fail(format!("running `{cmd}`: {e}")))?;
    if !status.success() {
        return Err(fail(format!("`{cmd}` failed: {status}")));
    }
    if out.len() as u64 > PROCESS_MAX_OUTPUT {
        return Err(fail(format!("printed over {PROCESS_MAX_OUTPUT} bytes")));
    }
    let version = serde_json::from_slice::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v.get("Version").and_then(|v| v.as_u64()));
    if version != Some(1) {
        return Err(fail("its output is not JSON with \"Version\": 1".into()));
    }
    super::creds::from_json(&format!("credential_process of {source_name}"), &out)
}
