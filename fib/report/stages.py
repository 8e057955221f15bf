"""`fib report stages`: per-stage kernel report (markdown, CSV, PNG) from profiles or captures."""
from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

import pandas as pd

from . import analysis as an
from ..analysis.tables import token_axis as common_token_axis
from .sources import Source, combine, definition_rules, definition_token_axis, load_source, workload_axes


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if spec == "pct":
        return f"{100 * value:.1f}%"
    if spec == "x":
        return f"{value:.2f}x"
    if spec == "int":
        return f"{int(value):d}"
    if spec:
        return format(value, spec)
    return str(value)


def md_table(frame: pd.DataFrame, formats: dict[str, str] | None = None, bold_last: bool = False) -> str:
    formats = formats or {}
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---:" if c in formats and formats[c] != "" else "---" for c in cols) + "|"]
    for i, (_, row) in enumerate(frame.iterrows()):
        cells = [_fmt(row[c], formats.get(c, "")) for c in cols]
        if bold_last and i == len(frame) - 1:
            cells = [f"**{c}**" if c not in ("", "—") else c for c in cells]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _environment(sources: list[Source]) -> list[str]:
    lines = []
    for src in sources:
        meta = src.meta
        env = dict(meta.get("environment", {}))
        run_env = meta.get("run", {}).get("environment", {})
        device = meta.get("device") or run_env.get("gpu") or {}
        parts = [f"source `{src.path}` ({src.kind})"]
        if device:
            sm = device.get("sm", "?") if isinstance(device, dict) else "?"
            name = device.get("name", device) if isinstance(device, dict) else device
            parts.append(f"device {name}" + (f" (sm{sm})" if sm is not None else ""))
        if run_env.get("hardware"):
            parts.append(f"hardware {run_env['hardware']}")
        for key in ("torch", "cuda", "driver", "host", "platform"):
            if env.get(key):
                parts.append(f"{key} {env[key]}")
        if meta.get("cluster"):  # `fib profile --cluster`: the Ray node it ran on
            parts.append(f"Ray node {meta['cluster'].get('node')} (GPU kind {meta['cluster'].get('gpu_kind')})")
        if meta.get("backend"):
            parts.append(f"backend {meta['backend']}")
        if meta.get("nsys_version"):
            parts.append(meta["nsys_version"])
        if meta.get("command"):
            parts.append(f"command `{meta['command']}`")
        if meta.get("iterations"):
            parts.append(f"{meta['iterations']} calls per pair after {meta.get('warmup', '?')} warm-up calls")
        lines.append("- " + "; ".join(parts))
    return lines


def _kernel_section(kernels: pd.DataFrame, order: list[str]) -> list[str]:
    out = []
    for sol, sk in kernels.groupby("solution"):
        out.append(f"### {sol}\n")
        n_workloads = sk["workload"].nunique()
        for stage in [s for s in order if s in set(sk["stage"])]:
            st = sk[sk["stage"] == stage]
            table = st.groupby(["kernel", "tile"], dropna=False).agg(
                instances=("instances", "sum"), workloads=("workload", "nunique"),
                total_ms=("total_ms", "sum"), per_pass_us=("per_call_us", "sum"),
                avg_us=("avg_us", "mean"), min_us=("min_us", "min"), max_us=("max_us", "max"),
                source=("stage_source", "first")).reset_index()
            table["avg_us"] = table["total_ms"] * 1e3 / table["instances"]
            table = table.sort_values("total_ms", ascending=False)
            total = pd.DataFrame([{"kernel": "Subtotal", "tile": "", "instances": table["instances"].sum(),
                                   "workloads": st["workload"].nunique(), "total_ms": table["total_ms"].sum(),
                                   "per_pass_us": table["per_pass_us"].sum(), "avg_us": float("nan"),
                                   "min_us": float("nan"), "max_us": float("nan"), "source": ""}])
            table = pd.concat([table, total], ignore_index=True)
            out.append(f"**{stage}** (attributed by {', '.join(sorted(set(st['stage_source'].dropna())))}; "
                       f"{n_workloads} workloads)\n")
            out.append(md_table(table, {"instances": "int", "workloads": "int", "total_ms": ".3f",
                                        "per_pass_us": ".2f", "avg_us": ".2f", "min_us": ".2f",
                                        "max_us": ".2f"}, bold_last=True) + "\n")
    return out


