# Load through the lab relay: the functions benches/load.sh runs to print
# the session set-up rate and latency percentiles (the correctness check,
# load_100, is tests/engine_load.rs). Sourced by e2e.sh and benches/load.sh;
# needs HS, STATE, DRV, TMO and the lab's machines-relay line.

# load_builders PROTO: the relay's builder line for PROTO (ssh|ssh-ng) with
# max-jobs 100, so one client namespace may run 100 builds on it at once
# (Nix counts a machine's jobs per store, across nix-build processes)
load_builders() {
  sed -e "s|^ssh://|$1://|" -e 's| - 4 1 | - 100 1 |' "$STATE/machines-relay"
}

# load_builds N SEED DIR: N concurrent nix-builds of one fresh small
# derivation each, spread over the client namespaces, odd ones over ssh://,
# even ones over ssh-ng://. Writes DIR/<i>.res ("rc start end proto") and
# DIR/<i>.log; prints the number of failures.
load_builds() {
  local n=$1 seed=$2 dir=$3 i ns proto b
  local -a nss=(client client2 client3)
  mkdir -p "$dir"; rm -f "$dir"/*.res
  for i in $(seq 1 "$n"); do
    ns=${nss[$(( i % 3 ))]}
    proto=ssh; [ $(( i % 2 )) = 0 ] && proto=ssh-ng
    b=$(load_builders "$proto")
    (
      t0=$EPOCHREALTIME; rc=0
      timeout "$TMO" "$HS" exec "$ns" nix-build "$DRV" -A leaves --arg nLeaves 1 \
        --argstr seed "$seed-$i" --no-out-link --max-jobs 0 --builders "$b" \
        </dev/null >"$dir/$i.out" 2>"$dir/$i.log" || rc=$?
      echo "$rc $t0 $EPOCHREALTIME $proto" >"$dir/$i.res"
    ) &
  done
  wait
  awk '$1 != 0' "$dir"/*.res | wc -l
}

# load_sessions N DIR: N concurrent bare sessions (OpenSSH connect, key
# exchange, auth, exec, protocol hello answered, clean end), half serve and
# half worker. Writes DIR/s<i>.res ("rc start end"); prints the failures.
load_sessions() {
  local n=$1 dir=$2 i
  mkdir -p "$dir"; rm -f "$dir"/s*.res
  printf '\xeb\x9d\x0c\x39\0\0\0\0\x06\x02\0\0\0\0\0\0' >"$dir/hello.serve"
  { printf '\x63\x78\x69\x6e\0\0\0\0\x15\x01\0\0\0\0\0\0'; head -c 16 /dev/zero; } >"$dir/hello.worker"
  for i in $(seq 1 "$n"); do
    (
      local cmd=nix-store\ --serve kind=serve want=16 rc=0
      [ $(( i % 2 )) = 0 ] && { cmd=nix-daemon\ --stdio; kind=worker; want=24; }
      t0=$EPOCHREALTIME
      got=$(timeout "$TMO" ssh -F "$STATE/ssh_config" relay "$cmd" <"$dir/hello.$kind" 2>"$dir/s$i.err" | wc -c) || rc=$?
      if [ "$rc" = 0 ] && [ "${got:-0}" -lt "$want" ]; then rc=1; fi
      echo "$rc $t0 $EPOCHREALTIME" >"$dir/s$i.res"
    ) &
  done
  wait
  awk '$1 != 0' "$dir"/s*.res | wc -l
}

# load_stats FILES...: "count rate p50 p99 wall" of the .res files' durations
load_stats() {
  cat "$@" | awk '{ d = $3 - $2; print d, $2, $3 }' | sort -g | awk '
    { d[NR] = $1; if (NR == 1 || $2 < s) s = $2; if ($3 > e) e = $3 }
    END { n = NR; w = e - s; p50 = d[int((n - 1) * 0.50) + 1]; p99 = d[int((n - 1) * 0.99) + 1]
          printf "%d %.1f %.2f %.2f %.1f\n", n, (w > 0 ? n / w : 0), p50, p99, w }'
}
