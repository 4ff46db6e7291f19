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
#      E2E_SCENARIOS ("a b c d e f g h i j k l": run a subset), E2E_KEEP=1 (leave the lab
#      and relay running afterwards, for debugging), E2E_KEEP_STORES=1 (don't
#      empty the lab stores at start), E2E_TIMEOUT (seconds per nix command, 300).
# Scenarios h..l need the relay (several clients, dedup, cache, HTTP binary
# cache, untrusted client, crash); they SKIP in direct mode. A scenario that
# cannot run (e.g. no HTTP binary cache yet) reports SKIP with its reason.
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
SCENARIOS=${E2E_SCENARIOS:-a b c d e f g h i j k m n l p q o}
DIRECT=${E2E_DIRECT:-0}
RELAY_BIN=${RELAY_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/debug/nix-relay}
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
# only this run's backend commands count (check y)
for f in "$STATE"/hosts/h*/log/commands.log; do [ -f "$f" ] && : > "$f"; done
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
# skip REASON: the scenario cannot run here (reported as SKIP, counted neither way)
skip() { echo "SKIP-REASON: $*" >&2; exit 77; }
# note TEXT: printed under the scenario's PASS line
note() { echo "NOTE: $*" >&2; }

# ---- helpers for the multi-client / cache scenarios (h..l) ---------------------
CACHE=$STATE/relay-state/cache
HTTP_PORT=$((BASE_PORT + 80))
HTTP_URL=http://127.0.0.1:$HTTP_PORT
# in_ns NS CMD...: run CMD in namespace NS (client, client2, client3, hN)
in_ns() { local ns=$1; shift; timeout "$TMO" "$HS" exec "$ns" "$@" </dev/null; }
# build_in NS LOG BUILDERS ATTR SEED [nix-build args...]: build in NS; prints output paths
build_in() {
  local ns=$1 lg=$2 bl=$3 a=$4 s=$5; shift 5
  echo "+ [$ns] nix-build -A $a --argstr seed $s $* (log: $lg)" >&2
  in_ns "$ns" nix-build "$DRV" -A "$a" --argstr seed "$s" --no-out-link \
    --max-jobs 0 --builders "$bl" "$@" 2>"$lg"
}
# drv_of NS ATTR SEED [args...]: the .drv path (instantiated in NS)
drv_of() {
  local ns=$1 a=$2 s=$3; shift 3
  in_ns "$ns" nix-instantiate "$DRV" -A "$a" --argstr seed "$s" "$@" 2>/dev/null
}
# drv_name /nix/store/<hash>-NAME.drv -> NAME (what the relay logs as drv="NAME")
drv_name() { local n=${1#/nix/store/*-}; echo "${n%.drv}"; }
hash_part() { local n=${1#/nix/store/}; echo "${n%%-*}"; }
relay_log_size() { stat -c %s "$STATE/relay.log"; }
# finished_since OFFSET NAME: 'build finished' lines of drv="NAME" in relay.log after byte OFFSET
finished_since() {
  { tail -c +"$(( $1 + 1 ))" "$STATE/relay.log" | grep -a "drv=\"$2\"" | grep -a " build finished " || true; } | wc -l
}
# http_code PATH [OUTFILE]: HTTP status of GET $HTTP_URL/PATH ("000": no answer)
http_code() {
  curl -s -o "${2:-/dev/null}" -w '%{http_code}' --max-time 10 "$HTTP_URL$1" 2>/dev/null || true
}
# http_up_or_skip: SKIP the scenario when the relay's HTTP binary cache does not answer
http_up_or_skip() {
  local c; c=$(http_code /nix-cache-info)
  [ "$c" != 000 ] || skip "no HTTP binary cache on $HTTP_URL: GET /nix-cache-info got no answer (relay built without the [http] server?)"
  [ "$c" = 200 ] || fail "GET /nix-cache-info: HTTP $c, expected 200"
}
# store_consistent WHEN: every narinfo of the relay store (public and private)
# has its NAR file, with the size (FileSize) and hash (FileHash) it declares
store_consistent() {
  local ni url size fh f n=0 got
  for ni in "$CACHE"/*.narinfo "$CACHE"/private/*/*.narinfo; do
    [ -e "$ni" ] || continue
    n=$((n + 1))
    url=$(sed -n 's/^URL: //p' "$ni"); size=$(sed -n 's/^FileSize: //p' "$ni"); fh=$(sed -n 's/^FileHash: sha256://p' "$ni")
    [ -n "$url" ] && [ -n "$size" ] || fail "$1: $ni has no URL/FileSize"
    f=$(dirname "$ni")/$url
    [ -f "$f" ] || fail "$1: $ni names $url, which does not exist"
    got=$(stat -c %s "$f")
    [ "$got" = "$size" ] || fail "$1: $f is $got bytes, $ni says FileSize $size"
    if [ -n "$fh" ]; then
      got=$(nix-hash --flat --type sha256 --base32 "$f")
      [ "$got" = "$fh" ] || fail "$1: $f has sha256 $got, $ni says FileHash $fh"
    fi
  done
  echo "  $1: $n narinfo(s), every NAR present with its FileSize and FileHash"
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

sc_h_desc="3 clients (separate stores) build the same fresh derivation at once: 1 backend build, all valid"
sc_h() {
  local s=$SEED-h drv name off c p rc out first="" outs=0 att=0 n pids=()
  drv=$(drv_of client slow "$s" --arg sleepSecs 4) || fail "nix-instantiate -A slow failed"
  name=$(drv_name "$drv")
  off=$(relay_log_size)
  for c in client client2 client3; do
    (
      rc=0
      build_in "$c" "$LOGS/h.$c.nix.log" "$BUILDERS" slow "$s" --arg sleepSecs 4 >"$LOGS/h.$c.out" || rc=$?
      echo "$rc" >"$LOGS/h.$c.rc"
    ) &
    pids+=("$!")
  done
  for p in "${pids[@]}"; do wait "$p" || true; done
  for c in client client2 client3; do
    rc=$(cat "$LOGS/h.$c.rc" 2>/dev/null || echo "?")
    [ "$rc" = 0 ] || { tail -5 "$LOGS/h.$c.nix.log" >&2; fail "$c: nix-build failed (exit $rc, log $LOGS/h.$c.nix.log)"; }
    out=$(cat "$LOGS/h.$c.out")
    [ -n "$out" ] || fail "$c: no output path"
    [ -z "$first" ] || [ "$out" = "$first" ] || fail "$c built $out, another client $first"
    first=$out
    in_ns "$c" nix-store --verify-path "$out" >&2 || fail "$c: nix-store --verify-path $out failed"
    outs=$((outs + 1))
    if grep -q "attached to the build of '$drv' already running for another client" "$LOGS/h.$c.nix.log"; then
      att=$((att + 1)); echo "  $c: attached to the running build"
    else
      echo "  $c: $(grep -m1 '^nix-relay: ' "$LOGS/h.$c.nix.log" || echo "(no nix-relay line)")"
    fi
  done
  n=$(finished_since "$off" "$name")
  echo "  'build finished' lines for drv=\"$name\": $n; clients attached: $att"
  [ "$n" = 1 ] || fail "expected exactly 1 backend build of $name in relay.log, saw $n"
  [ "$att" -ge 1 ] || fail "no client log shows 'attached to the build of '$drv' already running for another client'"
  not_on_relay_machine "$first"
}

sc_i_desc="the same derivation again (another store; deleted output): cache hit, no backend build"
sc_i() {
  local s=$SEED-i drv name off out out2 i n
  drv=$(drv_of client slow "$s" --arg sleepSecs 1) || fail "nix-instantiate -A slow failed"
  name=$(drv_name "$drv")
  out=$(build_in client "$LOGS/i.1.nix.log" "$BUILDERS" slow "$s" --arg sleepSecs 1) || { tail -5 "$LOGS/i.1.nix.log"; fail "first build failed"; }
  client_valid "$out"
  # the relay stores the output while teeing it to the client; allow it a moment
  for i in $(seq 1 100); do [ -f "$CACHE/$(hash_part "$out").narinfo" ] && break; sleep 0.1; done
  [ -f "$CACHE/$(hash_part "$out").narinfo" ] || fail "the output $out never landed in the relay store ($CACHE)"
  off=$(relay_log_size)
  # 1. a store that never had it (client2)
  out2=$(build_in client2 "$LOGS/i.2.nix.log" "$BUILDERS" slow "$s" --arg sleepSecs 1) || { tail -5 "$LOGS/i.2.nix.log"; fail "client2: build failed"; }
  [ "$out2" = "$out" ] || fail "client2 got $out2, expected $out"
  in_ns client2 nix-store --verify-path "$out" >&2 || fail "client2: verify-path $out failed"
  grep -q "nix-relay: cache hit: every output is in the relay store" "$LOGS/i.2.nix.log" || fail "client2's log has no 'cache hit' line (log $LOGS/i.2.nix.log)"
  # 2. the first client after deleting its copy
  in_ns client nix-store --delete "$out" >&2 || fail "client: nix-store --delete $out failed"
  if in_ns client nix-store --check-validity "$out" >/dev/null 2>&1; then fail "client: $out still valid after --delete"; fi
  out2=$(build_in client "$LOGS/i.3.nix.log" "$BUILDERS" slow "$s" --arg sleepSecs 1) || { tail -5 "$LOGS/i.3.nix.log"; fail "client: rebuild after delete failed"; }
  [ "$out2" = "$out" ] || fail "client got $out2, expected $out"
  client_valid "$out"
  grep -q "nix-relay: cache hit: every output is in the relay store" "$LOGS/i.3.nix.log" || fail "client's log (after delete) has no 'cache hit' line (log $LOGS/i.3.nix.log)"
  n=$(finished_since "$off" "$name")
  echo "  new 'build finished' lines for drv=\"$name\" after the first build: $n"
  [ "$n" = 0 ] || fail "expected no new backend build of $name, saw $n"
}

metric() {  # metric FILE 'name{labels}' -> value (0 if absent)
  awk -v k="$2" '$1 == k { print $2; found=1 } END { if (!found) print 0 }' "$1"
}

sc_m_desc="metrics and status: counters move for a scripted build and a cache hit; promtool and /status schema pass"
sc_m() {
  local s=$SEED-m before=$LOGS/m.before.prom after=$LOGS/m.after.prom st=$LOGS/m.status.json out k
  http_up_or_skip
  command -v promtool >/dev/null || fail "promtool missing (tests/setup.sh installs Debian's prometheus package)"
  curl -sf --max-time 10 "$HTTP_URL/metrics" >"$before" || fail "GET /metrics failed"
  out=$(build_in client "$LOGS/m.1.nix.log" "$BUILDERS" feature "$s") || { tail -5 "$LOGS/m.1.nix.log"; fail "build -A feature failed"; }
  for i in $(seq 1 100); do [ -f "$CACHE/$(hash_part "$out").narinfo" ] && break; sleep 0.1; done
  build_in client2 "$LOGS/m.2.nix.log" "$BUILDERS" feature "$s" >/dev/null || { tail -5 "$LOGS/m.2.nix.log"; fail "second build failed"; }
  curl -sf --max-time 10 "$HTTP_URL/metrics" >"$after" || fail "GET /metrics failed"
  for k in 'nix_relay_builds_total{system="x86_64-linux",backend="h1",outcome="success"}' \
           'nix_relay_nar_bytes_total{direction="from_backend"}' 'nix_relay_nar_bytes_total{direction="to_client"}' \
           'nix_relay_cache_hits_total' 'nix_relay_cache_misses_total' 'nix_relay_sessions_total{protocol="serve"}'; do
    b=$(metric "$before" "$k"); a=$(metric "$after" "$k")
    echo "  $k: $b -> $a"
    awk -v a="$a" -v b="$b" 'BEGIN { exit !(a > b) }' || fail "$k did not increase ($b -> $a)"
  done
  if grep -E '^nix_relay_[a-z_]+\{[^}]*(/nix/store|127\.0\.0\.1)' "$after"; then fail "a label holds a store path or an address"; fi
  promtool check metrics <"$after" >"$LOGS/m.promtool.log" 2>&1 || { cat "$LOGS/m.promtool.log" >&2; fail "promtool check metrics failed"; }
  curl -sf --max-time 10 "$HTTP_URL/status" >"$st" || fail "GET /status failed"
  python3 - "$st" <<'PY' || fail "/status does not match its documented schema"
import json, sys
s = json.load(open(sys.argv[1]))
def need(obj, keys, what):
    missing = [k for k in keys if k not in obj]
    assert not missing, f"{what}: missing {missing}"
need(s, ["version", "uptime_seconds", "backends", "queues", "flights", "recent_builds", "store_bytes", "store_max_bytes"], "status")
assert len(s["backends"]) == 3, s["backends"]
for b in s["backends"]:
    need(b, ["name", "systems", "features", "state", "running", "max_jobs", "speed_factor"], "backend")
    assert b["state"] in ("up", "down", "unknown"), b
for q in s["queues"]:
    need(q, ["system", "waiting_seconds"], "queue")
for f in s["flights"]:
    need(f, ["outputs", "private", "attached", "state", "age_seconds"], "flight")
assert s["recent_builds"], "no recent builds"
for r in s["recent_builds"]:
    need(r, ["drv", "system", "backend", "outcome", "duration_seconds", "finished_unix"], "build")
assert any(r["drv"] == "lab-feature" and r["backend"] == "h1" and r["outcome"] == "success" for r in s["recent_builds"]), "lab-feature on h1 not in recent_builds"
PY
  "$RELAY_BIN" status --url "$HTTP_URL" >"$LOGS/m.status.txt" || fail "nix-relay status failed"
  grep -q '^h1 ' "$LOGS/m.status.txt" || fail "nix-relay status shows no h1 row"
  echo "  promtool ok; /status schema ok; nix-relay status renders $(wc -l <"$LOGS/m.status.txt") lines"
}

sc_n_desc="ssh-ng:// client -> relay: DAG, feature, foreign, failing and 200 MiB builds; nix copy --to/--from ssh-ng://relay"
sc_n() {
  local s=$SEED-n ng out p h n
  ng=$(sed 's|^ssh://|ssh-ng://|' "$STATE/machines-relay")
  local B="$BUILDERS"; BUILDERS=$ng
  out=$(build top "$s") || { tail -5 "$BLOG"; fail "ssh-ng: nix-build -A top failed"; }
  client_valid "$out" $(client nix-store -q --references "$out")
  n=$(grep -c "^building '[^']*' on 'ssh-ng://relay'" "$BLOG" || true)
  [ "$n" = 11 ] || fail "ssh-ng: expected 11 builds on ssh-ng://relay, saw $n"
  grep -q "nix-relay: building '" "$BLOG" || fail "ssh-ng: the relay's own log lines did not reach the client"
  out=$(build feature "$s") || fail "ssh-ng: -A feature failed"
  [ "$(hosts_with "$out")" = h1 ] || fail "ssh-ng: feature output not only on h1"
  out=$(build foreign "$s") || fail "ssh-ng: -A foreign failed"
  [ "$(hosts_with "$out")" = h2 ] || fail "ssh-ng: foreign output not only on h2"
  if build fail "$s" >/dev/null; then fail "ssh-ng: -A fail succeeded"; fi
  grep -q "lab-fail: about to fail on purpose" "$BLOG" || fail "ssh-ng: the builder's stderr did not reach the client"
  grep -q "failed with exit code 3" "$BLOG" || fail "ssh-ng: no failure message"
  out=$(build big "$s") || fail "ssh-ng: -A big failed"
  client_valid "$out"
  [ "$(client nix-store -q --hash "$out")" = "$(timeout "$TMO" "$HS" exec h1 nix-store -q --hash "$out" 2>/dev/null || timeout "$TMO" "$HS" exec h2 nix-store -q --hash "$out" 2>/dev/null || timeout "$TMO" "$HS" exec h3 nix-store -q --hash "$out")" ] || fail "ssh-ng: big narHash differs from the backend's"
  BUILDERS=$B
  # nix copy --to / --from ssh-ng://relay of a locally built path
  p=$(client nix-build "$DRV" -A many --argstr seed "$s-local" --no-out-link 2>/dev/null) || fail "local build for nix copy failed"
  client nix --extra-experimental-features nix-command copy --to ssh-ng://relay "$p" >&2 || fail "nix copy --to ssh-ng://relay failed"
  h=$(hash_part "$p")
  [ -f "$CACHE/$h.narinfo" ] || fail "nix copy --to: $p not in the relay store"
  client nix-store --delete "$p" >&2 || fail "could not delete $p on the client"
  # the relay signs what it serves: trust its key, as a LAN client would
  client nix --extra-experimental-features nix-command copy --from ssh-ng://relay \
    --option trusted-public-keys "$(cat "$STATE/keys/relay-cache.sec.pub")" "$p" >&2 || fail "nix copy --from ssh-ng://relay failed"
  client_valid "$p"
  echo "  ssh-ng: 11-drv DAG, feature->h1, foreign->h2, failure log, 200 MiB, copy --to/--from"
}

# wait_started TEXT: waits up to 10 s until $BLOG shows the relay building on
# a backend and then TEXT (the builder is running); prints the backend's name
wait_started() {
  local h i
  for i in $(seq 1 100); do
    h=$(grep -o "nix-relay: building '[^']*' on h[0-9]" "$BLOG" 2>/dev/null | tail -1 | grep -o 'h[0-9]$' || true)
    if [ -n "$h" ] && grep -q "$1" "$BLOG" 2>/dev/null; then echo "$h"; return 0; fi
    sleep 0.1
  done
  return 1
}

# descendants PID: every process below PID (children first), from /proc
descendants() {
  local p c
  for c in $(awk -v p="$1" '$4 == p { print $1 }' /proc/[0-9]*/stat 2>/dev/null); do
    descendants "$c"; echo "$c"
  done
}

sc_o_desc="a backend killed mid-build (sshd and every process): the build is retried elsewhere, the client succeeds"
sc_o() {
  local s=$SEED-o bg=$LOGS/o.nix.log out host pid i
  ( build slow "$s" --arg sleepSecs 8 >"$LOGS/o.out" ) 2>/dev/null &
  bg=$!
  host=$(wait_started "slow: 1/8") || { kill "$bg" 2>/dev/null || true; fail "the build never started on a backend"; }
  pid=$(cat "$STATE/run/$host.pid")
  echo "  killing $host (sshd $pid and $(descendants "$pid" | wc -w) processes under it) mid-build"
  kill -9 $(descendants "$pid") "$pid" 2>/dev/null || true
  wait "$bg" || { tail -5 "$BLOG"; fail "the client's build failed after $host died"; }
  out=$(cat "$LOGS/o.out")
  client_valid "$out"
  grep -q "retrying elsewhere" "$BLOG" || fail "no retry line in the client's log"
  [ -n "$(hosts_with "$out")" ] || fail "the output is on no backend"
  case " $(hosts_with "$out") " in *" $host "*) fail "the output is on the killed $host";; esac
  echo "  retried on: $(hosts_with "$out")"
}

sc_p_desc="a wedged backend (every process stopped) cannot hang the client: the relay times the build out (max-silent-time)"
sc_p() {
  local s=$SEED-p bg host pid procs rc=0 t0
  ( build slow "$s" --arg sleepSecs 60 --option max-silent-time 2 >/dev/null ) 2>/dev/null &
  bg=$!
  host=$(wait_started "slow: 1/60") || { kill "$bg" 2>/dev/null || true; fail "the build never started on a backend"; }
  pid=$(cat "$STATE/run/$host.pid")
  procs=$(descendants "$pid")
  echo "  stopping $(echo $procs | wc -w) processes of $host's ssh session (its sshd keeps listening)"
  t0=$(date +%s)
  kill -STOP $procs 2>/dev/null || true
  wait "$bg" || rc=$?
  kill -CONT $procs 2>/dev/null || true
  [ "$rc" != 0 ] || fail "the build succeeded although its backend was frozen"
  grep -q "no output for 2 seconds" "$BLOG" || fail "the client was not told why (log: $BLOG)"
  echo "  the client got the relay's timeout after $(( $(date +%s) - t0 )) s"
  [ $(( $(date +%s) - t0 )) -lt 60 ] || fail "took too long: the relay did not enforce max-silent-time"
}

sc_q_desc="the client killed mid-build: the backend's build processes are gone within 5 s"
sc_q() {
  local s=$SEED-q bg host pid left i
  ( build slow "$s" --arg sleepSecs 60 >/dev/null ) 2>/dev/null &
  bg=$!
  host=$(wait_started "slow: 1/60") || { kill "$bg" 2>/dev/null || true; fail "the build never started on a backend"; }
  pid=$(cat "$STATE/run/$host.pid")
  [ -n "$(descendants "$pid")" ] || fail "no build processes on $host to begin with"
  kill -9 $(descendants "$bg") "$bg" 2>/dev/null || true
  wait "$bg" 2>/dev/null || true
  for i in $(seq 1 50); do
    left=$(descendants "$pid")
    [ -z "$left" ] && break
    sleep 0.1
  done
  [ -z "$left" ] || fail "$host still runs $(echo $left | wc -w) processes 5 s after the client died: $(ps -o pid=,args= -p $(echo $left | tr ' ' ,) | head -3 | tr '\n' ';')"
  echo "  $host's build processes were gone $((i / 10)).$((i % 10)) s after the client was killed"
}

sc_j_desc="substitution over HTTP: right key works (nothing built), wrong key refused; narinfo signed"
sc_j() {
  local s=$SEED-j out refs p pub wrong rc ni i
  http_up_or_skip
  grep -q '^StoreDir: /nix/store' <(curl -s --max-time 10 "$HTTP_URL/nix-cache-info") || fail "GET /nix-cache-info has no 'StoreDir: /nix/store'"
  pub=$(cat "$STATE/keys/relay-cache.sec.pub") || fail "no $STATE/keys/relay-cache.sec.pub"
  [[ $pub == nix-relay-lab-1:* ]] || fail "relay-cache.sec.pub is not 'nix-relay-lab-1:...': $pub"
  out=$(build_in client "$BLOG" "$BUILDERS" top "$s" --arg nLeaves 3) || { tail -5 "$BLOG"; fail "nix-build -A top failed"; }
  refs=$(in_ns client nix-store -q --references "$out")
  for p in $out $refs; do
    for i in $(seq 1 100); do [ -f "$CACHE/$(hash_part "$p").narinfo" ] && break; sleep 0.1; done
    ni=$LOGS/j.$(hash_part "$p").narinfo
    rc=$(http_code "/$(hash_part "$p").narinfo" "$ni")
    [ "$rc" = 200 ] || fail "GET /$(hash_part "$p").narinfo: HTTP $rc, expected 200"
    grep -qx "StorePath: $p" "$ni" || fail "narinfo of $p names another path: $(head -1 "$ni")"
    grep -q '^Sig: nix-relay-lab-1:' "$ni" || fail "narinfo of $p has no 'Sig: nix-relay-lab-1:' line"
  done
  rc=$(http_code "/$(sed -n 's/^URL: //p' "$LOGS/j.$(hash_part "$out").narinfo")")
  [ "$rc" = 200 ] || fail "GET of the NAR of $out: HTTP $rc"
  if in_ns client2 nix-store --check-validity "$out" >/dev/null 2>&1; then fail "client2 already has $out"; fi
  # a wrong key: refused, nothing becomes valid
  wrong=$LOGS/j-wrong
  rm -f "$wrong.sk" "$wrong.pk"
  nix-store --generate-binary-cache-key wrong-1 "$wrong.sk" "$wrong.pk"
  rc=0
  in_ns client2 env XDG_CACHE_HOME="$LOGS/j-xdg-cache" nix-store -r "$out" \
    --option substituters "$HTTP_URL" --option trusted-public-keys "$(cat "$wrong.pk")" \
    --max-jobs 0 --option builders "" >"$LOGS/j.wrong.out" 2>"$LOGS/j.wrong.log" || rc=$?
  echo "  wrong key -> exit $rc: $(grep -m1 -i error "$LOGS/j.wrong.log" || true)"
  [ "$rc" != 0 ] || fail "nix-store -r with a wrong trusted-public-keys succeeded"
  grep -q "is not signed by any of the keys" "$LOGS/j.wrong.log" || fail "the wrong-key failure is not about signatures: $(head -3 "$LOGS/j.wrong.log" | tr '\n' ' ')"
  if in_ns client2 nix-store --check-validity "$out" >/dev/null 2>&1; then fail "client2: $out valid after the wrong-key attempt"; fi
  # the relay's key: substituted, not built
  rc=0
  in_ns client2 env XDG_CACHE_HOME="$LOGS/j-xdg-cache" nix-store -r "$out" \
    --option substituters "$HTTP_URL" --option trusted-public-keys "$pub" \
    --max-jobs 0 --option builders "" >"$LOGS/j.right.out" 2>"$LOGS/j.right.log" || rc=$?
  [ "$rc" = 0 ] || { tail -5 "$LOGS/j.right.log" >&2; fail "nix-store -r with the relay's key failed (exit $rc)"; }
  if grep -q "^building " "$LOGS/j.right.log"; then fail "client2 built something: $(grep -m1 '^building ' "$LOGS/j.right.log")"; fi
  for p in $out $refs; do
    in_ns client2 nix-store --verify-path "$p" >&2 || fail "client2: verify-path $p failed"
  done
  echo "  substituted $out and its $(echo "$refs" | wc -w) references from $HTTP_URL"
}

sc_k_desc="untrusted client eve: its upload and output stay private (not public, not HTTP, not for lab)"
sc_k() {
  local s=$SEED-k f=$LOGS/k-eve.nix out src p h rc i pub u
  # a public control path: a leaf built by the trusted client (also makes busybox public)
  pub=$(build_in client "$LOGS/k.lab.nix.log" "$BUILDERS" leaves "$s" --arg nLeaves 1) || { tail -5 "$LOGS/k.lab.nix.log"; fail "lab's control build failed"; }
  cat >"$f" <<NIX
let lab = import $DRV { seed = "$s"; }; in
derivation {
  name = "lab-eve-private";
  system = builtins.currentSystem;
  seed = "$s";
  builder = "\${lab.bb}/bin/sh";
  src = builtins.toFile "lab-eve-input" "eve's own input, seed $s\n";
  args = [ "-e" "-c" "cat \$src > \$out; echo \$src >> \$out" ];
}
NIX
  echo "+ [client3 as eve] nix-build $f (log: $BLOG)" >&2
  out=$(in_ns client3 nix-build "$f" --no-out-link --max-jobs 0 --builders "$(cat "$STATE/machines-relay-eve")" 2>"$BLOG") \
    || { tail -5 "$BLOG"; fail "eve's build failed"; }
  in_ns client3 nix-store --verify-path "$out" >&2 || fail "client3: verify-path $out failed"
  grep -q "on 'ssh://relay-eve'" "$BLOG" || fail "eve's build did not go to ssh://relay-eve"
  src=$(in_ns client3 nix-store -q --references "$out" | grep -- '-lab-eve-input$') || fail "output does not reference the toFile input"
  for i in $(seq 1 100); do [ -f "$CACHE/private/eve/$(hash_part "$out").narinfo" ] && break; sleep 0.1; done
  for p in "$src" "$out"; do
    h=$(hash_part "$p")
    [ ! -e "$CACHE/$h.narinfo" ] || fail "$p is PUBLIC: $CACHE/$h.narinfo exists"
    [ -f "$CACHE/private/eve/$h.narinfo" ] || fail "$p is not in eve's private scope ($CACHE/private/eve/$h.narinfo missing)"
    if grep -lqx "StorePath: $p" "$CACHE"/*.narinfo 2>/dev/null; then fail "a public narinfo names $p"; fi
    echo "  ${p#/nix/store/}: private/eve only"
  done
  if [ "$(http_code /nix-cache-info)" = 200 ]; then
    for p in "$src" "$out"; do
      rc=$(http_code "/$(hash_part "$p").narinfo")
      [ "$rc" = 404 ] || fail "GET /$(hash_part "$p").narinfo: HTTP $rc, expected 404"
      h=$(hash_part "$p"); u=$(sed -n 's/^URL: //p' "$CACHE/private/eve/$h.narinfo")
      for u in "/private/eve/$h.narinfo" "/private/eve/$u" "/$u" "/nar/../private/eve/$h.narinfo" "/nar/%2e%2e/private/eve/$h.narinfo" "/meta/$h.prov"; do
        rc=$(curl -s --path-as-is -o /dev/null -w '%{http_code}' --max-time 10 "$HTTP_URL$u" || true)
        [ "$rc" != 200 ] || fail "GET $u: HTTP 200 (a private file is served)"
      done
    done
    rc=$(http_code "/$(hash_part "$pub").narinfo")
    [ "$rc" = 200 ] || fail "control: GET /$(hash_part "$pub").narinfo (public): HTTP $rc"
    echo "  HTTP: 404 for both narinfos; private/, meta/ and ../ URLs not served; the public control is"
  else
    note "HTTP 404 checks skipped: GET $HTTP_URL/nix-cache-info got no answer"
  fi
  # control: lab's query works and sees a public path
  in_ns client nix path-info --store ssh://relay "$pub" >/dev/null 2>"$LOGS/k.lab.err" \
    || fail "control: lab's 'nix path-info --store ssh://relay $pub' failed: $(head -1 "$LOGS/k.lab.err")"
  for p in "$src" "$out"; do
    rc=0
    in_ns client nix path-info --store ssh://relay "$p" >"$LOGS/k.lab.out" 2>"$LOGS/k.lab.err" || rc=$?
    [ "$rc" != 0 ] || fail "the trusted client lab sees eve's private $p (nix path-info --store ssh://relay: $(cat "$LOGS/k.lab.out"))"
    grep -q "don't know how to build\|is not valid" "$LOGS/k.lab.err" || fail "lab: unexpected error for $p: $(head -2 "$LOGS/k.lab.err" | tr '\n' ' ')"
    echo "  lab: nix path-info $p -> exit $rc: $(head -1 "$LOGS/k.lab.err")"
    rc=0
    in_ns client3 nix path-info --store ssh://relay-eve "$p" >"$LOGS/k.eve.out" 2>"$LOGS/k.eve.err" || rc=$?
    [ "$rc" = 0 ] && grep -qx "$p" "$LOGS/k.eve.out" || fail "eve cannot see her own $p (exit $rc: $(head -1 "$LOGS/k.eve.err"))"
  done
  echo "  eve: nix path-info --store ssh://relay-eve sees both"
}

sc_l_desc="relay killed -9 while teeing -A big: store consistent, tmp/ emptied on restart, rebuild works"
sc_l() {
  local s=$SEED-l drv name off bg pid i rc tmpn out size
  drv=$(drv_of client big "$s") || fail "nix-instantiate -A big failed"
  name=$(drv_name "$drv")
  off=$(relay_log_size)
  ( rc=0; build_in client "$LOGS/l.1.nix.log" "$BUILDERS" big "$s" >/dev/null || rc=$?; echo "$rc" >"$LOGS/l.1.rc" ) &
  bg=$!
  for i in $(seq 1 9000); do   # up to ~3 min for the backend build
    [ "$(finished_since "$off" "$name")" -ge 1 ] && break
    kill -0 "$bg" 2>/dev/null || { wait "$bg" || true; tail -5 "$LOGS/l.1.nix.log"; fail "nix-build -A big ended before the relay logged 'build finished' (exit $(cat "$LOGS/l.1.rc"))"; }
    sleep 0.02
  done
  [ "$(finished_since "$off" "$name")" -ge 1 ] || { kill "$bg" 2>/dev/null || true; wait "$bg" || true; fail "no 'build finished' for $name within 3 min"; }
  "$HS" relay status >/dev/null || fail "relay not running before the kill"
  pid=$(cat "$STATE/run/relay.pid")
  kill -9 "$pid"
  tmpn=$(find "$CACHE/tmp" -mindepth 1 | wc -l)
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$pid" 2>/dev/null; then fail "relay pid $pid survived kill -9"; fi
  echo "  killed the relay (pid $pid) right after 'build finished'; cache/tmp held $tmpn file(s)"
  [ "$tmpn" != 0 ] || note "cache/tmp was empty at the kill: the NAR was not being written at that moment (timing)"
  wait "$bg" || true
  echo "  the client's nix-build -A big ended with exit $(cat "$LOGS/l.1.rc" 2>/dev/null || echo '?')"
  store_consistent "after kill -9"
  cp "$STATE/relay.log" "$LOGS/relay-before-kill.log"
  "$HS" relay start >"$LOGS/l.restart.log" 2>&1 || { cat "$LOGS/l.restart.log" >&2; fail "the relay did not restart"; }
  tmpn=$(find "$CACHE/tmp" -mindepth 1 | wc -l)
  [ "$tmpn" = 0 ] || fail "cache/tmp not empty after restart: $(ls -A "$CACHE/tmp" | head -3 | tr '\n' ' ')"
  store_consistent "after restart"
  in_ns client2 true || fail "client2 namespace is gone"
  "$HS" reset client2
  out=$(build_in client2 "$LOGS/l.2.nix.log" "$BUILDERS" big "$s") || { tail -5 "$LOGS/l.2.nix.log"; fail "nix-build -A big after the restart failed"; }
  in_ns client2 nix-store --verify-path "$out" >&2 || fail "client2: verify-path $out failed"
  size=$(in_ns client2 stat -c %s "$out")
  [ "$size" = $((200 * 1024 * 1024)) ] || fail "size $size, expected 200 MiB"
  if grep -q "nix-relay: cache hit" "$LOGS/l.2.nix.log"; then echo "  after restart: cache hit (the tee had completed)"; else echo "  after restart: built again ($(finished_since 0 "$name") 'build finished' line(s) since the restart)"; fi
  store_consistent "after the rebuild"
}

# ---- run ----------------------------------------------------------------------------
relay_only() { [ "$1" = f ] && return 0; return 1; }
needs_relay() { case $1 in h|i|j|k|l|m|n|o|p|q) return 0;; esac; return 1; }
for s in $SCENARIOS; do
  desc_var="sc_${s}_desc"
  if ! declare -F "sc_$s" >/dev/null; then echo "FAIL $s: no such scenario"; failn=$((failn + 1)); continue; fi
  desc=${!desc_var}
  if [ "$MODE" = direct ] && needs_relay "$s"; then
    echo "SKIP $s: $desc (relay mode only)"; skipn=$((skipn + 1)); continue
  fi
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
    grep '^NOTE: ' "$log" | sed 's/^NOTE: /    note: /' || true
    pass=$((pass + 1))
  elif [ "$rc" = 77 ] && grep -q '^SKIP-REASON: ' "$log"; then
    echo "SKIP $s: $desc ($(secs "$t")): $(grep '^SKIP-REASON: ' "$log" | tail -1 | sed 's/^SKIP-REASON: //')"
    skipn=$((skipn + 1))
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

# the relay drove its backends over the configured protocol, and only that
if [ "$MODE" = relay ]; then
  want="nix-store --serve --write"; other="nix-daemon --stdio"
  [ "${LAB_BACKEND_PROTO:-ssh}" = ssh-ng ] && { want="nix-daemon --stdio"; other="nix-store --serve"; }
  cmds=$(cat "$STATE"/hosts/h*/log/commands.log 2>/dev/null || true)
  if grep -q -- "$want" <<<"$cmds" && ! grep -q -- "$other" <<<"$cmds"; then
    echo "PASS y: backends were driven with '$want' only (${LAB_BACKEND_PROTO:-ssh}://)"; pass=$((pass + 1))
  else
    echo "FAIL y: backends' commands.log do not show only '$want'"; failn=$((failn + 1))
  fi
fi

teardown
echo "e2e: mode=$MODE, $(secs "$T0") total, logs in $LOGS"
echo "$pass passed, $failn failed"
[ "$failn" = 0 ]
