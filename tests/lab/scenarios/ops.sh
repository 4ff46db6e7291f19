# Operations scenarios: ssh-ng clients (n), a backend killed mid-build (o), a
# frozen backend (p), a client killed mid-build (q). Metrics and /status (m)
# are tests/engine_metrics.rs.
# Sourced by e2e.sh; helpers in lib.sh.

sc_n_relay=1
sc_n_desc="ssh-ng:// client -> relay: DAG, feature, foreign, failing and 200 MiB builds; nix copy --to/--from ssh-ng://relay"
sc_n() {
  local s=$SEED-n ng out p h n
  ng=$(sed 's|^ssh://|ssh-ng://|' "$STATE/machines-relay")
  local B="$BUILDERS"; BUILDERS=$ng
  out=$(build top "$s") || { tail -5 "$BLOG"; fail "ssh-ng: nix-build -A top failed"; }
  # shellcheck disable=SC2046 # a list of words (paths or pids), split on purpose
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

# builders_under PID: processes below PID running the lab's slow builder
builders_under() {
  local c
  for c in $(descendants "$1"); do
    # No pipe: with pipefail an early grep -q exit could fail the test.
    grep -qa 'slow: \$i' "/proc/$c/cmdline" 2>/dev/null && echo "$c"
  done
  return 0
}

# session_root PID CHILD: the child of PID (an sshd) whose subtree holds CHILD
session_root() {
  local p=$2 pp
  while pp=$(awk '{ print $4 }' "/proc/$p/stat" 2>/dev/null) && [ -n "$pp" ]; do
    [ "$pp" = "$1" ] && { echo "$p"; return 0; }
    [ "$pp" -le 1 ] && return 0
    p=$pp
  done
  return 0
}

sc_o_relay=1
sc_o_desc="a backend killed mid-build (sshd and every process): the build is retried elsewhere, the client succeeds"
sc_o() {
  local s=$SEED-o bg=$LOGS/o.nix.log out host pid i
  ( build slow "$s" --arg sleepSecs 8 >"$LOGS/o.out" ) 2>/dev/null &
  bg=$!
  host=$(wait_started "slow: 1/8") || { kill "$bg" 2>/dev/null || true; fail "the build never started on a backend"; }
  pid=$(cat "$STATE/run/$host.pid")
  echo "  killing $host (sshd $pid and $(descendants "$pid" | wc -w) processes under it) mid-build"
  # shellcheck disable=SC2046 # a list of words (paths or pids), split on purpose
  kill -9 $(descendants "$pid") "$pid" 2>/dev/null || true
  wait "$bg" || { tail -5 "$BLOG"; fail "the client's build failed after $host died"; }
  out=$(cat "$LOGS/o.out")
  client_valid "$out"
  grep -q "retrying elsewhere" "$BLOG" || fail "no retry line in the client's log"
  [ -n "$(hosts_with "$out")" ] || fail "the output is on no backend"
  case " $(hosts_with "$out") " in *" $host "*) fail "the output is on the killed $host";; esac
  echo "  retried on: $(hosts_with "$out")"
}

sc_p_relay=1
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

sc_q_relay=1
sc_q_desc="the client killed mid-build: the backend's build processes are gone within 5 s"
# The relay keeps warm idle sessions (an sshd and a nix-store --serve each)
# on backends between builds, so "gone" means: the ssh session that ran the
# build (the sshd child above the builder) and every builder process.
sc_q() {
  local s=$SEED-q bg host pid left i builder sess idle
  ( build slow "$s" --arg sleepSecs 60 >/dev/null ) 2>/dev/null &
  bg=$!
  host=$(wait_started "slow: 1/60") || { kill "$bg" 2>/dev/null || true; fail "the build never started on a backend"; }
  pid=$(cat "$STATE/run/$host.pid")
  for i in $(seq 1 20); do
    builder=$(builders_under "$pid" | head -1)
    [ -n "$builder" ] && break
    sleep 0.1
  done
  [ -n "$builder" ] || fail "no build processes on $host to begin with (under sshd $pid: $(ps -o pid=,args= -p "$(descendants "$pid" | paste -sd, -)" 2>/dev/null | cut -c1-80 | tr '\n' ';'))"
  sess=$(session_root "$pid" "$builder")
  [ -n "$sess" ] || fail "no ssh session above the builder (pid $builder) on $host"
  # shellcheck disable=SC2046 # a list of words (paths or pids), split on purpose
  kill -9 $(descendants "$bg") "$bg" 2>/dev/null || true
  wait "$bg" 2>/dev/null || true
  for i in $(seq 1 50); do
    left="$(descendants "$sess") $(builders_under "$pid")"
    [ -d "/proc/$sess" ] && left="$left $sess"
    left=$(echo $left)
    [ -z "$left" ] && break
    sleep 0.1
  done
  # shellcheck disable=SC2046 # a list of words (paths or pids), split on purpose
  [ -z "$left" ] || fail "$host still runs $(echo $left | wc -w) processes of the build 5 s after the client died: $(ps -o pid=,args= -p $(echo $left | tr ' ' ,) | head -3 | tr '\n' ';')"
  idle=$(descendants "$pid" | wc -w)
  echo "  $host's build session and builders were gone $((i / 10)).$((i % 10)) s after the client was killed ($idle processes of idle pooled sessions remain)"
}
