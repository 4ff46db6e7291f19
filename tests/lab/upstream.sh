#!/usr/bin/env bash
# The lab's stand-in for cache.nixos.org: a signed binary cache on loopback
# holding a closure shaped like a real one (drv/upstream.nix: 300 paths,
# ~1.35 GiB, a deep reference graph, 6 large paths, many small ones).
#   upstream.sh ensure       build it once (a scratch chroot store), copy it
#                            signed (key upstream-lab-1) and zstd-compressed to
#                            $NIX_RELAY_UPSTREAM/cache (default
#                            /var/cache/nix-relay-ci/upstream; outside the
#                            clone, so CI reruns are cheap); rebuilt only when
#                            drv/upstream.nix changes
#   upstream.sh serve PORT   serve it over HTTP on 127.0.0.1:PORT ($LAB_STATE/run/upstream.pid)
#   upstream.sh stop
#   upstream.sh key          its public key, for trusted-public-keys
#   upstream.sh top          the store path whose closure is the whole cache
set -euo pipefail
LAB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${NIX_RELAY_UPSTREAM:-/var/cache/nix-relay-ci/upstream}
STATE=${LAB_STATE:-/tmp/nix-relay-lab}
PIDF=$STATE/run/upstream.pid
die() { echo "upstream.sh: $*" >&2; exit 1; }
stamp() { sha256sum "$LAB/drv/upstream.nix" | cut -c1-16; }
made() { [ -f "$DIR/made" ] && [ "$(sed -n 1p "$DIR/made")" = "$(stamp)" ] && [ -d "$DIR/cache" ]; }

ensure() {
  made && return 0
  [ -x "$LAB/drv/bb/bin/busybox" ] || die "$LAB/drv/bb missing: run tests/setup.sh"
  echo "upstream.sh: making the upstream cache in $DIR (~1.35 GiB, once)" >&2
  local build=$DIR/build top
  rm -rf "$DIR/cache" "$DIR/cache.tmp" "$DIR/made"
  [ ! -d "$build" ] || { chmod -R u+w "$build"; rm -rf "$build"; }
  mkdir -p "$DIR"
  [ -f "$DIR/key.sec" ] || nix-store --generate-binary-cache-key upstream-lab-1 "$DIR/key.sec" "$DIR/key.pub"
  top=$(nix-build --store "$build" "$LAB/drv/upstream.nix" -A top --no-out-link \
    --max-jobs 2 --option substituters "" --option sandbox true)
  nix copy --store "$build" --to "file://$DIR/cache.tmp?secret-key=$DIR/key.sec&compression=zstd" "$top"
  chmod -R u+w "$build"; rm -rf "$build"
  mv "$DIR/cache.tmp" "$DIR/cache"
  printf '%s\n%s\n' "$(stamp)" "$top" > "$DIR/made"
}

serve() {
  local port=$1 i
  made || die "no upstream cache: run 'upstream.sh ensure' (tests/setup.sh does)"
  stop
  mkdir -p "$(dirname "$PIDF")"
  setsid python3 -m http.server --bind 127.0.0.1 --directory "$DIR/cache" "$port" \
    >"$STATE/upstream-http.log" 2>&1 &
  echo $! > "$PIDF"
  for i in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/nix-cache-info" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  die "the upstream cache did not answer on 127.0.0.1:$port"
}

stop() {
  [ -f "$PIDF" ] || return 0
  kill "$(cat "$PIDF")" 2>/dev/null || true
  rm -f "$PIDF"
}

case ${1:-} in
  ensure) ensure;;
  serve) [ -n "${2:-}" ] || die "usage: upstream.sh serve PORT"; serve "$2";;
  stop) stop;;
  key) cat "$DIR/key.pub";;
  top) made || die "no upstream cache"; sed -n 2p "$DIR/made";;
  *) die "usage: upstream.sh ensure|serve PORT|stop|key|top";;
esac
