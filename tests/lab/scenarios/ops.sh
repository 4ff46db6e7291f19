# Operations scenarios: metrics/status (m), ssh-ng clients (n); the helpers
# wait_started and descendants, which other scenarios use too. (A backend
# killed or wedged mid-build and a client killed mid-build are in-process
# tests now: tests/engine_faults.rs, tests/engine_timeouts.rs.)
# Sourced by e2e.sh; helpers in lib.sh.

metric() {  # metric FILE 'name{labels}' -> value (0 if absent)
  awk -v k="$2" '$1 == k { print $2; found=1 } END { if (!found) print 0 }' "$1"
}

sc_m_relay=1
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
