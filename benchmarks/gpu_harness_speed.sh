#!/usr/bin/env bash
# Harness wall time side by side (issue #14 item 5, "a warm run in seconds"), one device call,
# carrying .device and .fibench (the flashinfer-bench 0.1.2, apache-tvm-ffi and docstring-parser
# wheels, downloaded as benchmarks/fibench_package.py's header says):
#   1. fib cold: `fib run` of triton_fused on the 19 DeepSeek workloads, warm-up 10, 50 x 3,
#      empty reference cache (FIB_CACHE_DIR) and empty Triton cache (TRITON_CACHE_DIR);
#   2. fib warm, 3. fib warm again: the same command on the caches the cold run filled;
#   4. flashinfer-bench 0.1.2's `run` on the same workloads as a trace set written by
#      `fibench_package.py pack` (random inputs, contest tolerance; the Triton cache of the fib
#      runs, so it is as warm as fib's warm runs), then `verify`: every workload must have been
#      timed; if not, once more with a tolerance every finite output passes;
#   5. if time is left: flashinfer-bench through its API without timing the reference
#      (profile_baseline=False), to show what the reference timing costs it.
# Everything (logs, run directories, flashinfer-bench's trace sets, walls.txt, summary.md) lands in
# $OUT/harness_speed.tar.gz, packed after each step; the summary table is printed at the end.
set -uo pipefail
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
R=$OUT/harness_speed
mkdir -p $R
DS=${DS:-moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048}  # DS=... for a dry run on another definition
SOL=triton_fused
WARMUP=10 ITERATIONS=50 TRIALS=3
TIMING="--warmup-runs $WARMUP --iterations $ITERATIONS --num-trials $TRIALS"
START=$(date +%s.%N)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > $R/nvidia-smi.csv 2>&1
pack() { tar czf $OUT/harness_speed.tar.gz -C $OUT harness_speed; }
elapsed() { python3 -c "print(int($(date +%s.%N) - $START))"; }
triton_entries() { ls "$TRITON_CACHE_DIR" 2>/dev/null | wc -l; }
t() {  # t NAME LIMIT_S CMD...: run under a time limit, log, record the wall time and the Triton cache size
  local name=$1 limit=$2; shift 2
  local before=$(triton_entries)
  local s=$(date +%s.%N)
  timeout $limit "$@" > $R/$name.log 2>&1
  local rc=$?
  local e=$(date +%s.%N)
  echo "$name rc=$rc wall_s=$(python3 -c "print(round($e-$s,2))") triton_cache_before=$before triton_cache_after=$(triton_entries)" | tee -a $R/walls.txt
  tail -3 $R/$name.log
  pack
  return $rc
}
# flashinfer-bench's CLI entry point (what its console script calls), its package on PYTHONPATH for
# its commands only; FIB_CACHE_PATH (flashinfer-bench's variable, not fib's) keeps its builds and logs
FI_ENV="PYTHONPATH=/tmp/fibsite:$PYTHONPATH"
FI_CLI=(python3 -c 'import sys; from flashinfer_bench.cli.main import cli; sys.argv[0] = "flashinfer-bench"; sys.exit(cli())')

export FIB_CACHE_DIR=/tmp/fibench/fib-cache TRITON_CACHE_DIR=/tmp/fibench/triton-cache
rm -rf /tmp/fibench && mkdir -p $FIB_CACHE_DIR $TRITON_CACHE_DIR
# The GPU machine runs Python with PYTHONDONTWRITEBYTECODE=1 and its packages hold no bytecode, so
# every process compiled some 3000 modules from source: 5.4 s in a worker, 2.9 s in the judge,
# 2.2 s in the parent (cProfile, 2026-12-02). A pip install writes that bytecode once; here it is
# written once into a cache folder of our own (PYTHONPYCACHEPREFIX) before any timed run, for fib
# and flashinfer-bench alike, and is not part of the cold run's "cold" (reference and Triton caches).
python3 -c "import sys, os; print('bytecode: dont_write', sys.flags.dont_write_bytecode, 'torch dir writable',
  os.access(os.path.dirname(__import__('torch').__file__), os.W_OK))" 2>&1 | tee $R/bytecode.txt
export PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache
# Every directory on sys.path is compiled (the standard library too: with a prefix set, Python looks for
# bytecode only there, so the system's own __pycache__ folders no longer count; until 2026-12-02 session 6
# only torch, triton, scipy, numpy, pydantic, sympy and fib were, and a warm run's worker still compiled
# ~150 modules from source, 0.6 s of its start).
if [ ! -d $PYTHONPYCACHEPREFIX ]; then
  s=$(date +%s.%N)
  SITES=$(python3 -c "import os, sys; print(' '.join(p for p in sys.path if p and os.path.isdir(p)))")
  env -u PYTHONDONTWRITEBYTECODE timeout 240 python3 -m compileall -q -j 16 $SITES > $R/compileall.log 2>&1
  rc=$?
  echo "bytecode cache written in $(python3 -c "print(round($(date +%s.%N) - $s, 1))") s (rc=$rc)" | tee -a $R/bytecode.txt
