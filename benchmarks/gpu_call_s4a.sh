#!/usr/bin/env bash
# One device call (carry .device .fibench), 2026-12-02 session 4, first call:
#   1. the harness-speed side-by-side (gpu_harness_speed.sh: fib cold/warm/warm2, flashinfer-bench CLI) with
#      the device-only cupti session, early standbys, the standby's driver thread, the early pre-warm;
#   2. call_overhead.py: the cupti timer's full and device-only sessions on the same calls (their kernel
#      medians must agree) and each one's steps;
#   3. where a standby's start goes: -X importtime of its preloads, cuInit / torch import / context times;
#   4. v8: triton_fused's TMA prefill configurations against the default at 11948 and 14107 tokens
#      (fib run --sweep: the check against the FP32 reference, then the cupti kernel sums).
# Results: $OUT/harness_speed.tar.gz, $OUT/s4a.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
FI_API_BEFORE_S=1 FI_PERMISSIVE_BEFORE_S=1 bash benchmarks/gpu_harness_speed.sh 2>&1 | grep -v "^import time" | tail -25
export PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache
export FIB_CACHE_DIR=/tmp/fibench/fib-cache TRITON_CACHE_DIR=/tmp/fibench/triton-cache  # warm from step 1
F=$OUT/s4a
mkdir -p $F
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > $F/nvidia-smi.csv 2>&1
BUDGET_S=575
STEP_SHOW='.'
source benchmarks/device_steps.sh
step call_overhead 40 python3 benchmarks/call_overhead.py
STEP_SHOW='startup|^import time: +[0-9]{6}'
step importtime 10 python3 -X importtime -c "import importlib, fib.harness.standby as s
for m in s.PRELOAD: importlib.import_module(m)"
step startup 10 python3 -c "
import ctypes, time
t0 = time.perf_counter(); lib = ctypes.CDLL('libcuda.so.1'); lib.cuInit(0); t1 = time.perf_counter()
import torch; t2 = time.perf_counter()
torch.cuda.set_device(0); torch.zeros(1, device='cuda'); torch.cuda.synchronize(); t3 = time.perf_counter()
import triton; t4 = time.perf_counter()
print(f'startup: cuInit {t1-t0:.3f} s, import torch {t2-t1:.3f} s, torch CUDA context {t3-t2:.3f} s, import triton {t4-t3:.3f} s')"
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
STEP_SHOW='sweep|^│|PASSED|INCORRECT|ERROR|rc='
step v8_sweep 100 python3 -m fib run -d $DS -s triton_fused --sweep triton_fused -w seq_len=11948 seq_len=14107 \
  --iterations 20 --num-trials 3 --output $F/v8_sweep
tar czf $OUT/s4a.tar.gz -C $OUT s4a && rm -rf $F
echo "total $(( $(date +%s) - T0 )) s"
