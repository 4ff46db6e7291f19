#!/usr/bin/env bash
# End-to-end tests of nix-relay with stock Nix 2.8 on both sides.
#
#   tests/lab/e2e.sh                 client -> ssh://relay -> h1..h3
#
# Brings up the lab (tests/lab/hosts.sh up 3 --fresh), starts the relay
# (RELAY_BIN serve --config STATE/relay.toml, in the root mount namespace), runs
# the scenarios, tears everything down (trap) and ends with the line
# "N passed, N failed". Exit status 1 if anything failed.
#
# Env: RELAY_BIN (default ${CARGO_TARGET_DIR:-REPO/target}/debug/nix-relay),
#      LAB_STATE (/tmp/nix-relay-lab), LAB_BASE_PORT (2400),
#      E2E_SCENARIOS (names, space-separated: run a subset), E2E_KEEP=1 (leave the lab
#      and relay running afterwards, for debugging), E2E_KEEP_STORES=1 (don't
#      empty the lab stores at start), E2E_TIMEOUT (seconds per nix command, 300).
# Scenarios live in scenarios/*.sh (helpers in lib.sh). A scenario that
# cannot run (e.g. no HTTP binary cache yet) reports SKIP with its reason;
# under CI (CI set, not "false") such a skip is a FAIL with that
# reason (lib.sh: skips_fail), as is a part of a scenario skipped (skip_part).
# Logs: STATE/e2e/<scenario>.log, STATE/relay.log, STATE/hosts/hN/log/.
set -euo pipefail
LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LAB_DIR/../.." && pwd)
STATE=${LAB_STATE:-/tmp/nix-relay-lab}
BASE_PORT=${LAB_BASE_PORT:-2400}
export LAB_STATE=$STATE LAB_BASE_PORT=$BASE_PORT
HS=$LAB_DIR/hosts.sh
DRV=$LAB_DIR/drv
NHOSTS=3
# client namespaces: client client2 client3 (hosts.sh up makes LAB_CLIENTS of them)
export LAB_CLIENTS=3
TMO=${E2E_TIMEOUT:-300}
SCENARIOS=${E2E_SCENARIOS:-c j k n l sub hostile_auth hostile_exec hostile_channels fault_handshake fault_disk fault_restart ec2_launch ec2_deadman ec2_nixos ec2_sweep freeze poison}
RELAY_BIN=${RELAY_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/debug/nix-relay}
LOGS=$STATE/e2e
SEED=e2e-$(date +%s)-$$
pass=0; failn=0; skipn=0
T0=$(date +%s%N)

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
secs() { local m; m=$(ms "$1"); printf '%d.%01d s' $((m / 1000)) $(((m % 1000) / 100)); }

# ---- lab lifecycle ------------------------------------------------------------
teardown_done=0
teardown() {
  [ "$teardown_done" = 1 ] && return 0
  teardown_done=1
  "$LAB_DIR/upstream.sh" stop || true
  if [ "${E2E_KEEP:-0}" = 1 ]; then
    echo "e2e: E2E_KEEP=1: lab left running (stop with: $HS down)" >&2
  else
    "$HS" down >&2 || echo "e2e: WARNING: hosts.sh down failed" >&2
  fi
}
trap teardown EXIT
trap 'exit 130' INT TERM

if [ "$(id -u)" != 0 ]; then echo "e2e: must run as root" >&2; echo "0 passed, 1 failed"; exit 1; fi
mkdir -p "$STATE"
rm -rf "$LOGS"; mkdir -p "$LOGS"
echo "e2e: state=$STATE seed=$SEED"
up_args=("$NHOSTS"); [ "${E2E_KEEP_STORES:-0}" = 1 ] || up_args+=(--fresh)
if ! "$HS" up "${up_args[@]}" > "$LOGS/hosts-up.log" 2>&1; then
  cat "$LOGS/hosts-up.log"
  echo "FAIL setup: lab did not come up (see above)"
  echo "0 passed, 1 failed"; exit 1
fi
# only this run's backend commands count (check y)
for f in "$STATE"/hosts/h*/log/commands.log; do [ -f "$f" ] && : > "$f"; done
# the backends have nothing in their stores: copy nothing in advance (the
# client's builds must ship busybox and all inputs themselves)

