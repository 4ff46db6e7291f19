#!/usr/bin/env bash
# End-to-end tests of nix-relay with stock Nix 2.8 on both sides.
#
#   tests/lab/e2e.sh                 relay mode: client -> ssh://relay -> h1..h3
#   E2E_DIRECT=1 tests/lab/e2e.sh    direct mode: client -> ssh://h1..h3 (no relay;
#                                    validates the harness itself; relay-only checks SKIP)
#
# Brings up the lab (tests/lab/hosts.sh up 3 --fresh), starts the relay
# (RELAY_BIN serve --config STATE/relay.toml, in the root mount namespace), runs
# the scenarios, tears everything down (trap) and ends with the line
# "N passed, N failed". Exit status 1 if anything failed.
#
# Env: RELAY_BIN (default ${CARGO_TARGET_DIR:-REPO/target}/debug/nix-relay),
#      LAB_STATE (/tmp/nix-relay-lab), LAB_BASE_PORT (2400),
#      E2E_SCENARIOS ("a b c d e f g": run a subset), E2E_KEEP=1 (leave the lab
#      and relay running afterwards, for debugging), E2E_KEEP_STORES=1 (don't
#      empty the lab stores at start), E2E_TIMEOUT (seconds per nix command, 300).
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
TMO=${E2E_TIMEOUT:-300}
SCENARIOS=${E2E_SCENARIOS:-a b c d e f g}
DIRECT=${E2E_DIRECT:-0}
[ "$DIRECT" = 1 ] && MODE=direct || MODE=relay
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
echo "e2e: mode=$MODE state=$STATE seed=$SEED"
up_args=("$NHOSTS"); [ "${E2E_KEEP_STORES:-0}" = 1 ] || up_args+=(--fresh)
if ! "$HS" up "${up_args[@]}" > "$LOGS/hosts-up.log" 2>&1; then
  cat "$LOGS/hosts-up.log"
  echo "FAIL setup: lab did not come up (see above)"
  echo "0 passed, 1 failed"; exit 1
fi
# the backends have nothing in their stores: copy nothing in advance (the
# client's builds must ship busybox and all inputs themselves)

if [ "$MODE" = relay ]; then
  BUILDERS=$(cat "$STATE/machines-relay")
  if ! "$HS" relay start > "$LOGS/relay-start.log" 2>&1; then
    cat "$LOGS/relay-start.log"
    echo "FAIL setup: the relay did not start"
    echo "0 passed, 1 failed"; exit 1
  fi
  cat "$LOGS/relay-start.log"
else
  BUILDERS=@$STATE/machines
fi
echo "e2e: builders: $BUILDERS"

# ---- helpers used inside scenarios (each scenario runs in a subshell, set -e) ----
# fail REASON: end the scenario with a one-line reason
fail() { echo "REASON: $*" >&2; exit 1; }
client() { timeout "$TMO" "$HS" exec client "$@" </dev/null; }
on_host() { timeout "$TMO" "$HS" exec "$1" nix-store --check-validity "$2" </dev/null >/dev/null 2>&1; }
# build ATTR SEED [nix-build args...]: prints output paths; the client's log goes to $BLOG
build() {
  local a=$1 s=$2; shift 2
  echo "+ nix-build -A $a --argstr seed $s $* (log: $BLOG)" >&2
  client nix-build "$DRV" -A "$a" --argstr seed "$s" --no-out-link \
    --max-jobs 0 --builders "$BUILDERS" "$@" 2>"$BLOG"
}
# hosts_with PATH: names of the backends whose store has PATH valid
hosts_with() {
  local i r=""
  for i in $(seq 1 "$NHOSTS"); do on_host "h$i" "$1" && r="$r h$i"; done
  echo "${r# }"
}
# not_on_relay_machine PATH...: the root namespace (where the relay runs) has no such output
not_on_relay_machine() {
  local p
  for p in "$@"; do
    [ ! -e "$p" ] || fail "$p exists in the root namespace's /nix (relay machine)"
    if nix-store --check-validity "$p" >/dev/null 2>&1; then fail "$p is valid in the root namespace's store"; fi
  done
}
client_valid() {  # client_valid PATH...: valid + NAR hash verifies in the client's store
  local p
  for p in "$@"; do
    client nix-store --verify-path "$p" >&2 || fail "client: nix-store --verify-path $p failed"
  done
}
# remote_builds: the 'building ... on ...' lines of $BLOG must all name the
# expected builder and there must be no local build; prints their count
remote_builds() {
  local n bad
  n=$(grep -c "^building '[^']*' on '" "$BLOG" || true)
  if grep -Eq "^building '[^']*'\.\.\.$" "$BLOG"; then fail "client log shows a LOCAL build: $(grep -E "^building '[^']*'\.\.\.$" "$BLOG" | head -1)"; fi
  if [ "$MODE" = relay ]; then
    bad=$(grep "^building '[^']*' on '" "$BLOG" | grep -vc "on 'ssh://relay'" || true)
    [ "$bad" = 0 ] || fail "client sent $bad build(s) somewhere else than ssh://relay"
  fi
  echo "$n"
}
relay_alive() {
  [ "$MODE" = relay ] || return 0
  "$HS" relay status >/dev/null 2>&1 || fail "the relay is not running (crashed? see $STATE/relay.log)"
}

