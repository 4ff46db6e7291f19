#!/usr/bin/env bash
# The Nix version matrix through the relay: clients Nix 2.8, 2.26, 2.34, each
# over ssh:// and ssh-ng:// to the relay, x backends Nix 2.8 and 2.34 behind
# it over ssh:// and ssh-ng://.
#
# The relay decouples its two sides, so the lab comes up once per backend kind
# (MATRIX_BACKENDS, default "2.8/ssh 2.8/ssh-ng 2.34/ssh 2.34/ssh-ng": h1 with
# big-parallel, h2, both of that Nix, the relay driving them over that
# protocol), with the three client namespaces up at once: client = Nix 2.8,
# client2 = 2.26, client3 = 2.34. Per backend kind:
#   - every client kind (MATRIX_CLIENTS, default "2.8/ssh 2.8/ssh-ng 2.26/ssh
#     2.26/ssh-ng 2.34/ssh 2.34/ssh-ng") runs dag, feature, multi, fail, big,
#     then cachehit (the DAG the next client kind built, from the relay's store);
#   - dedup (two clients of different versions, one backend build), cancel
#     (the client dies mid-build, the backend's build goes) and retry (the
#     building backend dies, the build succeeds on the other) run once, each
#     with a client kind taken in turn.
# One line per (backend kind, client kind, scenario): PASS/FAIL; the last line
# is "N passed, N failed". Exit status 1 if anything failed. Under CI (CI set,
# not "false") nothing is skipped: a missing root is a failure (tests/setup.sh
# makes them; tests/lab/roots.sh ensure).
#
# Env: RELAY_BIN, LAB_STATE, LAB_BASE_PORT (as e2e.sh), MATRIX_BACKENDS,
#      MATRIX_CLIENTS, MATRIX_SCENARIOS (per client kind, empty for none; default "dag feature store
#      multi fail big cachehit"), MATRIX_ONCE (per backend kind, default
#      "dedup cancel retry"), E2E_TIMEOUT (seconds per nix command, 300).
# Logs: STATE/matrix/<backend>.<client>.<scenario>.{log,nix.log}, and a copy
# of each backend kind's relay.log as STATE/matrix/relay.<backend>.log.
set -euo pipefail
LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LAB_DIR/../.." && pwd)
STATE=${LAB_STATE:-/tmp/nix-relay-lab}
BASE_PORT=${LAB_BASE_PORT:-2400}
export LAB_STATE=$STATE LAB_BASE_PORT=$BASE_PORT LAB_CLIENTS=3
export RELAY_BIN=${RELAY_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/debug/nix-relay}
HS=$LAB_DIR/hosts.sh
DRV=$LAB_DIR/drv
NHOSTS=2
TMO=${E2E_TIMEOUT:-300}
BACKENDS=${MATRIX_BACKENDS:-2.8/ssh 2.8/ssh-ng 2.34/ssh 2.34/ssh-ng}
CLIENTS=${MATRIX_CLIENTS:-2.8/ssh 2.8/ssh-ng 2.26/ssh 2.26/ssh-ng 2.34/ssh 2.34/ssh-ng}
PER_CLIENT=${MATRIX_SCENARIOS-dag feature multi fail big store cachehit}
ONCE=${MATRIX_ONCE-dedup cancel retry}
LOGS=$STATE/matrix
RUNID=m$(date +%s)
pass=0; failn=0
T0=$(date +%s)

# shellcheck source=lib.sh
. "$LAB_DIR/lib.sh"
# shellcheck source=matrix-scenarios.sh
. "$LAB_DIR/matrix-scenarios.sh"

ns_of() {  # ns_of VERSION: the client namespace running that Nix
  case $1 in 2.8) echo client;; 2.26) echo client2;; 2.34) echo client3;; *) echo "matrix: unknown client Nix $1" >&2; exit 2;; esac
}
builders_for() {  # builders_for ssh|ssh-ng: the builder line for the relay
  if [ "$1" = ssh-ng ]; then cat "$STATE/machines-relay-ng"; else cat "$STATE/machines-relay"; fi
}
teardown() { "$HS" down >/dev/null 2>&1 || echo "matrix: WARNING: hosts.sh down failed" >&2; }
trap teardown EXIT
trap 'exit 130' INT TERM

