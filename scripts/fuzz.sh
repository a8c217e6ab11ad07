#!/usr/bin/env bash
# Bounded libFuzzer runs over the DNS message parser + answer pipeline (FuzzWire) and the
# master-file parser + zone validation (FuzzZone), with AddressSanitizer.
#
# Usage: scripts/fuzz.sh [RUNS]        RUNS per target, default 1000000 (env RUNS too)
#   env TARGETS="FuzzWire FuzzZone", MAX_SECONDS per target (default 900)
#
# Seeds come from Tests/Fixtures/fuzz/{wire,zone}; the growing corpus lives in
# .build-fuzz/corpus. A crash leaves its input in .build-fuzz/crashers and fails the script:
# copy it into Tests/Fixtures/fuzz/<kind>/ so the replay test (FuzzCorpusTests) keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-${RUNS:-1000000}}
targets=${TARGETS:-FuzzWire FuzzZone}
max_seconds=${MAX_SECONDS:-900}
scratch=.build-fuzz

for target in $targets; do
  swift build -c release --product "$target" --sanitize=fuzzer --sanitize=address \
    -Xswiftc -sanitize=fuzzer,address --scratch-path "$scratch"
done

status=0
for target in $targets; do
  case $target in
    FuzzWire) kind=wire max_len=1500 ;;
    FuzzZone) kind=zone max_len=4096 ;;
    *) echo "fuzz.sh: unknown target $target" >&2; exit 2 ;;
  esac
  corpus=$scratch/corpus/$kind
  crashers=$scratch/crashers/$kind
  mkdir -p "$corpus" "$crashers"
  echo "fuzz.sh: $target, $runs runs (at most ${max_seconds}s)"
  if ! "$scratch/release/$target" -runs="$runs" -max_len="$max_len" -max_total_time="$max_seconds" \
      -artifact_prefix="$crashers/" -print_final_stats=1 "$corpus" "Tests/Fixtures/fuzz/$kind" \
      >"$scratch/$target.log" 2>&1; then
    echo "fuzz.sh: $target FAILED; input(s) in $crashers:" >&2
    ls -l "$crashers" >&2
    tail -n 40 "$scratch/$target.log" >&2
    status=1
    continue
  fi
  grep -E "^stat::number_of_executed_units|Done [0-9]+ runs" "$scratch/$target.log" | tail -n 2
done
exit $status
