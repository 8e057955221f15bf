"""Operator families: the `families/<name>/family.py` modules that say what a definition's workloads
cost at least, found by the definitions' `op_type`; nothing in fib imports a family by name.

A family module declares

    OP_TYPES = ("moe",)        # the op_type values of the definitions it covers
    TOKEN_AXIS = "seq_len"     # the var axis that counts tokens: floor tables sort by it
    def work(definition, workload, inputs):   # optional: the floor's work, or None for no floor
        return {"bytes": ..., "flops": ..., "compute": "fp8_e4m3", **detail}

`work` gets the workload's generated inputs (as the reference sees them, on the judge's device) so
a floor that depends on the data (which experts the routing hits) can read it; `bytes` is the
least DRAM traffic, `flops` the least arithmetic, `compute` names the matmul ceiling the flops run
against (a key of `matmul_tflops_by_dtype` in fib.timing.ceilings), and any other key is a
detail the floor report shows (experts hit, routed pairs). The module is imported in the parent
and the judge: it must not import torch (or anything slow) at module level.

Families are looked for under `families/` of every dataset root and beside the fib package (this
repository's own). `fib run` records `work`'s answer in each trace (`floor`); `fib report floor`
turns it into time with the device's ceilings.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import FibError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
FAMILY_FILE = "family.py"
DETAIL_TYPES = (int, float, str, bool)


@dataclass(frozen=True)
class Family:
    name: str
    path: Path
    op_types: tuple[str, ...]
    token_axis: str
    work: Callable[..., Any] | None
    source_hash: str  # of family.py: a recorded floor is stale when the module changed

    def floor(self, definition, workload, inputs) -> dict | None:
        """The floor record a trace carries: {family, token_axis, tokens, bytes, flops, compute,
        detail}, or None where the family declares no floor for this definition."""
        if self.work is None:
            return None
        try:
            answer = self.work(definition, workload, inputs)
        except FibError:
            raise
        except Exception as exc:
            raise FibError(f"work() raised {type(exc).__name__}: {exc}", where=self.path, field="work") from exc
        if answer is None:
            return None
        return {"family": self.name, "token_axis": self.token_axis,
                "tokens": workload.axes.get(self.token_axis), **self._checked(answer)}

    def _checked(self, answer) -> dict:
        if not isinstance(answer, dict):
            raise FibError(f"work() returned a {type(answer).__name__}, not a dict", where=self.path, field="work",
                           fix='return {"bytes": int, "flops": int, "compute": str, ...} or None')
        out: dict[str, Any] = {}
        for key in ("bytes", "flops"):
            value = answer.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise FibError(f"work()['{key}'] is {value!r}, not a non-negative number", where=self.path,
                               field="work")
            out[key] = int(value) if float(value).is_integer() else float(value)
        if out["bytes"] == 0 and out["flops"] == 0:
            raise FibError("work() says the workload needs no bytes and no FLOPs", where=self.path, field="work",
                           fix="return None where the family has no floor")
        compute = answer.get("compute")
        if out["flops"] and not isinstance(compute, str):
            raise FibError("work() gives FLOPs but no 'compute' (which matmul ceiling they run against)",
                           where=self.path, field="work", fix='add "compute": "fp8_e4m3" or "bf16"')
        out["compute"] = compute
        detail = {k: v for k, v in answer.items() if k not in ("bytes", "flops", "compute")}
        bad = [k for k, v in detail.items() if not isinstance(v, DETAIL_TYPES)]
        if bad:
            raise FibError(f"work()['{bad[0]}'] is a {type(detail[bad[0]]).__name__}; details are numbers or "
                           "strings", where=self.path, field="work")
        out["detail"] = detail
        return out


def load_family(path: Path) -> Family:
    """Import one family.py and check what it declares; a FibError naming the file otherwise."""
    path = Path(path).resolve()
    name = path.parent.name
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise FibError(f"cannot read the family module: {exc}", where=path) from None
    spec = importlib.util.spec_from_file_location(f"fib_family_{name}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        # the bytes just read and hashed, not the loader's cached bytecode: a file rewritten within the same
        # second at the same size passes the .pyc's mtime-and-size check, so the old code would run under
        # the new file's source_hash (seen in CI: tests/test_cli.py's fixed family.py still failing)
        exec(compile(source, str(path), "exec"), module.__dict__)
    except Exception as exc:
        raise FibError(f"the family module fails to import: {type(exc).__name__}: {exc}", where=path,
                       fix="run it with python to see the traceback") from exc
    op_types = getattr(module, "OP_TYPES", None)
    if isinstance(op_types, str) or not isinstance(op_types, (tuple, list)) or not op_types \
            or not all(isinstance(o, str) and o for o in op_types):
        raise FibError(f"OP_TYPES is {op_types!r}", where=path, field="OP_TYPES",
                       fix='declare the op_type values it covers, e.g. OP_TYPES = ("moe",)')
    token_axis = getattr(module, "TOKEN_AXIS", None)
    if not isinstance(token_axis, str) or not token_axis:
        raise FibError(f"TOKEN_AXIS is {token_axis!r}", where=path, field="TOKEN_AXIS",
                       fix='name the var axis that counts tokens, e.g. TOKEN_AXIS = "seq_len"')
    work = getattr(module, "work", None)
    if work is not None and not callable(work):
        raise FibError(f"work is a {type(work).__name__}, not a function", where=path, field="work",
                       fix="define work(definition, workload, inputs), or leave it out for no floor")
    return Family(name=name, path=path, op_types=tuple(op_types), token_axis=token_axis, work=work,
                  source_hash=hashlib.sha256(source).hexdigest()[:16])


def family_dirs(roots: list[Path] | None = None) -> list[Path]:
    """Where families are looked for: `families/` of each dataset root, then fib's own repository's."""
    dirs = [Path(r) / "families" for r in (roots or [])] + [PACKAGE_ROOT / "families"]
    return list(dict.fromkeys(d.resolve() for d in dirs if d.is_dir()))


_LOADED: dict[tuple[Path, ...], dict[str, Family]] = {}


def discover(roots: list[Path] | None = None) -> dict[str, Family]:
    """op_type -> its family, over every `families/*/family.py` found (once per process)."""
    dirs = tuple(family_dirs(roots))
    if dirs not in _LOADED:
        found: dict[str, Family] = {}
        for folder in dirs:
            for path in sorted(folder.glob(f"*/{FAMILY_FILE}")):
                family = load_family(path)
                for op_type in family.op_types:
                    other = found.get(op_type)
                    if other is not None and other.path != family.path:
                        raise FibError(f"op_type '{op_type}' is claimed by two families: {other.path} and this one",
                                       where=family.path, field="OP_TYPES", fix="let one family cover it")
                    found[op_type] = family
        _LOADED[dirs] = found
    return _LOADED[dirs]


def family_for(definition, roots: list[Path] | None = None) -> Family | None:
    """The family that covers this definition's op_type, or None; its TOKEN_AXIS must be one of
    the definition's var axes."""
    return family_for_op_type(definition.op_type, definition.var_axes(), definition.name, roots)