# cell BKIND CKIND NAME CMD...: run one scenario in a subshell, print its line
cell() {
  local bk=$1 ck=$2 name=$3 log t rc v; shift 3
  log=$LOGS/$(printf '%s.%s.%s' "$bk" "$ck" "$name" | tr -c 'A-Za-z0-9.+-' '-').log
  t=$(date +%s)
  set +e
  (
    set -euo pipefail
    BLOG=${log%.log}.nix.log; : > "$BLOG"
    SEED=$RUNID-${bk//\//-}-${ck//\//-}-$name
    relay_alive
    "$@"
  ) > "$log" 2>&1
  rc=$?
  set -e
  v=$(verdict "$rc" "$log")
  case $v in
    PASS) echo "PASS backends=$bk client=$ck $name ($(( $(date +%s) - t )) s)"; pass=$((pass + 1))
          grep '^NOTE: ' "$log" | sed 's/^NOTE: /    note: /' || true;;
    *) echo "FAIL backends=$bk client=$ck $name ($(( $(date +%s) - t )) s): ${v#* }"
       { sed 's/^/    | /' "$log" | tail -8
         echo "    relay.log (last 6 lines):"; tail -6 "$STATE/relay.log" | sed 's/^/    | /'; } || true
       failn=$((failn + 1));;
  esac
}

# lab_up BKIND: the lab with both backends on that Nix/protocol, the relay started
lab_up() {
  local v=${1%/*} p=${1#*/}
  LAB_H1_NIX=$v LAB_H2_NIX=$v LAB_CLIENT_NIX=2.8 LAB_CLIENT2_NIX=2.26 LAB_CLIENT3_NIX=2.34 \
    "$HS" up "$NHOSTS" --fresh > "$LOGS/up.log" 2>&1 || { cat "$LOGS/up.log"; return 1; }
  LAB_BACKEND_PROTO=$p "$HS" relay start > "$LOGS/relay-start.log" 2>&1 || { cat "$LOGS/relay-start.log"; return 1; }
}

run_backend_kind() {  # run_backend_kind BKIND
  local bk=$1 ck prev="" first="" k=0 s
  if ! lab_up "$bk"; then
    echo "FAIL backends=$bk: the lab or the relay did not come up (see above)"; failn=$((failn + 1)); return 0
  fi
  for ck in $CLIENTS; do
    for s in $PER_CLIENT; do
      [ "$s" != cachehit ] || continue
      NS=$(ns_of "${ck%/*}") CPROTO=${ck#*/} BUILDERS=$(builders_for "${ck#*/}") cell "$bk" "$ck" "$s" "m_$s"
    done
  done
  # cache hits: each client kind fetches the DAG the next one built
  if [[ " $PER_CLIENT " == *" cachehit "* ]]; then
    for ck in $CLIENTS; do [ -n "$first" ] || first=$ck; [ -z "$prev" ] || cachehit_cell "$bk" "$prev" "$ck"; prev=$ck; done
    cachehit_cell "$bk" "$prev" "$first"
  fi
  # once per backend kind, rotating the client kinds (retry last: it kills a backend)
  # shellcheck disable=SC2086
  set -- $CLIENTS
  k=$(( $(echo "$BACKENDS" | tr ' ' '\n' | grep -nx "$bk" | cut -d: -f1) - 1 ))
  for s in $ONCE; do
    onces "$bk" "$s" "$k" "$@"; k=$((k + 1))
  done
  cp "$STATE/relay.log" "$LOGS/relay.${bk//\//-}.log" 2>/dev/null || true
  "$HS" down >/dev/null 2>&1 || true
}

cachehit_cell() {  # cachehit_cell BKIND CKIND OF: CKIND gets the DAG client kind OF built
  local seed=$RUNID-${1//\//-}-${3//\//-}-dag
  NS=$(ns_of "${2%/*}") BUILDERS=$(builders_for "${2#*/}") cell "$1" "$2" "cachehit(dag of $3)" m_cachehit "$seed"
}

onces() {  # onces BKIND SCENARIO K CLIENTKIND...: SCENARIO with the K-th (and next) client kind
  local bk=$1 s=$2 k=$3 a b na nb; shift 3
  local kinds=("$@") n=$#
  a=${kinds[$((k % n))]}; b=${kinds[$(( (k + 3) % n ))]}
  na=$(ns_of "${a%/*}"); nb=$(ns_of "${b%/*}")
  [ "$na" != "$nb" ] || b=${kinds[$(( (k + 2) % n ))]}
  nb=$(ns_of "${b%/*}")
  case $s in
    dedup) NS=$na BUILDERS=$(builders_for "${a#*/}") cell "$bk" "$a+$b" dedup m_dedup_kinds "$a" "$b";;
    *) NS=$na BUILDERS=$(builders_for "${a#*/}") cell "$bk" "$a" "$s" "m_$s" "$na";;
  esac
}

