#!/usr/bin/env bash
# Checks of the NixOS packaging that need no nixpkgs (tests/run.sh step "nixos"):
#   1. nix-instantiate --parse on every .nix file under nixos/ and tests/nixos/,
#      and on the ```nix snippets of README.md;
#   2. tests/nixos/eval.nix: the modules evaluated against a stand-in lib /
#      module system (tests/nixos/stub.nix), every expectation checked there;
#   3. if a built relay is at hand ($RELAY_BIN, or target/debug/nix-relay),
#      `nix-relay check-config` on every TOML the module generated there
#      (under CI, CI set and not "false", a missing relay fails the check).
# The NixOS VM test (nixos/tests/vm.nix) needs nixpkgs and KVM; not run here.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"

if ! command -v nix-instantiate >/dev/null; then
  echo "tests/nixos/check.sh: nix-instantiate not found (tests/setup.sh installs nix-bin)" >&2
  exit 1
fi
# No channels, no <nixpkgs>: everything the checks use is in this repository.
export NIX_PATH=

n=0
while IFS= read -r -d '' f; do
  if ! out=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then
    echo "tests/nixos/check.sh: parse error in $f:" >&2
    echo "$out" >&2
    exit 1
  fi
  n=$((n + 1))
done < <(find nixos tests/nixos -name '*.nix' -print0 | sort -z)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/nixos-check.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# The ```nix snippets of README.md parse too.
awk -v d="$tmp" '/^```nix$/ { k++; f = d "/deploy-" k ".nix"; next } /^```/ { f = ""; next } f { print > f }' README.md
for f in "$tmp"/deploy-*.nix; do
  [ -e "$f" ] || continue
  if ! out=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then
    echo "tests/nixos/check.sh: parse error in a nix snippet of README.md:" >&2
    echo "$out" >&2
    cat -n "$f" >&2
    exit 1
  fi
  n=$((n + 1))
done
echo "nixos: $n .nix files and README.md snippets parse"
# --readonly-mode: the evaluation never writes to the store.
if ! nix-instantiate --eval --strict --json --readonly-mode tests/nixos/eval.nix >"$tmp/eval.json" 2>"$tmp/eval.err"; then
  echo "tests/nixos/check.sh: tests/nixos/eval.nix failed:" >&2
  cat "$tmp/eval.err" >&2
  exit 1
fi
passed=$(grep -o '"passed":[0-9]*' "$tmp/eval.json" | cut -d: -f2)
echo "nixos: eval.nix: ${passed:-?} checks passed (module.nix, client.nix, builder.nix, tests/vm.nix nodes)"

relay=${RELAY_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/debug/nix-relay}
if [ -x "$relay" ] && command -v python3 >/dev/null; then
  python3 - "$tmp" <<'EOF'
import json, sys
d = sys.argv[1]
for name, text in json.load(open(f"{d}/eval.json"))["tomls"].items():
    open(f"{d}/{name}.toml", "w").write(text)
EOF
  for t in "$tmp"/*.toml; do
    # authorized_keys is read at validation: give the sample one a real file.
    sed -i "s|/etc/nix-relay/authorized_keys|$REPO/nixos/tests/keys/id_client.pub|" "$t"
    if ! out=$("$relay" check-config "$t" 2>&1); then
      echo "tests/nixos/check.sh: nix-relay check-config refuses the generated $(basename "$t"):" >&2
      echo "$out" >&2
      sed 's/^/    /' "$t" >&2
      exit 1
    fi
  done
  echo "nixos: nix-relay check-config accepts the $(ls "$tmp"/*.toml | wc -l) generated configs ($relay)"
elif [ -n "${CI:-}" ] && [ "$CI" != false ]; then
  # run.sh builds the relay first: under CI a skipped check is a failure
  echo "tests/nixos/check.sh: no built relay at $relay (or no python3), and CI is set: check-config of the generated TOML must run" >&2
  exit 1
else
  echo "nixos: no built relay at $relay (or no python3): check-config of the generated TOML skipped"
fi
