//! Credentials from metadata endpoints: the EC2 instance role over IMDSv2
//! and ECS/EKS container credentials.

use std::time::Duration;

use bytes::Bytes;

use super::Error;
use super::creds::{Credentials, Env, from_json};
use super::http::{Call, Endpoint, HttpClient, Timeouts};

/// Metadata endpoints are local: a slow one is absent.
pub const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(1),
    call: Duration::from_secs(5),
};
/// The largest metadata reply read (a credentials document is ~1.5 KiB).
pub const MAX_REPLY: usize = 64 << 10;
/// How long an IMDSv2 session token is asked to live.
const TOKEN_TTL_SECONDS: &str = "21600";
const IMDS: &str = "http://169.254.169.254";
const ECS: &str = "http://169.254.170.2";
const ROLE_PATH: &str = "/latest/meta-data/iam/security-credentials/";

async fn call(
    http: &HttpClient,
    ep: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<(u16, Bytes), Error> {
    let call = Call {
        method,
        path_and_query: path,
        headers,
        body: Bytes::new(),
        max_reply: MAX_REPLY,
    };
    let r = http.send(ep, call).await?;
    Ok((r.status, r.body))
}

fn fetch_err(source_name: &'static str) -> impl Fn(Error) -> Error {
    move |e| Error::CredentialsFetch {
        source_name,
        source: Box::new(e),
    }
}

/// The instance role's credentials over IMDSv2
/// (`AWS_EC2_METADATA_SERVICE_ENDPOINT` overrides the address).
pub async fn instance_role(env: &Env) -> Result<Credentials, Error> {
    const NAME: &str = "EC2 instance metadata (IMDSv2), after the environment, shared files and container credentials had none";
    role(env).await.map_err(fetch_err(NAME))
}

async fn role(env: &Env) -> Result<Credentials, Error> {
    let ep = Endpoint::parse(env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or(IMDS))?;
    let http = HttpClient::new(TIMEOUTS);
    let ttl = [(
        "X-aws-ec2-metadata-token-ttl-seconds".to_owned(),
        TOKEN_TTL_SECONDS.to_owned(),
    )];
    let (status, token) = call(&http, &ep, "PUT", "/latest/api/token", &ttl).await?;
    let status_err = |step: &str, status: u16| Error::Credentials {
        source_name: "EC2 instance metadata".into(),
        reason: format!("{step}: HTTP {status}"),
    };
    if status != 200 {
        return Err(status_err("getting an IMDSv2 token", status));
    }
    let token = String::from_utf8_lossy(&token).trim().to_owned();
    let auth = [("X-aws-ec2-metadata-token".to_owned(), token)];
    let (status, roles) = call(&http, &ep, "GET", ROLE_PATH, &auth).await?;
    if status == 404 {
        return Err(Error::Credentials {
            source_name: "EC2 instance metadata".into(),
            reason: "the instance has no IAM role".into(),
        });
    }
    if status != 200 {
        return Err(status_err("listing the instance's role", status));
    }
    let roles = String::from_utf8_lossy(&roles);
    let name = roles.lines().next().unwrap_or("").trim();
    if name.is_empty() || name.contains(['/', '?', '%']) {
        return Err(status_err("the role name is empty or odd", status));
    }
    let path = format!("{ROLE_PATH}{name}");
    let (status, doc) = call(&http, &ep, "GET", &path, &auth).await?;
    if status != 200 {
        return Err(status_err("fetching the role's credentials", status));
    }
    from_json("EC2 instance metadata", &doc)
}

/// ECS/EKS container credentials, if the environment names an endpoint.
pub async fn container(env: &Env) -> Result<Option<Credentials>, Error> {
    let url = match (
        env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
        env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
    ) {
        (Some(rel), _) => format!("{ECS}{rel}"),
        (None, Some(full)) => full.to_owned(),
        (None, None) => return Ok(None),
    };
    let fetch = async {
        let mut headers = Vec::new();
        let token = match env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
            Some(f) => Some(std::fs::read_to_string(f).map_err(|source| Error::File {
                path: f.into(),
                source,
            })?),
            None => env
                .get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
                .map(str::to_owned),
        };
        if let Some(t) = token {
            headers.push(("Authorization".to_owned(), t.trim().to_owned()));
        }
        let (ep, path) = Endpoint::split(&url)?;
        let path = if path.is_empty() { "/" } else { path };
        let (status, doc) = call(&HttpClient::new(TIMEOUTS), &ep, "GET", path, &headers).await?;
        if status != 200 {
            return Err(Error::Credentials {
                source_name: "container credentials".into(),
                reason: format!("{url}: HTTP {status}"),
            });
        }
        from_json("container credentials", &doc)
    };
    fetch
        .await
        .map(Some)
        .map_err(fetch_err("container credentials"))
}
