"""Find and load a dataset: definitions, workloads and solutions, in fib's or flashinfer-bench's layout.

Loading never stops at the first bad file or line: every problem is kept in `Dataset.problems` (each
names its file, line, field and, where there is one, the fix) and the good parts stay usable, so one
malformed solution cannot take the rest of a run down. `fib validate` prints the problems; `fib run`
prints them and goes on with the rest. Whatever is named in a problem is left out of `definitions`,
`workloads` and `solutions`, so `fib run` never spends device time on it:

- a workload that does not fit its definition (var axis missing or unknown, a constraint that does
  not hold, an input spec missing, unknown or of a kind fib cannot build, a safetensors blob that is
  missing or whose tensor has another key, shape or dtype) is not loaded;
- a malformed JSONL line (bad JSON, cut short, failing the schema) is skipped, the lines after it load;
- a workload uuid seen twice for one definition (in one file, two files or two roots): when every copy
  says the same (uuid, axes, inputs, the fields that decide the inputs and the reference) the first
  is kept, as running it is running any of them; when the copies differ none of them is loaded,
  because traces, `--resume`, `fib compare` and the history all key results by uuid, and results
  filed under a uuid that means two workloads would be wrong for one of them. Each extra copy is a
  problem naming both places;
- two definitions of the same name in one root, or two solutions of one definition with the same
  name and author, are a problem naming both files and neither is loaded: within a root there is
  no precedence to pick one by, and results are filed by name;
- two solutions of one definition with the same name by different authors (flashinfer-trace's
  solutions/<author>/... layout) both load, each known as `author/name` (`Solution.label`): in
  traces, `-s` selections, reports and resume. A name that one author uses keeps its plain name.

Roots, in order of precedence (a later root overrides an earlier one's definitions and solutions of
the same name, and `Dataset.warnings` says so, naming both files; workloads of all roots are pooled):
the repository itself by default; `FIB_DATASET_PATH` (os.pathsep-separated) or `--local PATH`
(repeatable) replace it. A definition's safetensors blobs are read relative to the root its
definition file comes from.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DatasetError, FibError
from .schema import Definition, SafetensorsInput, Solution, Workload, load_model
from .schema.io import load_jsonl, validate
from .schema.solution import SourcePathError

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
    # Definitions left out because one root defines them twice: name -> the first file.
    _ambiguous: dict[str, Path] = field(default_factory=dict)

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
    # A root given twice is read once (else everything in it would be its own duplicate).
    roots = list(dict.fromkeys(Path(r).resolve() for r in (roots or default_roots())))
    data = Dataset(roots=roots)
    usable = []
    for root in roots:
        if root.is_dir():
            usable.append(root)
        else:
            data.problems.append(DatasetError("dataset root is not a directory", where=root,
                                              fix="pass an existing folder to --local or FIB_DATASET_PATH"))
    for root in usable:
        _load_definitions(data, root)
    records: list[_WorkloadRecord] = []
    for root in usable:
        records += _read_workloads(data, root)
    _accept_workloads(data, records)
    for root in usable:
        _load_solutions(data, root)
    _cross_check(data)
    return data


def _record(data: Dataset, err: FibError) -> None:
    data.problems.extend(getattr(err, "problems", [err]))


# ---- definitions ------------------------------------------------------------------------------
def _load_definitions(data: Dataset, root: Path) -> None:
    found: dict[str, list[tuple[Path, Definition]]] = {}
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
        found.setdefault(definition.name, []).append((path, definition))
    for name, entries in found.items():
        first = entries[0][0]
        if len(entries) > 1:
            for path, _ in entries[1:]:
                data.problems.append(DatasetError(
                    f"definition '{name}' is defined again; first in {first}. Neither is loaded, nor the "
                    "workloads and solutions of that name", where=path, field="name",
                    fix="rename one of the two definitions or delete the copy"))
            data.definitions.pop(name, None)
            data.definition_files.pop(name, None)
            data._def_roots.pop(name, None)
            data._ambiguous[name] = first
            continue
        path, definition = entries[0]
        previous = data.definition_files.get(name) or data._ambiguous.pop(name, None)
        if previous is not None:
            data.warnings.append(f"definition '{name}': {path} overrides {previous} (a later dataset root wins)")
        data.definitions[name] = definition
        data.definition_files[name] = path
        data._def_roots[name] = root


# ---- workloads --------------------------------------------------------------------------------
@dataclass
class _WorkloadRecord:
    definition: str
    workload: Workload
    where: str
    root: Path
    named_by: str  # how the definition was named: "the file name" or "field 'definition'"


def _read_workloads(data: Dataset, root: Path) -> list[_WorkloadRecord]:
    """Every line of every workload file of `root` that parses as a Workload; the rest are problems."""
    records = []
    for sub in WORKLOAD_DIRS:
        for path in sorted((root / sub).rglob("*.jsonl")):
            try:
                for number, obj in load_jsonl(path, data.problems):
                    where = f"{path}:{number}"
                    def_name, named_by = path.stem, "the file name"
                    if "workload" in obj:  # a flashinfer-bench workload trace
                        if obj.get("definition"):
                            def_name, named_by = obj["definition"], "field 'definition'"
                        obj = obj["workload"]
                    try:
                        workload = validate(Workload, obj, where)
                    except FibError as err:
                        _record(data, err)
                        continue
                    records.append(_WorkloadRecord(def_name, workload, where, root, named_by))
            except OSError as exc:
                data.problems.append(DatasetError(f"cannot read: {exc.strerror}", where=path))
    return records


def _identity(workload: Workload) -> dict:
    """What decides a workload's inputs and reference (as the reference cache key does)."""
    return workload.model_dump(mode="json", include={"uuid", "axes", "inputs"})


