#!/usr/bin/env bash
# One device call (carry .device .fibench), 2026-12-02 session 6, sixth call: the harness-speed side-by-side once
# more (gpu_harness_speed.sh: cold, warm x2, flashinfer-bench once) on the final code, with the machine's load and the children's import
# time recorded around it (call 5's first warm runs started 0.4-1.2 s later than its last two: imports).
# Results: $OUT/harness_speed.tar.gz, $OUT/s6f.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
F=$OUT/s6f
mkdir -p $F
{ date; nproc; cat /proc/loadavg; cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>&1; \
  ps -eo pcpu,etime,comm --sort=-pcpu | head -8; } > $F/machine_before.txt 2>&1
FI_API_BEFORE_S=1 FI_PERMISSIVE_BEFORE_S=1 bash benchmarks/gpu_harness_speed.sh 2>&1 | grep -v "^import time" | tail -12
{ date; cat /proc/loadavg; ps -eo pcpu,etime,comm --sort=-pcpu | head -8; } > $F/machine_after.txt 2>&1
export PYTHONPYCACHEPREFIX=/tmp/fib-device/pycache
for i in 1 2 3; do
  /usr/bin/time -f "preload imports: %e s wall, %U s user, %S s sys" python3 -c "import torch, fib.timing.measure, \
fib.schema, fib.schema.config, fib.harness.torch_state, fib.harness.inputs, fib.harness.check, fib.harness.call, \
fib.harness.worker, fib.harness.judge, safetensors.torch" >> $F/imports.txt 2>&1
done
cat $F/imports.txt
tar czf $OUT/s6f.tar.gz -C $OUT s6f
