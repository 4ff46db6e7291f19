# Scheduler operations scenarios: a backend on a closed port (r), fairness
# between two clients (s), drain/undrain (t), SIGHUP reload (u).
# Sourced by e2e.sh; helpers in lib.sh. Each scenario that changes the
# relay's backends restores the lab's config (and reloads it) on exit.

ADMIN_URL=http://127.0.0.1:$((BASE_PORT + 81))
RELAY_TOML=$STATE/relay.toml

# reload_relay: SIGHUP the relay; waits up to 10 s for its "reload:" line
# (printed) and then for the reload to finish.
reload_relay() {
  local off i line
  off=$(relay_log_size)
  kill -HUP "$(cat "$STATE/run/relay.pid")" || fail "cannot signal the relay"
  for i in $(seq 1 100); do
    # the last line of a reload: its summary, or that the config was kept
    line=$(tail -c +"$((off + 1))" "$STATE/relay.log" \
      | grep -aE 'reload: (no change|[-+~][^ ]+( [-+~][^ ]+)*|.*running config kept)$' | tail -1 || true)
    [ -n "$line" ] && { echo "${line#*reload: }"; return 0; }
    sleep 0.1
  done
  fail "no 'reload:' summary in relay.log 10 s after SIGHUP"
}
# lab_config: the lab's standard relay.toml, reloaded
lab_config() {
  "$LAB_DIR/relay-config.sh" >/dev/null
  echo "  restored the lab config: $(reload_relay)" >&2
}
# edit_backends PY: rewrites relay.toml's [[backend]] blocks with python
# statements over `bs` (a list of dicts name -> block text; helpers drop(name),
# add(name, text), set(name, key, value)).
edit_backends() {
  python3 - "$RELAY_TOML" "$1" <<'PY'
import re, sys
path, prog = sys.argv[1], sys.argv[2]
text = open(path).read()
head, *blocks = text.split("\n[[backend]]\n")
bs = {re.search(r'^name = "([^"]+)"', b, re.M).group(1): b for b in blocks}
def drop(n): del bs[n]
def add(n, b): bs[n] = b
def set(n, k, v): bs[n] = re.sub(rf'^{k} = .*$', f'{k} = {v}', bs[n], flags=re.M)
exec(prog)
open(path, "w").write(head + "".join("\n[[backend]]\n" + b for b in bs.values()))
PY
}
# backend_field NAME FIELD: from /status
backend_field() {
  curl -sf --max-time 10 "$HTTP_URL/status" | python3 -c '
import json, sys
bs = {b["name"]: b for b in json.load(sys.stdin)["backends"]}
print(bs[sys.argv[1]][sys.argv[2]] if sys.argv[1] in bs else "absent")' "$1" "$2"
}
# built_on DRVNAME: the backends relay.log says built drv="DRVNAME" after byte $OFF
built_on() {
  tail -c +"$((OFF + 1))" "$STATE/relay.log" | grep -a "drv=\"$1\"" | grep -a ' build finished ' \
    | grep -o 'backend=h[0-9a-z]*' | sed 's/backend=//' | sort -u | tr '\n' ' '
}

sc_r_relay=1
sc_r_desc="a 4th backend on a closed port, tried first (speed 10): builds succeed on the others; status shows it down"
sc_r() {
  local s=$SEED-r out n h9
  http_up_or_skip
  trap lab_config EXIT
  # nothing listens on BASE_PORT+79 in this lab
  edit_backends "add('h9', bs['h1'].replace('h1', 'h9').replace(':$((BASE_PORT + 1))', ':$((BASE_PORT + 79))')); set('h9', 'speed_factor', '10.0')"
  [ "$(reload_relay)" = "+h9" ] || fail "reload did not add h9 alone"
  OFF=$(relay_log_size)
  out=$(build top "$s") || { tail -5 "$BLOG"; fail "nix-build -A top failed with h9 down"; }
  # shellcheck disable=SC2046 # a list of words (paths or pids), split on purpose
  client_valid "$out" $(client nix-store -q --references "$out")
  tail -c +"$((OFF + 1))" "$STATE/relay.log" | grep -a 'backend marked down' | grep -q 'backend="\?h9' \
    || fail "relay.log never marked h9 down"
  n=$(grep -c "retrying elsewhere" "$BLOG" || true)
  [ "$n" -ge 1 ] || fail "no build was retried after trying h9 (was it tried first?)"
  grep "nix-relay: building '" "$BLOG" | grep -q " on h9" || fail "h9 (fastest) was never tried"
  h9=$(backend_field h9 state)
  case $h9 in down|probing) ;; *) fail "/status shows h9 as '$h9', expected down or probing";; esac
  "$RELAY_BIN" status --url "$HTTP_URL" | grep -E '^h9 +(down|probing)' >&2 || fail "nix-relay status does not show h9 down"
  case " $(hosts_with "$out") " in *" h"[123]" "*) ;; *) fail "top is on no real backend";; esac
  echo "  11 builds ok; $n retried after h9 refused; h9 is $h9"
}