BUILDERS=$(cat "$STATE/machines-relay")
# the lab's stand-in for cache.nixos.org (scenario sub), the relay's upstream
UP=$LAB_DIR/upstream.sh
rm -f "$STATE/upstream"
if "$UP" serve $((BASE_PORT + 99)) > "$LOGS/upstream.log" 2>&1; then
  printf '%s\n%s\n' "http://127.0.0.1:$((BASE_PORT + 99))" "$("$UP" key)" > "$STATE/upstream"
else
  echo "e2e: no upstream cache: $(tail -1 "$LOGS/upstream.log")"
fi
# each backend's only substituter: the relay's HTTP cache (used only when a
# client allows substitutes: scenario sub). Set before the relay starts: its
# prober opens backend sessions at once, and a running nix-store --serve
# keeps the nix.conf it started with. So the cache key is made here when the
# relay has not made it yet.
RK=$STATE/keys/relay-cache.sec
[ -f "$RK" ] && [ -f "$RK.pub" ] || nix-store --generate-binary-cache-key nix-relay-lab-1 "$RK" "$RK.pub"
for f in "$STATE"/hosts/h*/etc-nix/nix.conf; do
  printf 'substituters = http://127.0.0.1:%s\ntrusted-public-keys = %s\n' $((BASE_PORT + 80)) "$(cat "$RK.pub")" >> "$f"
done
if ! "$HS" relay start > "$LOGS/relay-start.log" 2>&1; then
  cat "$LOGS/relay-start.log"
  echo "FAIL setup: the relay did not start"
  echo "0 passed, 1 failed"; exit 1
fi
cat "$LOGS/relay-start.log"
echo "e2e: builders: $BUILDERS"
# ---- helpers and scenarios --------------------------------------------------------
# lib.sh: helpers. scenarios/*.sh: each defines sc_NAME (a function) and sc_NAME_desc.
# shellcheck source=lib.sh
. "$LAB_DIR/lib.sh"
for f in "$LAB_DIR"/scenarios/*.sh; do
  # shellcheck disable=SC1090
  . "$f"
done

# ---- run ----------------------------------------------------------------------------
for s in $SCENARIOS; do
  desc_var="sc_${s}_desc"
  if ! declare -F "sc_$s" >/dev/null; then echo "FAIL $s: no such scenario"; failn=$((failn + 1)); continue; fi
  desc=${!desc_var}
  log=$LOGS/$s.log
  t=$(date +%s%N)
  set +e
  (
    set -euo pipefail
    BLOG=$LOGS/$s.nix.log
    : > "$BLOG"
    relay_alive
    "sc_$s"
  ) > "$log" 2>&1
  rc=$?
  set -e
  v=$(verdict "$rc" "$log")
  case $v in
    PASS)
      echo "PASS $s: $desc ($(secs "$t"))"
      grep '^NOTE: ' "$log" | sed 's/^NOTE: /    note: /' || true
      pass=$((pass + 1));;
    SKIP\ *)
      echo "SKIP $s: $desc ($(secs "$t")): ${v#SKIP }"
      skipn=$((skipn + 1));;
    *)
      echo "FAIL $s: $desc ($(secs "$t")): ${v#FAIL }"
      sed 's/^/    | /' "$log" | tail -15
      echo "    relay.log (last 10 lines):"; tail -10 "$STATE/relay.log" 2>/dev/null | sed 's/^/    | /'
      failn=$((failn + 1));;
  esac
done
# relay still alive at the end (it must survive everything above)
if "$HS" relay status >/dev/null 2>&1; then
  echo "PASS z: the relay is still running after all scenarios"; pass=$((pass + 1))
else
  echo "FAIL z: the relay is not running any more (see $STATE/relay.log)"; failn=$((failn + 1))
fi

# the relay drove its backends over the configured protocol, and only that
want="nix-store --serve --write"; other="nix-daemon --stdio"
[ "${LAB_BACKEND_PROTO:-ssh}" = ssh-ng ] && { want="nix-daemon --stdio"; other="nix-store --serve"; }
cmds=$(cat "$STATE"/hosts/h*/log/commands.log 2>/dev/null || true)
if grep -q -- "$want" <<<"$cmds" && ! grep -q -- "$other" <<<"$cmds"; then
  echo "PASS y: backends were driven with '$want' only (${LAB_BACKEND_PROTO:-ssh}://)"; pass=$((pass + 1))
else
  echo "FAIL y: backends' commands.log do not show only '$want'"; failn=$((failn + 1))
fi

teardown
echo "e2e: $(secs "$T0") total, logs in $LOGS"
echo "$pass passed, $failn failed"
[ "$failn" = 0 ]
