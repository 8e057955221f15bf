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
    (range(1, 9), {"act_kernel", "act_gemm1", "act_kernel_reload", "act_gemm1_reload", "act_kernel_s4"}),
    (range(9, 17), {"route_single", "route_single_reload", "route_tiles4", "route_tiles8", "splitk"}),
    (range(17, 129), {"fp8c_bn64", "rq_bn64", "bn1_32"}),
    (range(129, 1025), {"rq", "rq_bn64", "bm64"}),
    (range(1025, 10**6), {"s34", "bm64_w4"}),
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
    assert launches(module, T) == want
    # config=None, "default" by name, and an empty override all launch the same
    assert launches(module, T, module.fib_configs({"seq_len": T})["default"]) == want
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


def test_no_module_global_changes_a_launch(modules):
    """The former sweep switches are gone: setting them has no effect (configurations replace them)."""
    module = modules["triton_fused"]
    for name in ("ROUTE_ONE_TILE_MAX", "SINGLE_ROUTE_MAX", "ROUTE_TILE_SMALL", "REQUANT_IN_GEMM2", "SPLIT_K"):
        assert not hasattr(module, name), name
