#!/usr/bin/env bash
# nix-relay benchmark: the same fresh derivations built by a stock Nix 2.8
# client DIRECTLY on backend h1 (--builders ssh://h1) and VIA THE RELAY
# (--builders ssh://relay; the relay's config has h1 as its only backend).
# With BENCH_PROTO=ssh-ng the client speaks the daemon protocol instead
# (ssh-ng://h1, i.e. h1's `nix-daemon --stdio`, and ssh-ng://relay); the
# relay's own backend connection stays ssh:// (nix-store --serve).
#
#   sudo benches/relay_vs_direct.sh
#   sudo BENCH_PROTO=both benches/relay_vs_direct.sh
#
# Prints a table and three goal lines (small-build ratio, throughput ratio,
# relay peak RSS) per protocol; with BENCH_RAW=1 (the default) one line of
# the copy-out goal, relay copy-out >= 0.95 x raw two-hop OpenSSH, PASS or
# MISS per protocol (print-only); with BENCH_PROTO=both also a line comparing
# ssh-ng via the relay with ssh via the relay. With BENCH_MUX=1 (the default)
# each protocol has a third small-build mode, relay-mux / ng-relay-mux: via
# the relay with the client's SSH connections multiplexed (ControlMaster
# auto, ControlPersist, as nixos/client.nix sets up for root), so the build
# hook reuses one connection and pays no SSH handshake; the small-build
# ratio is then printed with and without it. Exit status 0 even when a goal
# is missed; non-zero only on errors (lab/relay did not start, a build failed
# or timed out, ...).
#
# Env:
#   BENCH_PROTO    ssh (the default) | ssh-ng | both: the client's store URI
#                  scheme, in both the direct and the relay builder line. both:
#                  the four modes (direct, relay, ng-direct, ng-relay) alternate
#                  in one run, against the same lab and the same relay process
#   BENCH_N        small-build runs per mode (7)
#   BENCH_BIG_N    200 MiB runs per mode (3)
#   BENCH_BIG_MIB  size of the big output in MiB (200; keep it even)
#   BENCH_RAW      1: also measure raw OpenSSH throughput (the ceiling) (1)
#   BENCH_RAW_MIB  MiB per raw OpenSSH transfer (1000: long enough that the
#                  connection set-up, which is subtracted, does not dominate)
#   BENCH_MUX      1: also the relay-mux modes (small builds only) (1)
#   BENCH_SSHOPTS  extra OpenSSH options for the client, both modes (none), e.g.
#                  "-o KexAlgorithms=curve25519-sha256" to give the direct path
#                  the same key exchange the relay (russh) negotiates
#   BENCH_TIMEOUT  seconds per nix/ssh command (300)
#   BENCH_KEEP_STORES=1  keep the lab stores (client, h1, relay-state) at the end
#   RELAY_BIN      relay binary (${CARGO_TARGET_DIR:-REPO/target}/release/nix-relay)
#   LAB_STATE      lab state dir (/tmp/nix-relay-bench: NOT the e2e lab's)
#   LAB_BASE_PORT  relay port; h1 gets +1 (2600: NOT the e2e lab's 2400/2500)
# Logs: $LAB_STATE/bench/ (one timestamped client log per build), $LAB_STATE/relay.log.
set -euo pipefail
export LC_ALL=C   # $EPOCHREALTIME and awk: "." as the decimal point
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source=benches/lib.sh
. "$BENCH_DIR/lib.sh"
LAB_DIR=$REPO/tests/lab
HS=$LAB_DIR/hosts.sh
DRV=$LAB_DIR/drv
export LAB_STATE=${LAB_STATE:-/tmp/nix-relay-bench}
export LAB_BASE_PORT=${LAB_BASE_PORT:-2600}
export RELAY_BIN=${RELAY_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/nix-relay}
STATE=$LAB_STATE
N=${BENCH_N:-7}
PROTO=${BENCH_PROTO:-ssh}
BIG_N=${BENCH_BIG_N:-3}
BIG_MIB=${BENCH_BIG_MIB:-200}
RAW=${BENCH_RAW:-1}
RAW_MIB=${BENCH_RAW_MIB:-1000}
SSHOPTS="-F $STATE/ssh_config${BENCH_SSHOPTS:+ $BENCH_SSHOPTS}"
MUX=${BENCH_MUX:-1}
# the client side of nixos/client.nix's multiplexing, for the relay-mux modes
MUX_OPTS="-o ControlMaster=auto -o ControlPath=$STATE/mux-%C -o ControlPersist=900"
TMO=${BENCH_TIMEOUT:-300}
LOGS=$STATE/bench
RUN_ID=bench-$(date +%s)-$$

