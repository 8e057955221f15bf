#!/usr/bin/env bash
# One device call (carry .device): v8, triton_fused's TMA prefill configurations (benchmarks/NOTES.md,
# "v8 (TMA weight tiles): prediction") against the prefill default, at 11948 and 14107 tokens.
#   1. compile_sm90 --sweep with the machine's Triton 3.6: registers, spills, shared memory, CTAs/SM;
#   2. fib run --sweep triton_fused (cupti kernel sums, L2 flushed; the check against the FP32
#      reference is also the GPU test of acc='rescale', whose tensor-core accumulation the CPU
#      interpreter cannot reproduce): sweep.md ranks default, s34, bm64_w4, tma, tma_s5, tma_promote,
#      tma_bn64 per workload;
#   3. kernels.py --sweep/--profile: per-kernel device times of each configuration (gemm1 / gemm2
#      apart), graph times, and 20 repeated calls bit-identical to the first.
# Results: $OUT/v8.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
F=$OUT/v8
mkdir -p $F
export FIB_CACHE_DIR=/tmp/v8/fib-cache TRITON_CACHE_DIR=/tmp/v8/triton-cache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > $F/nvidia-smi.csv 2>&1
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
BUDGET_S=570
STEP_SHOW='gemm|sweep|^│|PASSED|INCORRECT|ERROR|rc='
source benchmarks/device_steps.sh
step compile 30 python3 families/moe/benchmarks/compile_sm90.py --sweep --tokens 11948 14107
step sweep 120 python3 -m fib run -d $DS -s triton_fused --sweep triton_fused -w seq_len=11948 seq_len=14107 \
  --iterations 20 --num-trials 3 --output $F/sweep
step kernels 120 env OUT=$F/kernels python3 families/moe/benchmarks/kernels.py --tokens 11948 14107 \
  --sweep 11948 14107 --profile 11948 14107
