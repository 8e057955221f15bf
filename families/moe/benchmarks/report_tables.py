"""The latency/floor and correctness tables of reports/moe_deepseek_h200/README.md, printed from
that directory's run/traces.jsonl and roofline.csv (families/moe/benchmarks/roofline.py), so no figure in
the report is typed by hand. The "why" column is the analysis of the kernel profiles in
benchmarks/NOTES.md, keyed by seq_len.

    python families/moe/benchmarks/report_tables.py reports/moe_deepseek_h200
"""
import json
import sys

import pandas as pd

R = sys.argv[1]
WHY = {
    1: "2 experts: split-K GEMMs stream at 2.7-2.9 TB/s (gemm1) and 2.3 (gemm2) for ~33 us against 20.7 at the copy ceiling (pipeline fill of 8-28-step loops, dependent index loads before the first weight load); routing 3.8, SwiGLU 2.4, finalize 1.9 us of small kernels",
    7: "split-K path, SwiGLU in gemm1's last-arriving program; 6 experts: routing 7.4 and finalize 2.6 us on a 62 us floor",
    15: "5 experts hit: 160 gemm1 programs, below 2 per SM, so the weight stream stays at ~2.5 TB/s",
    901: "3.0 TB/s; BM=32 tiles over ~16 rows per expert, 2-3 row blocks per expert re-stream its weights from L2 (not measured separately)",
    11948: "compute-bound: per-K-step `acc += dot * scale` keeps Triton from chaining wgmma",
    14107: "as 11948",
}
DEFAULT_WHY = ("whole call at 3.1-3.6 TB/s (73-86% of the copy ceiling); the rest is routing and "
               "finalize kernels (~10-15 us) and pipeline fill per program")
roof = pd.read_csv(f"{R}/roofline.csv")
p = roof.pivot_table(index="seq_len", columns="solution", values="latency_ms")
f = roof[roof.solution == "triton_fused"].set_index("seq_len")
st = roof[roof.solution == "triton_staged"].set_index("seq_len")
rows = ["| seq_len | experts hit | floor ms (bound) | torch_eager ms | triton_staged ms | triton_fused ms | fused vs staged | fused vs eager | fused of floor | staged of floor | what keeps fused from the floor |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
for T in p.index:
    r = f.loc[T]
    rows.append(f"| {T} | {r.experts_hit} | {r.floor_ms:.3f} ({r.bound}) | {p.loc[T, 'torch_eager']:.3f} | "
                f"{p.loc[T, 'triton_staged']:.4f} | {p.loc[T, 'triton_fused']:.4f} | "
                f"{p.loc[T, 'triton_staged'] / p.loc[T, 'triton_fused']:.2f}x | "
                f"{p.loc[T, 'torch_eager'] / p.loc[T, 'triton_fused']:.1f}x | {100 * r.of_floor:.0f}% | "
                f"{100 * st.loc[T].of_floor:.0f}% | {WHY.get(T, DEFAULT_WHY)} |")
print("\n".join(rows))
print()
stats = {}
labels = {}


def tolerance_text(t: dict) -> str:
    """The tolerance a trace was judged by (or an also-check entry), as the table header says it."""
    text = f"atol {t['atol']:g}, rtol {t['rtol']:g}, ratio {t['required_matched_ratio']:g}"
    if t.get("max_relative_l2") is not None:
        text += f", rel-L2 <= {t['max_relative_l2']:g}"
    name = t.get("tolerance") or t.get("name")
    return f"{name}: {text}" if name else text


for line in open(f"{R}/run/traces.jsonl"):
    t = json.loads(line)
    s = stats.setdefault(t["solution"], dict(n=0, passed=0, strict=0, low=1.0, maxabs=0.0, maxl2=0.0, reason=None))
    ev = t["evaluation"]
    s["n"] += 1
    if ev["status"] != "PASSED":
        s["reason"] = f"{ev['status']} ({ev.get('reason')})"
        continue
    c = ev["correctness"]
    s["passed"] += 1
    also = c["extra"]["also_checked"][0]
    labels.setdefault("main", tolerance_text(c))
    labels.setdefault("also", tolerance_text(also))
    s["strict"] += also["passed"]
    s["low"] = min(s["low"], c["matched_ratio"])
    s["maxabs"] = max(s["maxabs"], c["max_absolute_error"])
    s["maxl2"] = max(s["maxl2"], c.get("relative_l2_error") or 0.0)
print(f"| solution | PASSED ({labels.get('main', '-')}) | also at {labels.get('also', '-')} | "
      "lowest matched ratio (main) | largest relative L2 | largest abs error |")
print("|---|---:|---:|---:|---:|---:|")
for name, s in stats.items():
    if s["passed"]:
        print(f"| {name} | {s['passed']}/{s['n']} | {s['strict']}/{s['n']} | {s['low']:.4f} | {s['maxl2']:.4f} | "
              f"{s['maxabs']:.3f} |")
    else:
        print(f"| {name} | 0/{s['n']}: {s['reason']} | - | - | - | - |")
fl = f[f.index <= 80]
print(f"\ndecode of floor: min {100*fl.of_floor.min():.1f}% at {fl.of_floor.idxmin()}, max {100*fl.of_floor.max():.1f}%")
sp = p["triton_staged"] / p["triton_fused"]
print(f"fused vs staged: min {sp.min():.3f} at {sp.idxmin()}, max {sp.max():.3f}; vs eager {(p['torch_eager']/p['triton_fused']).min():.1f}-{(p['torch_eager']/p['triton_fused']).max():.1f}")
