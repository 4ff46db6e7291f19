# Substitution (issue 16): a build whose inputs are in a binary cache. The
# client has the lab's upstream cache (tests/lab/upstream.sh, the stand-in for
# cache.nixos.org) and `builders-use-substitutes`; the relay has it as its
# `[cache] upstream`; the backends have only the relay's HTTP cache as their
# substituter (e2e.sh sets it). Sourced by e2e.sh; helpers in lib.sh.

# nar_bytes DIRECTION: the relay's nix_relay_nar_bytes_total{direction=...}
nar_bytes() { prom "nix_relay_nar_bytes_total{direction=\"$1\"}"; }
mib_of() { echo $(( $1 / 1048576 )); }

sc_sub_desc="builders substitute: the client uploads only what no cache has, the backend gets the inputs from the relay's cache (pull-through to upstream), a second backend gets them with no second upstream fetch"
sc_sub() {
  local s=$SEED-sub up key first out out2 c0 b0 s0 u0 c1 b1 s1 u1 b2 s2 u2
  [ -f "$STATE/upstream" ] || skip "no upstream cache served (tests/lab/upstream.sh ensure: tests/setup.sh does it)"
  http_up_or_skip
  up=$(sed -n 1p "$STATE/upstream"); key=$(sed -n 2p "$STATE/upstream")
  # e2e.sh gave each backend the relay's HTTP cache as its only substituter
  grep -q "^substituters = $HTTP_URL" "$STATE/hosts/h1/etc-nix/nix.conf" || fail "h1's nix.conf does not have the relay's cache as its substituter"
  trap lab_config EXIT
  OFF=$(relay_log_size)
  c0=$(nar_bytes from_client) b0=$(nar_bytes to_backend) s0=$(nar_bytes backend_substituted) u0=$(prom nix_relay_upstream_nar_bytes_total)
  out=$(build_in client "$BLOG" "$BUILDERS" consumerPart "$s" \
    --option substituters "$up" --option trusted-public-keys "$key" \
    --option builders-use-substitutes true) || { tail -5 "$BLOG"; fail "nix-build -A consumerPart failed"; }
  client_valid "$out"
  first=$(built_on lab-consumer-part | tr -d ' ')
  [ -n "$first" ] || fail "relay.log names no backend that built lab-consumer-part"
  c1=$(nar_bytes from_client) b1=$(nar_bytes to_backend) s1=$(nar_bytes backend_substituted) u1=$(prom nix_relay_upstream_nar_bytes_total)
  echo "  first build on $first: client uploaded $((c1 - c0)) B, pushed to the backend over SSH $((b1 - b0)) B, the backend substituted $(mib_of $((s1 - s0))) MiB, the relay fetched $(mib_of $((u1 - u0))) MiB from upstream"
  # 33 upstream paths, ~212 MiB; busybox (1.1 MiB) may go over SSH if no build used it yet
  [ $((c1 - c0)) -lt 2097152 ] || fail "the client uploaded $((c1 - c0)) bytes: more than what no cache has"
  [ $((b1 - b0)) -lt 2097152 ] || fail "$((b1 - b0)) bytes pushed to the backend over SSH: the backend did not substitute"
  [ $((s1 - s0)) -gt 209715200 ] || fail "the backend substituted only $((s1 - s0)) bytes (expected the 212 MiB closure)"
  [ $((u1 - u0)) -gt 209715200 ] || fail "the relay fetched only $((u1 - u0)) bytes from upstream"
  grep -q "the backend substituted" "$BLOG" || fail "the client's log does not say the backend substituted"
  # a sibling (another seed) on another backend: the shared inputs come from
  # the relay's cache, with no second upstream fetch
  OFF=$(relay_log_size)
  edit_backends "drop('$first')"
  echo "  without $first: $(reload_relay)"
  out2=$(build_in client2 "$LOGS/sub.2.nix.log" "$BUILDERS" consumerPart "$s-2" \
    --option substituters "$up" --option trusted-public-keys "$key" \
    --option builders-use-substitutes true) || { tail -5 "$LOGS/sub.2.nix.log"; fail "the sibling build failed"; }
  in_ns client2 nix-store --verify-path "$out2" >&2 || fail "client2: verify-path $out2 failed"
  b2=$(nar_bytes to_backend) s2=$(nar_bytes backend_substituted) u2=$(prom nix_relay_upstream_nar_bytes_total)
  echo "  sibling on $(built_on lab-consumer-part): pushed $((b2 - b1)) B over SSH, substituted $(mib_of $((s2 - s1))) MiB from the relay, upstream $((u2 - u1)) B"
  [ $((s2 - s1)) -gt 209715200 ] || fail "the second backend substituted only $((s2 - s1)) bytes"
  [ $((b2 - b1)) -lt 2097152 ] || fail "$((b2 - b1)) bytes pushed over SSH to the second backend"
  [ $((u2 - u1)) = 0 ] || fail "the relay fetched $((u2 - u1)) bytes from upstream again"
}
