#!/usr/bin/env bash
# Fuzz smoke test (CI step "fuzz"): builds the cargo-fuzz targets in fuzz/
# and runs each for FUZZ_SECONDS; fails on any crash, printing the target and
# the crashing input's path; prints the exec count per target.
#   bash tests/fuzz.sh            (tests/run.sh runs it after `cargo test`)
# Env: FUZZ_SECONDS  per target (default 60)
#      FUZZ_TARGETS  space-separated subset (default: every target in fuzz/Cargo.toml)
#      FUZZ_JOBS     targets run at once (default 2)
#      CARGO_TARGET_DIR  build goes to $CARGO_TARGET_DIR/fuzz (default target/fuzz);
#                    the corpora grow in .../fuzz/corpus and crash inputs land
#                    in .../fuzz/artifacts, so a cached target dir keeps both.
# Build: stable toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z flags),
# release + debug assertions + overflow checks, no sanitizer (see fuzz/README.md).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO/fuzz"
SECONDS_PER=${FUZZ_SECONDS:-60}
JOBS=${FUZZ_JOBS:-2}
OUT=${CARGO_TARGET_DIR:-$REPO/target}/fuzz
CARGO_FUZZ_VERSION=0.13.2
export RUSTC_BOOTSTRAP=1 CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
BUILD=(-O -a --sanitizer none --target-dir "$OUT")

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
t0=$(date +%s)
if [ -z "${FUZZ_TARGETS:-}" ]; then
  cargo fuzz build "${BUILD[@]}"
else
  for t in $targets; do cargo fuzz build "${BUILD[@]}" "$t"; done
fi
echo "fuzz: built $(wc -w <<<"$targets") targets in $(( $(date +%s) - t0 )) s"
bin_dir=$OUT/$(rustc -vV | sed -n 's/^host: //p')/release
bash "$REPO/fuzz/seed.sh" "$OUT/corpus"
logs=$(mktemp -d "${TMPDIR:-/tmp}/nix-relay-fuzz.XXXXXX")
trap 'rm -rf "$logs"' EXIT

run_one() {  # run_one TARGET: fuzz it; its exit status goes to $logs/TARGET.rc
  local t=$1 rc=0
  mkdir -p "$OUT/artifacts/$t"
  "$bin_dir/$t" "$OUT/corpus/$t" -max_total_time="$SECONDS_PER" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$OUT/artifacts/$t/" \
    >"$logs/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$logs/$t.rc"
}

for t in $targets; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  echo "fuzz: $t for ${SECONDS_PER} s"
  run_one "$t" &
done
wait

failed=0
for t in $targets; do
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
  corpus=$(find "$OUT/corpus/$t" -type f | wc -l)
  if [ "$(cat "$logs/$t.rc")" = 0 ]; then
    echo "fuzz: $t ok: ${execs:-?} execs in ${SECONDS_PER} s, corpus $corpus inputs"
  else
    failed=1
    input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$logs/$t.log" | tail -1)
    echo "fuzz: $t FAILED (exit $(cat "$logs/$t.rc")) after ${execs:-?} execs; input: ${input:-none written}"
    tail -40 "$logs/$t.log"
    [ -z "$input" ] || echo "fuzz: reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${BUILD[*]} $t $input)"
  fi
done
exit "$failed"
