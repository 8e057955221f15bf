"""A tiny dataset written into a temp folder: one small definition and fake solutions, good and bad."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

REFERENCE = textwrap.dedent('''
    import torch

    def run(x, alpha):
        return x.float() * alpha + 1.0
''')

DEFINITION = {
    "name": "scale_add", "op_type": "elementwise", "description": "y = alpha * x + 1",
    "axes": {"n": {"type": "var"}, "m": {"type": "const", "value": 4}},
    "inputs": {"x": {"shape": ["n", "m"], "dtype": "float32"}, "alpha": {"shape": None, "dtype": "float32"}},
    "outputs": {"y": {"shape": ["n", "m"], "dtype": "float32"}},
    "reference": REFERENCE,
    "tolerance": {"atol": 1e-5, "rtol": 1e-5, "required_matched_ratio": 1.0},
    "stages": [{"name": "scale", "kernels": ["mul"]}],
}

GOOD = "def run(x, alpha, y):\n    y.copy_(x * alpha + 1.0)\n"

SOLUTIONS = {
    "good": GOOD,
    "good_return": ("def run(x, alpha):\n    return x * alpha + 1.0\n", {"destination_passing_style": False}),
    "raises": "def run(x, alpha, y):\n    raise ValueError('deliberate failure in solution')\n",
    "aborts": "import os\n\ndef run(x, alpha, y):\n    os.abort()\n",
    "hangs": "import time\n\ndef run(x, alpha, y):\n    while True:\n        time.sleep(0.1)\n",
    "hangs_later": ("import time\nCALLS = [0]\n\ndef run(x, alpha, y):\n    CALLS[0] += 1\n"
                    "    if CALLS[0] > 1:\n        time.sleep(3600)\n    y.copy_(x * alpha + 1.0)\n"),
    "wrong_shape": ("def run(x, alpha):\n    return (x * alpha + 1.0)[:, :2]\n", {"destination_passing_style": False}),
    "wrong_dtype": ("def run(x, alpha):\n    return (x * alpha + 1.0).double()\n", {"destination_passing_style": False}),
    "writes_nan": "def run(x, alpha, y):\n    y.fill_(float('nan'))\n",
    "skips_rows": "def run(x, alpha, y):\n    y[: y.shape[0] // 2].copy_(x[: x.shape[0] // 2] * alpha + 1.0)\n",
    "modifies_input": "def run(x, alpha, y):\n    y.copy_(x * alpha + 1.0)\n    x.mul_(2)\n",
    "caches": ("CACHE = {}\n\ndef run(x, alpha, y):\n    if 'out' not in CACHE:\n"
               "        CACHE['out'] = (x * alpha + 1.0).clone()\n    y.copy_(CACHE['out'])\n"),
    "slightly_off": "def run(x, alpha, y):\n    y.copy_(x * alpha + 1.001)\n",
    "oom": ("import torch\n\ndef run(x, alpha, y):\n"
            "    raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 80.00 GiB (fake allocator)')\n"),
    "no_entry": "def something_else(x, alpha, y):\n    pass\n",
    "syntax_error": "def run(x, alpha, y)\n    pass\n",
    "gpu_only": (GOOD, {"target_hardware": ["sm90"]}),
    "needs_pkg": (GOOD, {"dependencies": ["surely-not-installed-package-xyz"]}),
    "small_only": (GOOD, {"shape_constraints": ["n <= 4"]}),
    "uses_helper": ("from helper import compute\n\ndef run(x, alpha, y):\n    y.copy_(compute(x, alpha))\n",
                    {}, {"helper.py": "def compute(x, alpha):\n    return x * alpha + 1.0\n"}),
}

WORKLOADS = [
    {"uuid": "w-n3", "axes": {"n": 3}, "inputs": {"x": {"type": "random"}, "alpha": {"type": "scalar", "value": 2.0}}},
    {"uuid": "w-n8", "axes": {"n": 8}, "inputs": {"x": {"type": "random"}, "alpha": {"type": "scalar", "value": -0.5}}},
]


def write_solution(root: Path, definition: str, name: str, entry: str, spec: dict | None = None,
                   extra_files: dict | None = None) -> Path:
    folder = root / "solutions" / definition / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(entry)
    for rel, text in (extra_files or {}).items():
        (folder / rel).write_text(text)
    base_spec = {"language": "python", "target_hardware": ["cpu", "cuda"], "entry_point": "main.py::run"}
    base_spec.update(spec or {})
    (folder / "solution.json").write_text(json.dumps({"name": name, "definition": definition, "author": "test",
                                                      "spec": base_spec}))
    return folder


def make_dataset(root: Path, solutions: list[str] | None = None, workloads: list[dict] | None = None) -> Path:
    (root / "definitions" / "elementwise").mkdir(parents=True, exist_ok=True)
    (root / "definitions" / "elementwise" / "scale_add.json").write_text(json.dumps(DEFINITION))
    (root / "datasets" / "elementwise").mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(w) for w in (workloads or WORKLOADS)]
    (root / "datasets" / "elementwise" / "scale_add.jsonl").write_text("\n".join(lines) + "\n")
    for name in solutions or list(SOLUTIONS):
        value = SOLUTIONS[name]
        entry, spec, files = (value, None, None) if isinstance(value, str) else (tuple(value) + (None,))[:3]
        write_solution(root, "scale_add", name, entry, spec, files)
    return root


def two_axis_definition(root: Path, op_type: str, stages: list[dict], *, family_axis: str | None = None) -> Path:
    """ROOT/definitions/<op_type>/toy_moe.json with two var axes, seq_len and batch, and where
    family_axis is given a family (ROOT/families/toy/family.py) covering op_type that declares it
    as TOKEN_AXIS. The token-axis guess picks seq_len; a family declaring batch must win over it."""
    path = root / "definitions" / op_type / "toy_moe.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": "toy_moe", "op_type": op_type, "inputs": {}, "outputs": {},
                                "axes": {"seq_len": {"type": "var"}, "batch": {"type": "var"}},
                                "reference": "def run():\n    pass\n", "stages": stages}))
    if family_axis is not None:
        family = root / "families" / "toy" / "family.py"
        family.parent.mkdir(parents=True, exist_ok=True)
        family.write_text(f"OP_TYPES = ({op_type!r},)\nTOKEN_AXIS = {family_axis!r}\n")
    return path


FAST_TIMING = dict(warmup_runs=1, iterations=3, num_trials=1, timer="wall")


def run_scale_add(root: Path, run_dir: Path, solutions: list[str], **config):
    """A Runner over every workload of the tiny definition on the CPU, fast timing unless `config` says."""
    from fib.dataset import load_dataset
    from fib.harness.runner import Runner, RunPlan
    from fib.schema.config import RunConfig
    data = load_dataset([root])
    plan = RunPlan(config=RunConfig(**{**FAST_TIMING, **config}), definitions=["scale_add"],
                   solutions={"scale_add": solutions},
                   workloads={"scale_add": [w.uuid for w in data.workloads["scale_add"]]}, devices=["cpu"])
    return Runner(data, plan, run_dir).run()
