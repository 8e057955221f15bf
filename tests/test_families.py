"""Family modules (fib/families.py): a fake family in a temp dataset root is found by op_type, its
floor goes through the judge into every trace of the workload (cached with the reference), and
`fib report floor` turns it into floor µs and % of floor; bad family modules fail naming the file."""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from fib.dataset import load_dataset
from fib.errors import FibError
from fib.families import discover, family_for, load_family
from fib.harness.runner import Runner, RunPlan
from fib.report.floor import floor_table, passed_traces, report_floor
from fib.schema.config import RunConfig
from tinydata import make_dataset

# x is [n, 4] float32 and y the same: 16 bytes read and 16 written per row; 2 FLOPs per element.
FAKE_FAMILY = textwrap.dedent('''
    OP_TYPES = ("elementwise",)
    TOKEN_AXIS = "n"

    def work(definition, workload, inputs):
        x = inputs["x"]
        return {"bytes": 2 * x.numel() * x.element_size(), "flops": 2 * x.numel(), "compute": "fp32",
                "rows": x.shape[0]}
''')


def write_family(root: Path, text: str, name: str = "fake") -> Path:
    path = root / "families" / name / "family.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run_good(root: Path, run_dir: Path, warnings: list | None = None) -> list:
    data = load_dataset([root])
    config = RunConfig(warmup_runs=1, iterations=3, num_trials=2, timer="wall", timeout_s=20, build_timeout_s=20,
                       jit_timeout_s=20)
    plan = RunPlan(config=config, definitions=["scale_add"], solutions={"scale_add": ["good"]},
                   workloads={"scale_add": [w.uuid for w in data.workloads["scale_add"]]}, devices=["cpu"])
    runner = Runner(data, plan, run_dir, on_warning=(warnings.append if warnings is not None else None))
    return runner.run().traces


def test_a_fake_family_is_found_by_op_type(tmp_path):
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    path = write_family(root, FAKE_FAMILY)
    data = load_dataset([root])
    family = family_for(data.definitions["scale_add"], [root])
    assert family is not None and family.path == path.resolve() and family.token_axis == "n"
    assert discover([root])["moe"].name == "moe"  # the repository's own families are found too
    import torch
    workload = data.workloads["scale_add"][0]
    record = family.floor(data.definitions["scale_add"], workload, {"x": torch.zeros(3, 4), "alpha": 2.0})
    assert record == {"family": "fake", "token_axis": "n", "tokens": 3, "bytes": 96, "flops": 24, "compute": "fp32",
                      "detail": {"rows": 3}}


def test_a_family_whose_token_axis_is_not_a_var_axis_is_refused(tmp_path):
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    path = write_family(root, FAKE_FAMILY.replace('TOKEN_AXIS = "n"', 'TOKEN_AXIS = "m"'))
    with pytest.raises(FibError) as err:
        family_for(load_dataset([root]).definitions["scale_add"], [root])
    assert str(path.resolve()) in str(err.value) and "'m' is not a var axis" in str(err.value)


@pytest.mark.parametrize("text, words", [
    ("OP_TYPES = ('elementwise',)\nTOKEN_AXIS = 'n'\ndef work(definition, workload, inputs)\n    pass\n",
     "fails to import: SyntaxError"),
    ("import surely_not_a_module_xyz\n", "fails to import: ModuleNotFoundError"),
    ("TOKEN_AXIS = 'n'\n", "field 'OP_TYPES'"),
    ("OP_TYPES = 'elementwise'\nTOKEN_AXIS = 'n'\n", "field 'OP_TYPES'"),
    ("OP_TYPES = ('elementwise',)\n", "field 'TOKEN_AXIS'"),
    ("OP_TYPES = ('elementwise',)\nTOKEN_AXIS = 'n'\nwork = 3\n", "work is a int, not a function"),
])
def test_a_bad_family_module_names_its_file(tmp_path, text, words):
    path = write_family(tmp_path, text)
    with pytest.raises(FibError) as err:
        load_family(path)
    assert str(path.resolve()) in str(err.value) and words in str(err.value)


