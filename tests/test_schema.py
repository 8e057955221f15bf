"""Schema models: FlashInfer-Trace fields, fib's additions, and the validators that encode the rules."""
from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from fib.schema import Definition, Evaluation, Solution, Status, Trace, Workload
from tinydata import DEFINITION


def test_definition_axes_and_shapes():
    d = Definition.model_validate(DEFINITION)
    assert d.var_axes() == ["n"] and d.const_axes() == {"m": 4}
    assert d.resolve_axes({"n": 5}) == {"m": 4, "n": 5}
    assert d.shape_of(d.inputs["x"], {"n": 5, "m": 4}) == (5, 4)
    assert d.inputs["alpha"].is_scalar
    assert d.var_axis_bindings() == {"n": ("x", 0)}
    with pytest.raises(ValueError, match="no value for var axis n"):
        d.resolve_axes({})
    with pytest.raises(ValueError, match="const axis m"):
        d.resolve_axes({"n": 1, "m": 5})


def test_definition_aliases_and_hash():
    old = {k: v for k, v in DEFINITION.items() if k != "op_type"}
    old["type"] = "elementwise"
    old["inputs"] = {**DEFINITION["inputs"], "q": {"shape": ["n"], "dtype": "float8_e4m3"}}
    d = Definition.model_validate(old)
    assert d.op_type == "elementwise" and d.inputs["q"].dtype == "float8_e4m3fn"
    a = Definition.model_validate(DEFINITION)
    b = Definition.model_validate(dict(DEFINITION, description="other words"))
    c = Definition.model_validate(dict(DEFINITION, reference=DEFINITION["reference"] + "\n# changed\n"))
    assert a.content_hash() == b.content_hash() != c.content_hash()


@pytest.mark.parametrize("change,message", [
    ({"reference": "def go():\n    pass\n"}, "top-level function `run`"),
    ({"reference": "def run(:\n"}, "not valid Python"),
    ({"outputs": {"y": {"shape": ["z"], "dtype": "float32"}}}, "unknown axis 'z'"),
    ({"inputs": {"x": {"shape": ["n"], "dtype": "float64"}}}, "dtype"),
    ({"constraints": ["n >"]}, "not a Python expression"),
    ({"generator": "x = 1\n"}, "top-level function `generate`"),
    ({"axes": {"n": {"type": "const", "value": 0}}}, "greater than 0"),
])
def test_definition_rejects(change, message):
    with pytest.raises(ValidationError, match=message):
        Definition.model_validate({**DEFINITION, **change})


def test_solution_entry_point_and_sources():
    spec = {"language": "triton", "entry_point": "k.py::run"}
    s = Solution.model_validate({"name": "s", "definition": "d", "spec": spec,
                                 "sources": [{"path": "k.py", "content": "def run():\n    pass\n"}]})
    assert s.spec.destination_passing_style is True and s.spec.entry_function == "run"
    with pytest.raises(ValidationError, match="file.py::function"):
        Solution.model_validate({"name": "s", "definition": "d", "spec": {**spec, "entry_point": "k.py:run"}})
    with pytest.raises(ValidationError, match="more than once"):
        Solution.model_validate({"name": "s", "definition": "d", "spec": spec,
                                 "sources": [{"path": "k.py", "content": ""}, {"path": "k.py", "content": ""}]})
    with pytest.raises(ValidationError, match="stay inside"):
        Solution.model_validate({"name": "s", "definition": "d", "spec": spec,
                                 "sources": [{"path": "../k.py", "content": ""}]})


def test_workload_input_kinds():
    w = Workload.model_validate({"uuid": "u", "axes": {"n": 2}, "inputs": {
        "a": {"type": "random"}, "b": {"type": "scalar", "value": 3}, "c": {"type": "generator"},
        "d": {"type": "safetensors", "path": "p.safetensors", "tensor_key": "d"}}})
    assert w.scalar_inputs() == {"b": 3}
    with pytest.raises(ValidationError):
        Workload.model_validate({"uuid": "u", "axes": {"n": 2}, "inputs": {"a": {"type": "file"}}})


