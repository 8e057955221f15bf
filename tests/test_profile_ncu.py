"""The ncu backend on CPU: the raw-page CSV reader, attribution, the why-table, the floor join, the
command line and the driver's wiring (with a stand-in ncu). The fixture ncu_raw_synthetic.csv is
written in ncu's `--csv --page raw --print-units base --nvtx` format; every expected number below
is worked out by hand from its rows."""
import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fib.errors import FibError
from fib.profile import driver, ncu
from fib.analysis.attribution import StageRules
from fib.analysis.ncu_metrics import CORE_METRICS
from fib.analysis.ncu_csv import fib_stacks, load_ncu_csv, parse_number, parse_push_pop, read_raw_csv
from fib.analysis.ncu_table import BoundRules, bound_by, kernel_table, load_floor, markdown, workload_table

FIX = Path(__file__).parent / "fixtures" / "profile"
CSV = FIX / "ncu_raw_synthetic.csv"
STAGES = [{"name": "routing", "kernels": ["topk"]}, {"name": "gemm1", "kernels": []},
          {"name": "gemm2", "kernels": []}, {"name": "finalize", "kernels": ["reduce_kernel"]}]
RULES = StageRules.from_stages(STAGES)
AXES = {"W16": {"seq_len": 16}, "W256": {"seq_len": 256}}
CALLS = pd.DataFrame([("sol_a", "W16", 2), ("sol_a", "W256", 1)], columns=["solution", "workload", "calls"])
SM_COUNT = 132


@pytest.fixture(scope="module")
def loaded():
    return load_ncu_csv(CSV, RULES)


@pytest.fixture(scope="module")
def table(loaded):
    return kernel_table(loaded[0], CALLS, AXES, sm_count=SM_COUNT).set_index(["workload", "stage"])


def _floor(tmp_path):
    path = tmp_path / "roofline.csv"
    pd.DataFrame({"solution": ["torch_eager", "sol_a", "sol_a"], "workload": ["W16", "W16", "W256"],
                  "bound": ["memory"] * 3, "bytes_mb": [4.0, 4.0, 40.0],
                  "floor_ms": [0.033, 0.033, 0.1222]}).to_csv(path, index=False)
    return path


def test_raw_page_values_units_and_separators():
    raw = read_raw_csv(CSV)
    assert len(raw) == 14  # program output and ==PROF== lines around the table are skipped
    first_gemm1 = raw.iloc[1]
    assert first_gemm1["gpu__time_duration.sum"] == 40000.0   # "40,000" nsecond
    assert first_gemm1["dram__bytes.sum"] == 2_800_000.0       # "2,800,000" byte
    assert pd.isna(first_gemm1["sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active"])  # n/a
    assert raw.attrs["units"]["gpu__time_duration.sum"] == "ns"
    assert raw.iloc[9]["launch__grid_size"] == 1024.0          # "1,024"


def test_units_become_ns_and_bytes(tmp_path):
    path = tmp_path / "units.csv"
    path.write_text('"ID","Kernel Name","gpu__time_duration.sum","dram__bytes.sum","launch__grid_size"\n'
                    '"","","usecond","Kbyte",""\n'
                    '"0","k","1.5","2,048","158 (0: 158)"\n')
    raw = read_raw_csv(path)
    assert raw.loc[0, "gpu__time_duration.sum"] == 1500.0 and raw.loc[0, "dram__bytes.sum"] == 2_048_000.0
    assert raw.loc[0, "launch__grid_size"] == 158.0
    text = tmp_path / "text.csv"  # a unitless column of text (a device attribute) is kept as text
    text.write_text('"ID","Kernel Name","gpu__time_duration.sum","device__attribute_display_name"\n'
                    '"","","nsecond",""\n"0","k","1","NVIDIA H200"\n')
    assert read_raw_csv(text).loc[0, "device__attribute_display_name"] == "NVIDIA H200"
    assert parse_number("1,234,567.5") == 1234567.5 and pd.isna(parse_number("n/a"))
    with pytest.raises(ValueError):
        parse_number("12,34")  # not a thousands grouping: refused, not guessed


def test_push_pop_cell():
    cell = '48213  "fib:fib.call/s/w:none:none:none:none:none:none"  "NVTX:aten::mm:none:none:ARGB:0xff00ff00:none:none" '
    assert parse_push_pop(cell) == [("fib", "fib.call/s/w"), ("NVTX", "aten::mm")]
    assert parse_push_pop('7  "<default domain>:none:none:none:none:none:ASCII:gemm1"') == [("default domain", "gemm1")]
    assert parse_push_pop("") == []
    stacks, order = fib_stacks([cell, ""])
    assert stacks == [("fib.call/s/w",), ()] and order == "unknown (no nested fib.call stack)"


