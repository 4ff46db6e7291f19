# Pool scenario v: warm backend sessions are reused across builds.
# Sourced by e2e.sh; helpers in lib.sh.

# connections_total: SSH commands the backends ran so far (one per session)
connections_total() {
  cat "$STATE"/hosts/h*/log/commands.log 2>/dev/null | wc -l
}

# reused_total: nix_relay_backend_sessions_total{kind="reused"}, all backends
reused_total() {
  curl -s --max-time 10 "$HTTP_URL/metrics" \
    | awk '/^nix_relay_backend_sessions_total\{/ && /kind="reused"/ { n += $NF } END { print n + 0 }'
}

# idle_on HOST: nix_relay_backend_sessions_idle of backend HOST
idle_on() {
  curl -s --max-time 10 "$HTTP_URL/metrics" \
    | awk -v b="backend=\"$1\"" '/^nix_relay_backend_sessions_idle\{/ && index($0, b) { n += $NF } END { print n + 0 }'
}

sc_v_relay=1
sc_v_desc="two small builds in a row: the second reuses a warm backend session (no new SSH connection; metrics count a reuse)"
sc_v() {
  local c0 c1 r0 r1 out i host
  http_up_or_skip
  out=$(build leaves "$SEED-v1" --arg nLeaves 1) || { tail -5 "$BLOG"; fail "the first build failed"; }
  client_valid "$out"
  host=$(hosts_with "$out")
  # The first build's session goes back to the pool once its client is gone.
  for i in $(seq 1 100); do [ "$(idle_on "$host")" -ge 1 ] && break; sleep 0.1; done
  [ "$(idle_on "$host")" -ge 1 ] || fail "no idle session for $host in the pool 10 s after the first build"
  c0=$(connections_total); r0=$(reused_total)
  out=$(build leaves "$SEED-v2" --arg nLeaves 1) || { tail -5 "$BLOG"; fail "the second build failed"; }
  client_valid "$out"
  [ "$(remote_builds)" = 1 ] || fail "expected 1 remote build, saw $(remote_builds)"
  c1=$(connections_total); r1=$(reused_total)
  echo "  backend connections: $c0 -> $c1; reused sessions (metric): $r0 -> $r1"
  [ "$c1" = "$c0" ] || fail "the second build opened a new backend connection ($c0 -> $c1)"
  [ "$r1" -gt "$r0" ] || fail "nix_relay_backend_sessions_total{kind=\"reused\"} did not grow ($r0 -> $r1)"
  grep -q 'session="reused"' <(tail -c 20000 "$STATE/relay.log") || fail "relay.log has no 'session=\"reused\"' build line"
}
