#!/usr/bin/env bash
# One EC2 "instance" of the lab, booted from an image root and the relay's
# user data (bin/ec2-booter.py runs it when moto reports an instance running).
#
#   ec2-instance.sh boot DIR IMAGE IP   the instance's life, in the foreground:
#                                       DIR/user-data is what RunInstances got
#   ec2-instance.sh stop PID            pull the plug: SIGKILL the instance's
#                                       PID 1 (PID: the boot's `unshare`)
#
# An instance is a mount and PID namespace (the network is the machine's:
# IP is its own loopback address in the lab's 127.x subnet) whose root is an
# overlay: a fresh writable layer DIR/upper over a cached Debian root of
# tests/lab/roots.sh, which is never written. Before entering it, the image's
# own setup is laid on top (what an AMI's build would have put there):
#
# * debian: the trixie root (Debian 13, Nix 2.26) as a generic AMI with
#   cloud-init: nix.conf (nixbld build users, sandbox, extra-platforms =
#   aarch64-linux: the lab's x86_64 machine runs the arm64 builds under
#   qemu-user), sshd on IP:22 (sshd_config.d), the user data as
#   /var/lib/cloud/instance/scripts/part-001, run executable with cloud-init's
#   PATH (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin).
# * nixos: the sid root (Nix 2.34) laid out like NixOS: every program only
#   in /run/current-system/sw/bin (links into the root's /usr/bin and
#   /usr/sbin, bound read-only under /lab-nixos/pkgs), /usr/bin holding only
#   env and sh, /usr/sbin only PAM's unix_chkpwd, no /usr/local; /etc/nix/nix.conf and
#   /etc/ssh/sshd_config links to read-only files (no sshd_config.d). The user
#   data runs as amazon-init runs it: `bash FILE` with a PATH of coreutils,
#   findutils, grep, sed, tar, gzip, xz, systemctl, systemd-run and Nix only
#   (/lab-nixos/amazon-init/bin).
#
# Both: no systemd (systemctl and systemd-run fail, as in a container); PID 1
# is the image's init (stands for systemd): it runs the user data first, then
# starts nix-daemon and sshd (-E /var/log/sshd.log). poweroff and shutdown
# are the lab's: they append to /var/log/nix-relay-lab/power.log (time, args,
# the caller's command line, the mtime of /run/nix-relay/alive) and end the
# instance (SIGTERM to PID 1; `shutdown +N` does that N minutes later).
# Everything the instance wrote stays in DIR/upper for the test to read.
set -euo pipefail
LAB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "ec2-instance.sh: $*" >&2; exit 1; }

# The AMI's Nix: build users, the sandbox, no network, aarch64 by qemu-user
nix_conf() {
  cat <<CONF
# the lab AMI's Nix (tests/lab/ec2-instance.sh)
build-users-group = nixbld
sandbox = ${LAB_SANDBOX:-true}
sandbox-fallback = false
substituters =
extra-platforms = aarch64-linux
experimental-features = nix-command
max-jobs = 2
cores = 1
CONF
}

# nixbld users as an installer makes them (uids 30001..; NixOS's numbers)
build_users() {
  local r=$1 i members=""
  for i in 1 2 3 4; do
    echo "nixbld$i:x:$((30000 + i)):30000:Nix build user $i:/var/empty:/usr/sbin/nologin" >>"$r/etc/passwd"
    echo "nixbld$i:!:1::::::" >>"$r/etc/shadow"
    members=$members${members:+,}nixbld$i
  done
  echo "nixbld:x:30000:$members" >>"$r/etc/group"
}

# power_shim FILE: the lab's poweroff/shutdown
power_shim() {
  cat >"$1" <<'SH'
#!/bin/sh
# The lab's poweroff / shutdown (tests/lab/ec2-instance.sh): record, then end
# the instance (its PID 1 exits on SIGTERM), at once or `shutdown +N` later.
name=${0##*/}
mkdir -p /var/log/nix-relay-lab
caller=$(tr '\0' ' ' </proc/$PPID/cmdline 2>/dev/null)
alive=$(stat -c %Y /run/nix-relay/alive 2>/dev/null || echo -)
echo "$(date +%s) $name $* caller=[$caller] alive=$alive" >>/var/log/nix-relay-lab/power.log
when=0
if [ "$name" = shutdown ]; then
  when=1
  for a in "$@"; do
    case $a in now) when=0 ;; +[0-9]*) when=${a#+} ;; -c) exit 0 ;; esac
  done
fi
if [ "$when" -gt 0 ]; then
  nohup sh -c "sleep $((when * 60)); kill -TERM 1" >/dev/null 2>&1 &
  exit 0
fi
kill -TERM 1
SH
  chmod 0755 "$1"
}

