//! The S3 REST calls the relay makes, path-style, signed with SigV4
//! (payload hash: the body's SHA-256). Bodies sent are at most a part
//! ([`super::PART_SIZE`]); replies read whole are XML bounded by
//! [`super::MAX_XML_BYTES`]; object bodies are streamed (`outbound`).

use std::time::SystemTime;

use bytes::Bytes;

use super::{Error, Location, MAX_XML_BYTES};
use crate::aws::http::{Call, HttpClient, SERVICE_TIMEOUTS};
use crate::aws::{Provider, Response, sigv4, xml};

/// An incomplete multipart upload.
#[derive(Debug, Clone)]
pub struct Upload {
    pub key: String,
    pub id: String,
    pub initiated: Option<SystemTime>,
}

/// One bucket and the credentials to use it.
pub struct Bucket {
    loc: Location,
    http: HttpClient,
    reader: crate::outbound::Client,
    creds: Provider,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bucket({})", self.loc)
    }
}

type Headers = Vec<(String, String)>;

fn h(n: &str, v: impl Into<String>) -> (String, String) {
    (n.to_owned(), v.into())
}

impl Bucket {
    pub fn new(loc: Location, creds: Provider) -> Bucket {
        Bucket {
            loc,
            http: HttpClient::new(SERVICE_TIMEOUTS),
            reader: crate::outbound::Client::new(SERVICE_TIMEOUTS.connect),
            creds,
        }
    }

    pub fn location(&self) -> &Location {
        &self.loc
    }

    /// The raw (unencoded) path of `key`; the bucket's own for "".
    fn raw_path(&self, key: &str) -> String {
        match key {
            "" => format!("/{}", self.loc.bucket),
            k => format!("/{}/{k}", self.loc.bucket),
        }
    }

    /// `headers` plus `Host`, `x-amz-content-sha256`, the date and the
    /// signature for this request.
    async fn sign(
        &self,
        op: &'static str,
        (method, key): (&str, &str),
        query: &[(String, String)],
        mut headers: Headers,
        payload_sha256: String,
    ) -> Result<Headers, Error> {
        let creds = (self.creds.get().await).map_err(|source| Error::Call {
            op,
            key: key.to_owned(),
            source,
        })?;
        headers.push(h("Host", self.loc.endpoint.authority()));
        headers.push(h("x-amz-content-sha256", payload_sha256.clone()));
        let mut req = sigv4::Request {
            method: method.to_owned(),
            path: self.raw_path(key),
            query: query.to_vec(),
            headers,
            payload_sha256,
        };
        let scope = sigv4::Scope {
            region: &self.loc.region,
            service: "s3",
        };
        req.sign(&creds, scope, SystemTime::now());
        Ok(req.headers)
    }

    /// One signed call; the reply whatever its status.
    async fn call(
        &self,
        op: &'static str,
        (method, key): (&str, &str),
        query: &[(String, String)],
        headers: Headers,
        body: Bytes,
    ) -> Result<Response, Error> {
        let sha = sigv4::sha256_hex(&body);
        let headers = self.sign(op, (method, key), query, headers, sha).await?;
        let mut target = sigv4::uri_encode(&self.raw_path(key), true);
        if !query.is_empty() {
            target = format!("{target}?{}", sigv4::canonical_query(query));
        }
        let call = Call {
            method,
            path_and_query: &target,
            headers: &headers,
            body,
            max_reply: MAX_XML_BYTES,
        };
        let resp = self.http.send(&self.loc.endpoint, call).await;
        resp.map_err(|source| Error::Call {
            op,
            key: key.to_owned(),
            source,
        })
    }

    /// A signed call without extra headers (listings).
    pub(super) async fn call_any(
        &self,
        op: &'static str,
        mk: (&str, &str),
        query: &[(String, String)],
        body: Bytes,
    ) -> Result<Response, Error> {
        self.call(op, mk, query, vec![], body).await
    }

