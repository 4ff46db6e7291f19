#!/usr/bin/env bash
# Today's Nix for the lab: a Debian root per Nix version, made with debootstrap
# from Debian's archive and cached outside the clone (like the cargo target dir),
# so CI downloads each one once. As root, on Debian 12.
#
#   roots.sh ensure [VERSION...]   make the missing roots (default: every modern version)
#   roots.sh dir VERSION           print the root of VERSION (fails if it is not complete)
#   roots.sh check VERSION         exit 0 if the root of VERSION is complete
#
# VERSION: 2.26 (Debian trixie, Nix 2.26.x) or 2.34 (Debian sid, Nix 2.34.x).
# 2.8 is the host's own Nix (Debian 12): no root. A root is complete when its
# marker file (written last, after dpkg says every package is installed) names
# the nix-bin version, and that version is the one asked for.
# Env: NIX_RELAY_ROOTS (/var/cache/nix-relay-ci/roots), DEBIAN_MIRROR
# (http://deb.debian.org/debian).
set -euo pipefail
ROOTS=${NIX_RELAY_ROOTS:-/var/cache/nix-relay-ci/roots}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
MODERN="2.26 2.34"
# nix-bin needs the virtual perl-dbdabi-94, which debootstrap cannot resolve:
# libdbi-perl provides it. openssh-server: a modern backend runs the root's sshd.
# python3-minimal: the byte recorder (bin/tee-shim.py) for capture-golden.sh.
PKGS=nix-bin,libdbi-perl,openssh-server,openssh-client,procps,python3-minimal
MARKER=.nix-relay-root
die() { echo "roots.sh: $*" >&2; exit 1; }

suite_of() {
  case $1 in
    2.26) echo trixie;;
    2.34) echo sid;;
    *) die "unknown Nix version '$1' (modern roots: $MODERN; 2.8 is the host's)";;
  esac
}

# nix_version ROOT: the installed nix-bin version (e.g. 2.34.8+dfsg-1+b1), or nothing
nix_version() {
  chroot "$1" dpkg-query -W -f='${Status} ${Version}\n' nix-bin openssh-server 2>/dev/null \
    | awk '$3 != "installed" { bad = 1 } NR == 1 { v = $4 } END { if (!bad && NR == 2) print v }'
}

check() {  # check VERSION
  local r; r=$ROOTS/$(suite_of "$1")
  [ -f "$r/$MARKER" ] && [ -x "$r/usr/bin/nix" ] && [ -x "$r/usr/sbin/sshd" ] && [ -x "$r/usr/bin/python3" ] || return 1
  case $(cat "$r/$MARKER") in "$1".*) return 0;; *) return 1;; esac
}

make_root() {  # make_root VERSION
  local v=$1 suite r got
  suite=$(suite_of "$v"); r=$ROOTS/$suite
  check "$v" && return 0
  [ "$(id -u)" = 0 ] || die "must run as root to make $r"
  command -v debootstrap >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap </dev/null >/dev/null
  }
  rm -f "$r/$MARKER"
  if [ ! -x "$r/usr/bin/nix" ]; then
    echo "roots.sh: making $r (Debian $suite, for Nix $v; a few minutes, ~400 MB)" >&2
    # an interrupted run leaves a root debootstrap cannot resume: start over
    rm -rf "$r"; mkdir -p "$r"
    debootstrap --variant=minbase --include="$PKGS" "$suite" "$r" "$MIRROR" >"$r.log" 2>&1 \
      || { tail -5 "$r.log" >&2; die "debootstrap of $suite failed (log: $r.log)"; }
  fi
  # a root made before python3-minimal was in PKGS (Check-Valid-Until: a sid
  # Release file past its Valid-Until, as on a frozen mirror, must not stop it)
  if [ ! -x "$r/usr/bin/python3" ]; then
    chroot "$r" /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive; apt-get -o Acquire::Check-Valid-Until=false update -qq &&
      apt-get install -y -qq --no-install-recommends python3-minimal' </dev/null >>"$r.log" 2>&1 \
      || { tail -5 "$r.log" >&2; die "$r: installing python3-minimal failed (log: $r.log)"; }
  fi
  got=$(nix_version "$r")
  [ -n "$got" ] || die "$r: nix-bin or openssh-server is not installed (dpkg); remove $r and retry"
  case $got in "$v".*) ;; *) die "$r has nix-bin $got, not Nix $v: Debian $suite moved on; update roots.sh";; esac
  mkdir -p "$r/nix" "$r/etc/nix" "$r/run/sshd"
  echo "$got" > "$r/$MARKER"
  echo "roots.sh: $r: Nix $got" >&2
}

case ${1:-} in
  ensure) shift; [ $# -gt 0 ] || set -- $MODERN; for v in "$@"; do make_root "$v"; done;;
  dir) check "${2:?roots.sh dir VERSION}" || die "no complete root for Nix $2 in $ROOTS (run: tests/lab/roots.sh ensure $2)"
       echo "$ROOTS/$(suite_of "$2")";;
  check) check "${2:?roots.sh check VERSION}";;
  *) sed -n '2,16p' "$0"; exit 2;;
esac
