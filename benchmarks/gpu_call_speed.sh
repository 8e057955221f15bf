#!/usr/bin/env bash
# One device call for the harness-speed work (issue #14 item 5). Carry .device .fibench.
#   1. fib cold/warm/warm2 against flashinfer-bench 0.1.2 (benchmarks/gpu_harness_speed.sh);
#   2. the cupti timer's start-up, one process per variant (benchmarks/kineto_startup.py --variant);
#   3. one more warm run with FIB_PROFILE_CHILDREN and PYTHONPROFILEIMPORTTIME: cProfile stats of the parent's children (worker,
#      judge), printed as the top functions by cumulative and own time (where the host time goes).
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
mkdir -p $OUT/speed_misc
FI_API_BEFORE_S=${FI_API_BEFORE_S:-300} FI_PERMISSIVE_BEFORE_S=300 bash benchmarks/gpu_harness_speed.sh
export PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache  # written by gpu_harness_speed.sh
for v in ${KINETO_VARIANTS:-after_cuda before_cuda cuda_only background import_thread}; do
  timeout 60 python3 benchmarks/kineto_startup.py --variant $v > $OUT/speed_misc/kineto_$v.json 2>> $OUT/speed_misc/kineto.err
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-1], {k: (round(v,3) if isinstance(v,float) else v) for k,v in d.items() if k!='sessions'}, [round(s['enter_s'],3) for s in d['sessions']], [s['gpu_events'] for s in d['sessions']])" $OUT/speed_misc/kineto_$v.json
done
LEFT=$(( 570 - ($(date +%s) - T0) ))
echo "profiled warm run: ${LEFT} s left"
if [ $LEFT -gt 60 ]; then
  export FIB_CACHE_DIR=/tmp/fibench/fib-cache TRITON_CACHE_DIR=/tmp/fibench/triton-cache PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache
  P=$OUT/speed_misc/child_profiles
  # every process's import tree on its stderr (the worker's and judge's land in the run's logs/)
  PYTHONPROFILEIMPORTTIME=1 FIB_PROFILE_CHILDREN=$P timeout $LEFT python3 -m cProfile -o $OUT/speed_misc/parent.prof -m fib run \
    --definitions moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048 --solutions triton_fused \
    --warmup-runs 10 --iterations 50 --num-trials 3 --output $OUT/speed_misc/run_profiled > $OUT/speed_misc/run_profiled.log 2>&1
  echo "profiled rc=$?"; tail -2 $OUT/speed_misc/run_profiled.log
  python3 benchmarks/harness_timeline.py $OUT/speed_misc/run_profiled
  for f in $P/*.prof $OUT/speed_misc/parent.prof; do
    echo "== $f"; python3 -c "
import pstats, sys
s = pstats.Stats(sys.argv[1]); s.sort_stats('cumulative').print_stats(45); s.sort_stats('tottime').print_stats(30)" $f > $f.txt 2>&1
    head -c 3500 $f.txt
  done
fi
tar czf $OUT/speed_misc.tar.gz -C $OUT speed_misc && rm -rf $OUT/speed_misc
