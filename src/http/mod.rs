//! Every HTTP face of the relay, and the one client its command line uses:
//!
//! * [`cache`] — the binary cache (`/nix-cache-info`, `/<hash>.narinfo`,
//!   `/nar/…`, `/healthz`) on `[server] http_listen`;
//! * [`status`] — `/status` (JSON) and `/metrics` (Prometheus text), on the
//!   same listener;
//! * [`admin`] — drain and undrain on the loopback-only `[admin] listen`;
//! * [`client`] — plain HTTP/1.1 for `nix-relay status` / `drain` / `undrain`.
//!
//! Invariant: nothing else in the crate serves HTTP (outbound requests are
//! `crate::outbound`'s).

pub mod admin;
pub mod cache;
pub mod client;
pub mod status;

pub use cache::{HttpState, router, serve};
