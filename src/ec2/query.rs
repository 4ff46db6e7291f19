//! [`Ec2Api`] on EC2's Query API (`Version=2016-11-15`): a form-encoded,
//! SigV4-signed POST per call over `crate::aws`, XML replies decoded by
//! `query_xml`. Credentials: `aws::creds`' chain. No retries here:
//! `api::retry` is the one retry layer.

use std::time::SystemTime;

use base64::Engine;
use bytes::Bytes;

use super::api::{ApiError, Ec2Api, ErrorKind, Instance, LaunchSpec, Market, TypeInfo};
use super::query_xml;
use super::{TAG_NAME, TAG_OWNER, TAG_TEMPLATE};
use crate::aws::http::{Call, Endpoint, HttpClient, MAX_REPLY_BYTES, SERVICE_TIMEOUTS};
use crate::aws::sigv4::{self, Scope};
use crate::aws::{self, Credentials, Provider};
use crate::config::ec2::Ec2Config;

pub const API_VERSION: &str = "2016-11-15";
/// DescribeInstances' `MaxResults` (EC2 allows 5–1000).
pub const PAGE_SIZE: u32 = 100;
/// Pages followed in one DescribeInstances before giving up (a relay owns
/// a handful of instances; this only stops a token loop).
pub const MAX_PAGES: usize = 100;

type Fut<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, ApiError>> + Send + 'a>>;
type Params = Vec<(String, String)>;

pub struct QueryApi {
    endpoint: Endpoint,
    region: String,
    http: HttpClient,
    creds: Provider,
    page_size: u32,
}

/// `https://ec2.<region>.amazonaws.com` (`.com.cn` in China), or `[ec2]
/// endpoint`.
fn endpoint(cfg: &Ec2Config) -> Result<Endpoint, aws::Error> {
    match &cfg.endpoint {
        Some(url) => Endpoint::parse(url),
        None => {
            let suffix = if cfg.region.starts_with("cn-") {
                ".cn"
            } else {
                ""
            };
            Endpoint::parse(&format!("https://ec2.{}.amazonaws.com{suffix}", cfg.region))
        }
    }
}

/// The client for `[ec2]`, with the credential chain over the process's
/// environment (see `aws::creds`).
pub fn connect(cfg: &Ec2Config) -> Result<QueryApi, aws::Error> {
    with_provider(cfg, Provider::chain(aws::creds::Env::process()))
}

/// Fixed credentials instead of the chain (the moto tests: a test cannot
/// set environment variables without `unsafe`).
#[cfg(feature = "testing")]
pub fn connect_with_keys(
    cfg: &Ec2Config,
    access_key: &str,
    secret: &str,
) -> Result<QueryApi, aws::Error> {
    let creds = Credentials {
        access_key_id: access_key.into(),
        secret_access_key: secret.into(),
        session_token: None,
        expires: None,
    };
    with_provider(cfg, Provider::fixed(creds))
}

fn with_provider(cfg: &Ec2Config, creds: Provider) -> Result<QueryApi, aws::Error> {
    Ok(QueryApi {
        endpoint: endpoint(cfg)?,
        region: cfg.region.clone(),
        http: HttpClient::new(SERVICE_TIMEOUTS),
        creds,
        page_size: PAGE_SIZE,
    })
}

/// A transport, credential or decoding failure as the retry layer sees it.
fn local_err(e: aws::Error) -> ApiError {
    let (kind, code) = match &e {
        _ if e.is_transient() => (ErrorKind::Transient, "Transport"),
        aws::Error::NoCredentials { .. }
        | aws::Error::Credentials { .. }
        | aws::Error::CredentialsFetch { .. } => (ErrorKind::Fatal, "Credentials"),
        aws::Error::TooLarge { .. } | aws::Error::Xml(_) => (ErrorKind::Fatal, "BadReply"),
        _ => (ErrorKind::Fatal, "Client"),
    };
    ApiError {
        kind,
        code: code.into(),
        message: crate::error_chain(&e),
    }
}

/// A non-200 reply: its `<Errors>` code, else the HTTP status (429 and
/// 5xx are worth retrying).
pub fn status_err(status: u16, body: &[u8]) -> ApiError {
    let doc = std::str::from_utf8(body)
        .ok()
        .and_then(|t| aws::xml::parse(t).ok());
    if let Some((code, message)) = doc.as_ref().and_then(query_xml::error) {
        return ApiError::from_code(&code, message);
    }
    let kind = match status {
        429 => ErrorKind::Throttled,
        500..=599 => ErrorKind::Transient,
        _ => ErrorKind::Fatal,
    };
    ApiError {
        kind,
        code: format!("HTTP{status}"),
        message: format!("HTTP {status} without an EC2 error document"),
    }
}

fn p(k: impl Into<String>, v: impl Into<String>) -> (String, String) {
    (k.into(), v.into())
}

