#!/usr/bin/env bash
# One device call (carry .device .fibench), 2026-12-02 session 6, fourth call: the harness-speed side-by-side
# (gpu_harness_speed.sh with REPEATS=1: fib cold, warm x4, flashinfer-bench 0.1.2's CLI x2) after the warm-up's
# outlier-tolerant stability test, the judge's staging back to pageable memory (page-locked allocation stalled
# its verdicts) and fib.stage bound once. Results: $OUT/harness_speed.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
REPEATS=1 FI_API_BEFORE_S=1 FI_PERMISSIVE_BEFORE_S=1 bash benchmarks/gpu_harness_speed.sh 2>&1 | grep -v "^import time" | tail -12
