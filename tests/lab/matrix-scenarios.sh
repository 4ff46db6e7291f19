# The version matrix's scenarios (sourced by matrix.sh after lib.sh). Each runs
# in a subshell with set -euo pipefail; it ends with `fail REASON` or returns 0.
# Globals from matrix.sh: NS (client namespace), CPROTO (ssh|ssh-ng, client ->
# relay), BUILDERS (that protocol's builder line for the relay), SEED (this
# cell's seed), BLOG (the client's log), STATE, HS, DRV, TMO.

# m_build ATTR SEED [args...]: build in $NS through the relay; prints the outputs
m_build() { local a=$1 s=$2; shift 2; build_in "$NS" "$BLOG" "$BUILDERS" "$a" "$s" "$@"; }
# m_valid PATH...: valid in $NS and its NAR hash verifies
m_valid() {
  local p
  for p in "$@"; do in_ns "$NS" nix-store --verify-path "$p" >&2 || fail "$NS: nix-store --verify-path $p failed"; done
}
# m_finished NAME: 'build finished' lines of drv="NAME" in relay.log since $OFF
m_finished() { finished_since "$OFF" "$1"; }

# dag: top with 3 leaves; every output verifies on the client; the relay built 4
m_dag() {
  local outs clos n=0 i
  OFF=$(relay_log_size)
  outs=$(m_build top "$SEED" --arg nLeaves 3) || fail "nix-build -A top failed: $(tail -3 "$BLOG")"
  # top's output references its leaves: its closure is the 4 outputs
  clos=$(in_ns "$NS" nix-store -qR "$outs") || fail "nix-store -qR $outs failed"
  [ "$(echo "$clos" | wc -l)" = 4 ] || fail "top's closure has $(echo "$clos" | wc -l) paths, expected 4"
  # shellcheck disable=SC2086
  m_valid $clos
  for i in 0 1 2; do n=$((n + $(m_finished "lab-leaf-$i"))); done
  n=$((n + $(m_finished lab-top)))
  [ "$n" = 4 ] || fail "relay.log has $n 'build finished' lines for top and its 3 leaves, expected 4"
  # shellcheck disable=SC2086
  on_backends $clos
}

# on_backends PATH...: each is valid on some backend, and none on the relay's machine
on_backends() {
  local p
  for p in "$@"; do [ -n "$(hosts_with "$p")" ] || fail "$p is in no backend's store"; done
  not_on_relay_machine "$@"
}

# feature: a big-parallel derivation is built on h1 (the only host with it)
m_feature() {
  local out on
  OFF=$(relay_log_size)
  out=$(m_build feature "$SEED") || fail "nix-build -A feature failed: $(tail -3 "$BLOG")"
  m_valid "$out"
  on=$(built_on lab-feature)
  [ "$on" = "h1 " ] || fail "lab-feature built on '${on}', expected h1 only"
}

# multi: 4 outputs of 4 MiB: every one valid and verified on the client
m_multi() {
  local outs n out
  outs=$(m_build multi4.all "$SEED") || fail "nix-build -A multi4.all failed: $(grep -a error "$BLOG" | tail -2)"
  n=$(echo "$outs" | wc -l)
  [ "$n" = 4 ] || fail "nix-build printed $n outputs, expected 4"
  # shellcheck disable=SC2086
  m_valid $outs
  # every NAR feature: odd names, a symlink, the executable bit, an empty file
  out=$(m_build many "$SEED") || fail "nix-build -A many failed: $(tail -3 "$BLOG")"
  m_valid "$out"
  in_ns "$NS" sh -c "test -f '$out/name with spaces & ünïcode' && test -L $out/link && test -x $out/bin/run \
    && test -f $out/empty-file && test ! -s $out/empty-file && [ \$(ls $out/a | wc -l) = 301 ]" \
    || fail "many: a file, link, mode or entry count differs"
  on_backends "$out"
}

# fail: the build fails and the client sees the failing builder's last line
m_fail() {
  if m_build fail "$SEED" >/dev/null; then fail "nix-build -A fail succeeded"; fi
  grep -q 'lab-fail: about to fail on purpose' "$BLOG" || fail "the client log lacks the builder's line: $(tail -2 "$BLOG")"
  grep -qi 'error' "$BLOG" || fail "the client log has no error"
  relay_alive
}

