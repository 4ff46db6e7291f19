# Hostile SSH input against the relay, with the real OpenSSH client from a
# lab client namespace: other auth methods (hostile_auth), commands that are
# not the Nix ones (hostile_exec), and every SSH-layer extra — forwarding,
# agent, pty, subsystems, env, X11 (hostile_channels). Each refusal is
# checked on the client's side and, where OpenSSH shows nothing, in the
# relay's log (the refusal happens at the SSH layer, not in a session).
# Sourced by e2e.sh; helpers in lib.sh.

# rssh OUTBASE [ssh args...]: OpenSSH from the client namespace with the lab
# config (stdin closed); stdout/stderr to OUTBASE.out/.err; prints the exit status
rssh() {
  local o=$1 rc=0; shift
  timeout 60 "$HS" exec client ssh -F "$STATE/ssh_config" "$@" </dev/null >"$o.out" 2>"$o.err" || rc=$?
  echo "$rc"
}
# relay_log_since OFFSET: relay.log after byte OFFSET
relay_log_since() { tail -c +"$(( $1 + 1 ))" "$STATE/relay.log"; }
# saw_refusal OFFSET TEXT: the relay logged "refused TEXT" after OFFSET (waits up to 5 s)
saw_refusal() {
  local i
  for i in $(seq 1 50); do
    relay_log_since "$1" | grep -aqF "refused $2" && return 0
    sleep 0.1
  done
  return 1
}

sc_hostile_auth_desc="password, keyboard-interactive and unknown keys are refused; only publickey is offered"
sc_hostile_auth() {
  local m rc k=$LOGS/hostile_unknown_key o
  for m in password keyboard-interactive; do
    o=$LOGS/hostile_auth_$m
    # NumberOfPasswordPrompts=1, BatchMode=no, no tty and stdin closed: OpenSSH
    # tries the method if the server offers it and cannot answer a prompt
    rc=$(rssh "$o" -o PreferredAuthentications="$m" -o PubkeyAuthentication=no \
      -o BatchMode=no -o NumberOfPasswordPrompts=1 -o KbdInteractiveAuthentication=yes \
      -o PasswordAuthentication=yes relay 'nix-store --serve --write')
    echo "  $m -> exit $rc: $(head -1 "$o.err")"
    [ "$rc" = 255 ] || fail "$m: ssh exit status $rc, expected 255 (auth failure)"
    grep -q "Permission denied (publickey)" "$o.err" || fail "$m: expected 'Permission denied (publickey)': $(cat "$o.err")"
    [ ! -s "$o.out" ] || fail "$m: got bytes on stdout"
  done
  rm -f "$k" "$k.pub"
  ssh-keygen -q -t ed25519 -N '' -C hostile-unknown -f "$k"
  o=$LOGS/hostile_auth_key
  rc=0   # a config-free ssh, so that only this key is offered
  timeout 60 "$HS" exec client ssh -F /dev/null -p "$BASE_PORT" -i "$k" -o IdentitiesOnly=yes \
    -o IdentityAgent=none -o BatchMode=yes -o StrictHostKeyChecking=yes \
    -o UserKnownHostsFile="$STATE/known_hosts" -o HostKeyAlias=relay \
    nix@127.0.0.1 'nix-store --serve --write' </dev/null >"$o.out" 2>"$o.err" || rc=$?
  echo "  unknown key -> exit $rc: $(head -1 "$o.err")"
  [ "$rc" = 255 ] || fail "unknown key: exit status $rc, expected 255"
  grep -q "Permission denied" "$o.err" || fail "unknown key: no 'Permission denied': $(cat "$o.err")"
  relay_alive
}

sc_hostile_exec_desc="'bash', 'nix-store --serve; rm -rf /' and other command tricks exit 1 with a reason; nothing runs (canary)"
sc_hostile_exec() {
  local canary=$STATE/hostile-canary cmd rc i=0 o
  rm -f "$canary"
  for cmd in "bash" "sh -c 'touch $canary'" "nix-store --serve; touch $canary" \
             "nix-store --serve; rm -rf /" "nix-store --serve --write && touch $canary" \
             "nix-store --serve | touch $canary" "nix-store --serve \$(touch $canary)" \
             "nix-store --serve \`touch $canary\`" "nix-daemon --stdio; touch $canary" \
             "nix-store --serve --write --store /x; touch $canary" "touch $canary"; do
    i=$((i + 1)); o=$LOGS/hostile_exec_$i
    rc=$(rssh "$o" relay "$cmd")
    echo "  ssh relay $(printf %q "$cmd") -> exit $rc: $(head -1 "$o.err")"
    [ "$rc" = 1 ] || fail "$cmd: exit status $rc, expected 1"
    [ "$(grep -c . "$o.err" || true)" = 1 ] || fail "$cmd: expected one line on stderr, got: $(cat "$o.err")"
    grep -q '^nix-relay: ' "$o.err" || fail "$cmd: stderr does not start with 'nix-relay: '"
    [ ! -s "$o.out" ] || fail "$cmd: got bytes on stdout"
  done
  # a shell fed commands on stdin
  rc=0
  echo "touch $canary" | timeout 60 "$HS" exec client ssh -F "$STATE/ssh_config" -T relay \
    >"$LOGS/hostile_exec_shell.out" 2>"$LOGS/hostile_exec_shell.err" || rc=$?
  echo "  'echo touch … | ssh -T relay' (a shell) -> exit $rc: $(head -1 "$LOGS/hostile_exec_shell.err")"
  [ "$rc" = 1 ] || fail "a shell fed on stdin: exit status $rc, expected 1"
  [ ! -e "$canary" ] || fail "the canary $canary exists: a command ran"
  echo "  canary $canary was never created"
  relay_alive
}

