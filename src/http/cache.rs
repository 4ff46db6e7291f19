//! The HTTP binary cache: the relay store's public entries, served read-only
//! in Nix's binary-cache layout (`--option substituters http://relay:port`).
//!
//! ```text
//! GET|HEAD /nix-cache-info          <root>/nix-cache-info, or DEFAULT_CACHE_INFO
//! GET|HEAD /<32 nix32>.narinfo      <root>/<hash>.narinfo (else upstream's, live: see HttpState)
//! GET|HEAD /nar/<52 nix32>.nar[.zst|.xz]   <root>/nar/<file>, streamed
//! GET|HEAD /nar/live/<32 nix32>.nar  a pulled-through NAR, uncompressed (`upstream::live`)
//! GET|HEAD /log/<drv base name>     <root>/log/<base>.zst, decompressed (`nix log`)
//! GET|HEAD /healthz                 "ok\n"
//! anything else                     404
//! ```
//! Invariant: a file path is only ever built from a name that passed
//! [`narinfo_hash`] or [`nar_file_name`] (fixed length, nix32 alphabet,
//! fixed suffix) or, for a log, a store path base name, so nothing outside those two shapes — `meta/`, `private/`,
//! `tmp/`, `..` — is reachable whatever the URL. NARs are streamed in
//! [`CHUNK`]-byte pieces; memory per request is bounded.

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::TryStreamExt;
use tokio::fs::File;
use tokio_util::io::ReaderStream;

use crate::wire::hash::NIX32_ALPHABET;

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;

/// Served at `/nix-cache-info` when the store has no such file.
pub const DEFAULT_CACHE_INFO: &str = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";
/// Read size when streaming a file body.
pub const CHUNK: usize = 64 << 10;

const NARINFO_TYPE: &str = "text/x-nix-narinfo";
const NAR_TYPE: &str = "application/x-nix-nar";
const CACHE_INFO_TYPE: &str = "text/x-nix-cache-info";
const TEXT_TYPE: &str = "text/plain; charset=utf-8";

/// Length of a store path's hash part.
const HASH_LEN: usize = 32;
/// Length of a nix32 sha256 (a NAR's file hash).
const FILE_HASH_LEN: usize = 52;
/// The NAR file suffixes served (none, zstd, xz).
const NAR_SUFFIXES: [&str; 3] = [".nar", ".nar.zst", ".nar.xz"];

/// Called with the hash part of a narinfo that was served.
pub type NarinfoHook = Arc<dyn Fn(&str) + Send + Sync>;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The store directory (normally `<state_dir>/cache`).
    pub root: PathBuf,
    /// Called with the hash part of every narinfo served (GET or HEAD,
    /// status 200), e.g. for LRU bookkeeping or metrics. Runs on the request
    /// task: keep it quick and non-blocking.
    pub on_narinfo_hit: Option<NarinfoHook>,
    /// Pull-through: a narinfo missing here that upstream has is served at
    /// once as a live entry whose NAR URL (`nar/live/<hash>.nar`) streams
    /// the fetch as it comes (verified and stored in the public scope
    /// meanwhile, once however many ask); absent upstream, or upstream
    /// failing, a 404.
    pub upstream: Option<Arc<crate::upstream::Upstream>>,
}

impl HttpState {
    /// State serving `root` with no narinfo hook.
    pub fn new(root: impl Into<PathBuf>) -> HttpState {
        HttpState {
            root: root.into(),
            on_narinfo_hit: None,
            upstream: None,
        }
    }
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("root", &self.root)
            .field("on_narinfo_hit", &self.on_narinfo_hit.is_some())
            .field("upstream", &self.upstream)
            .finish()
    }
}