    /// As [`Bucket::call`], failing unless the status is 2xx.
    async fn call_ok(
        &self,
        op: &'static str,
        mk: (&str, &str),
        query: &[(String, String)],
        headers: Headers,
        body: Bytes,
    ) -> Result<Response, Error> {
        let resp = self.call(op, mk, query, headers, body).await?;
        if (200..300).contains(&resp.status) {
            return Ok(resp);
        }
        Err(status_err(op, mk.1, &resp))
    }

    /// Creates the bucket (tests and first setup; "already yours" is fine).
    pub async fn create(&self) -> Result<(), Error> {
        let resp = (self.call("CreateBucket", ("PUT", ""), &[], vec![], Bytes::new())).await?;
        match resp.status {
            200..=299 | 409 => Ok(()),
            _ => Err(status_err("CreateBucket", "", &resp)),
        }
    }

    /// PutBucketPolicy: `policy` (JSON) replaces the bucket's policy
    /// (tests and first setup, e.g. anonymous reads for a Nix without S3
    /// credentials).
    pub async fn put_policy(&self, policy: &str) -> Result<(), Error> {
        let query = [q("policy", "")];
        let body = Bytes::from(policy.to_owned());
        (self.call_ok("PutBucketPolicy", ("PUT", ""), &query, vec![], body))
            .await
            .map(drop)
    }

    /// PutObject.
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), Error> {
        (self
            .call_ok("PutObject", ("PUT", key), &[], vec![], body)
            .await)
            .map(drop)
    }

    /// PutObject with `If-None-Match: *`: Ok(false) if the key exists.
    pub async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, Error> {
        let headers = vec![h("If-None-Match", "*")];
        let resp = (self.call("PutObject", ("PUT", key), &[], headers, body)).await?;
        match resp.status {
            200..=299 => Ok(true),
            412 | 409 => Ok(false),
            _ => Err(status_err("PutObject", key, &resp)),
        }
    }

    /// HeadObject: whether `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool, Error> {
        let resp = (self.call("HeadObject", ("HEAD", key), &[], vec![], Bytes::new())).await?;
        match resp.status {
            200..=299 => Ok(true),
            404 => Ok(false),
            _ => Err(status_err("HeadObject", key, &resp)),
        }
    }

    /// CopyObject onto itself (`x-amz-metadata-directive: REPLACE`): the
    /// object's LastModified becomes now, its bytes stay. Ok(false) if absent.
    pub async fn refresh(&self, key: &str) -> Result<bool, Error> {
        let op = "CopyObject";
        let source = sigv4::uri_encode(&self.raw_path(key), true);
        let headers = vec![
            h("x-amz-copy-source", source),
            h("x-amz-metadata-directive", "REPLACE"),
        ];
        let resp = (self.call(op, ("PUT", key), &[], headers, Bytes::new())).await?;
        if resp.status == 404 {
            return Ok(false);
        }
        // S3 can answer 200 with an error document when the copy fails.
        let failed = !(200..300).contains(&resp.status)
            || xml_of(op, key, &resp).is_ok_and(|r| r.name == "Error");
        if failed {
            return Err(status_err(op, key, &resp));
        }
        Ok(true)
    }

    /// DeleteObject (absent is fine).
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        let mk = ("DELETE", key);
        (self
            .call_ok("DeleteObject", mk, &[], vec![], Bytes::new())
            .await)
            .map(drop)
    }

    /// GetObject, streamed: the reply once its headers are in (any status).
    pub async fn get(&self, key: &str) -> Result<crate::outbound::Reply, Error> {
        let sha = sigv4::EMPTY_SHA256.to_owned();
        let mut headers = self
            .sign("GetObject", ("GET", key), &[], vec![], sha)
            .await?;
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case("host"));
        let rel = sigv4::uri_encode(key, true);
        let base = self.loc.base_url();
        let reply = self.reader.get_with(&base, &rel, &headers).await;
        reply.map_err(|source| Error::Stream {
            op: "GetObject",
            key: key.to_owned(),
            source,
        })
    }

    /// GetObject read whole (at most `max` bytes); None if absent.
    pub async fn get_bytes(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>, Error> {
        let reply = self.get(key).await?;
        let stream = |source| Error::Stream {
            op: "GetObject",
            key: key.to_owned(),
            source,
        };
        match reply.status {
            200 => Ok(Some(
                (reply.bytes(max, SERVICE_TIMEOUTS.call).await).map_err(stream)?,
            )),
            404 => Ok(None),
            status => Err(Error::Status {
                op: "GetObject",
                key: key.to_owned(),
                status,
                message: String::new(),
            }),
        }
    }
}