# dedup with two client kinds that may differ in protocol: each side its own builder line
m_dedup_kinds() {
  local a=$1 b=$2 p1 p2 o1 o2 n
  OFF=$(relay_log_size)
  BUILDERS=$(builders_for "${a#*/}") bg_build "$(ns_of "${a%/*}")" "$BLOG.1" marked "$SEED" --arg sleepSecs 6; p1=$BGPID
  wait_marker "$SEED" 30 >/dev/null
  BUILDERS=$(builders_for "${b#*/}") bg_build "$(ns_of "${b%/*}")" "$BLOG.2" marked "$SEED" --arg sleepSecs 6; p2=$BGPID
  wait "$p1" || fail "$a: nix-build failed: $(grep -a error "$BLOG.1" | tail -2)"
  wait "$p2" || fail "$b: nix-build failed: $(grep -a error "$BLOG.2" | tail -2)"
  o1=$(cat "$BLOG.1.out"); o2=$(cat "$BLOG.2.out")
  [ -n "$o1" ] && [ "$o1" = "$o2" ] || fail "outputs differ: '$o1' vs '$o2'"
  NS=$(ns_of "${a%/*}") m_valid "$o1"; NS=$(ns_of "${b%/*}") m_valid "$o2"
  n=$(m_finished lab-marked-6s)
  [ "$n" = 1 ] || fail "relay.log has $n 'build finished' lines for the shared derivation, expected 1"
}

# ---- main -----------------------------------------------------------------------------
if [ "$(id -u)" != 0 ]; then echo "matrix: must run as root" >&2; echo "0 passed, 1 failed"; exit 1; fi
[ -x "$RELAY_BIN" ] || { echo "matrix: no relay binary $RELAY_BIN (cargo build, or set RELAY_BIN)"; echo "0 passed, 1 failed"; exit 1; }
mkdir -p "$STATE"; rm -rf "$LOGS"; mkdir -p "$LOGS"
for v in 2.26 2.34; do
  "$LAB_DIR/roots.sh" check "$v" && continue
  if skips_fail; then echo "FAIL setup: no root for Nix $v (run tests/setup.sh)"; echo "0 passed, 1 failed"; exit 1; fi
  "$LAB_DIR/roots.sh" ensure "$v"
done
echo "matrix: backends [$BACKENDS] x clients [$CLIENTS]; relay $RELAY_BIN; run $RUNID"
for bk in $BACKENDS; do run_backend_kind "$bk"; done
echo "matrix: $(( $(date +%s) - T0 )) s total, logs in $LOGS"
echo "$pass passed, $failn failed"
[ "$failn" = 0 ]
