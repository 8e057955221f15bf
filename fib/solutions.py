"""Load a solution's entry point and decide whether it can run here (arch, packages, shapes)."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

from . import native
from .device import device_info  # noqa: F401  (re-exported: solutions.device_info)
from .env import cache_dir, dist_version
from .errors import FibError
from .schema import Definition, Solution
from .schema.solution import LANGUAGE_PACKAGES


class SolutionLoadError(FibError):
    """The solution's code cannot be imported or has no such entry function (a COMPILE_ERROR)."""


def solution_device(solution: Solution, devices: list[str]) -> str:
    """The device a solution runs on: the first CUDA device if it targets GPUs and one is there."""
    wants_gpu = any(t.lower() != "cpu" for t in solution.spec.target_hardware)
    cuda = [d for d in devices if d.startswith("cuda")]
    if wants_gpu and cuda:
        return cuda[0]
    return "cpu"


def _hardware_matches(target: str, info: dict[str, Any]) -> bool:
    target = target.strip().lower()
    if target == "cpu":
        return info["type"] == "cpu"
    if info["type"] != "cuda":
        return False
    if target in ("cuda", "gpu", "nvidia"):
        return True
    match = re.fullmatch(r"sm_?(\d+)a?(\+?)", target)
    if match:
        wanted, at_least = int(match.group(1)), bool(match.group(2))
        return info["sm"] >= wanted if at_least else info["sm"] == wanted
    return target.replace("nvidia_", "").replace("_", " ") in info["name"].lower()


def _missing_dependencies(solution: Solution) -> list[str]:
    return list(_missing_requirements(tuple(native.python_dependencies(solution))))


@functools.lru_cache(maxsize=256)
def _missing_requirements(requirements: tuple[str, ...]) -> tuple[str, ...]:
    """The requirements not met here. Cached per process: a worker asks before each of its pairs, and
    the package metadata lookups behind it took ~17 ms per pair."""
    missing = []
    for requirement in requirements:
        name = re.split(r"[<>=!~; \[]", requirement.strip(), maxsplit=1)[0]
        installed = dist_version(name)
        if installed is None:
            missing.append(f"{requirement} (not installed)")
            continue
        try:
            from packaging.requirements import Requirement
            spec = Requirement(requirement).specifier
            if spec and installed not in spec:
                missing.append(f"{requirement} (found {installed})")
        except Exception:
            pass  # an unparsable requirement is checked by name only
    return tuple(missing)


def language_reason(solution: Solution, info: dict[str, Any]) -> str | None:
    """Why the solution's language cannot run here: its DSL package is missing, or (compiled
    languages) the compiler, nvcc, a CUDA GPU or the binding's package is."""
    language = solution.spec.language
    if language.native:
        return native.unsupported_reason(solution, info)
    package = LANGUAGE_PACKAGES.get(language)
    if package is None:
        return None
    dist, module = package
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing, or another package of that name
        found = False
    if not found:
        return f"language '{language.value}' needs package {dist} (import {module}), which is not installed"
    return None


def target_reason(solution: Solution, info: dict[str, Any], *, any_hardware: bool = False) -> str | None:
    """Why `target_hardware` rules this device out, or None. With `any_hardware` a GPU solution runs
    on any CUDA GPU whatever GPU or SM it names (flashinfer-bench itself does not check the field);
    a CPU-only or GPU-only solution still runs only there."""
    targets = solution.spec.target_hardware
    if not targets or any(_hardware_matches(t, info) for t in targets):
        return None
    if any_hardware and info["type"] == "cuda" and any(t.strip().lower() != "cpu" for t in targets):
        return None
    here = info["name"] if info["type"] == "cpu" else f"{info['name']} (sm{info['sm']})"
    return f"targets {', '.join(targets)}; this device is {here}"


def unsupported_reason(solution: Solution, definition: Definition, axes: dict[str, int],
                       info: dict[str, Any], *, any_hardware: bool = False) -> str | None:
    """Why this solution cannot run on this device and shape, or None. Checks what the JSON says
    (targets, dependencies, the language's package or toolchain); the module's own `fib_supported`
    hook is asked after import (see `hook_reason`)."""
    reason = target_reason(solution, info, any_hardware=any_hardware)
    if reason:
        return reason
    missing = _missing_dependencies(solution)
    if missing:
        return f"missing dependencies: {', '.join(missing)}"
    reason = language_reason(solution, info)
    if reason:
        return reason
    for text in solution.spec.shape_constraints:
        try:
            ok = eval(text, {"__builtins__": {}}, dict(axes))  # noqa: S307 - solution authors' expressions
        except Exception as exc:
            return f"shape constraint {text!r} cannot be evaluated: {exc}"
        if not ok:
            return f"shape constraint {text!r} does not hold for {axes}"
    return None


# ---- import -----------------------------------------------------------------------------------
_LOADED_DIRS: dict[str, set[str]] = {}


def _inside(folder: Path, relative: str, solution: Solution, field: str) -> Path:
    """`folder / relative`, refused unless it resolves (symlinks followed) to a path inside `folder`."""
    base = folder.resolve()
    target = (folder / relative).resolve()
    if target == base or base not in target.parents:
        raise SolutionLoadError(f"{relative!r} resolves to {target}, outside the solution's folder {base}",
                                where=solution.file or f"solution '{solution.name}'", field=field,
                                fix="keep every source a relative path inside the solution's folder")
    return target


