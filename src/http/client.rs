//! The relay's own HTTP/1.1 client, for its command line (`nix-relay
//! status`, `drain`, `undrain`) talking to its HTTP faces: plain `http://`,
//! one request per connection, the response bounded by
//! [`MAX_RESPONSE_BYTES`].

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most response bytes read (headers and body).
pub const MAX_RESPONSE_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: only http:// URLs")]
    Url(String),
    #[error("{url}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: malformed HTTP response: {what}")]
    Malformed { url: String, what: String },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// GETs `url` (`http://host:port[/path]`) and returns the body; anything
/// but a 200 is an error.
pub async fn http_get(url: &str) -> Result<String, Error> {
    let (status, body) = http_request("GET", url).await?;
    if status != 200 {
        return Err(Error::Status {
            url: url.to_owned(),
            status,
            body: body.trim().to_owned(),
        });
    }
    Ok(body)
}

/// Sends a bodiless `method` request to `url` (`http://host:port[/path]`)
/// and returns the status code and body.
pub async fn http_request(method: &str, url: &str) -> Result<(u16, String), Error> {
    http_send(method, url, None).await
}

/// POSTs `json` as `application/json` (what the admin endpoint requires).
pub async fn http_post_json(url: &str, json: &serde_json::Value) -> Result<(u16, String), Error> {
    let body = json.to_string();
    http_send("POST", url, Some(("application/json", body.as_bytes()))).await
}

/// Sends `method` to `url` with an optional (content type, body).
pub async fn http_send(
    method: &str,
    url: &str,
    body: Option<(&str, &[u8])>,
) -> Result<(u16, String), Error> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::Url(url.to_owned()))?;
    let (hostport, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let io = |source| Error::Io {
        url: url.to_owned(),
        source,
    };
    let mut s = tokio::net::TcpStream::connect(hostport).await.map_err(io)?;
    let (ctype, bytes) = body.unwrap_or(("", b""));
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\n");
    if !ctype.is_empty() {
        req += &format!("Content-Type: {ctype}\r\n");
    }
    req += &format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        bytes.len()
    );
    s.write_all(req.as_bytes()).await.map_err(io)?;
    s.write_all(bytes).await.map_err(io)?;
    let mut buf = Vec::new();
    let mut body = s.take(MAX_RESPONSE_BYTES);
    body.read_to_end(&mut buf).await.map_err(io)?;
    let text = String::from_utf8_lossy(&buf);
    let malformed = |what: &str| Error::Malformed {
        url: url.to_owned(),
        what: what.to_owned(),
    };
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers"))?;
    let status = head.lines().next().unwrap_or_default();
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| malformed(&format!("status line {status:?}")))?;
    Ok((code, body.to_owned()))
}