/// RunInstances' parameters: one instance, tags, terminate on shutdown,
/// spot one-time if asked, user data base64.
pub fn run_params(spec: &LaunchSpec) -> Params {
    let user_data = base64::engine::general_purpose::STANDARD.encode(&spec.user_data);
    let mut v = vec![
        p("ImageId", &spec.ami),
        p("InstanceType", &spec.instance_type),
        p("MinCount", "1"),
        p("MaxCount", "1"),
        p("UserData", user_data),
        p("InstanceInitiatedShutdownBehavior", "terminate"),
        p("TagSpecification.1.ResourceType", "instance"),
    ];
    let tags = [
        (TAG_OWNER, &spec.relay_id),
        (TAG_TEMPLATE, &spec.template),
        (TAG_NAME, &spec.name),
    ];
    for (i, (k, val)) in tags.into_iter().enumerate() {
        v.push(p(format!("TagSpecification.1.Tag.{}.Key", i + 1), k));
        v.push(p(format!("TagSpecification.1.Tag.{}.Value", i + 1), val));
    }
    if let Some(s) = &spec.subnet {
        v.push(p("SubnetId", s));
    }
    if let Some(g) = &spec.security_group {
        v.push(p("SecurityGroupId.1", g));
    }
    if spec.market == Market::Spot {
        v.push(p("InstanceMarketOptions.MarketType", "spot"));
        v.push(p(
            "InstanceMarketOptions.SpotOptions.SpotInstanceType",
            "one-time",
        ));
        v.push(p(
            "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior",
            "terminate",
        ));
    }
    v
}

impl QueryApi {
    /// One signed call; the reply's XML root on HTTP 200.
    async fn call(
        &self,
        action: &'static str,
        mut params: Params,
    ) -> Result<aws::xml::Element, ApiError> {
        params.push(p("Action", action));
        params.push(p("Version", API_VERSION));
        let body = sigv4::canonical_query(&params);
        let creds = self.creds.get().await.map_err(local_err)?;
        let headers = self.sign(&creds, &body);
        let call = Call {
            method: "POST",
            path_and_query: "/",
            headers: &headers,
            body: Bytes::from(body),
            max_reply: MAX_REPLY_BYTES,
        };
        let resp = self
            .http
            .send(&self.endpoint, call)
            .await
            .map_err(local_err)?;
        tracing::debug!(
            action,
            status = resp.status,
            bytes = resp.body.len(),
            "EC2 call"
        );
        if resp.status != 200 {
            return Err(status_err(resp.status, &resp.body));
        }
        let text = std::str::from_utf8(&resp.body)
            .map_err(|_| local_err(aws::Error::Xml("not UTF-8".into())))?;
        aws::xml::parse(text).map_err(local_err)
    }

    fn sign(&self, creds: &Credentials, body: &str) -> Params {
        let mut req = sigv4::Request {
            method: "POST".into(),
            path: "/".into(),
            query: Vec::new(),
            headers: vec![
                p("Host", self.endpoint.authority()),
                p(
                    "Content-Type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
            ],
            payload_sha256: sigv4::sha256_hex(body.as_bytes()),
        };
        let scope = Scope {
            region: &self.region,
            service: "ec2",
        };
        req.sign(creds, scope, SystemTime::now());
        req.headers
    }

    async fn run(&self, spec: &LaunchSpec) -> Result<Instance, ApiError> {
        let root = self.call("RunInstances", run_params(spec)).await?;
        query_xml::run_instances(&root).ok_or_else(|| {
            ApiError::from_code("EmptyResponse", "RunInstances returned no instance")
        })
    }

    async fn describe(&self, relay_id: &str) -> Result<Vec<Instance>, ApiError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut params = vec![
                p("Filter.1.Name", format!("tag:{TAG_OWNER}")),
                p("Filter.1.Value.1", relay_id),
                p("MaxResults", self.page_size.to_string()),
            ];
            if let Some(t) = token.take() {
                params.push(p("NextToken", t));
            }
            let root = self.call("DescribeInstances", params).await?;
            let (page, next) = query_xml::describe_instances(&root);
            out.extend(page);
            match next {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
        Err(ApiError::from_code(
            "TooManyPages",
            format!("DescribeInstances still had a nextToken after {MAX_PAGES} pages"),
        ))
    }
}

impl Ec2Api for QueryApi {
    fn run_instance<'a>(&'a self, spec: &'a LaunchSpec) -> Fut<'a, Instance> {
        Box::pin(self.run(spec))
    }

    fn describe_owned<'a>(&'a self, relay_id: &'a str) -> Fut<'a, Vec<Instance>> {
        Box::pin(self.describe(relay_id))
    }

    fn terminate<'a>(&'a self, ids: &'a [String]) -> Fut<'a, ()> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(());
            }
            let params = (ids.iter().enumerate())
                .map(|(i, id)| p(format!("InstanceId.{}", i + 1), id))
                .collect();
            self.call("TerminateInstances", params).await.map(|_| ())
        })
    }

    fn instance_type<'a>(&'a self, instance_type: &'a str) -> Fut<'a, Option<TypeInfo>> {
        Box::pin(async move {
            let params = vec![p("InstanceType.1", instance_type)];
            let root = self.call("DescribeInstanceTypes", params).await?;
            Ok(query_xml::instance_type(&root))
        })
    }
}

#[cfg(feature = "testing")]
impl QueryApi {
    /// A smaller DescribeInstances page (moto tests of paging; EC2's minimum is 5).
    pub fn with_page_size(mut self, n: u32) -> QueryApi {
        self.page_size = n;
        self
    }
}
