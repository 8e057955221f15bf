"""triton_fused's a_tma path (A rows gathered into sorted order, gemm1 reads A through TMA).

The math is the default prefill kernel's: only the load path of A and its scales changes, so on
the Triton interpreter the layer's output must equal the a_tma=False output exactly (and pass the
FP32 reference as the other TMA configurations do). The gather kernel is checked on its own:
every live sorted row is its token's row, padding rows are zero. Shapes are the small sibling's
(test_moe_solutions.SMALL) with the prefill tiles forced at small T (configurations are
validated, not bucketed). Kernels run in a subprocess with TRITON_INTERPRET=1 set before triton
is imported.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import test_moe_solutions as sol  # noqa: E402  (helpers: inputs, reference, fib's check)

# the prefill bucket's default (tma, rescaled sum, 3 gemm2 stages) at small T
PREFILL_TMA = {**sol.PREFILL, **sol.PREFILL_ROUTE, "tma": True, "acc": "rescale", "stages2": 3}


def outputs_agree(seed, T, offset, over):
    """The layer's output with a_tma on and off (config `over` on both); max |difference|."""
    from fib.harness.call import SolutionCall
    from fib.schema import Definition, Solution, load_model
    module = sol.load_solution("triton_fused")
    definition = load_model(sol.SIBLING_DEFINITION, Definition)
    solution = load_model(sol.SIBLING / "triton_fused" / "solution.json", Solution)
    axes = definition.resolve_axes({"seq_len": T})
    inputs = dict(zip(definition.inputs, sol.make_inputs(T, seed=seed, offset=offset)))
    out, blocks, real = {}, [], module._desc
    module._desc = lambda t, block: blocks.append(list(block)) or real(t, block)
    for a_tma in (False, True):
        call = SolutionCall(module.run, solution, definition, axes, "cpu",
                            config={**PREFILL_TMA, **over, "a_tma": a_tma})
        out[a_tma] = call(inputs)[0].float()
    diff = (out[True] - out[False]).abs()
    return {"max_diff": float(diff.max()), "nan": bool(out[True].isnan().any()),
            "out_max": float(out[False].abs().max()), "descriptor_blocks": blocks}


def gathered_rows(seed, T, offset, BM):
    """Route, then run the gather kernel alone; compare with the rows and scales by token."""
    torch = sol._torch()
    module = sol.load_solution("triton_fused")
    logits, bias, hs, hs_scale = sol.make_inputs(T, seed=seed, offset=offset)[:4]
    cfg = {**module._config(2000), "BM": BM}
    n_local = sol.SMALL["E_LOCAL"]
    _, _, sorted_ids, _, n_post = module._route_and_align(logits, bias, 2.5, offset, n_local, cfg)
    rows_max, H = sorted_ids.numel(), hs.shape[1]
    QB = H // hs_scale.shape[0]
    a = torch.full((rows_max, H), 7.0, dtype=hs.dtype)           # sentinel: rows left unwritten
    a_s = torch.full((H // QB, rows_max), 7.0, dtype=torch.float32)
    module._gather_rows_kernel[(rows_max // 16,)](
        hs, hs_scale, a, a_s, sorted_ids, n_post, T, T * 8, rows_max, H,
        TOPK=8, QB=QB, RB=16, NB=2, num_warps=4)
    n = int(n_post)
    entry = sorted_ids[:n].long()
    live = entry < T * 8
    token = torch.where(live, entry // 8, 0)
    want = torch.where(live[:, None], hs[token].float(), 0.0)
    want_s = torch.where(live[None, :], hs_scale[:, token], 0.0)
    return {"rows_ok": bool(torch.equal(a[:n].float(), want)), "scales_ok": bool(torch.equal(a_s[:, :n], want_s)),
            "tail_untouched": bool((a[n:].float() == 7.0).all() and (a_s[:, n:] == 7.0).all()),
            "n_post": n, "live": int(live.sum()), "rows_max": rows_max}


if __name__ == "__main__":
    what, seed, T, offset, extra = sys.argv[1], *map(int, sys.argv[2:5]), json.loads(sys.argv[5])
    fn = outputs_agree if what == "agree" else gathered_rows
    print(json.dumps(fn(seed, T, offset, extra)))
    sys.exit(0)


import pytest  # noqa: E402  (kept below so the subprocess entry above stays light)

pytest.importorskip("triton")


def _interpreted(*args):
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, __file__, *map(str, args[:4]), json.dumps(args[4])],
                          capture_output=True, text=True, env=env, timeout=600, cwd=sol.ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("BM", [16, 128])
def test_gather_kernel_copies_rows_in_sorted_order(BM):
    got = _interpreted("gather", 7, 45, 16, BM)
    assert got["live"] > 0 and got["n_post"] > got["live"], got  # some padding rows to zero
    assert got["rows_ok"] and got["scales_ok"] and got["tail_untouched"], got


@pytest.mark.parametrize("seed,T,offset,over", [
    (2, 33, 0, {}),                                     # tma_a's tiles
    (4, 29, 56, {"BN1": 64, "stages1": 3}),             # tma_a_bn64's
    (6, 40, 8, {"acc": "promote", "stages2": 5}),       # the promoted sum
])
def test_a_tma_output_equals_the_default_path(seed, T, offset, over):
    got = _interpreted("agree", seed, T, offset, over)
    bm, bn1 = PREFILL_TMA["BM"], over.get("BN1", PREFILL_TMA["BN1"])
    tma_off = [[bn1, 128], [bm, bn1], [128, bn1]]                   # W13, C, W2
    assert got["descriptor_blocks"] == tma_off + [[bm, 128]] + tma_off, got  # + A's on the a_tma call
    assert not got["nan"] and got["out_max"] > 1.0, got
    assert got["max_diff"] == 0.0, got


def test_a_tma_passes_the_reference():
    """fib's check against the FP32 reference, as test_moe_solutions' TMA configurations."""
    stats = sol.check_in_subprocess("triton_fused", 3, 40, 8, {**PREFILL_TMA, "a_tma": True})
    sol._assert_close(stats, 5e-2)


def test_a_tma_variants_are_declared_at_prefill():
    module = sol.load_solution("triton_fused")
    declared = module.fib_configs({"seq_len": 14107})
    assert declared["tma_a"] == {**declared["default"], "a_tma": True}
    assert declared["tma_a_bn64"] == {**declared["tma_bn64"], "a_tma": True}
    assert not declared["default"]["a_tma"]
    for T in (1, 7, 14, 80, 901):
        assert not any(c["a_tma"] for c in module.fib_configs({"seq_len": T}).values()), T
