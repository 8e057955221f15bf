"""compare: ratio of medians, bootstrap CI, Mann-Whitney p, verdicts, env mismatch, outputs, exit codes."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from fib.cli.history import compare_command, history_app
from fib.results.compare import CompareSettings, compare_runs, to_json, to_markdown
from fib.results.history import load_run_dir
from test_history import ENV, commit_sha, make_run_dir, make_trace, samples

app = typer.Typer()
app.command()(compare_command)


def _pair(tmp_path, base_traces, cand_traces, cand_env=None):
    b = make_run_dir(tmp_path / "base", commit_sha(1), base_traces)
    c = make_run_dir(tmp_path / "cand", commit_sha(2), cand_traces, branch="pr",
                     started="2025-01-02T00:00:00Z", env=cand_env)
    return b, c


def _compare(tmp_path, base_traces, cand_traces, cand_env=None, **settings):
    b, c = _pair(tmp_path, base_traces, cand_traces, cand_env)
    return compare_runs(load_run_dir(b)[0], load_run_dir(c)[0], CompareSettings(**settings))


def _row(cmp, solution="triton", workload="w1"):
    return next(r for r in cmp.rows if r.solution == solution and r.workload_uuid == workload)


def test_slowdown_of_20_percent_is_a_regression(tmp_path):
    rng = np.random.default_rng(1)
    cmp = _compare(tmp_path, [make_trace("moe", "triton", "w1", samples_ms=samples(rng, 1.0))],
                   [make_trace("moe", "triton", "w1", samples_ms=samples(rng, 1.2))])
    row = _row(cmp)
    assert row.verdict == "regressed" and cmp.regressed
    assert row.ratio == pytest.approx(1.2, abs=0.01)
    assert 1.17 < row.ci_low < row.ratio < row.ci_high < 1.23
    assert row.p_value < 1e-10
    assert (row.baseline_n, row.candidate_n) == (50, 50)


def test_noise_of_1_percent_is_unchanged_and_improvement_is_found(tmp_path):
    rng = np.random.default_rng(2)
    cmp = _compare(tmp_path,
                   [make_trace("moe", "triton", "w1", samples_ms=samples(rng, 1.0)),
                    make_trace("moe", "triton", "w2", samples_ms=samples(rng, 2.0))],
                   [make_trace("moe", "triton", "w1", samples_ms=samples(rng, 1.01)),
                    make_trace("moe", "triton", "w2", samples_ms=samples(rng, 1.6))])
    assert _row(cmp, workload="w1").verdict == "unchanged"
    assert _row(cmp, workload="w1").ratio == pytest.approx(1.01, abs=0.006)
    improved = _row(cmp, workload="w2")
    assert improved.verdict == "improved" and improved.ratio == pytest.approx(0.8, abs=0.01)
    assert not cmp.regressed


def test_large_but_noisy_shift_is_not_significant(tmp_path):
    rng = np.random.default_rng(3)
    cmp = _compare(tmp_path, [make_trace("moe", "triton", "w1", samples_ms=samples(rng, 1.0, n=5, noise=0.3))],
                   [make_trace("moe", "triton", "w1", samples_ms=samples(rng, 1.1, n=5, noise=0.3))])
    row = _row(cmp)
    assert row.verdict == "unchanged" and row.p_value > 0.01


def test_status_changes_new_and_missing(tmp_path):
    rng = np.random.default_rng(4)
    cmp = _compare(tmp_path,
                   [make_trace("moe", "a", "w1", samples_ms=samples(rng, 1.0)),
                    make_trace("moe", "b", "w1", status="RUNTIME_ERROR"),
                    make_trace("moe", "c", "w1", status="TIMEOUT"),
                    make_trace("moe", "gone", "w1", samples_ms=samples(rng, 1.0))],
                   [make_trace("moe", "a", "w1", status="INCORRECT_NUMERICAL", matched_ratio=0.5),
                    make_trace("moe", "b", "w1", samples_ms=samples(rng, 1.0)),
                    make_trace("moe", "c", "w1", status="COMPILE_ERROR"),
                    make_trace("moe", "fresh", "w1", samples_ms=samples(rng, 1.0))])
    verdicts = {r.solution: r.verdict for r in cmp.rows}
    assert verdicts == {"a": "regressed", "b": "improved", "c": "unchanged", "fresh": "new", "gone": "missing"}
    assert _row(cmp, "a").note.startswith("status PASSED -> INCORRECT_NUMERICAL")
    assert _row(cmp, "c").note == "still failing: TIMEOUT -> COMPILE_ERROR"
    assert [r.solution for r in cmp.rows] == ["a", "b", "fresh", "gone", "c"]  # changed rows first


def test_env_mismatch_is_flagged_not_compared(tmp_path):
    rng = np.random.default_rng(5)
    env = copy.deepcopy(ENV)
    env["gpu"]["driver"] = "580.10"
    env["libs"]["torch"] = "2.9.0"
    base = [make_trace("moe", "triton", "w1", samples_ms=samples(rng, 1.0)),
            make_trace("moe", "cuda", "w1", samples_ms=samples(rng, 1.0))]
    cand = [make_trace("moe", "triton", "w1", samples_ms=samples(rng, 1.3)),
            make_trace("moe", "cuda", "w1", status="RUNTIME_ERROR")]
    cmp = _compare(tmp_path, base, cand, cand_env=env)
    assert [d[0] for d in cmp.env_differences] == ["driver", "torch"]
    assert _row(cmp).verdict == "env-mismatch" and _row(cmp).timing_verdict == "regressed"
    assert _row(cmp, "cuda").verdict == "regressed"  # a correctness failure is one on any env
    md = to_markdown(cmp)
    assert "environments differ (driver: 570.86 vs 580.10; torch: 2.8.0 vs 2.9.0)" in md
    allowed = compare_runs(cmp.baseline, cmp.candidate, CompareSettings(allow_env_mismatch=True))
    assert _row(allowed).verdict == "regressed"


def test_bootstrap_is_seeded(tmp_path):
    rng = np.random.default_rng(6)
    b, c = _pair(tmp_path, [make_trace("moe", "triton", "w1", samples_ms=samples(rng, 1.0, noise=0.05))],
                 [make_trace("moe", "triton", "w1", samples_ms=samples(rng, 1.03, noise=0.05))])
    runs = load_run_dir(b)[0], load_run_dir(c)[0]
    first, second = (_row(compare_runs(*runs)) for _ in range(2))
    assert (first.ci_low, first.ci_high) == (second.ci_low, second.ci_high)
    other = _row(compare_runs(*runs, CompareSettings(seed=7)))
    assert other.ci_low != first.ci_low and other.ci_low == pytest.approx(first.ci_low, abs=0.02)


def test_markdown_and_json_outputs(tmp_path):
    rng = np.random.default_rng(7)
    cmp = _compare(tmp_path,
                   [make_trace("moe", "triton", "w1", samples_ms=samples(rng, 1.0)),
                    make_trace("moe", "triton", "w2", samples_ms=samples(rng, 1.0))],
                   [make_trace("moe", "triton", "w1", samples_ms=samples(rng, 1.25)),
                    make_trace("moe", "triton", "w2", samples_ms=samples(rng, 1.0))])
    md = to_markdown(cmp).splitlines()
    assert md[0].startswith("### fib compare: REGRESSION: 1 regressed, 0 improved, 1 unchanged")
    regressed_at = next(i for i, line in enumerate(md) if "regressed | moe" in line)
    details_at = next(i for i, line in enumerate(md) if line.startswith("<details>"))
    assert regressed_at < details_at and "1 unchanged" in md[details_at]
    data = to_json(cmp)
    assert data["regressed"] is True and data["counts"]["regressed"] == 1
    assert data["rows"][0]["verdict"] == "regressed" and data["rows"][0]["ratio"] == pytest.approx(1.25, abs=0.01)
    assert data["baseline"]["commit"] == commit_sha(1)
    json.dumps(data)  # serialisable as is


def test_cli_exit_codes_and_selectors(tmp_path):
    rng = np.random.default_rng(8)
    b, c = _pair(tmp_path, [make_trace("moe", "triton", "w1", samples_ms=samples(rng, 1.0))],
                 [make_trace("moe", "triton", "w1", samples_ms=samples(rng, 1.2))])
    runner = CliRunner()
    md, js = tmp_path / "cmp.md", tmp_path / "cmp.json"
    res = runner.invoke(app, [str(b), str(c), "--markdown", str(md), "--json", str(js)])
    assert res.exit_code == 1, res.output
    assert "regressed" in res.output and "REGRESSION" in md.read_text()
    assert "num_tokens=16 [w1]" in res.output and "1.2" in res.output
    assert json.loads(js.read_text())["counts"]["regressed"] == 1
    assert runner.invoke(app, [str(b), str(b)]).exit_code == 0
    assert runner.invoke(app, [str(b), str(c), "--threshold", "0.5"]).exit_code == 0
    # selectors into the database
    db = tmp_path / "h.db"
    assert runner.invoke(history_app, ["add", str(b), str(c), "--db", str(db)]).exit_code == 0
    assert runner.invoke(app, ["branch:main", "branch:pr", "--db", str(db)]).exit_code == 1
    assert runner.invoke(app, [f"commit:{commit_sha(1)[:7]}", "latest", "--db", str(db)]).exit_code == 1
    # usage errors
    assert runner.invoke(app, [str(tmp_path / "nope"), str(c)]).exit_code == 2
    assert runner.invoke(app, ["branch:nope", str(c), "--db", str(db)]).exit_code == 2
    assert runner.invoke(app, ["latest", str(c), "--db", str(tmp_path / "absent.db")]).exit_code == 2


def test_rows_timed_by_different_timers_are_not_compared():
    from fib.results.compare import CompareSettings, compare_results
    from fib.results.history import Result
    base = Result(definition="d", solution="s", workload_uuid="w", workload_axes={"n": 1}, status="PASSED",
                  samples_ms=[1.0, 1.01, 0.99, 1.0] * 5, timer="cuda_event")
    cand = Result(definition="d", solution="s", workload_uuid="w", workload_axes={"n": 1}, status="PASSED",
                  samples_ms=[0.5, 0.51, 0.49, 0.5] * 5, timer="cupti")
    row = compare_results(base, cand, CompareSettings(), env_mismatch=False)
    assert row.verdict == "env-mismatch" and row.timing_verdict == "improved"
    assert "timer differs: cuda_event -> cupti" in row.note
    allowed = compare_results(base, cand, CompareSettings(allow_env_mismatch=True), env_mismatch=False)
    assert allowed.verdict == "improved"


def test_a_comparison_says_when_the_gpu_idled_most_of_the_call():
    """Kernel sums compared, and where either side's GPU idled most of the call (its trace carries the
    back-to-back time), the row says what a caller waited for on each side."""
    from fib.results.compare import CompareSettings, compare_results
    from fib.results.history import Result
    common = dict(definition="d", solution="s", workload_uuid="w", workload_axes={"n": 1}, status="PASSED",
                  timer="cupti")
    base = Result(samples_ms=[1.0, 1.01, 0.99, 1.0] * 5, event_median_ms=2.5, **common)
    cand = Result(samples_ms=[1.0, 1.01, 0.99, 1.0] * 5, **common)
    row = compare_results(base, cand, CompareSettings(), env_mismatch=False)
    assert row.verdict == "unchanged" and "back to back 2.5 -> - ms by CUDA events" in row.note
    plain = compare_results(cand, cand, CompareSettings(), env_mismatch=False)
    assert "back to back" not in plain.note
