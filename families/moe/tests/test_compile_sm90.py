"""triton_fused's kernels compile for SM90 (code generation, not the interpreter), on the CPU.

The interpreter that the other CPU tests use never generates code, so errors that only the
compiler raises (a loop-carried variable changing type, an unsupported layout) would otherwise
first show on the GPU machine. families/moe/benchmarks/compile_sm90.py records one run()'s launches on meta
tensors of the real DeepSeek shapes and compiles each with the installed Triton's ptxas.
"""

import pytest

pytest.importorskip("triton")
from benchmark_module import load  # noqa: E402

compile_sm90 = load("compile_sm90")


@pytest.fixture(scope="module")
def fused():
    return compile_sm90.load_solution("triton_fused")


@pytest.mark.parametrize("T,config", [
    (1, None), (7, None), (3, {"act": "gemm1", "c_dtype": "bf16"}),   # split-K (SwiGLU apart / in gemm1)
    (14, None), (14, {"c_dtype": "fp8", "BN2": 64}),                   # small bucket (fp8 C from gemm1)
    (901, None), (11948, None),                                        # mid bucket, prefill
    (20, {"route": "single", "route_tile": 16}),                       # single-program routing, two tiles
])
def test_fused_kernels_compile_for_sm90(fused, T, config):
    rows = compile_sm90.compile_run(fused, T, config=config)
    names = {r["kernel"] for r in rows}
    assert any(n.startswith("_gemm2") for n in names), names
    for r in rows:
        assert r.get("reg", 0) > 0, r  # the cubin's resource report was read
        # prefill gemm1 spills 64 bytes under Triton 3.6 (the GPU machine's), 248 under 3.9; the
        # rest nothing: this only catches the kilobytes a layout mistake costs
        assert r.get("stack", 0) <= 1024, r


# v8: the TMA prefill configurations at a dataset size: (gemm1, gemm2) CTAs per SM they are
# built for (benchmarks/NOTES.md, "v8 (TMA weight tiles): prediction")
TMA_CTAS = {"default": (1, 2), "tma_s5": (1, 1), "tma_promote": (1, 1), "tma_bn64": (2, 2),
            "tma_a": (1, 2), "tma_a_bn64": (2, 2)}  # v9 candidates: A through TMA too


@pytest.mark.parametrize("name", sorted(TMA_CTAS))
def test_tma_prefill_configurations_compile_for_sm90(fused, name):
    """Each v8 configuration's gemm1 and gemm2 compile at 14107 tokens with bulk tensor copies
    (gemm2: no cp.async left, both operands by TMA); the rescaled sums spill nothing; each fits
    the CTAs per SM it is meant to. Registers, spills and shared memory are printed (-s)."""
    cfg = fused.fib_configs({"seq_len": 14107})[name]
    rows = {r["kernel"]: r for r in compile_sm90.compile_run(fused, 14107, config=cfg)}
    g1 = rows["_gemm1_swiglu_tma_a_kernel" if cfg["a_tma"] else "_gemm1_swiglu_tma_kernel"]
    g2 = rows["_gemm2_combine_tma_kernel"]
    if cfg["a_tma"]:  # every gemm1 operand by bulk copy; the gather is a plain copy kernel
        gather = rows["_gather_rows_kernel"]
        print(f"{name:12} {gather['kernel']:28} w{gather['warps']} reg={gather['reg']} "
              f"stack={gather.get('stack')} cta/SM={gather['ctas_per_sm']}")
        assert g1["cp_async"] == 0, g1
        assert gather.get("stack", 0) == 0 and gather["wgmma"] == 0 and gather["ctas_per_sm"] >= 4, gather
    for r in (g1, g2):
        print(f"{name:12} {r['kernel']:28} w{r['warps']} s{r['stages']} reg={r['reg']} "
              f"stack={r.get('stack')} smem={r['shared_bytes']} tma={r['tma']} cta/SM={r['ctas_per_sm']}")
        assert r["tma"] > 0 and r["wgmma"] > 0, r
        spill_max = 0 if cfg["acc"] == "rescale" else 1024  # the promoted gemm1 spills 128 bytes
        assert r.get("stack", 0) <= spill_max, r
    assert g2["cp_async"] == 0, g2
    assert (g1["ctas_per_sm"], g2["ctas_per_sm"]) == TMA_CTAS[name], (g1, g2)


def test_ctas_per_sm_counts_each_limit():
    assert compile_sm90.ctas_per_sm(255, 196608, 8) == 1    # the default prefill gemm1
    assert compile_sm90.ctas_per_sm(124, 98328, 8) == 2     # 124 -> 128 registers: exactly 2
    assert compile_sm90.ctas_per_sm(130, 98328, 8) == 1     # 136 registers: one
    assert compile_sm90.ctas_per_sm(64, 120000, 4) == 1     # shared memory decides
    assert compile_sm90.ctas_per_sm(32, 0, 32) == 2         # threads decide
