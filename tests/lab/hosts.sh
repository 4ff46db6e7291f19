#!/usr/bin/env bash
# nix-relay e2e lab "hosts" on one machine (adapted from the shared remote-builder
# lab). Each backend hN is a private mount namespace in which a per-host
# directory is bind-mounted over /nix (own store + db) and /etc/nix (own
# nix.conf), running its own sshd on 127.0.0.1:$((LAB_BASE_PORT+N)) with a
# ForceCommand that logs every command to hosts/hN/log/commands.log.
# "Client" namespaces client, client2, .. clientM (M = LAB_CLIENTS, default 3;
# each its own /nix and nix.conf, no sshd) run the stock Nix client.
# The relay under test runs in the ROOT mount namespace on 127.0.0.1:$LAB_BASE_PORT.
# Only processes started here are stopped (PID files + cmdline check, plus
# leftovers inside the lab's own mount namespaces).
#
#   hosts.sh up N [--fresh]   (re)start backends h1..hN + client namespaces
#                             client, client2..client$LAB_CLIENTS
#                             (--fresh: empty all lab stores, the relay's included)
#   hosts.sh down             stop everything (relay, hosts, client; stores kept)
#   hosts.sh wipe             down + delete all state
#   hosts.sh exec NAME CMD    run CMD inside NAME's namespace (client|client2..|h1|h2..)
#   hosts.sh reset NAME       empty NAME's store in place
#   hosts.sh capture NAME|all on|off   record protocol bytes of NAME's ssh sessions
#   hosts.sh relay start|stop|status   the relay (RELAY_BIN serve --config STATE/relay.toml)
#   hosts.sh status
#
# Env: LAB_STATE (/tmp/nix-relay-lab), LAB_BASE_PORT (2400: relay; host N gets
# base+N), LAB_SANDBOX (true|false), LAB_H<N>_FEATURES / LAB_H<N>_PLATFORMS
# (space-separated) / LAB_H<N>_MAXJOBS, LAB_H<N>_NIX / LAB_CLIENT_NIX /
# LAB_CLIENT<M>_NIX (2.8 = the host's Nix, default; 2.26 or 2.34: a Debian root
# of that Nix from tests/lab/roots.sh, pivot_root), LAB_RELAY_USER (nix: ssh user for
# the relay alias), LAB_CLIENTS (3: number of client namespaces), RELAY_BIN
# (default ${CARGO_TARGET_DIR:-REPO/target}/debug/nix-relay).
set -euo pipefail
LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LAB_DIR/../.." && pwd)
STATE=${LAB_STATE:-/tmp/nix-relay-lab}
BASE_PORT=${LAB_BASE_PORT:-2400}
SANDBOX=${LAB_SANDBOX:-true}
RELAY_BIN=${RELAY_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/debug/nix-relay}
NCLIENTS=${LAB_CLIENTS:-3}
RUN=$STATE/run
export LAB_STATE=$STATE LAB_BASE_PORT=$BASE_PORT
[[ "$NCLIENTS" =~ ^[0-9]+$ ]] && [ "$NCLIENTS" -ge 1 ] || { echo "hosts.sh: LAB_CLIENTS must be >= 1" >&2; exit 1; }

die() { echo "hosts.sh: $*" >&2; exit 1; }

