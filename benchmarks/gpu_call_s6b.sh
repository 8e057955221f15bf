#!/usr/bin/env bash
# One device call (carry .device .fibench), 2026-12-02 session 6, second call:
#   1. the harness-speed side-by-side (gpu_harness_speed.sh) with every sys.path directory's bytecode written
#      (the standard library's too) and flashinfer-bench's, the judge staging cached references in host
#      memory in the background, Triton's cache key computed beside the first inputs;
#   2. a warm run under FIB_PROFILE_CHILDREN (the parent's, the worker's and the judge's cProfile statistics);
#   3. cupti_after_kineto.py in both orders (what the direct CUPTI session records once Kineto has run);
#   4. call_overhead.py at 1, 15, 80 and 901 tokens (its Kineto sessions now last).
# Results: $OUT/harness_speed.tar.gz, $OUT/s6b.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
FI_API_BEFORE_S=1 FI_PERMISSIVE_BEFORE_S=1 bash benchmarks/gpu_harness_speed.sh 2>&1 | grep -v "^import time" | tail -9
export PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache
export FIB_CACHE_DIR=/tmp/fibench/fib-cache TRITON_CACHE_DIR=/tmp/fibench/triton-cache  # warm from step 1
F=$OUT/s6b
mkdir -p $F/prof
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
TIMING="--warmup-runs 10 --iterations 50 --num-trials 3"
BUDGET_S=560
STEP_SHOW='PASSED:|rc=|wall|Error'
source benchmarks/device_steps.sh
step warm_prof 30 env FIB_PROFILE_CHILDREN=$F/prof python3 -m fib run -d $DS -s triton_fused $TIMING --output $F/warm_prof
STEP_SHOW='.'
step cupti_direct_first 10 python3 benchmarks/cupti_after_kineto.py --order direct,kineto,direct
step cupti_kineto_first 10 python3 benchmarks/cupti_after_kineto.py --order kineto,direct,direct
step call_overhead 40 python3 benchmarks/call_overhead.py -w seq_len=1 seq_len=15 seq_len=80 seq_len=901
echo "total $(( $(date +%s) - T0 )) s"
