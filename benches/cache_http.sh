#!/usr/bin/env bash
# nix-relay benchmark: the relay's HTTP binary cache ([http]).
#
#   sudo benches/cache_http.sh
#
# 1. fills the relay store by building -A top, -A many and -A big (fresh seed)
#    through the relay (client namespace, --builders ssh://relay, --max-jobs 0);
# 2. `nix copy --from http://127.0.0.1:PORT` (the relay) vs
#    `nix copy --from file://STATE/relay-state/cache` (the same files, read by
#    Nix directly) of those outputs into fresh empty chroot stores, alternating,
#    median of BENCH_COPY_N each; ratio http/file (goal <= 1.2);
# 3. narinfo latency: benches/narinfo_load.py, BENCH_CLIENTS keep-alive clients x
#    BENCH_REQUESTS GETs (10 % misses -> 404); p50/p90/p99/max, req/s, errors;
#    plus a 1-client run (2 x BENCH_REQUESTS GETs) as the baseline.
# Exit status 0 when the benchmark ran, even if a goal was missed; non-zero only
# on errors (lab/relay did not start, a build or copy failed or timed out, a
# narinfo request got the wrong answer, ...).
#
# Env:
#   BENCH_BIG_MIB   size of -A big in MiB (100; keep it even)
#   BENCH_COPY_N    nix copy runs per mode (3)
#   BENCH_CLIENTS   concurrent narinfo clients (16)
#   BENCH_REQUESTS  narinfo GETs per client (500)
#   BENCH_TIMEOUT   seconds per nix command / load run (300)
#   BENCH_HTTP_PORT the relay's HTTP port (LAB_BASE_PORT + 80)
#   BENCH_KEEP_STORES=1  keep the lab stores (client, h1, relay-state) at the end
#   RELAY_BIN       relay binary (${CARGO_TARGET_DIR:-REPO/target}/release/nix-relay)
#   LAB_STATE       lab state dir (/tmp/nix-relay-bench2: NOT the e2e lab's)
#   LAB_BASE_PORT   relay SSH port; h1 gets +1 (2800)
# Logs: $LAB_STATE/bench/, $LAB_STATE/relay.log. Config: $LAB_STATE/relay-bench.toml.
set -euo pipefail
export LC_ALL=C   # $EPOCHREALTIME and awk: "." as the decimal point
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source=benches/lib.sh
. "$BENCH_DIR/lib.sh"
LAB_DIR=$REPO/tests/lab
HS=$LAB_DIR/hosts.sh
DRV=$LAB_DIR/drv
export LAB_STATE=${LAB_STATE:-/tmp/nix-relay-bench2}
export LAB_BASE_PORT=${LAB_BASE_PORT:-2800}
export RELAY_BIN=${RELAY_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/nix-relay}
STATE=$LAB_STATE
BIG_MIB=${BENCH_BIG_MIB:-100}
COPY_N=${BENCH_COPY_N:-3}
CLIENTS=${BENCH_CLIENTS:-16}
REQUESTS=${BENCH_REQUESTS:-500}
TMO=${BENCH_TIMEOUT:-300}
HTTP_PORT=${BENCH_HTTP_PORT:-$((LAB_BASE_PORT + 80))}
LOGS=$STATE/bench
CONF=$STATE/relay-bench.toml
CACHE=$STATE/relay-state/cache
PUBKEY_FILE=$STATE/keys/relay-cache.sec.pub
COPIES=$STATE/copies   # the chroot stores nix copy writes into
RUN_ID=bench2-$(date +%s)-$$
NIX=(nix --extra-experimental-features nix-command)

die() { echo "bench: ERROR: $*" >&2; exit 2; }
note() { echo "bench: $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root (sudo $0)"
for v in BIG_MIB COPY_N CLIENTS REQUESTS TMO HTTP_PORT; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[ "$COPY_N" -le 21 ] && [ "$CLIENTS" -le 256 ] || die "BENCH_COPY_N <= 21 and BENCH_CLIENTS <= 256, please"
[ -x "$RELAY_BIN" ] || die "relay binary not found: $RELAY_BIN
  build it:  CARGO_TARGET_DIR=/some/dir cargo build --release   (then RELAY_BIN=/some/dir/release/nix-relay)"
case $STATE in /tmp/nix-relay-lab|/tmp/nix-relay-lab/) die "LAB_STATE is the e2e lab's state dir; use another";; esac

