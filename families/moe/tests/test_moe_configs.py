"""triton_fused's and triton_staged's configurations (fib_configs, run(..., config=)).

The default configuration must launch exactly what the kernels launched before configurations
existed: data/default_launches.json holds every launch (kernel, grid, constexprs, signature,
num_warps/num_stages) one run() made at six token counts, recorded on meta tensors of the real
DeepSeek shapes (compile_sm90.record_launches: nothing is allocated, nothing runs) from the code
before this change. Every declared configuration must resolve and launch at its bucket.
"""
import json
from pathlib import Path

import pytest

pytest.importorskip("triton")
from benchmark_module import load  # noqa: E402

compile_sm90 = load("compile_sm90")
GOLDEN = json.loads((Path(__file__).parent / "data" / "default_launches.json").read_text())
DATASET_T = [1, 7, 14, 15, 16, 32, 52, 59, 62, 80, 901, 11948, 14107]
EDGES = [2, 3, 4, 8, 9, 17, 128, 129, 1024, 1025]
# the names each bucket of triton_fused declares besides "default" (benchmarks/NOTES.md, v3-v7b)
FUSED_BUCKETS = [
    (range(1, 9), {"act_kernel", "act_gemm1", "act_kernel_reload", "act_gemm1_reload", "act_kernel_s4",
                   "fin_branch"}),
    (range(9, 17), {"route_single", "route_single_reload", "route_tiles4", "route_tiles8", "splitk", "fin_branch"}),
    (range(17, 129), {"fp8c_bn64", "rq_bn64", "bn1_32", "fin_branch"}),
    (range(129, 1025), {"rq", "rq_bn64", "bm64", "fin_branch"}),
    # v8: TMA by default; v9: fin="branch" by default; candidates: A through TMA too (gathered rows)
    (range(1025, 10**6), {"pointer", "tma_s5", "tma_promote", "tma_bn64", "fin_masked", "route8",
                          "tma_a", "tma_a_bn64"}),
]


@pytest.fixture(scope="module")
def modules():
    return {name: compile_sm90.load_solution(name) for name in ("triton_fused", "triton_staged")}


def launches(module, T, config=None):
    """Every launch as plain JSON, in the fixture's form."""
    out = []
    for fn, sig, consts, attrs, options, grid in compile_sm90.record_launches(module, T, config, grids=True):
        out.append(dict(kernel=fn.__name__, grid=list(grid), consts=consts, options=options, sig=sig,
                        attrs={str(k): v for k, v in attrs.items()}))
    return json.loads(json.dumps(out, default=str))


@pytest.mark.parametrize("solution", ["triton_fused", "triton_staged"])
@pytest.mark.parametrize("T", [1, 7, 14, 80, 901, 14107])
def test_default_launches_are_unchanged(modules, solution, T):
    module = modules[solution]
    want = GOLDEN[f"{solution}/{T}"]
    declared = module.fib_configs({"seq_len": T})
    if solution == "triton_fused" and T > 1024:  # v8 made TMA tiles the prefill default: v7's is "pointer"
        assert launches(module, T, declared["pointer"]) == want
        want = launches(module, T)
        assert want != GOLDEN[f"{solution}/{T}"]
    assert launches(module, T) == want
    # config=None, "default" by name, and an empty override all launch the same
    assert launches(module, T, declared["default"]) == want
    assert launches(module, T, {}) == want


def test_launch_comparison_sees_a_changed_parameter(modules):
    """The comparison above fails on a one-parameter change (stages of gemm2 at T=80; BN at 14)."""
    assert launches(modules["triton_fused"], 80, {"stages2": 5}) != GOLDEN["triton_fused/80"]
    assert launches(modules["triton_staged"], 14, {"BN": 128}) != GOLDEN["triton_staged/14"]


