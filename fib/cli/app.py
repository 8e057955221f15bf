"""fib's command line (typer + rich). Thin: parses, then calls the modules that do the work."""
from __future__ import annotations

import functools
import json
import os
import sys
import time

_IMPORTED = time.time()  # the CLI's modules are loaded: the timeline's "cli_imported"
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .common import (_check_devices, _default_devices, _fail, _load, _normalise_devices,  # noqa: F401
                         _print_problems, _select, console, out, split_list)
from ..errors import FibError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  pretty_exceptions_enable=False,
                  help="fib: check, time and profile GPU kernel implementations on real workloads.")

# Options that take a list: `--solutions a b`, `--solutions a,b` and `--solutions a --solutions b`, and
# so do their short forms (`-d a b`, `-s a,b`, `-w seq_len=7 seq_len=14`).
LIST_OPTIONS = {"--definitions", "-d", "--solutions", "-s", "--workloads", "-w", "--local", "--devices", "--device",
                "--gpus"}
# List options that mean something when given bare: `fib list --workloads` lists every workload. A bare
# one is passed on as `--workloads=` (given, empty); for `run` and `profile` that selects all workloads,
# as leaving it out does. Other bare list options are dropped (the same as leaving them out).
BARE_LIST_OPTIONS = {"--workloads": "--workloads=", "-w": "--workloads="}

LocalOpt = typer.Option(None, "--local", help="Dataset root (repeatable). Default: $FIB_DATASET_PATH, "
                        "else this repository.")
DefsOpt = typer.Option(None, "--definitions", "-d", help="Definitions to use (default: all).")
SolsOpt = typer.Option(None, "--solutions", "-s", help="Solutions to use (default: all of each definition).")
WorkOpt = typer.Option(None, "--workloads", "-w", help="Workload uuids (or prefixes) or axis filters "
                       "like seq_len=7 (default: all).")


def expand_list_args(argv: list[str]) -> list[str]:
    """Turn `--solutions a b,c` (or `-s a b,c`) into `--solutions a --solutions b --solutions c`.
    Everything after a `--` is passed on unchanged."""
    result: list[str] = []
    current, given = None, False

    def close() -> None:  # the list option before this token got no values
        if current in BARE_LIST_OPTIONS and not given:
            result.append(BARE_LIST_OPTIONS[current])

    for index, token in enumerate(argv):
        if token == "--":
            close()
            return result + argv[index:]
        if token.startswith("-"):
            close()
            name, eq, value = token.partition("=")
            current, given = (name if name in LIST_OPTIONS else None), False
            if current and eq:
                values = [v for v in value.split(",") if v]
                result += [x for v in values for x in (name, v)]
                given = bool(values)
                continue
            if not current:
                result.append(token)
        elif current:
            values = [v for v in token.split(",") if v]
            result += [x for v in values for x in (current, v)]
            given = given or bool(values)
        else:
            result.append(token)
    close()
    return result