def build(sources: list[Source], out_dir: Path, *, baseline: str | None = None,
          stage_names: list[str] | None = None, title: str | None = None) -> Path:
    """Write report.md, the CSV tables and the plots under out_dir; return report.md's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kernels, leftout, notes = combine(sources)
    if kernels.empty:
        return _build_without_kernels(sources, out_dir, kernels, leftout, notes, title)
    preferred = list(stage_names or [])
    for src in sources:
        for stages in src.meta.get("stages", {}).values():
            preferred += [s["name"] for s in stages if s["name"] not in preferred]
    order = an.stage_order(kernels, preferred)
    solutions = sorted(kernels["solution"].unique())
    if baseline and baseline not in solutions:
        raise ValueError(f"baseline {baseline!r} is not among the solutions {solutions}")
    summary = an.pipeline_summary(kernels, order)
    h2h = an.head_to_head(kernels, order, baseline)
    amd = an.amdahl(h2h, solutions)
    tokens = an.by_tokens(kernels)
    per_tokens, buckets = an.dispatch(tokens)
    left_ranges, left_ms, left_share = an.leftout_summary(leftout, kernels)
    token_axis = _token_axis(kernels, {w: a for src in sources for w, a in src.token_axes.items()})

    tables = {"kernels": kernels, "pipeline": summary, "head_to_head": h2h, "amdahl": amd,
              "by_tokens": tokens, "dispatch": per_tokens, "dispatch_buckets": buckets,
              "leftout": leftout}
    for name, table in tables.items():
        table.to_csv(out_dir / f"{name}.csv", index=False)
    from .plots import plot_all
    images = plot_all(out_dir, summary, h2h, tokens, per_tokens, order, solutions, token_axis)

    md = [f"# {title or 'Pipeline stage report'}\n",
          f"Generated {_dt.datetime.now().isoformat(timespec='seconds')} by `fib report stages`.\n",
          "## Environment and sources\n", *_environment(sources), ""]
    md += ["## Method\n",
           "Each kernel is attributed to the innermost `fib.stage` range open on the thread that launched it "
           "(nsys: kernel → CUDA runtime call by correlation id → NVTX ranges of domain `fib` on that thread; "
           "torch.profiler: the same through `record_function` ranges). Kernels outside any stage take the "
           "definition's `stages[].kernels` regexes, else `other`. Kernels under `fib.harness.*` ranges "
           "(reference, checks, inputs) or outside every `fib.call/<solution>/<workload>` range are left out "
           "of the pipelines and listed at the end. Times are GPU kernel durations **per call** (a workload's "
           "total over its calls); a *pass* is one call of each workload, summed.\n"]
    if notes:
        md += ["Notes:\n", *[f"- {n}" for n in notes], ""]
    md += ["## Pipeline summary per solution\n"]
    for sol in solutions:
        s = summary[summary["solution"] == sol][["stage", "per_pass_us", "share", "total_ms", "instances",
                                                  "kernels", "workloads"]]
        total = pd.DataFrame([{"stage": "Pipeline total", "per_pass_us": s["per_pass_us"].sum(), "share": 1.0,
                               "total_ms": s["total_ms"].sum(), "instances": s["instances"].sum(),
                               "kernels": s["kernels"].sum(), "workloads": s["workloads"].max()}])
        md += [f"### {sol}\n", md_table(pd.concat([s, total], ignore_index=True),
                                        {"per_pass_us": ".2f", "share": "pct", "total_ms": ".3f",
                                         "instances": "int", "kernels": "int", "workloads": "int"},
                                        bold_last=True) + "\n"]
    md += [f"![pipeline per pass]({images['pipeline']})\n"] if "pipeline" in images else []
    common = h2h.attrs.get("common_workloads", [])
    if len(solutions) > 1:
        ref = f"`{baseline}`" if baseline else "the best solution of each stage"
        md += ["## Head-to-head per stage\n",
               f"Per-pass µs over the {len(common)} workloads every solution ran; speedup = {ref}'s time / "
               "the solution's time (above 1.00x: faster than the reference).\n"]
        cols = ["stage", *solutions, "best_solution", *[f"speedup_{s}" for s in solutions]]
        fmts = {s: ".2f" for s in solutions} | {f"speedup_{s}": "x" for s in solutions}
        md += [md_table(h2h[cols], fmts, bold_last=True) + "\n"]
        md += [f"![head to head]({images['head_to_head']})\n"] if "head_to_head" in images else []
        md += ["## Optimization implications (Amdahl)\n",
               "How much each solution's whole pipeline (common workloads, per pass) would gain if one stage "
               "ran as fast as the best solution's, and if every stage did. Stages a solution lacks are left out.\n",
               md_table(amd, {"own_us": ".2f", "best_us": ".2f", "stage_gap": "x", "saved_us": ".2f",
                              "pipeline_gain": "pct", "pipeline_speedup": "x"}) + "\n"]
    md += ["## Per-stage kernels\n", "Tile configurations are read from the kernel names.\n",
           *_kernel_section(kernels, order)]
    if not tokens.empty:
        wide = tokens.pivot_table(index=["solution", "tokens"], columns="stage", values="per_call_us",
                                  aggfunc="sum").reindex(columns=[s for s in order if s in set(tokens["stage"])])
        wide["total"] = wide.sum(axis=1)
        wide = wide.reset_index()
        md += [f"## Breakdown by {token_axis or 'token count'}\n",
               "Per-call µs by stage (mean over workloads of equal size).\n",
               md_table(wide, {c: ".2f" for c in wide.columns if c not in ("solution", "tokens")} | {"tokens": "int"}) + "\n"]
        md += [f"![by tokens]({images['by_tokens']})\n"] if "by_tokens" in images else []
    if not per_tokens.empty and len(solutions) > 1:
        md += ["## Dispatch table: best solution per token count\n",
               "What a serving engine would dispatch to; a crossover is the first size where the winner changes.\n",
               md_table(buckets, {"from": "int", "to": "int", "crossover_at": "int"}) + "\n",
               md_table(per_tokens, {s: ".2f" for s in solutions} | {"runner_up_ratio": "x", "tokens": "int"}) + "\n"]
        md += [f"![dispatch]({images['dispatch']})\n"] if "dispatch" in images else []
    md += ["## Left out of the pipelines\n",
           f"{left_ms:.3f} ms of GPU time ({100 * left_share:.1f}% of all captured kernel time) ran under "
           "fib's harness ranges or outside every call.\n"]
    if not left_ranges.empty:
        md += [md_table(left_ranges, {"instances": "int", "total_ms": ".3f", "share": "pct"}) + "\n"]
        top = leftout.sort_values("total_ms", ascending=False).head(15)[["range", "kernel", "instances", "total_ms"]]
        md += ["Largest left-out kernels:\n", md_table(top, {"instances": "int", "total_ms": ".3f"}) + "\n"]
    md += ["## Files\n", *[f"- `{name}.csv`" for name in tables], *[f"- `{p}`" for p in images.values()], ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(md))
    (out_dir / "sources.json").write_text(json.dumps(
        {"sources": [str(s.path.resolve()) for s in sources], "baseline": baseline, "notes": notes,
         "meta": [s.meta for s in sources]}, indent=1, default=str))
    return report


def _devices(sources: list[Source]) -> list[str]:
    """The devices the sources' calls ran on, as their meta records them ("cpu", "NVIDIA H200")."""
    names = []
    for src in sources:
        device = src.meta.get("device") or {}
        spec_device = (src.meta.get("spec") or {}).get("device")
        name = device.get("name") if isinstance(device, dict) else device
        for value in (spec_device, name):
            if value and str(value) not in names:
                names.append(str(value))
    return names


