//! A moto server on 127.0.0.1 (installed by tests/setup.sh into
//! /opt/nix-relay-test/moto; `NIX_RELAY_MOTO` overrides the path) whose S3
//! the tests use path-style. Without moto the tests say so and pass, except
//! under CI (`CI` set), where a missing moto is a failure.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix_relay::s3::{Bucket, Location, fixed_credentials};

pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn moto() -> Option<Moto> {
    let bin = std::env::var("NIX_RELAY_MOTO")
        .unwrap_or_else(|_| "/opt/nix-relay-test/moto/bin/moto_server".into());
    if !std::path::Path::new(&bin).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{bin} missing under CI: tests/setup.sh installs it"
        );
        eprintln!("SKIPPED: {bin} not found (run tests/setup.sh as root to install moto)");
        return None;
    }
    let port = free_port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting moto_server");
    let m = Moto { child, port };
    for _ in 0..300 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(m);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moto_server did not listen on {port} within 30 s");
}

impl Moto {
    /// `s3://name?…` on this server.
    pub fn url(&self, name: &str) -> String {
        let port = self.port;
        format!("s3://{name}?region=us-east-1&endpoint=http://127.0.0.1:{port}")
    }

    /// A fresh bucket `name`, created.
    pub async fn bucket(&self, name: &str) -> Arc<Bucket> {
        let loc = Location::parse(&self.url(name)).unwrap();
        let b = Arc::new(Bucket::new(loc, fixed_credentials("testing", "testing")));
        b.create().await.unwrap();
        b
    }
}

/// A relay with one fake backend `a` (its config lines `backend_extra`,
/// driven by `script`) whose cache is on `bucket`, trusting `trust`'s key.
#[allow(dead_code)]
pub async fn relay_on_bucket(
    m: &Moto,
    bucket: &str,
    trust: Option<String>,
    backend_extra: &str,
    script: nix_relay::testing::fake::Script,
) -> nix_relay::testing::harness::TestRelay {
    let trust = trust.map_or(String::new(), |k| {
        format!("trusted_public_keys = [\"{k}\"]\n")
    });
    let config = format!(
        "{}\n[cache]\nstore = \"{}\"\n{trust}",
        nix_relay::testing::harness::fake_backend("a", "fake://a", backend_extra),
        m.url(bucket),
    );
    nix_relay::testing::harness::TestRelay::start(&config, &[("a", script)]).await
}

/// The mirror to the bucket of a relay with `[cache] store = "s3://…"`.
#[allow(dead_code)]
pub fn mirror_of(t: &nix_relay::testing::harness::TestRelay) -> &nix_relay::s3::Mirror {
    let up = t.relay.upstream().expect("a bucket makes an upstream");
    up.mirror().expect("the bucket's mirror")
}
