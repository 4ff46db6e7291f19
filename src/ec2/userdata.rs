//! The boot script an instance runs as root (cloud-init user data). It is
//! deterministic given its inputs, so a golden file pins it
//! (`tests/golden/ec2/user-data.sh`).
//!
//! It (1) creates the builder user and authorizes the relay's builder key,
//! restricted to Nix's remote-build commands by a forced-command gate;
//! (2) installs the ed25519 host key the relay generated for this instance,
//! so the relay pins it (no trust on first use); (3) makes the builder user
//! a Nix trusted user; (4) arms the dead-man switch: a loop that powers the
//! machine off (= terminate, by the launch's shutdown behaviour) when no
//! session of the builder user has existed for `dead_man_secs`, plus a
//! hard `shutdown` at max_lifetime + 15 minutes.
//!
//! It runs unchanged on a generic AMI (cloud-init executes it; `/usr/sbin`
//! is on its PATH) and on NixOS, whose amazon-init runs it with `bash` and
//! a PATH of coreutils, findutils, grep, sed, systemd and Nix only: the
//! script puts `/run/current-system/sw/bin` (useradd, getent, pgrep,
//! poweroff there) and the usual directories on its PATH, keeps its own
//! scripts in [`DIR`] (NixOS has no `/usr/local`), copies NixOS's read-only
//! `nix.conf` link before appending to it, and runs the switch under
//! `systemd-run` (a plain background process where systemd is not PID 1).
//! The lab boots it on both kinds of root (`tests/lab/ec2-instance.sh`).

use russh::keys::PrivateKey;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;

pub struct Inputs<'a> {
    pub relay_id: &'a str,
    pub template: &'a str,
    pub ssh_user: &'a str,
    /// The builder key's public half, `type base64`.
    pub builder_key: &'a str,
    /// This instance's host key (its public half is pinned by the relay).
    pub host_key: &'a PrivateKey,
    /// The dead-man switch (`[ec2] dead_man_switch`), in seconds.
    pub dead_man_secs: u64,
    pub max_lifetime_minutes: u64,
}

/// A fresh ed25519 host key for one instance.
pub fn new_host_key() -> Result<PrivateKey, std::io::Error> {
    use std::io::Read;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
}

/// Where the script keeps the gate and the switch on the instance.
pub const DIR: &str = "/var/lib/nix-relay-builder";

/// The PATH the script and its gate and switch run with: NixOS's system
/// profile, the usual directories, and a multi-user Nix install's profile.
const PATH: &str = "/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/nix/var/nix/profiles/default/bin";

/// The switch checks at most this often, and at least every minute.
const DEAD_MAN_CHECKS: u64 = 10;
const DEAD_MAN_POLL_MAX: u64 = 60;

/// The commands the gate lets the builder key run.
const ALLOWED: &[&str] = &[
    "nix-store --serve --write",
    "nix-store --serve",
    "nix-daemon --stdio",
    "true",
];

pub fn render(i: &Inputs<'_>) -> Result<String, super::Error> {
    let host_priv = i
        .host_key
        .to_openssh(LineEnding::LF)
        .map_err(super::Error::HostKey)?;
    let host_pub = crate::keys::openssh_line(i.host_key.public_key());
    let mut s = format!(
        "#!/bin/sh\n\
         # nix-relay builder bootstrap: relay {relay}, template {template}.\n\
         # Rendered by nix-relay for this instance only; do not edit.\n\
         # Runs once as root, from cloud-init or from NixOS's amazon-init (bash,\n\
         # a PATH without useradd, getent or pgrep; no /usr/local).\n\
         set -eu\n\
         PATH={PATH}:$PATH\n\
         export PATH\n\
         U={user}\n\
         D={DIR}\n\
         install -d -m 0755 \"$D\"\n\n",
        relay = i.relay_id,
        template = i.template,
        user = i.ssh_user,
    );
    s += &user_and_gate(i);
    s += "# 2. The host key the relay generated for this instance (pinned there).\n";
    s += "rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub\n";
    s += "umask 077\ncat > /etc/ssh/ssh_host_ed25519_key <<'NIX_RELAY_EOF'\n";
    s += &host_priv;
    s += "NIX_RELAY_EOF\numask 022\n";
    s += &format!("echo '{host_pub}' > /etc/ssh/ssh_host_ed25519_key.pub\n");
    s += "# (NixOS's sshd reads /etc/ssh/ssh_host_ed25519_key anyway)\n";
    s += "mkdir -p /etc/ssh/sshd_config.d\n";
    s += "echo 'HostKey /etc/ssh/ssh_host_ed25519_key' > /etc/ssh/sshd_config.d/nix-relay.conf\n";
    s += "systemctl restart sshd 2>/dev/null || systemctl restart ssh 2>/dev/null || true\n\n";
    s += "# 3. The builder user is a Nix trusted user.\n";
    s += "mkdir -p /etc/nix\n";
    s += "# NixOS: nix.conf is a read-only link into the store; this instance\n";
    s += "# is never rebuilt, so a writable copy is fine.\n";
    s += "if [ -L /etc/nix/nix.conf ]; then\n";
    s += "  cp --remove-destination \"$(readlink -f /etc/nix/nix.conf)\" /etc/nix/nix.conf\n";
    s += "fi\n";
    s += "echo \"extra-trusted-users = $U\" >> /etc/nix/nix.conf\n";
    s += "systemctl restart nix-daemon 2>/dev/null || true\n\n";
    s += &dead_man(i);
    s += "echo 'nix-relay: builder bootstrap done'\n";
    Ok(s)
}

