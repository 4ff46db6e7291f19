//! The in-process test rig (cargo feature `testing`; nothing here is
//! compiled without it).
//!
//! * [`fake`]: fake builders that speak the real serve and worker
//!   protocols, server side, through [`crate::wire`], over in-memory pipes;
//!   scripted per backend (outputs, log, failures, cuts, hangs, duration)
//!   and recording what happened. A config reaches one with
//!   `uri = "fake://NAME"` (serve) or `"fake-ng://NAME"` (worker).
//! * [`harness`]: the production relay core ([`crate::cli::open_relay`])
//!   in a tempdir, with client sessions as in-process pipes driven by the
//!   relay's own protocol clients.
//! * [`drv`]: store paths, sources and derivations for tests.
//! * [`knobs`]: shorter production timings for a test binary.
//! * [`upstream`]: a signed binary cache on loopback, as an upstream.
//!
//! `backend::connect` reaches a fake through the registry as an in-process
//! transport whose drop ends the fake's side as an SSH drop would; a serve
//! fake's stderr goes through the same forwarding as a subprocess's. Other
//! hooks that exist only for tests, under the same feature:
//! `BackendUri::LocalWorker`, `front::server::null_log`,
//! `ec2::query::connect_with_keys`, `ec2::query::QueryApi::with_page_size`.

pub mod drv;
pub mod drv_aterm;
pub mod fake;
pub mod fake_flood;
mod fake_serve;
mod fake_worker;
pub mod harness;
pub mod harness_faults;
pub mod knobs;
pub mod upstream;
