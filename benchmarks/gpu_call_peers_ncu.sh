#!/usr/bin/env bash
# One device call: the ncu backend on the demo and three DeepSeek workloads (benchmarks/gpu_ncu.sh, capped at
# 230 s), then the peer solutions on all 19 DeepSeek workloads (benchmarks/gpu_peers.sh). Results:
# $OUT/ncu.tar.gz (+ the raw CSVs) and $OUT/peers.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
timeout 230 bash benchmarks/gpu_ncu.sh > $OUT/gpu_ncu.log 2>&1; echo "gpu_ncu rc=$?"
tail -40 $OUT/gpu_ncu.log
[ -d $OUT/ncu ] && tar czf $OUT/ncu.tar.gz -C $OUT ncu gpu_ncu.log && rm -rf $OUT/ncu
bash benchmarks/gpu_peers.sh
rm -rf $OUT/peers