def test_attribution_matches_the_other_backends(loaded):
    instances, facts = loaded
    assert facts["stack_order"] == "outer first"
    by_kernel = instances.groupby("kernel_full")
    gemm1 = instances[instances["kernel_full"] == "fused_moe_gemm1_kernel"]
    assert set(gemm1["stage"]) == {"gemm1"} and set(gemm1["stage_source"]) == {"nvtx"}  # innermost fib range
    assert set(gemm1["ranges"]) == {"fib.call/sol_a/W16 > experts > gemm1", "fib.call/sol_a/W256 > experts > gemm1"}
    reduce = instances[instances["kernel"].str.contains("reduce_kernel")]
    assert set(reduce["stage"]) == {"finalize"} and set(reduce["stage_source"]) == {"regex"}
    assert instances.loc[instances["kernel_full"] == "mystery_kernel", "stage"].tolist() == ["other"]
    assert instances.loc[instances["category"] == "harness", "harness"].tolist() == ["reference"]
    assert instances.loc[instances["category"] == "outside", "duration_ns"].tolist() == [900]
    assert by_kernel.size()["fused_moe_gemm2_kernel"] == 3
    assert gemm1["tensor_pct"].tolist() == [20.0, 20.0, 70.0]  # gmma; hmma n/a
    assert instances.loc[instances["kernel_full"] == "fused_moe_gemm2_kernel", "tensor_pct"].tolist()[-1] == 20.0


def test_inner_first_stacks_are_turned_around(tmp_path, loaded):
    """Whatever order ncu lists a stack in, the call range is outermost: the reader finds out."""
    import csv
    rows = list(csv.reader(CSV.read_text().splitlines()[3:-1]))
    col = rows[0].index(next(h for h in rows[0] if h.startswith("thread Domain")))
    for row in rows[2:]:
        entries = parse_push_pop(row[col])
        if entries:
            row[col] = "48213  " + "  ".join(f'"{d}:{n}:none:none:none:none:none:none"' for d, n in reversed(entries))
    path = tmp_path / "reversed.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL).writerows(rows)
    instances, facts = load_ncu_csv(path, RULES)
    assert facts["stack_order"].startswith("innermost first")
    cols = ["solution", "workload", "category", "stage", "ranges"]
    assert instances[cols].equals(loaded[0][cols])


def test_kernel_table_numbers_and_verdicts(table):
    assert table.loc[("W16", "gemm1"), "per_call_us"] == pytest.approx(41.0)  # (40 + 42) µs over 2 calls
    assert table.loc[("W16", "gemm1"), "dram_pct"] == pytest.approx((70.12 * 40 + 68.05 * 42) / 82)
    assert table.loc[("W16", "gemm1"), "registers"] == 168 and table.loc[("W16", "gemm1"), "grid"] == "256x1x1"
    assert table.loc[("W16", "gemm1"), "dram_gbps"] == pytest.approx(5.6e6 / 82000)
    verdicts = table["bound_by"].to_dict()
    assert verdicts == {("W16", "routing"): "latency: grid 16 < 132 SMs", ("W16", "gemm1"): "DRAM",
                        ("W16", "gemm2"): "latency: occupancy 12%", ("W16", "finalize"): "latency: grid 1 < 132 SMs",
                        ("W256", "routing"): "latency", ("W256", "gemm1"): "tensor", ("W256", "gemm2"): "SM",
                        ("W256", "other"): "unknown"}


def test_bound_by_thresholds():
    assert bound_by({"dram_pct": 61, "sm_pct": 62, "tensor_pct": 61}) == "DRAM+tensor"
    assert bound_by({"dram_pct": 30, "mem_pct": 80, "sm_pct": 20}) == "L2/L1"
    assert bound_by({"dram_pct": 59.9, "sm_pct": 10, "occupancy_pct": 50}) == "latency"
    assert bound_by({"dram_pct": 59.9, "sm_pct": 10}, BoundRules(busy_pct=50)) == "DRAM"
    assert bound_by({"dram_pct": 10, "sm_pct": 10, "occupancy_pct": 30}, BoundRules(low_occupancy_pct=40)) == \
        "latency: occupancy 30%"
    assert bound_by({"dram_pct": 10, "sm_pct": 10, "grid_blocks": 8}) == "latency"  # SM count unknown: no grid verdict


