#!/usr/bin/env bash
# One device call (carry .device), 2026-12-02 session 3, third call: latency beside the kernel sum.
#   1. fib cold then warm on triton_fused, 19 DeepSeek workloads (the harness at its final commit);
#   2. the DeepSeek prefill and one decode size for hybrid, triton_fused, torch_cublaslt: the cupti timer
#      (kernel sum, plus CUDA events where the GPU idles most of the call) and --timer cuda_event;
#   3. Mixtral 1024 and 4096 tokens: hybrid (per-expert cuBLAS by default now), triton_fused, torch_eager,
#      with both timers.
# Results: $OUT/s3c.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
F=$OUT/s3c
mkdir -p $F
export FIB_CACHE_DIR=/tmp/s3c/fib-cache TRITON_CACHE_DIR=/tmp/s3c/triton-cache
# the bytecode cache gpu_harness_speed.sh writes (the machine runs with PYTHONDONTWRITEBYTECODE=1)
export PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache
SITES=$(python3 -c "import os, torch, triton, scipy, numpy, pydantic, sympy; print(' '.join(os.path.dirname(m.__file__) for m in (torch, triton, scipy, numpy, pydantic, sympy)))")
s=$(date +%s); env -u PYTHONDONTWRITEBYTECODE timeout 240 python3 -m compileall -q -j 16 $SITES fib > /dev/null 2>&1
echo "bytecode cache written in $(( $(date +%s) - s )) s" | tee $F/bytecode.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > $F/nvidia-smi.csv 2>&1
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
MX=moe_mixtral_bf16_softmax_topk2_e8_h4096_i14336
BUDGET_S=570
STEP_SHOW='back to back|idles|^│.*(seq_len=(1|901|1024|4096|11948|14107) )'
source benchmarks/device_steps.sh
step fib_cold 60 python3 -m fib run -d $DS -s triton_fused --output $F/fib_cold
step fib_warm 30 python3 -m fib run -d $DS -s triton_fused --output $F/fib_warm
W="-w seq_len=1 seq_len=901 seq_len=11948 seq_len=14107"
step ds_cupti 40 python3 -m fib run -d $DS -s hybrid triton_fused torch_cublaslt $W --output $F/ds_cupti
step ds_event 40 python3 -m fib run -d $DS -s hybrid triton_fused torch_cublaslt $W --timer cuda_event --output $F/ds_event
W="-w seq_len=256 seq_len=1024 seq_len=4096"
step mx_cupti 40 python3 -m fib run -d $MX -s hybrid triton_fused torch_eager $W --output $F/mx_cupti
step mx_event 40 python3 -m fib run -d $MX -s hybrid triton_fused torch_eager $W --timer cuda_event --output $F/mx_event
tar czf $OUT/s3c.tar.gz -C $OUT s3c && rm -rf $F
echo "total $(( $(date +%s) - T0 )) s"
