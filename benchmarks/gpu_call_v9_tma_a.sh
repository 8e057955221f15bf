#!/usr/bin/env bash
# One device call (carry .device): the v9 candidates tma_a and tma_a_bn64 (triton_fused's A rows gathered
# into sorted order, gemm1 reading A through TMA too; benchmarks/NOTES.md, "v9 candidate: A through TMA")
# against the prefill default and the v8 variants, at 11948 and 14107 tokens.
#   1. compile_sm90 --sweep with the machine's Triton 3.6: registers, spills, shared memory, CTAs/SM;
#   2. fib run --sweep triton_fused (cupti kernel sums, L2 flushed, checked against the FP32 reference);
#   3. kernels.py --sweep/--profile: per-kernel device times of each configuration (the gather kernel,
#      gemm1 and gemm2 apart), graph times, repeated calls bit-identical to the first.
# Results: $OUT/v9.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
F=$OUT/v9
mkdir -p $F
export FIB_CACHE_DIR=/tmp/v9/fib-cache TRITON_CACHE_DIR=/tmp/v9/triton-cache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > $F/nvidia-smi.csv 2>&1
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
BUDGET_S=570
STEP_SHOW='gemm|gather|sweep|^│|PASSED|INCORRECT|ERROR|rc='
source benchmarks/device_steps.sh
step compile 30 python3 families/moe/benchmarks/compile_sm90.py --sweep --tokens 11948 14107
step sweep 140 python3 -m fib run -d $DS -s triton_fused --sweep triton_fused -w seq_len=11948 seq_len=14107 \
  --iterations 20 --num-trials 3 --output $F/sweep
step kernels 140 env OUT=$F/kernels python3 families/moe/benchmarks/kernels.py --tokens 11948 14107 \
  --sweep 11948 14107 --profile 11948 14107