def _closing_standbys(command):
    """The command, then the standby children it started and did not use killed (fib/harness/standby.py)."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        finally:
            from ..harness.standby import POOL
            POOL.close()
    return wrapper


@app.command()
@_closing_standbys
def run(
    local: Optional[List[str]] = LocalOpt,
    definitions: Optional[List[str]] = DefsOpt,
    solutions: Optional[List[str]] = SolsOpt,
    workloads: Optional[List[str]] = WorkOpt,
    devices: Optional[List[str]] = typer.Option(None, "--devices", "--device",
                                                help="Devices, e.g. cuda:0 cuda:1 or cpu (default: all GPUs, "
                                                     "else cpu). One solution worker per device at a time."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run directory (default: runs/<time>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output (or the latest under "
                                "runs/), skipping pairs already measured."),
    force: bool = typer.Option(False, "--force", help="With --resume: continue even though settings or the "
                               "environment differ from the recorded run."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds per (solution, workload): its first call, "
                                  "check, timing and fresh check."),
    build_timeout: Optional[float] = typer.Option(None, "--build-timeout", help="Seconds for a solution's import "
                                                  "and build hook (default: its spec.build_timeout_s)."),
    jit_workers: Optional[int] = typer.Option(None, "--jit-workers", help="Processes that make each workload's "
                                              "first call before a solution's first pair on a GPU, so its JIT "
                                              "compilations run in parallel (0: none; default: chosen from the "
                                              "GPU's memory, the CPUs and the workloads; never on a CPU)."),
    jit_timeout: float = typer.Option(180.0, "--jit-timeout", help="Seconds for a solution's very first call in "
                                      "the run, where JIT compilation happens; later first calls get --timeout."),
    atol: Optional[float] = typer.Option(None, "--atol", help="Absolute tolerance (default: the definition's)."),
    rtol: Optional[float] = typer.Option(None, "--rtol", help="Relative tolerance (default: the definition's)."),
    required_matched_ratio: Optional[float] = typer.Option(None, "--required-matched-ratio",
                                                           help="Fraction of elements that must be within "
                                                                "tolerance (default: the definition's)."),
    warmup_runs: int = typer.Option(10, "--warmup-runs", help="Warm-up calls before timing (at least)."),
    min_warmup_ms: float = typer.Option(25.0, "--min-warmup-ms", help="Milliseconds of warm-up calls at least, "
                                        "for a worker's first timed workload and after a pause of 1 s or more."),
    min_warmup_ms_warm: float = typer.Option(5.0, "--min-warmup-ms-warm", help="Milliseconds of warm-up calls "
                                             "at least for the next workloads, the GPU busy until a moment ago."),
    iterations: int = typer.Option(50, "--iterations", help="Timed calls per trial."),
    num_trials: int = typer.Option(3, "--num-trials", help="Trials; samples = iterations x trials."),
    timer: str = typer.Option("auto", "--timer", help="auto, cupti, cuda_graph, cuda_event or wall."),
    seed: int = typer.Option(0, "--seed", help="Seed the inputs are built from (recorded in each trace)."),
    input_copies: int = typer.Option(0, "--input-copies", help="Input sets rotated while timing (0: auto)."),
    cpu_timing_budget: float = typer.Option(3.0, "--cpu-timing-budget", help="On a CPU device, seconds of timed "
                                            "calls per workload at most (fewer iterations, recorded in the trace); "
                                            "0: no budget. GPUs are never cut short."),
    any_hardware: bool = typer.Option(False, "--any-hardware", help="Run GPU solutions on this GPU even where "
                                      "their target_hardware names another GPU or SM (e.g. a flashinfer-bench "
                                      "solution that says B200, on an H200); CPU-only ones still need a CPU."),
    no_fresh_check: bool = typer.Option(False, "--no-fresh-check", help="Skip the second check on a fresh "
                                        "input set after timing."),
    max_failures: int = typer.Option(3, "--max-failures", help="Skip a solution after this many crashes or "
                                     "timeouts."),
    also_check: Optional[List[str]] = typer.Option(None, "--also-check", help="Also record the verdict at "
                                                  "another tolerance: a definition's preset name (e.g. contest) "
                                                  "or 'atol,rtol,ratio' (repeatable); the status keeps the main "
                                                  "tolerance."),
    config_choice: Optional[List[str]] = typer.Option(None, "--config", help="SOLUTION=NAME: run that "
                                                     "configuration of a solution (its fib_configs), as the "
                                                     "solution SOLUTION@NAME (repeatable)."),
    sweep: Optional[List[str]] = typer.Option(None, "--sweep", help="SOLUTION: run every configuration the "
                                              "solution declares at each workload, each as SOLUTION@NAME, and "
                                              "rank them per workload (sweep.md, sweep.csv) (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    cluster: str = typer.Option("local", "--cluster", help="Where pairs run: local (this host's --devices), ray "
                                "(RAY_ADDRESS, else a new local Ray instance), ray://auto or ray://HOST:PORT: one "
                                "Ray actor per GPU (pip install 'fib[ray]'; docs/cluster.md)."),
    gpus: Optional[List[str]] = typer.Option(None, "--gpus", help="With --cluster: GPU kinds (Ray accelerator "
                                             "types, e.g. H100,H200); every pair runs once on each kind."),
):
    """Check every solution on every workload against the FP32 reference, time those that pass,
    and write a run directory (run.json, traces.jsonl, logs/) that reports and comparisons read.
    With --config or --sweep and no --solutions, only the solutions they name run."""
    if cluster == "local":  # first of all (fib/cli/entry.py started them already when it could)
        from ..harness.standby import POOL, STANDBYS
        POOL.start(STANDBYS)
    from ..harness.executor import executor_for
    from ..harness.runner import RunPlan
    from ..progress import RunProgress, print_summary, summary_rows

    config = _run_config(atol=atol, rtol=rtol, required_matched_ratio=required_matched_ratio,
                         warmup_runs=warmup_runs, min_warmup_ms=min_warmup_ms,
                         min_warmup_ms_warm=min_warmup_ms_warm, iterations=iterations, num_trials=num_trials,
                         timer=timer,
                         seed=seed, input_copies=input_copies, fresh_check=not no_fresh_check,
                         cpu_timing_budget_s=cpu_timing_budget or None,
                         any_hardware=any_hardware,
                         also_check=split_list(also_check), timeout_s=timeout, build_timeout_s=build_timeout,
                         jit_timeout_s=jit_timeout, jit_workers=jit_workers, max_failures=max_failures)
    marks = {"cli_imported": _IMPORTED}
    started = _process_start_time()
    if started is not None:
        marks["process_start"] = started
    try:
        executor = executor_for(cluster, split_list(gpus))
    except FibError as err:
        _fail(err.render())
    on_cluster = executor.name != "local"
    if on_cluster and devices:
        _fail("--devices names this host's devices; with --cluster the cluster's GPUs are used (select kinds "
              "with --gpus)")
    devs = [] if on_cluster else _check_devices(_normalise_devices(split_list(devices)) or _default_devices())
    marks["devices_found"] = time.time()
    data = _load(local)
    marks["dataset_loaded"] = time.time()
    if data.problems:
        _print_problems(data, limit=20)
        console.print("[yellow]the files above are skipped; the rest of the dataset runs[/yellow]")
    from ..harness.variants import parse_config_options
    try:
        chosen_configs = parse_config_options(split_list(config_choice))
    except FibError as err:
        _fail(err.render())
    swept = list(dict.fromkeys(split_list(sweep)))
    if (chosen_configs or swept) and not split_list(solutions):  # only the solutions they name
        solutions = list(dict.fromkeys([s for s, _ in chosen_configs] + swept))
    def_names, sols, works = _select(data, definitions, solutions, workloads)
    same: dict = {}
    if chosen_configs or swept:
        try:
            excluded, same = _apply_variants(data, def_names, sols, works, chosen_configs, swept, config)
        except FibError as err:
            _fail(err.render())
    if not split_list(definitions) and devs and all(d == "cpu" for d in devs):
        def_names = _leave_out_full_size(data, def_names, works)
    if not def_names:
        _fail("nothing to run: no (solution, workload) pair matches the selection")
    for d in def_names:
        try:
            config.also_tolerances(data.definitions[d])
        except ValueError as exc:
            _fail(f"--also-check: {exc}")
    plan = RunPlan(config=config, definitions=def_names, solutions=sols, workloads=works, devices=devs, marks=marks)
    if chosen_configs or swept:
        plan.excluded = excluded
    from ..env import collect_environment
    from ..rundir import RunDirLock, check_resume
    run_dir = _run_dir(output, resume)
    try:
        lock = RunDirLock(run_dir).acquire()
        if resume:
            for note in check_resume(run_dir, config.model_dump(mode="json"), collect_environment(), force=force):
                console.print(f"[yellow]--force:[/yellow] resuming although {note}", highlight=False)
    except FibError as err:
        _fail(err.render())
    try:
        marks["run_dir_locked"] = time.time()
        if not on_cluster:  # on a cluster each node runs the build hooks itself, once per node
            plan.build_failures = _prebuild(data, plan, build_timeout, run_dir)
        marks["prebuilt"] = time.time()
        progress = RunProgress(console, total=len(plan.pairs()) * max(1, len(split_list(gpus))))
        with progress:
            result = executor.run(data, plan, run_dir, resume=resume, command=["fib", *sys.argv[1:]],
                                  on_trace=progress.trace, on_phase=progress.phase,
                                  on_warning=lambda text: console.print(f"[bold red]warning:[/bold red] {text}",
                                                                        highlight=False))
    finally:
        lock.release()
    rows = summary_rows(_whole_run(result))
    if as_json:
        out.print_json(json.dumps({"run_dir": str(run_dir), "interrupted": result.interrupted, "results": rows,
                                   "problems": result.problems, "vacuous_tolerance": result.vacuous}))
    else:
        print_summary(out, rows)
    if swept:
        _print_sweep(_whole_run(result), config, same, run_dir, quiet=as_json)
    for problem in result.problems:
        console.print(f"[red]definition problem:[/red] {problem}", highlight=False)
    for where, trivial in result.vacuous.items():
        console.print(f"[bold red]vacuous tolerance[/bold red] on {where}: {', '.join(trivial)} would PASS; "
                      "a PASSED there proves little", highlight=False)
    note = " (interrupted: rerun with --resume to continue)" if result.interrupted else ""
    console.print(f"run directory: [bold]{run_dir}[/bold]{note}", highlight=False)
    if result.interrupted:
        raise typer.Exit(130)
    if not any(r["status"] == "PASSED" for r in rows) or result.problems:
        raise typer.Exit(1)


def _apply_variants(data, def_names, sols, works, chosen: list[tuple[str, str]], swept: list[str], config):
    """Replace each solution named by --config/--sweep in the selection by its variants
    (SOLUTION@NAME, fib.harness.variants), record them in `config`, and return the pairs a sweep
    leaves out (a name not declared at a workload, or repeating another's configuration there)
    and, per (definition, solution), those repeats {workload: {name: other}}."""
    from ..harness.variants import add_variants, probe_configs, require_configs, sweep_plan
    from ..schema.config import variant_name
    named = list(dict.fromkeys([s for s, _ in chosen] + swept))
    missing = [s for s in named if not any(s in sols[d] for d in def_names)]
    if missing:
        _fail(f"--config/--sweep: solution(s) {', '.join(missing)} not among the selected solutions "
              f"({', '.join(sorted({s for d in def_names for s in sols[d]})) or 'none'})")
    variants, excluded, same = {}, set(), {}
    for d in def_names:
        definition = data.definitions[d]
        for name in [s for s in sols[d] if s in named]:
            solution = data.solutions[d][name]
            names = [n for s, n in chosen if s == name]
            if names:
                require_configs(solution, "--config")
            if name in swept:
                axes = {w: definition.resolve_axes(next(x for x in data.workloads[d] if x.uuid == w).axes)
                        for w in works[d]}
                declared = probe_configs(solution, axes, config.prepare_timeout_s)
                all_names, repeats = sweep_plan(declared)
                if not all_names:
                    _fail(f"--sweep: solution '{name}' declares no configuration at the selected workloads of {d}")
                for w in works[d]:
                    for n in all_names:
                        if n not in names and (n not in declared[w] or n in repeats.get(w, {})):
                            excluded.add((d, variant_name(name, n), w))
                same[(d, name)] = repeats
                names += [n for n in all_names if n not in names]
            made = add_variants(data, d, name, names)
            variants.update(made)
            at = sols[d].index(name)
            sols[d][at:at + 1] = list(made)
    config.variants = variants
    config.sweep = swept
    return excluded, same


def _print_sweep(traces, config, same: dict, run_dir: Path, *, quiet: bool) -> None:
    """Per workload, the swept configurations ranked by latency (best marked); sweep.md/.csv."""
    from ..report.sweep import sweep_table, write_sweep
    df = sweep_table(traces, config.variants, config.sweep, same)
    paths = write_sweep(run_dir, df)
    if quiet:
        return
    table = Table(title="sweep: configurations by latency per workload", title_justify="left")
    for col in ("workload", "axes", "rank", "config", "latency ms", "x best", "status"):
        table.add_column(col, overflow="fold")
    previous = None
    for _, r in df.iterrows():
        key = (r["definition"], r["solution"], r["workload"])
        if previous is not None and key != previous:
            table.add_section()
        previous = key
        import pandas as pd
        name = f"{r['solution']}@{r['config']}"
        table.add_row(r["workload"][:12], r["axes"], "" if pd.isna(r["rank"]) else str(r["rank"]),
                      f"[bold green]* {name}[/bold green]" if r["best"] else name,
                      f"{r['latency_ms']:.4f}" if pd.notna(r["latency_ms"]) else "-",
                      f"{r['vs_best']:.3f}" if pd.notna(r["vs_best"]) else "-",
                      r["status"] + (f": {r['note']}" if r["note"] else ""))
    out.print(table)
    console.print(f"sweep table: {paths[1]} and {paths[0].name}", highlight=False)


def _leave_out_full_size(data, def_names: list[str], works: dict) -> list[str]:
    """On a CPU, a bare `fib run` leaves out definitions whose workloads are too large to run there
    in reasonable time, and says which and why (`--definitions D` runs one anyway)."""
    from ..harness.plan import CPU_INPUT_LIMIT_BYTES, too_large_for_cpu
    keep = []
    for d in def_names:
        chosen = [w for w in data.workloads[d] if w.uuid in works[d]]
        largest = too_large_for_cpu(data.definitions[d], chosen)
        if largest is None:
            keep.append(d)
        else:
            console.print(f"[yellow]left out[/yellow] {d}: its workloads' inputs reach {largest / 2**30:.1f} GiB, over "
                          f"the {CPU_INPUT_LIMIT_BYTES // 2**20} MiB a CPU run takes by default (pass --definitions "
                          f"{d} to run it anyway)", highlight=False)
    return keep


def _whole_run(result) -> list:
    """The run's traces, earlier ones of a resumed run included (the latest per pair)."""
    latest = {}
    for trace in list(result.previous) + list(result.traces):
        if trace.solution and trace.evaluation:  # one per GPU kind on a cluster
            kind = (trace.evaluation.model_extra or {}).get("gpu_kind")
            latest[(trace.definition, trace.solution, trace.workload.uuid, kind)] = trace
    return list(latest.values())


def _process_start_time() -> float | None:
    """When this process started (time.time() scale), from /proc on Linux; None elsewhere. Measured back
    from /proc/uptime (10 ms resolution), not forward from /proc/stat's btime, which is whole seconds."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _run_config(**values):
    """The validated RunConfig, or exit 2 naming each bad option."""
    from pydantic import ValidationError
    from ..schema.config import RunConfig, config_error_message
    try:
        return RunConfig(**values)
    except ValidationError as exc:
        _fail(config_error_message(exc))
    except ValueError as exc:
        _fail(str(exc))


def _prebuild(data, plan, build_timeout, run_dir: Path) -> dict[str, tuple[str, str]]:
    """Build the solutions that have a build hook before any evaluation; returns the failures as
    solution -> (status, reason), so their pairs are answered without running them."""
    from ..harness.build import find_build, has_build_hook
    from ..solutions import solution_device
    from ..harness.variants import base_solution
    device = next((d for d in plan.devices if d.startswith("cuda")), plan.devices[0])
    behind = {n: base_solution(data, d, n, plan.config.variants) for d in plan.definitions
              for n in plan.solutions[d]}  # a variant is built as its solution
    todo = list({s.name: s for s in behind.values()}.values())
    todo = [s for s in todo if has_build_hook(s) and solution_device(s, plan.devices) == device
            and find_build(s, device=device) is None]
    if not todo:
        return {}
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    results = _build_all(todo, device, force=False, timeout=build_timeout, log_dir=run_dir / "logs",
                         any_hardware=plan.config.any_hardware)
    failures = {}
    for name, r in results.items():
        if r.status in ("failed", "timeout"):
            failures[name] = ("COMPILE_ERROR", f"build {r.status}: {r.reason or ''} (log: {r.log_path})")
        elif r.status == "unsupported":
            failures[name] = ("UNSUPPORTED", r.reason or "unsupported")
    failures.update({n: failures[s.name] for n, s in behind.items() if s.name in failures})
    return failures


def _run_dir(output: Optional[Path], resume: bool) -> Path:
    from ..rundir import create_run_dir
    base = Path(os.environ.get("FIB_RUNS_DIR", "runs"))
    if output is not None:
        if output.exists() and (output / "traces.jsonl").exists() and not resume:
            _fail(f"{output} already holds a run; pass --resume to continue it or choose another --output")
        return output
    if resume:
        previous = sorted(p for p in base.glob("*") if (p / "run.json").is_file()) if base.is_dir() else []
        if not previous:
            _fail(f"--resume: no earlier run under {base}/ (pass --output RUN_DIR)")
        return previous[-1]
    return create_run_dir(base)


def _input_kinds(workload) -> str:
    """The workload's inputs grouped by kind, e.g. `random: x; scalar: alpha=2.0`."""
    groups: dict[str, list[str]] = {}
    for name, spec in workload.inputs.items():
        label = f"{name}={spec.value}" if spec.type == "scalar" else name
        groups.setdefault(spec.type, []).append(label)
    return "; ".join(f"{kind}: {', '.join(names)}" for kind, names in groups.items()) or "-"


@app.command("list")
def list_(
    local: Optional[List[str]] = LocalOpt,
    definitions: Optional[List[str]] = DefsOpt,
    solutions: Optional[List[str]] = typer.Option(None, "--solutions", "-s", help="Solutions to show "
                                                  "(default: all)."),
    workloads: Optional[List[str]] = typer.Option(None, "--workloads", "-w", help="Also list each definition's "
                                                  "workloads (uuid, axes, input kinds); with values, only those "
                                                  "matching a uuid prefix or an axis filter like seq_len=7."),
):
    """List definitions, their workloads and solutions, and whether each solution can run here."""
    from ..dataset import workload_matches
    from ..solutions import device_info, solution_device, unsupported_reason
    data = _load(local)
    names = list(dict.fromkeys(split_list(definitions))) or sorted(data.definitions)
    unknown = [n for n in names if n not in data.definitions]
    if unknown:
        _fail(f"unknown definition(s) {', '.join(unknown)}; known: {', '.join(sorted(data.definitions)) or 'none'}")
    sol_names = split_list(solutions)
    missing = [s for s in sol_names if not any(s in data.solutions.get(n, {}) for n in names)]
    if missing:
        known = sorted({s for n in names for s in data.solutions.get(n, {})})
        _fail(f"unknown solution(s) {', '.join(missing)} for {', '.join(names)}; known: {', '.join(known) or 'none'}")
    devices = _default_devices()
    table = Table(title="definitions", title_justify="left")
    for col in ("definition", "op_type", "var axes", "workloads", "solutions", "stages"):
        table.add_column(col)
    for name in names:
        d = data.definitions[name]
        table.add_row(name, d.op_type, ", ".join(d.var_axes()), str(len(data.workloads.get(name, []))),
                      str(len(data.solutions.get(name, {}))), ", ".join(d.stage_names()) or "-")
    out.print(table)
    sol_table = Table(title="solutions", title_justify="left")
    for col in ("definition", "solution", "language", "targets", "here"):
        sol_table.add_column(col)
    for name in names:
        d = data.definitions[name]
        first = data.workloads.get(name, [None])[0]
        axes = d.resolve_axes(first.axes) if first else d.const_axes()
        for sol in data.solutions.get(name, {}).values():
            if sol_names and sol.label not in sol_names:
                continue
            device = solution_device(sol, devices)
            reason = unsupported_reason(sol, d, axes, device_info(device))
            sol_table.add_row(name, sol.label, sol.spec.language.value, ", ".join(sol.spec.target_hardware),
                              f"[red]unsupported: {reason}[/red]" if reason else f"[green]runs on {device}[/green]")
    out.print(sol_table)
    if workloads is not None:  # given, bare (every workload) or with filters
        filters = split_list(workloads)
        for name in names:
            chosen = [w for w in data.workloads.get(name, []) if workload_matches(w, filters)]
            wt = Table(title=f"workloads of {name} ({len(chosen)})", title_justify="left")
            for col in ("uuid", "axes", "inputs"):
                wt.add_column(col, overflow="fold")
            for w in chosen:
                wt.add_row(w.uuid, ", ".join(f"{k}={v}" for k, v in w.axes.items()), _input_kinds(w))
            out.print(wt)
    if data.problems:
        console.print(f"[yellow]{len(data.problems)} problem(s) in the dataset: run `fib validate`[/yellow]")


@app.command()
def validate(local: Optional[List[str]] = LocalOpt):
    """Check a dataset and its family modules; list every problem found (not only the first). Exit code 1 if any."""
    from ..families import family_problems
    data = _load(local)
    # the family modules (families/*/family.py) the definitions are matched against, loaded as `fib run` does
    data.problems.extend(family_problems(data.definitions.values(), data.roots))
    for warning in data.warnings:
        console.print(f"[yellow]warning[/yellow] {warning}", highlight=False, soft_wrap=True)
    _print_problems(data)
    counts = (f"{len(data.definitions)} definitions, {sum(len(v) for v in data.workloads.values())} workloads, "
              f"{len(data.solution_list())} solutions in {', '.join(str(r) for r in data.roots)}")
    if data.problems:
        out.print(f"[red]{len(data.problems)} problem(s)[/red]; loaded {counts}", highlight=False)
        raise typer.Exit(1)
    out.print(f"[green]ok[/green]: {counts}", highlight=False)


def _build_all(solutions_to_build, device: str, *, force: bool, timeout: Optional[float], log_dir: Optional[Path],
               any_hardware: bool = False):
    """Run each solution's build hook apart from evaluation, with a spinner and its own budget."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from ..harness.build import build_solution
    results = {}
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        for sol in solutions_to_build:
            task = bar.add_task(f"building {sol.label}", total=None)
            log_path = (log_dir / f"build-{sol.safe_label}.log") if log_dir else None
            result = build_solution(sol, timeout_s=timeout, log_path=log_path, force=force, device=device,
                                    any_hardware=any_hardware,
                                    progress=lambda _s, t=task: bar.update(t))
            bar.update(task, description=f"{sol.label}: {result.status}"
                       + (" (cached)" if result.cached else f" in {result.seconds:.1f} s"), completed=1, total=1)
            results[sol.label] = result
    return results


@app.command()
def build(
    local: Optional[List[str]] = LocalOpt,
    definitions: Optional[List[str]] = DefsOpt,
    solutions: Optional[List[str]] = SolsOpt,
    device: str = typer.Option("cuda", "--device", help="Device the build is for."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds per solution (default: its "
                                            "spec.build_timeout_s)."),
    force: bool = typer.Option(False, "--force", help="Build again even if a record of a build exists."),
):
    """Build (compile, JIT-warm) solutions ahead of `fib run`, each under its own time budget.
    Solutions without a `fib_build()` hook need no build and are listed as skipped."""
    data = _load(local)
    def_names, sols, _ = _select(data, definitions, solutions, None)
    chosen = [data.solutions[d][n] for d in def_names for n in sols[d]]
    results = _build_all(chosen, _normalise_devices([device])[0], force=force, timeout=timeout, log_dir=None)
    table = Table(title="builds", title_justify="left")
    for col in ("solution", "status", "seconds", "reason / log"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(name, r.status, f"{r.seconds:.1f}", (r.reason or r.log_path or "")[:200])
    out.print(table)
    if any(r.status in ("failed", "timeout") for r in results.values()):
        raise typer.Exit(1)


def _register_subcommands() -> None:
    from .cache import cache_app
    from .history import compare_command, dashboard_command, history_app
    from .selftest import selftest_command
    from .profile import profile_command
    from .report import report_app
    app.command("profile")(profile_command)
    app.add_typer(report_app, name="report")
    app.add_typer(history_app, name="history")
    app.command("compare")(compare_command)
    app.command("dashboard")(dashboard_command)
    app.command("selftest")(selftest_command)
    app.add_typer(cache_app, name="cache")


_register_subcommands()


def main() -> None:
    sys.argv[1:] = expand_list_args(sys.argv[1:])
    try:
        app()
    except FibError as err:
        console.print(f"[red]error:[/red] {err.render()}", highlight=False)
        sys.exit(2)
