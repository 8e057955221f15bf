#!/usr/bin/env bash
# The last device call of the session: fib cold/warm against flashinfer-bench 0.1.2 again (harness speed
# after this session's changes), the peers on the 19 DeepSeek workloads again (cupti attribution fix), and
# the GEMM-stage times of every solution that runs from `fib profile` (nsys), in the time left.
# Carry .device .fibench .peers.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
left() { echo $(( 570 - ($(date +%s) - T0) )); }
FI_API_BEFORE_S=0 FI_PERMISSIVE_BEFORE_S=0 bash benchmarks/gpu_harness_speed.sh
rm -rf $OUT/harness_speed
echo "peers: $(left) s left"
bash benchmarks/gpu_peers.sh
source .device/activate.sh
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
mkdir -p $OUT/peers_profile
L=$(( $(left) - 20 ))
if [ $L -gt 60 ]; then
  timeout $L python3 -m fib profile -d $DS -s triton_fused triton_staged torch_cublaslt --backend nsys \
    --output $OUT/peers_profile/prof_main > $OUT/peers_profile/prof_main.log 2>&1; echo "profile rc=$?"
  tail -5 $OUT/peers_profile/prof_main.log
fi
L=$(( $(left) - 10 ))
if [ $L -gt 40 ] && [ -f .peers/deepgemm/work/env.sh ]; then
  ( source .peers/deepgemm/work/env.sh; timeout $L python3 -m fib profile -d $DS -s deepgemm --backend nsys \
    --output $OUT/peers_profile/prof_deepgemm > $OUT/peers_profile/prof_deepgemm.log 2>&1; echo "profile deepgemm rc=$?" )
  tail -5 $OUT/peers_profile/prof_deepgemm.log
fi
find $OUT/peers_profile -name "*.sqlite" -size +10M -delete; find $OUT/peers_profile -name "*.nsys-rep" -delete
tar czf $OUT/peers_profile.tar.gz -C $OUT peers_profile && rm -rf $OUT/peers_profile
rm -rf $OUT/peers
ls -la $OUT
