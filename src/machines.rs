//! What clients put in their machines file / `nix.buildMachines` to use
//! the relay as their one builder.

use std::collections::BTreeSet;

use anyhow::Result;
use base64::Engine;

use crate::config::Config;

/// The URI scheme clients use for the relay. `ssh-ng://` (the daemon
/// protocol) is the default: upstream Nix is moving away from `ssh://`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheme {
    #[default]
    #[value(name = "ssh-ng")]
    SshNg,
    #[value(name = "ssh")]
    Ssh,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::SshNg => "ssh-ng",
            Scheme::Ssh => "ssh",
        }
    }
}

/// Nix before 2.31 hands `host:port` of a builder URI to ssh as a host
/// name (NixOS/nix#3425 added the port in 2.31).
const PORT_IN_URI_SINCE: &str = "2.31";

struct Entry {
    host: String,
    port: u16,
    systems: Vec<String>,
    features: Vec<String>,
    max_jobs: u32,
    key_b64: String,
}

fn entry_for(config: &Config, host_key_line: &str) -> Entry {
    let templates = config.ec2.iter().flat_map(|e| &e.templates);
    let systems: BTreeSet<&String> = (config.backends.iter().flat_map(|b| &b.systems))
        .chain(templates.clone().flat_map(|t| &t.systems))
        .collect();
    let features: BTreeSet<&String> = config
        .backends
        .iter()
        .flat_map(|b| b.supported_features.iter().chain(&b.mandatory_features))
        .chain(templates.clone().flat_map(|t| &t.supported_features))
        .collect();
    let ip = config.server.listen.ip();
    let host = if ip.is_unspecified() {
        std::fs::read_to_string("/etc/hostname")
            .map_or_else(|_| "relay".into(), |h| h.trim().to_owned())
    } else {
        ip.to_string()
    };
    Entry {
        host,
        port: config.server.listen.port(),
        systems: systems.into_iter().cloned().collect(),
        features: features.into_iter().cloned().collect(),
        max_jobs: (config.backends.iter().map(|b| b.max_jobs))
            .chain(templates.map(|t| t.max_instances * t.max_jobs.unwrap_or(1)))
            .sum::<u32>()
            .max(1),
        key_b64: base64::engine::general_purpose::STANDARD.encode(host_key_line),
    }
}

fn or_dash(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

fn render(e: &Entry, scheme: Scheme) -> String {
    let quote = |v: &[String]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let scheme = scheme.as_str();
    let mut s = String::new();
    s.push_str("# machines file (/etc/nix/machines or --builders):\n");
    s.push_str(&format!(
        "{scheme}://nix-relay@{} {} - {} 1 {} - {}\n",
        e.host,
        or_dash(&e.systems),
        e.max_jobs,
        or_dash(&e.features),
        e.key_b64
    ));
    if e.port != 22 {
        s.push_str(&format!(
            "# the relay listens on port {port}: Nix {PORT_IN_URI_SINCE} and later take {scheme}://nix-relay@{host}:{port};\n# older Nix hands \"{host}:{port}\" to ssh as a host name, so add to root's ~/.ssh/config:\n#   Host {host}\n#     Port {port}\n",
            port = e.port,
            host = e.host,
        ));
    }
    s.push_str("\n# NixOS:\nnix.buildMachines = [{\n");
    s.push_str(&format!(
        "  hostName = \"{}\"; protocol = \"{scheme}\"; sshUser = \"nix-relay\";\n",
        e.host
    ));
    s.push_str(&format!("  systems = [ {} ];\n", quote(&e.systems)));
    s.push_str(&format!("  maxJobs = {}; speedFactor = 1;\n", e.max_jobs));
    s.push_str(&format!(
        "  supportedFeatures = [ {} ];\n",
        quote(&e.features)
    ));
    s.push_str(&format!(
        "  publicHostKey = \"{}\";\n}}];\nnix.distributedBuilds = true;\n",
        e.key_b64
    ));
    s
}

/// `nix-relay machines-entry`: needs the host key to exist.
pub fn entry(config: &Config, scheme: Scheme) -> Result<String> {
    let line = crate::keys::public_line(&config.server.host_key)?;
    Ok(render(&entry_for(config, &line), scheme))
}

/// The banner `serve` prints at start.
pub fn how_to_point_nix(config: &Config, key: &russh::keys::PublicKey) -> String {
    let e = entry_for(config, &crate::keys::openssh_line(key));
    format!(
        "nix-relay is listening on {}. Point Nix at it with:\n  --builders 'ssh-ng://{} {} - {} 1 {} - {}' --max-jobs 0{}",
        config.server.listen,
        e.host,
        or_dash(&e.systems),
        e.max_jobs,
        or_dash(&e.features),
        e.key_b64,
        if e.port != 22 {
            format!(
                "\n  and NIX_SSHOPTS='-p {}' (Nix before {PORT_IN_URI_SINCE} takes no port in the URI)",
                e.port
            )
        } else {
            String::new()
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(port: u16) -> Entry {
        Entry {
            host: "ser5".into(),
            port,
            systems: vec!["x86_64-linux".into()],
            features: vec!["kvm".into()],
            max_jobs: 6,
            key_b64: "S0VZ".into(),
        }
    }

    #[test]
    fn ssh_ng_is_the_default_scheme() {
        let out = render(&entry(22), Scheme::default());
        let line = out.lines().nth(1).unwrap();
        assert_eq!(
            line,
            "ssh-ng://nix-relay@ser5 x86_64-linux - 6 1 kvm - S0VZ"
        );
        assert!(out.contains("protocol = \"ssh-ng\";"), "{out}");
        assert!(!out.contains("Port"), "{out}");
    }

    #[test]
    fn ssh_on_request() {
        let out = render(&entry(22), Scheme::Ssh);
        assert!(
            out.lines()
                .nth(1)
                .unwrap()
                .starts_with("ssh://nix-relay@ser5 ")
        );
        assert!(out.contains("protocol = \"ssh\";"), "{out}");
    }

    #[test]
    fn a_port_says_which_nix_takes_it_in_the_uri() {
        let out = render(&entry(2222), Scheme::SshNg);
        assert!(
            out.contains("Nix 2.31 and later take ssh-ng://nix-relay@ser5:2222"),
            "{out}"
        );
        assert!(out.contains("#   Host ser5\n#     Port 2222\n"), "{out}");
        // line 2 stays the URI every Nix version takes (with the alias)
        assert!(
            out.lines()
                .nth(1)
                .unwrap()
                .starts_with("ssh-ng://nix-relay@ser5 ")
        );
    }
}
