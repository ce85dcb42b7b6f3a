#!/usr/bin/env bash
# Smoke test of the benchmark harness, for .ci/run: `bench/run --quick` must
# complete and print its table. Speed is never judged here: a lost goal is a
# report, not a failure. Exits non-zero only if the harness itself breaks
# (build error, crash, no table).
set -uo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== bench smoke: bench/run --quick"
bench/run --quick 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}

if [ "$rc" -ne 0 ]; then
  echo "bench smoke: bench/run --quick exited $rc (harness failure)"
  exit 1
fi
if ! grep -q '^metric .*| multiproxy .*| reference' "$log" || ! grep -q '^Goals (issue 9)' "$log"; then
  echo "bench smoke: bench/run --quick printed no table"
  exit 1
fi
if [ ! -s bench/out/results.json ]; then
  echo "bench smoke: bench/out/results.json missing"
  exit 1
fi
echo "bench smoke: ok (table printed; numbers are a report, not a check)"