def _accept_workloads(data: Dataset, records: list[_WorkloadRecord]) -> None:
    by_key: dict[tuple[str, str], list[_WorkloadRecord]] = {}
    for rec in records:
        if rec.definition in data._ambiguous:
            continue  # its definition's problem says that its workloads are not loaded
        if rec.definition not in data.definitions:
            data.problems.append(DatasetError(
                f"workload '{rec.workload.uuid}' is for unknown definition '{rec.definition}' (named by "
                f"{rec.named_by})", where=rec.where, field="definition" if "field" in rec.named_by else None,
                fix="add the definition, or name the file (or the 'definition' field) after an existing one"))
            continue
        by_key.setdefault((rec.definition, rec.workload.uuid), []).append(rec)
    for (def_name, uuid), group in by_key.items():
        first = group[0]
        identical = all(_identity(r.workload) == _identity(first.workload) for r in group[1:])
        for rec in group[1:]:
            outcome = ("the copies are identical, so the first is kept" if identical
                       else "the copies differ in axes or inputs, so none of them is run")
            data.problems.append(DatasetError(
                f"workload uuid '{uuid}' of definition '{def_name}' appears again (first at {first.where}); "
                f"{outcome}", where=rec.where, field="uuid",
                fix="give each workload its own uuid, or delete the copy"))
        if not identical:
            continue
        problems = workload_problems(data.definitions[def_name], first.workload, data.root_for(def_name),
                                     where=first.where, own_root=first.root)
        if problems:
            data.problems.extend(problems)
            continue
        data.workloads.setdefault(def_name, []).append(first.workload)


# safetensors header dtype names of the format's dtypes
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3",
                      "float8_e5m2": "F8_E5M2", "float4_e2m1": "F4", "int64": "I64", "int32": "I32",
                      "int16": "I16", "int8": "I8", "bool": "BOOL"}


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, offsets), without its data."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError("the file is shorter than a safetensors header")
        length = int.from_bytes(head, "little")
        if length > size - 8:
            raise ValueError("the header length points past the end of the file")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header


