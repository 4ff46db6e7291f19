# EC2 builders on demand against a moto server (the EC2 API double, installed
# by tests/setup.sh), with instances booted for real from the relay's user
# data. bin/ec2-booter.py stands for the hypervisor: it boots each instance
# moto reports running (tests/lab/ec2-instance.sh: a fresh overlay over an
# image root, the user data run as root as cloud-init or amazon-init would,
# then sshd on the instance's own address, port 22), stops each one moto
# terminates, and tells moto when one powers itself off. moto's VPC and
# subnet are 127.77.0.0/16 and 127.77.1.0/24, so every instance's address is
# loopback: the relay reaches it there, as it would reach a private IP.
#
# ec2_launch  (image debian) an aarch64 build with no static aarch64 backend
#             launches a spot instance (the client's log says so, why, and
#             the boot estimate), which joins with the host key its user
#             data installed, builds behind the forced-command gate as the
#             trusted user it created, and is terminated through the API when
#             idle (the dead-man switch, armed, never fires)
# ec2_deadman (image debian) kill -9 the relay after a build: the switch
#             powers the instance off, the booter terminates it in moto
# ec2_nixos   (image nixos: NixOS's layout, amazon-init's PATH) the same
#             build, then kill -9 the relay: the switch fires there too
# ec2_sweep   kill -9 the relay with an instance up; `nix-relay ec2 sweep`
#             lists and then terminates it; the booter stops it
# Each scenario swaps relay.toml for an EC2 config (h2 removed: no static
# aarch64 backend; durations scaled down) and restores it, and the lab's
# relay, when it ends. Sourced by e2e.sh; helpers in lib.sh.

MOTO=${NIX_RELAY_MOTO:-/opt/nix-relay-test/moto/bin/moto_server}
MOTO_PY=$(dirname "$MOTO")/python
MOTO_PORT=$((BASE_PORT + 91))
EC2_URL=http://127.0.0.1:$MOTO_PORT
EC2_DIR=$STATE/ec2
EC2_CONF=$EC2_DIR/relay.toml
# the switch, scaled down (seconds; it checks every tenth of it)
EC2_DEAD_MAN=30
EC2_SCENARIO=ec2
EC2_RUN=$EC2_DIR/$EC2_SCENARIO

# ec2_api ACTION [K=V...]: an unsigned EC2 Query call to moto; prints the XML
ec2_api() {
  python3 - "$MOTO_PORT" "$@" <<'PY'
import sys, urllib.parse, urllib.request
port, action, *kv = sys.argv[1:]
q = {"Action": action, "Version": "2016-11-15"}
q.update(dict(x.split("=", 1) for x in kv))
req = urllib.request.Request(f"http://127.0.0.1:{port}/?" + urllib.parse.urlencode(q), headers={
    "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=x"})
print(urllib.request.urlopen(req, timeout=10).read().decode())
PY
}
# ec2_ids STATE: ids of instances tagged owner=$EC2_RELAY_ID in that state
ec2_ids() {
  ec2_api DescribeInstances "Filter.1.Name=tag:owner" "Filter.1.Value.1=$EC2_RELAY_ID" \
    "Filter.2.Name=instance-state-name" "Filter.2.Value.1=$1" |
    grep -o '<instanceId>i-[0-9a-f]*</instanceId>' | sed 's/<[^>]*>//g' | sort -u
}
ec2_wait_ids() {  # ec2_wait_ids STATE SECONDS: wait until some instance is in STATE
  local i ids
  for i in $(seq 1 $(( $2 * 2 ))); do
    ids=$(ec2_ids "$1"); [ -n "$ids" ] && { echo "$ids"; return 0; }
    sleep 0.5
  done
  return 1
}
# ec2_py ARGS: bin/ec2-booter.py with the moto venv's python (boto3)
ec2_py() {
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true \
    "$MOTO_PY" "$LAB_DIR/bin/ec2-booter.py" "$@"
}
# waitfor SECONDS CMD...: until CMD succeeds (every 0.5 s); 1 if it never did
waitfor() {
  local n=$(( $1 * 2 )) i; shift
  for i in $(seq 1 "$n"); do "$@" && return 0; sleep 0.5; done
  return 1
}