# ---- process tracking -------------------------------------------------------
# $RUN/<name>.pid holds the PID; $RUN/<name>.tag a string that must appear in
# /proc/PID/cmdline (guards against PID reuse); $RUN/<name>.ns the mount
# namespace the lab created for it (hosts/client only).
alive() {  # alive NAME -> 0 if our process for NAME is running
  local pf=$RUN/$1.pid tf=$RUN/$1.tag pid tag cmd
  [ -f "$pf" ] && [ -f "$tf" ] || return 1
  pid=$(cat "$pf"); tag=$(cat "$tf")
  [ -r "/proc/$pid/cmdline" ] || return 1
  cmd=$(tr "\0" " " < "/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"$tag"* ]]
}

ns_pids() {  # ns_pids NSLINK -> pids of processes in that mount namespace
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$1" ] && echo "${p#/proc/}"
  done
  return 0
}

stop_one() {
  local name=$1 pid i ns="" group=0 left
  [ -f "$RUN/$name.ns" ] && ns=$(cat "$RUN/$name.ns")
  [ -f "$RUN/$name.group" ] && group=1
  if alive "$name"; then
    pid=$(cat "$RUN/$name.pid")
    if [ "$group" = 1 ]; then kill -TERM -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    else kill "$pid" 2>/dev/null || true; fi
    for i in $(seq 1 60); do alive "$name" || break; sleep 0.05; done
    if alive "$name"; then
      echo "hosts.sh: $name (pid $pid) ignored SIGTERM; SIGKILL" >&2
      if [ "$group" = 1 ]; then kill -KILL -- "-$pid" 2>/dev/null || true; else kill -9 "$pid" 2>/dev/null || true; fi
    fi
  fi
  # leftovers in the namespace we created (ssh sessions, nix-store --serve, builds)
  if [ -n "$ns" ] && [ "$ns" != "$(readlink /proc/1/ns/mnt)" ] && [ "$ns" != "$(readlink /proc/$$/ns/mnt)" ]; then
    left=$(ns_pids "$ns")
    if [ -n "$left" ]; then
      # shellcheck disable=SC2086
      kill $left 2>/dev/null || true
      sleep 0.2
      left=$(ns_pids "$ns")
      # shellcheck disable=SC2086
      [ -z "$left" ] || kill -9 $left 2>/dev/null || true
    fi
  fi
  rm -f "$RUN/$name.pid" "$RUN/$name.tag" "$RUN/$name.ns" "$RUN/$name.group" "$RUN/$name.root"
}

cmd_down() {
  [ -d "$RUN" ] || return 0
  local f
  stop_one relay
  for f in "$RUN"/*.pid; do
    [ -e "$f" ] || continue
    stop_one "$(basename "$f" .pid)"
  done
}

# ---- setup ------------------------------------------------------------------
ensure_keys() {
  mkdir -p "$STATE/keys"
  # the lab client's key (client -> relay, client -> hN in direct mode, relay -> hN)
  [ -f "$STATE/keys/id_lab" ] || ssh-keygen -q -t ed25519 -N '' -C nix-relay-lab-client -f "$STATE/keys/id_lab"
  # the relay's SSH host key (passed to the relay in relay.toml, pinned in known_hosts)
  [ -f "$STATE/keys/relay_host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C nix-relay-lab-relay -f "$STATE/keys/relay_host_ed25519"
  # a second client key, "eve": an UNtrusted client of the relay (ssh alias relay-eve)
  [ -f "$STATE/keys/id_eve" ] || ssh-keygen -q -t ed25519 -N '' -C nix-relay-lab-eve -f "$STATE/keys/id_eve"
}

# client namespace names: client client2 .. client$NCLIENTS
client_names() { local i; echo client; for i in $(seq 2 "$NCLIENTS"); do echo "client$i"; done; }

host_features() {  # defaults: h1 has big-parallel, h2 also "is" aarch64-linux
  local i=$1 v
  v="LAB_H${i}_FEATURES"; if [ -n "${!v:-}" ]; then echo "${!v}"; return; fi
  if [ "$i" = 1 ]; then echo "benchmark big-parallel"; else echo "benchmark"; fi
}
host_platforms() {  # extra platforms besides x86_64-linux
  local i=$1 v
  v="LAB_H${i}_PLATFORMS"; if [ -n "${!v+x}" ]; then echo "${!v}"; return; fi
  if [ "$i" = 2 ]; then echo "aarch64-linux"; else echo ""; fi
}
host_maxjobs() { local v="LAB_H${1}_MAXJOBS"; echo "${!v:-2}"; }

write_nix_conf() {  # write_nix_conf FILE ROLE FEATURES PLATFORMS MAXJOBS
  cat > "$1" <<CONF
# nix-relay lab $2 (generated by tests/lab/hosts.sh)
substituters =
experimental-features = nix-command
sandbox = $SANDBOX
sandbox-fallback = false
# no build users: hosts share /etc/passwd but not /nix/var/nix/userpool, so
# shared nixbld uids would let one host kill another host's builds
build-users-group =
trusted-users = root
max-jobs = $5
cores = 1
connect-timeout = 5
CONF
  [ -z "$3" ] || echo "system-features = $3" >> "$1"
  [ -z "$4" ] || echo "extra-platforms = $4" >> "$1"
}

# ns_nix NAME: the Nix version NAME runs: LAB_H<N>_NIX for hN, LAB_<NAME>_NIX
# (LAB_CLIENT_NIX, LAB_CLIENT2_NIX, ..) for a client namespace; 2.8 (the host's) by default
ns_nix() {
  local v
  v="LAB_$(echo "$1" | tr '[:lower:]' '[:upper:]')_NIX"
  echo "${!v:-2.8}"
}
# ns_root NAME: the root dir of NAME's modern Nix (tests/lab/roots.sh), empty for 2.8
ns_root() {
  local v; v=$(ns_nix "$1")
  [ "$v" = 2.8 ] || "$LAB_DIR/roots.sh" dir "$v" || die "$1: no root for Nix $v"
}

start_ns() {  # start_ns NAME DIR TAG CMD... : namespace with DIR/nix on /nix, DIR/etc-nix on /etc/nix
  # With a modern Nix (ns_nix NAME != 2.8) the namespace is chrooted into that
  # Nix's root (roots.sh; pivot_root), with the lab state and tests/lab dirs
  # bound at the same paths inside it, /proc and /dev mounted.
  local name=$1 d=$2 tag=$3 i ns="" root=""; shift 3
  root=$(ns_root "$name")
  rm -f "$RUN/$name.root"
  if [ -z "$root" ]; then
    unshare --mount --propagation private -- /bin/sh -c '
      d=$1; shift
      mount --bind "$d/nix" /nix && mount --bind "$d/etc-nix" /etc/nix && exec "$@"' sh "$d" "$@" \
      </dev/null >>"$d/log/ns.stderr" 2>&1 &
  else
    echo "$root" > "$RUN/$name.root"
    mkdir -p "$root$STATE" "$root$LAB_DIR" "$root/.oldroot"
    # pivot_root, not chroot: a chrooted process may not create user
    # namespaces, which the sandbox of Nix >= 2.2x needs
    unshare --mount --propagation private -- /bin/sh -c '
      d=$1 r=$2 st=$3 lab=$4; shift 4
      mount --bind "$r" "$r" && mount --bind "$d/nix" "$r/nix" && mount --bind "$d/etc-nix" "$r/etc/nix" &&
        mount --bind "$st" "$r$st" && mount --bind "$lab" "$r$lab" &&
        mount -t proc proc "$r/proc" && mount --rbind /dev "$r/dev" &&
        cd "$r" && pivot_root . .oldroot && cd / && umount -l /.oldroot &&
        exec "$@"' sh "$d" "$root" "$STATE" "$LAB_DIR" "$@" \
      </dev/null >>"$d/log/ns.stderr" 2>&1 &
  fi
  local pid=$!
  echo "$pid" > "$RUN/$name.pid"
  echo "$tag" > "$RUN/$name.tag"
  # remember the namespace (once the bind mounts are done and the command runs)
  local mine; mine=$(readlink /proc/$$/ns/mnt)
  for i in $(seq 1 200); do
    ns=$(readlink "/proc/$pid/ns/mnt" 2>/dev/null || true)
    if [ -n "$ns" ] && [ "$ns" != "$mine" ] && alive "$name"; then break; fi
    ns=""
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.02
  done
  [ -n "$ns" ] || { tail -5 "$d/log/ns.stderr" >&2 || true; die "$name did not start"; }
  echo "$ns" > "$RUN/$name.ns"
}

setup_host() {  # setup_host N
  local i=$1 name=h$1 d=$STATE/hosts/h$1 port=$((BASE_PORT + $1))
  mkdir -p "$d/nix" "$d/etc-nix" "$d/ssh" "$d/log" "$d/transcripts" "$d/home"
  write_nix_conf "$d/etc-nix/nix.conf" "backend $name" "$(host_features "$i")" \
    "$(host_platforms "$i")" "$(host_maxjobs "$i")"
  [ -f "$d/ssh/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C "nix-relay-lab-$name" -f "$d/ssh/ssh_host_ed25519_key"
  cp "$STATE/keys/id_lab.pub" "$d/ssh/authorized_keys"
  local usepam=no root
  root=$(ns_root "$name")
  # with UsePAM no, sshd refuses accounts whose password field starts with '!'
  if grep '^root:' "$root/etc/shadow" | cut -d: -f2 | grep -q '^!'; then usepam=yes; fi
  cat > "$d/ssh/sshd_config" <<CONF
# nix-relay lab backend $name (generated by tests/lab/hosts.sh)
ListenAddress 127.0.0.1:$port
HostKey $d/ssh/ssh_host_ed25519_key
PidFile none
AuthorizedKeysFile $d/ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM $usepam
StrictModes no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTTY yes
MaxStartups 200:30:400
MaxSessions 100
LogLevel VERBOSE
# per-host HOME: root's login shell (bash) sources ~/.bashrc for ssh commands,
# which can be slow and corrupts the protocol if it prints anything
SetEnv HOME=$d/home
ForceCommand $LAB_DIR/bin/remote-cmd $d
CONF
  # OpenSSH >= 9.8 (modern roots) penalises sources whose sessions end badly or
  # that connect without authenticating (port probes, killed backends): off
  [ -z "$root" ] || echo "PerSourcePenalties no" >> "$d/ssh/sshd_config"
  # (a modern root's sshd checks its config inside its namespace: errors in log/sshd.log)
  [ -n "$root" ] || /usr/sbin/sshd -t -f "$d/ssh/sshd_config" || die "bad sshd config for $name"
  start_ns "$name" "$d" "$d/ssh/sshd_config" \
    /usr/sbin/sshd -D -E "$d/log/sshd.log" -f "$d/ssh/sshd_config"
}

setup_client() {  # setup_client NAME (client, client2, ..): own /nix + nix.conf, no sshd
  local name=${1:-client} d=$STATE/${1:-client}
  mkdir -p "$d/nix" "$d/etc-nix" "$d/log"
  write_nix_conf "$d/etc-nix/nix.conf" "$name" "" "" 1
  start_ns "$name" "$d" "nix-relay-lab-ns:$d" /bin/bash -c 'exec -a "$0" sleep infinity' "nix-relay-lab-ns:$d"
}

wait_port() {  # wait_port PORT [TRIES of 0.05 s]
  local port=$1 n=${2:-100} i
  for i in $(seq 1 "$n"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

write_ssh_config() {  # needs $STATE/hosts/h1..hN host keys
  local n=$1 i port pub plats feats b64 relaypub
  : > "$STATE/known_hosts"
  relaypub=$(cut -d' ' -f1,2 "$STATE/keys/relay_host_ed25519.pub")
  echo "relay $relaypub" >> "$STATE/known_hosts"
  echo "[127.0.0.1]:$BASE_PORT $relaypub" >> "$STATE/known_hosts"
  echo "relay-eve $relaypub" >> "$STATE/known_hosts"
  {
    echo "# nix-relay lab ssh config (generated by tests/lab/hosts.sh)."
    echo "# Use: ssh -F $STATE/ssh_config relay|h1..   Nix: NIX_SSHOPTS='-F $STATE/ssh_config'"
    echo "Host relay"
    echo "  HostName 127.0.0.1"
    echo "  Port $BASE_PORT"
    echo "  User ${LAB_RELAY_USER:-nix}"
    echo "  HostKeyAlias relay"
    echo "# the relay again, as the untrusted client eve (keys/id_eve only)"
    echo "Host relay-eve"
    echo "  HostName 127.0.0.1"
    echo "  Port $BASE_PORT"
    echo "  User eve"
    echo "  HostKeyAlias relay-eve"
    echo "  IdentityFile $STATE/keys/id_eve"
  } > "$STATE/ssh_config"
  : > "$STATE/machines"; : > "$STATE/machines-ng"
  for i in $(seq 1 "$n"); do
    port=$((BASE_PORT + i))
    pub=$(cut -d' ' -f1,2 "$STATE/hosts/h$i/ssh/ssh_host_ed25519_key.pub")
    echo "h$i $pub" >> "$STATE/known_hosts"
    echo "[127.0.0.1]:$port $pub" >> "$STATE/known_hosts"
    printf 'Host h%s\n  HostName 127.0.0.1\n  Port %s\n  User root\n  HostKeyAlias h%s\n' "$i" "$port" "$i" >> "$STATE/ssh_config"
    plats=x86_64-linux; for p in $(host_platforms "$i"); do plats="$plats,$p"; done
    feats=$(host_features "$i" | tr ' ' ','); [ -n "$feats" ] || feats=-
    b64=$(printf '%s' "$pub" | base64 -w0)
    echo "ssh://h$i $plats $STATE/keys/id_lab $(host_maxjobs "$i") 1 $feats - $b64" >> "$STATE/machines"
    echo "ssh-ng://h$i $plats $STATE/keys/id_lab $(host_maxjobs "$i") 1 $feats - $b64" >> "$STATE/machines-ng"
  done
  cat >> "$STATE/ssh_config" <<CONF
Host * !relay-eve
  IdentityFile $STATE/keys/id_lab
Host *
  User root
  IdentitiesOnly yes
  UserKnownHostsFile $STATE/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ControlMaster no
  LogLevel ERROR
CONF
  # the single builder line a client uses to reach the relay
  b64=$(printf '%s' "$relaypub" | base64 -w0)
  echo "ssh://relay x86_64-linux,aarch64-linux - 4 1 benchmark,big-parallel - $b64" > "$STATE/machines-relay"
  echo "ssh-ng://relay x86_64-linux,aarch64-linux - 4 1 benchmark,big-parallel - $b64" > "$STATE/machines-relay-ng"
  echo "ssh://relay-eve x86_64-linux,aarch64-linux - 4 1 benchmark,big-parallel - $b64" > "$STATE/machines-relay-eve"
}

cmd_up() {
  local n=2 fresh=0 i port a c
  for a in "$@"; do
    case $a in --fresh) fresh=1;; *) n=$a;; esac
  done
  [ "$(id -u)" = 0 ] || die "must run as root"
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] || die "usage: hosts.sh up N [--fresh]"
  [ -x /usr/sbin/sshd ] && command -v nix-store >/dev/null || die "run tests/setup.sh first"
  [ -x "$LAB_DIR/drv/bb/bin/busybox" ] || die "tests/lab/drv/bb missing: run tests/setup.sh"
  mkdir -p /nix /etc/nix /run/sshd "$RUN"
  chmod 0755 /run/sshd
  cmd_down
  if [ "$fresh" = 1 ]; then
    for d in "$STATE"/hosts/*/ "$STATE"/client/ "$STATE"/client[0-9]*/; do
      [ -d "$d" ] && reset_dir "${d%/}"
    done
    # the relay's store too (its state dir; keys/ are kept)
    rm -rf "$STATE/relay-state"
  fi
  ensure_keys
  for i in $(seq 1 "$n"); do setup_host "$i"; done
  write_ssh_config "$n"
  for c in $(client_names); do setup_client "$c"; done
  cat > "$STATE/env.sh" <<CONF
# source me: nix-relay lab environment (generated by tests/lab/hosts.sh)
export LAB_DIR=$LAB_DIR
export LAB_STATE=$STATE
export LAB_BASE_PORT=$BASE_PORT
export NIX_SSHOPTS="-F $STATE/ssh_config"
CONF
  for i in $(seq 1 "$n"); do
    port=$((BASE_PORT + i))
    wait_port "$port" || { tail -5 "$STATE/hosts/h$i/log/sshd.log" "$STATE/hosts/h$i/log/ns.stderr" >&2 || true; die "h$i did not listen on $port"; }
  done
  echo "$n" > "$STATE/nhosts"
  cmd_status
}

# ---- relay ------------------------------------------------------------------
relay_start() {
  [ -f "$STATE/nhosts" ] || die "lab is not up (hosts.sh up N first)"
  [ -x "$RELAY_BIN" ] || die "relay binary not found: $RELAY_BIN (cargo build, or set RELAY_BIN)"
  stop_one relay
  "$LAB_DIR/relay-config.sh" >/dev/null
  if (exec 3<>"/dev/tcp/127.0.0.1/$BASE_PORT") 2>/dev/null; then
    die "port $BASE_PORT is already in use (not by this lab's relay)"
  fi
  : > "$STATE/relay.log"
  echo "$(date +%FT%T) starting: $RELAY_BIN serve --config $STATE/relay.toml" >> "$STATE/relay.log"
  # own process group (setsid) so that stopping it also stops its children
  RUST_BACKTRACE=1 setsid "$RELAY_BIN" serve --config "$STATE/relay.toml" \
    </dev/null >>"$STATE/relay.log" 2>&1 &
  local pid=$! i
  echo "$pid" > "$RUN/relay.pid"
  echo "$STATE/relay.toml" > "$RUN/relay.tag"
  touch "$RUN/relay.group"
  for i in $(seq 1 200); do   # up to 10 s
    (exec 3<>"/dev/tcp/127.0.0.1/$BASE_PORT") 2>/dev/null && { echo "relay: up pid=$pid 127.0.0.1:$BASE_PORT log=$STATE/relay.log"; return 0; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "hosts.sh: relay did not listen on 127.0.0.1:$BASE_PORT; last lines of $STATE/relay.log:" >&2
  tail -20 "$STATE/relay.log" >&2 || true
  stop_one relay
  exit 1
}

cmd_relay() {
  case ${1:-} in
    start) relay_start;;
    stop) stop_one relay;;
    status) if alive relay; then echo "relay: up pid=$(cat "$RUN/relay.pid")"; else echo "relay: down"; return 1; fi;;
    *) die "usage: hosts.sh relay start|stop|status";;
  esac
}