sc_s_relay=1
sc_s_desc="fairness: with one x86_64 slot, client lab2's single build is served before client lab's 12-build queue drains"
sc_s() {
  local s=$SEED-s a_bg b_log=$LOGS/s.b.nix.log w i pos order after
  http_up_or_skip
  trap lab_config EXIT
  edit_backends "drop('h2'); drop('h3'); set('h1', 'max_jobs', '1')"
  [ "$(reload_relay)" = "-h2 -h3 ~h1" ] || fail "reload did not leave h1 alone with one slot"
  OFF=$(relay_log_size)
  # client lab: 12 independent builds at once (its builders line allows 20)
  ( build_in client "$LOGS/s.a.nix.log" "$(awk '{ $4 = 20; print }' "$STATE/machines-relay")" wide "$s" >/dev/null ) &
  a_bg=$!
  for i in $(seq 1 300); do
    w=$(curl -sf --max-time 5 "$HTTP_URL/status" | python3 -c '
import json, sys
print(sum(len(q["waiting_seconds"]) for q in json.load(sys.stdin)["queues"]))' || echo 0)
    [ "$w" -ge 8 ] && break
    sleep 0.1
  done
  [ "$w" -ge 8 ] || { kill "$a_bg" 2>/dev/null; fail "client lab never had 8 builds waiting (had $w)"; }
  # client lab2 (trusted too: an untrusted client's jobs never share a queue with lab's): one build
  build_in client3 "$b_log" "$(cat "$STATE/machines-relay-lab2")" slow "$s" --arg sleepSecs 1 >/dev/null \
    || { kill "$a_bg" 2>/dev/null; tail -5 "$b_log"; fail "lab2's build failed"; }
  wait "$a_bg" || { tail -5 "$LOGS/s.a.nix.log"; fail "lab's wide build failed"; }
  pos=$(grep -o 'waiting: position [0-9]*' "$b_log" | grep -o '[0-9]*$' | head -1 || true)
  [ -n "$pos" ] || fail "lab2's build never waited (no 'waiting: position' line)"
  [ "$pos" -le 2 ] || fail "lab2's build was queued at position $pos behind $w of lab's"
  # the order the relay finished them in (one slot: the order it ran them)
  order=$(tail -c +"$((OFF + 1))" "$STATE/relay.log" | grep -a ' build finished ' \
    | grep -ao 'drv="lab-\(wide-[0-9]*\|slow-1s\)"' | sed 's/drv="lab-//; s/"//' | tr '\n' ' ')
  echo "  order: $order"
  [ "$(wc -w <<<"$order")" = 13 ] || fail "expected 13 finished builds, saw: $order"
  after=$(sed 's/.*slow-1s//' <<<"$order" | wc -w)
  # round-robin: of the w waiting when lab2 arrived, at most one more (plus
  # one that may have started meanwhile) runs before lab2's; first come,
  # first served would have run all of them first
  [ "$after" -ge $((w - 2)) ] || fail "only $after of lab's builds ran after lab2's (with $w waiting when it arrived)"
  echo "  lab2 queued at position $pos with $w of lab's waiting; $after of lab's ran after it"
}

sc_t_relay=1
sc_t_desc="drain h1 mid-build (nix-relay drain): the build finishes, new builds go elsewhere, a job only h1 serves waits; undrain: h1 again"
sc_t() {
  local s=$SEED-t bg host out f_bg f_log=$LOGS/t.f.nix.log i
  http_up_or_skip
  trap '"$RELAY_BIN" undrain h1 --url "$ADMIN_URL" >/dev/null 2>&1 || true' EXIT
  ( build slow "$s" --arg sleepSecs 6 >"$LOGS/t.out" ) 2>/dev/null &
  bg=$!
  host=$(wait_started "slow: 1/6") || { kill "$bg" 2>/dev/null; fail "the build never started"; }
  [ "$host" = h1 ] || { wait "$bg"; fail "the slow build went to $host, not the first idle backend h1"; }
  "$RELAY_BIN" drain h1 --config "$RELAY_TOML" >&2 || fail "nix-relay drain h1 failed"
  [ "$(backend_field h1 admin)" = draining ] || fail "/status does not show h1 draining"
  "$RELAY_BIN" status --url "$HTTP_URL" | grep -E '^h1 .*draining' >&2 || fail "nix-relay status does not show h1 draining"
  if "$RELAY_BIN" drain h7 --url "$ADMIN_URL" 2>"$LOGS/t.h7.err"; then fail "draining an unknown backend succeeded"; fi
  grep -q 'no backend named "h7"' "$LOGS/t.h7.err" || fail "unknown backend: unclear error: $(cat "$LOGS/t.h7.err")"
  # a job only h1 can serve (big-parallel) waits while h1 drains
  ( build_in client2 "$f_log" "$BUILDERS" feature "$s" >/dev/null ) &
  f_bg=$!
  BLOG=$LOGS/t.many.nix.log
  out=$(build many "$s") || fail "a build during the drain failed"
  case " $(hosts_with "$out") " in *" h1 "*) fail "a new build went to the draining h1";; esac
  wait "$bg" || fail "the running build on h1 did not survive the drain"
  [ "$(hosts_with "$(cat "$LOGS/t.out")")" = h1 ] || fail "the slow output is not on h1"
  for i in $(seq 1 100); do grep -q 'waiting: position' "$f_log" && break; sleep 0.1; done
  grep -q 'waiting: position' "$f_log" || fail "the big-parallel job did not wait for the drained h1"
  kill -0 "$f_bg" 2>/dev/null || fail "the big-parallel job ended while h1 was drained"
  "$RELAY_BIN" undrain h1 --url "$ADMIN_URL" >&2 || fail "nix-relay undrain h1 failed"
  [ "$(backend_field h1 admin)" = active ] || fail "/status does not show h1 active again"
  wait "$f_bg" || { tail -5 "$f_log"; fail "the big-parallel job failed after the undrain"; }
  BLOG=$LOGS/t.after.nix.log
  out=$(build many "$s-after") || fail "a build after the undrain failed"
  [ "$(hosts_with "$out")" = h1 ] || fail "after the undrain the next build went to $(hosts_with "$out"), not the idle h1"
  echo "  drained h1 with 1 running: it finished there; 'many' went to another backend; undrained: h1 again"
}

