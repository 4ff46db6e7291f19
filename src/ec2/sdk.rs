//! [`Ec2Api`] on aws-sdk-ec2. Credentials come from the SDK's standard
//! chain (environment, profile, web identity, ECS, instance profile). The
//! SDK's own retries are off: `api::retry` is the one retry layer.

use std::time::SystemTime;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceType, MarketType,
    ResourceType, ShutdownBehavior, SpotInstanceType, SpotMarketOptions, Tag, TagSpecification,
};
use base64::Engine;

use super::api::{ApiError, Ec2Api, ErrorKind, Instance, InstanceState, LaunchSpec, Market};
use super::{TAG_NAME, TAG_OWNER, TAG_TEMPLATE};
use crate::config::ec2::Ec2Config;

type Fut<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, ApiError>> + Send + 'a>>;

pub struct SdkApi {
    client: Client,
}

/// Builds the client: `[ec2] region`, optional `endpoint`, standard
/// credential chain.
pub async fn connect(cfg: &Ec2Config) -> SdkApi {
    let shared = loader(cfg).load().await;
    SdkApi {
        client: Client::new(&shared),
    }
}

/// Static credentials instead of the chain (the moto tests: a test cannot
/// set environment variables without `unsafe`).
#[cfg(feature = "testing")]
pub async fn connect_with_keys(cfg: &Ec2Config, access_key: &str, secret: &str) -> SdkApi {
    let creds = aws_sdk_ec2::config::Credentials::new(access_key, secret, None, None, "static");
    let shared = loader(cfg).credentials_provider(creds).load().await;
    SdkApi {
        client: Client::new(&shared),
    }
}

fn loader(cfg: &Ec2Config) -> aws_config::ConfigLoader {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(cfg.region.clone()))
        .retry_config(aws_config::retry::RetryConfig::disabled());
    if let Some(e) = &cfg.endpoint {
        loader = loader.endpoint_url(e);
    }
    loader
}

fn api_err<E, R>(e: SdkError<E, R>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match &e {
        SdkError::ServiceError(_) => ApiError::from_code(
            e.code().unwrap_or("Unknown"),
            e.message().unwrap_or_default(),
        ),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ApiError {
                kind: ErrorKind::Transient,
                code: "Transport".into(),
                message: crate::error_chain(&e),
            }
        }
        _ => ApiError {
            kind: ErrorKind::Fatal,
            code: "Client".into(),
            message: crate::error_chain(&e),
        },
    }
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

fn instance(i: &aws_sdk_ec2::types::Instance) -> Option<Instance> {
    let tags = i.tags();
    Some(Instance {
        id: i.instance_id()?.to_owned(),
        state: InstanceState::parse(i.state().and_then(|s| s.name()).map_or("", |n| n.as_str())),
        template: (tags.iter())
            .find(|t| t.key() == Some(TAG_TEMPLATE))
            .and_then(|t| t.value())
            .map(str::to_owned),
        private_ip: i.private_ip_address().map(str::to_owned),
        launched_at: i.launch_time().and_then(|t| SystemTime::try_from(*t).ok()),
    })
}

impl SdkApi {
    async fn run(&self, spec: &LaunchSpec) -> Result<Instance, ApiError> {
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(tag(TAG_OWNER, &spec.relay_id))
            .tags(tag(TAG_TEMPLATE, &spec.template))
            .tags(tag(TAG_NAME, &spec.name))
            .build();
        let market = (spec.market == Market::Spot).then(|| {
            InstanceMarketOptionsRequest::builder()
                .market_type(MarketType::Spot)
                .spot_options(
                    SpotMarketOptions::builder()
                        .spot_instance_type(SpotInstanceType::OneTime)
                        .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                        .build(),
                )
                .build()
        });
        let out = self
            .client
            .run_instances()
            .image_id(&spec.ami)
            .instance_type(InstanceType::from(spec.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .set_subnet_id(spec.subnet.clone())
            .set_security_group_ids(spec.security_group.clone().map(|g| vec![g]))
            .user_data(base64::engine::general_purpose::STANDARD.encode(&spec.user_data))
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .tag_specifications(tags)
            .set_instance_market_options(market)
            .send()
            .await
            .map_err(api_err)?;
        (out.instances().first()).and_then(instance).ok_or_else(|| {
            ApiError::from_code("EmptyResponse", "RunInstances returned no instance")
        })
    }

    async fn describe(&self, relay_id: &str) -> Result<Vec<Instance>, ApiError> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .describe_instances()
                .filters(
                    Filter::builder()
                        .name(format!("tag:{TAG_OWNER}"))
                        .values(relay_id)
                        .build(),
                )
                .set_next_token(token)
                .send()
                .await
                .map_err(api_err)?;
            for r in page.reservations() {
                out.extend(r.instances().iter().filter_map(instance));
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(out);
            }
        }
    }
}

impl Ec2Api for SdkApi {
    fn run_instance<'a>(&'a self, spec: &'a LaunchSpec) -> Fut<'a, Instance> {
        Box::pin(self.run(spec))
    }

    fn describe_owned<'a>(&'a self, relay_id: &'a str) -> Fut<'a, Vec<Instance>> {
        Box::pin(self.describe(relay_id))
    }

    fn terminate<'a>(&'a self, ids: &'a [String]) -> Fut<'a, ()> {
        Box::pin(async move {
            self.client
                .terminate_instances()
                .set_instance_ids(Some(ids.to_vec()))
                .send()
                .await
                .map_err(api_err)?;
            Ok(())
        })
    }

    fn vcpus<'a>(&'a self, instance_type: &'a str) -> Fut<'a, Option<u32>> {
        Box::pin(async move {
            let out = self
                .client
                .describe_instance_types()
                .instance_types(InstanceType::from(instance_type))
                .send()
                .await
                .map_err(api_err)?;
            Ok((out.instance_types().first())
                .and_then(|t| t.v_cpu_info())
                .and_then(|v| v.default_v_cpus())
                .and_then(|n| u32::try_from(n).ok()))
        })
    }
}
