#!/usr/bin/env bash
# One device call (carry .device), 2026-12-02 session 5: where a warm run's per-pair seconds go.
# A cold run fills the reference and Triton caches; then two warm runs of triton_fused on the 19 DeepSeek
# workloads (10 / 50 x 3), the second with FIB_PROFILE_CHILDREN (cProfile of the worker and the judge).
# Results: $OUT/s5d.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
export PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache FIB_CACHE_DIR=/tmp/fib-cache-s5d TRITON_CACHE_DIR=/tmp/triton-s5d
F=$OUT/s5d
mkdir -p $F/prof
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
TIMING="--warmup-runs 10 --iterations 50 --num-trials 3"
BUDGET_S=300
STEP_SHOW='PASSED:|rc='
source benchmarks/device_steps.sh
step cold 60 python3 -m fib run -d $DS -s triton_fused $TIMING --output $F/cold
step warm 20 python3 -m fib run -d $DS -s triton_fused $TIMING --output $F/warm
step warm_prof 20 env FIB_PROFILE_CHILDREN=$F/prof python3 -m fib run -d $DS -s triton_fused $TIMING --output $F/warm_prof
echo "total $(( $(date +%s) - T0 )) s"
