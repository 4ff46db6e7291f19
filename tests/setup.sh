#!/usr/bin/env bash
# Idempotent host setup for nix-relay's tests, as root on Debian 12.
#  - apt: nix-bin openssh-server openssh-client busybox-static util-linux python3
#    (apt-get update + install only when something is missing; no recommends,
#    which skips nix-setup-systemd: no systemd is needed)
#  - nixbld group + users, /etc/nix/nix.conf for offline use, /run/sshd
#  - tests/lab/drv/bb (static busybox bootstrap for the test derivations), and
#    tests/lab/drv/bb-arm64 with qemu-user-static under binfmt_misc (tests/lab/aarch64.sh)
#  - Debian roots with Nix 2.26 and 2.34 for the lab's matrix (tests/lab/roots.sh,
#    cached under /var/cache/nix-relay-ci/roots: ~800 MB, downloaded once)
#  - moto (EC2 API double for the EC2 tests) in a venv: /opt/nix-relay-test/moto
#  - checks that a Rust toolchain (cargo, rustfmt, clippy) is present
# Nothing is started here (see tests/lab/hosts.sh). Safe to run any number of times.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB=$REPO/tests/lab
export PATH="$PATH:/usr/sbin:/sbin"
say() { echo "setup.sh: $*"; }
die() { echo "setup.sh: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (try: sudo $0)"

# ---- packages -----------------------------------------------------------------
# prometheus: for promtool (checks the /metrics exposition); shellcheck: tests/guard.sh
# debootstrap: the modern Nix roots (tests/lab/roots.sh)
pkgs="nix-bin openssh-server openssh-client busybox-static util-linux python3 python3-venv curl prometheus shellcheck debootstrap"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  command -v apt-get >/dev/null || die "missing packages:$missing (and no apt-get: is this Debian 12?)"
  say "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq </dev/null
  # shellcheck disable=SC2086
  # Packages must not start services here (prometheus ships one): block
  # service starts for the duration of the install.
  rc_guard=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; rc_guard=1
  fi
  apt-get install -y -qq --no-install-recommends $missing </dev/null >/dev/null
  [ "$rc_guard" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
for c in nix-store nix-build nix ssh ssh-keygen unshare nsenter python3; do
  command -v "$c" >/dev/null || die "'$c' not found after package install"
done
[ -x /usr/sbin/sshd ] || die "/usr/sbin/sshd missing"
[ -x /bin/busybox ] || die "/bin/busybox missing (busybox-static)"
file_static=$(LC_ALL=C ldd /bin/busybox 2>&1 || true)
case $file_static in *"not a dynamic executable"*|*"statically linked"*) ;; *) die "/bin/busybox is not static (install busybox-static)";; esac

# ---- nix build users (normally made by nix-setup-systemd, which we skip) -------
groupadd --force --system nixbld
for n in $(seq 1 10); do
  id "nixbld$n" >/dev/null 2>&1 || useradd --system --comment "Nix build user $n" \
    --home-dir /var/empty --gid nixbld --groups nixbld --no-user-group \
    --shell /usr/sbin/nologin "nixbld$n"
done

# ---- /etc/nix/nix.conf (root namespace): offline, sandboxed -------------------
# Lab hosts and the client get their own /etc/nix (tests/lab/hosts.sh); this one
# is for the root namespace (where the relay runs: it must never build anything).
mkdir -p /nix /etc/nix
conf=/etc/nix/nix.conf
marker_re='written by (nix-relay tests/setup.sh|nixlab install.sh)'
if [ ! -f "$conf" ] || ! grep -Eq "$marker_re" "$conf"; then
  [ -f "$conf" ] && cp "$conf" "$conf.before-nix-relay"
  cat > "$conf" <<'CONF'
# written by nix-relay tests/setup.sh
substituters =
experimental-features = nix-command
sandbox = true
sandbox-fallback = false
build-users-group = nixbld
connect-timeout = 5
CONF
  say "wrote $conf"
fi

# ---- sshd privilege-separation dir (normally made by systemd-tmpfiles) --------
mkdir -p /run/sshd && chmod 0755 /run/sshd

# ---- bootstrap busybox for tests/lab/drv --------------------------------------
bb=$LAB/drv/bb/bin
if ! cmp -s /bin/busybox "$bb/busybox" 2>/dev/null; then
  mkdir -p "$bb"
  cp /bin/busybox "$bb/busybox.tmp"
  chmod 0755 "$bb/busybox.tmp"
  mv -f "$bb/busybox.tmp" "$bb/busybox"
fi
ln -sfn busybox "$bb/sh"
# real aarch64: qemu-user-static via binfmt_misc, Debian's arm64 busybox (tests/lab/aarch64.sh)
"$LAB/aarch64.sh" ensure

# ---- today's Nix (2.26, 2.34) for the lab's version matrix (tests/lab/matrix.sh) --
# Debian roots made by debootstrap, cached outside the clone
# (/var/cache/nix-relay-ci/roots; NIX_RELAY_ROOTS): cheap when present.
"$LAB/roots.sh" ensure

# ---- the lab's stand-in for cache.nixos.org (tests/lab/upstream.sh) ----------
# a signed binary cache of a generated ~1.35 GiB closure, made once outside the clone
"$LAB/upstream.sh" ensure

# ---- moto: the EC2 API double (tests/ec2_moto.rs, tests/lab/scenarios/ec2.sh) --
# A venv of its own (Debian's python3, pinned version); the harness starts
# `moto_server` on 127.0.0.1 with fake credentials.
MOTO_VERSION=5.2.5
MOTO_VENV=/opt/nix-relay-test/moto
if [ "$("$MOTO_VENV/bin/python" -c 'import moto; print(moto.__version__)' 2>/dev/null)" != "$MOTO_VERSION" ]; then
  say "installing moto[server]==$MOTO_VERSION into $MOTO_VENV"
  /usr/bin/python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
[ -x "$MOTO_VENV/bin/moto_server" ] || die "$MOTO_VENV/bin/moto_server missing after install"

# ---- Rust toolchain ------------------------------------------------------------
# (root's PATH under sudo may lack ~/.cargo/bin)
if ! command -v cargo >/dev/null && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
  hint=""
  [ -n "${SUDO_USER:-}" ] && hint=" (under sudo, PATH is reset: try 'sudo env \"PATH=\$PATH\" RUSTUP_HOME=\$HOME/.rustup tests/run.sh')"
  die "cargo not found: install a Rust toolchain >= 1.95 (https://rustup.rs: rustup toolchain install stable --component rustfmt,clippy)$hint"
fi
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"

say "ok ($(nix --version), $(ssh -V 2>&1), $(cargo --version))"
