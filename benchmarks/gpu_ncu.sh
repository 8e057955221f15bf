#!/usr/bin/env bash
# `fib profile --backend ncu` on the GPU machine, in one device call (run from the repo root, carrying
# .device): the demo pipelines (proves the NVTX stack order and nesting: demo_a's gemm2 sits inside
# "experts"), then triton_fused on three DeepSeek workloads (decode 7, 901, prefill 14107) joined to
# the committed floor. Everything lands in $OUT/ncu/; the raw ncu CSVs are meant to be committed as
# fixtures (tests/fixtures/profile/h200_ncu_*.csv) so the reader is tested on the real format.
#   bash benchmarks/gpu_ncu.sh            (about 2-3 minutes on an H200)
#   bash benchmarks/gpu_ncu.sh all        (instead: all 19 workloads, the ncu table for the report)
set -uo pipefail
MODE=${1:-three}
source .device/activate.sh
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
R=$OUT/ncu
mkdir -p $R
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
FLOOR=reports/moe_deepseek_h200/roofline.csv
[ -f $FLOOR ] || FLOOR=$(ls families/moe/reports/moe_deepseek_h200/roofline.csv 2>/dev/null | head -1)
NCU=$(python3 -c "from fib.profile.ncu import find_ncu; print(find_ncu() or '')")
echo "ncu: ${NCU:-NOT FOUND}"
if [ -z "$NCU" ]; then
  ls -d /usr/local/cuda*/bin /opt/nvidia/nsight-compute* 2>&1 | tee $R/where_ncu.txt
  exit 1
fi
export FIB_NCU=$NCU
$NCU --version | tee $R/ncu_version.txt
# which tensor-pipe metrics this ncu knows on this GPU (fib picks its candidates from this list)
$NCU --query-metrics > $R/query_metrics.txt 2>&1; echo "query-metrics exit $? ($(wc -l < $R/query_metrics.txt) lines)"
grep -iE "tensor|gmma|hmma" $R/query_metrics.txt | head -20
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee $R/nvidia-smi.csv

if [ "$MODE" != all ]; then
S=$(date +%s)
timeout 150 python3 -m fib profile --demo --backend ncu --output $R/demo > $R/demo.log 2>&1
echo "demo: exit $? in $(( $(date +%s) - S )) s"; tail -4 $R/demo.log
S=$(date +%s)
timeout 390 python3 -m fib profile --definitions $DS --solutions triton_fused \
  --workloads seq_len=7 seq_len=901 seq_len=14107 --backend ncu ${FLOOR:+--floor $FLOOR} --output $R/ds > $R/ds.log 2>&1
echo "deepseek: exit $? in $(( $(date +%s) - S )) s"
cat $R/ds/profile/ncu.md 2>/dev/null || tail -30 $R/ds.log
fi
if [ "$MODE" = all ]; then
  S=$(date +%s)
  timeout 580 python3 -m fib profile --definitions $DS --solutions triton_fused --backend ncu \
    ${FLOOR:+--floor $FLOOR} --output $R/ds_all > $R/ds_all.log 2>&1
  echo "deepseek, all workloads: exit $? in $(( $(date +%s) - S )) s"
  grep -E "^### |^kernel time" $R/ds_all/profile/ncu.md 2>/dev/null | paste - - | head -40
fi

# the raw NVTX cells of the first kernels, and what the reader made of them
python3 - <<PY
import csv, json
from pathlib import Path
for name in ("demo", "ds"):
    p = Path("$R") / name / "profile"
    raw = p / "ncu_raw.csv"
    if not raw.exists():
        print(name, "no ncu_raw.csv"); continue
    rows = [r for r in csv.reader(l for l in raw.read_text().splitlines() if not l.startswith("=="))]
    head = next(i for i, r in enumerate(rows) if r and r[0] == "ID")
    col = next((i for i, h in enumerate(rows[head]) if h.startswith("thread Domain")), None)
    print(name, "header:", rows[head][:14]); print(name, "units:", rows[head + 1][13:])
    for r in rows[head + 2:head + 5]:
        print(name, "nvtx:", r[col] if col is not None else "(no NVTX column)", "| kernel:", r[rows[head].index("Kernel Name")][:60])
    meta = json.loads((p / "meta.json").read_text())
    print(name, "facts:", json.dumps(meta.get("ncu_facts", {}).get("stack_order")), meta.get("ncu_metric_notes"))
    print(name, "command:", meta.get("command", "")[:400])
PY
# the demo's attribution: demo_a's gemm2 kernels must be in stage gemm2 (not "experts"), routing in routing
python3 -c "
import pandas as pd
k = pd.read_csv('$R/demo/profile/kernels.csv')
print(k.groupby(['solution', 'stage'])['per_call_us'].sum().round(2).to_string())" 2>&1 | tail -20
cp $R/ds/profile/ncu_raw.csv $OUT/h200_ncu_ds_triton_fused.csv 2>/dev/null
cp $R/demo/profile/ncu_raw.csv $OUT/h200_ncu_demo.csv 2>/dev/null
cp $R/ds_all/profile/ncu_raw.csv $OUT/h200_ncu_ds_all_triton_fused.csv 2>/dev/null
ls -la $OUT
