#!/usr/bin/env bash
# One device call (carry .device .fibench), 2026-12-02 session 3:
#   1. the harness-speed side-by-side (gpu_harness_speed.sh: fib cold/warm/warm2, flashinfer-bench CLI);
#   2. benchmarks/call_overhead.py: where a timed call's host time goes (triton_fused, 4 DeepSeek workloads);
#   3. the Qwen3 and Mixtral fused kernels with the defaults their sweeps chose (fib run, default timing).
# Results: $OUT/harness_speed.tar.gz, $OUT/s3.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
FI_API_BEFORE_S=1 FI_PERMISSIVE_BEFORE_S=1 bash benchmarks/gpu_harness_speed.sh 2>&1 | grep -v "^import time" | tail -25
export PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache
F=$OUT/s3
mkdir -p $F
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > $F/nvidia-smi.csv 2>&1
BUDGET_S=570
source benchmarks/device_steps.sh
step call_overhead 40 python3 benchmarks/call_overhead.py
step mixtral 40 python3 -m fib run -d moe_mixtral_bf16_softmax_topk2_e8_h4096_i14336 -s triton_fused --output $F/mixtral
step qwen3 40 python3 -m fib run -d moe_qwen3_fp8_block_scale_softmax_topk8_e128_h2048_i768 -s triton_fused --output $F/qwen3
tar czf $OUT/s3.tar.gz -C $OUT s3 && rm -rf $F
echo "total $(( $(date +%s) - T0 )) s"