/// The binary-cache routes plus a 404 fallback, with one debug log line per
/// request. Routes merged in later (`Router::merge`) take precedence over
/// the `/{file}` catch-all when static; they are not logged by this layer.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/nix-cache-info", get(cache_info))
        .route("/healthz", get(healthz))
        .route("/{file}", get(narinfo))
        .route("/nar/{file}", get(nar))
        .route("/nar/live/{file}", get(live_nar))
        .route("/log/{file}", get(log))
        .fallback(fallback)
        .layer(middleware::from_fn(log_request))
        .with_state(Arc::new(state))
}

/// Serves `router` on `listener` (HTTP/1.1) until the listener fails or the
/// task is dropped. Transient accept errors are retried by axum.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> io::Result<()> {
    use axum::serve::ListenerExt;
    // Headers and body go out in separate writes; without TCP_NODELAY the
    // body of a small response waits for the client's delayed ACK (~40 ms).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("set_nodelay failed: {e}");
        }
    });
    axum::serve(listener, router).await
}

/// The hash part of `<hash>.narinfo`, if `file` is exactly that shape.
pub fn narinfo_hash(file: &str) -> Option<&str> {
    let hash = file.strip_suffix(".narinfo")?;
    is_nix32(hash, HASH_LEN).then_some(hash)
}

/// `file` itself if it is `<52 nix32>.nar`, `.nar.zst` or `.nar.xz`.
pub fn nar_file_name(file: &str) -> Option<&str> {
    let (hash, suffix) = file.split_at_checked(FILE_HASH_LEN)?;
    (is_nix32(hash, FILE_HASH_LEN) && NAR_SUFFIXES.contains(&suffix)).then_some(file)
}

fn is_nix32(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| NIX32_ALPHABET.contains(&b))
}

async fn narinfo(
    State(state): State<Arc<HttpState>>,
    file: Result<UrlPath<String>, PathRejection>,
) -> Response {
    let Ok(UrlPath(file)) = file else {
        return not_found();
    };
    let Some(hash) = narinfo_hash(&file) else {
        return not_found();
    };
    let file = state.root.join(format!("{hash}.narinfo"));
    let mut response = serve_file(&file, NARINFO_TYPE).await;
    if response.status() == StatusCode::NOT_FOUND
        && let Some(upstream) = &state.upstream
        && let Some(live) = upstream.live_narinfo(hash).await
    {
        response = (StatusCode::OK, [(CONTENT_TYPE, NARINFO_TYPE)], live).into_response();
    }
    if response.status() == StatusCode::OK
        && let Some(hook) = &state.on_narinfo_hit
    {
        hook(hash);
    }
    response
}

/// A pulled-through NAR, uncompressed: followed while it is fetched, else
/// from the store, else fetched now. A fetch that fails mid-body cuts the
/// body short (the client sees fewer bytes than Content-Length).
async fn live_nar(
    State(state): State<Arc<HttpState>>,
    file: Result<UrlPath<String>, PathRejection>,
) -> Response {
    let Ok(UrlPath(file)) = file else {
        return not_found();
    };
    let Some(hash) = file.strip_suffix(".nar").filter(|h| is_nix32(h, HASH_LEN)) else {
        return not_found();
    };
    let Some(upstream) = &state.upstream else {
        return not_found();
    };
    match upstream.live_nar(hash).await {
        Ok(Some(nar)) => {
            let source = if nar.live { "live" } else { "stored" };
            let body =
                (nar.body).inspect_ok(move |b| crate::metrics::http_nar_bytes(source, b.len()));
            body_response(body, nar.size, NAR_TYPE)
        }
        Ok(None) => not_found(),
        Err(e) => {
            let e = io::Error::other(crate::error_chain(&e));
            internal_error(Path::new(&file), &e)
        }
    }
}

