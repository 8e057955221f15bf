#!/usr/bin/env bash
# One device call (carry .device .fibench), 2026-12-02 session 5, third call (triton_fused v9: the branch
# finalize at prefill):
#   1. the harness-speed side-by-side again (gpu_harness_speed.sh);
#   2. the prefill sweep at 11948 / 14107 (v9 default, fin_masked = v8, route8, tma_a, tma_a_bn64, ...);
#   3. the decode buckets' sweep at 7, 80 and 901 tokens (fin_branch among the declared names);
#   4. every DeepSeek solution on the 19 workloads (definition's tolerance and contest) and its roofline;
#   5. fib profile (nsys) of triton_fused on the 19 workloads: the v9 stage table.
# Results: $OUT/harness_speed.tar.gz, $OUT/s5c.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
FI_API_BEFORE_S=1 FI_PERMISSIVE_BEFORE_S=1 bash benchmarks/gpu_harness_speed.sh 2>&1 | grep -v "^import time" | tail -9
export PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache
export FIB_CACHE_DIR=/tmp/fibench/fib-cache TRITON_CACHE_DIR=/tmp/fibench/triton-cache  # warm from step 1
F=$OUT/s5c
mkdir -p $F
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > $F/nvidia-smi.csv 2>&1
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
BUDGET_S=585
STEP_SHOW='best|rc='
source benchmarks/device_steps.sh
step sweep_prefill 60 python3 -m fib run -d $DS -s triton_fused --sweep triton_fused -w seq_len=11948 seq_len=14107 \
  --iterations 20 --num-trials 3 --output $F/sweep_prefill
step sweep_decode 40 python3 -m fib run -d $DS -s triton_fused --sweep triton_fused -w seq_len=7 seq_len=80 seq_len=901 \
  --iterations 20 --num-trials 3 --output $F/sweep_decode
STEP_SHOW='PASSED:|UNSUPPORTED:|rc='
step run 110 python3 -m fib run -d $DS --also-check contest --iterations 20 --num-trials 3 --output $F/run
STEP_SHOW='rc='
step roofline 10 python3 families/moe/benchmarks/roofline.py $F/run --output $F/roofline
STEP_SHOW='gemm|routing|dispatch|finalize|total|rc='
step profile 50 python3 -m fib profile -d $DS -s triton_fused --output $F/profile
echo "total $(( $(date +%s) - T0 )) s"