sc_u_relay=1
sc_u_desc="SIGHUP reload: remove h1 mid-build, add h3b, change h2: the build completes, new work lands on h3b, none on h1; a broken config changes nothing"
sc_u() {
  local s=$SEED-u bg host out off problems
  http_up_or_skip
  trap lab_config EXIT
  ( build slow "$s" --arg sleepSecs 6 >"$LOGS/u.out" ) 2>/dev/null &
  bg=$!
  host=$(wait_started "slow: 1/6") || { kill "$bg" 2>/dev/null; fail "the build never started"; }
  [ "$host" = h1 ] || { wait "$bg"; fail "the slow build went to $host, not h1"; }
  # h3b: h3 again under another name, the fastest
  edit_backends "drop('h1'); add('h3b', bs['h3'].replace('\"h3\"', '\"h3b\"')); set('h3b', 'speed_factor', '5.0'); set('h2', 'speed_factor', '0.5')"
  [ "$(reload_relay)" = "+h3b -h1 ~h2" ] || fail "unexpected reload summary"
  [ "$(backend_field h1 admin)" = removing ] || fail "/status does not show h1 removing while its build runs"
  OFF=$(relay_log_size)
  BLOG=$LOGS/u.many.nix.log
  out=$(build many "$s") || fail "a build after the reload failed"
  [ "$(built_on lab-many)" = "h3b " ] || fail "the new build did not land on the added h3b (on: $(built_on lab-many))"
  BLOG=$LOGS/u.top.nix.log
  out=$(build top "$s") || fail "a DAG after the reload failed"
  if grep "nix-relay: building '" "$BLOG" | grep -q ' on h1$'; then fail "the removed h1 got new work"; fi
  BLOG=$LOGS/u.nix.log
  wait "$bg" || { tail -5 "$BLOG"; fail "the build running on the removed h1 did not complete"; }
  [ "$(hosts_with "$(cat "$LOGS/u.out")")" = h1 ] || fail "the slow output is not on h1"
  [ "$(backend_field h1 admin)" = absent ] || fail "h1 is still listed after its last build"
  # a broken config: nothing changes, every problem is logged
  cp "$RELAY_TOML" "$LOGS/u.good.toml"
  edit_backends "set('h2', 'systems', '[]'); set('h3', 'max_jobs', '0')"
  off=$(relay_log_size)
  problems=$(reload_relay)
  grep -q 'running config kept' <<<"$problems" || fail "the broken config was not refused: $problems"
  tail -c +"$((off + 1))" "$STATE/relay.log" | grep -a 'reload: ' | grep -q 'systems is empty' || fail "the empty systems problem was not logged"
  tail -c +"$((off + 1))" "$STATE/relay.log" | grep -a 'reload: ' | grep -q 'max_jobs must be at least 1' || fail "the max_jobs problem was not logged"
  [ "$(backend_field h3b admin)" = active ] && [ "$(backend_field h2 speed_factor)" = 0.5 ] || fail "the broken config changed the backends"
  echo "  reload +h3b -h1 ~h2: h1's build completed, 'many' on h3b, no new work on h1; broken config: $problems"
}
