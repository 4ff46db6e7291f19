# Build logs: a builder writing 1 GiB without a newline (drv/logflood.nix),
# once over ssh:// and once over ssh-ng:// from the client. The relay must
# stay small (VmHWM, reset before each build, under 64 MiB) and stop the
# build at the default [limits] max_log_size (64 MiB): the client's build
# fails (ssh:// clients see Nix's LogLimitExceeded wording) and relay.log
# shows the relay stopped it. With ssh-ng:// backends (LAB_BACKEND_PROTO)
# the daemon's one 1 GiB message is cut to 1 MiB on reading instead, so the
# build succeeds with a note; memory is checked the same way.

FLOOD_MIB=1024
FLOOD_HWM_MIB=64

# flood_build PROTO SEED: one flood build from the client over PROTO://relay;
# checks its outcome and the relay's peak RSS during it
flood_build() {
  local proto=$1 seed=$2 b rc=0 hwm pid out off
  b=$(sed "s|^ssh://|$proto://|" "$STATE/machines-relay")
  off=$(relay_log_size)
  pid=$(cat "$STATE/run/relay.pid")
  echo 5 > "/proc/$pid/clear_refs" || fail "cannot reset the relay's VmHWM"
  echo "+ [$proto] nix-build logflood.nix -A flood --arg mib $FLOOD_MIB (log: $BLOG)" >&2
  out=$(client nix-build "$DRV/logflood.nix" -A flood --arg mib "$FLOOD_MIB" --argstr seed "$seed" \
    --no-out-link --max-jobs 0 --builders "$b" 2>"$BLOG") || rc=$?
  hwm=$(relay_kib VmHWM)
  echo "  $proto: nix-build exit $rc, client log $(( $(stat -c %s "$BLOG") >> 20 )) MiB, relay VmHWM $((hwm / 1024)) MiB" >&2
  [ "$hwm" -le $((FLOOD_HWM_MIB * 1024)) ] || fail "$proto: relay VmHWM $((hwm / 1024)) MiB > $FLOOD_HWM_MIB MiB"
  grep -aq 'xxxxxxxxxxxxxxxx' "$BLOG" || fail "$proto: no flood text reached the client"
  if [ "${LAB_BACKEND_PROTO:-ssh}" = ssh-ng ]; then
    [ "$rc" = 0 ] || fail "$proto: the build failed: $(grep -a -m1 error: "$BLOG" | cut -c1-300)"
    # A Nix 2.8 ssh-ng:// client's hook re-sends each log piece as an
    # `@nix` JSON line that its parent cannot parse ("bad JSON log message
    # from builder"), so only an ssh:// client shows the note.
    if [ "$proto" = ssh ]; then
      grep -aq 'more bytes of this log line dropped' "$BLOG" || fail "$proto: no note that the long line was cut"
    fi
  else
    [ "$rc" != 0 ] || fail "$proto: a build with $FLOOD_MIB MiB of log succeeded (max_log_size not enforced): $out"
    tail -c +"$((off + 1))" "$STATE/relay.log" | grep -a "drv=\"lab-logflood-${FLOOD_MIB}m\"" \
      | grep -aq 'killed after writing more than 67108864 bytes of log output' \
      || fail "$proto: the relay did not stop the build at max_log_size (no LogLimitExceeded in relay.log)"
    # ssh:// clients get the reason on stderr; a Nix 2.8 ssh-ng:// hook only
    # says that the build failed
    if [ "$proto" = ssh ]; then
      grep -aq 'killed after writing more than 67108864 bytes of log output' "$BLOG" \
        || fail "$proto: no LogLimitExceeded message: $(grep -a -m1 error: "$BLOG" | cut -c1-300)"
    fi
    echo "  $proto: client: $(grep -a -m1 'error:' "$BLOG" | cut -c1-200)" >&2
  fi
  rm -f "$BLOG"
  relay_alive
}

sc_log_flood_relay=1
sc_log_flood_desc="a builder writes 1 GiB of log without a newline (ssh:// and ssh-ng:// clients): relay VmHWM <= 64 MiB, the build stops at max_log_size"
sc_log_flood() {
  relay_kib VmHWM >/dev/null || fail "no VmHWM for the relay"
  flood_build ssh "$SEED-flood-ssh"
  flood_build ssh-ng "$SEED-flood-ng"
}