die() { echo "bench: ERROR: $*" >&2; exit 2; }
note() { echo "bench: $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root (sudo $0)"
for v in N BIG_N BIG_MIB RAW_MIB TMO; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
case $PROTO in
  ssh) PROTOS=ssh; MODES="direct relay"; W=9;;
  ssh-ng) PROTOS=ssh-ng; MODES="ng-direct ng-relay"; W=12;;
  both) PROTOS="ssh ssh-ng"; MODES="direct relay ng-direct ng-relay"; W=12;;
  *) die "BENCH_PROTO must be ssh, ssh-ng or both (got '$PROTO')";;
esac
case $MUX in
  0) ;;
  1) for p in $PROTOS; do if [ "$p" = ssh ]; then MODES="$MODES relay-mux"; else MODES="$MODES ng-relay-mux"; fi; done;;
  *) die "BENCH_MUX must be 0 or 1 (got '$MUX')";;
esac
[ "$N" -le 101 ] && [ "$BIG_N" -le 21 ] || die "BENCH_N <= 101 and BENCH_BIG_N <= 21, please"
[ -x "$RELAY_BIN" ] || die "relay binary not found: $RELAY_BIN
  build it:  CARGO_TARGET_DIR=/some/dir cargo build --release   (then RELAY_BIN=/some/dir/release/nix-relay)"
case $STATE in /tmp/nix-relay-lab|/tmp/nix-relay-lab/) die "LAB_STATE is the e2e lab's state dir; use another";; esac

# ---- lifecycle: everything we start goes through hosts.sh (PID files + tags) ----
cleaned=0
cleanup() {
  [ "$cleaned" = 1 ] && return 0
  cleaned=1
  [ -n "${SAMPLER_PID:-}" ] && kill "$SAMPLER_PID" 2>/dev/null || true
  # the multiplexing master of the relay-mux modes (ControlPersist) ends with the lab
  [ "$MUX" = 1 ] && timeout 10 "$HS" exec client ssh $SSHOPTS $MUX_OPTS -O exit relay </dev/null >/dev/null 2>&1 || true
  "$HS" down >&2 || echo "bench: WARNING: hosts.sh down failed" >&2
  if [ "${BENCH_KEEP_STORES:-0}" != 1 ] && [ -d "$STATE/hosts" ]; then
    # the stores hold ~ (2 * BIG_N + 1) * BIG_MIB MiB each: free the disk, keep the logs
    "$HS" reset client >&2 || true
    "$HS" reset h1 >&2 || true
    rm -rf "$STATE/relay-state"
  fi
}
trap cleanup EXIT
trap 'echo "bench: ERROR: line $LINENO: a command failed (status $?)" >&2' ERR
trap 'exit 130' INT TERM

"$REPO/tests/setup.sh" > "$STATE.setup.log" 2>&1 || { cat "$STATE.setup.log" >&2; die "tests/setup.sh failed"; }
mkdir -p "$STATE"
mv -f "$STATE.setup.log" "$STATE/setup.log"
rm -rf "$LOGS"; mkdir -p "$LOGS"

