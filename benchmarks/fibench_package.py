"""A fib definition, its workloads and one solution as a flashinfer-bench trace set, and checks of it.

    python benchmarks/fibench_package.py pack --output DIR [--definition D] [--solution S] [--tolerance contest]
    python benchmarks/fibench_package.py flags DIR                 # flashinfer-bench run flags for the tolerance
    python benchmarks/fibench_package.py load DIR                  # flashinfer-bench's own loader accepts DIR
    python benchmarks/fibench_package.py verify DIR [--csv F]      # every workload timed? (after a run)
    python benchmarks/fibench_package.py run-api DIR [--no-profile-baseline] [--warmup-runs ...]

For measuring harnesses side by side (benchmarks/gpu_harness_speed.sh): flashinfer-bench 0.1.2
running a fib solution on the same workloads. `pack` writes the layout flashinfer-bench reads
(definitions/, workloads/, solutions/; it appends its results under traces/) and DIR/README.md
saying what changed on the way:

- the definition loses fib's additions (tolerance, tolerance_presets, stages, generator), which
  flashinfer-bench ignores anyway, and its reference is wrapped to return the outputs in their
  declared dtypes: flashinfer-bench fails a solution with INCORRECT_DTYPE when its output's dtype
  differs from the reference's, and fib's references compute in float32;
- workload inputs of fib's `generator` kind become flashinfer-bench `random` inputs (it cannot run
  a generator): torch.randn values, FP8 tensors randn clamped to [-2, 2], block scales randn (of
  either sign), so the inputs, the routing and the outputs are not the ones fib measures;
- the solution's sources are embedded in its JSON; fib-only spec fields are dropped, and a
  solution that needs one of them (shape_constraints, build_commands, a `fib_build` hook) is refused.

flashinfer-bench reads no tolerance from the files: its `run` command's --atol/--rtol (default
0.01) and --required-matched-ratio (0.95 for moe_fp8_block_scale definitions) decide, and a pair
that fails its check is not timed. `flags` prints the flags of the tolerance chosen at `pack`
(default: the definition's `contest` preset), and `verify` exits 1 unless every packaged workload
has a PASSED trace with a latency, so a run that skipped timing is never taken for a fast one.
`load` and `run-api` need flashinfer_bench importable; the rest needs only fib.
"""
from __future__ import annotations

import argparse
import ast
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fib.dataset import load_dataset  # noqa: E402
from fib.errors import DatasetError  # noqa: E402
from fib.schema import Definition, Solution, Workload  # noqa: E402
from fib.schema.definition import DTYPES  # noqa: E402

DS = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"
META = "fib_package.json"
FIB_DEFINITION_ADDITIONS = ("tolerance", "tolerance_presets", "stages", "generator")
FI_SPEC_FIELDS = ("language", "target_hardware", "entry_point", "dependencies", "destination_passing_style")


def reference_in_declared_dtypes(definition: Definition) -> str:
    """The definition's reference with a `run` that returns its outputs cast to the declared dtypes."""
    args = ", ".join(definition.inputs)
    names = list(definition.outputs)
    dtypes = [DTYPES[spec.dtype] for spec in definition.outputs.values()]
    return definition.reference.rstrip() + f"""


# Added by fib's benchmarks/fibench_package.py for flashinfer-bench, which requires the reference's
# outputs in the declared dtypes; fib itself judges against the float32 result of the run above.
_fib_float32_run = run


def run({args}):
    import torch as _torch
    result = _fib_float32_run({args})
    if isinstance(result, dict):
        result = [result[name] for name in {names!r}]
    elif not isinstance(result, (tuple, list)):
        result = [result]
    cast = [t.to(getattr(_torch, d)) for t, d in zip(result, {dtypes!r})]
    return cast[0] if len(cast) == 1 else tuple(cast)
"""