# ---- scenarios ------------------------------------------------------------------
sc_a_desc="11-derivation DAG (-A top) built on backends, valid on the client"
sc_a() {
  local out n leaves p hs
  out=$(build top "$SEED-a") || { tail -5 "$BLOG"; fail "nix-build -A top failed"; }
  [ "$(echo "$out" | wc -l)" = 1 ] && [ -n "$out" ] || fail "unexpected nix-build output: $out"
  client_valid "$out"
  client test -f "$out/all" || fail "$out/all missing"
  [ "$(client sh -c "wc -l < $out/refs")" = 10 ] || fail "$out/refs does not list 10 leaves"
  leaves=$(client nix-store -q --references "$out")
  [ "$(echo "$leaves" | grep -c lab-leaf-)" = 10 ] || fail "top does not reference 10 leaves: $leaves"
  # shellcheck disable=SC2086
  client_valid $leaves
  n=$(remote_builds)
  [ "$n" = 11 ] || fail "expected 11 remote builds in the client log, saw $n"
  for p in $leaves $out; do
    hs=$(hosts_with "$p")
    [ -n "$hs" ] || fail "$p is in no backend's store (not built on a backend?)"
    echo "  ${p#/nix/store/}: on $hs"
  done
  # shellcheck disable=SC2086
  not_on_relay_machine $leaves "$out"
}

sc_b_desc="-A feature (big-parallel) lands only on h1"
sc_b() {
  local out hs
  out=$(build feature "$SEED-b") || { tail -5 "$BLOG"; fail "nix-build -A feature failed"; }
  client_valid "$out"
  [ "$(remote_builds)" = 1 ] || fail "expected 1 remote build"
  hs=$(hosts_with "$out")
  [ "$hs" = h1 ] || fail "output is valid on [$hs], expected only h1"
  not_on_relay_machine "$out"
}

sc_c_desc="-A foreign (aarch64-linux) lands only on h2"
sc_c() {
  local out hs
  out=$(build foreign "$SEED-c") || { tail -5 "$BLOG"; fail "nix-build -A foreign failed"; }
  client_valid "$out"
  [ "$(remote_builds)" = 1 ] || fail "expected 1 remote build"
  hs=$(hosts_with "$out")
  [ "$hs" = h2 ] || fail "output is valid on [$hs], expected only h2"
  not_on_relay_machine "$out"
}

sc_d_desc="-A fail: build fails with the builder's stderr + an error; then a build succeeds"
sc_d() {
  local out rc=0
  out=$(build fail "$SEED-d") || rc=$?
  [ "$rc" != 0 ] || fail "nix-build -A fail succeeded?! ($out)"
  [ "$rc" != 124 ] || fail "nix-build -A fail timed out after ${TMO}s"
  grep -q "lab-fail: about to fail on purpose" "$BLOG" || fail "builder's stderr line missing from the client's output"
  grep -qi "error" "$BLOG" || fail "no error message in the client's output"
  echo "  client saw: $(grep -i error "$BLOG" | head -1 | sed 's/\x1b\[[0-9;]*m//g')"
  relay_alive
  out=$(build leaves "$SEED-d2" --arg nLeaves 1) || { tail -5 "$BLOG"; fail "the build after the failure failed"; }
  client_valid "$out"
  [ -n "$(hosts_with "$out")" ] || fail "the build after the failure is in no backend's store"
  not_on_relay_machine "$out"
}

