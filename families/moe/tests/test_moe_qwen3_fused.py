"""The Qwen3 triton_fused solution (softmax top-8, FP8 block scale) against the definition's own
reference, with the Triton interpreter on the CPU.

Shapes are scaled down (10-16 experts, hidden 256/384, intermediate 128/256: multiples of the
128 block) and the inputs come from the definition's own generator at those axes (its sizes come
from the axes), so outputs are O(0.1-10) like the real ones and the definition's tolerance (atol
0.1, rtol 0.2, ratio 0.98, relative L2 <= 0.08) is what judges them, through fib's check. The
solution's buckets follow the expected rows per expert (T x 8 / E), so small T with few experts
reach every bucket: T=1-2 tiny, 3 decode, 12-20 mid, 40 large (9 experts), and the prefill tiles
forced by a configuration at T=24 (their own bucket would need T > 144 at 9 experts: slow
interpreted).

Triton runs in a subprocess with TRITON_INTERPRET=1 set before triton is imported (other tests
import triton too). Run `python families/moe/tests/test_moe_qwen3_fused.py case T E H I SEED
'CONFIG-JSON'` to see one case's numbers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's fib, also when run as a script (the subprocess)

NAME = "moe_qwen3_fp8_block_scale_softmax_topk8_e128_h2048_i768"
SOLUTION_DIR = ROOT / "solutions" / NAME / "triton_fused"
TOPK = 8
PREFILL = dict(BM=128, BN1=128, BN2=128, warps=8, stages1=4, stages2=4, c_dtype="fp8")


def small_axes(T: int, E: int, H: int, I: int) -> dict[str, int]:
    """The definition's axes with the const ones scaled down."""
    return dict(seq_len=T, num_experts=E, hidden_size=H, intermediate_size=I, gemm1_out_size=2 * I,
                num_hidden_blocks=H // 128, num_intermediate_blocks=I // 128, num_gemm1_out_blocks=2 * I // 128)


def _definition():
    from fib.schema import Definition, load_model
    return load_model(ROOT / "definitions" / "moe" / f"{NAME}.json", Definition)


def _solution():
    """(solution model, entry function) as fib loads them."""
    from fib import solutions as sol_mod
    from fib.schema import Solution, load_model
    solution = load_model(SOLUTION_DIR / "solution.json", Solution)
    solution.attach_root(SOLUTION_DIR)
    return solution, sol_mod.load_entry(solution)


def make_inputs(definition, axes: dict, seed: int) -> dict:
    """The definition generator's inputs at these axes (declaration order)."""
    import torch
    from fib.harness.inputs import definition_function
    made = definition_function(definition, "generate")(dict(axes), {}, torch.Generator().manual_seed(seed), "cpu")
    return {name: made[name] for name in definition.inputs}


def reference(definition, inputs: dict):
    from fib.harness.inputs import compute_reference
    return compute_reference(definition, inputs)[0][0]


def run_solution(definition, axes, inputs, config=None):
    """One call through fib's SolutionCall (outputs pre-filled with NaN)."""
    from fib.harness.call import SolutionCall
    solution, function = _solution()
    return SolutionCall(function, solution, definition, axes, "cpu", config=config)(inputs)[0]


def verdict(definition, axes, out, ref) -> dict:
    """fib's check at the definition's tolerance."""
    from fib.harness.check import check_outputs
    result = check_outputs(definition, axes, [out], [ref], definition.tolerance)
    c = result.correctness
    stats = {"status": result.status.value, "reason": result.reason}
    if c is not None:
        stats.update(rel_l2=c.relative_l2_error, matched=c.matched_ratio, max_abs=c.max_absolute_error,
                     ref_max=float(ref.abs().max()))
    return stats


def case(T, E, H, I, seed, config=None) -> dict:
    definition = _definition()
    axes = small_axes(T, E, H, I)
    inputs = make_inputs(definition, axes, seed)
    out = run_solution(definition, axes, inputs, config)
    return verdict(definition, axes, out, reference(definition, inputs))


def corrupted(T, E, H, I, seed) -> dict:
    """The verdict on the kernel's output and on wrong outputs a plausible bug would give: zeros;
    the tokens' rows shifted by one; x1.25; the kernel run with W13's up and gate halves swapped;
    each token's first (largest) slot left out of the sum (an off-by-one in the finalize).
    (Weights not renormalised over the chosen 8 would be another, but at 10 experts the top 8
    hold ~95% of the softmax mass: too small an error for any tolerance to see.)"""
    import torch
    definition = _definition()
    axes = small_axes(T, E, H, I)
    inputs = make_inputs(definition, axes, seed)
    ref = reference(definition, inputs)
    out = run_solution(definition, axes, inputs)
    stats = {"kernel": verdict(definition, axes, out, ref)}
    stats["zeros"] = verdict(definition, axes, torch.zeros_like(out), ref)
    stats["rows_shifted"] = verdict(definition, axes, out.roll(1, 0), ref)
    stats["scaled_1.25"] = verdict(definition, axes, (out.float() * 1.25).to(out.dtype), ref)
    swapped = dict(inputs)
    w, s = inputs["gemm1_weights"], inputs["gemm1_weights_scale"]
    swapped["gemm1_weights"] = torch.cat([w[:, I:], w[:, :I]], 1).contiguous()
    swapped["gemm1_weights_scale"] = torch.cat([s[:, I // 128:], s[:, :I // 128]], 1).contiguous()
    stats["up_gate_swapped"] = verdict(definition, axes, run_solution(definition, axes, swapped), ref)
    # slots 1..7 only, from the reference's own pieces
    from fib.harness.inputs import definition_function
    f = definition_function(definition, "run").__globals__
    ids, weights = f["route_softmax"](inputs["routing_logits"])
    hidden = f["dequant_tokens"](inputs["hidden_states"], inputs["hidden_states_scale"])

    def expert_weights(e):
        return (f["dequant_weight"](inputs["gemm1_weights"][e], inputs["gemm1_weights_scale"][e]),
                f["dequant_weight"](inputs["gemm2_weights"][e], inputs["gemm2_weights_scale"][e]))
    missing = f["moe_experts"](hidden, ids[:, 1:], weights[:, 1:], 0, E, expert_weights)
    stats["first_slot_missing"] = verdict(definition, axes, missing.to(out.dtype), ref)
    return stats


def routing(T, E, BM, config, ties) -> dict:
    """The routing+align kernels against the reference's route_softmax and the align invariants:
    every entry exactly once, in its expert's BM-padded segment, in token order; padding =
    sentinel (T x 8); each block's expert. `ties`: integer logits in [-3, 3] (many ties, also
    across the 8th/9th place): ids must be the top 8 with the lowest index first among equals
    (a stable descending sort)."""
    import torch
    from fib.harness.inputs import definition_function
    module = _solution()[1].__globals__
    g = torch.Generator().manual_seed(1000 * T + E)
    logits = (torch.randint(-3, 4, (T, E), generator=g).float() if ties
              else torch.randn(T, E, generator=g) * 2)
    cfg = module["_resolve"](T, E, {**(config or {}), "BM": BM})
    ids, w, sorted_ids, expert_ids, n_post = module["_route_and_align"](logits, E, cfg)
    want_ids = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :TOPK]
    route_softmax = definition_function(_definition(), "run").__globals__["route_softmax"]
    ref_ids, ref_w = route_softmax(logits)
    n_post = int(n_post)
    flat = want_ids.flatten()
    want_sorted, want_experts = [], []
    for e in range(E):
        entries = (flat == e).nonzero().flatten().tolist()
        padded = -(-len(entries) // BM) * BM
        want_sorted += entries + [T * TOPK] * (padded - len(entries))
        want_experts += [e] * (padded // BM)
    # the reference's weights for the same chosen logits (its order may differ only among ties)
    chosen = logits.gather(1, ids.long())
    return {
        "ids_equal": bool(torch.equal(ids.long(), want_ids)),
        "ref_ids_same_logits": bool(torch.equal(chosen.sort(1).values, logits.gather(1, ref_ids).sort(1).values)),
        "weights_max_err": float((w - torch.softmax(chosen, 1)).abs().max()),
        "ref_weights_max_err": float((w.sort(1).values - ref_w.sort(1).values).abs().max()),
        "sorted_equal": sorted_ids[:n_post].tolist() == want_sorted,
        "experts_equal": expert_ids[: n_post // BM].tolist() == want_experts,
        "blocks_fit": n_post <= sorted_ids.numel(),
    }


if __name__ == "__main__":
    kind, args = sys.argv[1], sys.argv[2:]
    if kind == "case":
        T, E, H, I, seed = map(int, args[:5])
        print(json.dumps(case(T, E, H, I, seed, json.loads(args[5]) if len(args) > 5 else None)))
    elif kind == "corrupted":
        print(json.dumps(corrupted(*map(int, args[:5]))))
    elif kind == "routing":
        print(json.dumps([routing(*c) for c in json.loads(args[0])]))
    sys.exit(0)


import pytest  # noqa: E402  (kept below so the subprocess entry above stays light)


def interpreted(*argv):
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, __file__, *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("T,E,H,I,seed,config,bucket", [
    (1, 10, 256, 128, 0, None, "tiny: 32-column gemm1, bf16 C re-quantized per 1x128 in gemm2 (128 columns), one-warp routing"),
    (2, 10, 256, 128, 1, {"c_dtype": "fp8", "BN2": 64}, "tiny, 'fp8c_bn64': fp8 C in 32-wide groups (4 dots per gemm2 step)"),
    (3, 12, 384, 128, 2, None, "decode: BM 16, bf16 C, 3 K blocks and 3 gemm2 column tiles, 12 experts (16 in routing)"),
    (24, 10, 256, 256, 3, None, "mid: BM 32, fp8 C in 64-wide groups (2 per gemm2 step, 2 steps), 4-token routing tiles"),
    (12, 10, 256, 128, 4, {"route": "single", "route_tile": 4}, "one-program routing over 3 tiles (ids reloaded)"),
    (20, 16, 256, 128, 5, None, "decode with 4-token routing tiles, scan, scatter"),
    (14, 10, 256, 128, 9, None, "decode with 2-token routing tiles (9-16 tokens)"),
    (40, 9, 256, 128, 6, None, "large: BM 64"),
    (24, 9, 256, 256, 7, PREFILL, "prefill tiles (BM 128, BN 128)"),
])
def test_fused_interpreted(T, E, H, I, seed, config, bucket):
    stats = interpreted("case", T, E, H, I, seed, json.dumps(config))
    assert stats["status"] == "PASSED", (bucket, stats)
    # fp8 re-quantization of C (per 1x128 or narrower group) costs ~2% rel. L2 on these inputs;
    # the definition allows 8%: this bound would catch a lost scale or slot long before that
    assert stats["rel_l2"] < 0.04, (bucket, stats)


def test_buckets_reached_by_the_cases_above():
    """The cases above reach the bucket they say (the default configuration at their T and E)."""
    pytest.importorskip("triton")
    module = _solution()[1].__globals__
    config = module["_config"]
    assert config(1, 10)["BN1"] == 32 and config(2, 10)["c_dtype"] == "bf16" and config(2, 10)["BN2"] == 128
    assert config(3, 10)["BM"] == 16 and config(3, 10)["c_dtype"] == "bf16" and config(3, 10)["route"] == "single"
    assert config(24, 10)["BM"] == 32 and config(24, 10)["route"] == "tiles" and config(24, 10)["route_tile"] == 4
    assert config(14, 10)["BM"] == 16 and config(14, 10)["route"] == "tiles" and config(14, 10)["route_tile"] == 2
    assert config(12, 10)["route"] == "tiles" and config(20, 16)["BM"] == 16 and config(20, 16)["route_tile"] == 4
    assert config(40, 9)["BM"] == 64
    assert config(170, 10)["BM"] == 128 and config(8192, 128)["BM"] == 128
    # the dataset's sizes at 128 experts
    assert [config(T)["BM"] for T in (1, 4, 16, 64, 256, 1024, 4096, 8192)] == [16, 16, 16, 16, 16, 64, 128, 128]


def test_corrupted_outputs_fail_interpreted():
    """The definition's tolerance passes the kernel's output and fails each wrong one."""
    stats = interpreted("corrupted", 5, 10, 256, 128, 8)
    assert stats.pop("kernel")["status"] == "PASSED"
    for name, one in stats.items():
        assert one["status"] == "INCORRECT_NUMERICAL", (name, one)


def test_routing_and_align_interpreted():
    cases = [  # T, E, BM, config, ties
        (1, 128, 16, None, False), (5, 16, 16, None, False), (5, 16, 16, {"route_one_tile": False}, False),
        (37, 16, 32, {"route": "single", "route_tile": 8}, False),
        (37, 16, 16, {"route": "tiles", "route_tile": 2}, False),
        (37, 12, 64, {"route": "tiles", "route_tile": 16}, False),
        (16, 128, 16, None, True), (40, 12, 16, {"route": "tiles", "route_tile": 4}, True),
    ]
    for config, stats in zip(cases, interpreted("routing", json.dumps(cases))):
        assert stats["ids_equal"] and stats["sorted_equal"] and stats["experts_equal"], (config, stats)
        assert stats["blocks_fit"] and stats["ref_ids_same_logits"], (config, stats)
        assert stats["weights_max_err"] < 1e-6 and stats["ref_weights_max_err"] < 1e-6, (config, stats)


def test_configurations_declared_per_bucket():
    """fib_configs: "default" first and equal to _config; every name valid, resolving to itself,
    and distinct from the others; bad keys and values are refused naming the key."""
    pytest.importorskip("triton")
    module = _solution()[1].__globals__
    for T in (1, 2, 3, 4, 8, 9, 16, 17, 64, 128, 129, 256, 512, 513, 1024, 2048, 2049, 4096, 8192):
        declared = module["fib_configs"]({"seq_len": T, "num_experts": 128})
        assert list(declared)[0] == "default" and declared["default"] == module["_config"](T)
        assert len(declared) > 3, T
        for name, cfg in declared.items():
            assert set(cfg) == set(module["CONFIG_DOC"]), (T, name)
            assert module["_invalid"](cfg) is None, (T, name, cfg)
            assert module["_resolve"](T, 128, cfg) == cfg
        dumps = [json.dumps(c, sort_keys=True) for c in declared.values()]
        assert len(set(dumps)) == len(dumps), f"two names for one configuration at T={T}"
    with pytest.raises(ValueError, match="unknown configuration key.*split"):
        module["_resolve"](4, 128, {"split": 2})
    with pytest.raises(ValueError, match="BN1=96"):
        module["_resolve"](4, 128, {"BN1": 96})
    with pytest.raises(ValueError, match="c_dtype"):
        module["_resolve"](4, 128, {"c_dtype": "fp16"})


@pytest.fixture(scope="module")
def compile_sm90():
    pytest.importorskip("triton")
    sys.path.insert(0, str(Path(__file__).parent))
    from benchmark_module import load
    return load("compile_sm90")


@pytest.fixture(scope="module")
def full_size(compile_sm90):
    """The solution's module, as compile_sm90 loads it, for launches at the definition's real
    shapes (meta tensors: nothing is allocated, nothing runs)."""
    return compile_sm90.load_solution("triton_fused", NAME)


@pytest.mark.parametrize("T", [1, 4, 16, 64, 256, 1024, 4096, 8192])
def test_every_declared_configuration_launches_at_full_size(compile_sm90, full_size, T):
    """Each configuration fib_configs declares at a dataset size builds its launches at the real
    shapes (grids, constexprs) and launches the kernels the stages need."""
    for name, cfg in full_size.fib_configs({"seq_len": T, "num_experts": 128}).items():
        launches = compile_sm90.record_launches(full_size, T, cfg, grids=True)
        kernels = [fn.__name__ for fn, *_ in launches]
        assert kernels[-3:] == ["_gemm1_swiglu_kernel", "_gemm2_kernel", "_finalize_kernel"], (name, kernels)
        grid = {fn.__name__: g for fn, *_, g in launches}
        assert grid["_finalize_kernel"] == (T, 2), (name, grid)  # 2048 columns in 1024-wide programs


@pytest.mark.parametrize("T", [1, 16, 1024, 8192])
def test_kernels_compile_for_sm90(compile_sm90, full_size, T):
    """Code generation for sm_90a on the CPU (the interpreter generates none): the default
    configuration of the tiny, decode, large and prefill buckets compiles, and nothing spills
    kilobytes (Triton 3.9 spills 200 bytes in prefill gemm1, like the DeepSeek kernel's)."""
    rows = compile_sm90.compile_run(full_size, T)
    assert {r["kernel"] for r in rows} >= {"_gemm1_swiglu_kernel", "_gemm2_kernel", "_finalize_kernel"}
    for r in rows:
        assert r.get("reg", 0) > 0, r
        assert r.get("stack", 0) <= 256, r
    gemms = {r["kernel"]: r for r in rows if r["kernel"].startswith("_gemm")}
    if T >= 1024:  # 64- and 128-row tiles: Hopper's wgmma, not mma.sync
        assert all(r["wgmma"] > 0 for r in gemms.values()), gemms


def test_fib_run_reports_unsupported_on_cpu(tmp_path):
    """`fib run` on a machine without a GPU: every workload UNSUPPORTED, with the reason."""
    pytest.importorskip("torch")
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the solution would run")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "fib", "run", "--definitions", NAME, "--solutions",
                           "triton_fused", "--output", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    traces = [json.loads(line) for line in (tmp_path / "run" / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 8, proc.stdout[-2000:] + proc.stderr[-2000:]
    for t in traces:
        assert t["solution"] == "triton_fused" and t["evaluation"]["status"] == "UNSUPPORTED", t
        assert "cuda" in t["evaluation"]["reason"], t