# ---- lifecycle: hosts.sh starts the lab; we start the relay ourselves (our own
# config) but register it in hosts.sh's PID files, so `hosts.sh down` stops it ----
cleaned=0
cleanup() {
  [ "$cleaned" = 1 ] && return 0
  cleaned=1
  "$HS" down >&2 || echo "bench: WARNING: hosts.sh down failed" >&2
  rm -rf "$COPIES"
  if [ "${BENCH_KEEP_STORES:-0}" != 1 ] && [ -d "$STATE/hosts" ]; then
    "$HS" reset client >&2 || true
    "$HS" reset h1 >&2 || true
    rm -rf "$STATE/relay-state"
  fi
}
trap cleanup EXIT
trap 'echo "bench: ERROR: line $LINENO: a command failed (status $?)" >&2' ERR
trap 'exit 130' INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

"$REPO/tests/setup.sh" > "$STATE.setup.log" 2>&1 || { cat "$STATE.setup.log" >&2; die "tests/setup.sh failed"; }
mkdir -p "$STATE"
mv -f "$STATE.setup.log" "$STATE/setup.log"
rm -rf "$LOGS" "$COPIES"; mkdir -p "$LOGS" "$COPIES"

"$HS" up 1 --fresh > "$LOGS/hosts-up.log" 2>&1 || { cat "$LOGS/hosts-up.log" >&2; die "the lab did not come up"; }

# ---- the relay's config: relay-config.sh's [server]/[[client]]/[[backend]] (h1
# only) plus [cache] and [http] --------------------------------------------------
write_config() {
  local hk=$STATE/hosts/h1/ssh/ssh_host_ed25519_key.pub
  [ -f "$hk" ] || die "no host key for h1 ($hk)"
  cat > "$CONF.tmp" <<CONF
# nix-relay config for benches/cache_http.sh (generated; cf. tests/lab/relay-config.sh)
[server]
listen = "127.0.0.1:$LAB_BASE_PORT"
host_key = "$STATE/keys/relay_host_ed25519"
state_dir = "$STATE/relay-state"

[[client]]
name = "lab"
key = "$(tr -d '\n' < "$STATE/keys/id_lab.pub")"
trusted = true

[[backend]]
name = "h1"
uri = "ssh://root@127.0.0.1:$((LAB_BASE_PORT + 1))"
ssh_key = "$STATE/keys/id_lab"
host_key = "$(cut -d' ' -f1,2 "$hk")"
systems = ["x86_64-linux"]
max_jobs = 2
speed_factor = 1.0
supported_features = ["benchmark", "big-parallel"]
mandatory_features = []

[cache]
signing_key = "$STATE/keys/relay-cache.sec"
key_name = "nix-relay-bench-1"
compression = "zstd"

[http]
listen = "127.0.0.1:$HTTP_PORT"
CONF
  mv -f "$CONF.tmp" "$CONF"
}

relay_start() {  # like hosts.sh relay start, with $CONF; tracked in $STATE/run/relay.*
  local pid i
  rm -rf "$STATE/relay-state"; mkdir -p "$STATE/relay-state"
  write_config
  "$RELAY_BIN" check-config "$CONF" > "$LOGS/check-config.log" 2>&1 || { cat "$LOGS/check-config.log" >&2; die "the relay refused $CONF"; }
  port_busy "$LAB_BASE_PORT" && die "port $LAB_BASE_PORT is already in use"
  port_busy "$HTTP_PORT" && die "port $HTTP_PORT is already in use"
  echo "$(date +%FT%T) starting: $RELAY_BIN serve --config $CONF" > "$STATE/relay.log"
  RUST_BACKTRACE=1 setsid "$RELAY_BIN" serve --config "$CONF" </dev/null >>"$STATE/relay.log" 2>&1 &
  pid=$!
  echo "$pid" > "$STATE/run/relay.pid"
  echo "$CONF" > "$STATE/run/relay.tag"    # must appear in /proc/PID/cmdline
  touch "$STATE/run/relay.group"             # setsid: stop the whole group
  for i in $(seq 1 200); do   # up to 10 s, both listeners
    if port_busy "$LAB_BASE_PORT" && port_busy "$HTTP_PORT"; then RELAY_PID=$pid; return 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  tail -20 "$STATE/relay.log" >&2 || true
  die "the relay did not listen on 127.0.0.1:$LAB_BASE_PORT and :$HTTP_PORT (log: $STATE/relay.log)"
}
relay_start
[ -s "$PUBKEY_FILE" ] || die "the relay did not write its public key to $PUBKEY_FILE"
PUBKEY=$(tr -d '\n' < "$PUBKEY_FILE")
RELAY_B=$(cat "$STATE/machines-relay")
HTTP_URL=http://127.0.0.1:$HTTP_PORT
FILE_URL=file://$CACHE


echo "nix-relay bench: HTTP binary cache   $(date -u +%FT%TZ)"
echo "  relay:   $RELAY_BIN (pid $RELAY_PID), ssh 127.0.0.1:$LAB_BASE_PORT, http $HTTP_URL, backends: h1 only"
echo "  cache:   $CACHE (zstd, key $(cut -d: -f1 <<< "$PUBKEY"))"
echo "  machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(nix --version), $(python3 --version)"
echo "  state:   $STATE (logs: $LOGS)   seed: $RUN_ID"
echo