sc_e_desc="-A big (200 MiB) arrives intact (verify-path, narHash = backend's)"
sc_e() {
  local out hs h ch bh size
  out=$(build big "$SEED-e") || { tail -5 "$BLOG"; fail "nix-build -A big failed"; }
  client_valid "$out"
  size=$(client stat -c %s "$out")
  [ "$size" = $((200 * 1024 * 1024)) ] || fail "size $size, expected 200 MiB"
  hs=$(hosts_with "$out")
  [ -n "$hs" ] || fail "output is in no backend's store"
  ch=$(client nix-store -q --hash "$out")
  for h in $hs; do
    bh=$(timeout "$TMO" "$HS" exec "$h" nix-store -q --hash "$out" </dev/null)
    [ "$ch" = "$bh" ] || fail "narHash differs: client $ch, $h $bh"
    timeout "$TMO" "$HS" exec "$h" nix-store --verify-path "$out" </dev/null || fail "$h: verify-path failed"
  done
  echo "  narHash $ch on client and [$hs]"
  not_on_relay_machine "$out"
}

sc_f_desc="refuses an unknown key, a non-Nix command and a shell"
sc_f() {
  local k=$LOGS/unknown_key rc port alias err
  rm -f "$k" "$k.pub"
  ssh-keygen -q -t ed25519 -N '' -C e2e-unknown -f "$k"
  if [ "$MODE" = relay ]; then port=$BASE_PORT; alias=relay; else port=$((BASE_PORT + 1)); alias=h1; fi
  # 1. unknown key (config-free ssh so that only this key is offered)
  rc=0
  timeout 30 ssh -F /dev/null -p "$port" -i "$k" -o IdentitiesOnly=yes -o IdentityAgent=none \
    -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$STATE/known_hosts" \
    -o HostKeyAlias="$alias" -o ConnectTimeout=10 -o LogLevel=ERROR \
    nix@127.0.0.1 'nix-store --serve --write' </dev/null >"$LOGS/f-unknown.out" 2>"$LOGS/f-unknown.err" || rc=$?
  echo "  unknown key -> exit $rc: $(head -1 "$LOGS/f-unknown.err")"
  [ "$rc" != 0 ] || fail "unknown key was accepted by $alias"
  [ "$rc" != 124 ] || fail "unknown key: ssh timed out"
  if grep -qi "host key verification failed\|REMOTE HOST IDENTIFICATION" "$LOGS/f-unknown.err"; then
    fail "unknown key test did not get to authentication (host key problem)"
  fi
  [ ! -s "$LOGS/f-unknown.out" ] || fail "unknown key: got protocol bytes on stdout"
  if [ "$MODE" != relay ]; then
    echo "  (direct mode: only the unknown-key check, against h1's sshd)"
    return 0
  fi
  # 2. a non-Nix command: exit status 1 and a one-line reason on stderr
  rc=0
  timeout 30 ssh -F "$STATE/ssh_config" relay echo hi </dev/null >"$LOGS/f-echo.out" 2>"$LOGS/f-echo.err" || rc=$?
  err=$(cat "$LOGS/f-echo.err")
  echo "  'ssh relay echo hi' -> exit $rc, stderr: $err"
  [ "$rc" = 1 ] || fail "'ssh relay echo hi': exit status $rc, expected 1"
  ! grep -qx hi "$LOGS/f-echo.out" || fail "'ssh relay echo hi' ran the command"
  [ "$(grep -c . "$LOGS/f-echo.err" || true)" = 1 ] || fail "'ssh relay echo hi': expected exactly one line on stderr, got: $err"
  # 3. an interactive shell with a pty
  rc=0
  timeout 30 ssh -F "$STATE/ssh_config" -tt relay </dev/null >"$LOGS/f-shell.out" 2>"$LOGS/f-shell.err" || rc=$?
  echo "  'ssh -tt relay' -> exit $rc: $(cat "$LOGS/f-shell.err" "$LOGS/f-shell.out" | tr -d '\r' | head -2 | tr '\n' ' ')"
  [ "$rc" != 124 ] || fail "'ssh -tt relay' hung (a shell was opened?)"
  [ "$rc" != 0 ] || fail "'ssh -tt relay' exited 0 (a shell was opened?)"
  relay_alive
}

