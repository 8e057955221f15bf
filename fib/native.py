"""Compiled solutions: `language` cuda, cpp (and the other C++ names flashinfer-bench lists) built
into a Python-callable module, the way flashinfer-bench builds them.

- Binding `torch`: a PyTorch C++/CUDA extension (`torch.utils.cpp_extension.load`). The source binds
  the entry function itself, as flashinfer-bench's torch builder expects:
  `PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("fn", &fn); }`.
- Binding `tvm-ffi`: a tvm-ffi module (`tvm_ffi.cpp.build`, package apache-tvm-ffi); the source
  exports the function with `TVM_FFI_DLL_EXPORT_TYPED_FUNC(fn, impl)`.
- No `binding` in the JSON: flashinfer-bench's default is tvm-ffi, but its older builder took a
  pybind module; fib reads the entry source: a tvm-ffi export means tvm-ffi, a PYBIND11_MODULE or
  TORCH_LIBRARY means torch. A source that binds nothing is a COMPILE_ERROR that says what to add
  (fib generates no shim: a solution that runs here runs in flashinfer-bench unchanged).

Builds are cached under `$FIB_CACHE_DIR/builds/native/<key>/`, the key a hash of the sources,
language, binding, flags and dependencies (not the entry point or the solution's name: solutions
with the same sources share one library), and the toolchain (C++
compiler and nvcc versions, torch and its CUDA, Python, tvm-ffi, the GPU's SM). A finished build
leaves `fib-build.json` beside the library; with it a later load imports the library without
running a compiler. A compiler failure raises `NativeBuildError` (a SolutionLoadError, so the
worker reports COMPILE_ERROR) whose text is the compiler's own error lines.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import FibError
from .schema import Solution
from .schema.solution import HEADER_SUFFIXES, NATIVE_SUFFIXES, Binding

RECORD = "fib-build.json"
_ERROR_LINES = 30
_ERROR_CHARS = 4000
# Native libraries a C++/CUDA solution may name in `dependencies` (flashinfer-bench's examples name
# cublas, cudnn, cutlass): linked or put on the include path, never looked up as Python packages.
NATIVE_LIBRARIES = {"cublas": ["-lcublas", "-lcublasLt"], "cublaslt": ["-lcublasLt"], "cudnn": ["-lcudnn"],
                    "cuda": ["-lcuda"], "cudart": [], "curand": ["-lcurand"], "cufft": ["-lcufft"],
                    "cusparse": ["-lcusparse"], "cutlass": [], "cub": [], "thrust": []}
TVM_FFI_DIST, TVM_FFI_MODULE = "apache-tvm-ffi", "tvm_ffi"


class NativeBuildError(FibError):
    """A C++/CUDA solution that does not compile, load or bind its entry function (a COMPILE_ERROR)."""


@dataclass
class NativeBuild:
    function: Callable
    library: Path
    cached: bool        # loaded from an earlier build; no compiler ran
    seconds: float


# ---- what the build needs ---------------------------------------------------------------------
def is_native(solution: Solution) -> bool:
    return solution.spec.language.native


def _with_cuda(solution: Solution) -> bool:
    return solution.spec.language.with_cuda or any(s.path.endswith(".cu") for s in solution.sources)


def _source_text(solution: Solution, path: str) -> str:
    for src in solution.sources:
        if src.path == path:
            if src.content is not None:
                return src.content
            if solution.root is not None and (solution.root / path).is_file():
                return (solution.root / path).read_text()
    return ""


def binding_of(solution: Solution) -> Optional[Binding]:
    """The binding the JSON asks for, else the one the sources use; None when they bind nothing."""
    if solution.spec.binding is not None:
        return solution.spec.binding
    texts = [_source_text(solution, s.path) for s in solution.sources]
    if any("TVM_FFI_DLL_EXPORT" in t for t in texts):
        return Binding.tvm_ffi
    if any(re.search(r"\b(PYBIND11_MODULE|TORCH_LIBRARY)\b", t) for t in texts):
        return Binding.torch
    return None


def native_dependency_flags(solution: Solution) -> tuple[list[str], list[str], list[str]]:
    """(include paths, linker flags, problems) for the native libraries in `dependencies`."""
    includes, ldflags, problems = [], [], []
    for dep in solution.spec.dependencies:
        name = dep.strip().lower()
        if name not in NATIVE_LIBRARIES:
            continue
        ldflags += NATIVE_LIBRARIES[name]
        if name == "cutlass":
            home = os.environ.get("FIB_CUTLASS_DIR") or os.environ.get("CUTLASS_DIR")
            if home and (Path(home) / "include" / "cutlass").is_dir():
                includes += [str(Path(home) / "include"), str(Path(home) / "tools" / "util" / "include")]
            else:
                problems.append("needs the CUTLASS headers: set FIB_CUTLASS_DIR (or CUTLASS_DIR) to a CUTLASS "
                                "checkout with include/cutlass")
    return includes, ldflags, problems


def python_dependencies(solution: Solution) -> list[str]:
    """The entries of `dependencies` that are Python packages (the native libraries left out)."""
    if not is_native(solution):
        return list(solution.spec.dependencies)
    return [d for d in solution.spec.dependencies if d.strip().lower() not in NATIVE_LIBRARIES]


def _cxx() -> Optional[str]:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def _nvcc() -> Optional[str]:
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception:
        CUDA_HOME = None
    if CUDA_HOME and (Path(CUDA_HOME) / "bin" / "nvcc").is_file():
        return str(Path(CUDA_HOME) / "bin" / "nvcc")
    return shutil.which("nvcc")


def unsupported_reason(solution: Solution, info: dict[str, Any]) -> Optional[str]:
    """Why this compiled solution cannot be built here, or None (a missing binding is not checked
    here: it is a COMPILE_ERROR of the solution, not a property of this machine)."""
    lang = solution.spec.language.value
    if _with_cuda(solution):
        if info.get("type") != "cuda":
            return f"language '{lang}' compiles CUDA and runs on a CUDA GPU; this device is {info.get('name')}"
        if _nvcc() is None:
            return f"language '{lang}' needs nvcc (the CUDA toolkit), which was not found (CUDA_HOME, PATH)"
    if _cxx() is None:
        return f"language '{lang}' needs a C++ compiler (c++, g++ or clang++ on PATH, or CXX)"
    binding = binding_of(solution)
    if binding is Binding.tvm_ffi and importlib.util.find_spec(TVM_FFI_MODULE) is None:
        return f"binding tvm-ffi needs package {TVM_FFI_DIST} (import {TVM_FFI_MODULE}), which is not installed"
    if binding is Binding.torch:
        from torch.utils.cpp_extension import is_ninja_available
        if not is_ninja_available():
            return "binding torch (torch.utils.cpp_extension) needs ninja, which was not found"
    problems = native_dependency_flags(solution)[2]
    return "; ".join(problems) if problems else None


# ---- the cache key ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _first_line(*command: str) -> Optional[str]:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line for line in (out.stdout or out.stderr).splitlines() if line.strip()]
    return lines[-1] if "nvcc" in command[0] and lines else (lines[0] if lines else None)


def toolchain(solution: Solution, info: dict[str, Any]) -> dict[str, Optional[str]]:
    """Everything outside the sources that the built library depends on."""
    import torch
    from .env import dist_version
    cuda = _with_cuda(solution)
    cxx = _cxx()
    nvcc = _nvcc() if cuda else None
    return {"cxx": _first_line(cxx, "--version") if cxx else None,
            "nvcc": _first_line(nvcc, "--version") if nvcc else None,
            "torch": torch.__version__, "torch_cuda": torch.version.cuda if cuda else None,
            "python": ".".join(map(str, sys.version_info[:3])),
            "tvm_ffi": dist_version(TVM_FFI_DIST) if binding_of(solution) is Binding.tvm_ffi else None,
            "sm": str(info.get("sm")) if cuda and info.get("type") == "cuda" else None}


def build_key(solution: Solution, info: dict[str, Any]) -> str:
    spec = solution.spec
    binding = binding_of(solution)
    text = json.dumps({  # not the entry point: one library serves every function it binds
        "language": spec.language.value, "binding": binding.value if binding else None,
        "options": spec.compile_options.model_dump() if spec.compile_options else None,
        "dependencies": sorted(spec.dependencies), "toolchain": toolchain(solution, info),
        "sources": sorted((s.path, _source_text(solution, s.path)) for s in solution.sources)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_dir(solution: Solution, info: dict[str, Any]) -> Path:
    from .harness.inputs import cache_dir  # what harness.build.builds_dir() uses, without importing it
    return cache_dir() / "builds" / "native" / build_key(solution, info)


def _module_name(folder: Path) -> str:
    """A valid C identifier unique to the build (the extension's PyInit_ symbol)."""
    return "fib_" + re.sub(r"[^0-9a-zA-Z_]", "_", folder.name)


def find(solution: Solution, info: dict[str, Any]) -> Optional[dict]:
    """The record of a finished build of exactly these sources with this toolchain, or None."""
    folder = build_dir(solution, info)
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not Path(record.get("library", "")).is_file():
        return None
    record["path"] = str(folder / RECORD)
    return record


# ---- building and loading ---------------------------------------------------------------------
def compiler_errors(text: str) -> str:
    """The compiler's own error lines out of a build's output (all of it when none look like one)."""
    lines = [line.rstrip() for line in text.splitlines()]
    picked = [line for line in lines if re.search(r"\berror\b|error:|undefined reference|fatal", line, re.I)
              and not line.lstrip().startswith(("[", "FAILED:", "ninja: build stopped"))]
    body = "\n".join(picked[:_ERROR_LINES]) if picked else "\n".join(lines[-_ERROR_LINES:])
    return body[:_ERROR_CHARS]


def _where(solution: Solution):
    return solution.file or f"solution '{solution.label}'"


def _write_sources(solution: Solution, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for src in solution.sources:
        path = folder / src.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_source_text(solution, src.path))
        written.append(path)
    return written


def _compile(solution: Solution, binding: Binding, folder: Path, info: dict[str, Any]) -> Path:
    """Run the compiler; returns the library. Raises NativeBuildError with the compiler's errors."""
    src_dir = folder / "src"
    paths = _write_sources(solution, src_dir)
    compiled = [p for p in paths if p.suffix in NATIVE_SUFFIXES]
    opts = solution.spec.compile_options
    includes, dep_ldflags, _ = native_dependency_flags(solution)
    cflags = list(opts.cflags) if opts else []
    cuda_cflags = list(opts.cuda_cflags) if opts else []
    ldflags = (list(opts.ld_flags) if opts else []) + dep_ldflags
    name = _module_name(folder)
    env_arch = None
    if _with_cuda(solution) and info.get("sm") and "TORCH_CUDA_ARCH_LIST" not in os.environ:
        sm = int(info["sm"])
        env_arch = os.environ["TORCH_CUDA_ARCH_LIST"] = f"{sm // 10}.{sm % 10}"
    print(f"[fib native] compiling {solution.label} ({binding.value}, {len(compiled)} source(s)) in {folder}",
          flush=True)
    try:
        if binding is Binding.torch:
            from torch.utils.cpp_extension import load
            module = load(name=name, sources=[str(p) for p in compiled], extra_include_paths=[str(src_dir), *includes],
                          extra_cflags=cflags, extra_cuda_cflags=cuda_cflags, extra_ldflags=ldflags,
                          with_cuda=_with_cuda(solution), build_directory=str(folder), verbose=False)
            return Path(module.__file__)
        import tvm_ffi.cpp
        library = tvm_ffi.cpp.build(name=name, cpp_files=[str(p) for p in compiled if p.suffix != ".cu"],
                                    cuda_files=[str(p) for p in compiled if p.suffix == ".cu"],
                                    extra_cflags=cflags, extra_cuda_cflags=cuda_cflags, extra_ldflags=ldflags,
                                    extra_include_paths=[str(src_dir), *includes], build_directory=str(folder))
        return Path(library)
    except Exception as exc:
        text = str(exc)
        print(text, file=sys.stderr, flush=True)  # the whole output stays in the log
        raise NativeBuildError(f"compiling {solution.spec.entry_file} ({binding.value} binding) failed:\n"
                               f"{compiler_errors(text)}", where=_where(solution), field="sources") from exc
    finally:
        if env_arch is not None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)