/// Section 1: the builder user, its key behind the gate, and the gate.
fn user_and_gate(i: &Inputs<'_>) -> String {
    let allowed = ALLOWED
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join("|");
    let mut s = String::new();
    s += "# 1. The builder user and the relay's key, restricted to remote builds.\n";
    s += "id \"$U\" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh \"$U\"\n";
    s += "H=$(getent passwd \"$U\" | cut -d: -f6)\n";
    s += "install -d -m 0700 -o \"$U\" \"$H/.ssh\"\n";
    s += "cat > \"$H/.ssh/authorized_keys\" <<'NIX_RELAY_EOF'\n";
    s += &format!(
        "restrict,command=\"{DIR}/gate\" {} nix-relay\n",
        i.builder_key.trim()
    );
    s += "NIX_RELAY_EOF\n";
    s += "chown \"$U\" \"$H/.ssh/authorized_keys\"; chmod 0600 \"$H/.ssh/authorized_keys\"\n";
    s += "cat > \"$D/gate\" <<'NIX_RELAY_EOF'\n#!/bin/sh\n";
    s += &format!("PATH={PATH}:$PATH\nexport PATH\n");
    s += "touch /run/nix-relay/alive 2>/dev/null || true\n";
    s += &format!(
        "case \"${{SSH_ORIGINAL_COMMAND:-}}\" in\n  {allowed}) exec $SSH_ORIGINAL_COMMAND ;;\n  *) echo \"nix-relay-gate: refused\" >&2; exit 1 ;;\nesac\n"
    );
    s += "NIX_RELAY_EOF\nchmod 0755 \"$D/gate\"\n\n";
    s
}

/// Section 4: the dead-man switch and the hard shutdown.
fn dead_man(i: &Inputs<'_>) -> String {
    let n = i.dead_man_secs;
    let poll = (n / DEAD_MAN_CHECKS).clamp(1, DEAD_MAN_POLL_MAX);
    let hard = i.max_lifetime_minutes + 15;
    let user = i.ssh_user;
    let mut s = format!(
        "# 4. Dead-man switch: power off (= terminate) once no session of the\n\
         #    relay has existed for {n} s (checked every {poll} s), and at\n\
         #    max_lifetime + 15 min regardless.\n"
    );
    // The stamp is the user's: its gate touches it at every session.
    s += "install -d -m 0755 -o \"$U\" /run/nix-relay\n";
    s += "touch /run/nix-relay/alive; chown \"$U\" /run/nix-relay/alive\n";
    s += "cat > \"$D/deadman\" <<'NIX_RELAY_EOF'\n#!/bin/sh\n";
    s += &format!("PATH={PATH}\nexport PATH\n");
    s += &format!("while sleep {poll}; do\n");
    s += &format!("  if pgrep -u {user} >/dev/null; then touch /run/nix-relay/alive; fi\n");
    s += "  # no stamp counts as long ago\n";
    s += "  seen=$(stat -c %Y /run/nix-relay/alive 2>/dev/null || echo 0)\n";
    s += &format!("  if [ $(($(date +%s) - seen)) -ge {n} ]; then poweroff; fi\n");
    s += "done\nNIX_RELAY_EOF\nchmod 0755 \"$D/deadman\"\n";
    s += "if ! systemd-run --unit=nix-relay-deadman \"$D/deadman\" >/dev/null 2>&1; then\n";
    s += "  # systemd is not PID 1 here (a container): a plain background process\n";
    s += "  nohup \"$D/deadman\" >/dev/null 2>&1 &\n";
    s += "fi\n";
    s += &format!("shutdown -P +{hard} 'nix-relay: max_lifetime reached' || true\n");
    s
}

