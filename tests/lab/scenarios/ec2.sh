# EC2 builders on demand against a moto server (the EC2 API double, installed
# by tests/setup.sh): ec2_launch (an aarch64 build with no static aarch64
# backend launches an instance, which joins with its pinned host key, builds,
# and is terminated when idle) and ec2_sweep (kill -9 the relay with an
# instance up; `nix-relay ec2 sweep` lists and then terminates it).
#
# The "instance" is a lab host: moto reports a private IP nobody answers at,
# so the relay runs with the test-only `[ec2] test_address_override`, and the
# harness starts a second sshd inside h2's namespace at that address using the
# host key and the authorized key it reads back from the instance's user data
# (DescribeInstanceAttribute): the relay's pinning is really exercised.
# Each scenario swaps relay.toml for an EC2 config (h2 removed: no static
# aarch64 backend) and restores it, and the relay, when it ends.
# Sourced by e2e.sh; helpers in lib.sh.

MOTO=${NIX_RELAY_MOTO:-/opt/nix-relay-test/moto/bin/moto_server}
MOTO_PORT=$((BASE_PORT + 91))
EC2_SSHD_PORT=$((BASE_PORT + 92))
EC2_DIR=$STATE/ec2
EC2_CONF=$EC2_DIR/relay.toml

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