def _load_library(solution: Solution, binding: Binding, library: Path):
    try:
        if binding is Binding.torch:
            import torch  # noqa: F401  (the extension links against libtorch)
            name = library.name.split(".")[0]
            loader = importlib.machinery.ExtensionFileLoader(name, str(library))
            spec = importlib.util.spec_from_file_location(name, str(library), loader=loader)
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
            return module
        import tvm_ffi
        return tvm_ffi.load_module(str(library))
    except Exception as exc:
        raise NativeBuildError(f"loading the built library {library} failed: {type(exc).__name__}: {exc}",
                               where=_where(solution), field="sources") from exc


def _exports(module, binding: Binding) -> list[str]:
    if binding is Binding.torch:
        return sorted(n for n in dir(module) if not n.startswith("_"))
    return []


def _entry(solution: Solution, binding: Binding, module) -> Callable:
    fn = solution.spec.entry_function
    try:
        function = getattr(module, fn)
    except AttributeError:
        function = None
    if not callable(function):
        exports = _exports(module, binding)
        how = (f'PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {{ m.def("{fn}", &{fn}); }}' if binding is Binding.torch
               else f"TVM_FFI_DLL_EXPORT_TYPED_FUNC({fn}, {fn});")
        raise NativeBuildError(f"the built module has no function '{fn}'"
                               + (f" (it exports: {', '.join(exports)})" if exports else ""),
                               where=_where(solution), field="spec.entry_point",
                               fix=f"bind it in the source ({how}) or correct entry_point")
    return function