def test_floor_join(tmp_path, table):
    kernels = table.reset_index()
    workloads = workload_table(kernels, load_floor(_floor(tmp_path))).set_index("workload")
    assert workloads.loc["W16", "kernel_us"] == pytest.approx(66.0)        # 3 + 41 + 20 + 2
    assert workloads.loc["W256", "kernel_us"] == pytest.approx(305.5)      # 4 + 200 + 100 + 1.5
    assert workloads.loc["W16", "of_floor"] == pytest.approx(0.5)
    assert workloads.loc["W256", "of_floor"] == pytest.approx(0.4)
    assert workloads.loc["W16", "dram_mb"] == pytest.approx(4.28192)      # one call's bytes
    assert workloads.loc["W256", "traffic_x"] == pytest.approx(46.052672 / 40)


def test_floor_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "floor.csv"
    bad.write_text("workload,latency_ms\nW16,1\n")
    with pytest.raises(FibError, match="floor_ms") as info:
        load_floor(bad)
    assert str(bad) in str(info.value)
    bad.write_text("workload,floor_ms\nW16,-1\n")
    with pytest.raises(FibError, match="W16"):
        load_floor(bad)
    with pytest.raises(FibError, match="no such file"):
        load_floor(tmp_path / "missing.csv")


def test_markdown_table(tmp_path, loaded):
    instances, _ = loaded
    kernels = kernel_table(instances, CALLS, AXES, sm_count=SM_COUNT)
    text = markdown(kernels, workload_table(kernels, load_floor(_floor(tmp_path))),
                    stage_order=RULES.order, sm_count=SM_COUNT)
    assert "### sol_a · seq_len=16 (`W16`)" in text
    assert "kernel time 66.0 µs per call (2 call(s) profiled); floor 33.0 µs (memory): 50% of floor" in text
    assert "| stage | kernel | µs/call | DRAM % | SM % | occupancy % | regs | tensor % | block | grid | bound by |" in text
    assert "| gemm1 | fused_moe_gemm1_kernel | 41.0 | 69 | 30 | 12 | 168 | 20 | 128x1x1 | 256x1x1 | DRAM |" in text
    w16 = text.split("seq_len=256")[0]
    assert w16.index("| routing |") < w16.index("| gemm1 |") < w16.index("| gemm2 |") < w16.index("| finalize |")


