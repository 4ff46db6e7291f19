#!/usr/bin/env bash
# nix-relay memory bench: the relay's peak RSS while one big NAR (1 GiB by
# default) streams through it — built on backend h1, teed by the relay into
# its store (hashed, zstd-compressed) and to a stock Nix 2.8 client.
#
#   sudo benches/memory.sh
#   sudo BENCH_NAR_MIB=2048 BENCH_PROTO=ssh-ng benches/memory.sh
#
# VmHWM is reset (clear_refs 5) after a warm-up build, VmRSS is sampled every
# 0.2 s during the big build; prints both against the 64 MiB goal, plus the
# transfer's wall time. Exit status 0 even when the goal is missed.
#
# Env: BENCH_NAR_MIB (1024; even), BENCH_PROTO (ssh | ssh-ng: the client's
#      scheme; the relay's backend link follows LAB_BACKEND_PROTO),
#      BENCH_TIMEOUT (1200 s), RELAY_BIN (${CARGO_TARGET_DIR:-REPO/target}/release/nix-relay),
#      LAB_STATE (/tmp/nix-relay-memory), LAB_BASE_PORT (2750).
# Disk: about 3 x BENCH_NAR_MIB in LAB_STATE while it runs (backend, relay
# cache, client); the stores are emptied at the end.
set -euo pipefail
export LC_ALL=C
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source=benches/lib.sh
. "$BENCH_DIR/lib.sh"
LAB_DIR=$REPO/tests/lab
HS=$LAB_DIR/hosts.sh
DRV=$LAB_DIR/drv
export LAB_STATE=${LAB_STATE:-/tmp/nix-relay-memory}
export LAB_BASE_PORT=${LAB_BASE_PORT:-2750}
export RELAY_BIN=${RELAY_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/nix-relay}
STATE=$LAB_STATE
MIB=${BENCH_NAR_MIB:-1024}
PROTO=${BENCH_PROTO:-ssh}
TMO=${BENCH_TIMEOUT:-1200}
LOGS=$STATE/bench

die() { echo "bench: ERROR: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (sudo $0)"
[[ $MIB =~ ^[1-9][0-9]*$ ]] && [ $((MIB % 2)) = 0 ] || die "BENCH_NAR_MIB must be a positive even number"
case $PROTO in ssh|ssh-ng) ;; *) die "BENCH_PROTO must be ssh or ssh-ng";; esac
[ -x "$RELAY_BIN" ] || die "relay binary not found: $RELAY_BIN (cargo build --release, or set RELAY_BIN)"
case $STATE in /tmp/nix-relay-lab|/tmp/nix-relay-lab/) die "LAB_STATE is the e2e lab's state dir; use another";; esac

cleanup() {
  [ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null || true
  "$HS" down >&2 || echo "bench: WARNING: hosts.sh down failed" >&2
  if [ -d "$STATE/hosts" ]; then "$HS" reset client >&2 || true; "$HS" reset h1 >&2 || true; fi
  rm -rf "$STATE/relay-state"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$REPO/tests/setup.sh" >/dev/null 2>&1 || die "tests/setup.sh failed"
mkdir -p "$STATE"; rm -rf "$LOGS"; mkdir -p "$LOGS"
"$HS" up 1 --fresh >"$LOGS/hosts-up.log" 2>&1 || { cat "$LOGS/hosts-up.log" >&2; die "the lab did not come up"; }
"$HS" relay start >"$LOGS/relay-start.log" 2>&1 || { cat "$LOGS/relay-start.log" >&2; die "the relay did not start"; }
RELAY_PID=$(cat "$STATE/run/relay.pid")
B=$(sed "s|^ssh://|$PROTO://|" "$STATE/machines-relay")
SEED=mem-$(date +%s)-$$

build() {  # build ATTR SEED [args]: via the relay; prints the output path
  local a=$1 s=$2; shift 2
  timeout "$TMO" "$HS" exec client nix-build "$DRV" -A "$a" --argstr seed "$s" --no-out-link \
    --max-jobs 0 --builders "$B" "$@" </dev/null 2>>"$LOGS/client.log"
}

echo "nix-relay memory bench: one $MIB MiB NAR, $PROTO:// client -> relay -> h1; relay $RELAY_BIN"
build big "$SEED-warm" --arg bigMiB 2 >/dev/null || die "warm-up build failed (see $LOGS/client.log)"
echo 5 >"/proc/$RELAY_PID/clear_refs" || die "cannot reset VmHWM (clear_refs)"
echo "  after warm-up: VmRSS $(calc "$(status_kib VmRSS) / 1024" 1) MiB (VmHWM reset)"
( while sleep 0.2; do status_kib VmRSS; done >"$LOGS/rss-kib.txt" 2>/dev/null ) &
SAMPLER=$!
t0=$EPOCHREALTIME
out=$(build big "$SEED" --arg bigMiB "$MIB") || die "the $MIB MiB build failed (see $LOGS/client.log)"
t1=$EPOCHREALTIME
kill "$SAMPLER" 2>/dev/null || true; SAMPLER=
size=$("$HS" exec client stat -c %s "$out")
[ "$size" = $((MIB << 20)) ] || die "the output is $size bytes, expected $((MIB << 20))"
"$HS" exec client nix-store --verify-path "$out" || die "verify-path failed on the client"
relay_alive
hwm=$(status_kib VmHWM)
peak=$(sort -n "$LOGS/rss-kib.txt" | tail -1)
echo "  $MIB MiB build + transfer: $(calc "$t1 - $t0" 1) s (backend build included); output verified on the client"
echo "  relay VmRSS sampled every 0.2 s: max $(calc "${peak:-0} / 1024" 1) MiB over $(wc -l <"$LOGS/rss-kib.txt") samples"
goal "relay peak RSS (VmHWM) while $MIB MiB streams through" "$(calc "$hwm / 1024" 1)" "<=" 64 " MiB"
