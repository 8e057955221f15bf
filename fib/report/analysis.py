"""The numbers of a stage report, from the kernel table (profile/kernels.csv rows).

Every time is per call: a stage's `per_call_us` for one workload is its kernels' GPU time over
that workload's calls. Across workloads, "per pass" sums one call of each workload, so
solutions are compared on the workloads they all ran (the common set) and every workload counts
once whatever its call count was.
"""
from __future__ import annotations

import pandas as pd

from ..analysis.attribution import OTHER


def stage_order(kernels: pd.DataFrame, preferred: list[str] | None = None) -> list[str]:
    """The definition's stage order, then the others by time, 'other' last."""
    totals = kernels.groupby("stage")["total_ms"].sum().sort_values(ascending=False)
    order = [s for s in (preferred or []) if s in totals.index]
    order += [s for s in totals.index if s not in order and s != OTHER]
    return order + ([OTHER] if OTHER in totals.index else [])


def per_workload_stages(kernels: pd.DataFrame) -> pd.DataFrame:
    """(solution, workload, tokens, stage) -> per_call_us, total_ms, instances, calls."""
    grouped = kernels.groupby(["solution", "workload", "stage"], dropna=False)
    table = grouped.agg(tokens=("tokens", "first"), calls=("calls", "first"), instances=("instances", "sum"),
                        total_ms=("total_ms", "sum"), per_call_us=("per_call_us", "sum")).reset_index()
    return table


def common_workloads(kernels: pd.DataFrame) -> list[str]:
    sets = [set(g["workload"]) for _, g in kernels.groupby("solution")]
    return sorted(set.intersection(*sets)) if sets else []


