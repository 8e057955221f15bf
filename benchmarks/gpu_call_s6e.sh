#!/usr/bin/env bash
# One device call (carry .device .fibench), 2026-12-02 session 6, fifth call:
#   1. the harness-speed side-by-side (gpu_harness_speed.sh with REPEATS=1: fib cold, warm x4, flashinfer-bench
#      0.1.2's CLI x2) with the warm-up floor of 5 ms for a workload timed right after another (25 ms before);
#   2. two warm runs with --min-warmup-ms-warm 25 (the earlier policy) on the same caches, so the medians of the
#      two policies can be set side by side (benchmarks/warmup_policy.py).
# Results: $OUT/harness_speed.tar.gz, $OUT/s6e.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
REPEATS=1 FI_API_BEFORE_S=1 FI_PERMISSIVE_BEFORE_S=1 bash benchmarks/gpu_harness_speed.sh 2>&1 | grep -v "^import time" | tail -12
export PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache
export FIB_CACHE_DIR=/tmp/fibench/fib-cache TRITON_CACHE_DIR=/tmp/fibench/triton-cache  # warm from step 1
F=$OUT/s6e
mkdir -p $F
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
TIMING="--warmup-runs 10 --iterations 50 --num-trials 3"
BUDGET_S=540
STEP_SHOW='PASSED:|rc=|Error'
source benchmarks/device_steps.sh
step warm_floor25_a 20 python3 -m fib run -d $DS -s triton_fused $TIMING --min-warmup-ms-warm 25 --output $F/warm_floor25_a
step warm_floor25_b 20 python3 -m fib run -d $DS -s triton_fused $TIMING --min-warmup-ms-warm 25 --output $F/warm_floor25_b
STEP_SHOW='.'
step policy 5 python3 benchmarks/warmup_policy.py --new $OUT/harness_speed/fib_warm $OUT/harness_speed/fib_warm2 \
  $OUT/harness_speed/fib_warm3 $OUT/harness_speed/fib_warm4 --old $F/warm_floor25_a $F/warm_floor25_b
echo "total $(( $(date +%s) - T0 )) s"