# ec2_setup SCENARIO IMAGE IDLE_GRACE [SPOT]: moto with the lab's network and
# images, the booter, the relay on an EC2 config whose template boots IMAGE
# (a spot template if SPOT is true)
ec2_setup() {
  local ami spot=${4:-false}
  [ -x "$MOTO" ] || fail "$MOTO missing (tests/setup.sh installs moto)"
  EC2_RELAY_ID=lab-$SEED-$1
  EC2_SCENARIO=$1
  EC2_RUN=$EC2_DIR/$1
  rm -rf "$EC2_RUN"; mkdir -p "$EC2_RUN/instances"
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing setsid "$MOTO" -H 127.0.0.1 -p "$MOTO_PORT" \
    >"$LOGS/$1.moto.log" 2>&1 &
  echo $! >"$EC2_DIR/moto.pid"
  waitfor 20 eval '(exec 3<>"/dev/tcp/127.0.0.1/$MOTO_PORT") 2>/dev/null' || fail "moto did not listen on $MOTO_PORT"
  eval "$(ec2_py setup "$EC2_URL")"
  [ -n "${EC2_SUBNET:-}" ] && [ -n "${EC2_AMI_DEBIAN:-}" ] || fail "creating the lab's network and AMIs in moto failed"
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true \
    setsid "$MOTO_PY" "$LAB_DIR/bin/ec2-booter.py" run "$EC2_URL" "$EC2_RUN/instances" \
    "$EC2_AMI_DEBIAN=debian" "$EC2_AMI_NIXOS=nixos" </dev/null >"$LOGS/$1.booter.log" 2>&1 &
  # (hosts.sh down stops it too: its process group, instances included)
  echo $! >"$STATE/run/ec2-booter.pid"; echo ec2-booter.py >"$STATE/run/ec2-booter.tag"; touch "$STATE/run/ec2-booter.group"
  case $2 in debian) ami=$EC2_AMI_DEBIAN;; nixos) ami=$EC2_AMI_NIXOS;; esac
  echo "  moto: subnet $EC2_SUBNET (127.77.1.0/24), image $2 = $ami"
  "$HS" relay stop >/dev/null 2>&1 || true
  python3 - "$STATE/relay.toml" "$EC2_CONF" <<'PY'
import re, sys
src, dst = sys.argv[1:]
blocks = re.split(r"\n(?=\[\[backend\]\])", open(src).read())
open(dst, "w").write("\n".join(b for b in blocks if 'name = "h2"' not in b) + "\n")
PY
  cat >>"$EC2_CONF" <<TOML

[ec2]
region = "us-east-1"
endpoint = "$EC2_URL"
budget_per_day = 5.0
relay_id = "$EC2_RELAY_ID"
ssh_key = "$STATE/keys/id_lab"
dead_man_switch = "${EC2_DEAD_MAN}s"
reconcile_interval = "60s"

[[ec2.template]]
name = "arm"
systems = ["aarch64-linux"]
instance_type = "c7g.large"
ami = "$ami"
subnet = "$EC2_SUBNET"
security_group = "$EC2_SG"
spot = $spot
price_per_hour = 0.08
boot_estimate = "30s"
idle_grace = "$3"
max_lifetime = "1h"
max_instances = 1
TOML
  ec2_relay_start
}

# ec2_relay_start: the relay on $EC2_CONF, tracked like hosts.sh's own (so
# `hosts.sh relay stop|status` work); hosts.sh relay start would rewrite
# relay.toml
ec2_relay_start() {
  local pid i
  : >"$STATE/relay.log"
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true RUST_BACKTRACE=1 \
    setsid "$RELAY_BIN" serve --config "$EC2_CONF" </dev/null >>"$STATE/relay.log" 2>&1 &
  pid=$!
  echo "$pid" >"$STATE/run/relay.pid"; echo "$EC2_CONF" >"$STATE/run/relay.tag"; touch "$STATE/run/relay.group"
  for i in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$BASE_PORT") 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  tail -5 "$STATE/relay.log" >&2
  fail "the relay did not start with the EC2 config"
}