def workload_problems(definition: Definition, workload: Workload, root: Path, *, where: str | None = None,
                      own_root: Path | None = None) -> list[FibError]:
    """Everything that keeps this workload from running; empty when it is fine. `root` is the root
    the run reads its blobs from (the definition's); `own_root` the one the workload came from."""
    problems: list[FibError] = []

    def problem(field_name: str, message: str, fix: str | None = None) -> None:
        problems.append(DatasetError(message, where=where, field=field_name, fix=fix))

    axes = None
    try:
        axes = definition.resolve_axes(workload.axes)
    except ValueError as exc:
        wanted = ", ".join(definition.var_axes()) or "none"
        problem("axes", str(exc), fix=f"give a value for each var axis ({wanted}) and for no other axis")
    else:
        for text in definition.check_constraints(axes):
            problem("axes", f"{workload.axes} violates the constraint {text} of definition '{definition.name}'",
                    fix="change the axis values or remove the workload")
    for name in definition.inputs:
        if name not in workload.inputs:
            problem(f"inputs.{name}", f"no spec for input '{name}'",
                    fix='add one, e.g. {"type": "random"} or {"type": "scalar", "value": ...}')
    for name, spec in workload.inputs.items():
        tensor = definition.inputs.get(name)
        if tensor is None:
            problem(f"inputs.{name}", f"'{name}' is not an input of definition '{definition.name}' "
                    f"(its inputs: {', '.join(definition.inputs)})", fix="remove it or correct its name")
        elif spec.type == "scalar" and not tensor.is_scalar:
            problem(f"inputs.{name}", "scalar value given for a tensor input",
                    fix="use type random, generator or safetensors")
        elif spec.type == "random" and tensor.is_scalar:
            problem(f"inputs.{name}", "type 'random' for a scalar input (fib draws random tensors only)",
                    fix='give {"type": "scalar", "value": ...}')
        elif spec.type == "random" and tensor.dtype == "float4_e2m1":
            problem(f"inputs.{name}", "random float4_e2m1 values are not supported",
                    fix="use type generator or safetensors")
        elif spec.type == "generator" and definition.generator is None:
            problem(f"inputs.{name}", f"type 'generator' but definition '{definition.name}' has no generator",
                    fix="add a generator to the definition or use another input type")
        elif isinstance(spec, SafetensorsInput):
            problems += _blob_problems(definition, name, spec, axes, root, own_root, where)
    return problems


def _blob_problems(definition: Definition, name: str, spec: SafetensorsInput, axes: dict[str, int] | None,
                   root: Path, own_root: Path | None, where: str | None) -> list[FibError]:
    blob = resolve_blob(root, spec.path)
    if not blob.is_file():
        message = f"safetensors file {blob} does not exist"
        fix = "check the path (relative to the dataset root) or add the blob"
        if own_root is not None and own_root != root and resolve_blob(own_root, spec.path).is_file():
            message += (f"; it is under this workload's root {own_root}, but blobs are read from the root of "
                        f"definition '{definition.name}' ({root})")
            fix = "keep a definition's file, its workloads and their blobs in one dataset root"
        return [DatasetError(message, where=where, field=f"inputs.{name}.path", fix=fix)]
    try:
        header = safetensors_header(blob)
    except (OSError, ValueError) as exc:
        return [DatasetError(f"cannot read safetensors file {blob}: {exc}", where=where,
                             field=f"inputs.{name}.path", fix="write the blob again with safetensors")]
    entry = header.get(spec.tensor_key) if spec.tensor_key != "__metadata__" else None
    if not isinstance(entry, dict):
        keys = ", ".join(k for k in header if k != "__metadata__") or "nothing"
        return [DatasetError(f"no tensor '{spec.tensor_key}' in {blob} (it has: {keys})", where=where,
                             field=f"inputs.{name}.tensor_key", fix="name one of the tensors it has")]
    tensor = definition.inputs[name]
    shape = tuple(entry.get("shape") or ())
    problems: list[FibError] = []
    if tensor.is_scalar:
        if math.prod(shape) != 1:
            problems.append(DatasetError(f"tensor '{spec.tensor_key}' in {blob} has shape {shape}, but input "
                                         f"'{name}' is a scalar", where=where, field=f"inputs.{name}",
                                         fix="store a single value"))
    elif axes is not None:
        wanted = definition.shape_of(tensor, axes)
        if shape != wanted:
            problems.append(DatasetError(f"tensor '{spec.tensor_key}' in {blob} has shape {shape}, definition "
                                         f"says {wanted} for axes {workload_axes(definition, axes)}", where=where,
                                         field=f"inputs.{name}",
                                         fix="store a tensor of that shape or correct the workload's axes"))
    dtype = SAFETENSORS_DTYPES.get(tensor.dtype)
    if not tensor.is_scalar and dtype and entry.get("dtype") != dtype:
        problems.append(DatasetError(f"tensor '{spec.tensor_key}' in {blob} has dtype {entry.get('dtype')}, "
                                     f"definition says {tensor.dtype} ({dtype})", where=where,
                                     field=f"inputs.{name}", fix=f"store it as {tensor.dtype}"))
    return problems


