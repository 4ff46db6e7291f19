# Cache scenarios j–l: HTTP substitution, untrusted isolation, crash during
# the tee (dedup and cache hits, h and i, are tests/engine_build.rs and
# tests/engine_cache.rs). Sourced by e2e.sh; helpers in lib.sh.

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

sc_k_desc="untrusted client eve: refused at once without an untrusted backend; on h3u its upload and output stay private (not public, not HTTP, not for lab)"
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
  # the lab config has no backend for untrusted clients: refused at once, not queued
  if eve_build "$f" "$LOGS/k.refused.nix.log" >/dev/null; then fail "eve's build succeeded with no untrusted_clients backend"; fi
  grep -q "untrusted clients build only on backends marked \`untrusted_clients = true\`" "$LOGS/k.refused.nix.log" \
    || { tail -5 "$LOGS/k.refused.nix.log" >&2; fail "eve's refusal does not say why (log $LOGS/k.refused.nix.log)"; }
  if grep -q "nix-relay: waiting: position" "$LOGS/k.refused.nix.log"; then fail "eve's build was queued before it failed"; fi
  echo "  no untrusted backend: $(grep -m1 -o 'no backend takes[^;]*' "$LOGS/k.refused.nix.log")"
  trap lab_config EXIT
  u=$(untrusted_config) || fail "could not reload the relay with the untrusted backend h3u"
  echo "  config: $u"
  OFF=$(relay_log_size)
  out=$(eve_build "$f" "$BLOG") || { tail -5 "$BLOG"; fail "eve's build failed"; }
  [ "$(built_on lab-eve-private)" = "h3u " ] || fail "eve's build ran on '$(built_on lab-eve-private)', expected h3u only"
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
    skip_part "the HTTP 404 checks: GET $HTTP_URL/nix-cache-info got no answer"
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

sc_l_desc="relay killed -9 while teeing -A big (a partial NAR growing in tmp/, no narinfo): store consistent, tmp/ emptied on restart, rebuild works"
# tee_growing PREV CUR: "PATH OLD NEW" of a .nar in cache/tmp that grew between two
# samples ("PATH SIZE" lines), or nothing
tee_growing() {
  awk 'NR == FNR { s[$1] = $2; next } ($1 in s) && $2 > s[$1] { print $1, s[$1], $2; exit }' <(echo "$1") <(echo "$2")
}
sc_l() {
  local s=$SEED-l drv name out ni off bg pid i tmpn size prev="" cur grew="" nar old new
  drv=$(drv_of client big "$s") || fail "nix-instantiate -A big failed"
  name=$(drv_name "$drv")
  out=$(in_ns client nix-store -q --outputs "$drv") || fail "nix-store -q --outputs $drv failed"
  ni=$CACHE/$(hash_part "$out").narinfo
  off=$(relay_log_size)
  ( rc=0; build_in client "$LOGS/l.1.nix.log" "$BUILDERS" big "$s" >/dev/null || rc=$?; echo "$rc" >"$LOGS/l.1.rc" ) &
  bg=$!
  for i in $(seq 1 9000); do   # up to ~3 min for the backend build
    [ "$(finished_since "$off" "$name")" -ge 1 ] && break
    kill -0 "$bg" 2>/dev/null || { wait "$bg" || true; tail -5 "$LOGS/l.1.nix.log"; fail "nix-build -A big ended before the relay logged 'build finished' (exit $(cat "$LOGS/l.1.rc"))"; }
    sleep 0.02
  done
  [ "$(finished_since "$off" "$name")" -ge 1 ] || { kill "$bg" 2>/dev/null || true; wait "$bg" || true; fail "no 'build finished' for $name within 3 min"; }
  # the tee in progress: a .nar in cache/tmp growing between two samples, no narinfo yet
  for i in $(seq 1 3000); do   # up to ~1 min
    cur=$(find "$CACHE/tmp" -maxdepth 1 -name '*.nar' -printf '%p %s\n' 2>/dev/null | sort)
    grew=$(tee_growing "$prev" "$cur")
    [ -z "$grew" ] && [ ! -e "$ni" ] || break
    prev=$cur
    sleep 0.02
  done
  [ -n "$grew" ] || { kill "$bg" 2>/dev/null || true; fail "never saw the tee of $out in progress (no growing .nar in $CACHE/tmp; narinfo $([ -e "$ni" ] && echo present || echo absent))"; }
  "$HS" relay status >/dev/null || fail "relay not running before the kill"
  pid=$(cat "$STATE/run/relay.pid")
  kill -9 "$pid"
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$pid" 2>/dev/null; then fail "relay pid $pid survived kill -9"; fi
  # proof that the kill landed mid-tee: the NAR is still a partial temp file, no narinfo
  read -r nar old new <<<"$grew"
  [ ! -e "$ni" ] || fail "the narinfo of $out exists after the kill: the tee had completed, the kill was not mid-tee"
  [ -f "$nar" ] || fail "$nar (growing just before the kill) is gone: the tee had finished its NAR, the kill was not mid-tee"
  size=$(stat -c %s "$nar"); tmpn=$(find "$CACHE/tmp" -mindepth 1 | wc -l)
  echo "  killed the relay (pid $pid) mid-tee: $nar grew from $old to $new bytes just before, $size bytes at the kill; no narinfo for $out; cache/tmp held $tmpn file(s)"
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
  # the killed tee left nothing behind: a cache hit would be an entry it never completed
  if grep -q "nix-relay: cache hit" "$LOGS/l.2.nix.log"; then fail "after the restart: a cache hit for $out, whose tee was killed"; fi
  echo "  after restart: built again ($(finished_since 0 "$name") 'build finished' line(s) since the restart)"
  store_consistent "after the rebuild"
}
