#!/usr/bin/env bash
# Guard rails that keep ARCHITECTURE.md true (CI step "guard"):
#   1. no source file over MAX_LINES (600) lines: *.rs and *.sh
#   2. `anyhow` only at the command-line edge (src/main.rs, src/cli.rs and the
#      command modules it names in ARCHITECTURE.md: EDGE below)
#   2b. the wire crate (wire/) never depends on the main crate, and no code
#      outside it calls the byte primitives (`wire::primitives`) or spells a
#      byte order (`to_le_bytes`/`from_le_bytes`); tests excepted
#   3. Prometheus metric names (`nix_relay_...`) are defined only in src/metrics.rs
#   4. no import cycles between the crate's modules (tests/cycles.py)
#   5. shellcheck (warnings and errors) on every shell script
# Prints every violation, then exits 1 if there was any.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MAX_LINES=${MAX_LINES:-600}
EDGE="src/main.rs src/cli.rs src/status.rs src/keys.rs src/machines.rs src/ec2/cli.rs"
bad=0
complain() { echo "guard: $*"; bad=1; }

while IFS= read -r f; do
  n=$(wc -l <"$f")
  [ "$n" -le "$MAX_LINES" ] || complain "$f has $n lines (limit $MAX_LINES): split it"
done < <(git ls-files '*.rs' '*.sh')

while IFS= read -r f; do
  [[ " $EDGE " == *" $f "* ]] || complain "$f uses anyhow: only the CLI edge may ($EDGE); give the layer a thiserror enum"
done < <(git ls-files 'src/*.rs' 'wire/*.rs' | xargs grep -l '\banyhow\b' || true)

! grep -q '^nix-relay *=' wire/Cargo.toml \
  || complain "wire/Cargo.toml depends on nix-relay: the wire crate stands alone"
while IFS=: read -r f l _; do
  complain "$f:$l encodes bytes by hand: give the message a type in wire/ (ARCHITECTURE.md, wire)"
done < <(git ls-files 'src/*.rs' | grep -v '_tests\.rs$\|/tests\.rs$\|/tests_[a-z_]*\.rs$' \
  | xargs grep -n 'wire::primitives\|to_le_bytes\|from_le_bytes' || true)

while IFS=: read -r f l _; do
  complain "$f:$l names a metric: metrics are defined in src/metrics.rs"
done < <(git ls-files 'src/*.rs' | grep -v '^src/metrics.rs$' \
  | xargs grep -n '"nix_relay_[a-z0-9_]*"' | grep -v '^[^:]*_tests\.rs:\|/tests\.rs:\|/tests_[a-z_]*\.rs:' || true)

python3 tests/cycles.py src >/tmp/nix-relay-cycles.$$ || {
  sed 's/^/guard: /' /tmp/nix-relay-cycles.$$
  complain "import cycles between modules (above): invert a dependency"
}
rm -f /tmp/nix-relay-cycles.$$

if command -v shellcheck >/dev/null; then
  mapfile -t sh < <(git ls-files '*.sh' .ci/run tests/lab/bin/remote-cmd)
  shellcheck -S warning "${sh[@]}" || complain "shellcheck found the problems above"
elif [ -n "${CI:-}" ]; then
  complain "shellcheck is not installed (tests/setup.sh installs it)"
else
  echo "guard: shellcheck not installed: shell scripts not checked (CI fails here)"
fi

[ "$bad" = 0 ] && echo "guard: ok"
exit "$bad"