# one backend (h1): relay-config.sh then writes a relay.toml with h1 only
"$HS" up 1 --fresh > "$LOGS/hosts-up.log" 2>&1 || { cat "$LOGS/hosts-up.log" >&2; die "the lab did not come up"; }
"$HS" relay start > "$LOGS/relay-start.log" 2>&1 || { cat "$LOGS/relay-start.log" >&2; die "the relay did not start"; }
nb=$(grep -c '^\[\[backend\]\]' "$STATE/relay.toml" || true)
[ "$nb" = 1 ] && grep -q '^name = "h1"' "$STATE/relay.toml" || die "relay.toml should have exactly one backend (h1), has $nb"
RELAY_PID=$(cat "$STATE/run/relay.pid")
DIRECT_B=$(head -1 "$STATE/machines")
RELAY_B=$(cat "$STATE/machines-relay")
case $DIRECT_B in "ssh://h1 "*) ;; *) die "unexpected first machines line: $DIRECT_B";; esac
case $RELAY_B in "ssh://relay "*) ;; *) die "unexpected machines-relay line: $RELAY_B";; esac
# the same lines for the daemon protocol (ssh-ng): only the scheme differs
NG_DIRECT_B=ssh-ng://${DIRECT_B#ssh://}
NG_RELAY_B=ssh-ng://${RELAY_B#ssh://}
# modes: direct relay relay-mux (ssh://), ng-direct ng-relay ng-relay-mux (ssh-ng://)
mode_proto() { case $1 in ng-*) echo ssh-ng;; *) echo ssh;; esac; }
mode_host() { case $1 in *relay*) echo relay;; *) echo h1;; esac; }
mode_sshopts() { case $1 in *-mux) echo "$SSHOPTS $MUX_OPTS";; *) echo "$SSHOPTS";; esac; }
proto_modes() { case $1 in ssh) echo "direct relay";; ssh-ng) echo "ng-direct ng-relay";; esac; }

# The relay's peak RSS and CPU time, per protocol: VmHWM is reset
# (clear_refs 5) before every relay-mode build and read after it; the maximum
# per protocol and phase is kept. CPU time is summed over the relay-mode builds.
HWM_RESET=1
declare -A HWM CPU
hwm_reset() { echo 5 > "/proc/$RELAY_PID/clear_refs" 2>/dev/null || HWM_RESET=0; }
hwm_note() {  # hwm_note KEY: HWM[KEY] = max(HWM[KEY], VmHWM now)
  local v; v=$(status_kib VmHWM)
  [ "${HWM[$1]:-0}" -ge "$v" ] || HWM[$1]=$v
}

# ---- measuring one build ----------------------------------------------------------
# Each stderr line of the client is stamped with the time it arrived
# ($EPOCHREALTIME, bash builtin: no extra process start-up). From the stamps:
#   eval     = start .. "this derivation will be built" (nix-build start-up + evaluation)
#   connect  = .. "building '…' on '…'"            (build hook, ssh connect + serve/daemon handshake)
#   build    = .. last "copying path '…' from '…'" (inputs to the builder, the build itself)
#   copy-out = .. nix-build exits                  (output NAR transfer + import on the client)
stamp() { local l; while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done; }

