#!/usr/bin/env bash
# Run-to-run spread of the closest MoE cases (seq_len 1: the 50% floor target; 14 and 32: the
# smallest fused-vs-staged margins): three back-to-back `fib run`s on the GPU machine, carrying
# .device. Summary on stdout; the run directories come back as $OUT/repeats.tar.gz.
source .device/activate.sh && export FIB_GIT_COMMIT=$(cat .device/git-commit)
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
for i in 1 2 3; do
  python3 -m fib run --definitions $DS --solutions triton_fused triton_staged \
    --workloads seq_len=1 seq_len=14 seq_len=32 --iterations 20 --num-trials 3 --output $OUT/rep$i > $OUT/rep$i.log 2>&1
  tail -1 $OUT/rep$i.log
done
python3 - <<'PY'
import json, os
out = os.environ["OUT"]
for i in (1, 2, 3):
    d = {}
    for line in open(f"{out}/rep{i}/traces.jsonl"):
        t = json.loads(line); p = t["evaluation"].get("performance") or {}
        d[(t["workload"]["axes"]["seq_len"], t["solution"])] = (t["evaluation"]["status"], p.get("latency_ms"))
    print(i, {f"{k[0]}/{k[1][7:]}": (v[0][:4], round(v[1], 5) if v[1] else None) for k, v in sorted(d.items())})
PY
cd $OUT && tar czf repeats.tar.gz rep1 rep2 rep3 rep*.log && rm -rf rep1 rep2 rep3
