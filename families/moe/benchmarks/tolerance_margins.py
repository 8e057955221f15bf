#!/usr/bin/env python3
"""How far correct MoE solutions and plausible wrong outputs are from the reference, by fib's own
check (`fib.harness.check.compare`): the numbers behind the MoE definitions' tolerances.

    .venv/bin/python families/moe/benchmarks/tolerance_margins.py DEFINITION [--tokens 1 16 ...]
        [--solutions torch_eager ...] [--seeds 0 1] [--device cpu] [--json OUT.jsonl]

For every workload (optionally filtered by seq_len) and run seed it builds the inputs exactly as
`fib run` does (fib.harness.inputs.make_inputs with fib.harness.inputs.workload_seed), computes the reference,
and prints per case the relative L2 error, cosine similarity, max abs error, the matched ratio
under the definition's tolerance and under its presets, and the verdict of each. Cases:

  solution:NAME      a correct solution's output
  zeros              all zeros
  offset+1/offset-1  (expert-parallel definitions) local_expert_offset off by one: the reference
                     with that offset, i.e. every local expert's weights used for its neighbour
  experts_rolled     (all-local definitions) expert e computed with expert e+1's weights
  no_scaling         (DeepSeek) routed_scaling_factor not applied: the reference with factor 1
  unnormalised       (softmax top-k) routing weights not renormalised over the chosen k
  ref_plus_std       the reference shifted by its std (vacuous_outputs' second candidate)

Set TRITON_INTERPRET=1 (before starting) to run Triton solutions on a CPU; only sensible on the
small sibling definition.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from fib import solutions as sol_mod  # noqa: E402
from fib.harness.check import compare  # noqa: E402
from fib.harness.inputs import compute_reference, make_inputs, torch_dtype, workload_seed  # noqa: E402
from fib.schema import Definition, Solution, Tolerance, Workload, load_jsonl, load_model  # noqa: E402


def load_definition(name: str, root: Path = REPO) -> Definition:
    [path] = (root / "definitions").glob(f"*/{name}.json")
    return load_model(path, Definition)


def load_workloads(definition: Definition, root: Path = REPO) -> list[Workload]:
    path = root / "datasets" / definition.op_type / f"{definition.name}.jsonl"
    return [Workload.model_validate(line) for _, line in load_jsonl(path)]


def load_solution(definition: Definition, name: str, root: Path = REPO) -> Solution:
    path = root / "solutions" / definition.name / name / "solution.json"
    solution = load_model(path, Solution)
    shared = (solution.model_extra or {}).get("source_dir")  # as fib.dataset reads it
    solution.attach_root((path.parent / shared).resolve() if shared else path.parent)
    solution.file = path
    return solution


def wrong_outputs(definition: Definition, inputs: dict, reference: torch.Tensor) -> dict[str, torch.Tensor]:
    """Plausible wrong outputs (FP32, not yet cast to the output dtype), by name."""
    run = lambda **changed: compute_reference(definition, {**inputs, **changed})[0][0]  # noqa: E731
    cases = {"zeros": torch.zeros_like(reference)}
    if "local_expert_offset" in inputs:
        offset = int(inputs["local_expert_offset"])
        room = definition.axes["num_experts"].value - definition.axes["num_local_experts"].value
        if offset + 1 <= room:
            cases["offset+1"] = run(local_expert_offset=offset + 1)
        if offset - 1 >= 0:
            cases["offset-1"] = run(local_expert_offset=offset - 1)
    else:
        rolled = {n: torch.cat([v[1:], v[:1]]) for n, v in inputs.items()  # (roll: no fp8 on CUDA)
                  if n.startswith("gemm") and isinstance(v, torch.Tensor)}
        cases["experts_rolled"] = run(**rolled)
    if "routed_scaling_factor" in inputs:
        cases["no_scaling"] = run(routed_scaling_factor=1.0)
    else:
        top_k = int(definition.reference.split("TOP_K = ")[1].split()[0])
        probs = torch.softmax(inputs["routing_logits"].float(), dim=-1)
        cases["unnormalised"] = reference * probs.topk(top_k, dim=-1).values.sum(-1, keepdim=True)
    cases["ref_plus_std"] = reference + reference.std()
    return cases


def tolerances(definition: Definition) -> dict[str, Tolerance]:
    tols = {"definition": definition.tolerance or Tolerance()}
    tols.update({name: definition.tolerance_preset(name) for name in definition.tolerance_presets})
    return tols


def measure(definition: Definition, workload: Workload, seed: int, solutions: dict, device: str,
            extra_tolerances: dict[str, Tolerance] | None = None) -> list[dict]:
    """One row per case: the scale-free metrics and the verdict under each tolerance."""
    inputs = make_inputs(definition, workload, seed=seed, device=device, root=REPO)
    reference = compute_reference(definition, inputs)[0][0]
    axes = definition.resolve_axes(workload.axes)
    dtype = torch_dtype(next(iter(definition.outputs.values())).dtype)
    cases = {}
    for name, (solution, function) in solutions.items():
        start = time.perf_counter()
        out = sol_mod.call_solution(function, solution, inputs, sol_mod.allocate_outputs(definition, axes, device))
        cases[f"solution:{name}"] = (out[0], time.perf_counter() - start)
    for name, out in wrong_outputs(definition, inputs, reference).items():
        cases[name] = (out.to(dtype), 0.0)
    tols = {**tolerances(definition), **(extra_tolerances or {})}
    rows = []
    ref_abs = reference.abs().flatten().float()
    for case, (out, seconds) in cases.items():
        row = {"definition": definition.name, "seq_len": workload.axes["seq_len"], "seed": seed, "case": case,
               "scalars": workload.scalar_inputs(), "ref_abs_mean": float(ref_abs.mean()),
               "ref_abs_q10": float(ref_abs.quantile(0.1)) if ref_abs.numel() < 2**24 else None,
               "ref_zero_rows": int((reference.abs().sum(-1) == 0).sum()), "seconds": round(seconds, 3)}
        for label, tol in tols.items():
            stats = compare(out, reference, tol)
            if label == "definition":
                row.update(rel_l2=stats["relative_l2_error"], cosine=stats["cosine_similarity"],
                           max_abs=stats["max_absolute_error"])
            passed = (stats["matched_ratio"] >= tol.required_matched_ratio and not stats["non_finite"]
                      and (tol.max_relative_l2 is None or stats["relative_l2_error"] <= tol.max_relative_l2)
                      and (tol.min_cosine_similarity is None or stats["cosine_similarity"] >= tol.min_cosine_similarity))
            row[f"matched[{label}]"] = stats["matched_ratio"]
            row[f"pass[{label}]"] = passed
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("definition")
    parser.add_argument("--tokens", type=int, nargs="*", help="only workloads with these seq_len")
    parser.add_argument("--solutions", nargs="*", default=["torch_eager"])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1], help="run seeds (fib run --seed; "
                        "the check after timing uses seed + 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--also", nargs="*", default=[], help="extra tolerances as atol,rtol,ratio[,rel_l2]")
    parser.add_argument("--json", type=Path, help="append the rows to this JSONL file")
    args = parser.parse_args(argv)
    definition = load_definition(args.definition)
    extra = {}
    for text in args.also:
        values = [float(v) for v in text.split(",")]
        extra[text] = Tolerance(atol=values[0], rtol=values[1], required_matched_ratio=values[2],
                                max_relative_l2=values[3] if len(values) > 3 else None)
    solutions = {}
    for name in args.solutions:
        solution = load_solution(definition, name)
        solutions[name] = (solution, sol_mod.load_entry(solution))
    labels = list({**tolerances(definition), **extra})
    print(f"# {definition.name}; tolerances: " + "; ".join(
        f"[{k}] {t.describe()}" for k, t in {**tolerances(definition), **extra}.items()))
    print(f"{'T':>6} {'seed':>4} {'case':<22} {'rel_l2':>9} {'cosine':>9} {'max_abs':>8} "
          + " ".join(f"{'m/' + k[:10]:>12} {'ok':>3}" for k in labels) + "  ref|mean| q10 zero_rows")
    for workload in load_workloads(definition):
        if args.tokens and workload.axes["seq_len"] not in args.tokens:
            continue
        for run_seed in args.seeds:
            rows = measure(definition, workload, workload_seed(run_seed, workload), solutions, args.device, extra)
            for row in rows:
                print(f"{row['seq_len']:>6} {run_seed:>4} {row['case']:<22} {row['rel_l2']:>9.4g} "
                      f"{row['cosine']:>9.6f} {row['max_abs']:>8.3g} "
                      + " ".join(f"{row[f'matched[{k}]']:>12.4f} {'y' if row[f'pass[{k}]'] else 'N':>3}"
                                 for k in labels)
                      + f"  {row['ref_abs_mean']:.3f} {row['ref_abs_q10'] or float('nan'):.3f} {row['ref_zero_rows']}",
                      flush=True)
                if args.json:
                    with args.json.open("a") as f:
                        f.write(json.dumps({**row, "run_seed": run_seed}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
