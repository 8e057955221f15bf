#!/usr/bin/env bash
# One device call (carry .device .fibench), 2026-12-02 session 5, first call:
#   1. the harness-speed side-by-side (gpu_harness_speed.sh: fib cold / warm / warm again against
#      flashinfer-bench 0.1.2's CLI) with the direct kernels-only CUPTI session and the os._exit ending;
#   2. fib warm once more with FIB_CUPTI_SESSION=kineto (Kineto's device-only session, session 4's timer):
#      the same pairs' medians from the two sessions, side by side;
#   3. every DeepSeek solution on the 19 workloads (definition's tolerance and contest), for the report:
#      torch_eager, triton_staged, triton_fused (v8), hybrid, torch_cublaslt, and the gated ones;
#   4. the roofline of that run (floor per workload, this machine's ceilings).
# Results: $OUT/harness_speed.tar.gz, $OUT/s5a.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
FI_API_BEFORE_S=1 FI_PERMISSIVE_BEFORE_S=1 bash benchmarks/gpu_harness_speed.sh 2>&1 | grep -v "^import time" | tail -12
export PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache
export FIB_CACHE_DIR=/tmp/fibench/fib-cache TRITON_CACHE_DIR=/tmp/fibench/triton-cache  # warm from step 1
F=$OUT/s5a
mkdir -p $F
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > $F/nvidia-smi.csv 2>&1
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
BUDGET_S=575
STEP_SHOW='PASSED:|rc=|wall'
source benchmarks/device_steps.sh
s=$(date +%s.%N)
step fib_warm_kineto 30 env FIB_CUPTI_SESSION=kineto python3 -m fib run --definitions $DS --solutions triton_fused \
  --warmup-runs 10 --iterations 50 --num-trials 3 --output $F/fib_warm_kineto
STEP_SHOW='^│|PASSED:|UNSUPPORTED|rc='
step run 150 python3 -m fib run -d $DS --also-check contest --iterations 20 --num-trials 3 --output $F/run
STEP_SHOW='.'
step roofline 10 python3 families/moe/benchmarks/roofline.py $F/run --output $F/roofline
echo "total $(( $(date +%s) - T0 )) s"
