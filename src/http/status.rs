//! `/status` (JSON) and `/metrics` (Prometheus text); `nix-relay status`
//! renders `/status` as a table (`crate::status`).

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::session::Core;

#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub version: &'static str,
    pub uptime_seconds: u64,
    #[serde(flatten)]
    pub scheduler: crate::scheduler::Snapshot,
    pub flights: Vec<crate::session::flight::FlightStatus>,
    pub recent_builds: Vec<crate::session::BuildRecord>,
    pub store_bytes: u64,
    pub store_max_bytes: Option<u64>,
    /// NAR bytes by direction since the relay started.
    pub traffic: crate::metrics::Traffic,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ec2: Option<crate::ec2::Status>,
}

pub fn collect(relay: &Core) -> Status {
    Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: relay.started().elapsed().as_secs(),
        scheduler: relay.scheduler().snapshot(),
        flights: relay.flights().snapshot(),
        recent_builds: relay.recent_builds(),
        store_bytes: relay.store().total_bytes(),
        store_max_bytes: relay.store().settings().max_size,
        traffic: crate::metrics::traffic(),
        ec2: crate::ec2::status(),
    }
}

/// `/status` and, with a recorder installed, `/metrics`.
pub fn router(relay: Arc<Core>, metrics: Option<PrometheusHandle>) -> Router {
    let r = Router::new().route(
        "/status",
        get(move || {
            let relay = relay.clone();
            async move {
                let body = serde_json::to_string(&collect(&relay))
                    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
                ([(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
        }),
    );
    match metrics {
        Some(h) => r.route(
            "/metrics",
            get(move || {
                let h = h.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        h.render() + &crate::ec2::metrics_text(),
                    )
                        .into_response()
                }
            }),
        ),
        None => r,
    }
}
