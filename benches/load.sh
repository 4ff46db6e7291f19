#!/usr/bin/env bash
# nix-relay load bench: many concurrent client sessions through one relay
# over 3 backends (the e2e lab, its own state dir and ports).
#
#   sudo benches/load.sh
#
# Phase 1 (session set-up): BENCH_SESSIONS concurrent bare sessions, half
#   `nix-store --serve`, half `nix-daemon --stdio`: OpenSSH connect, key
#   exchange, public-key auth, exec, the protocol hello answered, clean end.
#   Prints sessions/s (count / wall time of the burst) and p50/p99 latency.
# Phase 2 (builds): BENCH_BUILDS concurrent stock nix-builds of one fresh
#   small derivation each, over ssh:// and ssh-ng:// alternately, from the 3
#   client namespaces. Prints failures, builds/s, p50/p99 latency.
# Then the relay's peak RSS (VmHWM) against the 256 MiB goal.
# Exit status 0 even when a goal is missed; non-zero only on errors.
#
# Env: BENCH_SESSIONS (100), BENCH_BUILDS (100), BENCH_TIMEOUT (600 s per command),
#      RELAY_BIN (${CARGO_TARGET_DIR:-REPO/target}/release/nix-relay),
#      LAB_STATE (/tmp/nix-relay-load), LAB_BASE_PORT (2700).
set -euo pipefail
export LC_ALL=C
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source=benches/lib.sh
. "$BENCH_DIR/lib.sh"
LAB_DIR=$REPO/tests/lab
HS=$LAB_DIR/hosts.sh
DRV=$LAB_DIR/drv
export LAB_STATE=${LAB_STATE:-/tmp/nix-relay-load}
export LAB_BASE_PORT=${LAB_BASE_PORT:-2700}
export RELAY_BIN=${RELAY_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/nix-relay}
export LAB_CLIENTS=3
STATE=$LAB_STATE
TMO=${BENCH_TIMEOUT:-600}
SESSIONS=${BENCH_SESSIONS:-100}
BUILDS=${BENCH_BUILDS:-100}
LOGS=$STATE/bench

die() { echo "bench: ERROR: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (sudo $0)"
[ -x "$RELAY_BIN" ] || die "relay binary not found: $RELAY_BIN (cargo build --release, or set RELAY_BIN)"
case $STATE in /tmp/nix-relay-lab|/tmp/nix-relay-lab/) die "LAB_STATE is the e2e lab's state dir; use another";; esac

cleanup() { "$HS" down >&2 || echo "bench: WARNING: hosts.sh down failed" >&2; }
trap cleanup EXIT
trap 'exit 130' INT TERM

"$REPO/tests/setup.sh" >/dev/null 2>&1 || die "tests/setup.sh failed"
mkdir -p "$STATE"; rm -rf "$LOGS"; mkdir -p "$LOGS"
"$HS" up 3 --fresh >"$LOGS/hosts-up.log" 2>&1 || { cat "$LOGS/hosts-up.log" >&2; die "the lab did not come up"; }
"$HS" relay start >"$LOGS/relay-start.log" 2>&1 || { cat "$LOGS/relay-start.log" >&2; die "the relay did not start"; }
RELAY_PID=$(cat "$STATE/run/relay.pid")
# shellcheck source=tests/lab/scenarios/load.sh
. "$LAB_DIR/scenarios/load.sh"
SEED=load-$(date +%s)-$$

echo "nix-relay load bench: $SESSIONS sessions, $BUILDS builds; relay $RELAY_BIN; $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
# warm-up: busybox into every client store and the relay store
load_builds 3 "$SEED-warm" "$LOGS/warm" >/dev/null
echo 5 >"/proc/$RELAY_PID/clear_refs" 2>/dev/null || true

fails=$(load_sessions "$SESSIONS" "$LOGS/sessions")
read -r n rate p50 p99 wall <<<"$(load_stats "$LOGS"/sessions/s*.res)"
echo "sessions: $n in $wall s, $fails failed: $rate sessions/s; latency p50 $p50 s, p99 $p99 s"

fails=$(load_builds "$BUILDS" "$SEED" "$LOGS/builds")
read -r n rate p50 p99 wall <<<"$(load_stats "$LOGS"/builds/*.res)"
echo "builds:   $n in $wall s, $fails failed: $rate builds/s; latency p50 $p50 s, p99 $p99 s"
relay_alive
hwm=$(status_kib VmHWM)
goal "relay peak RSS (VmHWM) under load" "$(calc "$hwm / 1024" 1)" "<=" 256 " MiB"
goal "failed builds" "$fails" "<=" 0 ""
