"""Dataset loading: our layout, flashinfer-bench's layout, and every bad input named precisely."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from fib.dataset import load_dataset
from fib.errors import DatasetError
from fib.harness.inputs import make_inputs
from fib.schema import Workload
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
    assert "scale_add.jsonl:1: field 'axes': no value for var axis n" in text
    assert "scale_add.jsonl:2: field 'inputs.x.path': safetensors file" in text and "missing.safetensors" in text
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
    # named at load time, from the blob's header, and never handed to a run ...
    assert "scale_add.jsonl:1: field 'inputs.x.tensor_key': no tensor 'x' in" in problems_text(data)
    assert "(it has: other)" in problems_text(data) and "scale_add" not in data.workloads
    # ... and make_inputs still refuses it when given one directly
    with pytest.raises(DatasetError, match=r"no tensor 'x' in .*x.safetensors \(it has: other\)"):
        make_inputs(data.definitions["scale_add"], Workload.model_validate(workload), seed=0, device="cpu", root=root)


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
    assert [w.uuid for w in data.workloads["scale_add"]] == ["ok"]
    assert "scale_add.jsonl:2: field 'inputs.x': tensor 'wrong' in" in problems_text(data)
    assert "has shape (3, 4), definition says (2, 4)" in problems_text(data)
    inputs = make_inputs(definition, data.workloads["scale_add"][0], seed=0, device="cpu", root=root)
    assert torch.equal(inputs["x"], values) and inputs["alpha"] == 3.0 and isinstance(inputs["alpha"], float)
    with pytest.raises(DatasetError, match=r"shape \(3, 4\), definition says \(2, 4\)"):
        make_inputs(definition, Workload.model_validate(bad), seed=0, device="cpu", root=root)


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


# ---- bad input named up front -------------------------------------------------------------------
def write_jsonl(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def write_embedded_solution(root, author, name, sources, entry="kernel.py::run", file_name=None):
    """A flashinfer-bench layout solution: solutions/<author>/<op>/<def>/<file>.json, sources embedded."""
    folder = root / "solutions" / author / "elementwise" / "scale_add"
    folder.mkdir(parents=True, exist_ok=True)
    solution = {"name": name, "definition": "scale_add", "author": author,
                "spec": {"language": "python", "target_hardware": ["cpu"], "entry_point": entry},
                "sources": [{"path": p, "content": c} for p, c in sources.items()]}
    path = folder / f"{file_name or name}.json"
    path.write_text(json.dumps(solution))
    return path


KERNEL = {"kernel.py": GOOD}


def test_duplicate_uuid_in_one_file_names_both_lines_and_keeps_one_identical_copy(tmp_path):
    root = make_dataset(tmp_path, solutions=["good"])
    file = write_jsonl(root / "datasets" / "elementwise" / "scale_add.jsonl",
                       [WORKLOADS[0], WORKLOADS[1], dict(WORKLOADS[0], description="same workload, said again")])
    data = load_dataset([root])
    text = problems_text(data)
    assert (f"{file}:3: field 'uuid': workload uuid 'w-n3' of definition 'scale_add' appears again "
            f"(first at {file}:1); the copies are identical, so the first is kept") in text
    assert "fix: give each workload its own uuid, or delete the copy" in text
    assert [w.uuid for w in data.workloads["scale_add"]] == ["w-n3", "w-n8"]


def test_duplicate_uuid_that_differs_across_files_and_roots_runs_neither(tmp_path):
    root = make_dataset(tmp_path / "a", solutions=["good"])
    # the same uuid with other axes, in the flashinfer-bench folder of the same root ...
    other = write_jsonl(root / "workloads" / "elementwise" / "scale_add.jsonl",
                        [{"definition": "scale_add", "solution": None, "evaluation": None,
                          "workload": dict(WORKLOADS[0], axes={"n": 5})}])
    # ... and the other uuid again in a second root
    second = write_jsonl(tmp_path / "b" / "datasets" / "elementwise" / "scale_add.jsonl",
                         [dict(WORKLOADS[1], axes={"n": 9})])
    data = load_dataset([root, tmp_path / "b"])
    text = problems_text(data)
    first = root / "datasets" / "elementwise" / "scale_add.jsonl"
    assert (f"{other}:1: field 'uuid': workload uuid 'w-n3' of definition 'scale_add' appears again "
            f"(first at {first}:1); the copies differ in axes or inputs, so none of them is run") in text
    assert f"{second}:1: field 'uuid': workload uuid 'w-n8'" in text and f"(first at {first}:2)" in text
    assert "scale_add" not in data.workloads  # neither copy of either uuid is run
    assert len(data.problems) == 2


def test_same_root_given_twice_is_not_its_own_duplicate(tmp_path):
    root = make_dataset(tmp_path, solutions=["good"])
    data = load_dataset([root, root])
    assert not data.problems and not data.warnings and len(data.workloads["scale_add"]) == 2


def test_same_solution_name_from_two_authors_in_one_root_loads_both_as_author_slash_name(tmp_path):
    """flashinfer-trace's solutions/<author>/... layout: two authors may pick one name. Both load,
    namespaced; a name only one author uses ('good') keeps its plain name."""
    from fib.harness.runner import Runner, RunPlan
    from fib.schema import Status
    from fib.schema.config import RunConfig
    os.environ["FIB_CACHE_DIR"] = str(tmp_path / "cache")
    root = make_dataset(tmp_path, solutions=["good"])
    write_embedded_solution(root, "alice", "fast", KERNEL)
    write_embedded_solution(root, "bob", "fast", {"kernel.py": "def run(x, alpha, y):\n    y.copy_(x * 2.0)\n"})
    data = load_dataset([root])
    assert not data.problems, problems_text(data)
    assert set(data.solutions["scale_add"]) == {"good", "alice/fast", "bob/fast"}
    alice, bob = data.solutions["scale_add"]["alice/fast"], data.solutions["scale_add"]["bob/fast"]
    assert (alice.name, alice.author, alice.label, bob.safe_label) == ("fast", "alice", "alice/fast", "bob--fast")
    assert data.solutions["scale_add"]["good"].label == "good"
    plan = RunPlan(config=RunConfig(warmup_runs=1, iterations=2, num_trials=1, timer="wall", timeout_s=20),
                   definitions=["scale_add"], solutions={"scale_add": ["alice/fast", "bob/fast"]},
                   workloads={"scale_add": ["w-n3"]}, devices=["cpu"])
    result = Runner(data, plan, tmp_path / "run").run()
    by_solution = {t.solution: t.evaluation.status for t in result.traces}
    # bob's kernel computes something else: each verdict belongs to its own author's code
    assert by_solution == {"alice/fast": Status.PASSED, "bob/fast": Status.INCORRECT_NUMERICAL}, by_solution
    assert (tmp_path / "run" / "logs" / "alice--fast.log").is_file()


def test_same_solution_name_and_author_twice_in_one_root_loads_neither(tmp_path):
    root = make_dataset(tmp_path, solutions=["good"])
    first = write_embedded_solution(root, "alice", "fast", KERNEL)
    second = write_embedded_solution(root, "alice", "fast", KERNEL, file_name="fast_copy")
    data = load_dataset([root])
    text = problems_text(data)
    assert (f"{second}: field 'name': solution 'fast' of definition 'scale_add' is also in {first} (both by "
            "author 'alice'); results are filed by author and name, so neither is loaded") in text
    assert set(data.solutions["scale_add"]) == {"good"}


def test_same_solution_name_in_two_files_of_fib_layout_loads_neither(tmp_path):
    root = make_dataset(tmp_path, solutions=["good"])
    copy = write_solution(root, "scale_add", "good_copy", GOOD)  # a copied folder whose name was not changed
    meta = json.loads((copy / "solution.json").read_text())
    (copy / "solution.json").write_text(json.dumps(dict(meta, name="good")))
    data = load_dataset([root])
    first = root / "solutions" / "scale_add" / "good" / "solution.json"
    assert f"{copy / 'solution.json'}: field 'name': solution 'good' of definition 'scale_add' is also in {first}" \
        in problems_text(data)
    assert "scale_add" not in data.solutions or "good" not in data.solutions["scale_add"]


def test_later_root_overrides_a_solution_with_a_warning_naming_both_files(tmp_path):
    first = make_dataset(tmp_path / "a", solutions=["good"])
    second = tmp_path / "b"
    write_solution(second, "scale_add", "good", "def run(x, alpha, y):\n    y.copy_(x * alpha + 1.0)  # b\n")
    data = load_dataset([first, second])
    assert not data.problems
    assert data.solutions["scale_add"]["good"].file == second / "solutions" / "scale_add" / "good" / "solution.json"
    assert data.warnings == [f"solution 'good' of definition 'scale_add': {second}/solutions/scale_add/good/"
                             f"solution.json overrides {first}/solutions/scale_add/good/solution.json "
                             "(a later dataset root wins)"]


def test_same_definition_name_twice_in_one_root_loads_neither(tmp_path):
    root = make_dataset(tmp_path, solutions=["good"])
    copy = root / "definitions" / "elementwise" / "scale_add_copy.json"
    copy.write_text(json.dumps(DEFINITION))
    data = load_dataset([root])
    text = problems_text(data)
    assert f"{copy}: field 'name': definition 'scale_add' is defined again; first in" in text
    assert "scale_add" not in data.definitions and "scale_add" not in data.workloads
    assert "scale_add" not in data.solutions
    assert len(data.problems) == 1  # its workloads and solutions are not reported one by one


def test_malformed_lines_are_named_and_the_rest_of_the_file_loads(tmp_path):
    root = make_dataset(tmp_path, solutions=["good"])
    file = root / "datasets" / "elementwise" / "scale_add.jsonl"
    cut = json.dumps(WORKLOADS[1])[:25]
    file.write_bytes(b"\n".join([b"{not json", json.dumps(WORKLOADS[0]).encode(), b"[1, 2]",
                                 json.dumps({"uuid": "no-axes"}).encode(), b'{"uuid": "\xff\xfe"}',
                                 json.dumps(dict(WORKLOADS[1], uuid="w-late")).encode(), cut.encode()]))
    data = load_dataset([root])
    text = problems_text(data)
    assert f"{file}:1: malformed JSON: Expecting property name" in text and "fix: fix the JSON syntax" in text
    assert f"{file}:3: a line holds a JSON array, not an object" in text
    assert f"{file}:4: field 'axes': Field required (fix: add the field)" in text
    assert f"{file}:5: not UTF-8 text" in text
    assert f"{file}:7: malformed JSON: the text ends before the JSON value does" in text and "cut short" in text
    assert len(data.problems) == 5
    assert [w.uuid for w in data.workloads["scale_add"]] == ["w-n3", "w-late"]  # the lines after each bad one load


def test_load_jsonl_without_a_problem_list_still_raises(tmp_path):
    from fib.schema.io import load_jsonl
    file = write_jsonl(tmp_path / "x.jsonl", ['{"a": 1}', "{bad", '{"b": 2}'])
    with pytest.raises(DatasetError, match=r"x.jsonl:2: malformed JSON"):
        list(load_jsonl(file))
    problems = []
    assert [n for n, _ in load_jsonl(file, problems)] == [1, 3] and len(problems) == 1


def test_flagged_workloads_are_never_loaded(tmp_path):
    """Every workload `fib validate` flags stays out of Dataset.workloads, so `fib run` cannot run it."""
    definition = dict(DEFINITION, constraints=["n <= 100"])
    root = make_dataset(tmp_path, solutions=["good"])
    (root / "definitions" / "elementwise" / "scale_add.json").write_text(json.dumps(definition))
    blob = root / "datasets" / "blob" / "x.safetensors"
    blob.parent.mkdir(parents=True)
    save_file({"x": torch.zeros(2, 4, dtype=torch.float16)}, str(blob))
    ok = WORKLOADS[0]
    x_blob = {"type": "safetensors", "path": "datasets/blob/x.safetensors", "tensor_key": "x"}
    file = write_jsonl(root / "datasets" / "elementwise" / "scale_add.jsonl", [
        ok,
        dict(ok, uuid="no-var", axes={}),
        dict(ok, uuid="extra-axis", axes={"n": 3, "k": 2}),
        dict(ok, uuid="too-big", axes={"n": 101}),
        dict(ok, uuid="unknown-input", inputs=dict(ok["inputs"], z={"type": "random"})),
        dict(ok, uuid="no-alpha", inputs={"x": {"type": "random"}}),
        dict(ok, uuid="random-scalar", inputs=dict(ok["inputs"], alpha={"type": "random"})),
        dict(ok, uuid="no-generator", inputs=dict(ok["inputs"], x={"type": "generator"})),
        dict(ok, uuid="no-blob", inputs=dict(ok["inputs"], x=dict(x_blob, path="datasets/blob/none.safetensors"))),
        dict(ok, uuid="wrong-dtype", axes={"n": 2}, inputs=dict(ok["inputs"], x=x_blob)),
    ])
    data = load_dataset([root])
    text = problems_text(data)
    assert [w.uuid for w in data.workloads["scale_add"]] == ["w-n3"]
    expected = [
        (2, "axes", "no value for var axis n", "give a value for each var axis (n) and for no other axis"),
        (3, "axes", "axis k is not an axis of definition 'scale_add'", "give a value for each var axis"),
        (4, "axes", "{'n': 101} violates the constraint n <= 100 of definition 'scale_add'",
         "change the axis values or remove the workload"),
        (5, "inputs.z", "'z' is not an input of definition 'scale_add' (its inputs: x, alpha)", "remove it"),
        (6, "inputs.alpha", "no spec for input 'alpha'", "add one"),
        (7, "inputs.alpha", "type 'random' for a scalar input", '"type": "scalar"'),
        (8, "inputs.x", "type 'generator' but definition 'scale_add' has no generator", "add a generator"),
        (9, "inputs.x.path", "none.safetensors does not exist", "check the path"),
        (10, "inputs.x", "has dtype F16, definition says float32 (F32)", "store it as float32"),
    ]
    for line, field_name, message, fix in expected:
        problem = next((p for p in data.problems if p.where == f"{file}:{line}"), None)
        assert problem is not None, f"line {line} not flagged:\n{text}"
        assert problem.field == field_name and message in problem.message and fix in problem.fix, problem.render()
    assert len(data.problems) == len(expected)


def test_blob_is_checked_where_the_run_reads_it(tmp_path):
    """Blobs resolve from the definition's root at run time; a workload whose blob lies only in its own
    root (another one) would pass a check made there and fail in the run, so it is flagged."""
    first = make_dataset(tmp_path / "a", solutions=["good"])
    second = tmp_path / "b"
    blob = second / "datasets" / "blob" / "x.safetensors"
    blob.parent.mkdir(parents=True)
    save_file({"x": torch.zeros(2, 4)}, str(blob))
    workload = {"uuid": "b-blob", "axes": {"n": 2}, "inputs": {
        "x": {"type": "safetensors", "path": "datasets/blob/x.safetensors", "tensor_key": "x"},
        "alpha": {"type": "scalar", "value": 1.0}}}
    write_jsonl(second / "datasets" / "elementwise" / "scale_add.jsonl", [workload])
    data = load_dataset([first, second])
    assert [w.uuid for w in data.workloads["scale_add"]] == ["w-n3", "w-n8"]
    (problem,) = data.problems
    assert f"it is under this workload's root {second}, but blobs are read from the root of definition " \
           f"'scale_add' ({first})" in problem.message
    assert problem.fix == "keep a definition's file, its workloads and their blobs in one dataset root"


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "..", "a..b", ".hidden", "nul\0byte"])
def test_escaping_solution_names_are_rejected_in_both_layouts(tmp_path, name):
    root = make_dataset(tmp_path, solutions=["good"])
    embedded = write_embedded_solution(root, "eve", name, KERNEL, file_name="escape")
    folder = write_solution(root, "scale_add", "escape_ours", GOOD)
    meta = json.loads((folder / "solution.json").read_text())
    (folder / "solution.json").write_text(json.dumps(dict(meta, name=name)))
    data = load_dataset([root])
    for path in (embedded, folder / "solution.json"):
        problem = next(p for p in data.problems if p.where == str(path))
        assert problem.field == "name" and f"solution name {name!r} has" in problem.message, problem.render()
        assert problem.fix.startswith("rename the solution")
    assert set(data.solutions["scale_add"]) == {"good"}


@pytest.mark.parametrize("path,why", [("/etc/kernel.py", "is absolute"), ("../kernel.py", "has a '..' component"),
                                      ("sub/../../kernel.py", "has a '..' component"),
                                      ("..\\kernel.py", "has a '..' component"), ("C:\\kernel.py", "is absolute"),
                                      ("\\\\server\\kernel.py", "is absolute")])
def test_escaping_source_paths_are_rejected_in_both_layouts(tmp_path, path, why):
    root = make_dataset(tmp_path, solutions=["good"])
    embedded = write_embedded_solution(root, "eve", "escape", {"kernel.py": GOOD, path: GOOD})
    ours = write_solution(root, "scale_add", "escape_ours", GOOD)
    meta = json.loads((ours / "solution.json").read_text())
    (ours / "solution.json").write_text(json.dumps(dict(meta, sources=[{"path": "main.py"}, {"path": path}])))
    entry = write_embedded_solution(root, "eve", "escape_entry", KERNEL, entry=f"{path.rsplit('.', 1)[0]}.py::run")
    data = load_dataset([root])
    for file, field_name in ((embedded, "sources.1.path"), (ours / "solution.json", "sources.1.path"),
                             (entry, "spec.entry_point")):
        problem = next(p for p in data.problems if p.where == str(file))
        assert problem.field == field_name and why in problem.message, problem.render()
        assert "stay inside the solution's folder" in problem.message and "relative" in problem.fix
    assert set(data.solutions["scale_add"]) == {"good"}


def test_symlinks_out_of_the_solution_folder_are_rejected(tmp_path):
    root = make_dataset(tmp_path, solutions=["good"])
    outside = tmp_path / "outside.py"
    outside.write_text(GOOD)
    entry = write_solution(root, "scale_add", "linked_entry", GOOD)
    (entry / "main.py").unlink()
    (entry / "main.py").symlink_to(outside)
    helper = write_solution(root, "scale_add", "linked_helper", GOOD)
    (helper / "helper.py").symlink_to(outside)
    inside = write_solution(root, "scale_add", "linked_inside", GOOD)
    (inside / "alias.py").symlink_to(inside / "main.py")  # a link within the folder is fine
    data = load_dataset([root])
    by_file = {p.where: p for p in data.problems}
    problem = by_file[str(entry / "solution.json")]
    assert problem.field == "spec.entry_point" and f"'main.py' resolves to {outside}, outside the solution's folder" \
        in problem.message and "copy the file into the solution's folder" in problem.fix
    assert by_file[str(helper / "solution.json")].field == "sources"
    assert set(data.solutions["scale_add"]) == {"good", "linked_inside"} and len(data.problems) == 2


def test_source_dir_refuses_paths_that_leave_its_folder(tmp_path, monkeypatch):
    """Defence in depth: models built in code skip the schema, and the cache can hold a planted link."""
    from fib.schema import Solution, SourceFile
    from fib.solutions import SolutionLoadError, source_dir
    monkeypatch.setenv("FIB_CACHE_DIR", str(tmp_path / "cache"))
    good = Solution.model_validate({"name": "s", "definition": "scale_add",
                                    "spec": {"language": "python", "entry_point": "kernel.py::run"},
                                    "sources": [{"path": "kernel.py", "content": GOOD}]})
    folder = source_dir(good)
    assert folder.parent == tmp_path / "cache" / "solutions" and (folder / "kernel.py").read_text() == GOOD
    escaping = good.model_copy(update={"sources": [*good.sources,
                                                   SourceFile.model_construct(path="../../../evil.py", content="x")]})
    with pytest.raises(SolutionLoadError, match=r"field 'sources': '../../../evil.py' resolves to .*outside"):
        source_dir(escaping)
    assert not (tmp_path / "evil.py").exists()
    planted = good.model_copy(update={"sources": [SourceFile(path="kernel.py", content=GOOD + "# v2\n")]})
    target = source_dir(planted)
    (target / "kernel.py").unlink()
    (target / "kernel.py").symlink_to(tmp_path / "victim.py")
    with pytest.raises(SolutionLoadError, match="field 'spec.entry_point'.*outside the solution's folder"):
        source_dir(planted)
    assert not (tmp_path / "victim.py").exists()
