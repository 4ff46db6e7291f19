//! nix-relay: one SSH endpoint for Nix remote builds.
//!
//! Stock Nix clients list the relay as a single builder (`ssh://` or
//! `ssh-ng://`). The relay decodes each session ([`session`]), keeps every
//! path it sees in its own store ([`store`], Nix's binary-cache layout),
//! routes each derivation to the best backend ([`scheduler`]) and drives
//! that backend over the same protocols ([`backend`]). See ARCHITECTURE.md.

pub mod aws;
pub mod backend;
pub mod buildlog;
pub mod cli;
pub mod config;
pub mod durable;
pub mod ec2;
pub mod front;
pub mod http;
pub mod keys;
pub mod machines;
pub mod metrics;
pub mod outbound;
pub mod s3;
pub mod scheduler;
pub mod session;
pub mod ssh;
pub mod status;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod upstream;

/// The Nix wire layer, its own crate (`wire/`): `crate::wire::…` as before.
pub use nix_relay_wire as wire;

/// An error and its causes on one line (`a: b: c`): the one renderer of an
/// error's `source()` chain, for logs and for the messages clients see.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("reading the config")]
        Read(#[source] std::io::Error),
    }

    #[test]
    fn error_chain_prints_every_cause_in_order() {
        let e = Outer::Read(std::io::Error::other("disk on fire"));
        assert_eq!(super::error_chain(&e), "reading the config: disk on fire");
    }
}
