#!/usr/bin/env bash
# HARNESS SELF-CHECK ONLY, not the relay: a stand-in for `nix-relay serve
# --config FILE` that lets e2e.sh's relay mode be exercised before the real
# relay exists. It runs an OpenSSH sshd on the relay's listen address with the
# relay's host key, accepts the [[client]] key, and forwards
# `nix-store --serve --write` byte-for-byte to backend h1 (no routing!); any
# other command gets a one-line refusal and exit status 1.
#   LAB_RELAY_USER=root RELAY_BIN=tests/lab/fake-relay.sh tests/lab/e2e.sh
# (sshd needs a real account, hence LAB_RELAY_USER=root.) Expected: everything
# passes except c (-A foreign needs h2; the fake sends all to h1).
set -euo pipefail
[ "${1:-}" = serve ] && [ "${2:-}" = --config ] && [ -f "${3:-}" ] || { echo "usage: fake-relay.sh serve --config FILE" >&2; exit 2; }
conf=$3
STATE=$(cd "$(dirname "$conf")" && pwd)
listen=$(sed -n 's/^listen = "\(.*\)"$/\1/p' "$conf" | head -1)
hostkey=$(sed -n 's/^host_key = "\(.*\)"$/\1/p' "$conf" | head -1)
d=$STATE/fake-relay
mkdir -p "$d"
sed -n '/^\[\[client\]\]/,/^\[/s/^key = "\(.*\)"$/\1/p' "$conf" > "$d/authorized_keys"
cat > "$d/cmd" <<CMD
#!/bin/sh
case "\${SSH_ORIGINAL_COMMAND:-}" in
  "nix-store --serve --write") exec ssh -F "$STATE/ssh_config" h1 'nix-store --serve --write';;
  *) echo "fake-relay: refused: only 'nix-store --serve --write' is served" >&2; exit 1;;
esac
CMD
chmod +x "$d/cmd"
cat > "$d/sshd_config" <<CONF
ListenAddress $listen
HostKey $hostkey
PidFile none
AuthorizedKeysFile $d/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
X11Forwarding no
AllowTcpForwarding no
SetEnv HOME=$d
ForceCommand $d/cmd
CONF
if getent shadow root | cut -d: -f2 | grep -q '^!'; then sed -i 's/^UsePAM no/UsePAM yes/' "$d/sshd_config"; fi
/usr/sbin/sshd -D -e -f "$d/sshd_config" &
child=$!
trap 'kill $child 2>/dev/null; wait $child 2>/dev/null; exit 0' TERM INT
wait $child