# init FILE PATH RUN-USER-DATA PREP: PID 1 of the instance
write_init() {
  cat >"$1" <<SH
#!/bin/sh
# PID 1 of a lab EC2 instance (tests/lab/ec2-instance.sh), standing for
# systemd: the user data first, then the image's services.
trap 'exit 0' TERM
PATH=$2
export PATH
mkdir -p /run/sshd /var/log/nix-relay-lab /tmp
chmod 0755 /run/sshd; chmod 1777 /tmp
$4
log() { echo "\$(date +%s) \$*" >>/var/log/nix-relay-lab/boot.log; }
log "boot"
$3 >/var/log/user-data.log 2>&1 </dev/null && rc=0 || rc=\$?
log "user-data exit \$rc"
nix-daemon --daemon >/var/log/nix-daemon.log 2>&1 </dev/null &
\$(command -v sshd) -D -E /var/log/sshd.log </dev/null &
log "services started"
# (a failing sleep ends the instance rather than spin)
while :; do sleep 3600 & wait \$! || exit 1; done
SH
  chmod 0755 "$1"
}

image_debian() {  # image_debian ROOT IP USERDATA
  local r=$1 ip=$2
  mkdir -p "$r/etc/nix" "$r/usr/lib/nix-relay-lab" "$r/var/lib/cloud/instance/scripts"
  nix_conf >"$r/etc/nix/nix.conf"
  build_users "$r"
  echo "ListenAddress $ip:22" >"$r/etc/ssh/sshd_config.d/00-lab-network.conf"
  power_shim "$r/usr/sbin/poweroff"
  power_shim "$r/usr/sbin/shutdown"
  install -m 0700 "$3" "$r/var/lib/cloud/instance/scripts/part-001"
  write_init "$r/usr/lib/nix-relay-lab/init" /usr/sbin:/usr/bin:/sbin:/bin \
    "env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /var/lib/cloud/instance/scripts/part-001" ""
  echo /usr/lib/nix-relay-lab/init
}