@pytest.mark.parametrize("answer, words", [
    ("[1, 2]", "returned a list, not a dict"),
    ("{'bytes': -1, 'flops': 2, 'compute': 'fp32'}", "work()['bytes'] is -1"),
    ("{'bytes': 1, 'compute': 'fp32'}", "work()['flops'] is None"),
    ("{'bytes': 0, 'flops': 0, 'compute': 'fp32'}", "no bytes and no FLOPs"),
    ("{'bytes': 8, 'flops': 2}", "no 'compute'"),
    ("{'bytes': 8, 'flops': 2, 'compute': 'fp32', 'ids': [1, 2]}", "work()['ids'] is a list"),
    ("1 / 0", "work() raised ZeroDivisionError"),
])
def test_a_bad_work_answer_names_the_family_file(tmp_path, answer, words):
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    path = write_family(root, f"OP_TYPES = ('elementwise',)\nTOKEN_AXIS = 'n'\n"
                              f"def work(definition, workload, inputs):\n    return {answer}\n")
    data = load_dataset([root])
    family = family_for(data.definitions["scale_add"], [root])
    with pytest.raises(FibError) as err:
        family.floor(data.definitions["scale_add"], data.workloads["scale_add"][0], {})
    assert str(path.resolve()) in str(err.value) and "field 'work'" in str(err.value) and words in str(err.value)


def test_two_families_cannot_claim_one_op_type(tmp_path):
    write_family(tmp_path, FAKE_FAMILY, "one")
    second = write_family(tmp_path, FAKE_FAMILY, "two")
    with pytest.raises(FibError) as err:
        discover([tmp_path])
    assert "claimed by two families" in str(err.value) and str(second.resolve()) in str(err.value)


@pytest.fixture(scope="module")
def floor_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("floor")
    os.environ["FIB_CACHE_DIR"] = str(base / "cache")
    root = make_dataset(base / "ds", solutions=["good"])
    write_family(root, FAKE_FAMILY)
    traces = run_good(root, base / "run")
    return base, root, traces


def test_the_run_records_each_workloads_floor_in_its_traces(floor_run):
    base, root, traces = floor_run
    by = {t.workload.uuid: t for t in traces}
    assert set(by) == {"w-n3", "w-n8"} and all(t.evaluation.status.value == "PASSED" for t in traces)
    for uuid, rows in (("w-n3", 3), ("w-n8", 8)):
        floor = by[uuid].evaluation.floor
        assert (floor.family, floor.token_axis, floor.tokens) == ("fake", "n", rows)
        assert (floor.bytes, floor.flops, floor.compute, floor.detail) == (32 * rows, 8 * rows, "fp32", {"rows": rows})
    # on the CPU no ceilings are measured: run.json has none
    assert "ceilings" not in json.loads((base / "run" / "run.json").read_text())


def test_a_cached_reference_keeps_its_floor(floor_run):
    base, root, traces = floor_run
    sidecars = [json.loads(p.read_text()) for p in (base / "cache" / "reference" / "scale_add").glob("*.json")]
    floors = sorted(m["floor"]["record"]["bytes"] for m in sidecars if "floor" in m)
    assert floors == [96, 256]  # the main input sets only (the fresh ones carry none)
    again = run_good(root, base / "run2")
    assert sorted(t.evaluation.floor.bytes for t in again) == [96, 256]


def test_a_family_that_fails_costs_the_floor_only(tmp_path):
    os.environ["FIB_CACHE_DIR"] = str(tmp_path / "cache")
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    path = write_family(root, FAKE_FAMILY.replace('inputs["x"]', 'inputs["nope"]'))
    warnings: list = []
    traces = run_good(root, tmp_path / "run", warnings)
    assert [t.evaluation.status.value for t in traces] == ["PASSED", "PASSED"]
    assert all(t.evaluation.floor is None for t in traces)
    floor_warnings = [w for w in warnings if "no floor" in w]
    assert len(floor_warnings) == 1 and str(path.resolve()) in floor_warnings[0] and "KeyError" in floor_warnings[0]