# build MODE ATTR SEED [nix-build args]: sets OUT and R_TOTAL R_SETUP R_BUILD R_COPY (seconds)
build() {
  local mode=$1 attr=$2 seed=$3 builders log t0 t1 rc=0
  shift 3
  case $mode in
    direct) builders=$DIRECT_B;; relay|relay-mux) builders=$RELAY_B;;
    ng-direct) builders=$NG_DIRECT_B;; ng-relay|ng-relay-mux) builders=$NG_RELAY_B;;
    *) die "bad mode $mode";;
  esac
  log=$LOGS/$seed.log
  t0=$EPOCHREALTIME
  { timeout "$TMO" "$HS" exec client env NIX_SSHOPTS="$(mode_sshopts "$mode")" nix-build "$DRV" -A "$attr" --argstr seed "$seed" \
      --no-out-link --max-jobs 0 --builders "$builders" "$@" \
      2>&1 >"$LOGS/$seed.out" </dev/null | stamp > "$log"; } || rc=$?
  t1=$EPOCHREALTIME
  if [ "$rc" != 0 ]; then
    tail -15 "$log" >&2
    [ "$rc" = 124 ] && die "nix-build -A $attr ($mode, seed $seed) timed out after ${TMO}s"
    die "nix-build -A $attr ($mode, seed $seed) failed with status $rc (log: $log)"
  fi
  OUT=$(tail -1 "$LOGS/$seed.out")
  [[ $OUT == /nix/store/* ]] || die "no output path from nix-build ($mode, $seed): $OUT"
  local host scheme; host=$(mode_host "$mode")
  scheme=$(mode_proto "$mode")
  grep -q "^[0-9.]* building '[^']*' on '$scheme://$host'" "$log" ||
    die "$mode build of $attr did not run on $scheme://$host (log: $log)"
  # a local build prints "building 'X'..." with no "building 'X' on '…'" before it (over
  # ssh-ng the builder's own "building 'X'..." is forwarded to the client, after that line)
  if awk "/^[0-9.]* building '[^']*' on '/ { split(\$0, f, \"'\"); remote[f[2]] = 1 }
          /^[0-9.]* building '[^']*'\\.\\.\\.\$/ { split(\$0, f, \"'\"); if (!remote[f[2]]) bad = 1 }
          END { exit !bad }" "$log"; then die "$mode build of $attr ran LOCALLY on the client (log: $log)"; fi
  read -r R_TOTAL R_EVAL R_SETUP R_BUILD R_COPY < <(awk -v t0="$t0" -v t1="$t1" '
      / derivations? will be built:$/ { if (!e) e = $1 }
      / building .* on .ssh(-ng)?:\/\// { if (!b) b = $1 }
      / copying path .* from .ssh(-ng)?:\/\// { c = $1 }
      END {
        if (!e) e = t0; if (!b) b = e; if (!c) c = b
        printf "%.3f %.3f %.3f %.3f %.3f\n", t1 - t0, e - t0, b - e, c - b, t1 - c
      }' "$log")
}

# record KIND MODE: appends this run's numbers to $LOGS/KIND-MODE.tsv
# columns: 1 total, 2 eval, 3 connect, 4 build, 5 copy-out
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$R_TOTAL" "$R_EVAL" "$R_SETUP" "$R_BUILD" "$R_COPY" >> "$LOGS/$1-$2.tsv"; }
col_median() { cut -f"$1" "$LOGS/$2.tsv" | median; }
run_line() { printf "  %-6s %-${W}s #%-2s %7.3f s   (eval %.3f  connect %.3f  build %.3f  copy-out %.3f)\n" "$1" "$2" "$3" "$R_TOTAL" "$R_EVAL" "$R_SETUP" "$R_BUILD" "$R_COPY"; }

echo "nix-relay bench: relay vs direct, one backend (h1)   $(date -u +%FT%TZ)"
echo "  relay:   $RELAY_BIN (pid $RELAY_PID), 127.0.0.1:$LAB_BASE_PORT, backends: h1 only"
echo "  direct:  $(cut -d' ' -f1-6 <<< "$DIRECT_B") …"
echo "  via:     $(cut -d' ' -f1-6 <<< "$RELAY_B") …"
if [ "$PROTO" != ssh ]; then
  echo "  ssh-ng:  $(cut -d' ' -f1-6 <<< "$NG_DIRECT_B") … (h1's nix-daemon --stdio)"
  echo "           $(cut -d' ' -f1-6 <<< "$NG_RELAY_B") … (the relay's worker front end; relay -> h1 stays ssh://)"
  echo "  modes:   $MODES (BENCH_PROTO=$PROTO)"
fi
echo "  machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(nix --version), $(ssh -V 2>&1 | cut -d, -f1)"
echo "  load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) at the start: other work shares these CPUs"
echo "  client:  NIX_SSHOPTS=\"$SSHOPTS\""
echo "  state:   $STATE (logs: $LOGS)   seed prefix: $RUN_ID"
echo

# ---- raw SSH ceiling (OpenSSH both ends, client namespace -> h1's sshd) ----------------
RAW_1=nan; RAW_2=nan
if [ "$RAW" = 1 ]; then
  # client -> ssh: time to connect, authenticate and run a command (the relay
  # refuses `true` after authenticating: same cost). Prints seconds.
  ssh_connect() {
    local t0
    t0=$EPOCHREALTIME
    timeout 30 "$HS" exec client ssh $SSHOPTS "$1" true </dev/null >/dev/null 2>&1 || [ "$1" = relay ] || die "ssh $1 true failed"
    calc "$EPOCHREALTIME - $t0" 3; echo
  }
  # raw_ssh HOPS CONNECT: MiB/s of RAW_MIB MiB of zeros from h1's sshd through
  # 1 (ssh h1 dd | wc) or 2 (ssh h1 dd | ssh h1 wc) OpenSSH connections, minus
  # one connection set-up (the two of the 2-hop case are made in parallel)
  raw_ssh() {
    local hops=$1 t0 t1 bytes sink
    if [ "$hops" = 1 ]; then sink='wc -c'; else sink="ssh $SSHOPTS h1 'wc -c'"; fi
    t0=$EPOCHREALTIME
    bytes=$(timeout "$TMO" "$HS" exec client sh -c \
      "ssh $SSHOPTS h1 'dd if=/dev/zero bs=256k count=$((RAW_MIB * 4)) 2>/dev/null' | $sink" </dev/null) ||
      die "raw ssh ($hops hop) failed"
    t1=$EPOCHREALTIME
    [ "$(tr -d ' ' <<< "$bytes")" = $((RAW_MIB * 1048576)) ] || die "raw ssh ($hops hop): got $bytes bytes"
    calc "$RAW_MIB / ($t1 - $t0 - $2)" 1; echo
  }
  kex_cipher() {  # what OpenSSH negotiates with HOST
    { timeout 30 "$HS" exec client ssh -v $SSHOPTS "$1" true </dev/null 2>&1 || true; } |
      sed -n 's/.*kex: algorithm: \([^ ]*\).*/\1/p; s/.*kex: server->client cipher: \([^ ]*\) .*/\1/p' | head -2 | paste -sd' '
  }
  CONN_H1=$(for i in 1 2 3; do ssh_connect h1; done | median)
  CONN_RELAY=$(for i in 1 2 3; do ssh_connect relay; done | median)
  RAW_1=$(for i in 1 2 3; do raw_ssh 1 "$CONN_H1"; done | median)
  RAW_2=$(for i in 1 2 3; do raw_ssh 2 "$CONN_H1"; done | median)
  echo "raw OpenSSH (client namespace), medians of 3:"
  printf '  %-66s %7s s\n' "connect+auth+exec: ssh h1 true" "$CONN_H1"
  printf '  %-66s %7s s\n' "connect+auth+exec: ssh relay true (refused after auth)" "$CONN_RELAY"
  printf '  %-66s %7s MiB/s\n' "1 hop:  ssh h1 'dd $RAW_MIB MiB' | wc -c               (~ direct)" "$RAW_1"
  printf '  %-66s %7s MiB/s\n' "2 hops: ssh h1 'dd $RAW_MIB MiB' | ssh h1 'wc -c'      (~ relay's crypto)" "$RAW_2"
  echo "  kex + cipher: client->h1 $(kex_cipher h1); client->relay $(kex_cipher relay)"
  echo
fi

# ---- warm-up: busybox (the only input source) reaches h1 and the relay store ----------
# relay_build PHASE MODE ATTR SEED [args]: build(), and for relay modes the relay's
# peak RSS (HWM[PROTO-PHASE]) and CPU time (CPU[PROTO-PHASE]) over this build
relay_build() {
  local phase=$1 mode=$2 c0 key
  shift 2
  key=$(mode_proto "$mode")-$phase
  if [ "$(mode_host "$mode")" = relay ]; then
    hwm_reset; c0=$(cpu_secs)
    [ "$phase" = big ] && echo "$mode" > "$LOGS/sampler-mode"
    build "$mode" "$@"
    [ "$phase" = big ] && echo - > "$LOGS/sampler-mode"
    CPU[$key]=$(calc "${CPU[$key]:-0} + $(cpu_secs) - $c0" 2)
    hwm_note "$key"
  else
    build "$mode" "$@"
  fi
}
# order I: the modes in the order of $MODES for odd I, reversed for even I
order() {
  local m r=""
  if [ $(($1 % 2)) = 1 ]; then echo "$MODES"; return; fi
  for m in $MODES; do r="$m${r:+ $r}"; done
  echo "$r"
}

echo "warm-up (ships busybox; not counted):"
for m in $MODES; do
  relay_build small "$m" leaves "$RUN_ID-warm-$m" --arg nLeaves 1; run_line warmup "$m" 1
done
relay_alive
echo

# ---- 1. small builds ------------------------------------------------------------------
echo "1. small build (-A leaves --arg nLeaves 1: one leaf derivation), $N runs per mode, alternating:"
for i in $(seq 1 "$N"); do
  for m in $(order "$i"); do
    relay_build small "$m" leaves "$RUN_ID-small-$m-$i" --arg nLeaves 1
    record small "$m"; run_line small "$m" "$i"
  done
done
relay_alive
echo

# ---- 2. big output ------------------------------------------------------------------------
# sample VmRSS every 50 ms as well, tagged with the relay mode being built
# (bounded: it stops with the relay or at cleanup)
echo - > "$LOGS/sampler-mode"
( while kill -0 "$RELAY_PID" 2>/dev/null; do
    read -r sm < "$LOGS/sampler-mode" || sm=-
    awk -v m="$sm" '$1 == "VmRSS:" { print m, $2 }' "/proc/$RELAY_PID/status" 2>/dev/null || break
    sleep 0.05
  done > "$LOGS/relay-rss-kib.txt" ) &
SAMPLER_PID=$!

echo "2. big output (-A big --arg bigMiB $BIG_MIB), $BIG_N runs per mode, alternating:"
t0=$EPOCHREALTIME
timeout "$TMO" sync || die "sync timed out"
timeout "$TMO" "$HS" exec h1 nix-build "$DRV" -A big --arg bigMiB "$BIG_MIB" --argstr seed "$RUN_ID-big-local" \
  --no-out-link > "$LOGS/big-local.out" 2> "$LOGS/big-local.log" </dev/null || die "local build of big on h1 failed (log: $LOGS/big-local.log)"
BIG_LOCAL=$(calc "$EPOCHREALTIME - $t0" 3)
printf "  %-6s %-${W}s #%-2s %7.3f s   (nix-build -A big inside h1: eval + build, no transfer)\n" local h1 1 "$BIG_LOCAL"
for i in $(seq 1 "$BIG_N"); do
  for m in $(order "$i"); do
    case $m in *-mux) continue;; esac   # multiplexing matters for small builds
    # flush the previous run's dirty pages first, so that their write-back
    # does not land in this run's timing (each run writes BIG_MIB to the client's
    # store, and to the relay's in relay mode)
    timeout "$TMO" sync || die "sync timed out"
    relay_build big "$m" big "$RUN_ID-big-$m-$i" --arg bigMiB "$BIG_MIB"
    size=$("$HS" exec client stat -c %s "$OUT" </dev/null)
    [ "$size" = $((BIG_MIB * 1048576)) ] || die "$m: $OUT has $size bytes, expected $BIG_MIB MiB"
    record big "$m"; run_line big "$m" "$i"
  done
