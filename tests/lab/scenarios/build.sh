# Build scenario c: a foreign system (real arm64 code under qemu-user,
# tests/lab/aarch64.sh) routed to the one backend with it. The
# refusals are in hostile.sh. The DAG, features, failures, big and odd NARs, multiple outputs
# run in the version matrix (matrix-scenarios.sh) with every client kind.
# Sourced by e2e.sh; helpers in lib.sh.

sc_c_desc="-A foreign (aarch64-linux, arm64 busybox) runs arm64 code, on h2 only"
sc_c() {
  local out hs got h1
  "$LAB_DIR/aarch64.sh" check || fail "no real aarch64 here (tests/lab/aarch64.sh check)"
  out=$(build foreign "$SEED-c") || { tail -5 "$BLOG"; fail "nix-build -A foreign failed"; }
  client_valid "$out"
  [ "$(remote_builds)" = 1 ] || fail "expected 1 remote build"
  # busybox's uname under qemu-user says aarch64; an x86 process could not run it
  got=$(client cat "$out")
  [ "$got" = "machine=aarch64" ] || fail "the build ran as '$got', expected machine=aarch64"
  hs=$(hosts_with "$out")
  [ "$hs" = h2 ] || fail "output is valid on [$hs], expected only h2"
  not_on_relay_machine "$out"
  # sent straight to x86_64-only h1 (as if it were aarch64) the same kind of
  # build fails there: the routing is what makes it work
  # (over this pass's backend protocol: check y wants only that on the backends)
  local m=$STATE/machines; [ "${LAB_BACKEND_PROTO:-ssh}" = ssh ] || m=$STATE/machines-ng
  h1=$(grep -E '^ssh(-ng)?://h1 ' "$m" | awk '{$2 = "aarch64-linux"; print}')
  if build foreign "$SEED-c-x86" --builders "$h1" >/dev/null; then fail "-A foreign built on x86_64-only h1"; fi
  grep -q "aarch64-linux" "$BLOG" || fail "h1's refusal does not name aarch64-linux: $(tail -2 "$BLOG")"
  echo "  on h1: $(grep -m1 -i 'error\|required' "$BLOG")"
}
