"""Compiled (C++/CUDA) solutions and the other flashinfer-bench languages, on the CPU.

One C++ torch extension is compiled per test session (a module fixture; it takes tens of seconds
here) and shared: on disk in fib's layout and embedded in flashinfer-bench's layout, both run
through `fib run` to PASSED; the second is a cache hit of the first's build. Compiler errors,
bindings, cache keys, DSL gating and the flashinfer-bench example layout need no compile."""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fib import native  # noqa: E402
from fib.cli.app import app, expand_list_args  # noqa: E402
from fib.dataset import load_dataset  # noqa: E402
from fib.schema import Solution  # noqa: E402
from fib.solutions import device_info, unsupported_reason  # noqa: E402
from tinydata import DEFINITION, WORKLOADS, make_dataset  # noqa: E402

CPU = {"type": "cpu", "device": "cpu", "name": "cpu", "sm": None}
H200 = {"type": "cuda", "device": "cuda:0", "name": "NVIDIA H200", "sm": 90, "memory_gb": 139.8}

# y = alpha * x + 1, as the tiny definition says; written as flashinfer-bench's torch builder wants it
KERNEL_CPP = r'''
#include <torch/extension.h>
#include "scale.h"

void run(torch::Tensor x, double alpha, torch::Tensor y) {
  TORCH_CHECK(x.is_contiguous() && y.is_contiguous(), "contiguous tensors expected");
  const float* in = x.data_ptr<float>();
  float* out = y.data_ptr<float>();
  for (int64_t i = 0; i < x.numel(); ++i) out[i] = scale_add(in[i], static_cast<float>(alpha));
}

void run_off_by_one(torch::Tensor x, double alpha, torch::Tensor y) {  // a wrong kernel, same library
  y.copy_(x * alpha + 2.0);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("run", &run, "y = alpha * x + 1");
  m.def("run_off_by_one", &run_off_by_one);
}
'''
HEADER = "#pragma once\ninline float scale_add(float x, float a) { return x * a + 1.0f; }\n"
WRONG_HEADER = "#pragma once\ninline float scale_add(float x, float a) { return x * a + 2.0f; }\n"
BROKEN_CPP = '''
// binds with pybind, but does not compile: the compiler's message must reach the trace
void run(float* x) { return not_declared_anywhere + 1; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
'''
UNBOUND_CPP = "void run(float* x, float a, float* y) { *y = *x * a; }\n"


def cpp_spec(**extra) -> dict:
    return {"language": "cpp", "target_hardware": ["cpu"], "entry_point": "kernel.cpp::run", **extra}


def write_fib_solution(root: Path, name: str, files: dict[str, str], **spec) -> Path:
    folder = root / "solutions" / "scale_add" / name
    folder.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (folder / rel).write_text(text)
    (folder / "solution.json").write_text(json.dumps({"name": name, "definition": "scale_add", "author": "test",
                                                      "spec": cpp_spec(**spec)}))
    return folder


def write_fibench_dataset(root: Path, solutions: list[dict]) -> Path:
    """flashinfer-bench's layout: definitions/<op>/<def>.json, workloads/<op>/<def>.jsonl (workload
    traces), solutions/<author>/<op>/<def>/<sol>.json with embedded sources."""
    (root / "definitions" / "elementwise").mkdir(parents=True, exist_ok=True)
    (root / "definitions" / "elementwise" / "scale_add.json").write_text(json.dumps(DEFINITION))
    (root / "workloads" / "elementwise").mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"definition": "scale_add", "solution": None, "evaluation": None, "workload": w})
             for w in WORKLOADS]
    (root / "workloads" / "elementwise" / "scale_add.jsonl").write_text("\n".join(lines) + "\n")
    for sol in solutions:
        folder = root / "solutions" / sol["author"] / "elementwise" / "scale_add"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{sol['name']}.json").write_text(json.dumps(sol))
    return root


def embedded(name: str, files: dict[str, str], author: str = "alice", **spec) -> dict:
    return {"name": name, "definition": "scale_add", "author": author, "spec": cpp_spec(**spec),
            "sources": [{"path": p, "content": c} for p, c in files.items()]}


