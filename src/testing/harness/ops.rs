//! Operating a [`TestRelay`] as an operator does: the status table
//! `nix-relay status` prints, the admin endpoint `nix-relay drain` talks
//! to, and a SIGHUP reload of a config file.

use std::sync::atomic::Ordering;

use super::{NEXT, TestRelay};
use crate::config::BackendUri;
use crate::scheduler::ReloadSummary;
use crate::testing::fake::{Fake, Script, register};

impl TestRelay {
    /// `/status` rendered as `nix-relay status` prints it.
    pub fn status_table(&self) -> String {
        let status = crate::http::status::collect(&self.relay);
        let json = serde_json::to_value(&status).unwrap_or_else(|e| panic!("status: {e}"));
        crate::status::render(&json, 200)
    }

    /// The line of backend `name` in [`Self::status_table`].
    pub fn status_line(&self, name: &str) -> String {
        let table = self.status_table();
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name));
        line.unwrap_or_else(|| panic!("no backend {name} in the status table:\n{table}"))
            .to_owned()
    }

    /// The `admin` field of backend `name` in the scheduler's status
    /// (`active`, `draining`, `removing`), or `absent`.
    pub fn backend_admin(&self, name: &str) -> &'static str {
        let snap = self.relay.scheduler().snapshot();
        snap.backends
            .iter()
            .find(|b| b.name == name)
            .map_or("absent", |b| b.admin)
    }

    /// Serves the admin endpoint (drain / undrain) on a loopback port;
    /// its URL, for [`crate::cli::drain`].
    pub async fn admin_url(&self) -> String {
        let any = "127.0.0.1:0".parse().expect("loopback address");
        let addr = crate::http::admin::spawn(any, self.relay.scheduler().clone()).await;
        format!("http://{}", addr.unwrap_or_else(|e| panic!("admin: {e}")))
    }

    /// Writes `config` (as for [`TestRelay::start`]) to the relay's config
    /// file and reloads it as SIGHUP does ([`crate::cli::reload`]). Fakes
    /// the relay has not got yet are scripted in `added`.
    pub fn reload(
        &mut self,
        config: &str,
        added: &[(&str, Script)],
    ) -> Result<ReloadSummary, Vec<String>> {
        let prefix = self.fake_prefix();
        for (name, script) in added {
            let fake = Fake::new(name, script.clone());
            self._registrations
                .push(register(&format!("{prefix}/{name}"), fake.clone()));
            let old = self.fakes.insert((*name).to_owned(), fake);
            assert!(old.is_none(), "fake {name} added twice");
        }
        let mut text = config.to_owned();
        for name in self.fakes.keys() {
            for scheme in ["fake", "fake-ng"] {
                let (from, to) = (
                    format!("\"{scheme}://{name}\""),
                    format!("\"{scheme}://{prefix}/{name}\""),
                );
                text = text.replace(&from, &to);
            }
        }
        let path = self._dir.path().join("relay.toml");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        crate::cli::reload(&path, self.relay.scheduler())
    }

    /// The registry prefix of this relay's fakes (`relay-N`).
    fn fake_prefix(&self) -> String {
        let backends = self.relay.scheduler().backends();
        let key = backends.iter().find_map(|b| match &b.uri {
            BackendUri::Fake { name, .. } => name.split_once('/').map(|(p, _)| p.to_owned()),
            _ => None,
        });
        key.unwrap_or_else(|| format!("relay-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
    }
}
