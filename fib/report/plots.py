"""The stage report's PNG plots (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def _colors(order: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(order) <= 10 else "tab20")
    return {stage: cmap(i % cmap.N) for i, stage in enumerate(order)}


def plot_all(out_dir: Path, summary: pd.DataFrame, h2h: pd.DataFrame, tokens: pd.DataFrame,
             per_tokens: pd.DataFrame, order: list[str], solutions: list[str], token_axis: str | None) -> dict:
    colors = _colors(order)
    images = {}
    # 1. pipeline per pass: stacked horizontal bars, one per solution
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.6 * len(solutions)))
    left = pd.Series(0.0, index=solutions)
    for stage in order:
        vals = summary[summary["stage"] == stage].set_index("solution")["per_pass_us"].reindex(solutions).fillna(0)
        ax.barh(solutions, vals, left=left, color=colors[stage], label=stage)
        left += vals
    ax.set_xlabel("GPU time per pass (µs, one call of each workload)")
    ax.legend(ncol=min(len(order), 5), fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out_dir / "pipeline.png", dpi=120)
    plt.close(fig)
    images["pipeline"] = "pipeline.png"
    # 2. head-to-head grouped bars per stage
    if len(solutions) > 1:
        stages = h2h[h2h["stage"] != "TOTAL"]
        fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(stages)), 4))
        width = 0.8 / len(solutions)
        for i, sol in enumerate(solutions):
            ax.bar([x + i * width for x in range(len(stages))], stages[sol].fillna(0), width, label=sol)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(stages))], stages["stage"], rotation=20)
        ax.set_ylabel("µs per pass (common workloads)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "head_to_head.png", dpi=120)
        plt.close(fig)
        images["head_to_head"] = "head_to_head.png"
    # 3. stacked stage bars against the token count, one panel per solution
    if not tokens.empty:
        fig, axes = plt.subplots(1, len(solutions), figsize=(5 * len(solutions), 4), squeeze=False, sharey=True)
        for ax, sol in zip(axes[0], solutions):
            wide = tokens[tokens["solution"] == sol].pivot_table(index="tokens", columns="stage",
                                                                 values="per_call_us", aggfunc="sum").fillna(0)
            bottom = pd.Series(0.0, index=wide.index)
            labels = [str(int(t)) for t in wide.index]
            for stage in [s for s in order if s in wide.columns]:
                ax.bar(labels, wide[stage], bottom=bottom, color=colors[stage], label=stage)
                bottom += wide[stage]
            ax.set_title(sol)
            ax.set_xlabel(token_axis or "tokens")
            ax.tick_params(axis="x", rotation=45)
        axes[0][0].set_ylabel("µs per call")
        axes[0][-1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "by_tokens.png", dpi=120)
        plt.close(fig)
        images["by_tokens"] = "by_tokens.png"
    # 4. per-call pipeline time per solution against the token count, winner marked
    if not per_tokens.empty and len(solutions) > 1:
        fig, ax = plt.subplots(figsize=(7, 4))
        for sol in solutions:
            ax.plot(per_tokens["tokens"], per_tokens[sol], marker="o", label=sol)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(token_axis or "tokens")
        ax.set_ylabel("pipeline µs per call")
        for _, row in per_tokens.iterrows():
            ax.annotate(str(row["winner"]), (row["tokens"], row[row["winner"]]), fontsize=7,
                        textcoords="offset points", xytext=(0, -12), ha="center")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "dispatch.png", dpi=120)
        plt.close(fig)
        images["dispatch"] = "dispatch.png"
    return images
