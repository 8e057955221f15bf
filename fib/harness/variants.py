"""Solution configurations run as solutions of their own: `fib run --config SOLUTION=NAME` and
`fib run --sweep SOLUTION`.

A variant is the solution (same sources, same spec) under the name `SOLUTION@NAME`
(`fib.schema.config.variant_name`), so its traces, logs, reports, comparisons, history and
resumes keep it apart from the solution's default and from its other configurations. The run's
`RunConfig.variants` maps each variant to (solution, configuration name); the worker looks the
name up in the solution's `fib_configs(axes)` per workload (fib.harness.call.choose_config) and
passes the dict as `config=`; a name not declared at a workload's axes is UNSUPPORTED there.

`--config` needs no solution code in the parent: whether the entry file defines `fib_configs` is
read from its text (fib.harness.build.defines_top_level). A sweep must know the names declared at
each workload before it plans: it asks a probe, `python -m fib.harness.variants ARGS.json`, a
process of its own that imports the solution (the parent never runs solution code) and writes
{workload uuid: {name: configuration}}.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import ConfigError
from ..schema import Solution
from ..schema.config import CONFIG_HOOK, CONFIG_NAME_PATTERN, SolutionVariant, variant_name

PACKAGE_PARENT = Path(__file__).resolve().parent.parent.parent


def parse_config_options(values: list[str]) -> list[tuple[str, str]]:
    """`--config SOLUTION=NAME` values as (solution, name), in order, without repeats."""
    import re
    pattern = re.compile(CONFIG_NAME_PATTERN)  # not harness.call's: that module imports torch (seconds)
    pairs: list[tuple[str, str]] = []
    for text in values:
        solution, eq, name = text.partition("=")
        solution, name = solution.strip(), name.strip()
        if not eq or not solution or not name:
            raise ConfigError(f"--config {text!r}: expected SOLUTION=NAME, e.g. triton_fused=default")
        if not pattern.fullmatch(name):
            raise ConfigError(f"--config {text!r}: configuration name {name!r} must start with a letter or digit "
                              "and hold only letters, digits and '_.+-'")
        if (solution, name) not in pairs:
            pairs.append((solution, name))
    return pairs


def require_configs(solution: Solution, option: str) -> None:
    """ConfigError unless the solution's entry file defines `fib_configs` (read, not run)."""
    from .build import defines_top_level
    if solution.spec.language.native or defines_top_level(solution, CONFIG_HOOK) is False:
        raise ConfigError(f"{option}: solution '{solution.name}' declares no configurations: its entry file "
                          f"{solution.spec.entry_file} defines no top-level {CONFIG_HOOK}(axes)",
                          where=solution.file, fix=f"drop {option} for it, or define {CONFIG_HOOK} "
                          "(docs/interfaces.md, 'Configurations')")


def add_variants(data, definition: str, solution: str, names: list[str]) -> dict[str, SolutionVariant]:
    """Put a copy of `solution` named `solution@name` for each name into data.solutions[definition];
    returns {variant name: SolutionVariant}. A variant name taken by a real solution is an error."""
    base = data.solutions[definition][solution]
    made = {}
    for name in names:
        full = variant_name(solution, name)
        existing = data.solutions[definition].get(full)
        if existing is not None:
            raise ConfigError(f"the variant name '{full}' is already the name of a solution of {definition}",
                              where=existing.file, fix="rename that solution, or choose another configuration")
        data.solutions[definition][full] = base.model_copy(update={"name": full})
        made[full] = SolutionVariant(solution=solution, config=name)
    return made


def base_solution(data, definition: str, name: str, variants: dict[str, SolutionVariant]) -> Solution:
    """The dataset's solution behind `name` (itself when it is not a variant)."""
    variant = variants.get(name)
    return data.solutions[definition][variant.solution if variant else name]


# ---- the sweep's probe ------------------------------------------------------------------------
def probe_configs(solution: Solution, axes_by_workload: dict[str, dict], timeout_s: float) -> dict[str, dict]:
    """{workload uuid: {name: configuration}} the solution declares at each workload's axes, asked
    of a probe process. ConfigError naming the solution when it declares none or the probe fails."""
    require_configs(solution, "--sweep")  # read first: a compiled solution, or no hook in the file
    dumped = solution.model_dump(mode="json")
    with tempfile.TemporaryDirectory(prefix="fib-configs-") as tmp:
        args, out = Path(tmp) / "args.json", Path(tmp) / "out.json"
        args.write_text(json.dumps({"solution": dumped, "solution_root": str(solution.root) if solution.root else None,
                                    "solution_file": str(solution.file) if solution.file else None,
                                    "axes": axes_by_workload, "out": str(out)}))
        path = os.pathsep.join(p for p in (str(PACKAGE_PARENT), os.environ.get("PYTHONPATH", "")) if p)
        try:
            proc = subprocess.run([sys.executable, "-m", "fib.harness.variants", str(args)], capture_output=True,
                                  text=True, timeout=timeout_s, env={**os.environ, "PYTHONPATH": path})
        except subprocess.TimeoutExpired:
            raise ConfigError(f"--sweep: asking solution '{solution.name}' for its configurations took over "
                              f"{timeout_s:.0f} s", where=solution.file) from None
        answer = json.loads(out.read_text()) if out.is_file() else {"error": f"the probe exited with {proc.returncode}: "
                                                                            f"{proc.stderr[-1500:]}"}
    if "error" in answer:
        raise ConfigError(f"--sweep: cannot ask solution '{solution.name}' for its configurations: {answer['error']}",
                          where=solution.file)
    if answer.get("none"):
        raise ConfigError(f"--sweep: solution '{solution.name}' declares no configurations (no fib_configs in "
                          f"{solution.spec.entry_file})", where=solution.file,
                          fix="define fib_configs(axes) (docs/interfaces.md, 'Configurations') or drop --sweep for it")
    return answer["configs"]


def sweep_plan(configs_by_workload: dict[str, dict[str, dict]]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """From the probe's answer: every name declared at some workload (in first-seen order), and
    per workload the names that repeat an earlier name's configuration there ({name: same as}):
    those pairs are not run (the ranking lists them as the same as the other)."""
    names: list[str] = []
    same: dict[str, dict[str, str]] = {}
    for uuid, declared in configs_by_workload.items():
        seen: dict[str, str] = {}
        for name, values in declared.items():
            if name not in names:
                names.append(name)
            key = json.dumps(values, sort_keys=True, default=str)
            if key in seen:
                same.setdefault(uuid, {})[name] = seen[key]
            else:
                seen[key] = name
    return names, same


def _probe_main(argv: list[str]) -> int:
    args = json.loads(Path(argv[0]).read_text())
    out = Path(args["out"])
    try:
        from .. import solutions as sol_mod
        from .call import declared_configs
        solution = Solution.model_validate(args["solution"])
        if args.get("solution_root"):
            solution.attach_root(Path(args["solution_root"]))
        solution.file = Path(args["solution_file"]) if args.get("solution_file") else None
        function = sol_mod.load_entry(solution)
        module = sys.modules[function.__module__]
        if not hasattr(module, "fib_configs"):
            out.write_text(json.dumps({"none": True}))
            return 0
        configs = {uuid: declared_configs(module, solution.name, axes) for uuid, axes in args["axes"].items()}
        out.write_text(json.dumps({"configs": configs}, default=str))
    except Exception as exc:  # noqa: BLE001 - the parent reports it, naming the solution
        text = exc.render() if hasattr(exc, "render") else f"{type(exc).__name__}: {exc}"
        out.write_text(json.dumps({"error": text[:2000]}))
    return 0


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))
