# Build scenarios a–g: routing, features, failures, big NARs, refusals, odd outputs.
# Sourced by e2e.sh; helpers in lib.sh.

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
