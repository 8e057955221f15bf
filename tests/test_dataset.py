"""Dataset loading: our layout, flashinfer-bench's layout, and every bad input named precisely."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from fib.dataset import load_dataset
from fib.errors import DatasetError
from fib.inputs import make_inputs
from tinydata import DEFINITION, GOOD, WORKLOADS, make_dataset, write_solution


def problems_text(data) -> str:
    return "\n".join(p.render() for p in data.problems)


def test_our_layout_loads(tmp_path):
    root = make_dataset(tmp_path, solutions=["good", "uses_helper"])
    data = load_dataset([root])
    assert not data.problems
    assert set(data.solutions["scale_add"]) == {"good", "uses_helper"}
    helper = data.solutions["scale_add"]["uses_helper"]
    assert {s.path for s in helper.sources} == {"main.py", "helper.py"}
    assert [w.uuid for w in data.workloads["scale_add"]] == ["w-n3", "w-n8"]


def test_every_problem_is_listed_not_only_the_first(tmp_path):
    root = make_dataset(tmp_path, solutions=["good"])
    defs = root / "definitions" / "elementwise"
    (defs / "broken.json").write_text('{"name": "broken", "op_type": ')  # malformed JSON
    no_run = dict(DEFINITION, name="no_run", reference="def compute(x):\n    return x\n")
    (defs / "no_run.json").write_text(json.dumps(no_run))
    bad_axis = dict(DEFINITION, name="bad_axis",
                    outputs={"y": {"shape": ["n", "k"], "dtype": "float32"}})
    (defs / "bad_axis.json").write_text(json.dumps(bad_axis))
    lines = [json.dumps({"uuid": "no-axis", "axes": {}, "inputs": WORKLOADS[0]["inputs"]}),
             json.dumps({"uuid": "blob", "axes": {"n": 2},
                         "inputs": {"x": {"type": "safetensors", "path": "datasets/blob/missing.safetensors",
                                          "tensor_key": "x"}, "alpha": {"type": "scalar", "value": 1.0}}}),
             "{not json"]
    (root / "datasets" / "elementwise" / "scale_add.jsonl").write_text("\n".join(lines) + "\n")
    write_solution(root, "scale_add", "bad_entry", GOOD, {"entry_point": "nowhere.py::run"})
    write_solution(root, "ghost_definition", "orphan", GOOD)
    data = load_dataset([root])
    text = problems_text(data)
    assert "broken.json: malformed JSON" in text
    assert "no_run.json: field 'reference'" in text and "`run`" in text
    assert "bad_axis.json" in text and "unknown axis 'k'" in text
    assert "scale_add.jsonl:1: axes: no value for var axis n" in text
    assert "scale_add.jsonl:2: inputs.x.path: safetensors file" in text and "missing.safetensors" in text
    assert "scale_add.jsonl:3: malformed JSON" in text
    assert "bad_entry/solution.json: field 'spec.entry_point': entry file 'nowhere.py'" in text
    assert "solution 'orphan' is for unknown definition 'ghost_definition'" in text
    assert len(data.problems) == 8
    assert "good" in data.solutions["scale_add"]  # the good parts still load


def test_missing_safetensors_key_names_file_and_key(tmp_path):
    root = make_dataset(tmp_path, solutions=["good"])
    blob = root / "datasets" / "blob" / "x.safetensors"
    blob.parent.mkdir(parents=True)
    save_file({"other": torch.zeros(2, 4)}, str(blob))
    workload = {"uuid": "k", "axes": {"n": 2}, "inputs": {
        "x": {"type": "safetensors", "path": "datasets/blob/x.safetensors", "tensor_key": "x"},
        "alpha": {"type": "scalar", "value": 1.0}}}
    (root / "datasets" / "elementwise" / "scale_add.jsonl").write_text(json.dumps(workload) + "\n")
    data = load_dataset([root])
    with pytest.raises(DatasetError, match=r"no tensor 'x' in .*x.safetensors \(it has: other\)"):
        make_inputs(data.definitions["scale_add"], data.workloads["scale_add"][0], seed=0, device="cpu", root=root)


def test_safetensors_input_loads_and_is_checked(tmp_path):
    root = make_dataset(tmp_path, solutions=["good"])
    blob = root / "datasets" / "blob" / "x.safetensors"
    blob.parent.mkdir(parents=True)
    values = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    save_file({"x": values, "wrong": torch.zeros(3, 4)}, str(blob))
    good = {"uuid": "ok", "axes": {"n": 2}, "inputs": {
        "x": {"type": "safetensors", "path": "datasets/blob/x.safetensors", "tensor_key": "x"},
        "alpha": {"type": "scalar", "value": 3}}}
    bad = dict(good, uuid="bad", inputs=dict(good["inputs"], x=dict(good["inputs"]["x"], tensor_key="wrong")))
    (root / "datasets" / "elementwise" / "scale_add.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    data = load_dataset([root])
    definition = data.definitions["scale_add"]
    inputs = make_inputs(definition, data.workloads["scale_add"][0], seed=0, device="cpu", root=root)
    assert torch.equal(inputs["x"], values) and inputs["alpha"] == 3.0 and isinstance(inputs["alpha"], float)
    with pytest.raises(DatasetError, match=r"shape \(3, 4\), definition says \(2, 4\)"):
        make_inputs(definition, data.workloads["scale_add"][1], seed=0, device="cpu", root=root)


def test_inputs_are_deterministic_per_seed(tmp_path):
    data = load_dataset([make_dataset(tmp_path, solutions=["good"])])
    d, w = data.definitions["scale_add"], data.workloads["scale_add"][1]
    a = make_inputs(d, w, seed=1, device="cpu", root=tmp_path)
    b = make_inputs(d, w, seed=1, device="cpu", root=tmp_path)
    c = make_inputs(d, w, seed=2, device="cpu", root=tmp_path)
    assert torch.equal(a["x"], b["x"]) and not torch.equal(a["x"], c["x"])
    assert a["x"].shape == (8, 4)


def write_flashinfer_bench_dataset(root):
    """definitions/<op>/<name>.json, solutions/<author>/<op>/<def>/<sol>.json (embedded sources),
    workloads/<op>/<def>.jsonl with workload traces, as flashinfer-bench writes them."""
    old_style = {k: v for k, v in DEFINITION.items() if k not in ("tolerance", "stages", "op_type")}
    old_style["type"] = "elementwise"  # older files say `type`
    (root / "definitions" / "elementwise").mkdir(parents=True)
    (root / "definitions" / "elementwise" / "scale_add.json").write_text(json.dumps(old_style))
    sol_dir = root / "solutions" / "alice" / "elementwise" / "scale_add"
    sol_dir.mkdir(parents=True)
    solution = {"name": "alice_scale", "definition": "scale_add", "author": "alice",
                "spec": {"language": "python", "target_hardware": ["cpu", "NVIDIA_H100"],
                         "entry_point": "kernel.py::run", "dependencies": ["torch"]},
                "sources": [{"path": "kernel.py", "content": "from util import f\n\ndef run(x, alpha, y):\n"
                                                             "    y.copy_(f(x, alpha))\n"},
                            {"path": "util.py", "content": "def f(x, a):\n    return x * a + 1.0\n"}],
                "description": "embedded sources"}
    (sol_dir / "alice_scale.json").write_text(json.dumps(solution))
    (root / "workloads" / "elementwise").mkdir(parents=True)
    lines = [json.dumps({"definition": "scale_add", "solution": None, "evaluation": None, "workload": w})
             for w in WORKLOADS]
    (root / "workloads" / "elementwise" / "scale_add.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_flashinfer_bench_layout_runs_unchanged(tmp_path):
    from fib.harness.runner import Runner, RunPlan
    from fib.schema.config import RunConfig
    from fib.schema import Status
    os.environ["FIB_CACHE_DIR"] = str(tmp_path / "cache")
    root = write_flashinfer_bench_dataset(tmp_path / "fib-trace")
    data = load_dataset([root])
    assert not data.problems, problems_text(data)
    assert data.definitions["scale_add"].op_type == "elementwise"
    plan = RunPlan(config=RunConfig(warmup_runs=1, iterations=3, num_trials=1, timer="wall", timeout_s=20),
                   definitions=["scale_add"], solutions={"scale_add": ["alice_scale"]},
                   workloads={"scale_add": ["w-n3", "w-n8"]}, devices=["cpu"])
    result = Runner(data, plan, tmp_path / "run").run()
    assert [t.evaluation.status for t in result.traces] == [Status.PASSED, Status.PASSED]
    # the traces read back as plain FlashInfer-Trace JSON
    line = json.loads((tmp_path / "run" / "traces.jsonl").read_text().splitlines()[0])
    assert set(line) >= {"definition", "workload", "solution", "evaluation"}
    assert line["evaluation"]["performance"]["latency_ms"] > 0