/// Pulls the builder key and the host key out of a rendered script (tests
/// check that the pinned host key is the one installed).
pub fn extract(script: &str) -> Option<(String, String)> {
    let prefix = format!("restrict,command=\"{DIR}/gate\" ");
    let builder = script
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))?
        .trim_end_matches(" nix-relay")
        .to_owned();
    let start = script.find("-----BEGIN OPENSSH PRIVATE KEY-----")?;
    let end = script.find("-----END OPENSSH PRIVATE KEY-----")?;
    let host = format!("{}-----END OPENSSH PRIVATE KEY-----\n", &script[start..end]);
    Some((builder, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_key(b: u8) -> PrivateKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[b; 32]))
    }

    fn inputs<'a>(host: &'a PrivateKey, builder: &'a str) -> Inputs<'a> {
        Inputs {
            relay_id: "relay-1",
            template: "arm",
            ssh_user: "nix-relay",
            builder_key: builder,
            host_key: host,
            dead_man_secs: 1800,
            max_lifetime_minutes: 360,
        }
    }

    #[test]
    fn the_rendered_script_matches_the_golden_file() {
        let host = fixed_key(7);
        let builder = crate::keys::openssh_line(fixed_key(9).public_key());
        let got = render(&inputs(&host, &builder)).unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/ec2/user-data.sh");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &got).unwrap();
        }
        let want = std::fs::read_to_string(path).expect("golden file (UPDATE_GOLDEN=1 writes it)");
        assert_eq!(got, want, "user data changed; review and UPDATE_GOLDEN=1");
    }

    #[test]
    fn the_keys_can_be_read_back_and_the_host_key_is_the_pinned_one() {
        let host = fixed_key(7);
        let builder = crate::keys::openssh_line(fixed_key(9).public_key());
        let script = render(&inputs(&host, &builder)).unwrap();
        let (b, h) = extract(&script).unwrap();
        assert_eq!(b, builder);
        let back = PrivateKey::from_openssh(&h).unwrap();
        assert_eq!(back.public_key().key_data(), host.public_key().key_data());
    }

    #[test]
    fn a_scaled_down_switch_is_rendered_in_seconds_and_checked_ten_times_over() {
        let host = fixed_key(7);
        let mut i = inputs(&host, "ssh-ed25519 AAAA");
        i.dead_man_secs = 20;
        let script = render(&i).unwrap();
        assert!(script.contains("while sleep 2; do\n"), "{script}");
        assert!(script.contains("-ge 20 ]; then poweroff; fi"), "{script}");
        i.dead_man_secs = 86_400;
        let script = render(&i).unwrap();
        assert!(
            script.contains("while sleep 60; do\n"),
            "checks at least every minute"
        );
    }

    #[test]
    fn nothing_is_written_under_usr_local_and_nixos_tools_are_on_the_path_first() {
        // NixOS has no /usr/local, and amazon-init's PATH has no useradd,
        // getent or pgrep: they are in /run/current-system/sw/bin.
        let host = fixed_key(7);
        let script = render(&inputs(&host, "ssh-ed25519 AAAA")).unwrap();
        assert!(!script.contains("/usr/local/bin/"), "{script}");
        let path = script
            .find("\nPATH=/run/current-system/sw/bin:")
            .expect("PATH set");
        for call in ["|| useradd ", "$(getent ", "if pgrep "] {
            assert!(
                script.find(call).unwrap() > path,
                "{call} before PATH is set"
            );
        }
        let deadman = &script[script.find("cat > \"$D/deadman\"").unwrap()..];
        assert!(
            deadman.contains("\nPATH=/run/current-system/sw/bin:"),
            "the switch sets PATH too"
        );
    }
}
