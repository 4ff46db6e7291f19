#!/bin/sh
# nix-relay builder bootstrap: relay relay-1, template arm.
# Rendered by nix-relay for this instance only; do not edit.
# Runs once as root, from cloud-init or from NixOS's amazon-init (bash,
# a PATH without useradd, getent or pgrep; no /usr/local).
set -eu
PATH=/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/nix/var/nix/profiles/default/bin:$PATH
export PATH
U=nix-relay
D=/var/lib/nix-relay-builder
install -d -m 0755 "$D"

# 1. The builder user and the relay's key, restricted to remote builds.
id "$U" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$U"
H=$(getent passwd "$U" | cut -d: -f6)
install -d -m 0700 -o "$U" "$H/.ssh"
cat > "$H/.ssh/authorized_keys" <<'NIX_RELAY_EOF'
restrict,command="/var/lib/nix-relay-builder/gate" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP0XJDhaoMdbZPt4zWAvodmR/ev3axPFjtcC6sg16fYY nix-relay
NIX_RELAY_EOF
chown "$U" "$H/.ssh/authorized_keys"; chmod 0600 "$H/.ssh/authorized_keys"
cat > "$D/gate" <<'NIX_RELAY_EOF'
#!/bin/sh
PATH=/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/nix/var/nix/profiles/default/bin:$PATH
export PATH
touch /run/nix-relay/alive 2>/dev/null || true
case "${SSH_ORIGINAL_COMMAND:-}" in
  "nix-store --serve --write"|"nix-store --serve"|"nix-daemon --stdio"|"true") exec $SSH_ORIGINAL_COMMAND ;;
  *) echo "nix-relay-gate: refused" >&2; exit 1 ;;
esac
NIX_RELAY_EOF
chmod 0755 "$D/gate"

# 2. The host key the relay generated for this instance (pinned there).
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
umask 077
cat > /etc/ssh/ssh_host_ed25519_key <<'NIX_RELAY_EOF'
-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDqSmxj4pxSCr71UHsTLsX5lUd2rr6+e5JCHuppFEbSLAAAAIgAAAAAAAAA
AAAAAAtzc2gtZWQyNTUxOQAAACDqSmxj4pxSCr71UHsTLsX5lUd2rr6+e5JCHuppFEbSLA
AAAEAHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHB+pKbGPinFIKvvVQexMuxfmV
R3auvr57kkIe6mkURtIsAAAAAAECAwQF
-----END OPENSSH PRIVATE KEY-----
NIX_RELAY_EOF
umask 022
echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpKbGPinFIKvvVQexMuxfmVR3auvr57kkIe6mkURtIs' > /etc/ssh/ssh_host_ed25519_key.pub
# (NixOS's sshd reads /etc/ssh/ssh_host_ed25519_key anyway)
mkdir -p /etc/ssh/sshd_config.d
echo 'HostKey /etc/ssh/ssh_host_ed25519_key' > /etc/ssh/sshd_config.d/nix-relay.conf
systemctl restart sshd 2>/dev/null || systemctl restart ssh 2>/dev/null || true

# 3. The builder user is a Nix trusted user.
mkdir -p /etc/nix
# NixOS: nix.conf is a read-only link into the store; this instance
# is never rebuilt, so a writable copy is fine.
if [ -L /etc/nix/nix.conf ]; then
  cp --remove-destination "$(readlink -f /etc/nix/nix.conf)" /etc/nix/nix.conf
fi
echo "extra-trusted-users = $U" >> /etc/nix/nix.conf
systemctl restart nix-daemon 2>/dev/null || true

# 4. Dead-man switch: power off (= terminate) once no session of the
#    relay has existed for 1800 s (checked every 60 s), and at
#    max_lifetime + 15 min regardless.
install -d -m 0755 -o "$U" /run/nix-relay
touch /run/nix-relay/alive; chown "$U" /run/nix-relay/alive
cat > "$D/deadman" <<'NIX_RELAY_EOF'
#!/bin/sh
PATH=/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/nix/var/nix/profiles/default/bin
export PATH
while sleep 60; do
  if pgrep -u nix-relay >/dev/null; then touch /run/nix-relay/alive; fi
  # no stamp counts as long ago
  seen=$(stat -c %Y /run/nix-relay/alive 2>/dev/null || echo 0)
  if [ $(($(date +%s) - seen)) -ge 1800 ]; then poweroff; fi
done
NIX_RELAY_EOF
chmod 0755 "$D/deadman"
if ! systemd-run --unit=nix-relay-deadman "$D/deadman" >/dev/null 2>&1; then
  # systemd is not PID 1 here (a container): a plain background process
  nohup "$D/deadman" >/dev/null 2>&1 &
fi
shutdown -P +375 'nix-relay: max_lifetime reached' || true
echo 'nix-relay: builder bootstrap done'