def fib_run(*args: str):
    from typer.testing import CliRunner
    return CliRunner().invoke(app, expand_list_args(["run", *args, "--timer", "wall", "--warmup-runs", "1",
                                                     "--iterations", "2", "--num-trials", "1"]),
                              env={"COLUMNS": "250"})


def traces(run_dir: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for line in (run_dir / "traces.jsonl").read_text().splitlines():
        t = json.loads(line)
        out.setdefault(t["solution"], []).append(t["evaluation"])
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One `fib run` over a fib-layout root with the C++ solution on disk, the broken one and the
    unbound one: the compile happens once, here."""
    base = tmp_path_factory.mktemp("native")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FIB_CACHE_DIR", str(base / "cache"))
        mp.setenv("FIB_RUNS_DIR", str(base / "runs"))
        root = make_dataset(base / "ours", solutions=["good"])
        write_fib_solution(root, "cpp_disk", {"kernel.cpp": KERNEL_CPP, "scale.h": HEADER})
        write_fib_solution(root, "cpp_broken", {"kernel.cpp": BROKEN_CPP})
        write_fib_solution(root, "cpp_unbound", {"kernel.cpp": UNBOUND_CPP})
        write_fib_solution(root, "cpp_wrong", {"kernel.cpp": KERNEL_CPP, "scale.h": HEADER},
                           entry_point="kernel.cpp::run_off_by_one")
        write_fib_solution(root, "cpp_no_such_fn", {"kernel.cpp": KERNEL_CPP, "scale.h": HEADER},
                           entry_point="kernel.cpp::forward")
        started = time.monotonic()
        result = fib_run("--local", str(root), "-o", str(base / "run1"))
        seconds = time.monotonic() - started
        yield {"base": base, "root": root, "result": result, "seconds": seconds, "cache": base / "cache"}


def test_cpp_solution_on_disk_is_compiled_and_passes(built):
    assert built["result"].exit_code == 0, built["result"].output
    got = traces(built["base"] / "run1")
    assert [e["status"] for e in got["cpp_disk"]] == ["PASSED", "PASSED"], got["cpp_disk"]
    assert [e["status"] for e in got["good"]] == ["PASSED", "PASSED"]
    libs = [p for p in (built["cache"] / "builds" / "native").glob("*/fib-build.json")
            if json.loads(p.read_text())["binding"] == "torch"]
    assert len(libs) == 1  # one library for the four solutions with these sources
    record = json.loads(libs[0].read_text())
    assert record["binding"] == "torch" and Path(record["library"]).is_file()
    assert record["toolchain"]["cxx"] and record["toolchain"]["torch"]


def test_compiler_error_is_a_compile_error_with_the_compilers_message(built):
    got = traces(built["base"] / "run1")["cpp_broken"]
    assert {e["status"] for e in got} == {"COMPILE_ERROR"}
    log = (got[0].get("reason") or "") + got[0]["log"]
    assert "not_declared_anywhere" in log and "error" in log, log
    assert "kernel.cpp" in log


def test_source_that_binds_nothing_says_what_to_add(built):
    got = traces(built["base"] / "run1")["cpp_unbound"]
    assert {e["status"] for e in got} == {"COMPILE_ERROR"}
    text = (got[0].get("reason") or "") + got[0]["log"]
    assert "binds no function" in text and "PYBIND11_MODULE" in text \
        and "TVM_FFI_DLL_EXPORT_TYPED_FUNC(run, run)" in text


def test_embedded_sources_in_flashinfer_bench_layout_pass_from_the_cache(built, monkeypatch):
    """Same sources, embedded, in the other layout: one build serves both, no compiler runs."""
    monkeypatch.setenv("FIB_CACHE_DIR", str(built["cache"]))
    root = write_fibench_dataset(built["base"] / "theirs", [embedded("cpp_disk", {"kernel.cpp": KERNEL_CPP,
                                                                                  "scale.h": HEADER})])
    data = load_dataset([root])
    assert not data.problems, data.problems
    sol = data.solutions["scale_add"]["cpp_disk"]
    assert native.find(sol, CPU) is not None  # built by the fixture's run
    started = time.monotonic()
    build = native.load_entry(sol, CPU)
    assert build.cached and time.monotonic() - started < built["seconds"]
    import torch
    x, y = torch.arange(8, dtype=torch.float32), torch.empty(8)
    build.function(x, 3.0, y)
    assert torch.equal(y, x * 3 + 1)
    result = fib_run("--local", str(root), "-o", str(built["base"] / "run2"))
    assert result.exit_code == 0, result.output
    assert [e["status"] for e in traces(built["base"] / "run2")["cpp_disk"]] == ["PASSED", "PASSED"]


def test_a_changed_source_or_toolchain_misses_the_cache(built, monkeypatch):
    monkeypatch.setenv("FIB_CACHE_DIR", str(built["cache"]))
    data = load_dataset([built["root"]])
    sol = data.solutions["scale_add"]["cpp_disk"]
    assert native.find(sol, CPU) is not None
    changed = Solution.model_validate({**embedded("cpp_disk", {"kernel.cpp": KERNEL_CPP, "scale.h": WRONG_HEADER}),
                                       "author": "test"})
    assert native.build_key(changed, CPU) != native.build_key(sol, CPU)  # a header counts too
    assert native.find(changed, CPU) is None
    real = native.toolchain
    monkeypatch.setattr(native, "toolchain", lambda s, i: {**real(s, i), "cxx": "g++ (other) 99.1"})
    assert native.find(sol, CPU) is None


def test_a_wrong_result_from_cpp_fails_and_a_missing_function_is_named(built):
    """The check is real for compiled code: a kernel off by one is INCORRECT_NUMERICAL; an entry
    the library does not bind is a COMPILE_ERROR listing what it does bind."""
    got = traces(built["base"] / "run1")
    assert {e["status"] for e in got["cpp_wrong"]} == {"INCORRECT_NUMERICAL"}, got["cpp_wrong"]
    missing = got["cpp_no_such_fn"][0]
    assert missing["status"] == "COMPILE_ERROR"
    assert "no function 'forward'" in missing["reason"] and "run_off_by_one" in missing["reason"], missing


# ---- no compiler needed ------------------------------------------------------------------------
@pytest.mark.parametrize("entry, language, message", [
    ("kernel.cu::fn", "python", "must be a .py file"),
    ("main.py::run", "cuda", "must be a C++/CUDA source"),
    ("kernel.h::run", "cpp", "must be a C++/CUDA source"),
    ("kernel.cu", "cuda", "must look like"),
    ("kernel.cu::not-an-identifier", "cuda", "must look like"),
])
def test_entry_point_must_fit_the_language(entry, language, message):
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match=re.escape(message)):
        Solution.model_validate({"name": "s", "definition": "d", "spec": {"language": language,
                                                                          "entry_point": entry}})


def test_binding_comes_from_the_json_or_the_source():
    def sol(text, **spec):
        return Solution.model_validate({"name": "s", "definition": "d", "spec": {
            "language": "cuda", "entry_point": "kernel.cu::fn", **spec},
            "sources": [{"path": "kernel.cu", "content": text}]})
    assert native.binding_of(sol("TVM_FFI_DLL_EXPORT_TYPED_FUNC(fn, fn);")).value == "tvm-ffi"
    assert native.binding_of(sol("PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}")).value == "torch"
    assert native.binding_of(sol("TORCH_LIBRARY(ns, m) {}")).value == "torch"
    assert native.binding_of(sol("void fn() {}")) is None
    assert native.binding_of(sol("void fn() {}", binding="torch")).value == "torch"


def test_cuda_on_a_cpu_and_tvm_ffi_without_its_package_are_unsupported(monkeypatch):
    cu = Solution.model_validate({"name": "k", "definition": "d", "spec": {
        "language": "cuda", "target_hardware": ["cuda"], "entry_point": "kernel.cu::fn"},
        "sources": [{"path": "kernel.cu", "content": "TVM_FFI_DLL_EXPORT_TYPED_FUNC(fn, fn);"}]})
    assert "runs on a CUDA GPU; this device is cpu" in native.unsupported_reason(cu, CPU)
    monkeypatch.setattr(native, "_nvcc", lambda: None)
    assert "needs nvcc" in native.unsupported_reason(cu, H200)
    monkeypatch.setattr(native, "_nvcc", lambda: "/usr/local/cuda/bin/nvcc")
    real = native.importlib.util.find_spec
    monkeypatch.setattr(native.importlib.util, "find_spec", lambda n: None if n == "tvm_ffi" else real(n))
    assert native.unsupported_reason(cu, H200) == ("binding tvm-ffi needs package apache-tvm-ffi (import tvm_ffi), "
                                                   "which is not installed")


def test_native_library_dependencies_are_not_python_packages(monkeypatch):
    sol = Solution.model_validate({"name": "k", "definition": "d", "spec": {
        "language": "cuda", "target_hardware": ["cuda"], "entry_point": "kernel.cu::fn",
        "dependencies": ["cublas", "cutlass", "torch"]},
        "sources": [{"path": "kernel.cu", "content": "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}"}]})
    assert native.python_dependencies(sol) == ["torch"]
    monkeypatch.delenv("FIB_CUTLASS_DIR", raising=False)
    monkeypatch.delenv("CUTLASS_DIR", raising=False)
    includes, ldflags, problems = native.native_dependency_flags(sol)
    assert "-lcublas" in ldflags and problems and "FIB_CUTLASS_DIR" in problems[0]


@pytest.mark.parametrize("language, package", [("tilelang", "tilelang"), ("cute_dsl", "nvidia-cutlass-dsl"),
                                               ("cutedsl", "nvidia-cutlass-dsl"), ("cutile", "cuda-tile"),
                                               ("cudnn_frontend", "nvidia-cudnn-frontend")])
def test_dsl_languages_are_gated_on_their_package(language, package, monkeypatch):
    sol = Solution.model_validate({"name": "k", "definition": "d", "spec": {
        "language": language, "target_hardware": ["cpu", "cuda"], "entry_point": "k.py::run"},
        "sources": [{"path": "k.py", "content": "def run(x, alpha, y):\n    y.copy_(x * alpha + 1.0)\n"}]})
    import importlib.util
    real = importlib.util.find_spec
    dsl_modules = {"tilelang", "cutlass.cute", "cuda.tile", "cudnn"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in dsl_modules else real(n, *a))
    reason = unsupported_reason(sol, None, {}, CPU)
    assert reason and f"needs package {package}" in reason and language in reason
    # present: it runs as a Python solution (the module imports like any other)
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n in dsl_modules else real(n, *a))
    assert unsupported_reason(sol, None, {}, CPU) is None


def test_tilelang_solution_runs_as_python_when_its_package_is_there(tmp_path, monkeypatch):
    """A fake `tilelang` package on the path stands in for the real one: the solution imports it
    and runs through `fib run` like any Python solution."""
    fake = tmp_path / "site" / "tilelang"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("def scale(x, a):\n    return x * a + 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FIB_CACHE_DIR", str(tmp_path / "cache"))
    sol = {"name": "tl", "definition": "scale_add", "author": "alice",
           "spec": {"language": "tilelang", "target_hardware": ["cpu"], "entry_point": "k.py::run"},
           "sources": [{"path": "k.py", "content": "import tilelang\n\ndef run(x, alpha, y):\n"
                                                   "    y.copy_(tilelang.scale(x, alpha))\n"}]}
    root = write_fibench_dataset(tmp_path / "d", [sol])
    result = fib_run("--local", str(root), "-o", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert [e["status"] for e in traces(tmp_path / "run")["tl"]] == ["PASSED", "PASSED"]


def test_any_hardware_lets_a_solution_for_another_gpu_run_on_this_one():
    from fib.solutions import target_reason
    b200 = Solution.model_validate({"name": "k", "definition": "d", "spec": {
        "language": "python", "target_hardware": ["B200"], "entry_point": "k.py::run"}})
    assert "targets B200; this device is NVIDIA H200 (sm90)" == target_reason(b200, H200)
    assert target_reason(b200, H200, any_hardware=True) is None
    assert target_reason(b200, CPU, any_hardware=True) is not None  # a GPU solution never runs on a CPU
    cpu_only = b200.model_copy(update={"spec": b200.spec.model_copy(update={"target_hardware": ["cpu"]})})
    assert target_reason(cpu_only, H200, any_hardware=True) is not None


# ---- tvm-ffi (only where apache-tvm-ffi is installed) ------------------------------------------
TVM_FFI_CPP = r'''
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/function.h>

void run(tvm::ffi::TensorView x, double alpha, tvm::ffi::TensorView y) {
  const float* in = static_cast<const float*>(x.data_ptr());
  float* out = static_cast<float*>(y.data_ptr());
  for (int64_t i = 0; i < x.numel(); ++i) out[i] = in[i] * static_cast<float>(alpha) + 1.0f;
}
TVM_FFI_DLL_EXPORT_TYPED_FUNC(run, run);
'''


def test_tvm_ffi_binding_builds_and_passes(tmp_path, monkeypatch):
    pytest.importorskip("tvm_ffi")
    monkeypatch.setenv("FIB_CACHE_DIR", str(tmp_path / "cache"))
    root = write_fibench_dataset(tmp_path / "d", [embedded("ffi", {"kernel.cpp": TVM_FFI_CPP})])
    result = fib_run("--local", str(root), "-o", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert [e["status"] for e in traces(tmp_path / "run")["ffi"]] == ["PASSED", "PASSED"], result.output
    sol = load_dataset([root]).solutions["scale_add"]["ffi"]
    assert native.find(sol, device_info("cpu"))["binding"] == "tvm-ffi"


# ---- flashinfer-bench's example layout (benchmarks/fibench_example.py) and our CUDA example ---------
def test_fibench_example_layout_loads_unchanged_and_says_why_not_on_a_cpu(tmp_path, monkeypatch):
    """The script's layout, filled with a tiny CUDA tvm-ffi solution of our own that, like
    flashinfer-bench's example, names B200 and gives no binding: it loads without a problem, and
    on a CPU each workload is UNSUPPORTED with the reason (--any-hardware does not change that)."""
    import importlib
    import torch
    if torch.cuda.is_available():
        pytest.skip("has a GPU: benchmarks/gpu_native_example.sh runs it there")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        script = importlib.import_module("fibench_example")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    (upstream / "kernel.h").write_text("#pragma once\nconstexpr int GEMM_N_CONST = 4096;\n")
    (upstream / "kernel.cu").write_text((ROOT / "examples" / "cuda_vector_add" / "solutions" / "vector_add" /
                                         "cuda_tvm_ffi" / "vector_add.cu").read_text()
                                        .replace("TVM_FFI_DLL_EXPORT_TYPED_FUNC(run, run)",
                                                 "TVM_FFI_DLL_EXPORT_TYPED_FUNC(gemm_n_4096_k_4096, run)"))
    out = script.write_dataset(tmp_path / "example", upstream)
    data = load_dataset([out])
    assert not data.problems, data.problems
    sol = data.solutions["gemm_n4096_k4096"]["example_agent_solution"]
    assert (sol.spec.language.value, sol.spec.entry_point, native.binding_of(sol).value) == \
        ("cuda", "kernel.cu::gemm_n_4096_k_4096", "tvm-ffi")
    monkeypatch.setenv("FIB_CACHE_DIR", str(tmp_path / "cache"))
    for extra in ((), ("--any-hardware",)):
        run_dir = tmp_path / f"run{len(extra)}"
        result = fib_run("--local", str(out), "-o", str(run_dir), "-w", "M=1", *extra)
        assert result.exit_code == 1, result.output  # nothing PASSED
        (only,) = traces(run_dir)["example_agent_solution"]
        assert only["status"] == "UNSUPPORTED" and "targets B200; this device is cpu" in only["reason"], only


def test_our_cuda_example_loads_and_is_unsupported_on_a_cpu():
    import torch
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    data = load_dataset([ROOT / "examples" / "cuda_vector_add"])
    assert not data.problems, data.problems
    sols = data.solutions["vector_add"]
    assert {n: native.binding_of(s).value for n, s in sols.items()} == {"cuda_torch": "torch",
                                                                        "cuda_tvm_ffi": "tvm-ffi"}
    for sol in sols.values():
        reason = unsupported_reason(sol, data.definitions["vector_add"], {"n": 8}, CPU)
        assert reason == "targets cuda; this device is cpu"
        assert "runs on a CUDA GPU" in native.unsupported_reason(sol, CPU)
