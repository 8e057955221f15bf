"""How much time does fib itself add around a solution? (skeleton: the lead finishes it once
fib/runner.py and fib/worker.py exist.)

Usage (planned): python benchmarks/harness_overhead.py --output DIR [--definition D --solution S]

Plan, per (solution, workload):
1. the bare floor: `fib.timing.measure(call, timer="cupti")` on pre-built inputs (kernel time only);
2. the same call timed with `cuda_event` and `wall` (launch overhead, synchronisation);
3. one full evaluation through the runner/worker (input building, reference from cache, correctness
   check, timing), wall-clock per stage from `fib.stage`/NVTX ranges named `fib.harness.*`;
4. report per stage: seconds, share of the evaluation, and the harness overhead per timed call
   (runner's per-call time minus the bare `cuda_event` median), as CSV + markdown under --output.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, type=Path)
    p.parse_args(argv)
    raise SystemExit("harness_overhead.py is a skeleton: it needs fib/runner.py (see the docstring)")


if __name__ == "__main__":
    main()
