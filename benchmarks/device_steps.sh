# Sourced by the benchmarks/gpu_call_*.sh scripts of one device call each. Before sourcing, set:
#   T0         the call's start (date +%s)
#   BUDGET_S   seconds the call may use in all (the device tool's limit less a margin)
#   F          the results folder under $OUT (packed as $OUT/<its name>.tar.gz after every step)
#   STEP_SHOW  optional: an extended regex; the lines of a step's log that match are printed (default: all)
# step NAME MIN_SECONDS CMD...: run CMD with the time left (skipped, and said so, when less than
# MIN_SECONDS remain), its output in $F/NAME.log, its exit code and wall time in $F/steps.txt.
step() {
  local name=$1 need=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - T0) ))
  echo "== $name: ${left} s left"
  if [ $left -lt $need ]; then echo "skipped $name: ${left} s left" | tee -a $F/skipped.txt; return; fi
  local s=$(date +%s.%N)
  timeout $left "$@" > $F/$name.log 2>&1
  echo "$name rc=$? wall_s=$(python3 -c "print(round($(date +%s.%N) - $s, 2))")" | tee -a $F/steps.txt
  grep -v "^import time" $F/$name.log | grep -E "${STEP_SHOW:-.}" | tail -24
  tar czf $OUT/$(basename $F).tar.gz -C $(dirname $F) $(basename $F)
}
