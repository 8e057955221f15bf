"""The CI loop of docs/ci.md on CPU: main's history is ingested, a PR run is compared with the
latest main run, the markdown comment and the exit code say what happened, the dashboard is built.

Synthetic runs: 4 commits on main, three solutions x two workloads, 50 raw samples each from a
seeded RNG with 1% noise. The PR run injects a 20% slowdown (triton/w2), a status change
PASSED -> INCORRECT_NUMERICAL (cuda/w1) and leaves the rest at 1% noise.
"""
from __future__ import annotations

import json

import numpy as np
import typer
from typer.testing import CliRunner

from fib.cli.history import compare_command, dashboard_command, history_app
from fib.results.history import HistoryDB
from test_history import commit_sha, make_run_dir, make_trace, samples

BASE_MS = {("triton", "w1"): 1.0, ("triton", "w2"): 2.0, ("cuda", "w1"): 0.8, ("cuda", "w2"): 1.5,
           ("torch", "w1"): 3.0, ("torch", "w2"): 6.0}

app = typer.Typer()
app.command("compare")(compare_command)
app.command("dashboard")(dashboard_command)
app.add_typer(history_app, name="history")


def _run(tmp_path, name, commit, branch, day, rng, slow=None, broken=None):
    traces = []
    for (solution, workload), ms in BASE_MS.items():
        if (solution, workload) == broken:
            traces.append(make_trace("moe", solution, workload, status="INCORRECT_NUMERICAL", matched_ratio=0.93))
            continue
        factor = 1.2 if (solution, workload) == slow else 1.0
        traces.append(make_trace("moe", solution, workload, samples_ms=samples(rng, ms * factor)))
    return make_run_dir(tmp_path / name, commit, traces, branch=branch, started=f"2025-03-{day:02d}T08:00:00Z")


def test_ci_loop_catches_the_slowdown_and_the_status_change(tmp_path):
    rng = np.random.default_rng(2024)
    runner = CliRunner()
    db = str(tmp_path / "history.db")
    main_runs = [_run(tmp_path, f"main{i}", commit_sha(i), "main", i + 1, rng) for i in range(4)]
    res = runner.invoke(app, ["history", "add", *map(str, main_runs), "--db", db])
    assert res.exit_code == 0, res.output

    # the PR: 20% slowdown + a numerical failure; everything else is 1% noise
    pr = _run(tmp_path, "pr", commit_sha(10), "feature", 10, rng, slow=("triton", "w2"), broken=("cuda", "w1"))
    md, js = tmp_path / "comment.md", tmp_path / "compare.json"
    res = runner.invoke(app, ["compare", "branch:main", str(pr), "--db", db,
                              "--markdown", str(md), "--json", str(js)])
    assert res.exit_code == 1, res.output
    data = json.loads(js.read_text())
    verdicts = {(r["solution"], r["workload_uuid"]): r["verdict"] for r in data["rows"]}
    assert verdicts == {("triton", "w2"): "regressed", ("cuda", "w1"): "regressed",
                        ("triton", "w1"): "unchanged", ("cuda", "w2"): "unchanged",
                        ("torch", "w1"): "unchanged", ("torch", "w2"): "unchanged"}
    slow = next(r for r in data["rows"] if (r["solution"], r["workload_uuid"]) == ("triton", "w2"))
    assert abs(slow["ratio"] - 1.2) < 0.01 and slow["ci_low"] > 1.15 and slow["p_value"] < 1e-10
    assert data["baseline"]["commit"] == commit_sha(3)  # latest main run
    noise = [r for r in data["rows"] if r["verdict"] == "unchanged"]
    assert all(abs(r["ratio"] - 1) < 0.02 for r in noise)
    comment = md.read_text()
    assert comment.startswith("### fib compare: REGRESSION: 2 regressed, 0 improved, 4 unchanged")
    assert "status PASSED -> INCORRECT_NUMERICAL" in comment

    # a PR with only noise passes
    quiet = _run(tmp_path, "quiet", commit_sha(11), "feature", 11, rng)
    res = runner.invoke(app, ["compare", "branch:main", str(quiet), "--db", db])
    assert res.exit_code == 0, res.output

    # after merge: the PR run joins the history, the dashboard is published
    assert runner.invoke(app, ["history", "add", str(pr), "--db", db]).exit_code == 0
    with HistoryDB(db) as store:
        assert store.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 5
    res = runner.invoke(app, ["dashboard", "--db", db, "--output", str(tmp_path / "site")])
    assert res.exit_code == 0, res.output
    index = (tmp_path / "site" / "index.html").read_text()
    assert "1/2 passed (INCORRECT_NUMERICAL)" in index
