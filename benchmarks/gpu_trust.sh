#!/usr/bin/env bash
# One device call of proof for the trust and harness-v2 work (run from the repo root on the GPU
# machine, carrying .device and .old). Everything lands in $OUT/trust.tar.gz, packed after each step.
#  1. the DeepSeek report run at the definitions' new tolerance (cold reference cache), with the
#     contest tolerance recorded beside it (--also-check contest), then the roofline;
#  2. the cost of a worker per solution: warm runs of the two Triton solutions with this harness and
#     with fib at 69b994e (.old/, made by `git archive 69b994e fib definitions datasets solutions`);
#  3. fib selftest on the GPU: the demo definition and DeepSeek's smallest workload.
set -uo pipefail
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
R=$OUT/trust
mkdir -p $R
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
DEMO=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e8_h512_i256
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > $R/nvidia-smi.csv 2>&1
pack() { tar czf $OUT/trust.tar.gz -C $OUT trust; }
t() {  # t NAME CMD...: run, log, and record the wall time
  local name=$1; shift
  local s=$(date +%s.%N)
  "$@" > $R/$name.log 2>&1
  local rc=$?
  local e=$(date +%s.%N)
  echo "$name rc=$rc wall_s=$(python3 -c "print(round($e-$s,1))")" | tee -a $R/walls.txt
  tail -3 $R/$name.log
  pack
}
export FIB_CACHE_DIR=/tmp/fib-cache-new
T="--definitions $DS --solutions triton_staged triton_fused --iterations 20 --num-trials 3"
t new_full python3 -m fib run --definitions $DS --also-check contest --iterations 20 --num-trials 3 --output $R/run_ds
python3 families/moe/benchmarks/roofline.py $R/run_ds --output $R/roofline > $R/roofline.log 2>&1; pack
t new_warm python3 -m fib run $T --output $R/run_new_warm
(
  cd .old
  export FIB_CACHE_DIR=/tmp/fib-cache-old PYTHONPATH=$PWD:${PYTHONPATH:-}
  t old_fill python3 -m fib run $T --iterations 1 --num-trials 1 --warmup-runs 1 --output $R/run_old_fill
  t old_warm python3 -m fib run $T --output $R/run_old_warm
)
t selftest_demo python3 -m fib selftest -d $DEMO --output $R/selftest_demo
t selftest_ds timeout 170 python3 -m fib selftest -d $DS --jit-timeout 60 --output $R/selftest_ds
