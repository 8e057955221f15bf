"""`fib report stages` end to end on the committed fixtures: numbers in the tables and files."""
import json
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from fib.analysis.attribution import StageRules
from fib.profile.demo import DEMO_STAGES
from fib.analysis.torch_trace import load_torch_trace
from fib.analysis.tables import write_tables
from fib.cli.report import report_app
from fib.report.stages import report_stages

FIX = Path(__file__).parent / "fixtures" / "profile"
DEF = FIX / "synthetic_definition.json"
WL = FIX / "synthetic_workloads.jsonl"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep")
    path = report_stages([FIX / "synthetic.sqlite"], out, definition=DEF, workloads=[WL])
    return out, path.read_text()


def test_pipeline_summary_per_call(report):
    out, _ = report
    summary = pd.read_csv(out / "pipeline.csv").set_index(["solution", "stage"])
    # sol_a per pass: one W16 call (1+5+3+0.7+0.3 µs) + one W256 call (1.5+40+9+2+0.4 µs)
    assert summary.loc[("sol_a", "gemm1"), "per_pass_us"] == pytest.approx(45.0)
    assert summary.loc[("sol_a", "finalize"), "per_pass_us"] == pytest.approx(2.7)
    assert summary.xs("sol_a")["per_pass_us"].sum() == pytest.approx(62.9)
    assert summary.loc[("sol_a", "gemm1"), "total_ms"] == pytest.approx(0.05)  # 2x5 + 40 µs over 3 calls
    assert summary.loc[("sol_b", "experts"), "share"] == pytest.approx(38.0 / 44.6)


def test_head_to_head_and_amdahl(report):
    out, text = report
    h2h = pd.read_csv(out / "head_to_head.csv").set_index("stage")
    assert h2h.loc["routing", "best_solution"] == "sol_a"
    assert h2h.loc["routing", "speedup_sol_b"] == pytest.approx(2.5 / 4.2)
    assert h2h.loc["TOTAL", "speedup_sol_a"] == pytest.approx(44.6 / 62.9)
    amd = pd.read_csv(out / "amdahl.csv").set_index(["solution", "stage"])
    assert amd.loc[("sol_b", "routing"), "saved_us"] == pytest.approx(1.7)
    assert amd.loc[("sol_b", "routing"), "pipeline_speedup"] == pytest.approx(44.6 / (44.6 - 1.7))
    assert "## Optimization implications (Amdahl)" in text


def test_tokens_dispatch_and_crossover(report):
    out, text = report
    buckets = pd.read_csv(out / "dispatch_buckets.csv")
    assert buckets["winner"].tolist() == ["sol_a", "sol_b"]
    assert buckets["crossover_at"].iloc[0] == 256
    disp = pd.read_csv(out / "dispatch.csv").set_index("tokens")
    assert disp.loc[16, "sol_a"] == pytest.approx(10.0) and disp.loc[256, "sol_b"] == pytest.approx(34.4)
    assert "## Breakdown by seq_len" in text


def test_leftout_and_files(report):
    out, text = report
    assert "0.078 ms of GPU time" in text  # 70 + 7 µs harness + 0.9 µs outside
    assert "| reference | 2 | 0.070 |" in text
    for name in ("report.md", "kernels.csv", "pipeline.png", "head_to_head.png", "by_tokens.png",
                 "dispatch.png", "sources.json"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "sources.json").read_text())["sources"][0].endswith("synthetic.sqlite")
    assert "| 128x64x128 |" in text and "BLOCK_M=64,BLOCK_N=128" in text


def test_run_dir_and_baseline_via_cli(tmp_path):
    # a run directory as `fib profile --backend torch` writes it, built from the real H200 trace
    instances, calls = load_torch_trace(FIX / "h200_demo_torch_trace.json.gz", StageRules.from_stages(DEMO_STAGES))
    axes = {f"demo-{t:05d}": {"seq_len": t} for t in (16, 256, 2048)}
    write_tables(tmp_path / "run" / "profile", instances, calls, axes)
    (tmp_path / "run" / "profile" / "meta.json").write_text(json.dumps(
        {"backend": "torch", "device": {"name": "NVIDIA H200", "sm": 90}, "stages": {"demo_moe": DEMO_STAGES},
         "iterations": 3, "warmup": 3}))
    app = typer.Typer()
    app.add_typer(report_app, name="report")
    result = CliRunner().invoke(app, ["report", "stages", str(tmp_path / "run"), "-o", str(tmp_path / "rep"),
                                      "--baseline", "demo_b"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "NVIDIA H200" in text and "backend torch" in text
    h2h = pd.read_csv(tmp_path / "rep" / "head_to_head.csv").set_index("stage")
    assert h2h.loc["routing", "speedup_demo_b"] == pytest.approx(1.0)
    stages = pd.read_csv(tmp_path / "run" / "profile" / "stages.csv")
    row = stages[(stages.solution == "demo_a") & (stages.workload == "demo-02048") & (stages.stage == "gemm1")]
    assert row["per_call_us"].iloc[0] == pytest.approx(78.143 / 3)


def test_errors_are_clear(tmp_path):
    app = typer.Typer()
    app.add_typer(report_app, name="report")
    (tmp_path / "x.txt").write_text("")
    result = CliRunner().invoke(app, ["report", "stages", str(tmp_path / "x.txt")])
    assert result.exit_code == 1 and "not a run directory" in result.output
    result = CliRunner().invoke(app, ["report", "stages", str(FIX / "synthetic.sqlite"), "-o",
                                      str(tmp_path / "r"), "--baseline", "nope"])
    assert result.exit_code == 1 and "baseline 'nope'" in result.output


def test_nsys_rep_without_nsys_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FIB_NSYS", "")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("fib.profile.nsys.find_nsys", lambda: None)
    rep = tmp_path / "capture.nsys-rep"
    rep.write_bytes(b"x")
    app = typer.Typer()
    app.add_typer(report_app, name="report")
    result = CliRunner().invoke(app, ["report", "stages", str(rep)])
    assert result.exit_code == 1 and "nsys was not found" in result.output and ".sqlite" in result.output
