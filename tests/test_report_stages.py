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


REPO = Path(__file__).resolve().parent.parent
SMALL = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e8_h512_i256"


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory):
    """A real `fib profile --backend torch --device cpu` of torch_eager on two workloads: CPU operators
    only, so kernels.csv has its header and no rows."""
    pytest.importorskip("torch")
    from fib.cli.app import app, expand_list_args
    run = tmp_path_factory.mktemp("cpu") / "run"
    result = CliRunner().invoke(app, expand_list_args([
        "profile", "-d", SMALL, "-s", "torch_eager", "-w", "seq_len=1", "seq_len=3", "--backend", "torch",
        "--device", "cpu", "--iterations", "2", "--warmup", "1", "--local", str(REPO), "-o", str(run)]))
    assert result.exit_code == 0, result.output
    assert pd.read_csv(run / "profile" / "kernels.csv").empty
    return run


@pytest.mark.timeout(180)
@pytest.mark.parametrize("which", ["run", "trace"])
def test_a_profile_without_device_kernels_gets_a_report_that_says_so(cpu_profile, tmp_path, which):
    source = cpu_profile if which == "run" else cpu_profile / "profile" / "trace.json"
    app = typer.Typer()
    app.add_typer(report_app, name="report")
    result = CliRunner().invoke(app, ["report", "stages", str(source), "-o", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output  # was KeyError: 'tile'
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "## No device kernels were captured" in text and "no device (GPU) kernels at all" in text
    assert "`kernels.csv` (per-stage kernels) is empty" in text and "## Pipeline summary" not in text
    kernels = pd.read_csv(tmp_path / "rep" / "kernels.csv")
    assert kernels.empty and {"solution", "stage", "kernel", "tile", "per_call_us"} <= set(kernels.columns)
    # the timed calls the capture holds: both workloads, 2 calls each (from calls.csv or the trace's ranges)
    calls = pd.read_csv(tmp_path / "rep" / "calls.csv", dtype={"workload": str})
    assert sorted(calls["workload"].str[:8]) == ["3717ec7d", "d67599a2"] and calls["calls"].tolist() == [2, 2]
    assert "| torch_eager | 3717ec7d-fa0e-50c5-9cb9-ee1bf283971a | 2 |" in text
    if which == "run":  # the run's meta says where the calls ran
        assert "(the calls ran on cpu)" in text and "device cpu;" in text and "smNone" not in text


def test_pipeline_kernels_absent_but_harness_kernels_present_are_named(tmp_path):
    # kernels captured, all outside the calls: the report names how many and lists them
    instances, calls = load_torch_trace(FIX / "h200_demo_torch_trace.json.gz", StageRules.from_stages(DEMO_STAGES))
    instances = instances.assign(category="outside")
    write_tables(tmp_path / "run" / "profile", instances, calls, {})
    (tmp_path / "run" / "profile" / "meta.json").write_text(json.dumps({"backend": "torch",
                                                                         "kernels_total": len(instances)}))
    text = report_stages([tmp_path / "run"], tmp_path / "rep").read_text()
    assert f"The sources hold {len(instances)} device kernels, but none was launched inside a timed call" in text
    assert "## Left out of the pipelines" in text and "(outside calls)" in text


# W16 and W256 of the synthetic capture, with a second axis whose order is the other way round
TWO_AXES = {"W16": {"seq_len": 16, "batch": 4}, "W256": {"seq_len": 256, "batch": 2}}


@pytest.mark.parametrize("family_axis, axis, tokens", [
    ("batch", "batch", {"W16": 4, "W256": 2}),          # the family's TOKEN_AXIS
    (None, "seq_len", {"W16": 16, "W256": 256}),        # no family covers the op_type: the guess
])
def test_the_token_axis_is_the_familys_else_the_guess(tmp_path, family_axis, axis, tokens):
    from tinydata import two_axis_definition
    stages = json.loads(DEF.read_text())["stages"]
    definition = two_axis_definition(tmp_path / "ds", "toy_two_axes", stages, family_axis=family_axis)
    workloads = tmp_path / "w.jsonl"
    workloads.write_text("\n".join(json.dumps({"uuid": w, "axes": a}) for w, a in TWO_AXES.items()))
    text = report_stages([FIX / "synthetic.sqlite"], tmp_path / "rep", definition=definition,
                         workloads=[workloads]).read_text()
    assert f"## Breakdown by {axis}\n" in text
    kernels = pd.read_csv(tmp_path / "rep" / "kernels.csv")
    assert dict(zip(kernels["workload"], kernels["tokens"])) == tokens
    assert sorted(pd.read_csv(tmp_path / "rep" / "dispatch.csv")["tokens"]) == sorted(tokens.values())


def test_a_family_whose_token_axis_the_definition_lacks_is_named(tmp_path):
    from tinydata import two_axis_definition
    definition = two_axis_definition(tmp_path / "ds", "toy_bad_axis", [], family_axis="experts")
    result = CliRunner().invoke(report_app, ["stages", str(FIX / "synthetic.sqlite"), "--definition", str(definition),
                                             "-o", str(tmp_path / "rep")])
    family = (tmp_path / "ds" / "families" / "toy" / "family.py").resolve()
    assert result.exit_code == 1 and str(family) in result.output and "'experts' is not a var axis" in result.output


def test_a_profile_records_each_pairs_token_axis(cpu_profile, tmp_path):
    # the moe family declares seq_len; the report of the run dir takes it from meta.json's pairs
    meta = json.loads((cpu_profile / "profile" / "meta.json").read_text())
    assert [p["token_axis"] for p in meta["pairs"]] == ["seq_len", "seq_len"]
    from fib.report.sources import load_source
    assert load_source(cpu_profile).token_axes == {p["workload"]: "seq_len" for p in meta["pairs"]}