fi

rm -rf /tmp/fibsite
# flashinfer-bench's setup before any timing (not counted, as fib's install is not): its wheels
# (apache-tvm-ffi is imported only for C++/CUDA solutions, so its failing to install is no stop)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fibsite .fibench/wheels/*.whl \
  || { echo "all wheels did not install; without apache-tvm-ffi:"; \
       python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fibsite \
         .fibench/wheels/flashinfer_bench-*.whl .fibench/wheels/docstring_parser-*.whl; }
# its modules' bytecode too, into the same prefix (fib's are; flashinfer-bench's were not until session 6)
env -u PYTHONDONTWRITEBYTECODE timeout 60 python3 -m compileall -q -j 16 /tmp/fibsite >> $R/compileall.log 2>&1
for set in fi_cli fi_permissive fi_api_no_baseline; do
  python3 benchmarks/fibench_package.py pack --output $R/$set --definition $DS --solution $SOL > $R/pack_$set.log 2>&1 \
    || { cat $R/pack_$set.log; exit 1; }
done
env $FI_ENV python3 benchmarks/fibench_package.py load $R/fi_cli 2>&1 | tee $R/fi_load.log
FI_TOL=$(python3 benchmarks/fibench_package.py flags $R/fi_cli)
pack

t fib_cold 180 python3 -m fib run --definitions $DS --solutions $SOL $TIMING --output $R/fib_cold
t fib_warm 100 python3 -m fib run --definitions $DS --solutions $SOL $TIMING --output $R/fib_warm
t fib_warm2 100 python3 -m fib run --definitions $DS --solutions $SOL $TIMING --output $R/fib_warm2
t fi_cli 200 env $FI_ENV FIB_CACHE_PATH=$R/fi_cli.cache "${FI_CLI[@]}" run --local $R/fi_cli \
  --definitions $DS --solutions $SOL $TIMING $FI_TOL
python3 benchmarks/fibench_package.py verify $R/fi_cli --csv $R/fi_cli_verify.csv 2>&1 | tee $R/fi_cli_verify.log
if [ ${PIPESTATUS[0]} -ne 0 ]; then
  echo "flashinfer-bench left workloads untimed at $FI_TOL: its wall time above is not comparable"
  if [ $(elapsed) -lt ${FI_PERMISSIVE_BEFORE_S:-330} ]; then
    t fi_permissive 200 env $FI_ENV FIB_CACHE_PATH=$R/fi_permissive.cache "${FI_CLI[@]}" run --local $R/fi_permissive \
      --definitions $DS --solutions $SOL $TIMING --atol 1e30 --rtol 1e30
    python3 benchmarks/fibench_package.py verify $R/fi_permissive --csv $R/fi_permissive_verify.csv 2>&1 | tee $R/fi_permissive_verify.log
  fi
fi
if [ -n "${REPEATS:-}" ]; then  # REPEATS=1: fib warm twice more and flashinfer-bench's CLI once more, for the spread
  t fib_warm3 100 python3 -m fib run --definitions $DS --solutions $SOL $TIMING --output $R/fib_warm3
  t fib_warm4 100 python3 -m fib run --definitions $DS --solutions $SOL $TIMING --output $R/fib_warm4
  python3 benchmarks/fibench_package.py pack --output $R/fi_cli2 --definition $DS --solution $SOL > $R/pack_fi_cli2.log 2>&1
  t fi_cli2 200 env $FI_ENV FIB_CACHE_PATH=$R/fi_cli2.cache "${FI_CLI[@]}" run --local $R/fi_cli2 \
    --definitions $DS --solutions $SOL $TIMING $FI_TOL
  python3 benchmarks/fibench_package.py verify $R/fi_cli2 --csv $R/fi_cli2_verify.csv > $R/fi_cli2_verify.log 2>&1
  tail -1 $R/fi_cli2_verify.log
fi
if [ $(elapsed) -lt ${FI_API_BEFORE_S:-420} ]; then
  TOL_API=""
  [ -f $R/fi_permissive_verify.csv ] && TOL_API="--atol 1e30 --rtol 1e30"
  t fi_api_no_baseline 120 env $FI_ENV FIB_CACHE_PATH=$R/fi_api_no_baseline.cache python3 benchmarks/fibench_package.py \
    run-api $R/fi_api_no_baseline --no-profile-baseline $TIMING $TOL_API
  python3 benchmarks/fibench_package.py verify $R/fi_api_no_baseline --csv $R/fi_api_no_baseline_verify.csv > $R/fi_api_no_baseline_verify.log 2>&1
  tail -1 $R/fi_api_no_baseline_verify.log
else
  echo "fi_api_no_baseline skipped: $(elapsed) s used" | tee -a $R/walls.txt
fi
python3 benchmarks/harness_speed_summary.py $R --iterations $ITERATIONS --num-trials $TRIALS 2>&1 | tee $R/summary.md
echo "total $(elapsed) s"
pack