@pytest.mark.parametrize("content, message", [
    ("just some program output\nno table here\n", "no ncu raw-page header"),
    ('"ID","Kernel Name","gpu__time_duration.sum"\n"","","nsecond"\n"0","k","1","2"\n', "line 3: 4 fields"),
    ('"ID","Kernel Name","gpu__time_duration.sum"\n"","","nsecond"\n"0","k","fast"\n',
     "column 'gpu__time_duration.sum': cannot read 'fast'"),
    ('"ID","Kernel Name","gpu__time_duration.sum","launch__registers_per_thread"\n"","","nsecond",""\n'
     '"0","k","1","many"\n', "column 'launch__registers_per_thread' holds text (line 3: 'many')"),
    ('"ID","Process ID","Kernel Name","Section Name","Metric Name","Metric Unit","Metric Value"\n'
     '"0","1","k","SOL","Duration","us","1.0"\n', "details page"),
    ('"ID","Kernel Name","dram__bytes.sum"\n"","","byte"\n"0","k","1"\n', "no gpu__time_duration"),
])
def test_malformed_csv_names_the_file(tmp_path, content, message):
    path = tmp_path / "capture.csv"
    path.write_text(content)
    with pytest.raises(FibError) as info:
        load_ncu_csv(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_missing_csv():
    with pytest.raises(FibError, match="no such file"):
        read_raw_csv(Path("/nonexistent/ncu.csv"))


def test_find_ncu(tmp_path, monkeypatch):
    fake = tmp_path / "ncu"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FIB_NCU", str(fake))
    assert ncu.find_ncu() == str(fake) == ncu.require_ncu()
    monkeypatch.setenv("FIB_NCU", str(tmp_path / "nope"))
    with pytest.raises(ncu.NcuError, match="FIB_NCU"):
        ncu.require_ncu()
    monkeypatch.delenv("FIB_NCU")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(ncu, "_search_paths", lambda: [])
    with pytest.raises(ncu.NcuError) as info:
        ncu.require_ncu()
    assert "/opt/nvidia/nsight-compute" in str(info.value) and "FIB_NCU" in str(info.value)


def test_command_line_leaves_clocks_alone():
    cmd = ncu.profile_command("/x/ncu", ["a.sum", "b.pct"], Path("/r/ncu_raw.csv"), ["python", "-m", "t", "s.json"],
                              kernel_regex="gemm", launch_count=50)
    assert cmd.count("--clock-control") == 1 and cmd[cmd.index("--clock-control") + 1] == "none"
    assert not any("clock" in part for part in cmd if part != "--clock-control")
    assert cmd[cmd.index("--profile-from-start") + 1] == "off" and "--nvtx" in cmd
    assert cmd[cmd.index("--page") + 1] == "raw" and cmd[cmd.index("--metrics") + 1] == "a.sum,b.pct"
    assert cmd[cmd.index("--log-file") + 1] == "/r/ncu_raw.csv"
    assert cmd[cmd.index("--kernel-name") + 1] == "regex:gemm" and cmd[cmd.index("--launch-count") + 1] == "50"
    assert cmd[-4:] == ["python", "-m", "t", "s.json"]


QUERY = """Device NVIDIA H200 (GH100)
---------------------------------------- --------------------------------------------
Metric Name                              Metric Description
dram__bytes                              # of bytes accessed in DRAM
dram__throughput                         DRAM throughput
sm__pipe_tensor_op_gmma_cycles_active    # of cycles where the GMMA pipe was active
sm__pipe_tensor_op_hmma_cycles_active    # of cycles where the HMMA pipe was active
lts__throughput                          L2 throughput
"""


def test_metric_selection():
    available = ncu.parse_query_metrics(QUERY)
    assert "dram__bytes" in available and "Metric" not in " ".join(available)
    metrics, notes = ncu.select_metrics(available)
    assert metrics[:7] == [names[0] for names in CORE_METRICS.values()]
    assert "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active" in metrics
    assert "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active" in metrics
    assert "dram__bytes.sum" in metrics and "lts__throughput.avg.pct_of_peak_sustained_elapsed" in metrics
    assert not any(m.startswith("gpu__compute_memory") for m in metrics)
    assert any(n.startswith("mem_pct") for n in notes)
    core, notes = ncu.select_metrics(None)
    assert core == metrics[:7] and "only the core metrics" in notes[0]


def test_backend_choice():
    assert driver.resolve_backend("ncu") == "ncu"
    assert driver.DEFAULT_ITERATIONS["ncu"] == 1
    with pytest.raises(FibError, match="--floor"):
        driver.profile(definitions=["d"], solutions=["s"], backend="torch", floor=Path("x.csv"))


FAKE_NCU = r'''#!{python}
"""Stands in for ncu: answers --version and --query-metrics; otherwise writes the fixture as its
log file and the target's result, as `ncu ... python -m fib.profile.target spec.json` would."""
import json, shutil, sys
args = sys.argv[1:]
if args == ["--version"]:
    print("NVIDIA (R) Nsight Compute Command Line Profiler\nVersion 2099.1.0.0 (fake)"); sys.exit(0)
if args == ["--query-metrics"]:
    print({query!r}); sys.exit(0)
assert args[args.index("--clock-control") + 1] == "none"
shutil.copy({csv!r}, args[args.index("--log-file") + 1])
spec = json.load(open(args[-1]))
pairs = [{{"definition": "d", "solution": "sol_a", "workload": w, "axes": {{"seq_len": t}}, "calls": c}}
         for w, t, c in (("W16", 16, 2), ("W256", 256, 1))]
json.dump({{"pairs": pairs, "skipped": [], "stages": {{"d": {stages!r}}},
           "device": {{"name": "fake H200", "sm": 90, "sm_count": 132}}}}, open(spec["result"], "w"))
'''


def test_driver_end_to_end_with_a_stand_in_ncu(tmp_path, monkeypatch):
    fake = tmp_path / "ncu"
    fake.write_text(FAKE_NCU.format(python=sys.executable, query=QUERY, csv=str(CSV), stages=STAGES))
    fake.chmod(0o755)
    monkeypatch.setenv("FIB_NCU", str(fake))
    run = driver.profile(definitions=["d"], solutions=["sol_a"], backend="ncu", output=tmp_path / "run",
                         floor=_floor(tmp_path), timeout=120)
    prof = run / "profile"
    meta = json.loads((prof / "meta.json").read_text())
    assert meta["clock_control"] == "none" and meta["iterations"] == 1 and "fake" in meta["ncu_version"]
    assert "--clock-control none" in meta["command"]
    stages = pd.read_csv(prof / "stages.csv").set_index(["workload", "stage"])
    assert stages.loc[("W16", "gemm1"), "per_call_us"] == pytest.approx(41.0)
    workloads = pd.read_csv(prof / "ncu_workloads.csv").set_index("workload")
    assert workloads.loc["W256", "of_floor"] == pytest.approx(0.4)
    assert "latency: grid 16 < 132 SMs" in (prof / "ncu.md").read_text()
    # the same table again from the run directory, without a GPU
    from fib.cli.report import report_app
    result = CliRunner().invoke(report_app, ["ncu", str(run), "--floor", str(_floor(tmp_path)),
                                             "--output", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again" / "ncu.md").read_text() == (prof / "ncu.md").read_text()


def test_driver_reads_a_table_printed_to_stdout(tmp_path, monkeypatch):
    fake = tmp_path / "ncu"
    text = FAKE_NCU.format(python=sys.executable, query=QUERY, csv=str(CSV), stages=STAGES)
    text = text.replace('shutil.copy({!r}, args[args.index("--log-file") + 1])'.format(str(CSV)),
                        'open(args[args.index("--log-file") + 1], "w").write("==PROF== Disconnected\\n"); '
                        'print(open({!r}).read())'.format(str(CSV)))
    assert "print(open(" in text
    fake.write_text(text)
    fake.chmod(0o755)
    monkeypatch.setenv("FIB_NCU", str(fake))
    run = driver.profile(definitions=["d"], solutions=["sol_a"], backend="ncu", output=tmp_path / "run", timeout=120)
    assert (run / "profile" / "ncu_log.txt").read_text().startswith("==PROF==")
    assert "| gemm1 | fused_moe_gemm1_kernel | 41.0 |" in (run / "profile" / "ncu.md").read_text()


def test_report_ncu_on_a_bare_csv(tmp_path):
    from fib.cli.report import report_app
    definition = tmp_path / "def.json"
    definition.write_text(json.dumps({"stages": STAGES}))
    workloads = tmp_path / "w.jsonl"
    workloads.write_text("\n".join(json.dumps({"uuid": w, "axes": a}) for w, a in AXES.items()))
    result = CliRunner().invoke(report_app, ["ncu", str(CSV), "--definition", str(definition), "--workloads",
                                             str(workloads), "--sm-count", "132", "--output", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "calls per workload inferred" in result.output
    # inferred calls: 2 for W16 (two instances per kernel), so the per-call numbers match the run's
    assert "| gemm1 | fused_moe_gemm1_kernel | 41.0 | 69 |" in result.output
    bad = CliRunner().invoke(report_app, ["ncu", str(tmp_path / "def.json")])
    assert bad.exit_code == 1 and "def.json" in bad.output


def test_notes_say_what_the_csv_lacks(tmp_path):
    from fib.analysis.ncu_csv import facts_notes
    path = tmp_path / "bare.csv"
    path.write_text('"ID","Kernel Name","gpu__time_duration.sum"\n"","","nsecond"\n"0","k","1,000"\n')
    instances, facts = load_ncu_csv(path)
    notes = " ".join(facts_notes(facts))
    assert "no NVTX push/pop column" in notes and "dram_pct" in notes and "duration_ns" not in notes
    assert instances["category"].tolist() == ["outside"]


# Recorded on the H200 by benchmarks/gpu_ncu.sh; the tests below run once the lead commits them.
REAL_DS = FIX / "h200_ncu_ds_triton_fused.csv"
REAL_DEMO = FIX / "h200_ncu_demo.csv"
DS_DEF = Path(__file__).parents[1] / "definitions" / "moe" / \
    "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048.json"


@pytest.mark.skipif(not REAL_DS.exists(), reason="record it with benchmarks/gpu_ncu.sh on the H200")
def test_real_h200_ncu_csv_triton_fused():
    stages = json.loads(DS_DEF.read_text())["stages"]
    instances, facts = load_ncu_csv(REAL_DS, StageRules.from_stages(stages))
    assert facts["nvtx_column"] and not facts["stack_order"].startswith("unknown")
    pipe = instances[instances["category"] == "pipeline"]
    assert len(pipe) > 0 and set(pipe["solution"]) == {"triton_fused"} and pipe["workload"].nunique() == 3
    assert set(pipe["stage"]) <= {s["name"] for s in stages}  # triton_fused marks every stage: nothing in "other"
    assert {"routing", "gemm1", "gemm2", "finalize"} <= set(pipe["stage"])
    assert (pipe["duration_ns"] > 0).all()
    for role in ("dram_pct", "sm_pct", "occupancy_pct", "registers"):
        assert pipe[role].between(0, 256).all(), role  # percentages and register counts, all read
    gemm = pipe[pipe["stage"].isin(["gemm1", "gemm2"])]
    assert (gemm["registers"] >= 32).all() and (gemm["dram_pct"] > 0).all()


@pytest.mark.skipif(not REAL_DEMO.exists(), reason="record it with benchmarks/gpu_ncu.sh on the H200")
def test_real_h200_ncu_csv_demo_nesting():
    from fib.profile.demo import DEMO_STAGES
    instances, facts = load_ncu_csv(REAL_DEMO, StageRules.from_stages(DEMO_STAGES))
    pipe = instances[instances["category"] == "pipeline"]
    a = pipe[pipe["solution"] == "demo_a"]
    assert "experts" not in set(a["stage"])  # demo_a's gemm2 runs inside "experts": the innermost range wins
    assert {"routing", "gemm1", "activation", "gemm2", "finalize"} <= set(a["stage"])
    assert set(instances.loc[instances["category"] == "harness", "harness"]) == {"reference"}


@pytest.mark.parametrize("family_axis, axis, tokens", [
    ("batch", "batch", {"W16": 4, "W256": 2}),    # the family's TOKEN_AXIS
    (None, "seq_len", {"W16": 16, "W256": 256}),  # no family covers the op_type: the guess
])
def test_report_ncu_takes_the_token_axis_of_the_definitions_family(tmp_path, family_axis, axis, tokens):
    from fib.cli.report import report_app
    from tinydata import two_axis_definition
    definition = two_axis_definition(tmp_path / "ds", "toy_ncu_axes", STAGES, family_axis=family_axis)
    two_axes = {w: {**a, "batch": tokens_b} for (w, a), tokens_b in zip(AXES.items(), (4, 2))}
    workloads = tmp_path / "w.jsonl"
    workloads.write_text("\n".join(json.dumps({"uuid": w, "axes": a}) for w, a in two_axes.items()))
    result = CliRunner().invoke(report_app, ["ncu", str(CSV), "--definition", str(definition), "--workloads",
                                             str(workloads), "--output", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    kernels = pd.read_csv(tmp_path / "r" / "ncu_kernels.csv")
    assert dict(zip(kernels["workload"], kernels["tokens"])) == tokens
    assert f"### sol_a · {axis}={tokens['W16']} (`W16`)" in (tmp_path / "r" / "ncu.md").read_text()


def test_a_run_dirs_recorded_token_axis_wins_over_the_guess(tmp_path):
    # meta.json of `fib profile --backend ncu`: each pair's family's token axis
    from fib.report.ncu import report_ncu
    profile = tmp_path / "run" / "profile"
    profile.mkdir(parents=True)
    (profile / "ncu_raw.csv").write_text(CSV.read_text())
    pairs = [{"definition": "d", "solution": "sol_a", "workload": w, "axes": {**AXES[w], "batch": b},
              "token_axis": "batch", "calls": c} for w, b, c in (("W16", 4, 2), ("W256", 2, 1))]
    (profile / "meta.json").write_text(json.dumps({"pairs": pairs, "stages": {"d": STAGES}}))
    report_ncu(tmp_path / "run", tmp_path / "r")
    kernels = pd.read_csv(tmp_path / "r" / "ncu_kernels.csv")
    assert dict(zip(kernels["workload"], kernels["tokens"])) == {"W16": 4, "W256": 2}
    for pair in pairs:
        del pair["token_axis"]  # a profile made before families declared it: the guess
    (profile / "meta.json").write_text(json.dumps({"pairs": pairs, "stages": {"d": STAGES}}))
    report_ncu(tmp_path / "run", tmp_path / "r2")
    kernels = pd.read_csv(tmp_path / "r2" / "ncu_kernels.csv")
    assert dict(zip(kernels["workload"], kernels["tokens"])) == {"W16": 16, "W256": 256}
