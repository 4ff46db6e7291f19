//! What clients put in their machines file / `nix.buildMachines` to use
//! the relay as their one builder.

use std::collections::BTreeSet;

use anyhow::Result;
use base64::Engine;

use crate::config::Config;

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

fn render(e: &Entry) -> String {
    let quote = |v: &[String]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = String::new();
    s.push_str("# machines file (/etc/nix/machines or --builders):\n");
    s.push_str(&format!(
        "ssh://nix-relay@{} {} - {} 1 {} - {}\n",
        e.host,
        or_dash(&e.systems),
        e.max_jobs,
        or_dash(&e.features),
        e.key_b64
    ));
    if e.port != 22 {
        s.push_str(&format!(
            "# the relay listens on port {}: Nix 2.8 cannot put a port in ssh://, so add to root's ~/.ssh/config:\n#   Host {}\n#     Port {}\n",
            e.port, e.host, e.port
        ));
    }
    s.push_str("\n# NixOS:\nnix.buildMachines = [{\n");
    s.push_str(&format!(
        "  hostName = \"{}\"; protocol = \"ssh\"; sshUser = \"nix-relay\";\n",
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
pub fn entry(config: &Config) -> Result<String> {
    let line = crate::keys::public_line(&config.server.host_key)?;
    Ok(render(&entry_for(config, &line)))
}

/// The banner `serve` prints at start.
pub fn how_to_point_nix(config: &Config, key: &russh::keys::PublicKey) -> String {
    let e = entry_for(config, &crate::keys::openssh_line(key));
    format!(
        "nix-relay is listening on {}. Point Nix at it with:\n  --builders 'ssh://{} {} - {} 1 {} - {}' --max-jobs 0{}",
        config.server.listen,
        e.host,
        or_dash(&e.systems),
        e.max_jobs,
        or_dash(&e.features),
        e.key_b64,
        if e.port != 22 {
            format!(
                "\n  and NIX_SSHOPTS='-p {}' (Nix 2.8 takes no port in ssh://)",
                e.port
            )
        } else {
            String::new()
        }
    )
}
