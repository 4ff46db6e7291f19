# Fault scenarios: clients that never finish a handshake, the relay's state
# dir filling up, and the relay killed -9 under several builds. (A backend
# killed mid-upload or mid-download and garbage after a handshake are
# in-process tests now: tests/engine_faults.rs.)
# Sourced by e2e.sh; helpers in lib.sh.

tmp_files() { find "$1/tmp" -mindepth 1 2>/dev/null | wc -l; }
# wait_tmp_empty DIR: the store's tmp/ empties within 10 s (an abandoned write is removed)
wait_tmp_empty() {
  local i
  for i in $(seq 1 100); do [ "$(tmp_files "$1")" = 0 ] && return 0; sleep 0.1; done
  fail "$1/tmp still holds $(ls -A "$1/tmp" | head -3 | tr '\n' ' ')"
}

# ---- a second relay instance (own port, state dir, limits; same keys/backends) ----
# relay2_start PORT TMPFS_MIB EXTRA_TOML: starts it in a mount namespace of its
# own (state dir on a TMPFS_MIB tmpfs there unless 0); sets R2_PID, R2_DIR,
# R2_STORE (its state dir as seen from here), R2_BUILDERS, R2_SSH (NIX_SSHOPTS)
relay2_start() {
  local port=$1 mib=$2 extra=$3 i b64
  R2_DIR=$STATE/relay2-$port
  rm -rf "$R2_DIR"; mkdir -p "$R2_DIR/state"
  # no [http] or [admin]: their ports belong to the lab's relay
  awk '/^\[(http|admin)\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip' "$STATE/relay.toml" |
    sed -e "s|^listen = \"127.0.0.1:$BASE_PORT\"|listen = \"127.0.0.1:$port\"|" \
        -e "s|^state_dir = .*|state_dir = \"$R2_DIR/state\"|" >"$R2_DIR/relay.toml"
  printf '\n%s\n' "$extra" >>"$R2_DIR/relay.toml"
  setsid unshare --mount --propagation private -- sh -c '
      if [ "$1" != 0 ]; then mount -t tmpfs -o size="$1"m nix-relay-lab-r2 "$2" || exit 1; fi
      shift 2; exec "$@"' sh "$mib" "$R2_DIR/state" "$RELAY_BIN" serve --config "$R2_DIR/relay.toml" \
    </dev/null >"$R2_DIR/relay.log" 2>&1 &
  R2_PID=$!
  for i in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$R2_PID" 2>/dev/null || { cat "$R2_DIR/relay.log" >&2; fail "relay2 did not start"; }
    sleep 0.05
  done
  R2_STORE=/proc/$R2_PID/root$R2_DIR/state
  echo "relay2 $(cut -d' ' -f1,2 "$STATE/keys/relay_host_ed25519.pub")" >"$R2_DIR/known_hosts"
  printf 'Host relay2\n  HostName 127.0.0.1\n  Port %s\n  User nix\n  HostKeyAlias relay2\n  UserKnownHostsFile %s\nInclude %s\n' \
    "$port" "$R2_DIR/known_hosts" "$STATE/ssh_config" >"$R2_DIR/ssh_config"
  R2_SSH="-F $R2_DIR/ssh_config"
  b64=$(cut -d' ' -f1,2 "$STATE/keys/relay_host_ed25519.pub" | tr -d '\n' | base64 -w0)
  R2_BUILDERS="ssh://relay2 x86_64-linux,aarch64-linux - 4 1 benchmark,big-parallel - $b64"
  echo "  relay2: pid $R2_PID on 127.0.0.1:$port, state $R2_DIR/state$([ "$mib" = 0 ] || echo " on a $mib MiB tmpfs")"
}
relay2_stop() {
  [ -n "${R2_PID:-}" ] || return 0
  kill "$R2_PID" 2>/dev/null || true
  wait "$R2_PID" 2>/dev/null || true
  R2_PID=
}
# build2 NS LOG FILE ATTR SEED [args]: nix-build FILE -A ATTR in NS via relay2
build2() {
  local ns=$1 lg=$2 f=$3 a=$4 s=$5; shift 5
  echo "+ [$ns] via relay2: nix-build ${f#"$DRV"/} -A $a --argstr seed $s $* (log: $lg)" >&2
  in_ns "$ns" env NIX_SSHOPTS="$R2_SSH" nix-build "$f" -A "$a" --argstr seed "$s" --no-out-link \
    --max-jobs 0 --builders "$R2_BUILDERS" "$@" 2>"$lg"
}