def definition_json(definition: Definition) -> dict:
    data = definition.model_dump(mode="json", exclude_none=True)
    for key in FIB_DEFINITION_ADDITIONS:
        data.pop(key, None)
    for axis in data["axes"].values():
        axis.pop("parent", None)  # fib's addition to var axes
    for kind in ("inputs", "outputs"):  # flashinfer-bench requires `shape`, null for a scalar
        for tensor, spec in data[kind].items():
            spec["shape"] = getattr(definition, kind)[tensor].shape
    data["reference"] = reference_in_declared_dtypes(definition)
    return data


def workload_trace(definition: Definition, workload: Workload) -> dict:
    inputs = {}
    for name, spec in workload.inputs.items():
        spec = spec.model_dump(mode="json")
        inputs[name] = {"type": "random"} if spec["type"] == "generator" else spec
    return {"definition": definition.name, "workload": {"uuid": workload.uuid, "axes": dict(workload.axes),
                                                        "inputs": inputs}, "solution": None, "evaluation": None}


def _defines(source: str, name: str) -> bool:
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name
               for n in ast.parse(source).body)


def _imports(source: str, module: str) -> bool:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == module for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == module and not node.level:
            return True
    return False


def solution_json(solution: Solution) -> tuple[dict, list[str]]:
    """The solution with embedded sources, and what it needs from the machine beyond flashinfer-bench."""
    where = str(solution.file or f"solution '{solution.name}'")
    spec = solution.spec
    for field in ("shape_constraints", "build_commands"):
        if getattr(spec, field):
            raise DatasetError(f"spec.{field} is set; flashinfer-bench would ignore it", where=where,
                               fix="package a solution that does not need it")
    sources = [{"path": s.path, "content": s.content} for s in solution.sources]
    missing = [s["path"] for s in sources if not s["content"]]
    if missing:
        raise DatasetError(f"sources {missing} have no content", where=where, fix="load the solution from its folder")
    entry = next(s for s in sources if s["path"] == spec.entry_file)
    if _defines(entry["content"], "fib_build"):
        raise DatasetError("the entry module defines a fib_build hook, which flashinfer-bench never calls",
                           where=where, fix="package a solution without a build hook")
    needs = [f"`{m}` importable in flashinfer-bench's worker (the sources import it)"
             for m in ("fib",) if any(_imports(s["content"], m) for s in sources if s["path"].endswith(".py"))]
    data = {"name": solution.name, "definition": solution.definition, "author": solution.author,
            "spec": {k: v for k, v in spec.model_dump(mode="json").items() if k in FI_SPEC_FIELDS},
            "sources": sources, "description": solution.description}
    if not data["spec"]["target_hardware"]:
        data["spec"]["target_hardware"] = ["cuda"]
    return {k: v for k, v in data.items() if v is not None}, needs


def tolerance_flags(tolerance: dict) -> list[str]:
    return ["--atol", repr(float(tolerance["atol"])), "--rtol", repr(float(tolerance["rtol"])),
            "--required-matched-ratio", repr(float(tolerance["required_matched_ratio"]))]


def chosen_tolerance(definition: Definition, name: str) -> dict:
    where = f"definition '{definition.name}'"
    if name == "definition":
        tol = definition.tolerance
        if tol is None:
            raise DatasetError("has no tolerance", where=where, field="tolerance", fix="choose a preset with --tolerance")
    else:
        tol = definition.tolerance_presets.get(name)
        if tol is None:
            raise DatasetError(f"has no tolerance preset {name!r} (it has {sorted(definition.tolerance_presets)})",
                               where=where, field="tolerance_presets", fix="choose one of them or 'definition'")
    if tol.max_relative_l2 is not None or tol.min_cosine_similarity is not None:
        print(f"note: flashinfer-bench applies only the per-element part of {tol.describe()}", file=sys.stderr)
    return {"name": name, "atol": tol.atol, "rtol": tol.rtol, "required_matched_ratio": tol.required_matched_ratio}