/// The error of a non-2xx reply, with S3's code and message if any.
pub(super) fn status_err(op: &'static str, key: &str, resp: &Response) -> Error {
    let text = std::str::from_utf8(&resp.body).unwrap_or("");
    let message = match xml::parse(text) {
        Ok(e) => format!(
            "{}: {}",
            e.text_at(&["Code"]).unwrap_or("?"),
            e.text_at(&["Message"]).unwrap_or("")
        ),
        Err(_) => String::new(),
    };
    Error::Status {
        op,
        key: key.to_owned(),
        status: resp.status,
        message,
    }
}

/// The XML root of a reply.
pub(super) fn xml_of(op: &'static str, key: &str, resp: &Response) -> Result<xml::Element, Error> {
    let bad = |_| Error::Reply {
        op,
        key: key.to_owned(),
        what: "a well-formed XML body",
    };
    let text = std::str::from_utf8(&resp.body).map_err(|_| Error::Reply {
        op,
        key: key.to_owned(),
        what: "a UTF-8 body",
    })?;
    xml::parse(text).map_err(bad)
}

pub(super) fn q(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_owned(), v.into())
}

impl Bucket {
    /// CreateMultipartUpload: the upload id.
    pub async fn create_multipart(&self, key: &str) -> Result<String, Error> {
        let op = "CreateMultipartUpload";
        let query = [q("uploads", "")];
        let resp = (self.call_ok(op, ("POST", key), &query, vec![], Bytes::new())).await?;
        let root = xml_of(op, key, &resp)?;
        let id = root.text_at(&["UploadId"]).ok_or(Error::Reply {
            op,
            key: key.to_owned(),
            what: "an UploadId",
        })?;
        Ok(id.to_owned())
    }

    /// UploadPart: the part's ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<String, Error> {
        let op = "UploadPart";
        let query = [q("partNumber", number.to_string()), q("uploadId", id)];
        let resp = (self.call_ok(op, ("PUT", key), &query, vec![], body)).await?;
        let etag = resp.headers.get("etag").and_then(|v| v.to_str().ok());
        Ok(etag
            .ok_or(Error::Reply {
                op,
                key: key.to_owned(),
                what: "an ETag header",
            })?
            .to_owned())
    }

    /// CompleteMultipartUpload of `parts` (number, ETag) in order.
    pub async fn complete(
        &self,
        key: &str,
        id: &str,
        parts: &[(u32, String)],
    ) -> Result<(), Error> {
        let op = "CompleteMultipartUpload";
        let mut body = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            let etag = etag.replace('&', "&amp;").replace('<', "&lt;");
            body.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let query = [q("uploadId", id)];
        let resp = (self.call_ok(op, ("POST", key), &query, vec![], body.into())).await?;
        // S3 can answer 200 with an error document when completion fails.
        if (xml_of(op, key, &resp)).is_ok_and(|r| r.name == "Error") {
            return Err(status_err(op, key, &resp));
        }
        Ok(())
    }

    /// AbortMultipartUpload (an unknown upload is fine).
    pub async fn abort(&self, key: &str, id: &str) -> Result<(), Error> {
        let op = "AbortMultipartUpload";
        let query = [q("uploadId", id)];
        let resp = (self.call(op, ("DELETE", key), &query, vec![], Bytes::new())).await?;
        match resp.status {
            200..=299 | 404 => Ok(()),
            _ => Err(status_err(op, key, &resp)),
        }
    }
}
