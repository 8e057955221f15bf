#!/usr/bin/env bash
# Second device call of the trust work: fib selftest on the demo definition's two smallest
# workloads (the smallest has an all-zero reference) and a hanging first call's cost under a
# short --jit-timeout, then the warm two-solution DeepSeek run again. Results in $OUT/trust2.tar.gz.
set -uo pipefail
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
R=$OUT/trust2
mkdir -p $R
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
DEMO=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e8_h512_i256
pack() { tar czf $OUT/trust2.tar.gz -C $OUT trust2; }
t() {
  local name=$1; shift
  local s=$(date +%s.%N)
  "$@" > $R/$name.log 2>&1
  local rc=$?
  local e=$(date +%s.%N)
  echo "$name rc=$rc wall_s=$(python3 -c "print(round($e-$s,1))")" | tee -a $R/walls.txt
  tail -4 $R/$name.log
  pack
}
export FIB_CACHE_DIR=/tmp/fib-cache-new
t selftest_demo python3 -m fib selftest -d $DEMO --output $R/selftest_demo
t hang_ds python3 -m fib selftest -d $DS -w seq_len=7 --fakes hangs,reference --jit-timeout 20 --timeout 20 --output $R/hang_ds
t new_warm python3 -m fib run --definitions $DS --solutions triton_staged triton_fused --iterations 20 --num-trials 3 --output $R/run_new_warm
t new_warm2 python3 -m fib run --definitions $DS --solutions triton_staged triton_fused --iterations 20 --num-trials 3 --output $R/run_new_warm2
