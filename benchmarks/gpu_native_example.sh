#!/usr/bin/env bash
# Issue 12 on the GPU machine: compiled (C++/CUDA) solutions built and checked there.
#  1. our own CUDA example (examples/cuda_vector_add): a torch-extension and a tvm-ffi binding;
#  2. flashinfer-bench's example dataset (.fibench_example/, written by benchmarks/fibench_example.py
#     and carried along): its tvm-ffi CUDA GEMM, which names B200, run on this GPU with --any-hardware.
# tvm-ffi needs the apache-tvm-ffi wheel in .device/wheels (../shared/device/prepare apache-tvm-ffi==0.1.15.post2).
# Results (run directories, the build logs) go under $OUT.
set -u
source .device/activate.sh
OUT=${OUT:-/tmp/fib-out}
export FIB_CACHE_DIR=$OUT/cache
python3 -c "import tvm_ffi; print('tvm_ffi', tvm_ffi.__version__)" || echo "tvm_ffi missing: the tvm-ffi solutions will be UNSUPPORTED"
which nvcc || ls /usr/local/cuda/bin/nvcc
python3 -m fib run --local examples/cuda_vector_add -o "$OUT/vector_add" --build-timeout 300
python3 -m fib run --local .fibench_example --any-hardware -o "$OUT/fibench_example" --build-timeout 300
for d in "$OUT/vector_add" "$OUT/fibench_example"; do
  python3 - "$d" <<'PY'
import json, sys
for line in open(sys.argv[1] + "/traces.jsonl"):
    t = json.loads(line); e = t["evaluation"]
    perf = (e.get("performance") or {}).get("latency_ms")
    print(t["solution"], t["workload"]["axes"], e["status"], perf, (e.get("reason") or "")[:300])
PY
done
