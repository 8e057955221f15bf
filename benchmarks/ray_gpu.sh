#!/usr/bin/env bash
# The Ray executor on a real GPU host (what issue #16 should show, docs/cluster.md): the same
# definition through the local executor and through `fib run --cluster ray://auto` on a one-host
# Ray cluster with this host's GPUs, then `fib compare` of the two (no regressions expected) and
# the executor's record (actors, GPUs, references computed once per workload and seed).
#   bash benchmarks/ray_gpu.sh [DEFINITION]      results under $OUT (default ./out-ray-gpu)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out-ray-gpu}; mkdir -p "$OUT"
DEF=${1:-moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e8_h512_i256}
if ! python -c "import ray" 2>/dev/null; then
  echo "UNSUPPORTED: ray is not installed here (pip install 'fib[ray]'; the wheel is ~80 MB)" | tee "$OUT/UNSUPPORTED.txt"
  exit 0
fi
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
ray start --head --num-gpus="$NGPU" --include-dashboard=false --disable-usage-stats > "$OUT/ray_start.log" 2>&1
KIND=$(python -c "import ray; ray.init(address='auto', log_to_driver=False); print(sorted(k.split(':',1)[1] for n in ray.nodes() for k in n['Resources'] if k.startswith('accelerator_type:'))[0])")
echo "GPUs: $NGPU, Ray accelerator type: $KIND" | tee "$OUT/summary.txt"
python -m fib run -d "$DEF" --devices cuda:0 -o "$OUT/local" > "$OUT/local.log" 2>&1; echo "local rc=$?" | tee -a "$OUT/summary.txt"
python -m fib run -d "$DEF" --cluster ray://auto --gpus "$KIND" -o "$OUT/ray" > "$OUT/ray.log" 2>&1; echo "ray rc=$?" | tee -a "$OUT/summary.txt"
python -m fib compare "$OUT/local" "$OUT/ray@$KIND" --allow-env-mismatch --markdown "$OUT/compare.md" > "$OUT/compare.log" 2>&1
echo "compare rc=$? (1: a regression)" | tee -a "$OUT/summary.txt"
python - "$OUT/ray/run.json" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
ex = json.load(open(sys.argv[1]))["executor"]
print("stats", ex.get("stats"))
for a in ex.get("actors", []):
    print("actor", a.get("host"), a.get("gpu"), "gpu_ids", a.get("gpu_ids"), "driver", a.get("driver"), a.get("state"))
PY
ray stop > /dev/null 2>&1
