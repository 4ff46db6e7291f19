//! AWS Signature Version 4 (header signing), checked against AWS's
//! published test suite (`sigv4_tests`). HMAC-SHA256 and SHA-256 come from
//! the `hmac` and `sha2` crates; this file only builds the strings.
//!
//! The path is encoded once, as sent and unnormalized (what S3 requires;
//! EC2's Query API always posts to `/`). Every header the request carries
//! when [`Request::sign`] is called is signed.

use std::fmt::Write;
use std::time::SystemTime;

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::creds::Credentials;

type HmacSha256 = hmac::Hmac<Sha256>;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// SHA-256 of the empty payload.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Who signs for what: the region and service of the credential scope.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub region: &'a str,
    pub service: &'a str,
}

/// A request as it will be sent, before signing: path and query raw (not
/// percent-encoded), headers as (name, value) in sending order.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    /// Lowercase hex SHA-256 of the body.
    pub payload_sha256: String,
}

/// What was signed (for tests and debugging; holds no secret).
#[derive(Debug, Clone)]
pub struct Signed {
    pub canonical_request: String,
    pub string_to_sign: String,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: this cannot fail.
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC key of any length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// RFC 3986 percent-encoding as SigV4 wants it: everything but
/// `A–Z a–z 0–9 - _ . ~` (and `/` when `keep_slash`), uppercase hex.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `k=v&…`, each part [`uri_encode`]d, sorted by encoded key then value:
/// the canonical query string, and the body of a Query API POST.
pub fn canonical_query(params: &[(String, String)]) -> String {
    let mut enc: Vec<(String, String)> = (params.iter())
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    enc.sort();
    let pairs: Vec<String> = enc.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join("&")
}

impl Request {
    /// Canonical headers (lowercase names, sorted, values trimmed with inner
    /// runs of spaces collapsed, repeated names joined by `,`) and the
    /// signed-headers list.
    fn canonical_headers(&self) -> (String, String) {
        let mut merged: Vec<(String, String)> = Vec::new();
        for (name, value) in &self.headers {
            let name = name.to_ascii_lowercase();
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            match merged.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => {
                    v.push(',');
                    v.push_str(&value);
                }
                None => merged.push((name, value)),
            }
        }
        merged.sort_by(|a, b| a.0.cmp(&b.0));
        let canon = merged.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
        let signed = merged.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>();
        (canon, signed.join(";"))
    }

    /// The canonical request (SigV4 task 1) and the signed-headers list.
    pub fn canonical_request(&self) -> (String, String) {
        let (headers, signed) = self.canonical_headers();
        let canon = format!(
            "{}\n{}\n{}\n{headers}\n{signed}\n{}",
            self.method,
            uri_encode(&self.path, true),
            canonical_query(&self.query),
            self.payload_sha256
        );
        (canon, signed)
    }

    /// Adds `X-Amz-Date`, `X-Amz-Security-Token` (temporary credentials)
    /// and `Authorization` for `now`.
    pub fn sign(&mut self, creds: &Credentials, scope: Scope<'_>, now: SystemTime) -> Signed {
        let amz_date = super::time::amz_date(now);
        let date = &amz_date[..8];
        self.headers.push(("X-Amz-Date".into(), amz_date.clone()));
        if let Some(token) = &creds.session_token {
            self.headers
                .push(("X-Amz-Security-Token".into(), token.clone()));
        }
        let (canon, signed) = self.canonical_request();
        let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
        let to_sign = format!(
            "{ALGORITHM}\n{amz_date}\n{credential_scope}\n{}",
            sha256_hex(canon.as_bytes())
        );
        let secret = format!("AWS4{}", creds.secret_access_key);
        let key = hmac(secret.as_bytes(), date.as_bytes());
        let key = hmac(&key, scope.region.as_bytes());
        let key = hmac(&key, scope.service.as_bytes());
        let key = hmac(&key, b"aws4_request");
        let signature = hex(&hmac(&key, to_sign.as_bytes()));
        let auth = format!(
            "{ALGORITHM} Credential={}/{credential_scope}, SignedHeaders={signed}, Signature={signature}",
            creds.access_key_id
        );
        self.headers.push(("Authorization".into(), auth));
        Signed {
            canonical_request: canon,
            string_to_sign: to_sign,
        }
    }
}
