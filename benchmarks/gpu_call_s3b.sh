#!/usr/bin/env bash
# One device call (carry .device .fibench), 2026-12-02 session 3, second call:
#   1. the harness-speed side-by-side (gpu_harness_speed.sh) with outputs over CUDA IPC and the one-pass digest;
#   2. the hybrids: DeepSeek `hybrid` on the 19 workloads (triton_fused <= 1024 tokens, torch_cublaslt above),
#      the Mixtral `hybrid` swept over its configurations (default, triton, library = torch._grouped_mm,
#      per_expert = one cuBLAS GEMM per expert);
#   3. fib profile (nsys) of the Mixtral hybrid and of DeepSeek's triton_fused and hybrid: the stage tables.
# Results: $OUT/harness_speed.tar.gz, $OUT/s3b.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
FI_API_BEFORE_S=1 FI_PERMISSIVE_BEFORE_S=1 bash benchmarks/gpu_harness_speed.sh 2>&1 | grep -v "^import time" | tail -12
grep -l "CUDA IPC" $OUT/harness_speed/fib_*/logs/*.log 2>/dev/null | head; grep -c resend $OUT/harness_speed/fib_warm/timeline.jsonl
rm -rf $OUT/harness_speed
export PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache
F=$OUT/s3b
mkdir -p $F
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
MX=moe_mixtral_bf16_softmax_topk2_e8_h4096_i14336
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > $F/nvidia-smi.csv 2>&1
BUDGET_S=575
STEP_SHOW='^(==|sweep|run dir|PASSED|profile)'
source benchmarks/device_steps.sh
step ds_hybrid 40 python3 -m fib run -d $DS -s hybrid --output $F/ds_hybrid
grep -E "seq_len|^│" $F/ds_hybrid.log | grep -E "hybrid " | tail -21
step mx_sweep 60 python3 -m fib run -d $MX --sweep hybrid --output $F/mx_sweep
grep -E "^│" $F/mx_sweep.log | tail -24
step mx_profile 40 python3 -m fib profile -d $MX -s hybrid --output $F/mx_profile
step ds_profile 60 python3 -m fib profile -d $DS -s triton_fused hybrid --output $F/ds_profile
rm -f $F/*/profile/capture.nsys-rep
tar czf $OUT/s3b.tar.gz -C $OUT s3b && rm -rf $F
echo "total $(( $(date +%s) - T0 )) s"