def _build_without_kernels(sources: list[Source], out_dir: Path, kernels: pd.DataFrame, leftout: pd.DataFrame,
                           notes: list[str], title: str | None) -> Path:
    """The report of sources that hold no GPU kernel inside a timed call (a CPU-only profile, or
    calls that launched nothing): what was captured, and why the stage tables have no rows."""
    captured = sum(int(src.meta.get("kernels_total") or 0) for src in sources)
    frames = [src.calls.assign(source=str(src.path)) for src in sources if src.calls is not None and len(src.calls)]
    calls = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["solution", "workload",
                                                                                       "calls", "source"])
    tables = {"kernels": kernels, "leftout": leftout, "calls": calls}
    for name, table in tables.items():
        table.to_csv(out_dir / f"{name}.csv", index=False)
    devices = _devices(sources)
    on = f" (the calls ran on {', '.join(devices)})" if devices else ""
    if captured:
        what = (f"The sources hold {captured} device kernels, but none was launched inside a timed call "
                f"(`fib.call/<solution>/<workload>` range){on}: all of them are fib's own work or ran outside "
                "the calls (listed below).")
    else:
        what = f"The sources hold no device (GPU) kernels at all{on}."
        if any(d == "cpu" or d.startswith("cpu") for d in devices):
            what += (" On a CPU torch.profiler records CPU operators only, and stage attribution counts GPU "
                     "kernels only.")
    md = [f"# {title or 'Pipeline stage report'}\n",
          f"Generated {_dt.datetime.now().isoformat(timespec='seconds')} by `fib report stages`.\n",
          "## Environment and sources\n", *_environment(sources), "",
          "## No device kernels were captured\n",
          what + "\n",
          "The stage tables therefore have their columns and no rows: `kernels.csv` (per-stage kernels) is "
          "empty, and there is no pipeline summary, head-to-head, Amdahl, token breakdown, dispatch table or "
          "plot. Stage times here would be GPU kernel time, which this profile does not have; CPU operator "
          "time is not attributed to stages. Profile on a CUDA device (`fib profile --device cuda:0`) for "
          "the stage tables.\n"]
    if notes:
        md += ["Notes:\n", *[f"- {n}" for n in notes], ""]
    md += ["## Timed calls captured\n"]
    if calls.empty:
        md += ["The sources hold no `fib.call` ranges either.\n"]
    else:
        md += ["The `fib.call` ranges the capture holds, per (solution, workload): the calls were made and "
               "recorded, without device kernels.\n",
               md_table(calls[["solution", "workload", "calls"]], {"calls": "int"}) + "\n"]
    if not leftout.empty:
        md += ["## Left out of the pipelines\n",
               md_table(leftout[["range", "kernel", "instances", "total_ms"]], {"instances": "int",
                                                                                 "total_ms": ".3f"}) + "\n"]
    md += ["## Files\n", *[f"- `{name}.csv`" for name in tables], ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(md))
    (out_dir / "sources.json").write_text(json.dumps(
        {"sources": [str(s.path.resolve()) for s in sources], "device_kernels": 0, "notes": notes,
         "meta": [s.meta for s in sources]}, indent=1, default=str))
    return report


def _token_axis(kernels: pd.DataFrame, declared: dict[str, str]) -> str | None:
    """The axis the token tables are named by: the workloads' family's TOKEN_AXIS where the
    sources recorded one (`declared`, workload -> axis), else the guess from the axis names."""
    axes_by_workload = {}
    for workload, axes in kernels[["workload", "axes"]].dropna().drop_duplicates().itertuples(index=False):
        try:
            axes_by_workload[workload] = dict(json.loads(axes))
        except (TypeError, ValueError):
            continue
    return common_token_axis(axes_by_workload, declared)


def report_stages(paths: list[Path], output: Path | None = None, *, baseline: str | None = None,
                  definition: Path | None = None, workloads: list[Path] | None = None,
                  title: str | None = None) -> Path:
    rules = definition_rules(definition)
    token_axis = definition_token_axis(definition)
    axes = workload_axes(workloads)
    sources = [load_source(Path(p), rules=rules, axes=axes, token_axis=token_axis) for p in paths]
    if output is None:
        first = Path(paths[0])
        name = first.name if first.is_dir() else first.stem.split(".")[0]
        output = Path("reports") / f"stages-{name}"
    return build(sources, Path(output), baseline=baseline, stage_names=rules.order, title=title)