def _readme(meta: dict, needs: list[str]) -> str:
    flags = " ".join(tolerance_flags(meta["tolerance"]))
    lines = [
        f"# flashinfer-bench trace set: {meta['definition']} + {meta['solution']}", "",
        f"Written by fib's `benchmarks/fibench_package.py pack` from fib's dataset ({len(meta['workloads'])}"
        " workloads). Run it with",
        "", "```",
        f"flashinfer-bench run --local . --definitions {meta['definition']} --solutions {meta['solution']} "
        f"--warmup-runs 10 --iterations 50 --num-trials 3 {flags}",
        "```", "",
        "What differs from fib's dataset:", "",
        "- **Inputs are random.** fib's workloads build their inputs with the definition's `generator`"
        " (realistic routing, FP8 values with their block scales); flashinfer-bench cannot run a generator,"
        f" so the inputs {', '.join(meta['random_inputs']) or '(none)'} are flashinfer-bench `random` inputs"
        " (randn; FP8 = randn clamped to [-2, 2]; scales randn, either sign). Outputs, routing and latencies are"
        " therefore not the ones fib measures.",
        "- **Reference in the declared dtypes.** The definition's reference is fib's, with a `run` wrapper that"
        " casts its float32 outputs to the declared output dtypes: flashinfer-bench reports INCORRECT_DTYPE"
        " when a solution's output dtype differs from the reference's.",
        "- **fib's additions dropped** from the definition: " + ", ".join(FIB_DEFINITION_ADDITIONS) + ".",
        f"- **Tolerance on the command line.** flashinfer-bench reads none from the files and does not time a"
        f" pair that fails its check; `{flags}` is the definition's `{meta['tolerance']['name']}` tolerance"
        " (its per-element part). Its defaults (atol = rtol = 0.01, ratio 0.95 for moe_fp8_block_scale"
        " definitions) fail FP8 solutions and would leave every pair untimed.",
        "- **Sources embedded** in the solution JSON (flashinfer-bench's format).",
    ]
    if needs:
        lines.append("- **The solution needs** " + "; ".join(needs) + " (fib.stage marks pipeline stages).")
    return "\n".join(lines) + "\n"


def pack(output: Path, definition_name: str, solution_name: str, tolerance_name: str, root: Path = REPO) -> dict:
    data = load_dataset([root])
    if definition_name not in data.definitions:
        mentioned = [str(p) for p in data.problems if definition_name in str(p)]
        raise DatasetError(f"definition {definition_name!r} is not in the dataset" +
                           (f" ({mentioned[0]})" if mentioned else ""), where=root, fix="name a definition `fib list` shows")
    definition = data.definitions[definition_name]
    solution = data.find_solution(solution_name, definition_name)
    if solution is None:
        raise DatasetError(f"solution {solution_name!r} of {definition_name!r} is not in the dataset", where=root,
                           fix="name a solution `fib list -d DEFINITION` shows")
    workloads = data.workloads.get(definition_name, [])
    if not workloads:
        raise DatasetError(f"definition {definition_name!r} has no workloads", where=root, fix="add workloads")
    if output.exists() and any(output.iterdir()):
        raise DatasetError("output folder is not empty", where=output,
                           fix="pass a new folder (flashinfer-bench appends its traces to what is there)")
    sol, needs = solution_json(solution)
    op_type = definition.op_type
    files = {
        output / "definitions" / op_type / f"{definition.name}.json": json.dumps(definition_json(definition), indent=2),
        output / "workloads" / op_type / f"{definition.name}.jsonl":
            "".join(json.dumps(workload_trace(definition, w)) + "\n" for w in workloads),
        output / "solutions" / solution.author / op_type / definition.name / f"{solution.name}.json":
            json.dumps(sol, indent=2),
    }
    random_inputs = sorted({n for w in workloads for n, s in w.inputs.items() if s.type == "generator"})
    meta = {"definition": definition.name, "op_type": op_type, "solution": solution.name,
            "tolerance": chosen_tolerance(definition, tolerance_name), "random_inputs": random_inputs,
            "workloads": [{"uuid": w.uuid, "axes": dict(w.axes)} for w in workloads]}
    files[output / META] = json.dumps(meta, indent=2)
    files[output / "README.md"] = _readme(meta, needs)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return meta