ec2_setup() {  # start moto, swap in the EC2 relay config, restart the relay
  [ -x "$MOTO" ] || fail "$MOTO missing (tests/setup.sh installs moto)"
  EC2_RELAY_ID=lab-$SEED-$1
  EC2_SCENARIO=$1
  mkdir -p "$EC2_DIR"
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing setsid "$MOTO" -H 127.0.0.1 -p "$MOTO_PORT" \
    >"$LOGS/$1.moto.log" 2>&1 &
  echo $! >"$EC2_DIR/moto.pid"
  for i in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$MOTO_PORT") 2>/dev/null && break; sleep 0.2; done
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
endpoint = "http://127.0.0.1:$MOTO_PORT"
budget_per_day = 5.0
relay_id = "$EC2_RELAY_ID"
ssh_key = "$STATE/keys/id_lab"
ssh_user = "root"
dead_man_switch = "10m"
reconcile_interval = "60s"
# TEST ONLY: the lab host standing in for every instance
test_address_override = "127.0.0.1:$EC2_SSHD_PORT"

[[ec2.template]]
name = "arm"
systems = ["aarch64-linux"]
instance_type = "c7g.large"
ami = "ami-12c6146b"
price_per_hour = 0.08
boot_estimate = "30s"
idle_grace = "4s"
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

ec2_teardown() {  # stop the relay (it terminates its instances), our sshd and moto; put the lab's relay config back
  "$HS" relay stop >/dev/null 2>&1 || true
  [ -f "$EC2_DIR/sshd.pid" ] && kill "$(cat "$EC2_DIR/sshd.pid")" 2>/dev/null
  [ -f "$EC2_DIR/moto.pid" ] && kill -- "-$(cat "$EC2_DIR/moto.pid")" 2>/dev/null
  rm -f "$EC2_DIR/sshd.pid" "$EC2_DIR/moto.pid"
  cp "$STATE/relay.log" "$LOGS/$EC2_SCENARIO.relay.log" 2>/dev/null || true
  "$HS" relay start >/dev/null 2>&1 || echo "ec2: the lab relay did not restart" >&2
}

# ec2_stand_in ID: make h2 answer at the override address as instance ID,
# with the host key and builder key from that instance's user data
ec2_stand_in() {
  local id=$1 d=$STATE/hosts/h2
  mkdir -p "$EC2_DIR/host/log"
  ec2_api DescribeInstanceAttribute "InstanceId=$id" Attribute=userData >"$EC2_DIR/userdata.xml"
  python3 - "$EC2_DIR" <<'PY' || fail "no keys in the user data of $id"
import base64, re, sys
d = sys.argv[1]
xml = open(f"{d}/userdata.xml").read()
script = base64.b64decode(re.search(r"<userData>\s*<value>([^<]+)</value>", xml).group(1)).decode()
open(f"{d}/user-data.sh", "w").write(script)
builder = re.search(r'^restrict,command="/usr/local/bin/nix-relay-gate" (\S+ \S+)', script, re.M).group(1)
host = re.search(r"-----BEGIN OPENSSH PRIVATE KEY-----\n.*?-----END OPENSSH PRIVATE KEY-----\n", script, re.S).group(0)
open(f"{d}/authorized_keys", "w").write(builder + "\n")
import os
fd = os.open(f"{d}/ssh_host_ed25519_key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, host.encode()); os.close(fd)
PY
  sed -e "s|^ListenAddress .*|ListenAddress 127.0.0.1:$EC2_SSHD_PORT|" \
      -e "s|^HostKey .*|HostKey $EC2_DIR/ssh_host_ed25519_key|" \
      -e "s|^AuthorizedKeysFile .*|AuthorizedKeysFile $EC2_DIR/authorized_keys|" \
      -e "s|^ForceCommand \(.*remote-cmd\) .*|ForceCommand \1 $EC2_DIR/host|" \
      "$d/ssh/sshd_config" >"$EC2_DIR/sshd_config"
  "$HS" exec h2 /usr/sbin/sshd -D -E "$LOGS/ec2.sshd.log" -f "$EC2_DIR/sshd_config" </dev/null &
  echo $! >"$EC2_DIR/sshd.pid"
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

sc_ec2_launch_desc="EC2 (moto): an aarch64 build with no static aarch64 backend launches the ARM template; the instance joins with its pinned host key, builds, and is terminated when idle"
sc_ec2_launch() {
  local s=$SEED-ec2 id out bpid
  trap ec2_teardown EXIT
  ec2_setup ec2_launch
  build foreign "$s" >"$EC2_DIR/out" &
  bpid=$!
  id=$(ec2_wait_ids running 60) || fail "no instance launched (relay.log: $(grep -i ec2 "$STATE/relay.log" | tail -3))"
  echo "  launched $id (moto); standing in with h2 on 127.0.0.1:$EC2_SSHD_PORT"
  ec2_stand_in "$id"
  wait "$bpid" || { tail -5 "$BLOG"; fail "the aarch64 build failed"; }
  out=$(cat "$EC2_DIR/out")
  [ "$(hosts_with "$out")" = h2 ] || fail "output not built on the stand-in (h2): $(hosts_with "$out")"
  grep -q "EC2 instance joined as a backend" "$STATE/relay.log" || fail "relay.log has no join"
  grep -q "^HostKey $EC2_DIR" "$EC2_DIR/sshd_config" || fail "stand-in not using the user data's host key"
  ec2_wait_ids terminated 60 >/dev/null || fail "the idle instance was not terminated"
  sleep 1
  grep "terminating EC2 instance" "$STATE/relay.log" | grep -q 'idle' ||
    fail "relay.log does not say the instance was terminated as idle"
  [ -z "$(ec2_ids running)" ] || fail "an instance is still running"
  ec2_observed
  echo "  built $out on ec2-arm-0 (stand-in h2), then terminated on idle"
}

sc_ec2_sweep_desc="EC2 (moto): kill -9 the relay with an instance up; nix-relay ec2 sweep --dry-run lists it, sweep terminates it; none left"
sc_ec2_sweep() {
  local s=$SEED-ec2s id bpid listed
  trap ec2_teardown EXIT
  ec2_setup ec2_sweep
  build foreign "$s" >/dev/null 2>&1 &
  bpid=$!
  id=$(ec2_wait_ids running 60) || fail "no instance launched"
  kill -9 "$(cat "$STATE/run/relay.pid")"
  kill "$bpid" 2>/dev/null; wait "$bpid" 2>/dev/null || true
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true
  listed=$("$RELAY_BIN" ec2 sweep --dry-run --config "$EC2_CONF") || fail "sweep --dry-run failed"
  echo "$listed" | grep -q "would terminate $id" || fail "dry run did not list $id: $listed"
  [ "$(ec2_ids running)" = "$id" ] || fail "the dry run touched the instance"
  "$RELAY_BIN" ec2 sweep --config "$EC2_CONF" | grep -q "terminated $id" || fail "sweep did not terminate $id"
  [ -z "$(ec2_ids running)" ] || fail "still running after the sweep"
  echo "  $id listed by --dry-run, terminated by sweep; none left"
}
