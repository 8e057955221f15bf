#!/usr/bin/env bash
# One device call (carry .device .fibench), 2026-12-02 session 6, first call:
#   1. the harness-speed side-by-side (gpu_harness_speed.sh: fib cold / warm / warm again against
#      flashinfer-bench 0.1.2's CLI) after the session's first cuts (definition validation cached, one
#      host copy per comparison / digest / input check, the back-to-back figure from the warm-up, the judge's
#      comparison kernels loaded before it says ready, the dependency check cached);
#   2. a warm run under cProfile: the parent (python -m cProfile) and its children (FIB_PROFILE_CHILDREN);
#   3. where the children's import time goes (python -X importtime of the standby's preload list);
#   4. call_overhead.py: triton_fused's host path and the timer's pieces at 1, 15, 80 and 901 tokens.
# Results: $OUT/harness_speed.tar.gz, $OUT/s6a.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
FI_API_BEFORE_S=1 FI_PERMISSIVE_BEFORE_S=1 bash benchmarks/gpu_harness_speed.sh 2>&1 | grep -v "^import time" | tail -9
export PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache
export FIB_CACHE_DIR=/tmp/fibench/fib-cache TRITON_CACHE_DIR=/tmp/fibench/triton-cache  # warm from step 1
F=$OUT/s6a
mkdir -p $F/prof
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
TIMING="--warmup-runs 10 --iterations 50 --num-trials 3"
BUDGET_S=560
STEP_SHOW='PASSED:|rc=|wall|Error'
source benchmarks/device_steps.sh
step warm_prof 30 env FIB_PROFILE_CHILDREN=$F/prof python3 -m cProfile -o $F/prof/parent.prof -m fib run -d $DS \
  -s triton_fused $TIMING --output $F/warm_prof
step importtime 10 python3 -X importtime -c "import torch, fib.timing.measure, fib.schema, fib.schema.config, \
fib.harness.torch_state, fib.harness.inputs, fib.harness.check, fib.harness.call, fib.harness.worker, \
fib.harness.judge, safetensors.torch, triton"
STEP_SHOW='.'
step call_overhead 40 python3 benchmarks/call_overhead.py -w seq_len=1 seq_len=15 seq_len=80 seq_len=901
echo "total $(( $(date +%s) - T0 )) s"
