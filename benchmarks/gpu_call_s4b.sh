#!/usr/bin/env bash
# One device call (carry .device .fibench), 2026-12-02 session 4, second call:
#   1. the harness-speed side-by-side again (gpu_harness_speed.sh), now with the standbys' start-up marks in the
#      timeline and triton_fused's TMA prefill default;
#   2. triton_fused v8 on the 19 DeepSeek workloads with the contest tolerance recorded beside the definition's
#      (fib_fp8), then the roofline (floor per workload, the run's ceilings);
#   3. fib profile (nsys) of triton_fused on the 19 workloads: the stage table;
#   4. fib profile --backend ncu at 7, 901 and 14107 tokens: which limit each kernel hits now.
# Results: $OUT/harness_speed.tar.gz, $OUT/s4b.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
FI_API_BEFORE_S=1 FI_PERMISSIVE_BEFORE_S=1 bash benchmarks/gpu_harness_speed.sh 2>&1 | grep -v "^import time" | tail -12
export PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache
export FIB_CACHE_DIR=/tmp/fibench/fib-cache TRITON_CACHE_DIR=/tmp/fibench/triton-cache  # warm from step 1
F=$OUT/s4b
mkdir -p $F
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > $F/nvidia-smi.csv 2>&1
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
BUDGET_S=575
STEP_SHOW='^│|PASSED:|rc='
source benchmarks/device_steps.sh
step run 40 python3 -m fib run -d $DS -s triton_fused --also-check contest --output $F/run
STEP_SHOW='.'
step roofline 10 python3 families/moe/benchmarks/roofline.py $F/run --output $F/roofline
STEP_SHOW='gemm|routing|finalize|total|rc='
step profile 60 python3 -m fib profile -d $DS -s triton_fused --output $F/profile
export FIB_NCU=$(python3 -c "from fib.profile.ncu import find_ncu; print(find_ncu() or '')")
STEP_SHOW='gemm|^\||rc='
step ncu 60 python3 -m fib profile -d $DS -s triton_fused -w seq_len=7 seq_len=901 seq_len=14107 --backend ncu \
  --floor $F/roofline/roofline.csv --output $F/ncu
tar czf $OUT/s4b.tar.gz -C $OUT s4b && rm -rf $F
echo "total $(( $(date +%s) - T0 )) s"