# ---- 1. fill the relay store ------------------------------------------------------------
echo "1. fill the relay store: nix-build -A top -A many -A big --arg bigMiB $BIG_MIB via ssh://relay (client namespace)"
t0=$EPOCHREALTIME
rc=0
timeout "$TMO" "$HS" exec client nix-build "$DRV" -A top -A many -A big --arg bigMiB "$BIG_MIB" --argstr seed "$RUN_ID" \
  --no-out-link --max-jobs 0 --builders "$RELAY_B" > "$LOGS/fill.out" 2> "$LOGS/fill.log" </dev/null || rc=$?
if [ "$rc" != 0 ]; then
  tail -15 "$LOGS/fill.log" >&2
  [ "$rc" = 124 ] && die "the fill build timed out after ${TMO}s"
  die "the fill build failed with status $rc (log: $LOGS/fill.log)"
fi
FILL_SECS=$(calc "$EPOCHREALTIME - $t0" 3)
if grep -Eq "^building '[^']*'\.\.\.$" "$LOGS/fill.log"; then die "the fill build ran LOCALLY on the client (log: $LOGS/fill.log)"; fi
mapfile -t OUTS < <(grep '^/nix/store/' "$LOGS/fill.out")
[ "${#OUTS[@]}" = 3 ] || die "expected 3 output paths from nix-build, got ${#OUTS[@]} (see $LOGS/fill.out)"
# the whole closure (top's 10 leaves too), as the client sees it
mapfile -t CLOSURE < <("$HS" exec client nix-store -qR "${OUTS[@]}" </dev/null)
NPATHS=${#CLOSURE[@]}
CLOSURE_BYTES=$("$HS" exec client "${NIX[@]}" path-info -s "${CLOSURE[@]}" </dev/null | awk '{ s += $2 } END { print s + 0 }')
BIG=$(printf '%s\n' "${OUTS[@]}" | grep -- '-lab-big-') || die "no lab-big output among: ${OUTS[*]}"
# every path of the closure must be in the public cache (the relay writes while it streams; allow it a moment)
for i in $(seq 1 100); do
  missing=0
  for p in "${CLOSURE[@]}"; do h=${p#/nix/store/}; [ -f "$CACHE/${h%%-*}.narinfo" ] || missing=$((missing + 1)); done
  [ "$missing" = 0 ] && break
  sleep 0.1
done
[ "$missing" = 0 ] || die "$missing of the $NPATHS closure paths have no narinfo in $CACHE"
grep -q '^Sig: nix-relay-bench-1:' "$CACHE/$(h=${BIG#/nix/store/}; echo "${h%%-*}").narinfo" || die "the big output's narinfo is not signed by the relay"
NARINFOS=$(find "$CACHE" -maxdepth 1 -name '*.narinfo' | wc -l)
NAR_BYTES=$(find "$CACHE/nar" -maxdepth 1 -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
relay_alive
echo "  built in $FILL_SECS s: ${OUTS[*]##*/}"
echo "  closure: $NPATHS paths, NAR size $(calc "$CLOSURE_BYTES / 1048576" 1) MiB;" \
  "cache: $NARINFOS narinfos, nar/ $(calc "$NAR_BYTES / 1048576" 1) MiB (zstd)"
echo

# ---- 2. nix copy: http:// (the relay) vs file:// (the same directory) --------------------
# copy MODE RUN: nix copy of OUTS' closure into a fresh empty chroot store; sets R (seconds)
copy() {
  local mode=$1 run=$2 from d log t0 rc=0 n got
  case $mode in http) from=$HTTP_URL;; file) from=$FILE_URL;; *) die "bad mode $mode";; esac
  d=$COPIES/$mode-$run
  rm -rf "$d"; mkdir -p "$d/xdg"
  log=$LOGS/copy-$mode-$run.log
  timeout "$TMO" sync || die "sync timed out"
  t0=$EPOCHREALTIME
  # XDG_CACHE_HOME: a fresh, empty narinfo disk cache (Nix caches http narinfos and
  # nix-cache-info in ~/.cache/nix/binary-cache-v6.sqlite): every run starts cold
  XDG_CACHE_HOME=$d/xdg timeout "$TMO" "${NIX[@]}" copy --from "$from" --to "$d/store" \
    --option trusted-public-keys "$PUBKEY" --option substituters '' "${OUTS[@]}" \
    > "$log" 2>&1 </dev/null || rc=$?
  R=$(calc "$EPOCHREALTIME - $t0" 3)
  if [ "$rc" != 0 ]; then
    tail -15 "$log" >&2
    [ "$rc" = 124 ] && die "nix copy --from $from timed out after ${TMO}s"
    die "nix copy --from $from failed with status $rc (log: $log)"
  fi
  n=$("${NIX[@]}" path-info --store "$d/store" -r "${OUTS[@]}" 2>>"$log" </dev/null | wc -l) || true
  [ "$n" = "$NPATHS" ] || die "$mode copy #$run: $n valid paths in $d/store, expected $NPATHS (log: $log)"
  got=$(stat -c %s "$d/store$BIG")
  [ "$got" = $((BIG_MIB * 1048576)) ] || die "$mode copy #$run: the big output has $got bytes, expected $BIG_MIB MiB"
  rm -rf "$d"
}