def load_entry(solution: Solution, info: dict[str, Any]) -> NativeBuild:
    """Build (or find the earlier build of) a compiled solution and return its entry function."""
    started = time.monotonic()
    binding = binding_of(solution)
    if binding is None:
        fn = solution.spec.entry_function
        raise NativeBuildError(
            f"{solution.spec.entry_file} binds no function for Python to call", where=_where(solution),
            field="spec.binding",
            fix=f'export it: PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {{ m.def("{fn}", &{fn}); }} (binding torch) '
                f"or TVM_FFI_DLL_EXPORT_TYPED_FUNC({fn}, {fn}); (binding tvm-ffi), as flashinfer-bench expects")
    reason = unsupported_reason(solution, info)
    if reason:
        raise NativeBuildError(f"cannot build here: {reason}", where=_where(solution), field="spec.language")
    folder = build_dir(solution, info)
    folder.mkdir(parents=True, exist_ok=True)
    import fcntl
    with open(folder / ".lock", "w") as lock:  # two workers of one build (two GPUs) take turns
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = find(solution, info)
        cached = record is not None
        if cached:
            library = Path(record["library"])
        else:
            library = _compile(solution, binding, folder, info)
            (folder / RECORD).write_text(json.dumps({
                "solution": solution.label, "definition": solution.definition, "library": str(library),
                "binding": binding.value, "key": folder.name,
                "toolchain": toolchain(solution, info), "seconds": round(time.monotonic() - started, 3)}, indent=1))
    module = _load_library(solution, binding, library)
    function = _entry(solution, binding, module)
    return NativeBuild(function, library, cached, time.monotonic() - started)


__all__ = ["NativeBuildError", "NativeBuild", "binding_of", "build_dir", "build_key", "compiler_errors", "find",
           "is_native", "load_entry", "python_dependencies", "toolchain", "unsupported_reason", "HEADER_SUFFIXES"]
