#!/usr/bin/env bash
# Record golden transcripts from TODAY's Nix (tests/golden/{serve,worker}/*-226-*,
# *-234-*): real Nix 2.26 and 2.34 clients talking directly (no relay) to a real
# Nix 2.34 backend, so both byte streams are real. Backend h1 runs Nix 2.34
# (LAB_H1_NIX=2.34, its own sshd from the root); namespace `client` runs Nix 2.34,
# `client2` Nix 2.26 (tests/lab/roots.sh must have made both roots).
#   legacy-234-build   2.34 client, build hook, ssh://h1     (serve 2.7)
#   legacy-226-build   2.26 client, build hook, ssh://h1     (serve 2.7)
#   legacy-234-copy-to 2.34 client, nix copy --to ssh://h1   (serve 2.7)
#   legacy-234-copy-from 2.34 client, nix copy --from ssh://h1 (serve 2.7)
#   ng-234-build       2.34 client, build hook, ssh-ng://h1  (worker 1.38, feature exchange)
#   ng-226-build       2.26 client, build hook, ssh-ng://h1  (worker 1.37)
#   ng-234-copy-to     2.34 client, nix copy --to ssh-ng://h1
#   ng-234-copy-from   2.34 client, nix copy --from ssh-ng://h1
#   ng-226-copy-to, ng-226-copy-from   the same from the 2.26 client
#   ng-226-multi, ng-234-multi   build hook, ssh-ng://h1, -A multi (outputs out, dev)
# Brings up its own lab (hosts.sh up 1 --fresh: ALL LAB STORES ARE EMPTIED);
# the lab is shared, so run it under the lab lock:
#   flock /tmp/nix-relay-lab.lock tests/lab/capture-golden-modern.sh [NAME...]
set -euo pipefail
LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LAB_DIR/../.." && pwd)
STATE=${LAB_STATE:-/tmp/nix-relay-lab}
export LAB_STATE=$STATE LAB_H1_NIX=2.34 LAB_CLIENT_NIX=2.34 LAB_CLIENT2_NIX=2.26 LAB_CLIENTS=2
HS=$LAB_DIR/hosts.sh
DRV=$LAB_DIR/drv
NAMES=${*:-legacy-234-build legacy-226-build legacy-234-copy-to legacy-234-copy-from ng-234-build ng-226-build ng-234-copy-to ng-234-copy-from ng-226-copy-to ng-226-copy-from ng-226-multi ng-234-multi}

trap '"$HS" down >/dev/null 2>&1 || true' EXIT
"$HS" up 1 --fresh >/dev/null
X() { local ns=$1; shift; "$HS" exec "$ns" "$@" </dev/null; }
for ns in client client2; do
  bb=$(X "$ns" nix eval --raw -f "$DRV" bb)
  X "$ns" nix-store --check-validity "$bb"
done
X client nix copy --no-check-sigs --to ssh://h1 "$bb" >/dev/null 2>&1   # build input, not recorded
line() { grep "^$1://h1 " "$STATE/$2"; }

BASE_PORT=${LAB_BASE_PORT:-2400}
# shellcheck source=lib.sh
. "$LAB_DIR/lib.sh"
begin() { capture_begin h1; }
finish() { capture_finish h1 "$1" "$2"; }

for name in $NAMES; do
  case $name in
    legacy-*) proto=ssh; out=$REPO/tests/golden/serve; mf=machines;;
    ng-*) proto=ssh-ng; out=$REPO/tests/golden/worker; mf=machines-ng;;
    *) echo "capture-golden-modern: unknown transcript $name" >&2; exit 1;;
  esac
  case $name in *-226-*) ns=client2;; *) ns=client;; esac
  case $name in
    *-build|*-multi)
      if [ "${name##*-}" = build ]; then attr=top; else attr=multi; fi
      begin
      X "$ns" nix-build "$DRV" -A "$attr" --arg nLeaves 2 --argstr seed "golden-$name" --no-out-link \
        --max-jobs 0 --builders "$(line "$proto" "$mf")" >/dev/null
      finish "$name" "$out";;
    *-copy-to)
      p=$(X "$ns" nix-build "$DRV" -A leaves --arg nLeaves 1 --argstr seed "golden-$name" --no-out-link)
      begin
      X "$ns" nix copy --no-check-sigs --to "$proto://h1" "$p"
      finish "$name" "$out";;
    *-copy-from)
      top=$(X "$ns" nix-build "$DRV" -A top --arg nLeaves 2 --argstr seed "golden-$name" --no-out-link)
      X "$ns" nix copy --no-check-sigs --to "$proto://h1" "$top" >/dev/null 2>&1
      # shellcheck disable=SC2046 # a list of paths, split on purpose
      X "$ns" nix-store --delete $(X "$ns" nix-store -q --requisites "$top" | grep -v busybox) >/dev/null 2>&1
      if X "$ns" nix-store --check-validity "$top" 2>/dev/null; then echo "capture-golden-modern: could not delete $top" >&2; exit 1; fi
      begin
      X "$ns" nix copy --no-check-sigs --from "$proto://h1" "$top"
      finish "$name" "$out";;
  esac
done