def _evaluation(status, **kw):
    return {"status": status, "environment": {"hardware": "cpu"}, "timestamp": "t", **kw}


def test_trace_status_rules_and_nan_roundtrip():
    correctness = {"max_relative_error": float("nan"), "max_absolute_error": 1.0}
    ev = Evaluation.model_validate(_evaluation("INCORRECT_NUMERICAL", correctness=correctness))
    trace = Trace(definition="d", workload=Workload(uuid="u", axes={"n": 1}), solution="s", evaluation=ev)
    back = Trace.model_validate_json(trace.model_dump_json())
    assert math.isnan(back.evaluation.correctness.max_relative_error)
    with pytest.raises(ValidationError, match="carries correctness and performance"):
        Evaluation.model_validate(_evaluation("PASSED"))
    with pytest.raises(ValidationError, match="neither correctness nor performance"):
        Evaluation.model_validate(_evaluation("RUNTIME_ERROR", correctness=correctness))
    unsupported = Evaluation.model_validate(_evaluation("UNSUPPORTED", reason="needs sm100"))
    assert unsupported.status == Status.UNSUPPORTED and unsupported.reason == "needs sm100"


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "..", "x..y", ".x", "a\0b"])
def test_names_that_would_leave_fibs_folders_are_rejected(name):
    from fib.errors import DatasetError
    from fib.schema.io import validate
    spec = {"language": "python", "entry_point": "k.py::run"}
    for model, data, field in ((Solution, {"name": name, "definition": "d", "spec": spec}, "name"),
                               (Solution, {"name": "s", "definition": name, "spec": spec}, "definition"),
                               (Definition, {**DEFINITION, "name": name}, "name")):
        with pytest.raises(DatasetError) as info:
            validate(model, data, "f.json")
        problem = info.value
        assert problem.field == field and repr(name) in problem.message and "may not contain" in problem.message
        assert problem.fix and problem.fix.startswith("rename the"), problem.render()
    assert Solution.model_validate({"name": "v1.2-fast_x", "definition": "d", "spec": spec}).name == "v1.2-fast_x"


@pytest.mark.parametrize("path", ["/abs.py", "../k.py", "a/../../k.py", "..\\k.py", "C:k.py", "C:\\k.py", "\\k.py",
                                  "a\0.py"])
def test_source_and_entry_paths_must_stay_inside(path):
    spec = {"language": "python", "entry_point": "k.py::run"}
    with pytest.raises(ValidationError, match="stay inside the solution's folder"):
        Solution.model_validate({"name": "s", "definition": "d", "spec": spec,
                                 "sources": [{"path": path, "content": ""}]})
    entry = path if path.endswith(".py") else path + ".py"
    with pytest.raises(ValidationError, match="entry_point file .* stay inside"):
        Solution.model_validate({"name": "s", "definition": "d", "spec": {**spec, "entry_point": f"{entry}::run"}})
    ok = Solution.model_validate({"name": "s", "definition": "d", "spec": {**spec, "entry_point": "sub/k.py::run"},
                                  "sources": [{"path": "sub/k.py", "content": ""}, {"path": "a..b.py", "content": ""}]})
    assert ok.entry_source().path == "sub/k.py"


def test_generic_schema_errors_name_the_field_and_a_fix():
    from fib.errors import DatasetError
    from fib.schema.io import validate
    with pytest.raises(DatasetError) as info:
        validate(Workload, {"uuid": "u", "axes": {"n": 1}, "inputs": {"x": {"type": "file"}}}, "d.jsonl:4")
    assert info.value.render().startswith("d.jsonl:4: field 'inputs.x': Input tag 'file'")
    assert info.value.fix == "use one of the expected values"
    with pytest.raises(DatasetError) as info:
        validate(Workload, {"uuid": "u", "axes": {"n": 1}, "inputs": {"x": {"type": "random", "seed": 1}}}, "d.jsonl:5")
    assert info.value.field == "inputs.x.random.seed" and info.value.fix == "remove the field or correct its spelling"