image_nixos() {  # image_nixos ROOT IP USERDATA LOWER
  local r=$1 ip=$2 lower=$4 n=/lab-nixos f p
  mkdir -p "$r$n/pkgs/bin" "$r$n/pkgs/sbin" "$r$n/system/sw/bin" "$r$n/amazon-init/bin" "$r$n/etc" "$r/etc/ec2-metadata"
  # the "store": the root's programs, read-only; the system profile links them
  mount --bind -o ro "$lower/usr/bin" "$r$n/pkgs/bin"
  mount --bind -o ro "$lower/usr/sbin" "$r$n/pkgs/sbin"
  for f in "$lower"/usr/sbin/* "$lower"/usr/bin/*; do
    p=${f#"$lower"/usr/}
    [ -e "$r$n/system/sw/bin/${f##*/}" ] || ln -s "$n/pkgs/$p" "$r$n/system/sw/bin/${f##*/}"
  done
  power_shim "$r$n/system/sw/bin/poweroff"
  power_shim "$r$n/system/sw/bin/shutdown"
  # amazon-init's PATH: nix, systemd, grep, git, tar, gzip, sed, xz (+ the
  # service default: coreutils, findutils, grep, sed, systemd)
  for p in coreutils findutils grep sed tar gzip xz-utils nix-bin; do
    grep -E '^/usr/s?bin/[^/]+$' "$lower/var/lib/dpkg/info/$p.list"
  done | while read -r f; do ln -sf "$n/system/sw/bin/${f##*/}" "$r$n/amazon-init/bin/${f##*/}"; done
  ln -s "$n/system/sw/bin/systemctl" "$r$n/amazon-init/bin/systemctl"
  ln -s "$n/system/sw/bin/systemd-run" "$r$n/amazon-init/bin/systemd-run"
  # /usr/bin: env and sh only; /usr/sbin empty; no /usr/local
  mount -t tmpfs -o mode=0755 tmpfs "$r/usr/bin"
  mount -t tmpfs -o mode=0755 tmpfs "$r/usr/sbin"
  ln -s "$n/pkgs/bin/env" "$r/usr/bin/env"
  ln -s "$n/pkgs/bin/dash" "$r/usr/bin/sh"
  # (Debian's pam_unix, which the image's sshd uses, runs this helper from
  # /usr/sbin; NixOS's PAM has it in /run/wrappers: the image's, not the user data's)
  ln -s "$n/pkgs/sbin/unix_chkpwd" "$r/usr/sbin/unix_chkpwd"
  rm -rf "${r:?}/usr/local"
  # configuration files are read-only links, as into the store; the
  # sandbox's /bin/sh from the "store", as NixOS sets it (Debian's Nix
  # would look for /usr/bin/bash-static)
  { nix_conf; echo "sandbox-paths = /bin/sh=$n/pkgs/bin/bash-static"; } >"$r$n/etc/nix.conf"
  cat >"$r$n/etc/sshd_config" <<CONF
# the lab's NixOS-like sshd_config (NixOS generates it; no sshd_config.d)
ListenAddress $ip:22
HostKey /etc/ssh/ssh_host_rsa_key
HostKey /etc/ssh/ssh_host_ed25519_key
AuthorizedKeysFile %h/.ssh/authorized_keys /etc/ssh/authorized_keys.d/%u
UsePAM yes
KbdInteractiveAuthentication no
PasswordAuthentication no
PermitRootLogin prohibit-password
X11Forwarding no
PrintMotd no
CONF
  chmod 0444 "$r$n/etc/nix.conf" "$r$n/etc/sshd_config"
  rm -rf "${r:?}/etc/nix"; mkdir -p "$r/etc/nix"
  ln -s "$n/etc/nix.conf" "$r/etc/nix/nix.conf"
  ln -sf "$n/etc/sshd_config" "$r/etc/ssh/sshd_config"
  build_users "$r"
  install -m 0600 "$3" "$r/etc/ec2-metadata/user-data"
  write_init "$r$n/init" /run/current-system/sw/bin:$n/system/sw/bin \
    "env -i HOME=/root PATH=$n/amazon-init/bin $n/system/sw/bin/bash /etc/ec2-metadata/user-data" \
    "ln -sfn $n/system /run/current-system"
  echo "$n/init"
}

# inside DIR IMAGE IP LOWER: PID 1 of the new PID namespace, in its own mount
# namespace: the overlay, the image, then the instance's root
inside() {
  local dir=$1 image=$2 ip=$3 lower=$4 r=$1/root init
  mount -t overlay overlay -o "lowerdir=$lower,upperdir=$dir/upper,workdir=$dir/work" "$r"
  mount -t proc proc "$r/proc"
  mount --rbind /dev "$r/dev"
  mount -t tmpfs -o mode=0755 tmpfs "$r/run"
  init=$("image_$image" "$r" "$ip" "$dir/user-data" "$lower")
  mkdir -p "$r/.oldroot"
  # (after pivot_root, umount is the image's: NixOS-like has it only there)
  PATH=/lab-nixos/pkgs/bin:$PATH
  cd "$r"
  pivot_root . .oldroot
  cd /
  umount -l /.oldroot
  exec "$init"
}

boot() {
  local dir=$1 image=$2 ip=$3 lower
  case $image in
    debian) lower=$("$LAB/roots.sh" dir 2.26) ;;
    nixos) lower=$("$LAB/roots.sh" dir 2.34) ;;
    *) die "unknown image '$image' (debian, nixos)" ;;
  esac
  [[ $ip =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "refusing address '$ip': lab instances live in 127.0.0.0/8"
  [ -f "$dir/user-data" ] || die "$dir/user-data missing"
  mkdir -p "$dir/upper" "$dir/work" "$dir/root"
  exec unshare --mount --pid --fork --kill-child --propagation private -- "$0" _inside "$dir" "$image" "$ip" "$lower"
}

stop() {  # stop UNSHARE-PID
  local p=$1 kids
  kids=$(cat "/proc/$p/task/$p/children" 2>/dev/null || true)
  # shellcheck disable=SC2086
  [ -z "$kids" ] || kill -KILL $kids 2>/dev/null || true
}

case ${1:-} in
  boot) shift; boot "$@" ;;
  stop) shift; stop "$@" ;;
  _inside) shift; inside "$@" ;;
  *) sed -n '2,36p' "$0"; exit 2 ;;
esac
