# Operations scenarios: ssh-ng clients (n); the helpers wait_started and
# descendants, which other scenarios use too. Metrics and /status (m), a
# backend killed or wedged mid-build (o, p) and a client killed mid-build (q)
# are in-process tests now: tests/engine_metrics.rs, tests/engine_faults.rs,
# tests/engine_timeouts.rs.
# Sourced by e2e.sh; helpers in lib.sh.

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
