#!/usr/bin/env bash
# Record the serve-protocol golden transcripts in tests/golden/serve/ that are
# NOT copies of the shared lab's (see tests/golden/serve/README.md):
#   legacy-copy-to       nix copy --to ssh://h1 <leaf>             (cmdAddToStoreNar)
#   legacy-copy-from     nix copy --from ssh://h1 <top, 2 leaves>  (cmdQueryClosure, ...)
#   legacy-feature       build -A feature on h1 (big-parallel) via the build hook
#   legacy-foreign       build -A foreign on h2 (aarch64-linux) via the build hook
#   legacy-import-paths  cmdImportPaths: crafted client bytes (no 2.8 client sends it), real server
#   legacy-export-paths  cmdExportPaths: crafted client bytes, real server
# Brings up its own lab (hosts.sh up 3 --fresh: ALL LAB STORES ARE EMPTIED),
# records with bin/remote-cmd + bin/tee-shim.py (hosts.sh capture hN on),
# decodes with bin/decode.py, and takes the lab down again.
#   tests/lab/capture-golden.sh [NAME...]      (default: all of the above)
set -euo pipefail
LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LAB_DIR/../.." && pwd)
STATE=${LAB_STATE:-/tmp/nix-relay-lab}
export LAB_STATE=$STATE
HS=$LAB_DIR/hosts.sh
DRV=$LAB_DIR/drv
OUT=$REPO/tests/golden/serve
NAMES=${*:-legacy-copy-to legacy-copy-from legacy-feature legacy-foreign legacy-import-paths legacy-export-paths}
mkdir -p "$OUT"

trap '"$HS" down >/dev/null 2>&1 || true' EXIT
"$HS" up 3 --fresh >/dev/null
C() { "$HS" exec client "$@" </dev/null; }
bb=$(C nix eval --raw -f "$DRV" bb)
C nix-store --check-validity "$bb"   # (evaluating builtins.path added it to the client's store)
line() { grep "^ssh://$1 " "$STATE/machines"; }

BASE_PORT=${LAB_BASE_PORT:-2400}
# shellcheck source=lib.sh
. "$LAB_DIR/lib.sh"
begin() { capture_begin "$1"; }
finish() { capture_finish "$1" "$2" "$OUT"; }
ship_bb() { C nix copy --no-check-sigs --to "ssh://$1" "$bb" >/dev/null 2>&1; }  # inputs for builds, not recorded

for name in $NAMES; do
  case $name in
    legacy-copy-to)
      # a small path with no references, built locally on the client
      p=$(C nix-build "$DRV" -A leaves --arg nLeaves 1 --argstr seed golden-copy-to --no-out-link)
      begin h1
      C nix copy --no-check-sigs --to ssh://h1 "$p"
      finish h1 "$name";;
    legacy-copy-from)
      # top (2 leaves) built on the client, shipped to h3 unrecorded, deleted on the
      # client, then copied back with its references
      top=$(C nix-build "$DRV" -A top --arg nLeaves 2 --argstr seed golden-copy-from --no-out-link)
      C nix copy --no-check-sigs --to ssh://h3 "$top" >/dev/null 2>&1
      # shellcheck disable=SC2046 # a list of words (paths or pids), split on purpose
      C nix-store --delete $(C nix-store -q --requisites "$top" | grep -v busybox) >/dev/null 2>&1
      if C nix-store --check-validity "$top" 2>/dev/null; then echo "capture-golden: could not delete $top on the client" >&2; exit 1; fi
      begin h3
      C nix copy --no-check-sigs --from ssh://h3 "$top"
      finish h3 "$name";;
    legacy-feature|legacy-foreign)
      if [ "$name" = legacy-feature ]; then h=h1; attr=feature; else h=h2; attr=foreign; fi
      ship_bb "$h"
      begin "$h"
      C nix-build "$DRV" -A "$attr" --argstr seed "golden-$attr" --no-out-link --max-jobs 0 --builders "$(line "$h")" >/dev/null 2>&1
      finish "$h" "$name";;
    legacy-import-paths|legacy-export-paths)
      # top (1 leaf) + its leaf, built on the client. No Nix 2.8 client sends
      # cmdImportPaths/cmdExportPaths (LegacySSHStore uses cmdAddToStoreNar and
      # cmdDumpStorePath with a 2.7 server), so the client side is crafted: the
      # serve hello, then the command with a `nix-store --export` stream /
      # the path list; the server side is the real nix-store --serve --write.
      top=$(C nix-build "$DRV" -A top --arg nLeaves 1 --argstr seed golden-import-export --no-out-link)
      leaf=$(C nix-store -q --references "$top")
      tmp=$(mktemp -d)
      if [ "$name" = legacy-import-paths ]; then
        C nix-store --export "$leaf" "$top" > "$tmp/export"
        python3 - "$tmp/export" > "$tmp/c2s" <<'PY'
import struct, sys
u64 = lambda n: struct.pack("<Q", n)
sys.stdout.buffer.write(u64(0x390C9DEB) + u64(0x207) + u64(4) + open(sys.argv[1], "rb").read())
PY
        "$HS" reset h2
      else
        # make h2 have both paths (unrecorded), then ask for them back
        C nix copy --no-check-sigs --to ssh://h2 "$top" >/dev/null 2>&1
        python3 - "$leaf" "$top" > "$tmp/c2s" <<'PY'
import struct, sys
u64 = lambda n: struct.pack("<Q", n)
def s(x):
    b = x.encode()
    return u64(len(b)) + b + b"\0" * ((8 - len(b) % 8) % 8)
paths = sys.argv[1:]
sys.stdout.buffer.write(u64(0x390C9DEB) + u64(0x207) + u64(5) + u64(0) + u64(len(paths)) + b"".join(s(p) for p in paths))
PY
      fi
      begin h2
      ssh -F "$STATE/ssh_config" h2 'nix-store --serve --write' < "$tmp/c2s" > "$tmp/s2c"
      finish h2 "$name"
      cmp -s "$tmp/c2s" "$OUT/$name.c2s" || { echo "capture-golden: recorded c2s differs from what was sent" >&2; exit 1; }
      if [ "$name" = legacy-import-paths ]; then
        "$HS" exec h2 nix-store --check-validity "$leaf" "$top" || { echo "capture-golden: import did not register the paths on h2" >&2; exit 1; }
      fi
      rm -rf "$tmp";;
    *) echo "capture-golden: unknown transcript $name" >&2; exit 1;;
  esac
done