sc_g_desc="-A multi (2 outputs) and -A many (odd file names) build and verify"
sc_g() {
  local out p hs ch bh h
  out=$(build multi.all "$SEED-g") || { tail -5 "$BLOG"; fail "nix-build -A multi.all failed"; }
  [ "$(echo "$out" | wc -l)" = 2 ] || fail "expected 2 output paths, got: $out"
  echo "$out" | grep -q -- '-lab-multi-dev$' || fail "no dev output: $out"
  # shellcheck disable=SC2086
  client_valid $out
  for p in $out; do
    [ -n "$(hosts_with "$p")" ] || fail "$p is in no backend's store"
  done
  client test -f "$(echo "$out" | grep -- '-dev$')/d" || fail "dev output content missing"
  # shellcheck disable=SC2086
  not_on_relay_machine $out
  [ "$(remote_builds)" = 1 ] || fail "multi: expected 1 remote build"

  out=$(build many "$SEED-g") || { tail -5 "$BLOG"; fail "nix-build -A many failed"; }
  client_valid "$out"
  client test -f "$out/name with spaces & ünïcode" || fail "file with an odd name missing"
  client test -L "$out/link" || fail "symlink missing"
  client test -x "$out/bin/run" || fail "executable bit lost"
  client test -f "$out/empty-file" -a ! -s "$out/empty-file" || fail "empty file wrong"
  [ "$(client sh -c "ls $out/a | wc -l")" = 301 ] || fail "expected 301 entries in $out/a"
  hs=$(hosts_with "$out"); [ -n "$hs" ] || fail "many: in no backend's store"
  ch=$(client nix-store -q --hash "$out")
  for h in $hs; do
    bh=$(timeout "$TMO" "$HS" exec "$h" nix-store -q --hash "$out" </dev/null)
    [ "$ch" = "$bh" ] || fail "many: narHash differs: client $ch, $h $bh"
  done
  not_on_relay_machine "$out"
}

# ---- run ----------------------------------------------------------------------------
relay_only() { [ "$1" = f ] && return 0; return 1; }
for s in $SCENARIOS; do
  desc_var="sc_${s}_desc"
  if ! declare -F "sc_$s" >/dev/null; then echo "FAIL $s: no such scenario"; failn=$((failn + 1)); continue; fi
  desc=${!desc_var}
  [ "$MODE" = direct ] && relay_only "$s" && desc="$desc (direct: unknown key vs h1 only; relay checks skipped)"
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
  if [ "$rc" = 0 ]; then
    echo "PASS $s: $desc ($(secs "$t"))"
    pass=$((pass + 1))
  else
    reason=$(grep '^REASON: ' "$log" | tail -1 | sed 's/^REASON: //')
    [ -n "$reason" ] || reason="exit status $rc (see $log)"
    echo "FAIL $s: $desc ($(secs "$t")): $reason"
    sed 's/^/    | /' "$log" | tail -15
    [ "$MODE" = relay ] && { echo "    relay.log (last 10 lines):"; tail -10 "$STATE/relay.log" 2>/dev/null | sed 's/^/    | /'; }
    failn=$((failn + 1))
  fi
done
if [ "$MODE" = direct ] && [[ " $SCENARIOS " == *" f "* ]]; then
  echo "SKIP f: 'ssh relay echo hi' / 'ssh -tt relay' refusals (relay mode only)"
  skipn=$((skipn + 1))
fi

# relay still alive at the end (it must survive everything above)
if [ "$MODE" = relay ]; then
  if "$HS" relay status >/dev/null 2>&1; then
    echo "PASS z: the relay is still running after all scenarios"; pass=$((pass + 1))
  else
    echo "FAIL z: the relay is not running any more (see $STATE/relay.log)"; failn=$((failn + 1))
  fi
fi

teardown
echo "e2e: mode=$MODE, $(secs "$T0") total, logs in $LOGS"
echo "$pass passed, $failn failed"
[ "$failn" = 0 ]