echo "2. nix copy of the closure ($NPATHS paths) into a fresh empty chroot store, $COPY_N runs per mode, alternating:"
: > "$LOGS/copy-http.txt"; : > "$LOGS/copy-file.txt"
CPU0=$(cpu_secs)
for i in $(seq 1 "$COPY_N"); do
  if [ $((i % 2)) = 1 ]; then order="http file"; else order="file http"; fi
  for m in $order; do
    copy "$m" "$i"
    echo "$R" >> "$LOGS/copy-$m.txt"
    printf '  %-4s #%-2s %7.3f s\n' "$m" "$i" "$R"
  done
done
relay_alive
CPU_COPY=$(calc "($(cpu_secs) - $CPU0) / $COPY_N" 2)
CH=$(median < "$LOGS/copy-http.txt"); CF=$(median < "$LOGS/copy-file.txt")
echo

# ---- 3. narinfo latency -------------------------------------------------------------------
# load CLIENTS REQUESTS NAME: runs narinfo_load.py; sets L_* from its RESULT line
load() {
  local out=$LOGS/narinfo-$3.txt rc=0 line kv
  timeout "$TMO" python3 "$BENCH_DIR/narinfo_load.py" --url "$HTTP_URL" --cache-dir "$CACHE" \
    --clients "$1" --requests "$2" > "$out" 2>&1 </dev/null || rc=$?
  grep -v '^RESULT ' "$out" | sed 's/^/  /'
  [ "$rc" = 124 ] && die "narinfo_load.py timed out after ${TMO}s"
  line=$(grep '^RESULT ' "$out" | tail -1) || die "narinfo_load.py failed with status $rc (output: $out)"
  for kv in ${line#RESULT }; do printf -v "L_${kv%%=*}" '%s' "${kv#*=}"; done
  [ "$rc" = 0 ] || [ "$rc" = 1 ] || die "narinfo_load.py failed with status $rc (output: $out)"
}
echo "3. narinfo GETs ($NARINFOS narinfos + 10% random misses), keep-alive HTTP/1.1, python3 http.client threads:"
CPU0=$(cpu_secs)
load 1 $((REQUESTS * 2)) 1
B_P50=$L_p50_ms; B_P99=$L_p99_ms; B_RPS=$L_rps; B_ERR=$L_errors
load "$CLIENTS" "$REQUESTS" "$CLIENTS"
relay_alive
CPU_LOAD=$(calc "$(cpu_secs) - $CPU0" 2)
HWM=$(status_kib VmHWM)
echo

# ---- report -------------------------------------------------------------------------------
row() { printf '  %-46s %10s %10s %10s\n' "$@"; }
echo "results"
row "" http file http/file
row "nix copy wall, median of $COPY_N (s)" "$CH" "$CF" "$(ratio "$CH" "$CF")"
row "  throughput, closure NAR size (MiB/s)" "$(calc "$CLOSURE_BYTES / 1048576 / $CH" 1)" "$(calc "$CLOSURE_BYTES / 1048576 / $CF" 1)" ""
echo "  relay CPU (user+sys) per http copy: $CPU_COPY s"
echo
row "" p50 p99 req/s
row "narinfo, 1 client (ms)" "$B_P50" "$B_P99" "$B_RPS"
row "narinfo, $CLIENTS clients (ms)" "$L_p50_ms" "$L_p99_ms" "$L_rps"
echo "  $CLIENTS clients: p90 $L_p90_ms ms, max $L_max_ms ms, errors $L_errors; relay CPU over both narinfo runs: $CPU_LOAD s"
echo "  relay VmHWM (whole run): $(calc "$HWM / 1024" 1) MiB"
echo

goal "http-vs-file copy ratio" "$(ratio "$CH" "$CF")" "<=" 1.2 ""
echo "narinfo latency ($CLIENTS clients): p50 $L_p50_ms ms p99 $L_p99_ms ms ($L_rps req/s, $L_errors errors; 1 client: p50 $B_P50 ms p99 $B_P99 ms)"
errs=$((L_errors + B_ERR))
[ "$errs" = 0 ] || die "$errs narinfo requests got a wrong answer (see $LOGS/narinfo-*.txt)"
exit 0
