#!/usr/bin/env bash
# The first build of a derivation whose inputs are a real-sized closure in a
# binary cache: tests/lab/drv `-A consumer`, which needs the lab's generated
# upstream closure (tests/lab/upstream.sh: 301 paths, 1.35 GiB, signed,
# served on loopback as the stand-in for cache.nixos.org). A Nix 2.34 client
# that has the upstream cache as a substituter, with builders-use-substitutes,
# and a fresh Nix 2.34 backend h1 that has it too:
#   direct  h1 is the client's builder (ssh-ng://h1); h1 substitutes from upstream
#   relay   the relay is (ssh-ng://relay), with h1 its only backend; the relay
#           has upstream as its `[cache] upstream`, h1 only the relay's HTTP
#           cache as its substituter (pull-through)
#   sibling as relay, a sibling derivation (other seed, same inputs) on a fresh
#           h1: a second backend, served from the relay's cache alone
# Per mode: wall time, bytes the client sent over SSH to its builder, bytes
# into h1 over SSH, bytes the upstream cache served (each counted by a
# loopback forwarder, benches/bytecount.py; the upstream's is in both modes'
# path), NAR bytes the relay's HTTP cache sent (its metric
# nix_relay_http_nar_bytes_total: no forwarder on the relay mode's path
# alone). Print-only; exit 1 only on errors.
#   sudo benches/substitute.sh
# Env: LAB_STATE (/tmp/nix-relay-bench-sub), LAB_BASE_PORT (2600),
#      RELAY_BIN (${CARGO_TARGET_DIR:-REPO/target}/debug/nix-relay), BENCH_TIMEOUT (900)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LAB_STATE=${LAB_STATE:-/tmp/nix-relay-bench-sub} LAB_BASE_PORT=${LAB_BASE_PORT:-2600}
export LAB_H1_NIX=2.34 LAB_CLIENT_NIX=2.34 LAB_CLIENTS=1 LAB_BACKEND_PROTO=ssh-ng
export RELAY_BIN=${RELAY_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/debug/nix-relay}
STATE=$LAB_STATE B=$LAB_BASE_PORT TMO=${BENCH_TIMEOUT:-900}
HS=$REPO/tests/lab/hosts.sh UP=$REPO/tests/lab/upstream.sh
P_RELAY=$((B + 71)) P_H1=$((B + 72)) P_UP=$((B + 73)) RELAY_HTTP=http://127.0.0.1:$((B + 80)) UP_PORT=$((B + 99))
die() { echo "bench: $*" >&2; exit 1; }
[ -x "$RELAY_BIN" ] || die "no relay binary $RELAY_BIN"
case $STATE in /tmp/nix-relay-lab|/tmp/nix-relay-lab/) die "LAB_STATE is the e2e lab's; use another";; esac

PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; "$UP" stop; "$HS" down >/dev/null 2>&1 || true; }
trap cleanup EXIT

"$REPO/tests/setup.sh" >/dev/null
"$HS" up 1 --fresh >/dev/null
"$UP" serve "$UP_PORT"
for fw in "$P_RELAY $B relay" "$P_H1 $((B + 1)) h1" "$P_UP $UP_PORT upstream"; do
  # shellcheck disable=SC2086
  set -- $fw
  python3 "$REPO/benches/bytecount.py" "$1" "$2" "$STATE/bytes.$3" & PIDS+=($!)
done
KEY=$("$UP" key) CACHE=http://127.0.0.1:$P_UP
printf '%s\n%s\n' "$CACHE" "$KEY" > "$STATE/upstream"   # the relay's upstream (relay-config.sh)
h1_substituter() {  # h1_substituter URL KEY: h1's only substituter
  sed -i '/^# bench$/,$d' "$STATE/hosts/h1/etc-nix/nix.conf"
  printf '# bench\nsubstituters = %s\ntrusted-public-keys = %s\n' "$1" "$2" >> "$STATE/hosts/h1/etc-nix/nix.conf"
}
# the relay reaches h1 through the counter
LAB_H1_RELAY_PORT=$P_H1 "$HS" relay start >/dev/null
grep -q ":$P_H1\"" "$STATE/relay.toml" || die "the relay's h1 is not behind the counter"
{ printf 'Host h1c\n  HostName 127.0.0.1\n  Port %s\n  User root\n  HostKeyAlias h1c\n' "$P_H1"
  printf 'Host relayc\n  HostName 127.0.0.1\n  Port %s\n  User nix\n  HostKeyAlias relayc\n' "$P_RELAY"
  printf 'Include %s\n' "$STATE/ssh_config"; } > "$STATE/bench_ssh_config"

