#!/usr/bin/env bash
# Issue #14 item 2 on the H200 (one device call, ~6-8 min): triton_fused's and triton_staged's
# configurations through the normal harness. (1) compile_sm90.py --sweep: registers/spills of every
# declared configuration with the machine's Triton 3.6; (2) `fib run --sweep` ranks each solution's
# configurations per workload ($OUT/configs/sweep/sweep.md); (3) triton_fused without --config
# (its own choice) on the same workloads: its errors must equal the sweep's @default rows'.
# Results under $OUT/configs.
set -uo pipefail
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
R=$OUT/configs
mkdir -p $R
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
W="seq_len=1 seq_len=7 seq_len=14 seq_len=15 seq_len=32 seq_len=80 seq_len=901 seq_len=14107"
python3 families/moe/benchmarks/compile_sm90.py --sweep --tokens 1 7 15 80 901 14107 > $R/compile_sm90_sweep.txt 2>&1
tail -3 $R/compile_sm90_sweep.txt
python3 -m fib run -d $DS --sweep triton_fused --sweep triton_staged -s triton_fused triton_staged -w $W \
  --iterations 20 --num-trials 3 --output $R/sweep 2>&1 | tail -80
# (1) own choice (no --config) on the same workloads: compare with the sweep's @default rows
python3 -m fib run -d $DS -s triton_fused -w $W --iterations 20 --num-trials 3 --output $R/own 2>&1 | tail -20
python3 - "$R" <<'PY'
import sys, json
from pathlib import Path
from fib.rundir import read_traces
r = Path(sys.argv[1])
own = {t.workload.uuid: t for t in read_traces(r / "own", repair=False).traces}
sw = {t.workload.uuid: t for t in read_traces(r / "sweep", repair=False).traces if t.solution == "triton_fused@default"}
for uuid, t in own.items():
    a, b = t.evaluation, sw.get(uuid).evaluation if uuid in sw else None
    same = b is not None and a.correctness and b.correctness and \
        (a.correctness.max_absolute_error, a.correctness.relative_l2_error) == (b.correctness.max_absolute_error, b.correctness.relative_l2_error)
    print(t.workload.axes, "own", a.status.value, a.performance.latency_ms if a.performance else None,
          "@default", b.status.value if b else None, b.performance.latency_ms if b and b.performance else None,
          "same errors" if same else "ERRORS DIFFER")
PY