@pytest.mark.parametrize("T", DATASET_T + EDGES)
def test_fused_names_per_bucket(modules, T):
    module = modules["triton_fused"]
    declared = module.fib_configs({"seq_len": T})
    expected = next(names for bucket, names in FUSED_BUCKETS if T in bucket)
    assert list(declared)[0] == "default" and set(declared) - {"default"} == expected
    assert declared["default"] == module._config(T)
    for name, cfg in declared.items():
        assert set(cfg) == set(module.CONFIG_DOC), name
        assert module._invalid(cfg) is None, (name, cfg)
        assert module._resolve(T, cfg) == cfg
    others = [json.dumps(c, sort_keys=True) for n, c in declared.items() if n != "default"]
    assert len(set(others)) == len(others), "two names for one configuration"


@pytest.mark.parametrize("T", [1, 7, 15, 80, 901, 14107])
def test_every_declared_configuration_launches(modules, T):
    """Each named configuration builds its launches (on meta tensors) and differs from the default
    where it says it does (the default's twin at T=1 and T=7 aside)."""
    for solution, module in modules.items():
        declared = module.fib_configs({"seq_len": T})
        default = launches(module, T)
        for name, cfg in declared.items():
            got = launches(module, T, cfg)
            assert got, (solution, name)
            if cfg == declared["default"]:
                assert got == default, (solution, name)
            else:
                assert got != default, (solution, name)


def test_fused_config_errors_name_the_key(modules):
    module = modules["triton_fused"]
    with pytest.raises(ValueError, match="unknown configuration key.*REQUANT_IN_GEMM2"):
        module._resolve(14, {"REQUANT_IN_GEMM2": False})
    with pytest.raises(ValueError, match="BN2=96 is not a power of 2"):
        module._resolve(14, {"BN2": 96})
    with pytest.raises(ValueError, match="act='kernel' needs split > 1"):
        module._resolve(80, {"act": "kernel"})
    with pytest.raises(ValueError, match="split > 1"):
        module._resolve(7, {"c_dtype": "fp8"})  # act gemm1 at T=7 writes bf16 C
    with pytest.raises(ValueError, match="unknown configuration key.*quant"):
        modules["triton_staged"]._resolve(7, {"quant": True})
    # v8: what the TMA kernels cannot run
    with pytest.raises(ValueError, match="tma=True needs split=1"):
        module._resolve(7, {"tma": True})
    with pytest.raises(ValueError, match="tma=True needs c_dtype='fp8'"):
        module._resolve(80, {"tma": True})  # bf16 C up to 128 tokens
    with pytest.raises(ValueError, match="tma=True needs BN1 >= 32"):
        module._resolve(2000, {"tma": True, "BN1": 16})
    with pytest.raises(ValueError, match="tma=True needs BN2 <= 128"):
        module._resolve(2000, {"tma": True, "BN2": 256})
    with pytest.raises(ValueError, match="tma=True needs BM <= 256"):
        module._resolve(2000, {"tma": True, "BM": 512})
    with pytest.raises(ValueError, match="acc='rescale' needs tma=True"):
        module._resolve(2000, {"tma": False})  # the prefill default carries the rescaled sum
    with pytest.raises(ValueError, match="acc='exact' is not one of"):
        module._resolve(2000, {"tma": True, "acc": "exact"})
    # v9 candidate: A through TMA needs the unsplit TMA gemm1
    with pytest.raises(ValueError, match="a_tma=True needs tma=True and split=1"):
        module._resolve(2000, {"a_tma": True, "tma": False, "acc": "promote"})
    with pytest.raises(ValueError, match="a_tma=True needs tma=True and split=1"):
        module._resolve(7, {"a_tma": True})
    with pytest.raises(ValueError, match="a_tma='yes' is not one of"):
        module._resolve(2000, {"a_tma": "yes"})


