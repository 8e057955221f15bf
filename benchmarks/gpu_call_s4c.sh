#!/usr/bin/env bash
# One device call (carry .device .fibench), 2026-12-02 session 4, third call:
#   1. the harness-speed side-by-side (gpu_harness_speed.sh) with the parent's environment probe off torch;
#   2. Nsight Compute tables of the Qwen3 and Mixtral fused kernels at a decode and a prefill size.
# Results: $OUT/harness_speed.tar.gz, $OUT/s4c.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
FI_API_BEFORE_S=1 FI_PERMISSIVE_BEFORE_S=1 bash benchmarks/gpu_harness_speed.sh 2>&1 | grep -v "^import time" | tail -12
export PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache
export FIB_CACHE_DIR=/tmp/fibench/fib-cache TRITON_CACHE_DIR=/tmp/fibench/triton-cache
F=$OUT/s4c
mkdir -p $F
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > $F/nvidia-smi.csv 2>&1
BUDGET_S=575
export FIB_NCU=$(python3 -c "from fib.profile.ncu import find_ncu; print(find_ncu() or '')")
STEP_SHOW='gemm|^\| stage|rc='
source benchmarks/device_steps.sh
step qwen3_ncu 60 python3 -m fib profile -d moe_qwen3_fp8_block_scale_softmax_topk8_e128_h2048_i768 -s triton_fused \
  -w seq_len=16 seq_len=4096 --backend ncu --output $F/qwen3_ncu
step mixtral_ncu 60 python3 -m fib profile -d moe_mixtral_bf16_softmax_topk2_e8_h4096_i14336 -s triton_fused \
  -w seq_len=16 seq_len=4096 --backend ncu --output $F/mixtral_ncu
tar czf $OUT/s4c.tar.gz -C $OUT s4c && rm -rf $F
echo "total $(( $(date +%s) - T0 )) s"