def read_meta(folder: Path) -> dict:
    path = folder / META
    if not path.is_file():
        raise DatasetError(f"no {META}: not a folder written by `pack`", where=folder, fix="run `pack --output` first")
    return json.loads(path.read_text())


def verify(folder: Path):
    """One row per packaged workload: its trace's status and latency; `timed` says whether it was timed."""
    import pandas as pd

    meta = read_meta(folder)
    found = {}
    for path in sorted((folder / "traces").rglob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            trace = json.loads(line)
            if trace.get("definition") == meta["definition"] and trace.get("solution") == meta["solution"]:
                found[trace["workload"]["uuid"]] = (trace, f"{path}:{number}")  # a later line wins (--resume)
    rows = []
    for w in meta["workloads"]:
        trace, where = found.get(w["uuid"], (None, None))
        ev = (trace or {}).get("evaluation") or {}
        perf = ev.get("performance") or {}
        corr = ev.get("correctness") or {}
        rows.append({"uuid": w["uuid"][:8], **w["axes"], "status": ev.get("status", "NO TRACE"),
                     "latency_ms": perf.get("latency_ms"), "reference_latency_ms": perf.get("reference_latency_ms"),
                     "max_abs_error": corr.get("max_absolute_error"),
                     "matched_ratio": (corr.get("extra") or {}).get("matched_ratio"),
                     "timed": ev.get("status") == "PASSED" and (perf.get("latency_ms") or 0) > 0, "trace": where})
    return pd.DataFrame(rows)


def _fi_unknown_keys(data: dict, model, where: str) -> list[str]:
    return [f"{where}.{k}" for k in data if k not in model.model_fields]


def load(folder: Path) -> list[str]:
    """Load `folder` with flashinfer-bench's TraceSet; return problems (empty: accepted as packaged)."""
    from flashinfer_bench.data import (AxisConst, AxisVar, BuildSpec, Definition as FiDefinition,  # noqa: N811
                                       RandomInput, ScalarInput, SafetensorsInput, Solution as FiSolution,
                                       SourceFile, TensorSpec, Trace, TraceSet)
    from flashinfer_bench.data.workload import Workload as FiWorkload

    meta = read_meta(folder)
    name, sol_name = meta["definition"], meta["solution"]
    trace_set = TraceSet.from_path(str(folder))
    problems = []
    if name not in trace_set.definitions:
        problems.append(f"definition {name} not loaded")
    if [s.name for s in trace_set.solutions.get(name, [])] != [sol_name]:
        problems.append(f"solutions of {name}: {[s.name for s in trace_set.solutions.get(name, [])]}, want [{sol_name}]")
    loaded = [t.workload.uuid for t in trace_set.workloads.get(name, [])]
    if loaded != [w["uuid"] for w in meta["workloads"]]:
        problems.append(f"{len(loaded)} workloads loaded, {len(meta['workloads'])} packaged")
    # flashinfer-bench's models ignore unknown fields: none may be left that it would silently drop
    op = meta["op_type"]
    d = json.loads((folder / "definitions" / op / f"{name}.json").read_text())
    problems += _fi_unknown_keys(d, FiDefinition, "definition")
    for axis, spec in d["axes"].items():
        problems += _fi_unknown_keys(spec, AxisConst if spec["type"] == "const" else AxisVar, f"axes.{axis}")
    for kind in ("inputs", "outputs"):
        for tensor, spec in d[kind].items():
            problems += _fi_unknown_keys(spec, TensorSpec, f"{kind}.{tensor}")
    s = json.loads(next((folder / "solutions").rglob(f"{sol_name}.json")).read_text())
    problems += _fi_unknown_keys(s, FiSolution, "solution") + _fi_unknown_keys(s["spec"], BuildSpec, "solution.spec")
    for src in s["sources"]:
        problems += _fi_unknown_keys(src, SourceFile, f"solution.sources[{src['path']}]")
    kinds = {"random": RandomInput, "scalar": ScalarInput, "safetensors": SafetensorsInput}
    for line in (folder / "workloads" / op / f"{name}.jsonl").read_text().splitlines():
        t = json.loads(line)
        problems += _fi_unknown_keys(t, Trace, "workload trace") + _fi_unknown_keys(t["workload"], FiWorkload, "workload")
        for inp, spec in t["workload"]["inputs"].items():
            if spec["type"] not in kinds:
                problems.append(f"workload {t['workload']['uuid']} input {inp}: kind {spec['type']}")
            else:
                problems += _fi_unknown_keys(spec, kinds[spec["type"]], f"workload.inputs.{inp}")
    return problems


def run_api(folder: Path, args) -> None:
    """flashinfer-bench's Benchmark through its Python API (its CLI offers no profile_baseline switch)."""
    from flashinfer_bench import Benchmark, BenchmarkConfig, TraceSet

    meta = read_meta(folder)
    tol = {**meta["tolerance"], **{k: v for k, v in (("atol", args.atol), ("rtol", args.rtol),
                                                      ("required_matched_ratio", args.required_matched_ratio))
                                   if v is not None}}
    config = BenchmarkConfig(warmup_runs=args.warmup_runs, iterations=args.iterations, num_trials=args.num_trials,
                             atol=float(tol["atol"]), rtol=float(tol["rtol"]),
                             required_matched_ratio=float(tol["required_matched_ratio"]),
                             definitions=[meta["definition"]], solutions=[meta["solution"]],
                             profile_baseline=args.profile_baseline)
    benchmark = Benchmark(TraceSet.from_path(str(folder)), config)
    try:
        benchmark.run_all(True)
    finally:
        benchmark.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="write the trace set")
    a.add_argument("--output", required=True, type=Path)
    a.add_argument("--definition", default=DS)
    a.add_argument("--solution", default="triton_fused")
    a.add_argument("--tolerance", default="contest",
                   help="a tolerance preset of the definition, or 'definition' for its own (default: contest)")
    for name, text in (("flags", "print flashinfer-bench's tolerance flags"), ("load", "load with flashinfer-bench")):
        sub.add_parser(name, help=text).add_argument("folder", type=Path)
    v = sub.add_parser("verify", help="exit 1 unless every workload was timed")
    v.add_argument("folder", type=Path)
    v.add_argument("--csv", type=Path)
    r = sub.add_parser("run-api", help="run flashinfer-bench through its Python API")
    r.add_argument("folder", type=Path)
    r.add_argument("--warmup-runs", type=int, default=10)
    r.add_argument("--iterations", type=int, default=50)
    r.add_argument("--num-trials", type=int, default=3)
    r.add_argument("--profile-baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="time the reference too (flashinfer-bench's default and its CLI's only choice)")
    for flag in ("--atol", "--rtol", "--required-matched-ratio"):
        r.add_argument(flag, type=float, help="instead of the packaged tolerance's")
    args = p.parse_args(argv)
    try:
        if args.command == "pack":
            meta = pack(args.output, args.definition, args.solution, args.tolerance)
            print(f"packed {meta['definition']} ({len(meta['workloads'])} workloads) + {meta['solution']} "
                  f"into {args.output}; flashinfer-bench flags: {' '.join(tolerance_flags(meta['tolerance']))}")
        elif args.command == "flags":
            print(" ".join(tolerance_flags(read_meta(args.folder)["tolerance"])))
        elif args.command == "load":
            problems = load(args.folder)
            for problem in problems:
                print("problem:", problem)
            print("flashinfer-bench loads it as packaged" if not problems else f"{len(problems)} problems")
            return 1 if problems else 0
        elif args.command == "verify":
            table = verify(args.folder)
            if args.csv:
                table.to_csv(args.csv, index=False)
            print(table.drop(columns=["trace"]).to_string(index=False))
            untimed = table[~table["timed"]]
            if len(untimed):
                print(f"NOT TIMED: {len(untimed)} of {len(table)} workloads ("
                      + ", ".join(f"{u} {s}" for u, s in zip(untimed["uuid"], untimed["status"])) + ")")
                return 1
            print(f"all {len(table)} workloads timed")
        elif args.command == "run-api":
            run_api(args.folder, args)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
