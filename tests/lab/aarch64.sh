#!/usr/bin/env bash
# Real aarch64 in the lab: Debian's qemu-user-static registered with
# binfmt_misc (the F flag: the kernel holds the interpreter open, so a
# sandboxed build finds it), and Debian's arm64 busybox-static unpacked into
# tests/lab/drv/bb-arm64 (not committed). The `foreign` derivation
# (aarch64-linux) builds with it, so the lab's aarch64 backend (h2,
# extra-platforms = aarch64-linux) really executes arm64 code.
#   aarch64.sh ensure   install / register / unpack what is missing (root; tests/setup.sh)
#   aarch64.sh check    exit 1 with the reason unless all of it is in place
set -euo pipefail
LAB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BB=$LAB/drv/bb-arm64/bin
BINFMT=/proc/sys/fs/binfmt_misc
CONF=/usr/lib/binfmt.d/qemu-aarch64.conf
die() { echo "aarch64.sh: $*" >&2; exit 1; }

registered() {
  grep -qx enabled "$BINFMT/qemu-aarch64" 2>/dev/null && grep -q '^flags: .*F' "$BINFMT/qemu-aarch64"
}

check() {
  registered || die "qemu-aarch64 is not registered with binfmt_misc (F flag); run tests/setup.sh"
  [ -x "$BB/busybox" ] || die "$BB/busybox missing; run tests/setup.sh"
  # an aarch64 ELF has e_machine 0xb7 (EM_AARCH64) at offset 18
  [ "$(od -An -tx1 -j18 -N2 "$BB/busybox" | tr -d ' \n')" = b700 ] || die "$BB/busybox is not an aarch64 ELF"
  [ "$("$BB/busybox" uname -m)" = aarch64 ] || die "$BB/busybox does not run as aarch64"
}

register() {
  [ -e "$BINFMT/register" ] || mount -t binfmt_misc binfmt_misc "$BINFMT"
  [ ! -e "$BINFMT/qemu-aarch64" ] || echo -1 > "$BINFMT/qemu-aarch64"
  grep -v '^#' "$CONF" > "$BINFMT/register"
}

unpack_busybox() {
  local tmp
  dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64; apt-get update -qq </dev/null; }
  tmp=$(mktemp -d); chown _apt "$tmp" 2>/dev/null || true
  (cd "$tmp" && apt-get download -qq busybox-static:arm64 </dev/null)
  dpkg-deb -x "$tmp"/busybox-static_*_arm64.deb "$tmp/x"
  mkdir -p "$BB"
  install -m 0755 "$tmp/x/bin/busybox" "$BB/busybox"
  ln -sfn busybox "$BB/sh"
  rm -rf "$tmp"
}

case ${1:-} in
  check) check;;
  ensure)
    dpkg-query -W -f='${Status}' qemu-user-static 2>/dev/null | grep -q "install ok installed" \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user-static </dev/null >/dev/null
    registered || register
    [ -x "$BB/busybox" ] || unpack_busybox
    check;;
  *) die "usage: aarch64.sh ensure|check";;
esac