CEILINGS = {"device": "TestGPU", "copy_gbps": 0.0001, "matmul_dtype": "fp32", "matmul_tflops": 1e-9}


def test_the_floor_report_puts_latency_against_the_floor(floor_run, tmp_path):
    base, root, traces = floor_run
    ceilings = tmp_path / "ceilings.json"
    ceilings.write_text(json.dumps(CEILINGS))
    md = report_floor(base / "run", tmp_path / "out", ceilings=ceilings)
    import pandas as pd
    table = pd.read_csv(tmp_path / "out" / "floor.csv").set_index("workload")
    for t in traces:
        rows = t.workload.axes["n"]
        memory_s, compute_s = 32 * rows / (0.0001 * 1e9), 8 * rows / (1e-9 * 1e12)  # 0.32 vs 8 ms per row
        floor_ms = 1e3 * max(memory_s, compute_s)
        row = table.loc[t.workload.uuid]
        assert row["floor_ms"] == pytest.approx(floor_ms) and row["bound"] == "compute"
        assert row["of_floor"] == pytest.approx(floor_ms / t.evaluation.performance.latency_ms)
        assert row["rows"] == rows and row["tokens"] == rows
    text = md.read_text()
    assert "## scale_add" in text and "% of floor" in text and "floor µs" in text and "| n |" in text
    assert "the ceilings were measured on TestGPU" in text  # the run ran on the CPU


def test_the_floor_report_gives_the_back_to_back_time_where_the_gpu_idled(floor_run, tmp_path):
    """A trace whose timing carries event_median_ms (fib.timing.measure: the GPU idled most of the call)
    gets a 'back to back µs' cell, the others none, and the table says what the column means."""
    from fib.report.floor import floor_table, markdown
    base, root, traces = floor_run
    idle = traces[0].model_copy(deep=True)
    idle.evaluation.performance.timing = idle.evaluation.performance.timing.model_copy(
        update={"event_median_ms": 0.75, "gpu_idle_share": 0.8})
    table, notes = floor_table([idle, traces[1]], {}, ceilings=CEILINGS)
    by = table.set_index("workload")["back_to_back_us"]
    assert by[idle.workload.uuid] == pytest.approx(750.0) and by[traces[1].workload.uuid] != by[traces[1].workload.uuid]
    text = markdown(table, notes, base / "run", {}, None)
    assert "back to back µs" in text and "750.00" in text and "kernels cover under half" in text
    plain, notes = floor_table(traces, {}, ceilings=CEILINGS)
    assert "back to back" not in markdown(plain, notes, base / "run", {}, None)


def test_the_floor_report_without_ceilings_gives_work_only(floor_run, tmp_path):
    base, root, traces = floor_run
    table, notes = floor_table(passed_traces(base / "run"), {})
    assert table["floor_us"].isna().all() and sorted(table["bytes_mb"] * 1e6) == pytest.approx([96, 256])
    assert any("no ceilings for CPU" in n and "--ceilings" in n for n in notes)
    text = report_floor(base / "run", tmp_path / "out").read_text()
    assert "floor µs" not in text and "| MB |" in text


def test_the_floor_report_needs_the_ceiling_of_the_flops_dtype(floor_run):
    base, root, traces = floor_run
    bf16_only = {**CEILINGS, "matmul_dtype": "bf16", "matmul_tflops_by_dtype": {"bf16": 1.0}}
    table, notes = floor_table(passed_traces(base / "run"), {}, ceilings=bf16_only)
    assert table["floor_us"].isna().all()
    assert notes[0] == "scale_add: no fp32 matmul ceiling (measured: bf16)"


def test_definitions_without_a_floor_are_left_out_and_named(tmp_path):
    os.environ["FIB_CACHE_DIR"] = str(tmp_path / "cache")
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    traces = run_good(root, tmp_path / "run")  # no family covers op_type 'elementwise'
    assert all(t.evaluation.floor is None for t in traces)
    table, notes = floor_table(passed_traces(tmp_path / "run"), {}, ceilings=CEILINGS)
    assert table.empty and notes == ["scale_add: no floor (its family declares none, or the run predates floor "
                                     "records: `fib report floor RUN --recompute`)"]
    text = report_floor(tmp_path / "run", tmp_path / "out").read_text()
    assert "## scale_add" not in text and "scale_add: no floor" in text


