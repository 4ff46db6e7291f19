# Helpers for the e2e scenarios (sourced by e2e.sh after the lab is up;
# each scenario runs in a subshell with set -euo pipefail).

# ---- helpers used inside scenarios (each scenario runs in a subshell, set -e) ----
# fail REASON: end the scenario with a one-line reason
fail() { echo "REASON: $*" >&2; exit 1; }
client() { timeout "$TMO" "$HS" exec client "$@" </dev/null; }
on_host() { timeout "$TMO" "$HS" exec "$1" nix-store --check-validity "$2" </dev/null >/dev/null 2>&1; }
# build ATTR SEED [nix-build args...]: prints output paths; the client's log goes to $BLOG
build() {
  local a=$1 s=$2; shift 2
  echo "+ nix-build -A $a --argstr seed $s $* (log: $BLOG)" >&2
  client nix-build "$DRV" -A "$a" --argstr seed "$s" --no-out-link \
    --max-jobs 0 --builders "$BUILDERS" "$@" 2>"$BLOG"
}
# hosts_with PATH: names of the backends whose store has PATH valid
hosts_with() {
  local i r=""
  for i in $(seq 1 "$NHOSTS"); do on_host "h$i" "$1" && r="$r h$i"; done
  echo "${r# }"
}
# not_on_relay_machine PATH...: the root namespace (where the relay runs) has no such output
not_on_relay_machine() {
  local p
  for p in "$@"; do
    [ ! -e "$p" ] || fail "$p exists in the root namespace's /nix (relay machine)"
    if nix-store --check-validity "$p" >/dev/null 2>&1; then fail "$p is valid in the root namespace's store"; fi
  done
}
client_valid() {  # client_valid PATH...: valid + NAR hash verifies in the client's store
  local p
  for p in "$@"; do
    client nix-store --verify-path "$p" >&2 || fail "client: nix-store --verify-path $p failed"
  done
}
# remote_builds: the 'building ... on ...' lines of $BLOG must all name the
# expected builder and there must be no local build; prints their count
remote_builds() {
  local n bad
  n=$(grep -c "^building '[^']*' on '" "$BLOG" || true)
  if grep -Eq "^building '[^']*'\.\.\.$" "$BLOG"; then fail "client log shows a LOCAL build: $(grep -E "^building '[^']*'\.\.\.$" "$BLOG" | head -1)"; fi
  bad=$(grep "^building '[^']*' on '" "$BLOG" | grep -vc "on 'ssh://relay'" || true)
  [ "$bad" = 0 ] || fail "client sent $bad build(s) somewhere else than ssh://relay"
  echo "$n"
}
relay_alive() {
  "$HS" relay status >/dev/null 2>&1 || fail "the relay is not running (crashed? see $STATE/relay.log)"
}
# skip REASON: the scenario cannot run here (reported as SKIP, counted neither
# way; e2e.sh counts it as a FAIL when skips_fail)
skip() { echo "SKIP-REASON: $*" >&2; exit 77; }
# note TEXT: printed under the scenario's PASS line
note() { echo "NOTE: $*" >&2; }
# skips_fail: under CI (CI set, not "false") nothing may be skipped:
# everything is set up, so a skip means something is broken.
skips_fail() { [ -n "${CI:-}" ] && [ "${CI:-}" != false ]; }
# verdict RC LOG: a scenario's result from its exit status and log: "PASS",
# "SKIP <reason>" (exit 77 with a SKIP-REASON, unless skips_fail) or
# "FAIL <reason>" (its last REASON line, the skip's reason, or the status)
verdict() {
  local rc=$1 log=$2 why="" reason
  [ "$rc" != 0 ] || { echo PASS; return 0; }
  # (|| true: no match means no reason, not the caller's end under pipefail)
  [ "$rc" != 77 ] || why=$(grep '^SKIP-REASON: ' "$log" | tail -1 | sed 's/^SKIP-REASON: //' || true)
  if [ -n "$why" ] && ! skips_fail; then echo "SKIP $why"; return 0; fi
  reason=$(grep '^REASON: ' "$log" | tail -1 | sed 's/^REASON: //' || true)
  [ -n "$reason" ] || [ -z "$why" ] || reason="skipped under CI=$CI (every scenario must run): $why"
  echo "FAIL ${reason:-exit status $rc (see $log)}"
}
# skip_part WHAT: a part of a scenario cannot run here: a note, or a failure
# when skips_fail
skip_part() {
  if skips_fail; then fail "skipped under CI=$CI: $*"; fi
  note "skipped: $*"
}

