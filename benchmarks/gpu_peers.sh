#!/usr/bin/env bash
# The peer solutions on the DeepSeek definition, one device call (issue 12, item 2).
#
#   here, once:      bash benchmarks/gpu_peers.sh prepare   # copies the DeepGEMM bundle into .peers/deepgemm
#   on the H200:     bash benchmarks/gpu_peers.sh           # (carry .device and .peers)
#
# On the GPU machine: builds DeepGEMM from the bundle (.peers/deepgemm/build.sh, ~1 min, offline), fills its
# JIT cache in parallel (benchmarks/deepgemm_jit_warm.py), then `fib run` of torch_cublaslt, deepgemm,
# triton_fused and triton_staged on the 19 DeepSeek workloads. DeepGEMM's env.sh exports LD_PRELOAD (its JIT
# crashes in std::regex without the system libstdc++); here that value goes to DEEPGEMM_LD_PRELOAD instead, which
# the deepgemm solution's spec.worker_env turns into LD_PRELOAD for its own worker only. Everything lands in
# $OUT/peers.tar.gz, packed after each step.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$HERE"
BUNDLE=.peers/deepgemm
if [ "${1:-}" = prepare ]; then
  SRC="${PEERS_SRC:-/work/shared/peers/deepgemm}"
  mkdir -p .peers && rm -rf "$BUNDLE" && cp -r "$SRC" "$BUNDLE" && chmod -R u+w "$BUNDLE"
  echo "copied $SRC to $BUNDLE ($(du -sh "$BUNDLE" | cut -f1)); carry .peers"
  exit 0
fi
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
if [ ! -d "$BUNDLE" ] && [ -d shared/peers/deepgemm ]; then mkdir -p .peers && cp -r shared/peers/deepgemm "$BUNDLE"; fi
R=$OUT/peers
mkdir -p $R
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
T0=$(date +%s)
pack() { tar czf $OUT/peers.tar.gz -C $OUT peers; }
step() {  # step NAME CMD...: run, log, record the wall time
  local name=$1; shift
  local s=$(date +%s)
  "$@" > $R/$name.log 2>&1
  local rc=$?
  echo "$name rc=$rc wall_s=$(( $(date +%s) - s )) total_s=$(( $(date +%s) - T0 ))" | tee -a $R/walls.txt
  tail -4 $R/$name.log
  pack
  return $rc
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > $R/nvidia-smi.csv 2>&1
export DG_WORK=$PWD/$BUNDLE/work DG_BUILD_TIMEOUT_S=240
if step build bash $BUNDLE/build.sh; then
  PRE="${LD_PRELOAD-}"
  source $BUNDLE/work/env.sh          # CUDA_HOME, PYTHONPATH (deep_gemm), DG_JIT_CACHE_DIR, LD_PRELOAD
  export DEEPGEMM_LD_PRELOAD="$LD_PRELOAD"
  if [ -n "$PRE" ]; then export LD_PRELOAD="$PRE"; else unset LD_PRELOAD; fi
  echo "DEEPGEMM_LD_PRELOAD=$DEEPGEMM_LD_PRELOAD DG_JIT_CACHE_DIR=$DG_JIT_CACHE_DIR" | tee -a $R/walls.txt
  step jit_warm env LD_PRELOAD="$DEEPGEMM_LD_PRELOAD" timeout 200 python3 benchmarks/deepgemm_jit_warm.py --definition $DS
else
  echo "DeepGEMM did not build: deepgemm will be reported UNSUPPORTED (deep_gemm not importable)" | tee -a $R/walls.txt
fi
export FIB_CACHE_DIR=/tmp/fib-cache-peers
LEFT=$(( 350 - ($(date +%s) - T0) ))
[ $LEFT -lt 120 ] && LEFT=120
step run timeout $LEFT python3 -m fib run --definitions $DS \
  --solutions torch_cublaslt deepgemm triton_fused triton_staged vllm_fused_moe \
  --jit-timeout 180 --iterations 20 --num-trials 3 --output $R/run_ds
echo "done in $(( $(date +%s) - T0 )) s" | tee -a $R/walls.txt
pack