def test_recompute_counts_the_floor_of_a_run_made_before_the_family(tmp_path):
    os.environ["FIB_CACHE_DIR"] = str(tmp_path / "cache")
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    run_good(root, tmp_path / "run")
    write_family(root, FAKE_FAMILY)
    ceilings = tmp_path / "ceilings.json"
    ceilings.write_text(json.dumps(CEILINGS))
    report_floor(tmp_path / "run", tmp_path / "out", ceilings=ceilings, recompute_on="cpu")
    kept = [json.loads(line) for line in (tmp_path / "run" / "floor.jsonl").read_text().splitlines()]
    assert sorted((k["workload"], k["floor"]["bytes"], k["recomputed_on"]) for k in kept) == \
        [("w-n3", 96, "cpu"), ("w-n8", 256, "cpu")]
    import pandas as pd
    table = pd.read_csv(tmp_path / "out" / "floor.csv")
    assert sorted(table["floor_ms"]) == pytest.approx([24.0, 64.0])  # compute-bound: 8 ms per row
    report_floor(tmp_path / "run", tmp_path / "out", ceilings=ceilings, recompute_on="cpu")
    assert len((tmp_path / "run" / "floor.jsonl").read_text().splitlines()) == 2  # counted once


def test_bad_ceilings_files_name_the_file(floor_run, tmp_path):
    base, root, traces = floor_run
    bad = tmp_path / "ceilings.json"
    bad.write_text(json.dumps({"copy_gbps": 0}))
    for path, words in ((bad, "copy_gbps is not a positive number"), (tmp_path / "missing.json", "no such file")):
        with pytest.raises(FibError) as err:
            report_floor(base / "run", tmp_path / "out", ceilings=path)
        assert str(path) in str(err.value) and words in str(err.value)


