"""The peer solutions (deepgemm, torch_cublaslt, vllm_fused_moe) on CPU, against FAKES of the libraries.

Each fake checks that the arguments it receives follow the library's documented contract (shapes,
dtypes, strides, the meaning of padding rows) and then computes what the library computes, in
torch, writing NaN wherever the real library would leave memory untouched. So these tests check
the argument preparation and layouts, and that the solution's own pieces (our Triton routing,
gather, SwiGLU, combine under TRITON_INTERPRET=1) produce the right layer output from what the
library returns. Whether the real kernels honour the contract is checked on the H200 only
(benchmarks/gpu_peers.sh for deepgemm and torch_cublaslt; vllm is not installed there).

Contracts, from the libraries' sources:
- DeepGEMM 2.6.1 (csrc/apis/gemm.hpp, csrc/apis/layout.hpp, csrc/utils/layout.hpp, scheduler/gemm.cuh):
  SM90 FP32 activation scales MN-major and TMA-aligned (stride 1 along M, stride align(M, 4) along K;
  masked: [G, M, K/128] with group stride align(M, 4) * K/128); weight scales [G, N/128, K/128]
  contiguous; m_indices [M] int32, a block of BLOCK_M rows is skipped when its first row is -1;
  masked_m [G] int32, expected_m > 0; outputs bf16, N-major.
- torch.nn.functional.scaled_mm (ATen ScaledBlas.cpp, BlockWise1x128 x BlockWise128x128): a [M, K]
  row-major, b [K, N] column-major, scale_a [M, K/128] strides (1, M), scale_b [K/128, N/128]
  strides (1, K/128).
- vLLM fused_experts: w1 [E, 2I, H] whose FIRST half goes through SiLU, block_shape [128, 128],
  bf16 hidden states quantized per 1x128 group inside, expert_map global -> local or -1.

Run `python tests/test_peer_solutions.py <case>` to see one case's numbers.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
# test_moe_solutions (inputs, reference) lives in tests/ or, after the layout change, families/moe/tests/
for p in (str(ROOT), str(TESTS), str(ROOT / "families" / "moe" / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)
SOL_ROOT = ROOT / "solutions" / "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"
BLOCK = 128
NAN = float("nan")


# ---- DeepGEMM fake ----------------------------------------------------------------------------
def _tma_aligned(m):
    return -(-m // 4) * 4


def _dequant_rows(a, sfa):
    return a.float() * sfa.float().repeat_interleave(BLOCK, dim=-1)[..., :a.shape[-1]]


def _dequant_weights(w, sfw):
    return w.float() * sfw.float().repeat_interleave(BLOCK, -2).repeat_interleave(BLOCK, -1)[..., :w.shape[-2], :w.shape[-1]]


def _check_b(b):
    w, sfw = b
    assert w.dtype == torch.float8_e4m3fn and w.dim() == 3 and w.is_contiguous(), "B: [G, N, K] fp8, K-major"
    G, N, K = w.shape
    assert sfw.dtype == torch.float32 and tuple(sfw.shape) == (G, -(-N // BLOCK), -(-K // BLOCK)), sfw.shape
    assert sfw.is_contiguous(), "SM90 SFB must be contiguous [G, N/128, K/128]"
    return G, N, K


class FakeDeepGEMM(types.ModuleType):
    def __init__(self, alignment=128):
        super().__init__("deep_gemm")
        self.alignment = alignment
        self.calls = []
        self.__version__ = "fake"
        self.__file__ = "fake"

    def get_mk_alignment_for_contiguous_layout(self):
        return self.alignment

    def m_grouped_fp8_gemm_nt_contiguous(self, a, b, d, m_indices):
        x, sfa = a
        G, N, K = _check_b(b)
        M = x.shape[0]
        assert x.dtype == torch.float8_e4m3fn and x.is_contiguous() and x.shape[1] == K, "A: [M, K] fp8, K-major"
        assert sfa.dtype == torch.float32 and tuple(sfa.shape) == (M, K // BLOCK), sfa.shape
        assert sfa.stride() == (1, _tma_aligned(M)), f"SFA must be MN-major TMA-aligned, got strides {sfa.stride()}"
        assert d.dtype == torch.bfloat16 and tuple(d.shape) == (M, N) and d.is_contiguous()
        assert m_indices.dtype == torch.int32 and m_indices.is_contiguous() and m_indices.numel() == M
        assert M % self.alignment == 0, "M is a whole number of aligned blocks"
        self.calls.append(("contiguous", M, N, K))
        d.fill_(NAN)
        w = _dequant_weights(*b)
        for start in range(0, M, self.alignment):
            block = m_indices[start:start + self.alignment]
            expert = int(block[0])
            if expert < 0:
                continue  # skipped, as DeepGEMM's scheduler does
            assert ((block == expert) | (block == -1)).all(), "a block mixes experts"
            assert 0 <= expert < G
            rows = slice(start, start + self.alignment)
            d[rows] = (_dequant_rows(x[rows], sfa[rows]) @ w[expert].t()).to(torch.bfloat16)

    def m_grouped_fp8_gemm_nt_masked(self, a, b, d, masked_m, expected_m):
        x, sfa = a
        G, N, K = _check_b(b)
        assert x.dtype == torch.float8_e4m3fn and x.is_contiguous() and x.dim() == 3, "A: [G, M, K] fp8"
        _, M, _ = x.shape
        KB = K // BLOCK
        assert tuple(sfa.shape) == (G, M, KB) and sfa.dtype == torch.float32, sfa.shape
        assert sfa.stride() == (_tma_aligned(M) * KB, 1, _tma_aligned(M)), f"masked SFA strides {sfa.stride()}"
        assert tuple(d.shape) == (G, M, N) and d.dtype == torch.bfloat16 and d.is_contiguous()
        assert masked_m.dtype == torch.int32 and masked_m.numel() == G and masked_m.is_contiguous()
        assert isinstance(expected_m, int) and expected_m > 0
        assert int(masked_m.max()) <= M
        self.calls.append(("masked", M, N, K, expected_m))
        d.fill_(NAN)
        w = _dequant_weights(*b)
        for g in range(G):
            m = int(masked_m[g])
            d[g, :m] = (_dequant_rows(x[g, :m], sfa[g, :m]) @ w[g].t()).to(torch.bfloat16)


# ---- scaled_mm fake ---------------------------------------------------------------------------
def fake_scaled_mm(calls, scale_b_rows_multiple=1):
    import torch.nn.functional as F

    def scaled_mm(mat_a, mat_b, scale_a, recipe_a, scale_b, recipe_b, swizzle_a=None, swizzle_b=None, bias=None,
                  output_dtype=torch.bfloat16, contraction_dim=(), use_fast_accum=False):
        M, K = mat_a.shape
        N = mat_b.shape[1]
        assert recipe_a == F.ScalingType.BlockWise1x128 and recipe_b == F.ScalingType.BlockWise128x128
        assert mat_a.dtype == mat_b.dtype == torch.float8_e4m3fn
        assert mat_a.stride() == (K, 1), f"mat_a must be row-major, got {mat_a.stride()}"
        assert mat_b.shape[0] == K and mat_b.stride() == (1, K), f"mat_b must be column-major, got {mat_b.stride()}"
        assert tuple(scale_a.shape) == (M, K // BLOCK) and scale_a.stride() == (1, M), \
            f"scale_a must have shape ({M}, {K // BLOCK}) strides (1, {M}); got {tuple(scale_a.shape)} {scale_a.stride()}"
        kb = -(-(K // BLOCK) // scale_b_rows_multiple) * scale_b_rows_multiple
        if tuple(scale_b.shape) != (kb, N // BLOCK) or scale_b.stride() != (1, kb):
            raise RuntimeError(f"scale_b must have shape ({kb}, {N // BLOCK}) strides (1, {kb}); "
                               f"got {tuple(scale_b.shape)} {scale_b.stride()}")
        assert output_dtype == torch.bfloat16
        calls.append((M, N, K))
        a = _dequant_rows(mat_a, scale_a)
        w = _dequant_weights(mat_b.t(), scale_b.t()[:, :K // BLOCK])
        return (a @ w.t()).to(torch.bfloat16)
    return scaled_mm


# ---- vLLM fake --------------------------------------------------------------------------------
class FakeVLLM:
    """vllm.model_executor.layers.fused_moe (fused_experts) and its config module."""

    def __init__(self):
        self.calls = []

    def install(self):
        names = ["vllm", "vllm.model_executor", "vllm.model_executor.layers",
                 "vllm.model_executor.layers.fused_moe", "vllm.model_executor.layers.fused_moe.config"]
        mods = {n: types.ModuleType(n) for n in names}
        mods["vllm.model_executor.layers.fused_moe"].fused_experts = self.fused_experts
        mods["vllm.model_executor.layers.fused_moe.config"].fp8_w8a8_moe_quant_config = \
            lambda w1_scale, w2_scale, block_shape=None, **kw: dict(w1_scale=w1_scale, w2_scale=w2_scale,
                                                                    block_shape=block_shape, **kw)
        sys.modules.update(mods)

    def fused_experts(self, hidden_states, w1, w2, topk_weights, topk_ids, inplace=False, activation="silu",
                      apply_router_weight_on_input=False, global_num_experts=-1, expert_map=None,
                      quant_config=None):
        self.calls.append(dict(hidden_states=hidden_states, w1=w1, w2=w2, topk_weights=topk_weights,
                               topk_ids=topk_ids, expert_map=expert_map, quant_config=quant_config,
                               global_num_experts=global_num_experts, activation=activation))
        assert hidden_states.dtype == torch.bfloat16, "vLLM's fused_experts takes bf16/fp16/fp32 activations"
        assert quant_config["block_shape"] == [BLOCK, BLOCK]
        assert activation == "silu" and not inplace
        assert expert_map is not None and expert_map.numel() == global_num_experts
        T, H = hidden_states.shape
        groups = hidden_states.float().view(T, H // BLOCK, BLOCK)
        scale = groups.abs().amax(-1, keepdim=True).clamp_min(1e-10) / 448.0  # vLLM's per-token-group quant
        x = ((groups / scale).to(torch.float8_e4m3fn).float() * scale).view(T, H)
        W1 = _dequant_weights(w1, quant_config["w1_scale"])
        W2 = _dequant_weights(w2, quant_config["w2_scale"])
        inter = W2.shape[2]
        out = torch.zeros(T, H)
        for t in range(T):
            for k in range(topk_ids.shape[1]):
                local = int(expert_map[int(topk_ids[t, k])])
                if local < 0:
                    continue
                g = W1[local] @ x[t]
                out[t] += float(topk_weights[t, k]) * (W2[local] @ (torch.nn.functional.silu(g[:inter]) * g[inter:]))
        return out.to(hidden_states.dtype)


# ---- running one case (in a subprocess: TRITON_INTERPRET must be set before triton is imported) --
def load_peer(folder, entry):
    if str(SOL_ROOT) not in sys.path:
        sys.path.insert(0, str(SOL_ROOT))
    spec = importlib.util.spec_from_file_location(f"peer_{folder}", SOL_ROOT / folder / entry)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def judge(out, inputs):
    from fib.harness.check import check_outputs
    from fib.schema import Definition, Tolerance, load_model
    from test_moe_solutions import PER_ELEMENT, SIBLING_DEFINITION, reference
    definition = load_model(SIBLING_DEFINITION, Definition)
    ref = reference(*inputs)
    result = check_outputs(definition, definition.resolve_axes({"seq_len": out.shape[0]}), [out], [ref],
                           Tolerance(**PER_ELEMENT, name="test_peer_solutions"))
    c = result.correctness
    return {"status": result.status.value, "reason": result.reason,
            "rel_l2": None if c is None else c.relative_l2_error, "nan": bool(out.isnan().any())}


def run_case(case, T, seed=0, offset=8):
    from test_moe_solutions import SMALL, make_inputs
    inputs = make_inputs(T, seed=seed, offset=offset)
    out = torch.full((T, SMALL["H"]), NAN, dtype=torch.bfloat16)
    info = {}
    if case.startswith("deepgemm"):
        fake = FakeDeepGEMM()
        sys.modules["deep_gemm"] = fake
        module = load_peer("deepgemm", "moe_deepgemm.py")
        if case == "deepgemm_contiguous":
            module.MASKED_MAX = 0
        module.run(*inputs, out)
        info["calls"] = [c[0] for c in fake.calls]
    elif case.startswith("cublaslt"):
        import torch.nn.functional as F
        calls = []
        F.scaled_mm = fake_scaled_mm(calls, scale_b_rows_multiple=4 if case == "cublaslt_padded_scale_b" else 1)
        module = load_peer("torch_cublaslt", "moe_cublaslt.py")
        module.run(*inputs, out)
        info["gemms"] = len(calls)
        info["scale_b_padded"] = module._SCALE_B_PADDED[0]
    elif case.startswith("vllm"):
        fake = FakeVLLM()
        fake.install()
        module = load_peer("vllm_fused_moe", "moe_vllm.py")
        if case == "vllm_no_restack":  # a wrong adapter: W13 passed as [up; gate]
            module.gate_first = lambda w, s: (w.contiguous(), s.float().contiguous())
        module.run(*inputs, out)
        module.run(*inputs, out)  # second call: the re-stacked weights come from the cache
        call = fake.calls[0]
        I = inputs[6].shape[2]
        info["w1_is_gate_first"] = bool(torch.equal(call["w1"][:, :I].view(torch.uint8),
                                                    inputs[4][:, I:].view(torch.uint8)))
        info["same_w1_object"] = fake.calls[1]["w1"] is call["w1"]
        info["expert_map"] = call["expert_map"].tolist()
    else:
        raise ValueError(case)
    return {**judge(out, inputs[:10]), **info}


def in_subprocess(case, T):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, __file__, case, str(T)], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("case,T", [("deepgemm_masked", 5), ("deepgemm_contiguous", 6)])
def test_deepgemm_layouts_pass(case, T):
    stats = in_subprocess(case, T)
    assert stats["status"] == "PASSED" and not stats["nan"], stats
    assert stats["rel_l2"] < 0.03, stats
    assert set(stats["calls"]) == {case.split("_")[1]}, stats


@pytest.mark.parametrize("case", ["cublaslt", "cublaslt_padded_scale_b"])
def test_cublaslt_layouts_pass(case):
    stats = in_subprocess(case, 5)
    assert stats["status"] == "PASSED" and not stats["nan"], stats
    assert stats["rel_l2"] < 0.03, stats
    assert stats["gemms"] >= 2 and stats["gemms"] % 2 == 0, stats  # GEMM1 and GEMM2 per expert hit
    assert stats["scale_b_padded"] == (case == "cublaslt_padded_scale_b"), stats


def test_vllm_adapter_restacks_once_and_passes():
    stats = in_subprocess("vllm", 4)
    assert stats["status"] == "PASSED", stats
    assert stats["w1_is_gate_first"] and stats["same_w1_object"], stats
    expected = [-1] * 64
    expected[8:16] = list(range(8))
    assert stats["expert_map"] == expected


def test_vllm_wrong_restack_fails():
    stats = in_subprocess("vllm_no_restack", 4)
    assert stats["status"] != "PASSED", stats
    assert not stats["w1_is_gate_first"], stats


def _fp8(*shape):
    return torch.randn(*shape).to(torch.float8_e4m3fn)


def test_fake_deepgemm_refuses_k_major_scales():
    fake = FakeDeepGEMM()
    M, N, K, G = 128, 256, 256, 2
    b = (_fp8(G, N, K), torch.ones(G, N // BLOCK, K // BLOCK))
    d = torch.empty(M, N, dtype=torch.bfloat16)
    m_indices = torch.zeros(M, dtype=torch.int32)
    with pytest.raises(AssertionError, match="MN-major"):
        fake.m_grouped_fp8_gemm_nt_contiguous((_fp8(M, K), torch.ones(M, K // BLOCK)), b, d, m_indices)
    fake.m_grouped_fp8_gemm_nt_contiguous((_fp8(M, K), torch.ones(K // BLOCK, M).t()), b, d, m_indices)
    assert not d.isnan().any()


def test_fake_scaled_mm_refuses_a_strided_scale_slice():
    """A per-expert slice of one block-major scale buffer has strides (1, rows of all experts), which
    cuBLASLt's recipe refuses: the solution copies each expert's scale block (expert_gemm)."""
    import torch.nn.functional as F
    scaled_mm = fake_scaled_mm([])
    rows, M, K, N = 64, 16, 256, 128
    a_scale_bm = torch.ones(K // BLOCK, rows)
    w, ws = _fp8(N, K), torch.ones(N // BLOCK, K // BLOCK)
    args = (_fp8(M, K), w.t())
    with pytest.raises(AssertionError, match="scale_a"):
        scaled_mm(*args, a_scale_bm[:, :M].t(), F.ScalingType.BlockWise1x128, ws.t(), F.ScalingType.BlockWise128x128)
    scaled_mm(*args, a_scale_bm[:, :M].contiguous().t(), F.ScalingType.BlockWise1x128, ws.t(),
              F.ScalingType.BlockWise128x128)


def test_peers_report_unsupported_with_reasons_here():
    from fib.solutions import device_info
    info = device_info("cpu")
    for folder, entry in (("deepgemm", "moe_deepgemm.py"), ("torch_cublaslt", "moe_cublaslt.py")):
        module = load_peer(folder, entry)
        assert "CPU" in module.fib_supported(info, {})
    sys.modules.pop("deep_gemm", None)
    dg = load_peer("deepgemm", "moe_deepgemm.py")
    reason = dg.fib_supported({"type": "cuda", "sm": 90, "name": "H200"}, {})
    assert reason and "pip install git+https://github.com/deepseek-ai/DeepGEMM.git" in reason
    assert "sm100" in dg.fib_supported({"type": "cuda", "sm": 100, "name": "B200"}, {})


if __name__ == "__main__":
    print(json.dumps(run_case(sys.argv[1], int(sys.argv[2]))))
