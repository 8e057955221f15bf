"""Find and load a dataset: definitions, workloads and solutions, in fib's or flashinfer-bench's layout.

Loading never stops at the first bad file: every problem is kept in `Dataset.problems` (each names
its file, line and field) and the good parts stay usable, so one malformed solution cannot take the
rest of a run down. `fib validate` prints the problems; `fib run` prints them and goes on.

Roots, in order of precedence (a later root overrides an earlier one's entries of the same name):
the repository itself by default; `FIB_DATASET_PATH` (os.pathsep-separated) or `--local PATH`
(repeatable) replace it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DatasetError, FibError
from .schema import Definition, SafetensorsInput, Solution, Workload, load_model
from .schema.io import load_jsonl, validate

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
WORKLOAD_DIRS = ("datasets", "workloads")


def default_roots() -> list[Path]:
    env = os.environ.get("FIB_DATASET_PATH")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    if (PACKAGE_ROOT / "definitions").is_dir():
        return [PACKAGE_ROOT]
    return [Path.cwd()]


@dataclass
class Dataset:
    roots: list[Path]
    definitions: dict[str, Definition] = field(default_factory=dict)
    solutions: dict[str, dict[str, Solution]] = field(default_factory=dict)
    workloads: dict[str, list[Workload]] = field(default_factory=dict)
    problems: list[FibError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    definition_files: dict[str, Path] = field(default_factory=dict)
    _def_roots: dict[str, Path] = field(default_factory=dict)

    def root_for(self, definition: str) -> Path:
        """The root that relative workload paths (safetensors blobs) of `definition` resolve from."""
        return self._def_roots.get(definition, self.roots[-1])

    def solution_list(self) -> list[Solution]:
        return [s for by_name in self.solutions.values() for s in by_name.values()]

    def find_solution(self, name: str, definition: str | None = None) -> Solution | None:
        for def_name, by_name in self.solutions.items():
            if (definition is None or def_name == definition) and name in by_name:
                return by_name[name]
        return None


def load_dataset(roots: list[Path] | None = None) -> Dataset:
    roots = [Path(r).resolve() for r in (roots or default_roots())]
    data = Dataset(roots=roots)
    for root in roots:
        if not root.is_dir():
            data.problems.append(DatasetError("dataset root is not a directory", where=root,
                                              fix="pass an existing folder to --local or FIB_DATASET_PATH"))
            continue
        _load_definitions(data, root)
    for root in roots:
        if root.is_dir():
            _load_workloads(data, root)
            _load_solutions(data, root)
    _cross_check(data)
    return data


def _record(data: Dataset, err: FibError) -> None:
    data.problems.extend(getattr(err, "problems", [err]))


def _load_definitions(data: Dataset, root: Path) -> None:
    for path in sorted((root / "definitions").rglob("*.json")):
        try:
            definition = load_model(path, Definition)
        except FibError as err:
            _record(data, err)
            continue
        if path.stem != definition.name:
            data.warnings.append(f"{path}: file name differs from definition name '{definition.name}'")
        for extra in definition.unknown_fields():
            data.warnings.append(f"{path}: unknown field '{extra}' (kept, not used by fib)")
        data.definitions[definition.name] = definition
        data.definition_files[definition.name] = path
        data._def_roots[definition.name] = root


def _load_workloads(data: Dataset, root: Path) -> None:
    for sub in WORKLOAD_DIRS:
        for path in sorted((root / sub).rglob("*.jsonl")):
            _load_workload_file(data, root, path)


def _load_workload_file(data: Dataset, root: Path, path: Path) -> None:
    def_name = path.stem
    try:
        for number, obj in load_jsonl(path):
            where = f"{path}:{number}"
            if isinstance(obj, dict) and "workload" in obj:  # a flashinfer-bench workload trace
                def_name = obj.get("definition") or def_name
                obj = obj["workload"]
            try:
                workload = validate(Workload, obj, where)
            except FibError as err:
                _record(data, err)
                continue
            definition = data.definitions.get(def_name)
            if definition is None:
                data.problems.append(DatasetError(f"workload for unknown definition '{def_name}'",
                                                  where=where, fix="add the definition or rename the file"))
                continue
            for problem in workload_problems(definition, workload, root):
                data.problems.append(DatasetError(problem, where=where))
            data.workloads.setdefault(def_name, []).append(workload)
            data._def_roots.setdefault(def_name, root)
    except FibError as err:
        _record(data, err)


def workload_problems(definition: Definition, workload: Workload, root: Path) -> list[str]:
    """Everything that keeps this workload from running; empty when it is fine."""
    problems = []
    try:
        definition.resolve_axes(workload.axes)
    except ValueError as exc:
        problems.append(f"axes: {exc}")
    for name in definition.inputs:
        if name not in workload.inputs:
            problems.append(f"inputs: no spec for input '{name}'")
    for name, spec in workload.inputs.items():
        if name not in definition.inputs:
            problems.append(f"inputs.{name}: not an input of definition '{definition.name}'")
        elif spec.type == "scalar" and not definition.inputs[name].is_scalar:
            problems.append(f"inputs.{name}: scalar value given for a tensor input")
        elif spec.type == "generator" and definition.generator is None:
            problems.append(f"inputs.{name}: type 'generator' but definition '{definition.name}' has no generator")
        elif isinstance(spec, SafetensorsInput):
            blob = resolve_blob(root, spec.path)
            if not blob.is_file():
                problems.append(f"inputs.{name}.path: safetensors file {blob} does not exist")
    return problems


def workload_matches(workload: Workload, filters: list[str]) -> bool:
    """True when no filter is given or any matches: a uuid prefix, or an axis value like seq_len=7."""
    if not filters:
        return True
    for text in filters:
        axis, eq, value = text.partition("=")
        if eq and axis in workload.axes and str(workload.axes[axis]) == value:
            return True
        if not eq and workload.uuid.startswith(text):
            return True
    return False


def resolve_blob(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (root / p)


def _load_solutions(data: Dataset, root: Path) -> None:
    base = root / "solutions"
    for path in sorted(base.rglob("*.json")):
        ours = path.name == "solution.json"
        try:
            solution = load_model(path, Solution)
            if ours:
                source_dir = path.parent
                shared = (solution.model_extra or {}).get("source_dir")
                if shared:
                    source_dir = (path.parent / shared).resolve()
                    if base.resolve() not in source_dir.parents:
                        raise DatasetError(f"source_dir {shared!r} leaves the solutions folder",
                                           where=path, field="source_dir")
                solution.attach_root(source_dir)
            elif any(s.content is None for s in solution.sources):
                raise DatasetError("embedded solution has a source without content", where=path,
                                   field="sources", fix="embed the file's text in 'content'")
        except ValueError as exc:  # from attach_root
            data.problems.append(DatasetError(str(exc), where=path, field="sources"))
            continue
        except FibError as err:
            _record(data, err)
            continue
        if solution.entry_source() is None:
            data.problems.append(DatasetError(f"entry file '{solution.spec.entry_file}' is not among the sources",
                                              where=path, field="spec.entry_point"))
            continue
        solution.file = path
        data.solutions.setdefault(solution.definition, {})[solution.name] = solution


def _cross_check(data: Dataset) -> None:
    for def_name, by_name in data.solutions.items():
        if def_name not in data.definitions:
            for name, sol in by_name.items():
                data.problems.append(DatasetError(f"solution '{name}' is for unknown definition '{def_name}'",
                                                  where=sol.file, field="definition"))
    for name in data.definitions:
        if name not in data.workloads:
            data.warnings.append(f"definition '{name}' has no workloads")