sc_fault_handshake_desc="clients that never finish the SSH or protocol handshake are dropped after handshake_timeout (5 s here); a concurrent build succeeds"
sc_fault_handshake() {
  local s=$SEED-fh port=$((BASE_PORT + 90)) bg pids="" k rc out
  trap relay2_stop EXIT
  relay2_start "$port" 0 $'[limits]\nhandshake_timeout = "5s"'
  ( build2 client3 "$LOGS/fh.build.log" "$DRV/default.nix" slow "$s" --arg sleepSecs 8 >"$LOGS/fh.out" ) &
  bg=$!
  # 1. TCP only; 2. the SSH version line and nothing else; 3./4. logged in,
  # exec accepted, no serve / worker hello (stdin open and silent for 30 s,
  # so only the relay's handshake_timeout can end these sessions with that message)
  ( rc=0; timeout 120 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port; cat <&3 >/dev/null" || rc=$?; echo "$rc" >"$LOGS/fh.tcp.rc" ) &
  pids="$pids $!"
  ( rc=0; timeout 120 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port; printf 'SSH-2.0-OpenSSH_9.2\r\n' >&3; cat <&3 >/dev/null" || rc=$?; echo "$rc" >"$LOGS/fh.banner.rc" ) &
  pids="$pids $!"
  ( rc=0; timeout 120 "$HS" exec client ssh $R2_SSH relay2 'nix-store --serve --write' < <(exec sleep 30) >/dev/null 2>"$LOGS/fh.serve.err" || rc=$?; echo "$rc" >"$LOGS/fh.serve.rc" ) &
  pids="$pids $!"
  ( rc=0; timeout 120 "$HS" exec client2 ssh $R2_SSH relay2 'nix-daemon --stdio' < <(exec sleep 30) >/dev/null 2>"$LOGS/fh.worker.err" || rc=$?; echo "$rc" >"$LOGS/fh.worker.rc" ) &
  pids="$pids $!"
  # shellcheck disable=SC2086
  wait $pids || true
  for k in tcp banner serve worker; do
    rc=$(cat "$LOGS/fh.$k.rc")
    echo "  $k: ended with exit $rc"
    [ "$rc" != 124 ] || fail "$k: the connection was still open after 120 s (handshake_timeout is 5 s)"
  done
  [ "$(grep -ac 'dropped: no session started within handshake_timeout' "$R2_DIR/relay.log")" -ge 2 ] \
    || fail "relay2 did not log two 'dropped: no session started within handshake_timeout'"
  grep -q "no serve handshake within 5s" "$LOGS/fh.serve.err" || fail "serve: stderr does not say 'no serve handshake within 5s': $(cat "$LOGS/fh.serve.err")"
  grep -q "no worker handshake within 5s" "$LOGS/fh.worker.err" || fail "worker: stderr does not say 'no worker handshake within 5s': $(cat "$LOGS/fh.worker.err")"
  echo "  serve client told: $(grep -m1 handshake "$LOGS/fh.serve.err")"
  wait "$bg" || { tail -5 "$LOGS/fh.build.log"; fail "the concurrent build via relay2 failed"; }
  out=$(cat "$LOGS/fh.out")
  in_ns client3 nix-store --verify-path "$out" >&2 || fail "client3: verify-path $out failed"
  kill -0 "$R2_PID" || fail "relay2 died"
}

sc_fault_disk_desc="state dir on a 30 MiB tmpfs: a 60 MiB upload and a 100 MiB output fail with ENOSPC named, no partial entry, tmp/ emptied; after growing the tmpfs both succeed"
sc_fault_disk() {
  local s=$SEED-fdisk port=$((BASE_PORT + 92)) rc out ni f=$LOGS/fdisk.input p lg
  trap relay2_stop EXIT
  relay2_start "$port" 30 ""
  head -c $((60 << 20)) /dev/urandom >"$f"
  p=$(in_ns client3 nix-store --add "$f") || fail "nix-store --add of the input failed"
  # 1. the client uploads 60 MiB; 2. the relay tees a 100 MiB output
  for step in upload:consume tee:noise; do
    lg=$LOGS/fdisk.${step%%:*}.log; rc=0
    out=$(build2 client3 "$lg" "$DRV/faults.nix" "${step#*:}" "$s" --argstr input "$p" --arg mib 100) || rc=$?
    echo "  ${step%%:*} on a full state dir: exit $rc; client saw: $(grep -m1 -i 'no space' "$lg" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-220)"
    [ "$rc" != 0 ] || fail "${step%%:*}: the build succeeded on a full state dir?!"
    grep -qi "No space left on device" "$lg" || fail "${step%%:*}: the client's error does not name ENOSPC: $(tail -3 "$lg")"
    kill -0 "$R2_PID" || fail "relay2 died on a full disk"
    CACHE=$R2_STORE/cache wait_tmp_empty "$R2_STORE/cache"
    CACHE=$R2_STORE/cache store_consistent "${step%%:*} on a full disk"
  done
  for ni in "$R2_STORE"/cache/*.narinfo; do
    [ -e "$ni" ] || continue
    if grep -q -- '-lab-noise-100m$\|-fdisk.input$' "$ni"; then fail "a narinfo for the big path exists: $ni"; fi
  done
  grep -aqi "No space left on device" "$R2_DIR/relay.log" || fail "relay2's log does not name ENOSPC"
  echo "  df: $(nsenter -t "$R2_PID" -m -- df -h "$R2_DIR/state" | tail -1 | awk '{ print $3 " used of " $2 }')"
  nsenter -t "$R2_PID" -m -- mount -o remount,size=400m "$R2_DIR/state" || fail "could not grow the tmpfs"
  for step in upload:consume tee:noise; do
    lg=$LOGS/fdisk.${step%%:*}.again.log
    out=$(build2 client3 "$lg" "$DRV/faults.nix" "${step#*:}" "$s" --argstr input "$p" --arg mib 100) || { tail -5 "$lg"; fail "${step%%:*}: the build after growing the tmpfs failed"; }
    in_ns client3 nix-store --verify-path "$out" >&2 || fail "client3: verify-path $out failed"
  done
  [ -f "$R2_STORE/cache/$(hash_part "$out").narinfo" ] || fail "the 100 MiB output is not in relay2's store after the retry"
  [ -f "$R2_STORE/cache/$(hash_part "$p").narinfo" ] || fail "the 60 MiB upload is not in relay2's store after the retry"
  CACHE=$R2_STORE/cache store_consistent "after space returned"
}

sc_fault_restart_desc="relay killed -9 under 3 running builds (ssh and ssh-ng): clients fail clearly, store consistent after restart, the builds then succeed"
sc_fault_restart() {
  local s=$SEED-fr ng pid i ns rc bad=0 out started b p pids=""
  ng=$(sed 's|^ssh://|ssh-ng://|' "$STATE/machines-relay")
  i=0
  for ns in client client2 client3; do
    i=$((i + 1))
    b=$BUILDERS; [ "$i" = 2 ] && b=$ng
    ( rc=0; build_in "$ns" "$LOGS/fr.$i.log" "$b" slow "$s-$i" --arg sleepSecs 20 >/dev/null || rc=$?; echo "$rc" >"$LOGS/fr.$i.rc" ) &
  done
  for i in $(seq 1 1200); do   # up to 2 min until all three run on backends
    started=$(cat "$LOGS"/fr.[123].log 2>/dev/null | grep -c "slow: 1/20" || true)
    [ "$started" -ge 3 ] && break
    sleep 0.1
  done
  [ "$started" -ge 3 ] || fail "only $started of 3 builds started"
  pid=$(cat "$STATE/run/relay.pid")
  kill -9 "$pid"
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  echo "  killed the relay (pid $pid) with 3 builds running"
  wait
  for i in 1 2 3; do
    rc=$(cat "$LOGS/fr.$i.rc")
    echo "  client $i: exit $rc: $(grep -i -m1 'error\|failed' "$LOGS/fr.$i.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-160)"
    [ "$rc" != 124 ] || fail "client $i hung after the relay died"
    [ "$rc" = 0 ] || grep -qi "error\|failed" "$LOGS/fr.$i.log" || bad=1
  done
  [ "$bad" = 0 ] || fail "a client failed without an error message"
  store_consistent "after kill -9"
  "$HS" relay start >"$LOGS/fr.restart.log" 2>&1 || { cat "$LOGS/fr.restart.log" >&2; fail "the relay did not restart"; }
  [ "$(tmp_files "$CACHE")" = 0 ] || fail "cache/tmp not empty after the restart"
  store_consistent "after restart"
  i=0
  for ns in client client2 client3; do
    i=$((i + 1))
    b=$BUILDERS; [ "$i" = 2 ] && b=$ng
    ( build_in "$ns" "$LOGS/fr.again.$i.log" "$b" slow "$s-$i" --arg sleepSecs 20 >"$LOGS/fr.again.$i.out" ) &
    pids="$pids $!"
  done
  for p in $pids; do wait "$p" || fail "a build after the restart failed (logs $LOGS/fr.again.*.log)"; done
  for i in 1 2 3; do
    out=$(cat "$LOGS/fr.again.$i.out")
    [ -n "$out" ] || fail "build $i after the restart printed no output path"
  done
  store_consistent "after the rebuilds"
}