cmd_status() {
  local f name s
  echo "state:    $STATE   (source $STATE/env.sh)"
  echo "ssh:      ssh -F $STATE/ssh_config relay|hN     NIX_SSHOPTS='-F $STATE/ssh_config'"
  echo "machines: $STATE/machines (direct ssh://hN)   $STATE/machines-relay (ssh://relay)"
  for f in "$RUN"/*.pid; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .pid)
    if alive "$name"; then s=up; else s=DOWN; fi
    case $name in
      h*) echo "  $name $s nix=$(ns_nix "$name") pid=$(cat "$f") root@127.0.0.1:$((BASE_PORT + ${name#h})) store=$STATE/hosts/$name/nix features=[$(host_features "${name#h}")] extra-platforms=[$(host_platforms "${name#h}")] max-jobs=$(host_maxjobs "${name#h}")";;
      relay) echo "  relay $s pid=$(cat "$f") 127.0.0.1:$BASE_PORT config=$STATE/relay.toml log=$STATE/relay.log";;
      *)  echo "  $name $s nix=$(ns_nix "$name") pid=$(cat "$f") store=$STATE/$name/nix";;
    esac
  done
}

cmd_exec() {
  local name=${1:?usage: hosts.sh exec NAME CMD...}; shift
  alive "$name" || die "$name is not running"
  local wd=(--wd="$PWD")
  # a modern Nix's namespace has its own root: enter it too (working dir: /)
  [ ! -f "$RUN/$name.root" ] || wd=(-r -w)
  exec nsenter -t "$(cat "$RUN/$name.pid")" -m "${wd[@]}" -- \
    env NIX_SSHOPTS="-F $STATE/ssh_config" LAB_STATE="$STATE" LAB_DIR="$LAB_DIR" "$@"
}

reset_dir() {  # empty DIR/nix (and DIR/home) in place
  local d=$1
  [ -d "$d/nix" ] || return 0
  chmod -R u+w "$d/nix" 2>/dev/null || true
  find "$d/nix" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
  if [ -d "$d/home" ]; then find "$d/home" -mindepth 1 -maxdepth 1 -exec rm -rf {} +; fi
}

cmd_reset() {  # empty NAME's store in place (the namespace's bind mount keeps the dir)
  local name=${1:?usage: hosts.sh reset NAME} d
  case $name in client|client[0-9]*) d=$STATE/$name;; *) d=$STATE/hosts/$name;; esac
  [ -d "$d/nix" ] || die "no such host: $name"
  reset_dir "$d"
}

cmd_capture() {
  local which=${1:?usage: hosts.sh capture NAME|all on|off} onoff=${2:?on|off} d
  for d in "$STATE"/hosts/*/; do
    d=${d%/}
    [ "$which" = all ] || [ "$(basename "$d")" = "$which" ] || continue
    if [ "$onoff" = on ]; then touch "$d/capture"; else rm -f "$d/capture"; fi
    echo "capture $onoff: $(basename "$d") -> $d/transcripts"
  done
}

case ${1:-} in
  up) shift; cmd_up "$@";;
  down) cmd_down;;
  wipe) cmd_down; [ -d "$STATE/hosts" ] && for d in "$STATE"/hosts/*/ "$STATE"/client/ "$STATE"/client[0-9]*/; do [ -d "$d" ] && reset_dir "${d%/}"; done; rm -rf "$STATE";;
  status) cmd_status;;
  reset) shift; cmd_reset "$@";;
  exec) shift; cmd_exec "$@";;
  capture) shift; cmd_capture "$@";;
  relay) shift; cmd_relay "$@";;
  *) sed -n '2,30p' "$0"; exit 1;;
esac