def test_fib_report_floor_on_the_command_line(floor_run, tmp_path):
    from typer.testing import CliRunner
    from fib.analysis.ncu_table import load_floor
    from fib.cli.app import app
    base, root, traces = floor_run
    ceilings = tmp_path / "ceilings.json"
    ceilings.write_text(json.dumps(CEILINGS))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["report", "floor", str(base / "run"), "--ceilings", str(ceilings), "-o", str(out)],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "% of floor" in result.output and f"report written to {out / 'floor.md'}" in result.output
    floors = load_floor(out / "floor.csv").set_index("workload")["floor_ms"]  # what `fib report ncu --floor` reads
    assert floors.to_dict() == pytest.approx({"w-n3": 24.0, "w-n8": 64.0})
    missing = CliRunner().invoke(app, ["report", "floor", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no traces.jsonl here" in missing.output


def test_the_run_asks_the_judge_for_its_ceilings_and_records_what_it_says(tmp_path):
    """On a GPU the judge measures the ceilings after the last pair; here (CPU) it is made to ask,
    and the judge's answer (measure_ceilings needs CUDA) lands in run.json and a warning."""
    os.environ["FIB_CACHE_DIR"] = str(tmp_path / "cache")
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    write_family(root, FAKE_FAMILY)

    class AsksOnCPU(Runner):
        def _ceilings_wanted(self) -> bool:
            return any(t.evaluation.floor for t in self.result.traces)

    data = load_dataset([root])
    config = RunConfig(warmup_runs=1, iterations=3, num_trials=2, timer="wall")
    plan = RunPlan(config=config, definitions=["scale_add"], solutions={"scale_add": ["good"]},
                   workloads={"scale_add": ["w-n3"]}, devices=["cpu"])
    warnings: list = []
    AsksOnCPU(data, plan, tmp_path / "run", on_warning=warnings.append).run()
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "ceilings" not in info and "needs a CUDA device" in info["ceilings_error"]
    assert any("ceilings were not measured" in w and "needs a CUDA device" in w for w in warnings)
    events = [json.loads(line)["event"] for line in (tmp_path / "run" / "timeline.jsonl").read_text().splitlines()]
    assert events.index("ceilings_start") < events.index("ceilings_end")


def test_the_floor_report_uses_run_json_ceilings_of_the_same_gpu(floor_run, tmp_path):
    base, root, traces = floor_run
    hardware = traces[0].evaluation.environment.hardware
    table, notes = floor_table(passed_traces(base / "run"), {"ceilings": {**CEILINGS, "device": hardware}})
    assert sorted(table["floor_ms"]) == pytest.approx([24.0, 64.0]) and notes == []
    table, notes = floor_table(passed_traces(base / "run"), {"ceilings": CEILINGS})  # measured on TestGPU
    assert table["floor_ms"].isna().all()
    assert notes == [f"no ceilings for {hardware} (run.json's were measured on TestGPU): bytes and FLOPs only; "
                     "pass --ceilings FILE"]


@pytest.mark.parametrize("token_axis, expected", [("n", "n"), ("m", None)])
def test_a_profile_records_the_familys_token_axis_and_notes_a_bad_one(tmp_path, token_axis, expected):
    from fib.profile.target import dataset_jobs
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    path = write_family(root, FAKE_FAMILY.replace('TOKEN_AXIS = "n"', f'TOKEN_AXIS = "{token_axis}"'))
    notes: list[str] = []
    jobs, skipped, _ = dataset_jobs({"roots": [str(root)], "definitions": ["scale_add"], "solutions": ["good"],
                                     "workloads": None, "device": "cpu"}, notes)
    assert jobs and not skipped and {job.token_axis for job in jobs} == {expected}
    if expected is None:  # 'm' is a const axis: the profile goes on, the reports guess, the note names the file
        assert len(notes) == 1 and str(path.resolve()) in notes[0] and "'m' is not a var axis" in notes[0]
    else:
        assert notes == []


def test_family_problems_lists_every_bad_family_file(tmp_path):
    from fib.families import family_problems
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    broken = write_family(root, "OP_TYPES = ('x',)\nTOKEN_AXIS = 'n'\ndef work(\n", "broken")
    wrong_axis = write_family(root, FAKE_FAMILY.replace('TOKEN_AXIS = "n"', 'TOKEN_AXIS = "m"'), "wrong_axis")
    problems = family_problems(load_dataset([root]).definitions.values(), [root])
    rendered = sorted(p.render() for p in problems)
    assert len(rendered) == 2, rendered
    assert rendered[0].startswith(f"{broken.resolve()}: the family module fails to import: SyntaxError")
    assert rendered[1].startswith(f"{wrong_axis.resolve()}: field 'TOKEN_AXIS': TOKEN_AXIS 'm' is not a var axis "
                                  "of definition 'scale_add'")
    good = make_dataset(tmp_path / "good", solutions=["good"])
    write_family(good, FAKE_FAMILY)
    assert family_problems(load_dataset([good]).definitions.values(), [good]) == []


def test_a_rewritten_family_module_runs_its_new_source(tmp_path):
    """A family.py rewritten at the same size within the same second (the .pyc's mtime-and-size check cannot
    tell) is loaded from its new source, which is what its source_hash describes."""
    path = tmp_path / "fake" / "family.py"
    path.parent.mkdir()
    path.write_text("OP_TYPES = ('x',)\nTOKEN_AXIS = 'm'\n")
    stamp = path.stat().st_mtime_ns
    first = load_family(path)
    import compileall
    compileall.compile_file(str(path), quiet=1)  # bytecode for the first version, as an import leaves it
    path.write_text("OP_TYPES = ('x',)\nTOKEN_AXIS = 'n'\n")
    os.utime(path, ns=(stamp, stamp))
    second = load_family(path)
    assert (first.token_axis, second.token_axis) == ("m", "n")
    assert first.source_hash != second.source_hash
