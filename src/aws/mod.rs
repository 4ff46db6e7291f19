//! A small signed-HTTP layer for AWS APIs: what `ec2::query` (the EC2 Query
//! API) stands on, written to serve S3's REST API as well.
//!
//! * `http`: one HTTPS (rustls, aws-lc-rs) or plain-HTTP exchange per call
//!   on hyper, with a connect timeout, a whole-call timeout and a bounded
//!   reply ([`http::MAX_REPLY_BYTES`] unless the caller asks for less).
//! * `sigv4`: Signature Version 4 header signing (checked against AWS's
//!   test suite).
//! * `creds`: the credential chain (environment, shared files and
//!   profiles, `credential_process`, ECS, IMDSv2), cached and refreshed
//!   before expiry; `profile` reads the shared files, `imds` the metadata
//!   endpoints.
//! * `xml`: a bounded XML tree for replies; `time`: UTC dates.
//!
//! Nothing here retries: the caller's layer does (`ec2::api::retry`), using
//! [`Error::is_transient`].

pub mod creds;
pub mod http;
mod imds;
mod profile;
pub mod sigv4;
pub mod time;
pub mod xml;

#[cfg(test)]
mod creds_tests;
#[cfg(test)]
mod fake_http;
#[cfg(test)]
mod http_tests;
#[cfg(test)]
mod sigv4_tests;

pub use creds::{Credentials, Provider};
pub use http::{Endpoint, HttpClient, Response};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("endpoint {url:?}: {reason}")]
    Endpoint { url: String, reason: &'static str },
    #[error("connecting to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {host}")]
    Tls {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the system's TLS root certificates: {0}")]
    TlsRoots(String),
    #[error("HTTP exchange with {host}")]
    Http {
        host: String,
        #[source]
        source: hyper::Error,
    },
    #[error("reading the reply from {host}: {reason}")]
    Body { host: String, reason: String },
    #[error("{host} did not {what} within {limit:?}")]
    Timeout {
        host: String,
        what: &'static str,
        limit: std::time::Duration,
    },
    #[error("the reply from {host} is over {limit} bytes")]
    TooLarge { host: String, limit: usize },
    #[error("building the request: {0}")]
    Request(String),
    #[error("malformed XML reply: {0}")]
    Xml(String),
    #[error("no AWS credentials found (tried: {tried}); see README \"EC2 builders on demand\"")]
    NoCredentials { tried: String },
    #[error("AWS credentials from {source_name}: {reason}")]
    Credentials { source_name: String, reason: String },
    #[error("reading {path}")]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("AWS credentials from {source_name}")]
    CredentialsFetch {
        source_name: &'static str,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// Worth another try later: the network, a timeout, or a credential
    /// endpoint that failed that way.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::Tls { .. }
            | Error::Http { .. }
            | Error::Body { .. }
            | Error::Timeout { .. } => true,
            Error::CredentialsFetch { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}