# big: 64 MiB, verified, exactly 64 MiB
m_big() {
  local out size ch h
  out=$(m_build big "$SEED" --arg bigMiB 64) || fail "nix-build -A big failed: $(tail -3 "$BLOG")"
  m_valid "$out"
  size=$(in_ns "$NS" stat -c %s "$out")
  [ "$size" = $((64 * 1048576)) ] || fail "big is $size bytes, expected 64 MiB"
  # the client's narHash is the backend's, and the backend's copy verifies
  ch=$(in_ns "$NS" nix-store -q --hash "$out")
  for h in $(hosts_with "$out"); do
    [ "$(in_ns "$h" nix-store -q --hash "$out")" = "$ch" ] || fail "narHash differs between $NS and $h"
    in_ns "$h" nix-store --verify-path "$out" || fail "$h: verify-path $out failed"
  done
  on_backends "$out"
}

# cachehit SEED2: the DAG another client kind built (seed SEED2) comes from the
# relay's store: it verifies, and no backend built anything for it
m_cachehit() {
  local outs n=0 i
  OFF=$(relay_log_size)
  outs=$(m_build top "$1" --arg nLeaves 3) || fail "nix-build -A top (seed $1) failed: $(tail -3 "$BLOG")"
  m_valid "$outs"
  for i in 0 1 2; do n=$((n + $(m_finished "lab-leaf-$i"))); done
  n=$((n + $(m_finished lab-top)))
  [ "$n" = 0 ] || fail "relay.log has $n 'build finished' lines for a DAG already built by another client"
}

# ---- once per backend kind ------------------------------------------------------
# marker_pid SEED: the pid of the running `marked` builder of SEED (empty if none)
marker_pid() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q "lab-marked seed=$1\$" && { echo "${p#/proc/}"; return 0; }
  done
  return 0
}
wait_marker() {  # wait_marker SEED SECS: the builder's pid once it runs
  local i p
  for i in $(seq 1 $(($2 * 5))); do p=$(marker_pid "$1"); [ -z "$p" ] || { echo "$p"; return 0; }; sleep 0.2; done
  fail "no builder process of 'marked' seed $1 after $2 s"
}
# tree_pids PID: PID and all its descendants
tree_pids() {
  local kids c
  echo "$1"
  kids=$(grep -l "^PPid:[[:space:]]*$1\$" /proc/[0-9]*/status 2>/dev/null | cut -d/ -f3 || true)
  for c in $kids; do tree_pids "$c"; done
}
# bg_build NS LOG ATTR SEED [args]: nix-build in the background; sets BGPID (nix-build itself)
bg_build() {
  local ns=$1 lg=$2 a=$3 s=$4; shift 4
  "$HS" exec "$ns" nix-build "$DRV" -A "$a" --argstr seed "$s" --no-out-link \
    --max-jobs 0 --builders "$BUILDERS" "$@" </dev/null >"$lg.out" 2>"$lg" &
  BGPID=$!
}

# cancel NS: the client dies mid-build: the backend's build process goes away
m_cancel() {
  local bp i
  bg_build "$1" "$BLOG" marked "$SEED" --arg sleepSecs 120
  bp=$(wait_marker "$SEED" 30)
  # shellcheck disable=SC2046
  kill -9 $(tree_pids "$BGPID") 2>/dev/null || true
  wait "$BGPID" 2>/dev/null || true
  for i in $(seq 1 100); do [ -d "/proc/$bp" ] || return 0; sleep 0.2; done
  fail "the backend's builder (pid $bp) still runs 20 s after the client died"
}

