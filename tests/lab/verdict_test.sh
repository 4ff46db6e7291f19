#!/usr/bin/env bash
# Self-test of the e2e harness's verdicts (lib.sh: verdict, skips_fail,
# skip_part): no lab, no root. tests/run.sh step "lab-verdicts".
# Under CI a skipped scenario (or part of one) must FAIL with its reason;
# outside CI it is a SKIP; a scenario that
# failed without a REASON line is a FAIL (exit status), not the harness's end.
set -euo pipefail
LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# what lib.sh expects of e2e.sh (nothing here reaches a lab)
# shellcheck disable=SC2034
STATE=/nonexistent/nix-relay-lab BASE_PORT=2400 HS=false TMO=1
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$LAB_DIR/lib.sh"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/verdict-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
bad=0; n=0
# expect CI WANT SCENARIO-BODY: run the body as e2e.sh does, check the verdict
expect() {
  local ci=$1 want=$2 body=$3 log rc got
  log=$tmp/$n.log; n=$((n + 1))
  rc=0
  # shellcheck disable=SC2034
  ( set -euo pipefail; CI=$ci; eval "$body" ) >"$log" 2>&1 || rc=$?
  got=$(CI=$ci verdict "$rc" "$log")
  # shellcheck disable=SC2053  # WANT is a pattern
  if [[ $got == $want ]]; then echo "ok: [CI=$ci] $body -> $got"
  else echo "WRONG: [CI=$ci] $body -> '$got', expected '$want'"; bad=$((bad + 1)); fi
}
expect "" 'PASS' 'true'
expect true 'FAIL broke' 'fail broke'
expect true 'FAIL exit status 3 (see *)' 'exit 3'
expect "" 'SKIP no http' 'skip no http'
expect false 'SKIP no http' 'skip no http'
expect true 'FAIL skipped under CI=true (every scenario must run): no http' 'skip no http'
expect "" 'PASS' 'skip_part the 404 checks'
expect true 'FAIL skipped under CI=true: the 404 checks' 'skip_part the 404 checks'
[ "$bad" = 0 ] || { echo "verdict_test: $bad of $n wrong"; exit 1; }
echo "verdict_test: all $n verdicts right"
