#!/usr/bin/env bash
# One device call: the cupti timer's start-up (benchmarks/kineto_startup.py), fib cold/warm against
# flashinfer-bench 0.1.2 (benchmarks/gpu_harness_speed.sh), then the compiled-solution examples
# (benchmarks/gpu_native_example.sh) in the time left. Carry .device .fibench .fibench_example.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
source .device/activate.sh
mkdir -p $OUT/speed_misc
timeout 60 python3 benchmarks/kineto_startup.py > $OUT/speed_misc/kineto.json 2> $OUT/speed_misc/kineto.err
timeout 60 python3 benchmarks/kineto_startup.py --background > $OUT/speed_misc/kineto_background.json 2>> $OUT/speed_misc/kineto.err
cat $OUT/speed_misc/kineto.json $OUT/speed_misc/kineto_background.json | python3 -c "import sys; print(sys.stdin.read()[:3000])"
FI_API_BEFORE_S=300 FI_PERMISSIVE_BEFORE_S=300 bash benchmarks/gpu_harness_speed.sh
rm -rf $OUT/harness_speed
LEFT=$(( 575 - ($(date +%s) - T0) ))
echo "native examples: ${LEFT} s left"
if [ $LEFT -gt 60 ]; then
  mkdir -p $OUT/native
  OUT=$OUT/native timeout $LEFT bash benchmarks/gpu_native_example.sh > $OUT/speed_misc/native.log 2>&1
  echo "native rc=$?"; tail -20 $OUT/speed_misc/native.log
  rm -rf $OUT/native/cache
  tar czf $OUT/native.tar.gz -C $OUT native && rm -rf $OUT/native
fi
tar czf $OUT/speed_misc.tar.gz -C $OUT speed_misc && rm -rf $OUT/speed_misc