def pipeline_summary(kernels: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per solution and stage over all of the solution's workloads: total_ms, per-pass µs, share."""
    per = per_workload_stages(kernels)
    table = per.groupby(["solution", "stage"]).agg(
        total_ms=("total_ms", "sum"), per_pass_us=("per_call_us", "sum"), instances=("instances", "sum"),
        workloads=("workload", "nunique")).reset_index()
    kcount = kernels.groupby(["solution", "stage"])["kernel_full"].nunique().rename("kernels")
    table = table.merge(kcount, on=["solution", "stage"])
    table["share"] = table["per_pass_us"] / table.groupby("solution")["per_pass_us"].transform("sum")
    table["rank"] = table["stage"].map({s: i for i, s in enumerate(order)})
    return table.sort_values(["solution", "rank"], ignore_index=True).drop(columns="rank")


def head_to_head(kernels: pd.DataFrame, order: list[str], baseline: str | None = None) -> pd.DataFrame:
    """Per stage (rows) and solution (columns): per-pass µs over the common workloads.

    Adds `best` (the fastest solution's time where every solution has the stage) and, per
    solution, `speedup_<sol>` = reference time / its time, the reference being the baseline's
    stage time when a baseline is given, else the best one (so the best solution reads 1.00x).
    """
    common = common_workloads(kernels)
    per = per_workload_stages(kernels[kernels["workload"].isin(common)])
    wide = per.pivot_table(index="stage", columns="solution", values="per_call_us", aggfunc="sum")
    wide = wide.reindex([s for s in order if s in wide.index])
    solutions = list(wide.columns)
    total = wide.sum(axis=0, skipna=True)
    wide.loc["TOTAL"] = total
    complete = wide[solutions].notna().all(axis=1)
    wide["best"] = wide[solutions].min(axis=1).where(complete)
    wide["best_solution"] = wide[solutions].idxmin(axis=1).where(complete)
    reference = wide[baseline] if baseline else wide["best"]
    for sol in solutions:
        wide[f"speedup_{sol}"] = reference / wide[sol]
    wide.attrs["common_workloads"] = common
    return wide.reset_index().rename_axis(columns=None)


def amdahl(h2h: pd.DataFrame, solutions: list[str]) -> pd.DataFrame:
    """If a solution matched the best solution on one stage (or on all): its new pipeline time.

    gain = (own - best) / own_total of the pipeline; speedup = own_total / (own_total - gap).
    Stages a solution lacks (its work lives in another stage) are left out.
    """
    rows = []
    stages = h2h[h2h["stage"] != "TOTAL"]
    for sol in solutions:
        own_total = float(stages[sol].sum(skipna=True))
        all_gap = 0.0
        for _, row in stages.iterrows():
            if pd.isna(row["best"]) or pd.isna(row[sol]) or own_total <= 0:
                continue
            gap = float(row[sol] - row["best"])
            all_gap += gap
            rows.append({"solution": sol, "stage": row["stage"], "own_us": row[sol], "best_us": row["best"],
                         "best_solution": row["best_solution"], "stage_gap": row[sol] / row["best"],
                         "saved_us": gap, "pipeline_gain": gap / own_total,
                         "pipeline_speedup": own_total / (own_total - gap)})
        if own_total > 0:
            rows.append({"solution": sol, "stage": "ALL (best of each stage)", "own_us": own_total,
                         "best_us": own_total - all_gap, "best_solution": "", "stage_gap": float("nan"),
                         "saved_us": all_gap, "pipeline_gain": all_gap / own_total,
                         "pipeline_speedup": own_total / (own_total - all_gap)})
    return pd.DataFrame(rows)


def by_tokens(kernels: pd.DataFrame) -> pd.DataFrame:
    """(solution, tokens, stage) -> per-call µs (mean over workloads with that token count)."""
    per = per_workload_stages(kernels.dropna(subset=["tokens"]))
    if per.empty:
        return per.assign(per_call_us=[])
    per_wl = per.groupby(["solution", "tokens", "workload", "stage"])["per_call_us"].sum().reset_index()
    return per_wl.groupby(["solution", "tokens", "stage"])["per_call_us"].mean().reset_index()


def dispatch(tokens_table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Best solution per token count, and the buckets of consecutive counts with one winner.

    Returns (per token count: each solution's per-call µs, winner, margin over the runner-up),
    (buckets: from, to, winner, crossover where the winner changes).
    """
    if tokens_table.empty:
        return pd.DataFrame(), pd.DataFrame()
    totals = tokens_table.groupby(["tokens", "solution"])["per_call_us"].sum().unstack("solution")
    totals = totals.sort_index()
    solutions = list(totals.columns)
    complete = totals.dropna()
    winner = complete.idxmin(axis=1)
    ordered = pd.DataFrame({"winner": winner})
    for sol in solutions:
        ordered[sol] = complete[sol]
    if len(solutions) > 1:
        ranked = complete.apply(lambda r: sorted(r.values), axis=1)
        ordered["runner_up_ratio"] = [r[1] / r[0] for r in ranked]
    buckets, start, prev, prev_tokens = [], None, None, None
    for tokens, win in winner.items():
        if win != prev:
            if prev is not None:
                buckets.append({"from": start, "to": prev_tokens, "winner": prev, "crossover_at": tokens})
            start, prev = tokens, win
        prev_tokens = tokens
    if prev is not None:
        buckets.append({"from": start, "to": prev_tokens, "winner": prev, "crossover_at": None})
    return ordered.reset_index(), pd.DataFrame(buckets)


def leftout_summary(leftout: pd.DataFrame, kernels: pd.DataFrame) -> tuple[pd.DataFrame, float, float]:
    """Left-out GPU time per range, and (left-out ms, share of all captured kernel time)."""
    if leftout is None or leftout.empty:
        return pd.DataFrame(columns=["range", "instances", "total_ms", "share"]), 0.0, 0.0
    per_range = leftout.groupby("range", dropna=False).agg(instances=("instances", "sum"),
                                                           total_ms=("total_ms", "sum")).reset_index()
    left = float(per_range["total_ms"].sum())
    everything = left + float(kernels["total_ms"].sum())
    per_range["share"] = per_range["total_ms"] / everything if everything else 0.0
    return per_range.sort_values("total_ms", ascending=False, ignore_index=True), left, \
        (left / everything if everything else 0.0)
