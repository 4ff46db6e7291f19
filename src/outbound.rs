//! Outbound HTTP(S) GETs with streamed replies: what `upstream` fetches
//! binary caches with. One HTTP/1.1 connection per request on hyper, over
//! TCP or TLS (rustls on aws-lc-rs, the system's root certificates, shared
//! with the AWS layer through [`tls_config`]).
//!
//! Invariant: a leaf (no other module of the crate); nothing waits on a
//! peer unbounded: connecting is bounded by the client's connect timeout,
//! the reply's headers by the caller's timeout, a streamed body by
//! [`Reply::into_reader`]'s stall timeout and a body read whole by
//! [`Reply::bytes`]'s size bound. Nothing here retries.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("URL {url:?}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("connecting to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("TLS with {host}")]
    Tls {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("loading the system's TLS root certificates: {0}")]
    TlsRoots(String),
    #[error("HTTP exchange with {host}")]
    Http {
        host: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{host} did not {what} within {limit:?}")]
    Timeout {
        host: String,
        what: &'static str,
        limit: Duration,
    },
    #[error("the reply from {host} is over {limit} bytes")]
    TooLarge { host: String, limit: u64 },
}

/// A base URL: `http(s)://host[:port][/path]`, without query, fragment or
/// user info. Requests go to `<base>/<relative path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub https: bool,
    /// A DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// "" or "/a/b" (no trailing slash).
    pub path: String,
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<BaseUrl, Error> {
        let bad = |reason| Error::Url {
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
        if rest.contains(['?', '#']) {
            return Err(bad("queries and fragments are not supported"));
        }
        if rest
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad("whitespace or control characters"));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(bad("user info is not supported"));
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
        Ok(BaseUrl {
            https,
            host: host.to_owned(),
            port,
            path: path.trim_end_matches('/').to_owned(),
        })
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

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

/// A GET client; cheap to share.
pub struct Client {
    connect_timeout: Duration,
    tls: OnceLock<Arc<rustls::ClientConfig>>,
}

/// A reply whose body has not been read yet. Its connection lives as long
/// as it (or its reader) does.
pub struct Reply {
    pub status: u16,
    body: Incoming,
    conn: AbortOnDrop,
    host: String,
}

impl Client {
    pub fn new(connect_timeout: Duration) -> Client {
        Client {
            connect_timeout,
            tls: OnceLock::new(),
        }
    }

    /// GETs `<base>/<rel>` and returns once the reply's headers are in
    /// (bound that with a timeout: this bounds only the connect).
    pub async fn get(&self, base: &BaseUrl, rel: &str) -> Result<Reply, Error> {
        self.get_with(base, rel, &[]).await
    }

    /// As [`Client::get`], with these headers too (an S3 signature).
    pub async fn get_with(
        &self,
        base: &BaseUrl,
        rel: &str,
        headers: &[(String, String)],
    ) -> Result<Reply, Error> {
        let target = format!("{}/{}", base.path, rel.trim_start_matches('/'));
        let mut req = ::http::Request::get(target.as_str())
            .header(::http::header::HOST, base.authority())
            .header(::http::header::USER_AGENT, "nix-relay");
        for (n, v) in headers {
            req = req.header(n.as_str(), v.as_str());
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|_| Error::Url {
            url: format!("{base}{target}"),
            reason: "not a valid request target",
        })?;
        let host = base.host.clone();
        let tcp = self.connect(base).await?;
        if !base.https {
            return exchange(TokioIo::new(tcp), req, host).await;
        }
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| Error::Url {
                url: base.to_string(),
                reason: "not a valid TLS server name",
            })?;
        let tls = self.tls_config()?;
        let stream = (tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await)
            .map_err(|source| Error::Tls {
                host: host.clone(),
                source,
            })?;
        exchange(TokioIo::new(stream), req, host).await
    }

    async fn connect(&self, base: &BaseUrl) -> Result<TcpStream, Error> {
        let limit = self.connect_timeout;
        let connect = TcpStream::connect((base.host.as_str(), base.port));
        let tcp = (tokio::time::timeout(limit, connect).await)
            .map_err(|_| Error::Timeout {
                host: base.host.clone(),
                what: "accept a connection",
                limit,
            })?
            .map_err(|source| Error::Connect {
                addr: format!("{}:{}", base.host, base.port),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        if let Some(c) = self.tls.get() {
            return Ok(c.clone());
        }
        let c = Arc::new(tls_config().map_err(Error::TlsRoots)?);
        Ok(self.tls.get_or_init(|| c).clone())
    }
}

/// rustls on aws-lc-rs with the system's roots (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` are honoured); the error says why there is none.
pub fn tls_config() -> Result<rustls::ClientConfig, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = (found.errors.iter().map(|e| e.to_string()))
            .chain(["none found (install ca-certificates, or set SSL_CERT_FILE)".into()])
            .collect::<Vec<_>>();
        return Err(why.join("; "));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Aborts the connection task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn exchange<IO>(
    io: TokioIo<IO>,
    req: ::http::Request<Empty<Bytes>>,
    host: String,
) -> Result<Reply, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |source| Error::Http {
        host: host.clone(),
        source,
    };
    let (mut sender, conn) = (hyper::client::conn::http1::handshake(io).await).map_err(http)?;
    let conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status().as_u16();
    Ok(Reply {
        status,
        body: resp.into_body(),
        conn,
        host,
    })
}

/// A streamed reply body (see [`Reply::into_reader`]).
pub type BodyReader = Pin<Box<dyn AsyncBufRead + Send>>;

impl Reply {
    /// The whole body, at most `max` bytes (more is an error), each piece
    /// within `stall` of the last.
    pub async fn bytes(mut self, max: u64, stall: Duration) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        while let Some(data) = next_data(&mut self.body, &self.host, stall).await? {
            if (out.len() + data.len()) as u64 > max {
                return Err(Error::TooLarge {
                    host: self.host,
                    limit: max,
                });
            }
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    /// The body as a reader, failing (`TimedOut`) when nothing arrives for
    /// `stall`. Memory: one piece of the body at a time.
    pub fn into_reader(self, stall: Duration) -> BodyReader {
        let state = (self.body, self.conn, self.host);
        let stream = futures_util::stream::unfold(Some(state), move |state| async move {
            let (mut body, conn, host) = state?;
            match next_data(&mut body, &host, stall).await {
                Ok(Some(data)) => Some((Ok(data), Some((body, conn, host)))),
                Ok(None) => None,
                Err(e) => Some((Err(io::Error::other(e)), None)),
            }
        });
        Box::pin(tokio_util::io::StreamReader::new(Box::pin(stream)))
    }
}

/// The next non-empty data frame; None at the end.
async fn next_data(
    body: &mut Incoming,
    host: &str,
    stall: Duration,
) -> Result<Option<Bytes>, Error> {
    loop {
        let frame = tokio::time::timeout(stall, body.frame()).await;
        let frame = frame.map_err(|_| Error::Timeout {
            host: host.to_owned(),
            what: "send more of the reply",
            limit: stall,
        })?;
        match frame {
            None => return Ok(None),
            Some(Err(source)) => {
                return Err(Error::Http {
                    host: host.to_owned(),
                    source,
                });
            }
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data()
                    && !data.is_empty()
                {
                    return Ok(Some(data));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let u = BaseUrl::parse("https://cache.nixos.org").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (true, "cache.nixos.org", 443, "")
        );
        let u = BaseUrl::parse("http://127.0.0.1:5000/sub/dir/").unwrap();
        assert_eq!((u.port, u.path.as_str()), (5000, "/sub/dir"));
        assert_eq!(u.to_string(), "http://127.0.0.1:5000/sub/dir");
        let u = BaseUrl::parse("http://[::1]:8080").unwrap();
        assert_eq!(u.authority(), "[::1]:8080");
        for bad in [
            "ftp://x",
            "http://",
            "http://h:x",
            "https://h/?priority=10",
            "http://u@h",
            "http://h/a#b",
            "s3://bucket",
        ] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
