#!/usr/bin/env bash
# One device call (carry .device .peers), 2026-12-02 session 5, second call:
#   1. triton_fused's prefill candidates at 11948 and 14107 tokens through the harness (fib run --sweep):
#      default (v8), route4, route8, fin_branch, edges, and the others the bucket declares;
#   2. DeepGEMM built from the offline bundle, its JIT cache filled (as benchmarks/gpu_peers.sh);
#   3. the peers that run here against triton_fused v8 on the 19 DeepSeek workloads: deepgemm,
#      torch_cublaslt, triton_fused (the same protocol as reports/moe_deepseek_h200/run: 20 x 3).
# Results: $OUT/s5b.tar.gz (packed after every step).
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
export PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache FIB_CACHE_DIR=/tmp/fib-cache-s5b
F=$OUT/s5b
mkdir -p $F
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > $F/nvidia-smi.csv 2>&1
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
BUDGET_S=580
STEP_SHOW='^│|PASSED:|rc='
source benchmarks/device_steps.sh
step sweep 60 python3 -m fib run -d $DS -s triton_fused --sweep triton_fused -w seq_len=11948 seq_len=14107 \
  --iterations 20 --num-trials 3 --output $F/sweep
STEP_SHOW='.'
BUNDLE=.peers/deepgemm
export DG_WORK=$PWD/$BUNDLE/work DG_BUILD_TIMEOUT_S=240
step build 120 bash $BUNDLE/build.sh
if [ -f $BUNDLE/work/env.sh ]; then
  PRE="${LD_PRELOAD-}"
  source $BUNDLE/work/env.sh
  export DEEPGEMM_LD_PRELOAD="$LD_PRELOAD"
  if [ -n "$PRE" ]; then export LD_PRELOAD="$PRE"; else unset LD_PRELOAD; fi
  echo "DEEPGEMM_LD_PRELOAD=$DEEPGEMM_LD_PRELOAD DG_JIT_CACHE_DIR=$DG_JIT_CACHE_DIR" | tee -a $F/steps.txt
  step jit_warm 40 env LD_PRELOAD="$DEEPGEMM_LD_PRELOAD" timeout 200 python3 benchmarks/deepgemm_jit_warm.py --definition $DS
fi
STEP_SHOW='^│|PASSED:|UNSUPPORTED|rc='
step peers 60 python3 -m fib run -d $DS -s deepgemm torch_cublaslt triton_fused --jit-timeout 180 \
  --also-check contest --iterations 20 --num-trials 3 --output $F/peers
echo "total $(( $(date +%s) - T0 )) s"
