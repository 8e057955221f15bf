"""How faithful is each fib timer? Compare every timer of fib.timing.measure with nsys's kernel times.

Usage (on a GPU machine):

    FIB_NSYS=/path/to/nsys python benchmarks/timing_fidelity.py --output runs/timing_fidelity
    python benchmarks/timing_fidelity.py --output OUT --no-nsys           # timers only
    python benchmarks/timing_fidelity.py --output OUT --cases mm_bf16_small,chain_32_adds

What it does, per case (a built-in workload: bf16 matmuls of about 10 µs, 50 µs and 500 µs on an
H100, an FP8 matmul, and a chain of 32 tiny kernels that is all launch overhead):

1. times the case with each timer (`cupti`, `cuda_graph`, `cuda_event`, `wall`) via
   `fib.timing.measure` (input rotation over `--n-copies` copies, L2 flush, warm-up);
2. re-runs this script as a child under nsys (`$FIB_NSYS`, else `nsys` on PATH; skipped with a note
   when neither is found or with --no-nsys): `nsys profile --trace cuda,nvtx
   --capture-range=cudaProfilerApi`, the child wrapping each timed call in an NVTX range
   `fib.timed_call` (the L2 flush outside it), then `nsys export --type sqlite`;
3. sums, per call, the device time of the kernels (CUPTI_ACTIVITY_KIND_KERNEL, plus memcpy and
   memset) whose launching runtime call lies inside that call's NVTX range, and takes the median;
4. writes `<output>/timing_fidelity.csv` (one row per case x timer), `<output>/timing_fidelity.md`
   (one row per case) and `<output>/ceilings.json` (copy GB/s, matmul TFLOP/s of the device).

Reading the table: `cupti` should match nsys within a few percent (both are CUPTI kernel
durations); `cuda_graph` adds the graph launch and in-graph gaps; `cuda_event` adds the host's
launch gaps (the `launch gap` column = cuda_event - cupti); `wall` adds synchronisation and
Python. `<first timer>_repeat` is the first timer run again after the others: a difference between
the two is drift of the GPU (clocks, power), to be read before any timer difference. For the 500 µs case all timers should agree within a few percent; for the small and the
chained cases the gap is the harness-visible launch overhead. Relative differences are
(timer - nsys) / nsys. A failed timer (e.g. cupti unavailable) is a row with its error.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TIMERS = ("cupti", "cuda_graph", "cuda_event", "wall")


# ----------------------------------------------------------------------------- cases

def _matmul_case(n: int, dtype: str, copies: int):
    import torch
    if dtype == "fp8":
        mats = [(torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn),
                 torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn)) for _ in range(copies)]
        one = torch.ones((), device="cuda")
        return lambda i: torch._scaled_mm(mats[i][0], mats[i][1].t(), scale_a=one, scale_b=one,
                                          out_dtype=torch.bfloat16)
    mats = [(torch.randn(n, n, device="cuda", dtype=torch.bfloat16),
             torch.randn(n, n, device="cuda", dtype=torch.bfloat16)) for _ in range(copies)]
    out = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    return lambda i: torch.matmul(mats[i][0], mats[i][1], out=out)


def _chain_case(n_kernels: int, copies: int):
    import torch
    xs = [torch.randn(4096, device="cuda") for _ in range(copies)]

    def call(i):
        for _ in range(n_kernels):
            xs[i].mul_(1.0001)
    return call


# name -> (description, builder(copies) -> call(i))
CASES = {
    "mm_bf16_small": ("bf16 matmul 1536^3 (~10 us)", lambda c: _matmul_case(1536, "bf16", c)),
    "mm_bf16_medium": ("bf16 matmul 2560^3 (~50 us)", lambda c: _matmul_case(2560, "bf16", c)),
    "mm_bf16_large": ("bf16 matmul 5632^3 (~500 us)", lambda c: _matmul_case(5632, "bf16", c)),
    "mm_fp8_medium": ("fp8 e4m3 _scaled_mm 4096^3", lambda c: _matmul_case(4096, "fp8", c)),
    "chain_32_adds": ("32 in-place muls of 4096 floats (launch-bound)", lambda c: _chain_case(32, c)),
}


# ----------------------------------------------------------------------------- timers

def time_with_fib(cases, args) -> list[dict]:
    from fib.timing.measure import measure
    rows = []
    for name in cases:
        call = CASES[name][1](args.n_copies)
        # the first timer once more at the end: a difference to its first run is drift (clocks,
        # power, temperature), not a timer effect
        labels = [(t, t) for t in args.timers] + [(args.timers[0], args.timers[0] + "_repeat")]
        for timer, label in labels:
            row = {"case": name, "description": CASES[name][0], "timer": label}
            try:
                s = measure(call, n_copies=args.n_copies, device=args.device, timer=timer,
                            iterations=args.iterations, num_trials=args.num_trials)
                row.update(median_ms=s.median_ms, ci95_low_ms=s.ci95_low_ms,
                           ci95_high_ms=s.ci95_high_ms, iqr_ms=s.iqr_ms, min_ms=s.min_ms,
                           warmup_runs=s.warmup_runs, timer_ran=s.timer,
                           timer_note=getattr(s, "timer_note", ""),
                           span_median_ms=getattr(s, "span_median_ms", None))
            except Exception as exc:  # a timer that cannot run here is a result, not a crash
                row.update(error=f"{type(exc).__name__}: {exc}")
            print(f"{name:16s} {label:13s} "
                  + (f"{row['median_ms'] * 1e3:10.2f} us" if "median_ms" in row else row["error"]),
                  flush=True)
            rows.append(row)
        del call
    return rows


# ----------------------------------------------------------------------------- nsys

def nsys_child(cases, args) -> None:
    """Runs under nsys: warm up, then profile `iterations` NVTX-marked calls per case."""
    import torch
    from fib.timing.flush import flusher as _flusher, make_flush_buffer
    flush = _flusher(make_flush_buffer(args.device))
    calls = {name: CASES[name][1](args.n_copies) for name in cases}
    for call in calls.values():
        for i in range(20):
            flush()
            call(i % args.n_copies)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for name, call in calls.items():
        torch.cuda.nvtx.range_push(f"fib.case:{name}")
        for i in range(args.iterations):
            flush()
            torch.cuda.nvtx.range_push("fib.timed_call")
            call(i % args.n_copies)
            torch.cuda.nvtx.range_pop()
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_pop()
    torch.cuda.cudart().cudaProfilerStop()


def run_under_nsys(nsys: str, cases, args, out: Path) -> Path:
    report = out / "nsys_timing_fidelity"
    cmd = [nsys, "profile", "--trace", "cuda,nvtx", "--capture-range=cudaProfilerApi",
           "--capture-range-end=stop", "--force-overwrite", "true", "-o", str(report),
           sys.executable, str(Path(__file__).resolve()), "--nsys-child", "--output", str(out),
           "--cases", ",".join(cases), "--iterations", str(args.iterations),
           "--n-copies", str(args.n_copies), "--device", args.device]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    sqlite_path = report.with_suffix(".sqlite")
    subprocess.run([nsys, "export", "--type", "sqlite", "--force-overwrite", "true", "-o",
                    str(sqlite_path), str(report.with_suffix(".nsys-rep"))], check=True)
    return sqlite_path


def nsys_kernel_ms(sqlite_path: Path) -> dict[str, list[float]]:
    """Per case, per NVTX `fib.timed_call` range: the summed device time (ms) of the kernels,
    memcpys and memsets whose runtime launch lies inside that range on the same thread."""
    db = sqlite3.connect(str(sqlite_path))
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    has_strings = "StringIds" in tables
    text = "COALESCE(n.text, s.value)" if has_strings else "n.text"
    join = "LEFT JOIN StringIds s ON s.id = n.textId" if has_strings else ""
    ranges = db.execute(f"SELECT n.start, n.end, n.globalTid, {text} FROM NVTX_EVENTS n {join} "
                        "WHERE n.end IS NOT NULL ORDER BY n.start").fetchall()
    cases = [(s, e, t[len("fib.case:"):]) for s, e, _, t in ranges if t and t.startswith("fib.case:")]
    calls = [(s, e, tid) for s, e, tid, t in ranges if t == "fib.timed_call"]
    runtime = db.execute("SELECT correlationId, start, globalTid FROM CUPTI_ACTIVITY_KIND_RUNTIME"
                         ).fetchall()
    device = []
    for table in ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY",
                  "CUPTI_ACTIVITY_KIND_MEMSET"):
        if table in tables:
            device += db.execute(f"SELECT correlationId, end - start FROM {table}").fetchall()
    starts = np.array([c[0] for c in calls])
    owner = {}
    for corr, start, tid in runtime:
        k = int(np.searchsorted(starts, start, side="right")) - 1
        if k >= 0 and start <= calls[k][1] and tid == calls[k][2]:
            owner[corr] = k
    per_call = np.zeros(len(calls))
    for corr, dur in device:
        if corr in owner:
            per_call[owner[corr]] += dur / 1e6
    result: dict[str, list[float]] = {}
    for s, e, name in cases:
        result[name] = [float(per_call[k]) for k, c in enumerate(calls) if s <= c[0] <= e]
    return result


def find_nsys() -> str | None:
    return os.environ.get("FIB_NSYS") or shutil.which("nsys")


# ----------------------------------------------------------------------------- report

def write_report(rows: list[dict], nsys: dict[str, list[float]], nsys_note: str, out: Path) -> None:
    by_case: dict[str, dict[str, dict]] = {}
    for row in rows:
        ref = nsys.get(row["case"])
        if ref:
            row["nsys_kernel_ms"] = float(np.median(ref))
            if "median_ms" in row:
                row["rel_diff_vs_nsys"] = (row["median_ms"] - row["nsys_kernel_ms"]) / row["nsys_kernel_ms"]
        by_case.setdefault(row["case"], {})[row["timer"]] = row
    fields = ["case", "description", "timer", "timer_ran", "median_ms", "ci95_low_ms",
              "ci95_high_ms", "iqr_ms", "min_ms", "span_median_ms", "warmup_runs",
              "nsys_kernel_ms", "rel_diff_vs_nsys", "timer_note", "error"]
    with open(out / "timing_fidelity.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    def us(x):
        return "-" if x is None else f"{x * 1e3:.2f}"

    def cell(row):
        if row is None:
            return "-"
        if "error" in row:
            return "error"
        rel = row.get("rel_diff_vs_nsys")
        return us(row["median_ms"]) + ("" if rel is None else f" ({rel:+.1%})")
    timers = list(dict.fromkeys(r["timer"] for r in rows))
    lines = ["# Timer fidelity", "", "Median per call in µs (relative difference to nsys's kernel sum "
             "per call). Launch gap = cuda_event - cupti.", "", f"nsys: {nsys_note}", "",
             "| case | " + " | ".join(timers) + " | nsys kernel sum | launch gap |",
             "|---" * (len(timers) + 3) + "|"]
    for case, per_timer in by_case.items():
        ev, cu = per_timer.get("cuda_event", {}), per_timer.get("cupti", {})
        gap = ev["median_ms"] - cu["median_ms"] if "median_ms" in ev and "median_ms" in cu else None
        ref = next(iter(per_timer.values())).get("nsys_kernel_ms")
        lines.append(f"| {case} | " + " | ".join(cell(per_timer.get(t)) for t in timers)
                     + f" | {us(ref)} | {us(gap)} |")
    errors = [f"- {r['case']} / {r['timer']}: {r['error']}" for r in rows if "error" in r]
    notes = [f"- {r['case']} / {r['timer']}: {r['timer_note']}" for r in rows if r.get("timer_note")]
    lines += ["", "Timer notes:", *notes] + (["", "Errors:", *errors] if errors else [])
    (out / "timing_fidelity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list of {list(CASES)}")
    p.add_argument("--timers", default=",".join(TIMERS))
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--num-trials", type=int, default=3)
    p.add_argument("--n-copies", type=int, default=4)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--no-nsys", action="store_true")
    p.add_argument("--no-ceilings", action="store_true")
    p.add_argument("--nsys-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown cases {unknown}; known: {list(CASES)}")
    args.timers = [t for t in args.timers.split(",") if t]
    if args.nsys_child:
        return nsys_child(cases, args)
    import torch
    if not torch.cuda.is_available():
        sys.exit("timing_fidelity needs a CUDA GPU (torch.cuda.is_available() is False)")
    args.output.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(args.device), "torch": torch.__version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(args) | {"output": str(args.output)}}
    if not args.no_ceilings:
        from fib.timing.ceilings import measure_ceilings
        meta["ceilings"] = measure_ceilings(args.device)
        print("ceilings:", meta["ceilings"], flush=True)
    (args.output / "ceilings.json").write_text(json.dumps(meta, indent=2, default=str))
    rows = time_with_fib(cases, args)
    nsys_result, nsys_note = {}, "skipped (--no-nsys)"
    nsys = None if args.no_nsys else find_nsys()
    if not args.no_nsys and nsys is None:
        nsys_note = "skipped: no nsys (set FIB_NSYS or put nsys on PATH)"
    elif nsys is not None:
        try:
            nsys_result = nsys_kernel_ms(run_under_nsys(nsys, cases, args, args.output))
            nsys_note = f"{nsys}, {args.iterations} calls per case"
        except Exception as exc:  # keep the timer results even when nsys fails
            nsys_note = f"failed: {type(exc).__name__}: {exc}"
    write_report(rows, nsys_result, nsys_note, args.output)


if __name__ == "__main__":
    main()
