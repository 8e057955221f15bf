"""History store: ingesting run directories into SQLite, idempotence, migrations, selectors.

`make_run_dir` (used by the compare, changepoint, dashboard and CI-loop tests too) writes a
synthetic run directory with the schema models, like `fib run` does.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fib.cli.history import history_app
from fib.results.history import (MIGRATIONS, SCHEMA_VERSION, HistoryDB, HistoryError, load_run_dir,
                         load_series, load_side, median_ci, migrate)
from fib.schema import (Correctness, Environment, Evaluation, Performance, Status, TimingStats,
                        Trace, Workload, write_jsonl_line)

ENV = {"hardware": "NVIDIA H100 80GB HBM3", "host": "gpu-box-1", "cuda": "12.8",
       "gpu": {"name": "NVIDIA H100 80GB HBM3", "sm": 90, "memory_gb": 80, "driver": "570.86", "count": 1},
       "libs": {"torch": "2.8.0", "triton": "3.4.0", "flashinfer": "0.4.1", "python": "3.11.9"}}

WL = {"w1": {"num_tokens": 16}, "w2": {"num_tokens": 256}}


def samples(rng: np.random.Generator, median: float, n: int = 50, noise: float = 0.01) -> list[float]:
    return list(median * (1 + noise * rng.standard_normal(n)))


def make_trace(definition: str, solution: str, uuid: str, status: str = "PASSED",
               samples_ms: list[float] | None = None, hardware: str = ENV["hardware"],
               matched_ratio: float = 1.0, timestamp: str = "2025-01-01T00:00:00Z") -> Trace:
    status_e = Status(status)
    correctness = performance = None
    if status_e in (Status.PASSED, Status.INCORRECT_NUMERICAL):
        correctness = Correctness(max_absolute_error=1e-3, max_relative_error=2e-3,
                                  matched_ratio=matched_ratio, atol=1e-2, rtol=1e-2,
                                  required_matched_ratio=0.99)
    if status_e == Status.PASSED:
        s = np.asarray(samples_ms if samples_ms is not None else [1.0, 1.0, 1.0])
        q1, q3 = np.percentile(s, [25, 75])
        performance = Performance(latency_ms=float(np.median(s)), timing=TimingStats(
            timer="cuda_event", samples_ms=[float(x) for x in s], median_ms=float(np.median(s)),
            iqr_ms=float(q3 - q1), min_ms=float(s.min()), mean_ms=float(s.mean()),
            ci95_low_ms=float(np.percentile(s, 2.5)), ci95_high_ms=float(np.percentile(s, 97.5))))
    reason = None if status_e == Status.PASSED else f"{status.lower()} (synthetic)"
    return Trace(definition=definition, solution=solution,
                 workload=Workload(uuid=uuid, axes=WL.get(uuid, {"n": 1}), inputs={}),
                 evaluation=Evaluation(status=status_e, environment=Environment(
                     hardware=hardware, libs={"torch": "2.8.0"}), timestamp=timestamp,
                     correctness=correctness, performance=performance, reason=reason,
                     device="cuda:0", seed=0))


def make_run_dir(path: Path, commit: str, traces: list[Trace], *, branch: str = "main",
                 started: str = "2025-01-01T00:00:00Z", env: dict | None = None,
                 stages_csv: str | None = None, extra_lines: list[str] = ()) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    meta = {"command": "fib run", "config": {"iterations": 50, "seed": 0},
            "git": {"commit": commit, "branch": branch, "dirty": False},
            "environment": env or ENV, "started": started, "finished": started}
    (path / "run.json").write_text(json.dumps(meta))
    # a workload-only line, as datasets have; the history skips it
    write_jsonl_line(path / "traces.jsonl", Trace(definition=traces[0].definition,
                                                  workload=traces[0].workload))
    for trace in traces:
        write_jsonl_line(path / "traces.jsonl", trace)
    if extra_lines:
        with (path / "traces.jsonl").open("a") as handle:
            handle.writelines(line + "\n" for line in extra_lines)
    if stages_csv is not None:
        (path / "profile").mkdir(exist_ok=True)
        (path / "profile" / "stages.csv").write_text(stages_csv)
    return path


def commit_sha(i: int) -> str:
    return f"{i:02d}" + "abcdef0123456789" * 2 + "abcdef"  # 40 hex characters, unique prefix


@pytest.fixture
def run_a(tmp_path):
    rng = np.random.default_rng(0)
    return make_run_dir(tmp_path / "run_a", commit_sha(1), [
        make_trace("moe", "triton", "w1", samples_ms=samples(rng, 1.0)),
        make_trace("moe", "triton", "w2", status="INCORRECT_NUMERICAL", matched_ratio=0.9),
    ], stages_csv="solution,workload,stage,kernel,instances,total_ms\ntriton,w1,gemm1,k1,2,0.5\n")


def test_load_run_dir_reads_metadata_results_and_stages(run_a):
    run, problems = load_run_dir(run_a)
    assert problems == []
    assert run.commit == commit_sha(1) and run.branch == "main" and run.dirty is False
    assert run.hardware == "NVIDIA H100 80GB HBM3" and run.host == "gpu-box-1"
    assert set(run.results) == {("moe", "triton", "w1"), ("moe", "triton", "w2")}
    ok = run.results[("moe", "triton", "w1")]
    assert ok.status == "PASSED" and len(ok.samples_ms) == 50
    assert ok.median_ms == pytest.approx(float(np.median(ok.samples_ms)))
    bad = run.results[("moe", "triton", "w2")]
    assert bad.status == "INCORRECT_NUMERICAL" and bad.matched_ratio == 0.9 and bad.samples_ms == []
    assert bad.median_ms is None
    assert [(s.stage, s.instances, s.total_ms) for s in run.stages] == [("gemm1", 2, 0.5)]


def test_malformed_lines_are_reported_with_file_and_line_and_skipped(tmp_path):
    d = make_run_dir(tmp_path / "r", commit_sha(1), [make_trace("moe", "triton", "w1")],
                     extra_lines=['{"definition": "moe", broken', '{"definition": "moe", "workload": {"uuid": "x"}}',
                                  make_trace("moe", "cuda", "w1").model_dump_json(exclude_none=True)])
    run, problems = load_run_dir(d)
    assert len(problems) == 2
    assert problems[0].startswith(f"{d / 'traces.jsonl'}:3: malformed JSON")
    assert problems[1].startswith(f"{d / 'traces.jsonl'}:4: field 'workload.axes'")
    # the lines around the bad ones are kept
    assert set(run.results) == {("moe", "triton", "w1"), ("moe", "cuda", "w1")}


def test_add_is_idempotent_and_roundtrips_samples(tmp_path, run_a):
    db_path = tmp_path / "h.db"
    run, _ = load_run_dir(run_a)
    with HistoryDB(db_path) as db:
        assert db.add_run(run) is True
        assert db.add_run(load_run_dir(run_a)[0]) is False
        counts = [db.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("runs", "results", "stages")]
        assert counts == [1, 2, 1]
        back = db.load_run(run.run_id)
    assert back.results[("moe", "triton", "w1")].samples_ms == run.results[("moe", "triton", "w1")].samples_ms
    assert back.results[("moe", "triton", "w2")].matched_ratio == 0.9
    assert back.environment["gpu"]["driver"] == "570.86"
    assert back.stages[0].kernel == "k1"


def test_schema_is_versioned_and_migrates_an_old_file(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.executescript(f"BEGIN;{MIGRATIONS[0][1]}INSERT INTO schema_version VALUES (1);COMMIT;")
    conn.execute("INSERT INTO runs (run_id, dirty, libs_json, environment_json, config_json) "
                 "VALUES ('old', 0, '{}', '{}', '{}')")
    conn.commit()
    conn.close()
    with HistoryDB(path) as db:
        assert db.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert db.conn.execute("SELECT run_id FROM runs").fetchall()[0][0] == "old"
        assert db.conn.execute("SELECT COUNT(*) FROM stages").fetchone()[0] == 0
        assert "timer" in [c[1] for c in db.conn.execute("PRAGMA table_info(results)")]  # v3
        assert migrate(db.conn) == 3  # a second migration is a no-op
        assert db.conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 3


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (99)")
    conn.commit()
    conn.close()
    with pytest.raises(HistoryError, match="newer than this fib"):
        HistoryDB(path)


def _three_runs(tmp_path) -> tuple[Path, list[str]]:
    db_path = tmp_path / "h.db"
    ids = []
    with HistoryDB(db_path) as db:
        for i, (branch, day) in enumerate([("main", 1), ("feature", 2), ("main", 3)], 1):
            d = make_run_dir(tmp_path / f"r{i}", commit_sha(i), [make_trace("moe", "triton", "w1")],
                             branch=branch, started=f"2025-01-0{day}T00:00:00Z")
            run = load_run_dir(d)[0]
            db.add_run(run)
            ids.append(run.run_id)
    return db_path, ids


def test_selectors(tmp_path):
    db_path, ids = _three_runs(tmp_path)
    with HistoryDB(db_path) as db:
        assert db.resolve("latest") == ids[2]
        assert db.resolve("branch:main") == ids[2]
        assert db.resolve("branch:feature") == ids[1]
        assert db.resolve(f"commit:{commit_sha(1)[:7]}") == ids[0]
        assert db.resolve(f"run:{ids[1][:6]}") == ids[1]
        for bad in ("branch:nope", "commit:ffff", "bogus", "commit:"):
            with pytest.raises(HistoryError):
                db.resolve(bad)
    assert load_side(f"commit:{commit_sha(2)[:8]}", db_path).branch == "feature"
    with pytest.raises(HistoryError, match="no such run directory"):
        load_side(str(tmp_path / "missing"), db_path)


def test_series_are_ordered_by_run_time(tmp_path):
    db_path, _ = _three_runs(tmp_path)
    with HistoryDB(db_path) as db:
        series = load_series(db)
        assert list(series) == [("moe", "triton", "w1", ENV["hardware"])]
        assert [p.commit for p in series[list(series)[0]]] == [commit_sha(i) for i in (1, 2, 3)]
        assert [p.commit for p in load_series(db, "main")[list(series)[0]]] == [commit_sha(1), commit_sha(3)]


def test_median_ci_brackets_the_median():
    lo, hi = median_ci(list(range(1, 101)))
    assert lo < 50.5 < hi and (lo, hi) == (41, 61)
    assert median_ci([1.0, 2.0]) == (None, None)


def test_cli_history_add(tmp_path, run_a, monkeypatch):
    db_path = tmp_path / "env.db"
    monkeypatch.setenv("FIB_HISTORY_DB", str(db_path))
    runner = CliRunner()
    first = runner.invoke(history_app, ["add", str(run_a)])
    assert first.exit_code == 0, first.output
    assert "added as run:" in first.output
    second = runner.invoke(history_app, ["add", str(run_a)])
    assert second.exit_code == 0 and "already present" in second.output
    with HistoryDB(db_path) as db:
        assert db.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    other = make_run_dir(tmp_path / "other", commit_sha(2), [make_trace("moe", "triton", "w1")])
    missing = runner.invoke(history_app, ["add", str(tmp_path / "nope"), str(other), "--db", str(db_path)])
    assert missing.exit_code == 2 and "not a directory" in missing.output
    with HistoryDB(db_path) as db:  # the good directory after the bad one was still added
        assert db.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