done
relay_alive
RSS_NOW=$(status_kib VmRSS)
kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=
echo

# ---- report --------------------------------------------------------------------------------
median_or_nan() { local m; m=$(median); [ "$m" = nan ] && echo nan || calc "$m" 3; }
# copy-out throughput of MODE (per run, then the median)
tp() { awk -v mib="$BIG_MIB" -F'\t' '{ if ($5 > 0) printf "%.3f\n", mib / $5 }' "$LOGS/big-$1.tsv" | median; }
# wall-derived: BIG_MIB / (wall - local build time on h1)
tpw() { awk -v mib="$BIG_MIB" -v b="$BIG_LOCAL" -F'\t' '{ d = $1 - b; if (d > 0) printf "%.3f\n", mib / d }' "$LOGS/big-$1.tsv" | median; }
row() { printf '  %-44s %9s %9s %9s\n' "$@"; }

# report PROTO: the table and the three goal lines of one protocol
report() {
  local p=$1 dm rm gp="" sd sr bd br a b c tpd tpr twd twr relay_secs rss_sampled sproto
  read -r dm rm <<< "$(proto_modes "$p")"
  if [ "$PROTO" = ssh ]; then
    echo "results (medians; seconds unless stated)"
  else
    echo "results, $p:// (medians; seconds unless stated)"
    gp="$p "
  fi
  sd=$(col_median 1 "small-$dm"); sr=$(col_median 1 "small-$rm")
  bd=$(col_median 1 "big-$dm"); br=$(col_median 1 "big-$rm")
  tpd=$(tp "$dm"); tpr=$(tp "$rm"); twd=$(tpw "$dm"); twr=$(tpw "$rm")
  # the relay's own account of the backend build time ("build finished … secs=…"),
  # of this protocol's sessions (the client-facing protocol: serve or worker)
  sproto=serve; [ "$p" = ssh-ng ] && sproto=worker
  relay_secs=$(sed 's/\x1b\[[0-9;]*m//g' "$STATE/relay.log" | grep 'build finished' | grep -- "proto=\"$sproto\"" |
    grep -- "lab-big-" | sed -n 's/.*secs=\([0-9.]*\).*/\1/p' | median_or_nan)
  rss_sampled=$(awk -v m="$rm" '$1 == m { print $2 }' "$LOGS/relay-rss-kib.txt" | sort -n | tail -1)
  rss_sampled=${rss_sampled:-0}
  row "" direct relay relay/direct
  echo "  small build, $N runs"
  row "  total wall" "$sd" "$sr" "$(ratio "$sr" "$sd")"
  for c in 2:eval 3:connect 4:build 5:copy-out; do
    a=$(col_median "${c%%:*}" "small-$dm"); b=$(col_median "${c%%:*}" "small-$rm")
    row "    ${c#*:}" "$a" "$b" "$(ratio "$b" "$a")"
  done
  echo "  big output ($BIG_MIB MiB), $BIG_N runs"
  row "  total wall" "$bd" "$br" "$(ratio "$br" "$bd")"
  for c in 2:eval 3:connect 4:build 5:copy-out; do
    a=$(col_median "${c%%:*}" "big-$dm"); b=$(col_median "${c%%:*}" "big-$rm")
    row "    ${c#*:}" "$a" "$b" "$(ratio "$b" "$a")"
  done
  row "  copy-out throughput (MiB/s)" "$tpd" "$tpr" "$(ratio "$tpr" "$tpd")"
  row "  wall-derived throughput (MiB/s) [1]" "$twd" "$twr" "$(ratio "$twr" "$twd")"
  echo "  [1] $BIG_MIB MiB / (total wall - $BIG_LOCAL s, a local nix-build -A big inside h1)"
  echo "  big: backend build time as the relay logged it (median): ${relay_secs} s;" \
    "relay CPU (user+sys) per big build: $(calc "${CPU[$p-big]:-0} / $BIG_N" 2) s"
  [ "$RAW" = 1 ] && echo "  raw OpenSSH ceiling: 1 hop $RAW_1 MiB/s, 2 hops $RAW_2 MiB/s"
  echo "  relay VmHWM: $(calc "${HWM[$p-small]:-0} / 1024" 1) MiB after warm-up + small builds;" \
    "$(calc "${HWM[$p-big]:-0} / 1024" 1) MiB over the big builds$([ "$HWM_RESET" = 1 ] || echo ' (could not reset: covers the whole run)');" \
    "max sampled VmRSS $(calc "$rss_sampled / 1024" 1) MiB; VmRSS now $(calc "$RSS_NOW / 1024" 1) MiB"
  echo
  goal "${gp}small-build ratio" "$(ratio "$sr" "$sd")" "<=" 1.25 ""
  if [ "$MUX" = 1 ]; then
    local mm sm
    mm=relay-mux; [ "$p" = ssh-ng ] && mm=ng-relay-mux
    sm=$(col_median 1 "small-$mm")
    echo "  ${gp}small build via the relay with client multiplexing ($mm): total $sm s," \
      "connect $(col_median 3 "small-$mm") s (without: $(col_median 3 "small-$rm") s)"
    goal "${gp}small-build ratio, client multiplexed" "$(ratio "$sm" "$sd")" "<=" 1.25 ""
  fi
  goal "${gp}throughput ratio" "$(ratio "$tpr" "$tpd")" ">=" 0.9 ""
  goal "${gp}relay peak RSS" "$(calc "${HWM[$p-big]:-0} / 1024" 1)" "<=" 64 " MiB"
}