def source_dir(solution: Solution) -> Path:
    """Where the solution's files are: its folder on disk, or its embedded sources written out under
    the cache folder. Either way every source path, the entry file among them, is checked to resolve
    inside that folder (the schema refuses such paths already; this holds for models built in code)."""
    entry_field = "spec.entry_point"
    if solution.root is not None:
        for src in solution.sources:
            _inside(solution.root, src.path, solution, entry_field if src.path == solution.spec.entry_file else "sources")
        _inside(solution.root, solution.spec.entry_file, solution, entry_field)
        return solution.root
    digest = hashlib.sha256("".join(f"{s.path}\0{s.content}" for s in solution.sources).encode()).hexdigest()[:16]
    base = cache_dir() / "solutions"
    target = base / f"{solution.safe_label}-{digest}"
    _inside(base, target.name, solution, "name")
    _inside(target, solution.spec.entry_file, solution, entry_field)
    for src in solution.sources:
        path = _inside(target, src.path, solution, entry_field if src.path == solution.spec.entry_file else "sources")
        if not path.is_file() or path.read_text() != src.content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(src.content or "")
    return target


def _imported_from(module, folder: str) -> bool:
    """Whether `module` came from `folder`: its file, or for a namespace package (a sibling folder
    without __init__.py, imported as `from helpers import kernels`) one of its paths. The package
    must be forgotten too: it keeps its submodules as attributes, and `from helpers import kernels`
    answers from those before sys.modules."""
    file = getattr(module, "__file__", None)
    if file:
        return str(file).startswith(folder)
    try:
        return any(str(p).startswith(folder) for p in (getattr(module, "__path__", None) or ()))
    except Exception:  # noqa: BLE001 - a module whose __path__ cannot be read is not ours
        return False


def _forget_other_solutions(keep: str) -> None:
    """Drop modules (and namespace packages) imported from other solutions' folders, so two
    solutions with a `kernels.py` (or a `helpers/kernels.py`) each never share one by accident
    within a process."""
    for folder, names in list(_LOADED_DIRS.items()):
        if folder != keep:
            for name in names:
                sys.modules.pop(name, None)
            del _LOADED_DIRS[folder]


def import_entry_module(solution: Solution):
    folder = source_dir(solution)
    _forget_other_solutions(str(folder))
    entry = folder / solution.spec.entry_file
    if not entry.is_file():
        raise SolutionLoadError(f"entry file {entry} does not exist", where=solution.file,
                                field="spec.entry_point")
    before = set(sys.modules)
    sys.path.insert(0, str(folder))
    module_name = f"fib_solution_{re.sub(r'[^0-9a-zA-Z_]', '_', solution.safe_label)}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, entry)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise SolutionLoadError(f"importing {solution.spec.entry_file} failed: {type(exc).__name__}: {exc}",
                                where=solution.file, field="sources") from exc
    finally:
        sys.path.remove(str(folder))
    added = {n for n in set(sys.modules) - before if _imported_from(sys.modules[n], str(folder))}
    _LOADED_DIRS.setdefault(str(folder), set()).update(added | {module_name})
    return module


def load_entry(solution: Solution, definition: Definition | None = None, *, device: str | None = None) -> Callable:
    """The solution's entry function: imported (Python-like languages) or compiled and loaded
    (C++/CUDA, see `fib.native`; `device` decides the GPU architecture it is built for)."""
    if solution.spec.language.native:
        return native.load_entry(solution, device_info(device or _default_device(solution))).function
    module = import_entry_module(solution)
    function = getattr(module, solution.spec.entry_function, None)
    if not callable(function):
        raise SolutionLoadError(f"{solution.spec.entry_file} has no function '{solution.spec.entry_function}'",
                                where=solution.file, field="spec.entry_point",
                                fix="define it or correct entry_point")
    return function


def _default_device(solution: Solution) -> str:
    from .device import cuda_device_count
    return solution_device(solution, ["cuda:0"] if cuda_device_count() else ["cpu"])


def hook_reason(module, info: dict[str, Any], axes: dict[str, int]) -> str | None:
    """The entry module's own `fib_supported(device_info, axes)` verdict, if it has one."""
    hook = getattr(module, "fib_supported", None)
    if hook is None:
        return None
    reason = hook(dict(info), dict(axes))
    return str(reason) if reason else None


# ---- calling ----------------------------------------------------------------------------------
def allocate_outputs(definition: Definition, axes: dict[str, int], device) -> list[torch.Tensor]:
    """Output buffers filled with NaN (floats) or an out-of-range value (ints), so elements that a
    solution never writes cannot pass the check."""
    import torch
    from .harness.inputs import torch_dtype
    outputs = []
    for spec in definition.outputs.values():
        shape = definition.shape_of(spec, axes) or ()
        dtype = torch_dtype(spec.dtype)
        tensor = torch.empty(shape, dtype=dtype, device=device)
        poison_(tensor)
        outputs.append(tensor)
    return outputs


def poison_(tensor: torch.Tensor) -> None:
    import torch
    if tensor.dtype.is_floating_point:
        if tensor.dtype in (torch.float8_e4m3fn,):
            tensor.view(torch.uint8).fill_(0x7F)  # e4m3fn NaN
        else:
            tensor.fill_(float("nan"))
    elif tensor.dtype == torch.bool:
        tensor.view(torch.uint8).fill_(0xFF)
    else:
        tensor.fill_(torch.iinfo(tensor.dtype).min)