# ---- helpers for the multi-client / cache scenarios (h..l) ---------------------
CACHE=$STATE/relay-state/cache
HTTP_PORT=$((BASE_PORT + 80))
HTTP_URL=http://127.0.0.1:$HTTP_PORT
# in_ns NS CMD...: run CMD in namespace NS (client, client2, client3, hN)
in_ns() { local ns=$1; shift; timeout "$TMO" "$HS" exec "$ns" "$@" </dev/null; }
# build_in NS LOG BUILDERS ATTR SEED [nix-build args...]: build in NS; prints output paths
build_in() {
  local ns=$1 lg=$2 bl=$3 a=$4 s=$5; shift 5
  echo "+ [$ns] nix-build -A $a --argstr seed $s $* (log: $lg)" >&2
  in_ns "$ns" nix-build "$DRV" -A "$a" --argstr seed "$s" --no-out-link \
    --max-jobs 0 --builders "$bl" "$@" 2>"$lg"
}
# drv_of NS ATTR SEED [args...]: the .drv path (instantiated in NS)
drv_of() {
  local ns=$1 a=$2 s=$3; shift 3
  in_ns "$ns" nix-instantiate "$DRV" -A "$a" --argstr seed "$s" "$@" 2>/dev/null
}
# drv_name /nix/store/<hash>-NAME.drv -> NAME (what the relay logs as drv="NAME")
drv_name() { local n=${1#/nix/store/*-}; echo "${n%.drv}"; }
hash_part() { local n=${1#/nix/store/}; echo "${n%%-*}"; }
relay_log_size() { stat -c %s "$STATE/relay.log"; }
# finished_since OFFSET NAME: 'build finished' lines of drv="NAME" in relay.log after byte OFFSET
finished_since() {
  { tail -c +"$(( $1 + 1 ))" "$STATE/relay.log" | grep -a "drv=\"$2\"" | grep -a " build finished " || true; } | wc -l
}
# http_code PATH [OUTFILE]: HTTP status of GET $HTTP_URL/PATH ("000": no answer)
http_code() {
  curl -s -o "${2:-/dev/null}" -w '%{http_code}' --max-time 10 "$HTTP_URL$1" 2>/dev/null || true
}
# prom NAME{LABELS}: the value of one sample on the relay's /metrics (0 if absent)
prom() {
  curl -s --max-time 10 "$HTTP_URL/metrics" | awk -v k="$1" '$1 == k { v = $2 } END { printf "%d\n", v + 0 }'
}
# http_up_or_skip: SKIP the scenario when the relay's HTTP binary cache does not answer
http_up_or_skip() {
  local c; c=$(http_code /nix-cache-info)
  [ "$c" != 000 ] || skip "no HTTP binary cache on $HTTP_URL: GET /nix-cache-info got no answer (relay built without the [http] server?)"
  [ "$c" = 200 ] || fail "GET /nix-cache-info: HTTP $c, expected 200"
}
# store_consistent WHEN: every narinfo of the relay store (public and private)
# has its NAR file, with the size (FileSize) and hash (FileHash) it declares
store_consistent() {
  local ni url size fh f n=0 got
  for ni in "$CACHE"/*.narinfo "$CACHE"/private/*/*.narinfo; do
    [ -e "$ni" ] || continue
    n=$((n + 1))
    url=$(sed -n 's/^URL: //p' "$ni"); size=$(sed -n 's/^FileSize: //p' "$ni"); fh=$(sed -n 's/^FileHash: sha256://p' "$ni")
    [ -n "$url" ] && [ -n "$size" ] || fail "$1: $ni has no URL/FileSize"
    f=$(dirname "$ni")/$url
    [ -f "$f" ] || fail "$1: $ni names $url, which does not exist"
    got=$(stat -c %s "$f")
    [ "$got" = "$size" ] || fail "$1: $f is $got bytes, $ni says FileSize $size"
    if [ -n "$fh" ]; then
      got=$(nix-hash --flat --type sha256 --base32 "$f")
      [ "$got" = "$fh" ] || fail "$1: $f has sha256 $got, $ni says FileHash $fh"
    fi
  done
  echo "  $1: $n narinfo(s), every NAR present with its FileSize and FileHash"
}

# ---- relay config edits (SIGHUP reload), for scenarios that change the backends ----
RELAY_TOML=$STATE/relay.toml
# reload_relay: SIGHUP the relay; waits up to 10 s for its "reload:" line
# (printed) and then for the reload to finish.
reload_relay() {
  local off i line
  off=$(relay_log_size)
  kill -HUP "$(cat "$STATE/run/relay.pid")" || fail "cannot signal the relay"
  for i in $(seq 1 100); do
    # the last line of a reload: its summary, or that the config was kept
    line=$(tail -c +"$((off + 1))" "$STATE/relay.log" \
      | grep -aE 'reload: (no change|[-+~][^ ]+( [-+~][^ ]+)*|.*running config kept)$' | tail -1 || true)
    [ -n "$line" ] && { echo "${line#*reload: }"; return 0; }
    sleep 0.1
  done
  fail "no 'reload:' summary in relay.log 10 s after SIGHUP"
}
# lab_config: the lab's standard relay.toml, reloaded
lab_config() {
  "$LAB_DIR/relay-config.sh" >/dev/null
  echo "  restored the lab config: $(reload_relay)" >&2
}
# edit_backends PY: rewrites relay.toml's [[backend]] blocks with python
# statements over `bs` (a list of dicts name -> block text; helpers drop(name),
# add(name, text), set(name, key, value)).
edit_backends() {
  python3 - "$RELAY_TOML" "$1" <<'PY'
import re, sys
path, prog = sys.argv[1], sys.argv[2]
text = open(path).read()
head, *blocks = text.split("\n[[backend]]\n")
bs = {re.search(r'^name = "([^"]+)"', b, re.M).group(1): b for b in blocks}
def drop(n): del bs[n]
def add(n, b): bs[n] = b
def set(n, k, v): bs[n] = re.sub(rf'^{k} = .*$', f'{k} = {v}', bs[n], flags=re.M)
exec(prog)
open(path, "w").write(head + "".join("\n[[backend]]\n" + b for b in bs.values()))
PY
}
# built_on DRVNAME: the backends relay.log says built drv="DRVNAME" after byte $OFF
built_on() {
  tail -c +"$((OFF + 1))" "$STATE/relay.log" | grep -a "drv=\"$1\"" | grep -a ' build finished ' \
    | grep -o 'backend=h[0-9a-z]*' | sed 's/backend=//' | sort -u | tr '\n' ' '
}

# ---- golden transcript capture (capture-golden*.sh) ----------------------------
# capture_begin HOST: clean HOST's transcript dir and start recording
capture_begin() {
  local hd=$STATE/hosts/$1
  rm -rf "$hd/transcripts"; mkdir -p "$hd/transcripts"; touch "$hd/capture"
}
# capture_finish HOST NAME OUTDIR: stop recording, wait for the sessions to
# end, copy each as OUTDIR/NAME[.N].{c2s,s2c,stderr} and decode it (.txt)
capture_finish() {
  local h=$1 name=$2 out=$3 hd=$STATE/hosts/$1 i e pending f n=0 base dst ext
  rm -f "$hd/capture"
  for i in $(seq 1 200); do
    pending=0
    for e in "$hd"/transcripts/*.events; do [ -e "$e" ] && [ ! -e "${e%.events}.meta" ] && pending=1; done
    [ "$pending" = 0 ] && break
    sleep 0.05
  done
  rm -f "$out/$name".* "$out/$name".[0-9]*
  for f in "$hd"/transcripts/*.meta; do
    [ -e "$f" ] || continue
    base=${f%.meta}; n=$((n + 1))
    dst=$out/$name; [ "$n" = 1 ] || dst=$out/$name.$n
    for ext in c2s s2c stderr; do cp "$base.$ext" "$dst.$ext" 2>/dev/null || : > "$dst.$ext"; done
    (cd "$out" && python3 "$LAB_DIR/bin/decode.py" "${dst##*/}" > "$dst.txt" 2>&1) || echo "(decode failed)" >> "$dst.txt"
  done
  [ "$n" -ge 1 ] || { echo "capture: no session recorded for $name on $h" >&2; exit 1; }
  echo "captured $name on $h: $n session(s) -> ${out#"$REPO"/}/$name.*"
}