ec2_teardown() {  # stop the relay, the booter (it stops its instances) and moto; keep the logs; the lab's relay back
  local pid i d
  "$HS" relay stop >/dev/null 2>&1 || true
  if [ -f "$STATE/run/ec2-booter.pid" ]; then
    pid=$(cat "$STATE/run/ec2-booter.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$STATE"/run/ec2-booter.*
  fi
  [ -f "$EC2_DIR/moto.pid" ] && kill -- "-$(cat "$EC2_DIR/moto.pid")" 2>/dev/null
  rm -f "$EC2_DIR/moto.pid"
  cp "$STATE/relay.log" "$LOGS/$EC2_SCENARIO.relay.log" 2>/dev/null || true
  for d in "$EC2_RUN"/instances/i-*; do
    [ -d "$d" ] || continue
    mkdir -p "$LOGS/$EC2_SCENARIO.${d##*/}"
    cp "$d/console.log" "$d/user-data" "$d"/upper/var/log/*.log "$d"/upper/var/log/nix-relay-lab/*.log \
      "$LOGS/$EC2_SCENARIO.${d##*/}/" 2>/dev/null || true
  done
  "$HS" relay start >/dev/null 2>&1 || echo "ec2: the lab relay did not restart" >&2
}

# ec2_instance_dir ID; ec2_log ID FILE: a file the instance wrote (in its layer)
ec2_instance_dir() { echo "$EC2_RUN/instances/$1"; }
ec2_log() { cat "$EC2_RUN/instances/$1/upper/var/log/$2" 2>/dev/null || true; }
ec2_booter_said() { grep -q "$1" "$LOGS/$EC2_SCENARIO.booter.log"; }
ec2_up() { ec2_log "$1" nix-relay-lab/boot.log | grep -q 'services started'; }
# ec2_boot ID: wait until the booter booted ID and its services run; prints its address
ec2_boot() {
  waitfor 30 ec2_booter_said "$1: booted" || fail "the booter did not boot $1: $(tail -3 "$LOGS/$EC2_SCENARIO.booter.log")"
  waitfor 60 ec2_up "$1" || fail "$1 did not come up: $(tail -5 "$(ec2_instance_dir "$1")/console.log")"
  ec2_log "$1" nix-relay-lab/boot.log | grep -q 'user-data exit 0' ||
    fail "$1: the user data failed: $(ec2_log "$1" user-data.log | tail -5)"
  grep "$1: booted" "$LOGS/$EC2_SCENARIO.booter.log" | grep -o 'at 127\.[0-9.]*' | cut -c4-
}
# ec2_in ID CMD...: run CMD inside instance ID (its root, mounts and PIDs)
ec2_in() {
  local id=$1 upid kid; shift
  upid=$(cat "$(ec2_instance_dir "$id")/pid")
  read -r kid _ <"/proc/$upid/task/$upid/children"
  nsenter -t "$kid" -m -p -r -w -- env -i PATH=/run/current-system/sw/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@" </dev/null
}
# ec2_gate ID IP: with the host key the user data installed pinned, the
# builder key gets `true` (which touches the switch's stamp) and is refused
# a shell command
ec2_gate() {
  local kh=$EC2_RUN/known_hosts.$1 err=$EC2_RUN/gate.$1.err t stamp id=$1
  echo "$2 $(grep -o "^echo 'ssh-ed25519 [^']*'" "$(ec2_instance_dir "$1")/user-data" | cut -d"'" -f2)" >"$kh"
  set -- -F /dev/null -i "$STATE/keys/id_lab" -o IdentitiesOnly=yes -o BatchMode=yes \
    -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$kh" "nix-relay@$2"
  t=$(date +%s)
  ssh "$@" true </dev/null || fail "ssh nix-relay@$2 true (pinned key, builder key) failed"
  stamp=$(ec2_in "$id" stat -c %Y /run/nix-relay/alive) || fail "no /run/nix-relay/alive on $id"
  [ "$stamp" -ge "$t" ] || fail "the gate did not touch the switch's stamp ($stamp < $t)"
  if ssh "$@" id </dev/null 2>"$err"; then fail "the gate let the builder key run 'id'"; fi
  grep -q 'nix-relay-gate: refused' "$err" || fail "'id' not refused by the gate: $(cat "$err")"
  echo "  the instance answers with the user data's host key; its gate runs 'true' and refuses 'id'"
}
# ec2_built_there ID OUT: ID joined, OUT was built on ec2-arm-0 and is valid
# in ID's store only
ec2_built_there() {
  grep "EC2 instance joined as a backend" "$STATE/relay.log" | grep -q "$1" || fail "relay.log has no join of $1"
  ec2_in "$1" nix-store --check-validity "$2" >/dev/null 2>&1 || fail "$2 is not valid in $1's store"
  [ -z "$(hosts_with "$2")" ] || fail "$2 is valid on a lab host: $(hosts_with "$2")"
  grep -a ' build finished ' "$STATE/relay.log" | grep -q 'backend=ec2-arm-0' ||
    fail "relay.log has no build finished on ec2-arm-0"
  client nix-store --verify-path "$2" >&2 || fail "$2 does not verify in the client's store"
  echo "  built $2 on ec2-arm-0 ($1), valid in its store"
}
# ec2_kill_relay: kill -9 the relay (its sessions end with it); sets KILLED (epoch s)
ec2_kill_relay() {
  kill -9 "$(cat "$STATE/run/relay.pid")"
  KILLED=$(date +%s)
}
# ec2_dead_man ID: after ec2_kill_relay, the switch powers ID off in its
# time (a poweroff by the switch, its stamp at least the switch old) and the
# booter terminates it in moto
ec2_dead_man() {
  local id=$1 line at alive max
  # the switch checks every tenth of its time: it fires by then, plus slack for a loaded machine
  max=$(( EC2_DEAD_MAN + 2 * EC2_DEAD_MAN / 10 + 30 ))
  waitfor "$max" ec2_booter_said "$id: powered itself off" ||
    fail "$id did not power itself off within ${max} s (power.log: $(ec2_log "$id" nix-relay-lab/power.log))"
  line=$(ec2_log "$id" nix-relay-lab/power.log | grep ' poweroff ' | head -1)
  [[ $line == *"caller=[/bin/sh /var/lib/nix-relay-builder/deadman"* ]] || fail "the poweroff was not the switch's: $line"
  at=${line%% *}; alive=${line##*alive=}
  [[ $alive =~ ^[0-9]+$ ]] || fail "no session stamp when it powered off: $line"
  [ $(( at - alive )) -ge "$EC2_DEAD_MAN" ] || fail "powered off $(( at - alive )) s after the last session (switch: ${EC2_DEAD_MAN} s)"
  waitfor 10 eval '[ "$(ec2_ids terminated)" = "$id" ]' || fail "$id is not terminated in moto"
  echo "  relay killed; the switch powered $id off $(( at - KILLED )) s later, $(( at - alive )) s after the last session (switch ${EC2_DEAD_MAN} s); moto: terminated"
}

# ec2_told MARKET: the waiting client's log said an instance was launched
# for its build, with the template, why and the boot estimate
ec2_told() {
  local want="nix-relay: launching an EC2 instance (template arm, c7g.large, $1) for this build: no static backend serves aarch64-linux; boot estimate 30 s"
  grep -qF "$want" "$BLOG" || fail "the client's log does not say '$want': $(grep nix-relay: "$BLOG" | head -5)"
  echo "  the client was told: ${want#nix-relay: }"
}
# ec2_spot ID: moto has ID as a spot instance (the market options reached it)
ec2_spot() {
  ec2_api DescribeInstances "InstanceId.1=$1" | grep -q '<instanceLifecycle>spot</instanceLifecycle>' ||
    fail "$1 is not a spot instance in moto"
  echo "  $1 is a spot instance in moto"
}

ec2_observed() {  # the EC2 metrics and /status after one instance came and went
  local prom=$LOGS/ec2_launch.prom st=$LOGS/ec2_launch.status.json
  curl -sf --max-time 10 "$HTTP_URL/metrics" >"$prom" || fail "GET /metrics failed"
  grep -Eq '^nix_relay_ec2_dollars_total\{template="arm"\} [0-9.e-]+$' "$prom" || fail "no nix_relay_ec2_dollars_total for arm"
  grep -Eq '^nix_relay_ec2_instance_seconds_total\{template="arm"\} ' "$prom" || fail "no instance-seconds for arm"
  grep -Eq '^nix_relay_ec2_terminations_total\{.*reason="idle".*\} 1$' "$prom" || fail "no idle termination counted"
  grep -Eq '^nix_relay_ec2_instances\{.*\} 0$' "$prom" || fail "no instances gauge"
  promtool check metrics <"$prom" >"$LOGS/ec2_launch.promtool.log" 2>&1 || { cat "$LOGS/ec2_launch.promtool.log" >&2; fail "promtool check metrics failed"; }
  curl -sf --max-time 10 "$HTTP_URL/status" >"$st" || fail "GET /status failed"
  python3 - "$st" "$EC2_RELAY_ID" <<'PY' || fail "/status has no sound ec2 object"
import json, sys
e = json.load(open(sys.argv[1]))["ec2"]
assert e["relay_id"] == sys.argv[2], e
assert e["instances"] == [], e
assert e["cost"]["arm"]["instance_seconds"] > 0 and e["cost"]["arm"]["dollars"] > 0, e
assert 0 < e["spent_today"] <= e["budget_per_day"], e
PY
}

# ec2_build SCENARIO IMAGE IDLE_GRACE [SPOT]: setup, then an aarch64 build that
# launches an instance of IMAGE; sets ID, IP, OUT
ec2_build() {
  local bpid
  ec2_setup "$@"
  build foreign "$SEED-$1" >"$EC2_RUN/out" &
  bpid=$!
  ID=$(ec2_wait_ids running 60) || fail "no instance launched (relay.log: $(grep -i ec2 "$STATE/relay.log" | tail -3))"
  IP=$(ec2_boot "$ID")
  echo "  launched $ID (moto); booted image $2 at $IP:22 from its user data"
  wait "$bpid" || { tail -5 "$BLOG"; fail "the aarch64 build failed"; }
  OUT=$(cat "$EC2_RUN/out")
}

sc_ec2_launch_desc="EC2 (moto, instance booted from its user data on a Debian image): an aarch64 build launches the ARM template as a spot instance, the waiting client is told why and the boot estimate; the instance joins with the host key its user data installed, builds behind the gate, and is terminated through the API when idle (the switch never fires)"
sc_ec2_launch() {
  local power
  trap ec2_teardown EXIT
  # (idle_grace leaves time for the checks before the idle termination)
  ec2_build ec2_launch debian 15s true
  ec2_told spot
  ec2_spot "$ID"
  ec2_built_there "$ID" "$OUT"
  ec2_gate "$ID" "$IP"
  ec2_wait_ids terminated 60 >/dev/null || fail "the idle instance was not terminated"
  waitfor 10 eval 'grep "terminating EC2 instance" "$STATE/relay.log" | grep -q idle' ||
    fail "relay.log does not say the instance was terminated as idle"
  [ -z "$(ec2_ids running)" ] || fail "an instance is still running"
  waitfor 10 ec2_booter_said "$ID: stopped: moto says" || fail "the booter did not stop the terminated $ID"
  power=$(ec2_log "$ID" nix-relay-lab/power.log)
  if grep -q ' poweroff ' <<<"$power"; then fail "the switch fired while the relay was alive: $power"; fi
  grep -q ' shutdown -P +75 ' <<<"$power" || fail "no shutdown at max_lifetime + 15 min scheduled: $power"
  ec2_observed
  echo "  terminated on idle through the API, the booter stopped it; no poweroff; 'shutdown -P +75' had been scheduled"
}

sc_ec2_deadman_desc="EC2 (moto, Debian image): kill -9 the relay after a build; the dead-man switch (scaled to ${EC2_DEAD_MAN}s) powers the instance off and it ends terminated"
sc_ec2_deadman() {
  trap ec2_teardown EXIT
  ec2_build ec2_deadman debian 20s
  ec2_kill_relay
  ec2_told on-demand
  ec2_built_there "$ID" "$OUT"
  ec2_dead_man "$ID"
}

sc_ec2_nixos_desc="EC2 (moto, NixOS-like image: amazon-init's PATH, tools only in /run/current-system/sw/bin, no /usr/local): the user data sets the instance up, it builds; kill -9 the relay and its switch powers it off"
sc_ec2_nixos() {
  trap ec2_teardown EXIT
  ec2_build ec2_nixos nixos 20s
  ec2_kill_relay
  ec2_built_there "$ID" "$OUT"
  # the layout the script had to cope with
  if ec2_in "$ID" env -i PATH=/lab-nixos/amazon-init/bin /lab-nixos/pkgs/bin/dash -c \
    'command -v useradd || command -v getent || command -v pgrep || command -v poweroff'; then
    fail "amazon-init's PATH in the image has tools it should not"
  fi
  ec2_in "$ID" /lab-nixos/pkgs/bin/dash -c '! test -e /usr/local && ! test -e /usr/sbin/useradd' ||
    fail "the image is not laid out like NixOS"
  ec2_in "$ID" /lab-nixos/pkgs/bin/dash -c '! test -L /etc/nix/nix.conf && grep -qx "extra-trusted-users = nix-relay" /etc/nix/nix.conf && ! grep -q trusted /lab-nixos/etc/nix.conf' ||
    fail "nix.conf: the read-only link was not replaced by a copy with the trusted user"
  echo "  amazon-init's PATH had no useradd, getent, pgrep or poweroff; no /usr/local; nix.conf was a read-only link"
  ec2_gate "$ID" "$IP"
  ec2_dead_man "$ID"
}

sc_ec2_sweep_desc="EC2 (moto): kill -9 the relay with an instance up; nix-relay ec2 sweep --dry-run lists it, sweep terminates it and the booter stops it; none left"
sc_ec2_sweep() {
  local id bpid listed
  trap ec2_teardown EXIT
  ec2_setup ec2_sweep debian 4s
  build foreign "$SEED-ec2s" >/dev/null 2>&1 &
  bpid=$!
  id=$(ec2_wait_ids running 60) || fail "no instance launched"
  kill -9 "$(cat "$STATE/run/relay.pid")"
  kill "$bpid" 2>/dev/null; wait "$bpid" 2>/dev/null || true
  waitfor 30 ec2_booter_said "$id: booted" || fail "the booter did not boot $id"
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true
  listed=$("$RELAY_BIN" ec2 sweep --dry-run --config "$EC2_CONF") || fail "sweep --dry-run failed"
  echo "$listed" | grep -q "would terminate $id" || fail "dry run did not list $id: $listed"
  [ "$(ec2_ids running)" = "$id" ] || fail "the dry run touched the instance"
  "$RELAY_BIN" ec2 sweep --config "$EC2_CONF" | grep -q "terminated $id" || fail "sweep did not terminate $id"
  [ -z "$(ec2_ids running)" ] || fail "still running after the sweep"
  waitfor 10 ec2_booter_said "$id: stopped: moto says" || fail "the booter did not stop the swept $id"
  echo "  $id listed by --dry-run, terminated by sweep, stopped by the booter; none left"
}