def family_for_op_type(op_type: str, var_axes: list[str], definition_name: str,
                       roots: list[Path] | None = None) -> Family | None:
    """family_for from a definition's op_type, var axes and name alone (a definition JSON that is
    not a whole definition, as `fib report stages --definition` accepts)."""
    family = discover(roots).get(op_type)
    if family is None:
        return None
    _check_token_axis(family, var_axes, definition_name)
    return family


def _check_token_axis(family: Family, var_axes: list[str], definition_name: str) -> None:
    if family.token_axis not in var_axes:
        raise FibError(f"TOKEN_AXIS '{family.token_axis}' is not a var axis of definition '{definition_name}' "
                       f"(its var axes: {', '.join(var_axes) or 'none'})", where=family.path,
                       field="TOKEN_AXIS")


def family_problems(definitions, roots: list[Path] | None = None) -> list[FibError]:
    """What `fib validate` reports about the family modules: every family.py under the family folders
    that fails to load (each one is imported, as `fib run` does to find a definition's family), an
    op_type claimed by two families, and, for each definition a family covers, a TOKEN_AXIS that is
    not one of its var axes. Each problem names the family file; nothing is cached."""
    problems: list[FibError] = []
    found: dict[str, Family] = {}
    for folder in family_dirs(roots):
        for path in sorted(folder.glob(f"*/{FAMILY_FILE}")):
            try:
                family = load_family(path)
            except FibError as exc:
                problems.append(exc)
                continue
            for op_type in family.op_types:
                other = found.get(op_type)
                if other is not None and other.path != family.path:
                    problems.append(FibError(f"op_type '{op_type}' is claimed by two families: {other.path} and "
                                             "this one", where=family.path, field="OP_TYPES",
                                             fix="let one family cover it"))
                    continue
                found[op_type] = family
    for definition in definitions:
        family = found.get(definition.op_type)
        if family is None:
            continue
        try:
            _check_token_axis(family, definition.var_axes(), definition.name)
        except FibError as exc:
            problems.append(exc)
    return problems
