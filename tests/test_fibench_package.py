"""benchmarks/fibench_package.py: a fib dataset as a flashinfer-bench trace set, and the check that
flashinfer-bench timed every workload (its run skips timing a pair whose check fails, which would
make a harness comparison look faster). CPU only; the flashinfer-bench loader test skips unless
flashinfer_bench is importable (the wheel: .fibench/wheels, see the script's header)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from fib.errors import DatasetError
from fib.schema import Solution

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("fibench_package", ROOT / "benchmarks" / "fibench_package.py")
fibench = importlib.util.module_from_spec(spec)
sys.modules["fibench_package"] = fibench
spec.loader.exec_module(fibench)

DS = fibench.DS
SOURCE = ROOT / "solutions" / DS / "triton_fused" / "moe.py"


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fibench") / "set"
    meta = fibench.pack(folder, DS, "triton_fused", "contest")
    return folder, meta


def _definition(folder):
    return json.loads((folder / "definitions" / "moe" / f"{DS}.json").read_text())


def test_pack_writes_flashinfer_layout_without_fib_fields(packed):
    folder, meta = packed
    definition = _definition(folder)
    assert not set(fibench.FIB_DEFINITION_ADDITIONS) & set(definition)
    assert all("shape" in spec for kind in ("inputs", "outputs") for spec in definition[kind].values())
    assert definition["inputs"]["local_expert_offset"]["shape"] is None
    lines = (folder / "workloads" / "moe" / f"{DS}.jsonl").read_text().splitlines()
    ours = [json.loads(line) for line in (ROOT / "datasets" / "moe" / f"{DS}.jsonl").read_text().splitlines()]
    assert len(lines) == len(ours) == len(meta["workloads"])
    for line, our in zip(lines, ours):
        trace = json.loads(line)
        assert trace["solution"] is None and trace["evaluation"] is None and trace["definition"] == DS
        assert trace["workload"]["uuid"] == our["uuid"] and trace["workload"]["axes"] == our["axes"]
        for name, spec in our["inputs"].items():
            want = {"type": "random"} if spec["type"] == "generator" else spec
            assert trace["workload"]["inputs"][name] == want
    solution = json.loads((folder / "solutions" / "fib" / "moe" / DS / "triton_fused.json").read_text())
    assert solution["sources"] == [{"path": "moe.py", "content": SOURCE.read_text()}]
    assert set(solution["spec"]) == set(fibench.FI_SPEC_FIELDS)
    assert meta["tolerance"] == {"name": "contest", "atol": 1.0, "rtol": 0.3, "required_matched_ratio": 0.9}
    readme = (folder / "README.md").read_text()
    assert "random" in readme and "--atol 1.0 --rtol 0.3 --required-matched-ratio 0.9" in readme


def _tiny_inputs(offset=0):
    """Small tensors that route every token to local experts 0..7 (through a large bias)."""
    g = torch.Generator().manual_seed(0)
    tokens, experts, hidden, inter, local = 3, 256, 128, 128, 32

    def fp8(*shape):
        return torch.randn(*shape, generator=g).clamp(-2, 2).to(torch.float8_e4m3fn)

    bias = torch.zeros(experts)
    bias[offset:offset + 8] = 10.0
    return [torch.randn(tokens, experts, generator=g), bias.bfloat16(), fp8(tokens, hidden),
            torch.rand(hidden // 128, tokens, generator=g) + 0.5, fp8(local, 2 * inter, hidden),
            torch.rand(local, 2 * inter // 128, hidden // 128, generator=g) + 0.5, fp8(local, hidden, inter),
            torch.rand(local, hidden // 128, inter // 128, generator=g) + 0.5, offset, 2.5]


def _run_of(source):
    namespace = {}
    exec(compile(source, "<reference>", "exec"), namespace)
    return namespace["run"]


def test_packaged_reference_returns_the_declared_dtype(packed):
    folder, _ = packed
    ours = json.loads((ROOT / "definitions" / "moe" / f"{DS}.json").read_text())["reference"]
    inputs = _tiny_inputs()
    fp32 = _run_of(ours)(*inputs)
    assert fp32.dtype == torch.float32 and fp32.abs().max() > 0  # why the wrapper is needed, on a hit
    out = _run_of(_definition(folder)["reference"])(*inputs)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, fp32.to(torch.bfloat16))


def test_pack_refuses_what_flashinfer_bench_cannot_honour(packed, tmp_path):
    folder, _ = packed
    with pytest.raises(DatasetError, match="not empty"):
        fibench.pack(folder, DS, "triton_fused", "contest")
    with pytest.raises(DatasetError, match="no tolerance preset 'nope'"):
        fibench.pack(tmp_path / "x", DS, "triton_fused", "nope")
    with pytest.raises(DatasetError, match="solution 'nope'"):
        fibench.pack(tmp_path / "y", DS, "nope", "contest")
    base = {"name": "s", "definition": DS, "spec": {"language": "python", "entry_point": "m.py::run"}}
    constrained = Solution.model_validate({**base, "spec": {**base["spec"], "shape_constraints": ["seq_len < 9"]},
                                           "sources": [{"path": "m.py", "content": "def run(): pass\n"}]})
    with pytest.raises(DatasetError, match="shape_constraints"):
        fibench.solution_json(constrained)
    hooked = Solution.model_validate({**base, "sources": [{"path": "m.py",
                                                           "content": "def fib_build(): pass\ndef run(): pass\n"}]})
    with pytest.raises(DatasetError, match="fib_build"):
        fibench.solution_json(hooked)
    plain = Solution.model_validate({**base, "sources": [{"path": "m.py", "content": "import torch\ndef run(): pass\n"}]})
    assert fibench.solution_json(plain)[1] == []  # no fib import: nothing extra needed
    assert fibench.solution_json(fibench.load_dataset([ROOT]).find_solution("triton_fused", DS))[1]  # imports fib


def _write_traces(folder, meta, statuses):
    lines = []
    for w, status in zip(meta["workloads"], statuses):
        if status is None:
            continue
        ev = {"status": status, "environment": {"hardware": "H200"}, "timestamp": "t", "log": ""}
        if status in ("PASSED", "INCORRECT_NUMERICAL"):
            ev["correctness"] = {"max_absolute_error": 0.5, "max_relative_error": 2.0, "extra": {"matched_ratio": 0.95}}
        if status == "PASSED":
            ev["performance"] = {"latency_ms": 0.1, "reference_latency_ms": 3.0, "speedup_factor": 30.0}
        lines.append(json.dumps({"definition": DS, "workload": {"uuid": w["uuid"], "axes": w["axes"], "inputs": {}},
                                 "solution": "triton_fused", "evaluation": ev}))
    path = folder / "traces" / "moe" / f"{DS}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_verify_fails_unless_every_workload_was_timed(packed, capsys):
    folder, meta = packed
    n = len(meta["workloads"])
    _write_traces(folder, meta, ["PASSED"] * n)
    assert fibench.main(["verify", str(folder)]) == 0
    assert f"all {n} workloads timed" in capsys.readouterr().out
    _write_traces(folder, meta, ["PASSED"] * (n - 2) + ["INCORRECT_NUMERICAL", None])
    assert fibench.main(["verify", str(folder)]) == 1
    out = capsys.readouterr().out
    assert f"NOT TIMED: 2 of {n}" in out
    assert f"{meta['workloads'][-2]['uuid'][:8]} INCORRECT_NUMERICAL" in out
    assert f"{meta['workloads'][-1]['uuid'][:8]} NO TRACE" in out
    table = fibench.verify(folder)
    assert table["timed"].sum() == n - 2 and table["latency_ms"].iloc[0] == 0.1
    (folder / "traces").joinpath("moe", f"{DS}.jsonl").unlink()


def test_flags_are_the_packaged_tolerance(packed, capsys):
    folder, _ = packed
    assert fibench.main(["flags", str(folder)]) == 0
    assert capsys.readouterr().out.split() == ["--atol", "1.0", "--rtol", "0.3", "--required-matched-ratio", "0.9"]


def test_flashinfer_bench_loads_the_folder_as_packaged(packed, tmp_path):
    pytest.importorskip("flashinfer_bench")
    import shutil

    folder, _ = packed
    assert fibench.load(folder) == []
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    path = copy / "definitions" / "moe" / f"{DS}.json"
    data = json.loads(path.read_text())
    data["tolerance"] = {"atol": 1}  # a field flashinfer-bench would silently ignore
    path.write_text(json.dumps(data))
    assert fibench.load(copy) == ["definition.tolerance"]
