//! One HTTP/1.1 exchange per call, on hyper, over TCP or TLS (rustls with
//! the aws-lc-rs provider the SSH side already builds; the system's root
//! certificates). No pool: the relay makes a few AWS calls a minute.
//! Bounded in time ([`Timeouts`]) and size ([`MAX_REPLY_BYTES`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::Error;

/// The largest reply body read (an EC2 DescribeInstances page of 100
/// instances is well under 1 MiB).
pub const MAX_REPLY_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// The whole call: connect, TLS, request, the reply's last byte.
    pub call: Duration,
}

/// For AWS service endpoints.
pub const SERVICE_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(10),
    call: Duration::from_secs(60),
};

/// Where requests go: `http(s)://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub https: bool,
    /// A DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `https://host`, `http://127.0.0.1:5000`, `http://[::1]:80/`.
    pub fn parse(url: &str) -> Result<Endpoint, Error> {
        match Endpoint::split(url)? {
            (ep, "" | "/") => Ok(ep),
            _ => Err(Error::Endpoint {
                url: url.to_owned(),
                reason: "must be scheme://host[:port] without a path",
            }),
        }
    }

    /// A URL's endpoint and the rest (path and query, "" if none).
    pub fn split(url: &str) -> Result<(Endpoint, &str), Error> {
        let bad = |reason| Error::Endpoint {
            url: url.to_owned(),
            reason,
        };
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("must start with http:// or https://"));
        };
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        if authority.contains(['#', '@']) {
            return Err(bad("user info and fragments are not supported"));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or(bad("unclosed [ in the host"))?;
                (h, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
            None if https => 443,
            None => 80,
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let ep = Endpoint {
            https,
            host: host.to_owned(),
            port,
        };
        Ok((ep, path))
    }

    /// The `Host` header: the host, with the port unless it is the default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.https { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// One request. `path_and_query` is sent as is (already encoded);
/// `headers` too, plus `Host` if they lack one (hyper adds Content-Length).
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: Bytes,
    /// The reply body's bound; at most [`MAX_REPLY_BYTES`] is sensible.
    pub max_reply: usize,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: ::http::HeaderMap,
    pub body: Bytes,
}

pub struct HttpClient {
    timeouts: Timeouts,
    tls: OnceLock<Arc<rustls::ClientConfig>>,
}

impl HttpClient {
    pub fn new(timeouts: Timeouts) -> HttpClient {
        HttpClient {
            timeouts,
            tls: OnceLock::new(),
        }
    }

    pub async fn send(&self, ep: &Endpoint, call: Call<'_>) -> Result<Response, Error> {
        let limit = self.timeouts.call;
        match tokio::time::timeout(limit, self.exchange(ep, call)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                host: ep.host.clone(),
                what: "answer",
                limit,
            }),
        }
    }

    async fn exchange(&self, ep: &Endpoint, call: Call<'_>) -> Result<Response, Error> {
        let req = request(ep, &call)?;
        let limit = self.timeouts.connect;
        let connect = TcpStream::connect((ep.host.as_str(), ep.port));
        let tcp = (tokio::time::timeout(limit, connect).await)
            .map_err(|_| Error::Timeout {
                host: ep.host.clone(),
                what: "accept a connection",
                limit,
            })?
            .map_err(|source| Error::Connect {
                addr: format!("{}:{}", ep.host, ep.port),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        if !ep.https {
            return over(TokioIo::new(tcp), req, &ep.host, call.max_reply).await;
        }
        let name = rustls::pki_types::ServerName::try_from(ep.host.clone()).map_err(|_| {
            Error::Endpoint {
                url: ep.host.clone(),
                reason: "not a valid TLS server name",
            }
        })?;
        let tls = (tokio_rustls::TlsConnector::from(self.tls_config()?))
            .connect(name, tcp)
            .await
            .map_err(|source| Error::Tls {
                host: ep.host.clone(),
                source,
            })?;
        over(TokioIo::new(tls), req, &ep.host, call.max_reply).await
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        if let Some(c) = self.tls.get() {
            return Ok(c.clone());
        }
        let c = Arc::new(tls_config()?);
        Ok(self.tls.get_or_init(|| c).clone())
    }
}

/// The shared TLS setup (`outbound::tls_config`: the system's roots).
fn tls_config() -> Result<rustls::ClientConfig, Error> {
    crate::outbound::tls_config().map_err(Error::TlsRoots)
}

fn request(ep: &Endpoint, call: &Call<'_>) -> Result<::http::Request<Full<Bytes>>, Error> {
    let mut b = ::http::Request::builder()
        .method(call.method)
        .uri(call.path_and_query);
    if !(call.headers.iter()).any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        b = b.header(::http::header::HOST, ep.authority());
    }
    for (n, v) in call.headers {
        b = b.header(n.as_str(), v.as_str());
    }
    (b.body(Full::new(call.body.clone()))).map_err(|e| Error::Request(e.to_string()))
}

/// Aborts the connection task when the exchange ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn over<IO>(
    io: TokioIo<IO>,
    req: ::http::Request<Full<Bytes>>,
    host: &str,
    max_reply: usize,
) -> Result<Response, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |source| Error::Http {
        host: host.to_owned(),
        source,
    };
    let (mut sender, conn) = (hyper::client::conn::http1::handshake(io).await).map_err(http)?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let resp = sender.send_request(req).await.map_err(http)?;
    let (parts, body) = resp.into_parts();
    let body = match Limited::new(body, max_reply).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(Error::TooLarge {
                host: host.to_owned(),
                limit: max_reply,
            });
        }
        Err(e) => {
            return Err(Error::Body {
                host: host.to_owned(),
                reason: crate::error_chain(&*e),
            });
        }
    };
    Ok(Response {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}