# NAR bytes the relay's HTTP cache sent (its own counter: a forwarder in
# front of it would cost the relay mode a hop direct mode has not)
http_sent() {
  curl -s --max-time 10 "$RELAY_HTTP/metrics" 2>/dev/null \
    | awk '$1 ~ /^nix_relay_http_nar_bytes_total/ { v += $2 } END { printf "%d\n", v + 0 }'
}
counts() {  # client->relay bytes; bytes into h1; bytes upstream served; bytes the relay's HTTP sent
  echo "$(cut -d' ' -f1 "$STATE/bytes.relay") $(cut -d' ' -f1 "$STATE/bytes.h1") $(cut -d' ' -f2 "$STATE/bytes.upstream") $(http_sent)"
}
mib() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (a - b) / 1048576 }'; }
run() {  # run MODE BUILDER-LINE [SEED]
  local t0 t1 before after
  "$HS" reset client >/dev/null; "$HS" reset h1 >/dev/null
  # a fresh h1 is a new machine: no pooled session to the old one (the
  # relay's store stays)
  "$HS" relay stop >/dev/null; LAB_H1_RELAY_PORT=$P_H1 "$HS" relay start >/dev/null
  # every mode starts with the disk caught up: the previous mode's writes
  # (GiBs: the client's, the backend's, the relay's store) would otherwise
  # be written back during this one
  sync; sleep 1; before=$(counts); t0=$EPOCHREALTIME
  timeout "$TMO" "$HS" exec client env NIX_SSHOPTS="-F $STATE/bench_ssh_config" \
    nix-build "$REPO/tests/lab/drv" -A consumer --argstr seed "${3:-0}" --no-out-link --max-jobs 0 --builders "$2" \
    --option substituters "$CACHE" --option trusted-public-keys "$KEY" \
    --option builders-use-substitutes true </dev/null >"$STATE/$1.out" 2>"$STATE/$1.log" \
    || { tail -5 "$STATE/$1.log" >&2; die "$1: nix-build -A consumer failed"; }
  t1=$EPOCHREALTIME; sleep 1; after=$(counts)
  # shellcheck disable=SC2086
  set -- "$1" $before $after   # $2..$5 before, $6..$9 after
  local client_up; if [ "$1" = direct ]; then client_up=$(mib "$7" "$3"); else client_up=$(mib "$6" "$2"); fi
  WALL[$1]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') UPL[$1]=$client_up
  printf '%-7s %8s s %12s MiB %12s MiB %12s MiB %12s MiB\n' "$1" "${WALL[$1]}" "$client_up" "$(mib "$7" "$3")" "$(mib "$8" "$4")" "$(mib "$9" "$5")"
}
declare -A WALL UPL
line() { sed -n 1p "$1" | sed "s|^ssh-ng://[^ ]*|ssh-ng://$2|"; }
echo "first build of -A consumer (inputs: $(( $(du -sk "${NIX_RELAY_UPSTREAM:-/var/cache/nix-relay-ci/upstream}/cache" | cut -f1) / 1024 )) MiB of cache), Nix 2.34 client and backend"
printf '%-7s %10s %16s %16s %16s %16s\n' mode wall "client->builder" "ssh into h1" "upstream served" "relay http"
h1_substituter "$CACHE" "$KEY"
run direct "$(line "$STATE/machines-ng" h1c)"
h1_substituter "$RELAY_HTTP" "$(cat "$STATE/keys/relay-cache.sec.pub")"
run relay "$(line "$STATE/machines-relay-ng" relayc)"
run sibling "$(line "$STATE/machines-relay-ng" relayc)" sibling
# the goals (issue 16): no slower than direct; the client uploads no more than direct
echo "wall via relay / direct: $(awk -v a="${WALL[relay]}" -v b="${WALL[direct]}" 'BEGIN { printf "%.2f", a / b }') (goal <= 1.00)"
echo "client upload via relay: ${UPL[relay]} MiB, direct: ${UPL[direct]} MiB (goal: the same, the .drv closure only)"
echo "sibling on a fresh backend / first via relay: $(awk -v a="${WALL[sibling]}" -v b="${WALL[relay]}" 'BEGIN { printf "%.2f", a / b }') (its inputs from the relay's cache over HTTP, none from upstream but the client's own)"