@pytest.mark.parametrize("T", [11948, 14107])
def test_tma_configurations_launch_the_descriptor_kernels(modules, T):
    """The default and each TMA variant launch the TMA gemm1/gemm2 (descriptors typed by their blocks:
    W13 [BN1, 128], C [BM, BN1], W2 [BN2, BN1]) with its RESCALE, and the routing and finalize
    kernels as v7's pointer-loaded configuration ("pointer") does; "pointer" launches neither TMA kernel.
    a_tma: the gather kernel (one program per 16 of the row bound) and the A-by-TMA gemm1 (A [BM, 128])."""
    module = modules["triton_fused"]
    declared = module.fib_configs({"seq_len": T})
    default = {r["kernel"]: r for r in launches(module, T, declared["pointer"])}
    assert not any("tma" in k for k in default), default.keys()
    assert {r["kernel"] for r in launches(module, T)} == {r["kernel"] for r in launches(module, T, declared["default"])}
    for name in ("default", "tma_s5", "tma_promote", "tma_bn64", "tma_a", "tma_a_bn64"):
        cfg = declared[name]
        runs = launches(module, T, cfg)
        got = {r["kernel"]: r for r in runs}
        if cfg["fin"] == "branch":  # v9's finalize: the same grid, a kernel of its own
            fin = got.pop("_finalize_branch_kernel")
            assert fin["grid"] == default["_finalize_reduce_kernel"]["grid"], name
            got["_finalize_reduce_kernel"] = default["_finalize_reduce_kernel"]
        want = {k.replace("_kernel", "_tma_kernel") if k.startswith("_gemm") else k for k in default}
        bn1, bm, bn2 = cfg["BN1"], cfg["BM"], cfg["BN2"]
        if cfg["a_tma"]:  # the gather kernel right before gemm1, which reads A by TMA as well
            want = want - {"_gemm1_swiglu_tma_kernel"} | {"_gather_rows_kernel", "_gemm1_swiglu_tma_a_kernel"}
            order = [r["kernel"] for r in runs]
            assert order.index("_gather_rows_kernel") + 1 == order.index("_gemm1_swiglu_tma_a_kernel"), order
            g1 = got["_gemm1_swiglu_tma_a_kernel"]
            assert g1["sig"]["a_desc"] == f"tensordesc<fp8e4nv[{bm}, 128]>", (name, g1["sig"])
            rows = default["_gemm1_swiglu_kernel"]["grid"][0] // (2048 // 128) * bm  # the default's row bound
            gather = got["_gather_rows_kernel"]
            assert gather["grid"] == [rows // gather["consts"]["RB"]], (name, gather)
        else:
            g1 = got["_gemm1_swiglu_tma_kernel"]
        assert set(got) == want, (name, got.keys())
        g2 = got["_gemm2_combine_tma_kernel"]
        assert g1["sig"]["w_desc"] == f"tensordesc<fp8e4nv[{bn1}, 128]>", (name, g1["sig"])
        assert g2["sig"]["c_desc"] == f"tensordesc<fp8e4nv[{bm}, {bn1}]>", (name, g2["sig"])
        assert g2["sig"]["w_desc"] == f"tensordesc<fp8e4nv[{bn2}, {bn1}]>", (name, g2["sig"])
        rescale = cfg["acc"] == "rescale"
        assert g1["consts"]["RESCALE"] is rescale and g2["consts"]["RESCALE"] is rescale, name
        assert g2["consts"]["QG"] == bn1, name
        assert (g1["options"], g2["options"]) == (
            {"num_warps": cfg["warps"], "num_stages": cfg["stages1"]},
            {"num_warps": cfg["warps"], "num_stages": cfg["stages2"]}), name
        if bn1 == declared["default"]["BN1"]:  # same tiles: same grids
            assert g1["grid"] == default["_gemm1_swiglu_kernel"]["grid"], name
            assert g2["grid"] == default["_gemm2_combine_kernel"]["grid"], name
        for k in default:
            if not k.startswith("_gemm"):
                assert got[k] == default[k], (name, k)


def test_no_module_global_changes_a_launch(modules):
    """The former sweep switches are gone: setting them has no effect (configurations replace them)."""
    module = modules["triton_fused"]
    for name in ("ROUTE_ONE_TILE_MAX", "SINGLE_ROUTE_MAX", "ROUTE_TILE_SMALL", "REQUANT_IN_GEMM2", "SPLIT_K"):
        assert not hasattr(module, name), name