async fn nar(
    State(state): State<Arc<HttpState>>,
    file: Result<UrlPath<String>, PathRejection>,
) -> Response {
    let Ok(UrlPath(file)) = file else {
        return not_found();
    };
    let Some(name) = nar_file_name(&file) else {
        return not_found();
    };
    let path = state.root.join("nar").join(name);
    match open_regular(&path).await {
        Ok(Some((file, len))) => {
            let stream = ReaderStream::with_capacity(file, CHUNK)
                .inspect_ok(|b| crate::metrics::http_nar_bytes("stored", b.len()));
            body_response(stream, len, NAR_TYPE)
        }
        Ok(None) => not_found(),
        Err(e) => internal_error(&path, &e),
    }
}

/// A stored build log, sent uncompressed: Nix's `getBuildLog` takes the
/// body as the log (a `Content-Encoding` would need the client to decode).
async fn log(
    State(state): State<Arc<HttpState>>,
    file: Result<UrlPath<String>, PathRejection>,
) -> Response {
    let Ok(UrlPath(file)) = file else {
        return not_found();
    };
    match crate::store::logs::public_log(&state.root, &file).await {
        Ok(Some(log)) => (StatusCode::OK, [(CONTENT_TYPE, TEXT_TYPE)], log).into_response(),
        Ok(None) => not_found(),
        Err(e) => {
            let e = io::Error::other(crate::error_chain(&e));
            internal_error(&state.root.join("log").join(&file), &e)
        }
    }
}

async fn cache_info(State(state): State<Arc<HttpState>>) -> Response {
    let path = state.root.join("nix-cache-info");
    match open_regular(&path).await {
        Ok(Some((file, len))) => file_response(file, len, CACHE_INFO_TYPE),
        Ok(None) => text(StatusCode::OK, CACHE_INFO_TYPE, DEFAULT_CACHE_INFO),
        Err(e) => internal_error(&path, &e),
    }
}

async fn healthz() -> Response {
    text(StatusCode::OK, TEXT_TYPE, "ok\n")
}

async fn fallback() -> Response {
    not_found()
}

/// The file at `path` as a streamed body, 404 if absent or not a regular
/// file, 500 on any other I/O error.
async fn serve_file(path: &Path, content_type: &'static str) -> Response {
    match open_regular(path).await {
        Ok(Some((file, len))) => file_response(file, len, content_type),
        Ok(None) => not_found(),
        Err(e) => internal_error(path, &e),
    }
}

/// Opens `path` and returns it with its length; `None` if it does not exist
/// or is not a regular file.
async fn open_regular(path: &Path) -> io::Result<Option<(File, u64)>> {
    let file = match File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata().await?;
    Ok(meta.is_file().then_some((file, meta.len())))
}

/// A read error mid-body aborts the connection (the client sees a short
/// body against Content-Length); it is logged here.
fn file_response(file: File, len: u64, content_type: &'static str) -> Response {
    body_response(ReaderStream::with_capacity(file, CHUNK), len, content_type)
}

/// `stream` as a body of `len` bytes; an error mid-body is logged and cuts
/// the body short.
fn body_response<S>(stream: S, len: u64, content_type: &'static str) -> Response
where
    S: futures_util::Stream<Item = io::Result<bytes::Bytes>> + Send + 'static,
{
    let stream = stream.inspect_err(|e| tracing::warn!(error = %e, "a served body failed mid-way"));
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (CONTENT_LENGTH, HeaderValue::from(len)),
    ];
    (headers, Body::from_stream(stream)).into_response()
}

fn text(status: StatusCode, content_type: &'static str, body: &'static str) -> Response {
    let headers = [(CONTENT_TYPE, HeaderValue::from_static(content_type))];
    (status, headers, body).into_response()
}

fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, TEXT_TYPE, "not found\n")
}

fn internal_error(path: &Path, e: &io::Error) -> Response {
    tracing::warn!(path = %path.display(), error = %e, "serving a cache file failed");
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        TEXT_TYPE,
        "internal error\n",
    )
}

async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    tracing::debug!(
        %method,
        %path,
        status = response.status().as_u16(),
        micros_to_headers = start.elapsed().as_micros(),
        "http request"
    );
    response
}
