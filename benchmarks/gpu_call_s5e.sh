#!/usr/bin/env bash
# One device call (carry .device .fibench), 2026-12-02 session 5, last call: the harness-speed side-by-side
# (gpu_harness_speed.sh) after the int32 digest, the judge's verdict-first order and the vacuous cache.
# Results: $OUT/harness_speed.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
FI_API_BEFORE_S=1 FI_PERMISSIVE_BEFORE_S=1 bash benchmarks/gpu_harness_speed.sh 2>&1 | grep -v "^import time" | tail -9