first=1
for p in $PROTOS; do
  [ "$first" = 1 ] || echo
  first=0
  report "$p"
done
# the copy-out goal of issue 16 item 7: the relay's copy-out throughput
# (median) against raw OpenSSH through two hops (the same four crypto passes)
if [ "$RAW" = 1 ]; then
  echo
  line="copy-out at the two-hop ceiling (goal: relay copy-out >= 0.95 x raw 2-hop OpenSSH, $RAW_2 MiB/s):"
  for p in $PROTOS; do
    read -r _ rm <<< "$(proto_modes "$p")"
    r=$(ratio "$(tp "$rm")" "$RAW_2")
    v=$(awk -v r="$r" 'BEGIN { if (r == "n/a") print "n/a"; else if (r + 0 >= 0.95) print "PASS"; else print "MISS" }')
    line="$line $p:// $(tp "$rm") MiB/s = $r $v;"
  done
  echo "${line%;}"
  echo "  load when the run ended: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
fi
if [ "$PROTO" = both ]; then
  echo
  echo "ssh-ng via relay vs ssh via relay: small-build ratio $(ratio "$(col_median 1 small-ng-relay)" "$(col_median 1 small-relay)")," \
    "throughput ratio $(ratio "$(tp ng-relay)" "$(tp relay)") (goal: ssh-ng no slower)"
fi
exit 0
