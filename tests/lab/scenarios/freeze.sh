# Freeze scenario: every process of one backend stopped mid-build (SIGSTOP:
# a locked-up board, the most common board failure) under a client that sent
# no limits (no --timeout, no --max-silent-time). Runs a second relay
# (relay2_start, faults.sh) with a short backend_stall_timeout and its own
# HTTP port for /status and /metrics. Sourced by e2e.sh; helpers in lib.sh,
# descendants/wait_started from ops.sh.

FREEZE_PORT=$((BASE_PORT + 95))
FREEZE_HTTP_PORT=$((BASE_PORT + 96))
FREEZE_STALL=10   # backend_stall_timeout of relay2, in seconds
FREEZE_SECS=30    # duration of the build
FROZEN=""

# host_pids HOST: every process of HOST: those in its mount namespace, its
# sshd and everything below it (a sandboxed builder has a namespace of its own)
host_pids() {
  local ns pid p
  ns=$(cat "$STATE/run/$1.ns"); pid=$(cat "$STATE/run/$1.pid")
  {
    for p in /proc/[0-9]*; do
      [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$ns" ] && echo "${p#/proc/}"
    done
    echo "$pid"; descendants "$pid"
  } | sort -un
}
thaw() {
  # shellcheck disable=SC2086
  [ -z "$FROZEN" ] || kill -CONT $FROZEN 2>/dev/null || true
  FROZEN=""
}
freeze_cleanup() { thaw; relay2_stop; }

sc_freeze_desc="every process of a backend stopped mid-build, client sent no limits: the relay gives the backend up after backend_stall_timeout (${FREEZE_STALL} s here), the build succeeds elsewhere, status and metrics show it down"
sc_freeze() {
  local s=$SEED-freeze bg host t0 took limit i last st
  local url=http://127.0.0.1:$FREEZE_HTTP_PORT
  trap freeze_cleanup EXIT
  relay2_start "$FREEZE_PORT" 0 "$(printf '[limits]\nbackend_stall_timeout = "%ss"\n\n[http]\nlisten = "127.0.0.1:%s"' \
    "$FREEZE_STALL" "$FREEZE_HTTP_PORT")"
  ( build2 client3 "$BLOG" "$DRV/default.nix" slow "$s" --arg sleepSecs "$FREEZE_SECS" >"$LOGS/freeze.out" ) &
  bg=$!
  host=$(wait_started "slow: 2/$FREEZE_SECS") || { kill "$bg" 2>/dev/null || true; fail "the build never started on a backend"; }
  FROZEN=$(host_pids "$host" | tr '\n' ' ')
  t0=$(date +%s)
  # shellcheck disable=SC2086
  kill -STOP $FROZEN || fail "could not stop $host's processes"
  echo "  froze $host mid-build: $(wc -w <<<"$FROZEN") processes stopped (sshd, its sessions, nix, the builder)"
  # given up after the stall timeout, then the whole build elsewhere, plus slack
  limit=$((FREEZE_STALL + FREEZE_SECS + 60))
  for i in $(seq 1 $((limit * 10))); do kill -0 "$bg" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$bg" 2>/dev/null; then
    # shellcheck disable=SC2046
    kill $(descendants "$bg") "$bg" 2>/dev/null || true
    fail "the client still waited $limit s after $host froze (backend_stall_timeout is $FREEZE_STALL s): the build hangs on the frozen backend"
  fi
  wait "$bg" || { tail -5 "$BLOG"; fail "the client's build failed after $host froze"; }
  took=$(( $(date +%s) - t0 ))
  echo "  the client's build succeeded $took s after the freeze"
  in_ns client3 nix-store --verify-path "$(cat "$LOGS/freeze.out")" >&2 || fail "client3: verify-path failed"
  grep "retrying elsewhere" "$BLOG" | grep -q "stalled" || fail "the client's log has no retry after a stall: $(grep -m1 'retrying' "$BLOG")"
  echo "  client: $(grep -m1 'retrying elsewhere' "$BLOG" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-240)"
  last=$(grep -o "nix-relay: building '[^']*' on h[0-9]" "$BLOG" | tail -1 | grep -o 'h[0-9]$')
  [ "$last" != "$host" ] || fail "the retry went to the frozen $host again"
  grep -a "backend stalled" "$R2_DIR/relay.log" | grep -q "$host" || fail "relay2's log has no 'backend stalled' line for $host"
  st=$(curl -sf --max-time 10 "$url/status" | python3 -c '
import json, sys
bs = {b["name"]: b for b in json.load(sys.stdin)["backends"]}
print(bs[sys.argv[1]]["state"])' "$host") || fail "GET /status failed"
  case $st in down|probing) ;; *) fail "/status shows $host as '$st', expected down or probing";; esac
  curl -sf --max-time 10 "$url/metrics" | grep -Eq "^nix_relay_backend_up\\{([^}]*,)?backend=\"$host\"[^}]*\\} 0$" \
    || fail "/metrics does not show nix_relay_backend_up{backend=\"$host\"} 0"
  echo "  retried on $last; /status shows $host $st, /metrics nix_relay_backend_up 0"
  thaw
}
