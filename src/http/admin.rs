//! The admin endpoint: loopback-only HTTP for operators and
//! `nix-relay drain` / `undrain`. It has no authentication, so config
//! validation refuses a non-loopback `[admin] listen`.
//!
//! * `GET /admin/backends` — the scheduler's backends (as in `/status`);
//! * `POST /admin/backends/NAME/drain` — finish running builds, take no new;
//! * `POST /admin/backends/NAME/undrain` — take new builds again.
//!
//! Replies are JSON; an unknown NAME is a 404 naming the known backends.
//!
//! A POST must carry `Content-Type: application/json` and a JSON object
//! body (`{}` will do), at most [`MAX_BODY_BYTES`]: a web page the relay
//! host's browser visits can send a cross-site POST without a body or as a
//! form, but not as JSON without a CORS preflight, which this endpoint
//! never answers. Anything else is refused (415 or 400) with the reason.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;

use crate::scheduler::Scheduler;

/// Largest admin request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 4096;

pub fn router(sched: Arc<Scheduler>) -> Router {
    Router::new()
        .route("/admin/backends", get(list))
        .route("/admin/backends/{name}/drain", post(drain))
        .route("/admin/backends/{name}/undrain", post(undrain))
        .fallback(|| async {
            reply(
                StatusCode::NOT_FOUND,
                &json!({"error": "no such admin route"}),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(sched)
}

/// Binds `addr` (refusing a non-loopback one) and serves the admin routes
/// in a background task.
pub async fn spawn(addr: SocketAddr, sched: Arc<Scheduler>) -> std::io::Result<SocketAddr> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("admin listen {addr}: loopback addresses only"),
        ));
    }
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = crate::http::serve(listener, router(sched)).await {
            tracing::error!(error = %e, "admin endpoint stopped");
        }
    });
    Ok(bound)
}

fn reply(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn list(State(sched): State<Arc<Scheduler>>) -> Response {
    reply(
        StatusCode::OK,
        &json!({ "backends": sched.snapshot().backends }),
    )
}

async fn drain(
    State(sched): State<Arc<Scheduler>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    refusal(&headers, &body).unwrap_or_else(|| set_drain(&sched, &name, true))
}

async fn undrain(
    State(sched): State<Arc<Scheduler>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    refusal(&headers, &body).unwrap_or_else(|| set_drain(&sched, &name, false))
}

/// The refusal of anything but `Content-Type: application/json` with a
/// JSON object body (which a cross-site request cannot send without a
/// preflight); None: accepted.
fn refusal(headers: &HeaderMap, body: &[u8]) -> Option<Response> {
    let ctype = (headers.get(header::CONTENT_TYPE))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ctype.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        let error = format!(
            "admin POSTs need Content-Type: application/json (got {:?}) and a JSON object body such as {{}}",
            ctype
        );
        return Some(reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &json!({ "error": error }),
        ));
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) if v.is_object() => None,
        _ => Some(reply(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "the body must be a JSON object, such as {}" }),
        )),
    }
}

fn set_drain(sched: &Arc<Scheduler>, name: &str, on: bool) -> Response {
    if !sched.drain(name, on) {
        let known: Vec<String> = sched
            .snapshot()
            .backends
            .into_iter()
            .map(|b| b.name)
            .collect();
        let error = format!("no backend named {name:?}; known: {}", known.join(", "));
        return reply(StatusCode::NOT_FOUND, &json!({ "error": error }));
    }
    tracing::info!(backend = name, draining = on, "admin: drain set");
    let b = sched
        .snapshot()
        .backends
        .into_iter()
        .find(|b| b.name == name);
    reply(
        StatusCode::OK,
        &json!({
            "backend": name,
            "admin": b.as_ref().map(|b| b.admin),
            "running": b.as_ref().map(|b| b.running),
        }),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Backend, BackendUri};
    use crate::http::client::{http_post_json, http_request, http_send};

    fn backend(name: &str) -> Backend {
        Backend {
            name: name.into(),
            uri: BackendUri::Local,
            ssh_key: None,
            host_key: None,
            systems: vec!["x".into()],
            max_jobs: 1,
            speed_factor: 1.0,
            supported_features: vec![],
            mandatory_features: vec![],
            connect_timeout: Duration::from_secs(5),
            store: None,
            untrusted_clients: false,
        }
    }

    async fn served() -> (Arc<Scheduler>, String) {
        let sched = Scheduler::new(vec![backend("h1"), backend("h2")], 10);
        let addr = spawn("127.0.0.1:0".parse().unwrap(), sched.clone())
            .await
            .unwrap();
        (sched, format!("http://{addr}"))
    }

    #[tokio::test]
    async fn drain_and_undrain_change_the_backend_and_say_so() {
        let (sched, url) = served().await;
        let (status, body) = http_post_json(&format!("{url}/admin/backends/h1/drain"), &json!({}))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["admin"], "draining");
        assert_eq!(sched.snapshot().backends[0].admin, "draining");
        let (status, _) = http_post_json(&format!("{url}/admin/backends/h1/undrain"), &json!({}))
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(sched.snapshot().backends[0].admin, "active");
        let (_, list) = http_request("GET", &format!("{url}/admin/backends"))
            .await
            .unwrap();
        assert!(list.contains("\"h2\""), "{list}");
    }

    #[tokio::test]
    async fn an_unknown_backend_is_a_404_naming_the_known_ones() {
        let (_sched, url) = served().await;
        let (status, body) = http_post_json(&format!("{url}/admin/backends/h9/drain"), &json!({}))
            .await
            .unwrap();
        assert_eq!(status, 404);
        assert!(
            body.contains("no backend named \\\"h9\\\"; known: h1, h2"),
            "{body}"
        );
        let (status, _) = http_request("GET", &format!("{url}/admin/backends/h1/drain"))
            .await
            .unwrap();
        assert_eq!(status, 405, "drain is a POST");
    }

    #[tokio::test]
    async fn a_post_a_cross_site_page_could_send_is_refused_and_changes_nothing() {
        let (sched, url) = served().await;
        let drain = format!("{url}/admin/backends/h1/drain");
        let (status, body) = http_request("POST", &drain).await.unwrap();
        assert_eq!(status, 415, "bodyless: {body}");
        assert!(body.contains("Content-Type: application/json"), "{body}");
        for (ctype, payload) in [
            ("application/x-www-form-urlencoded", &b"a=b"[..]),
            ("text/plain", &b"{}"[..]),
            ("multipart/form-data; boundary=x", &b"--x--"[..]),
        ] {
            let (status, body) = http_send("POST", &drain, Some((ctype, payload)))
                .await
                .unwrap();
            assert_eq!(status, 415, "{ctype}: {body}");
        }
        for bad in [&b""[..], b"not json", b"[1]"] {
            let (status, body) = http_send("POST", &drain, Some(("application/json", bad)))
                .await
                .unwrap();
            assert_eq!(status, 400, "{bad:?}: {body}");
        }
        assert_eq!(sched.snapshot().backends[0].admin, "active");
        let json = Some(("application/json; charset=utf-8", &b"{}"[..]));
        let (status, body) = http_send("POST", &drain, json).await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(sched.snapshot().backends[0].admin, "draining");
    }

    #[tokio::test]
    async fn a_non_loopback_address_is_refused() {
        let sched = Scheduler::new(vec![backend("h1")], 10);
        let err = spawn("0.0.0.0:0".parse().unwrap(), sched)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
    }
}