def workload_axes(definition: Definition, axes: dict[str, int]) -> dict[str, int]:
    """The var axes among `axes`, as a workload gives them."""
    return {a: axes[a] for a in definition.var_axes()}


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


# ---- solutions --------------------------------------------------------------------------------
def _read_solution(data: Dataset, base: Path, path: Path) -> Solution | None:
    """One solution file, its on-disk sources attached (fib's layout); None (and a problem) if unusable."""
    ours = path.name == "solution.json"
    try:
        solution = load_model(path, Solution)
        if ours:
            source_dir = path.parent
            shared = (solution.model_extra or {}).get("source_dir")
            if shared:
                source_dir = (path.parent / str(shared)).resolve()
                if base.resolve() not in source_dir.parents:
                    raise DatasetError(f"source_dir {shared!r} leaves the solutions folder", where=path,
                                       field="source_dir", fix="point it at a folder under solutions/")
            solution.attach_root(source_dir)
        elif any(s.content is None for s in solution.sources):
            raise DatasetError("embedded solution has a source without content", where=path,
                               field="sources", fix="embed the file's text in 'content'")
    except SourcePathError as exc:  # from attach_root
        data.problems.append(DatasetError(str(exc), where=path, field=exc.field, fix=exc.fix))
        return None
    except (OSError, ValueError) as exc:  # a source file that cannot be read as text
        data.problems.append(DatasetError(f"cannot read a source: {exc}", where=path, field="sources",
                                          fix="keep only text files in the solution's folder, or list "
                                              "its sources in 'sources'"))
        return None
    except FibError as err:
        _record(data, err)
        return None
    if solution.entry_source() is None:
        data.problems.append(DatasetError(f"entry file '{solution.spec.entry_file}' is not among the sources",
                                          where=path, field="spec.entry_point",
                                          fix="add the file to the sources or correct entry_point"))
        return None
    solution.file = path
    return solution


def _load_solutions(data: Dataset, root: Path) -> None:
    base = root / "solutions"
    found: dict[tuple[str, str], list[Solution]] = {}
    for path in sorted(base.rglob("*.json")):
        solution = _read_solution(data, base, path)
        if solution is not None:
            found.setdefault((solution.definition, solution.name), []).append(solution)
    for (def_name, name), entries in found.items():
        by_author: dict[str, list[Solution]] = {}
        for sol in entries:
            by_author.setdefault(sol.author, []).append(sol)
        kept = []
        for author, same in by_author.items():
            if len(same) == 1:
                kept.append(same[0])
                continue
            for other in same[1:]:
                data.problems.append(DatasetError(
                    f"solution '{name}' of definition '{def_name}' is also in {same[0].file} (both by author "
                    f"'{author}'); results are filed by author and name, so neither is loaded", where=other.file, field="name",
                    fix="rename one of the two solutions or delete the copy"))
        by_label = data.solutions.setdefault(def_name, {})
        earlier = [label for label, sol in by_label.items() if sol.name == name]
        if earlier and kept:
            files = ", ".join(str(by_label[label].file) for label in earlier)
            newer = ", ".join(str(s.file) for s in kept)
            data.warnings.append(f"solution '{name}' of definition '{def_name}': {newer} overrides {files} "
                                 "(a later dataset root wins)")
        if earlier:
            for label in earlier:
                del by_label[label]
        # Two authors' solutions of one name both load, known as 'author/name'; a name only one
        # author uses keeps its plain name (in traces, -s, reports and resume).
        for sol in kept:
            sol.namespaced = len(kept) > 1
            by_label[sol.label] = sol


def _cross_check(data: Dataset) -> None:
    for def_name, by_name in data.solutions.items():
        if def_name not in data.definitions and def_name not in data._ambiguous:
            for name, sol in by_name.items():
                data.problems.append(DatasetError(f"solution '{name}' is for unknown definition '{def_name}'",
                                                  where=sol.file, field="definition",
                                                  fix="add the definition or correct the name"))
    for name in list(data.solutions):
        if name in data._ambiguous:
            del data.solutions[name]  # its definition's problem says so
    for name in data.definitions:
        if name not in data.workloads:
            data.warnings.append(f"definition '{name}' has no workloads")