sc_hostile_channels_desc="-L/-R forwarding, -A agent, -t pty, -s sftp, env and X11 requests are refused at the SSH layer"
sc_hostile_channels() {
  local off rc o lport=$((BASE_PORT + 91)) fwd got agent
  # -L: the forward is set up locally; a connection through it is refused
  off=$(relay_log_size)
  o=$LOGS/hostile_L
  timeout 60 "$HS" exec client ssh -F "$STATE/ssh_config" -N -o LogLevel=INFO -o ExitOnForwardFailure=yes \
    -L "127.0.0.1:$lport:127.0.0.1:$((BASE_PORT + 1))" relay </dev/null >"$o.out" 2>"$o.err" &
  fwd=$!
  for i in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$lport") 2>/dev/null && break; sleep 0.1; done
  got=$(timeout 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/$lport; head -c 4 <&3" 2>/dev/null || true)
  kill "$fwd" 2>/dev/null || true; wait "$fwd" 2>/dev/null || true
  [ "$got" != "SSH-" ] || fail "-L: a connection through the relay reached h1's sshd"
  saw_refusal "$off" "local port forwarding" || fail "-L: the relay did not log a refused direct-tcpip channel"
  grep -q "administratively prohibited" "$o.err" || fail "-L: OpenSSH did not report 'administratively prohibited': $(cat "$o.err")"
  echo "  -L: channel refused ($(grep -m1 'open failed' "$o.err"))"
  # -R: the remote forward is refused; ExitOnForwardFailure makes ssh fail
  o=$LOGS/hostile_R
  rc=$(rssh "$o" -o ExitOnForwardFailure=yes -R "127.0.0.1:0:127.0.0.1:22" relay 'nix-store --serve --write')
  echo "  -R -> exit $rc: $(grep -m1 -i 'forward' "$o.err" || head -1 "$o.err")"
  [ "$rc" = 255 ] || fail "-R: exit status $rc, expected 255 (forwarding failed)"
  grep -qi "remote port forwarding failed" "$o.err" || fail "-R: no 'remote port forwarding failed': $(cat "$o.err")"
  # -A: the agent request gets a failure (OpenSSH says nothing; the relay logs it)
  off=$(relay_log_size)
  o=$LOGS/hostile_A
  agent=$(timeout 60 "$HS" exec client sh -c "eval \$(ssh-agent -s) >/dev/null; ssh -F $STATE/ssh_config -A relay 'nix-store --serve --write'; rc=\$?; ssh-agent -k >/dev/null; echo rc=\$rc" </dev/null 2>"$o.err" || true)
  echo "  -A -> $agent"
  saw_refusal "$off" "agent forwarding" || fail "-A: the relay did not log a refused agent request"
  # -t: no pty
  o=$LOGS/hostile_t
  rc=$(rssh "$o" -tt relay 'nix-store --serve --write')
  echo "  -tt -> exit $rc: $(tr -d '\r' <"$o.err" | head -1)"
  grep -q "PTY allocation request failed" "$o.err" || fail "-tt: no 'PTY allocation request failed': $(cat "$o.err")"
  # -s sftp, and the real sftp client
  o=$LOGS/hostile_s
  rc=$(rssh "$o" -s relay sftp)
  echo "  -s sftp -> exit $rc: $(head -1 "$o.err")"
  [ "$rc" = 1 ] || fail "-s sftp: exit status $rc, expected 1"
  grep -q 'subsystem "sftp" is not served' "$o.err" || fail "-s sftp: no reason on stderr: $(cat "$o.err")"
  rc=0
  timeout 60 "$HS" exec client sftp -F "$STATE/ssh_config" -b - relay </dev/null >"$LOGS/hostile_sftp.out" 2>"$LOGS/hostile_sftp.err" || rc=$?
  echo "  sftp relay -> exit $rc: $(head -1 "$LOGS/hostile_sftp.err")"
  [ "$rc" != 0 ] || fail "sftp relay succeeded"
  # env (SetEnv) and X11 (-X, fake cookie when there is no xauth): refused requests
  off=$(relay_log_size)
  o=$LOGS/hostile_env
  rc=$(rssh "$o" -o SetEnv="LD_PRELOAD=/tmp/evil.so" relay 'nix-store --serve --write')
  saw_refusal "$off" 'environment variable "LD_PRELOAD"' || fail "SetEnv: the relay did not log a refused env request"
  echo "  SetEnv LD_PRELOAD -> refused (exit $rc)"
  off=$(relay_log_size)
  o=$LOGS/hostile_X
  rc=0
  timeout 60 "$HS" exec client env DISPLAY=127.0.0.1:0 ssh -F "$STATE/ssh_config" -X relay 'nix-store --serve --write' \
    </dev/null >"$o.out" 2>"$o.err" || rc=$?
  saw_refusal "$off" "X11 forwarding" || fail "-X: the relay did not log a refused x11 request ($(cat "$o.err"))"
  echo "  -X -> refused ($(grep -m1 -i x11 "$o.err" || echo "exit $rc"))"
  relay_alive
}