ns_pids() {  # ns_pids NSLINK: the processes in that mount namespace
  local p
  for p in /proc/[0-9]*; do [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$1" ] && echo "${p#/proc/}"; done
  return 0
}
# host_of PID: the backend hN whose mount namespace PID or an ancestor is in
host_of() {
  local p=$1 ns h
  while [ -n "$p" ] && [ "$p" != 1 ] && [ "$p" != 0 ]; do
    ns=$(readlink "/proc/$p/ns/mnt" 2>/dev/null || true)
    for h in "$STATE"/run/h*.ns; do [ "$(cat "$h")" = "$ns" ] && { basename "$h" .ns; return 0; }; done
    p=$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
  done
  return 0
}

# retry NS: the backend building dies (sshd, its sessions, the build): the
# build is retried on the other backend and succeeds
m_retry() {
  local bp h ns out on
  OFF=$(relay_log_size)
  bg_build "$1" "$BLOG" marked "$SEED" --arg sleepSecs 8
  bp=$(wait_marker "$SEED" 30)
  h=$(host_of "$bp"); [ -n "$h" ] || fail "cannot tell which backend runs pid $bp"
  ns=$(cat "$STATE/run/$h.ns")
  # shellcheck disable=SC2046
  kill -9 "$bp" $(ns_pids "$ns") 2>/dev/null || true
  wait "$BGPID" || fail "$1: nix-build failed after $h died: $(grep -a error "$BLOG" | tail -2)"
  out=$(cat "$BLOG.out"); NS=$1 m_valid "$out"
  on=$(built_on lab-marked-8s)
  [ -n "$on" ] && [[ " $on" != *" $h "* ]] || fail "built on '$on' after $h died, expected another backend"
  note "$h killed mid-build, built on $on"
}

# store: the relay as a remote store (the way nixbuild.net is used). Over
# ssh-ng:// the DAG is copied as .drv files and built through the relay's
# scheduler (nix build --store); Nix builds nothing through an ssh:// store
# ("not a local store"), so there the build goes through the hook. Then, as
# a store: path-info, copy back, copy to, and the build log read from the
# relay's HTTP cache by `nix log`.
m_store() {
  local url="$CPROTO://relay" seed="$SEED-store" out drv p
  OFF=$(relay_log_size)
  drv=$(in_ns "$NS" nix-instantiate "$DRV" -A top --arg nLeaves 3 --argstr seed "$seed" 2>/dev/null) \
    || fail "nix-instantiate failed"
  out=$(in_ns "$NS" nix-store -q --outputs "$drv") || fail "nix-store -q --outputs $drv failed"
  if [ "$CPROTO" = ssh-ng ]; then
    in_ns "$NS" nix build --store "$url" --eval-store auto -f "$DRV" top --arg nLeaves 3 \
      --argstr seed "$seed" --no-link 2>"$BLOG" \
      || fail "nix build --store $url failed: $(grep -a error "$BLOG" | tail -2)"
  else
    m_build top "$seed" --arg nLeaves 3 >/dev/null || fail "nix-build -A top failed: $(tail -3 "$BLOG")"
    in_ns "$NS" nix-store --delete "$out" >/dev/null 2>&1 || fail "could not delete $out on the client"
  fi
  [ "$(m_finished lab-top)" = 1 ] || fail "relay.log shows $(m_finished lab-top) builds of lab-top, expected 1"
  in_ns "$NS" nix path-info --store "$url" "$out" >/dev/null 2>>"$BLOG" || fail "nix path-info --store $url $out failed"
  in_ns "$NS" nix copy --from "$url" --no-check-sigs "$out" 2>>"$BLOG" || fail "nix copy --from $url failed"
  m_valid "$out"
  local cache="http://127.0.0.1:$((BASE_PORT + 80))"
  if [ "$NS" = client ] && [ "$CPROTO" = ssh ]; then
    # Nix 2.8's `nix log` wants the .drv valid in that store, and a hook
    # build never uploads it: read the log where `nix log` would
    curl -fsS "$cache/log/$(basename "$drv")" | grep -q 'lab-top' \
      || fail "GET $cache/log/$(basename "$drv") did not give top's log"
  else
    in_ns "$NS" nix log --store "$cache" "$drv" 2>>"$BLOG" | grep -q 'lab-top' \
      || fail "nix log over the relay's HTTP cache did not give top's log"
  fi
  p=$(in_ns "$NS" sh -c "echo $seed > /tmp/m-store-$seed && nix-store --add /tmp/m-store-$seed") \
    || fail "nix-store --add failed"
  in_ns "$NS" nix copy --to "$url" "$p" 2>>"$BLOG" || fail "nix copy --to $url failed"
  in_ns "$NS" nix path-info --store "$url" "$p" >/dev/null 2>>"$BLOG" || fail "the copied path is not on the relay"
}
