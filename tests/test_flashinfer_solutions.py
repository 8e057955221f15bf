"""The FlashInfer solutions (flashinfer_cutlass, flashinfer_trtllm) without FlashInfer or a GPU.

A FAKE `flashinfer` package is put in `sys.modules`: it records the arguments the wrappers pass
and, for `cutlass_fused_moe`, computes the MoE the way FlashInfer documents it (fc1 rows
[w3 = up; w1 = gate], silu(gate) * up, 128x128 weight blocks scaled by quant_scales[0/1], expert
parallelism: global ids, rank r holds experts [r * E_local, (r + 1) * E_local)). So these tests
check the wrappers' argument preparation and layouts against the documented contract; whether the
real kernels honour that contract is only checked on a GPU (unverified here).

Shapes are tiny (64 experts in 8 groups, 8 local, hidden 256, intermediate 128); the wrappers read
every size from the tensors.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fib.harness.check import check_outputs  # noqa: E402
from fib.schema import Definition, Solution, Status, Tolerance, load_model  # noqa: E402

SOLUTIONS = ROOT / "solutions" / "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"
CUTLASS_DIR = SOLUTIONS / "flashinfer_cutlass"
TRTLLM_DIR = SOLUTIONS / "flashinfer_trtllm"
E, E_LOCAL, H, I, T = 64, 8, 256, 128, 6
BLOCK = 128


# ---- helpers ----------------------------------------------------------------------------------
def load(folder: Path, entry: str, tag: str):
    spec = importlib.util.spec_from_file_location(f"fib_test_{folder.name}_{tag}", folder / entry)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cutlass():
    return load(CUTLASS_DIR, "moe_cutlass.py", "c")


@pytest.fixture
def trtllm():
    return load(TRTLLM_DIR, "moe_trtllm.py", "t")


def quantize_blocks(x, bm, bk):
    *lead, m, k = x.shape
    blocks = x.reshape(*lead, m // bm, bm, k // bk, bk)
    scale = blocks.abs().amax(dim=(-3, -1)).clamp_min(1e-12) / 448.0
    q = (blocks / scale[..., :, None, :, None]).to(torch.float8_e4m3fn)
    return q.reshape(*lead, m, k), scale.float()


def make_inputs(seed=0, offset=16, tokens=T, experts=E, local=E_LOCAL, hidden=H, inter=I, scaling=2.5,
                favour_local=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens, experts, generator=g) * 2
    bias = torch.randn(experts, generator=g) * 0.3
    if favour_local:  # make sure tokens reach this rank's experts
        bias[offset:offset + local] += 0.6
    bias = bias.to(torch.bfloat16)
    x = torch.randn(tokens, hidden, generator=g) * 3
    hs, hs_scale = quantize_blocks(x, 1, BLOCK)                 # scale [T, H/128]
    w1q, w1s = quantize_blocks(torch.randn(local, 2 * inter, hidden, generator=g) / hidden ** 0.5, BLOCK, BLOCK)
    w2q, w2s = quantize_blocks(torch.randn(local, hidden, inter, generator=g) / inter ** 0.5, BLOCK, BLOCK)
    output = torch.full((tokens, hidden), float("nan"), dtype=torch.bfloat16)
    return [logits, bias, hs, hs_scale.t().contiguous(), w1q, w1s, w2q, w2s, offset, scaling, output]


def expand(scale, bm, bk):
    return scale.repeat_interleave(bm, -2).repeat_interleave(bk, -1)


def reference_routing(logits, bias, scaling, n_group=8, topk_group=4, top_k=8):
    """Dense formulation of the definition's routing (written apart from the solutions')."""
    s = 1.0 / (1.0 + torch.exp(-logits.float()))
    sb = s + bias.float()
    t, e = s.shape
    gs = e // n_group
    group_scores = torch.topk(sb.view(t, n_group, gs), 2, dim=2).values.sum(2)
    mask = torch.zeros_like(group_scores)
    mask.scatter_(1, torch.topk(group_scores, topk_group, dim=1).indices, 1.0)
    mask = mask.unsqueeze(2).expand(t, n_group, gs).reshape(t, e)
    pruned = sb.masked_fill(mask == 0, torch.finfo(torch.float32).min)
    idx = torch.topk(pruned, top_k, dim=1).indices
    m = torch.zeros_like(s).scatter_(1, idx, 1.0)
    w = s * m
    w = w / (w.sum(1, keepdim=True) + 1e-20) * scaling
    return idx, w  # ids [T, k], dense weights [T, E]


def assert_passes(output, ref, tol: Tolerance):
    """fib's own check of a wrapper's bf16 output against `ref`, on the sibling definition's
    output spec with this file's (smaller) hidden size."""
    defn = load_model(ROOT / "definitions" / "moe" / "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e8_h512_i256.json",
                      Definition)
    axes = {"seq_len": output.shape[0], "hidden_size": output.shape[1]}
    result = check_outputs(defn, axes, [output], [ref], tol)
    assert result.status == Status.PASSED, result.reason
    return result.correctness


def reference_moe(logits, bias, hs, hs_scale, w1, w1s, w2, w2s, offset, scaling):
    """The definition in FP32: G1 rows [0:I] up, [I:2I] gate, C = silu(gate) * up."""
    idx, dense_w = reference_routing(logits, bias, scaling)
    x = hs.float() * expand(hs_scale.t(), 1, BLOCK)
    W1 = w1.float() * expand(w1s, BLOCK, BLOCK)
    W2 = w2.float() * expand(w2s, BLOCK, BLOCK)
    inter = W2.shape[2]
    out = torch.zeros(x.shape[0], W2.shape[1])
    for le in range(W1.shape[0]):
        ge = offset + le
        tok = (idx == ge).any(1).nonzero().flatten()
        if tok.numel() == 0:
            continue
        g1 = x[tok] @ W1[le].t()
        c = F.silu(g1[:, inter:]) * g1[:, :inter]
        out[tok] += (c @ W2[le].t()) * dense_w[tok, ge, None]
    return out


# ---- the fake flashinfer ----------------------------------------------------------------------
class Recorder:
    def __init__(self):
        self.calls: dict[str, list[dict]] = {}

    def add(self, name, **kwargs):
        self.calls.setdefault(name, []).append(kwargs)

    def one(self, name):
        assert len(self.calls.get(name, [])) == 1, f"{name} called {len(self.calls.get(name, []))} times"
        return self.calls[name][0]


def fake_cutlass_fused_moe(rec):
    def cutlass_fused_moe(input, token_selected_experts, token_final_scales, fc1_expert_weights,
                          fc2_expert_weights, output_dtype, quant_scales, fc1_expert_biases=None,
                          fc2_expert_biases=None, input_sf=None, swiglu_alpha=None, swiglu_beta=None,
                          swiglu_limit=None, tp_size=1, tp_rank=0, ep_size=1, ep_rank=0, cluster_size=1,
                          cluster_rank=0, output=None, enable_alltoall=False, use_deepseek_fp8_block_scale=False,
                          use_w4_group_scaling=False, use_mxfp8_act_scaling=False, min_latency_mode=False,
                          use_packed_weights=False, tune_max_num_tokens=8192, enable_pdl=None):
        rec.add("cutlass_fused_moe", **{k: v for k, v in locals().items() if k != "rec"})
        # FlashInfer's documented semantics
        n_local = fc1_expert_weights.shape[0]
        inter = fc2_expert_weights.shape[2]
        w1 = fc1_expert_weights.float() * expand(quant_scales[0], BLOCK, BLOCK)
        w2 = fc2_expert_weights.float() * expand(quant_scales[1], BLOCK, BLOCK)
        x = input.float()
        out = torch.zeros(x.shape[0], w2.shape[1])
        for t in range(x.shape[0]):
            for k in range(token_selected_experts.shape[1]):
                le = int(token_selected_experts[t, k]) - ep_rank * n_local
                if 0 <= le < n_local:
                    g = x[t] @ w1[le].t()
                    w3_up, w1_gate = g[:inter], g[inter:]
                    out[t] += token_final_scales[t, k] * ((F.silu(w1_gate) * w3_up) @ w2[le].t())
        if output is None:
            output = torch.empty(out.shape, dtype=output_dtype)
        output.copy_(out.to(output_dtype))
        return [output]
    return cutlass_fused_moe


def fake_fused_topk_deepseek(rec):
    def fused_topk_deepseek(scores, bias, n_group, topk_group, topk, routed_scaling_factor, topk_values,
                            topk_indices, launch_with_pdl=True):
        rec.add("fused_topk_deepseek", scores=scores, bias=bias, n_group=n_group, topk_group=topk_group,
                topk=topk, routed_scaling_factor=routed_scaling_factor, topk_values=topk_values,
                topk_indices=topk_indices)
        assert bias.dtype == scores.dtype, "docs: bias must match the dtype of scores"
        assert topk_values.dtype == torch.float32 and topk_indices.dtype in (torch.int32, torch.int64)
        idx, dense = reference_routing(scores, bias, routed_scaling_factor, n_group, topk_group, topk)
        topk_indices.copy_(idx)
        topk_values.copy_(dense.gather(1, idx))
    return fused_topk_deepseek


def fake_trtllm_new(rec):
    def trtllm_fp8_block_scale_moe(routing_logits, routing_bias, hidden_states, hidden_states_scale,
                                   gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale,
                                   num_experts, top_k, n_group, topk_group, intermediate_size,
                                   local_expert_offset, local_num_experts, routed_scaling_factor,
                                   routing_method_type=0, use_shuffled_weight=False, weight_layout=0,
                                   do_finalize=True, enable_pdl=None, tune_max_num_tokens=8192,
                                   fp8_quantization_type=None, activation_type=3, norm_topk_prob=True,
                                   routing_replay_out=None, output=None):
        rec.add("trtllm", **{k: v for k, v in locals().items() if k != "rec"})
        result = torch.full((hidden_states.shape[0], gemm2_weights.shape[1]), 7.0, dtype=torch.bfloat16)
        if output is not None:
            output.copy_(result)
            return [output]
        return [result]
    return trtllm_fp8_block_scale_moe


def fake_trtllm_old(rec):
    def trtllm_fp8_block_scale_moe(routing_logits, routing_bias, hidden_states, hidden_states_scale,
                                   gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale,
                                   num_experts, top_k, n_group, topk_group, intermediate_size,
                                   local_expert_offset, local_num_experts, routed_scaling_factor,
                                   tile_tokens_dim=8, routing_method_type=0, use_shuffled_weight=True):
        rec.add("trtllm", **{k: v for k, v in locals().items() if k != "rec"})
        return torch.full((hidden_states.shape[0], gemm2_weights.shape[1]), 3.0, dtype=torch.bfloat16)
    return trtllm_fp8_block_scale_moe


def install_fake(monkeypatch, *, topk=False, trtllm=None, routing_enum=False):
    rec = Recorder()
    fi = types.ModuleType("flashinfer")
    fi.__spec__ = importlib.machinery.ModuleSpec("flashinfer", None)
    fm = types.ModuleType("flashinfer.fused_moe")
    core = types.ModuleType("flashinfer.fused_moe.core")
    fi.fused_moe, fm.core = fm, core
    fm.cutlass_fused_moe = fake_cutlass_fused_moe(rec)
    core.get_cutlass_fused_moe_module = lambda backend="100", use_fast_build=False: rec.add("getter", backend=backend)
    if topk:
        fm.fused_topk_deepseek = fake_fused_topk_deepseek(rec)
    if trtllm is not None:
        fm.trtllm_fp8_block_scale_moe = trtllm(rec)
    if routing_enum:
        import enum

        class RoutingMethodType(enum.IntEnum):
            Default = 0
            Renormalize = 1
            DeepSeekV3 = 2
        fm.RoutingMethodType = RoutingMethodType
    for name, module in (("flashinfer", fi), ("flashinfer.fused_moe", fm), ("flashinfer.fused_moe.core", core)):
        monkeypatch.setitem(sys.modules, name, module)
    return rec


# ---- flashinfer_cutlass -----------------------------------------------------------------------
def test_pytorch_routing_matches_reference(cutlass):
    g = torch.Generator().manual_seed(3)
    for tokens, experts in ((5, 64), (16, 256)):
        logits = torch.randn(tokens, experts, generator=g) * 2
        bias = (torch.randn(experts, generator=g) * 0.5).to(torch.bfloat16)
        weights, ids = cutlass.deepseek_routing(logits, bias, 2.5)
        ref_ids, dense = reference_routing(logits, bias, 2.5)
        assert ids.dtype == torch.int32 and weights.dtype == torch.float32
        assert ids.shape == weights.shape == (tokens, 8)
        assert torch.equal(ids.long().sort(1).values, ref_ids.sort(1).values)
        torch.testing.assert_close(weights, dense.gather(1, ids.long()))


def test_cutlass_prepares_arguments(cutlass, monkeypatch):
    rec = install_fake(monkeypatch)
    args = make_inputs(offset=24)
    logits, bias, hs, hs_scale, w1, w1s, w2, w2s, offset, scaling, output = args
    cutlass.run(*args)
    call = rec.one("cutlass_fused_moe")
    # BF16 activations are the block-dequantized FP8 values
    assert call["input"].dtype == torch.bfloat16 and call["input"].shape == (T, H)
    expected = (hs.float() * expand(hs_scale.t(), 1, BLOCK)).to(torch.bfloat16)
    assert torch.equal(call["input"], expected)
    # global top-k ids and weights from the DeepSeek routing
    ids, weights = call["token_selected_experts"], call["token_final_scales"]
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32 and ids.shape == (T, 8)
    ref_ids, dense = reference_routing(logits, bias, scaling)
    assert torch.equal(ids.long().sort(1).values, ref_ids.sort(1).values)
    assert int(ids.max()) >= E_LOCAL, "ids must be global, not local"
    torch.testing.assert_close(weights, dense.gather(1, ids.long()))
    # expert parallelism: 64 experts in ranks of 8, offset 24 -> rank 3
    assert call["ep_size"] == E // E_LOCAL == 8 and call["ep_rank"] == 3
    assert call["tp_size"] == 1
    assert call["use_deepseek_fp8_block_scale"] is True
    # weights and scales in the given order and layout ([up; gate] is FlashInfer's order too)
    assert call["fc1_expert_weights"].shape == (E_LOCAL, 2 * I, H) and torch.equal(
        call["fc1_expert_weights"].view(torch.uint8), w1.view(torch.uint8))
    assert call["fc2_expert_weights"].shape == (E_LOCAL, H, I) and torch.equal(
        call["fc2_expert_weights"].view(torch.uint8), w2.view(torch.uint8))
    s1, s2 = call["quant_scales"]
    assert s1.shape == (E_LOCAL, 2 * I // BLOCK, H // BLOCK) and torch.equal(s1, w1s)
    assert s2.shape == (E_LOCAL, H // BLOCK, I // BLOCK) and torch.equal(s2, w2s)
    assert s1.dtype == s2.dtype == torch.float32
    # destination passing: FlashInfer writes straight into the harness's buffer
    assert call["output"] is output and call["output_dtype"] == torch.bfloat16
    assert not torch.isnan(output.float()).any()


@pytest.mark.parametrize("offset", [0, 16, 56])
def test_cutlass_output_matches_definition(cutlass, monkeypatch, offset):
    install_fake(monkeypatch)
    args = make_inputs(seed=offset, offset=offset)
    cutlass.run(*args)
    ref = reference_moe(*args[:-1])
    assert ref.abs().max() > 0.1, "test inputs should route tokens to the local experts"
    assert_passes(args[-1], ref, Tolerance(atol=0.05 * float(ref.abs().max()), rtol=0.05, required_matched_ratio=1.0,
                                           max_relative_l2=0.02))


def test_cutlass_uses_fused_topk_deepseek_when_present(cutlass, monkeypatch):
    rec = install_fake(monkeypatch, topk=True)
    args = make_inputs(offset=8)
    logits, bias = args[0], args[1]
    cutlass.run(*args)
    topk = rec.one("fused_topk_deepseek")
    assert (topk["n_group"], topk["topk_group"], topk["topk"]) == (8, 4, 8)
    assert topk["routed_scaling_factor"] == 2.5
    assert topk["scores"].dtype == torch.float32 and torch.equal(topk["scores"], logits)
    assert topk["bias"].dtype == torch.float32 and torch.equal(topk["bias"], bias.float())
    call = rec.one("cutlass_fused_moe")
    assert call["token_selected_experts"] is topk["topk_indices"]
    assert call["token_final_scales"] is topk["topk_values"]
    assert_passes(args[-1], reference_moe(*args[:-1]),
                  Tolerance(atol=0.05, rtol=0.05, required_matched_ratio=1.0, max_relative_l2=0.02))


def test_cutlass_sizes_come_from_the_tensors(cutlass, monkeypatch):
    rec = install_fake(monkeypatch)
    args = make_inputs(experts=128, local=16, hidden=384, inter=256, tokens=3, offset=32)
    cutlass.run(*args)
    call = rec.one("cutlass_fused_moe")
    assert (call["ep_size"], call["ep_rank"]) == (8, 2)
    assert call["input"].shape == (3, 384)


def test_cutlass_rejects_an_offset_between_ranks(cutlass, monkeypatch):
    install_fake(monkeypatch)
    args = make_inputs(offset=16)
    args[8] = 4
    with pytest.raises(ValueError, match="multiple"):
        cutlass.run(*args)


# ---- gating -----------------------------------------------------------------------------------
CPU = {"type": "cpu", "device": "cpu", "name": "cpu", "sm": None}
H100 = {"type": "cuda", "device": "cuda:0", "name": "NVIDIA H100 80GB HBM3", "sm": 90, "memory_gb": 79.1}
B200 = {"type": "cuda", "device": "cuda:0", "name": "NVIDIA B200", "sm": 100, "memory_gb": 178.0}
AXES = {"seq_len": 7, "num_experts": 256, "num_local_experts": 32, "hidden_size": 7168, "intermediate_size": 2048}


def test_cutlass_gating(cutlass, monkeypatch):
    assert "CPU" in cutlass.fib_supported(CPU, AXES)
    assert "sm100" in cutlass.fib_supported(B200, AXES)
    monkeypatch.setitem(sys.modules, "flashinfer", None)  # not installed
    assert "flashinfer" in cutlass.fib_supported(H100, AXES)
    install_fake(monkeypatch)
    monkeypatch.setattr(cutlass.torch.version, "cuda", "12.9")
    assert cutlass.fib_supported(H100, AXES) is None
    assert cutlass.fib_supported({"type": "cuda", "name": "H200", "compute_capability": "9.0"}, {}) is None
    monkeypatch.setattr(cutlass.torch.version, "cuda", "12.6")
    assert "12.8" in cutlass.fib_supported(H100, AXES)


def test_trtllm_gating(trtllm, monkeypatch):
    assert "CPU" in trtllm.fib_supported(CPU, AXES)
    reason = trtllm.fib_supported(H100, AXES)
    assert reason and "SM100" in reason and "sm90" in reason
    monkeypatch.setitem(sys.modules, "flashinfer", None)
    assert "flashinfer" in trtllm.fib_supported(B200, AXES)
    install_fake(monkeypatch)
    assert trtllm.fib_supported(B200, AXES) is None
    assert trtllm.fib_supported({**B200, "sm": 103}, AXES) is None
    assert trtllm.fib_supported({**B200, "sm": 120}, AXES) is not None


def _solution(folder: Path) -> Solution:
    return Solution.model_validate_json((folder / "solution.json").read_text()).attach_root(folder)


def test_solution_json_and_target_hardware(monkeypatch):
    from fib.harness.build import has_build_hook
    from fib.solutions import unsupported_reason
    cut, trt = _solution(CUTLASS_DIR), _solution(TRTLLM_DIR)
    assert cut.spec.target_hardware == ["sm90"] and trt.spec.target_hardware == ["sm100", "sm103"]
    assert cut.spec.dependencies == trt.spec.dependencies == ["flashinfer-python"]
    assert has_build_hook(cut) and has_build_hook(trt)
    assert "unverified" in trt.description.lower() and "unverified" in cut.description.lower()
    assert "0.7" in cut.description and "0.7" in trt.description  # flashinfer version checked against
    # On Hopper the trtllm solution is ruled out by its JSON alone, with the reason.
    reason = unsupported_reason(trt, None, AXES, H100)
    assert reason and "sm100" in reason and "H100" in reason
    assert "targets sm90" in unsupported_reason(cut, None, AXES, CPU)


def test_fib_build_needs_a_gpu(cutlass, trtllm, monkeypatch):
    install_fake(monkeypatch, trtllm=fake_trtllm_new)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="SM90"):
        cutlass.fib_build()
    with pytest.raises(RuntimeError, match="SM100"):
        trtllm.fib_build()


def test_cutlass_fib_build_uses_the_runtime_module_getter(cutlass, monkeypatch):
    rec = install_fake(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(cutlass, "WARMUP", dict(tokens=2, num_experts=64, local_experts=8, hidden=256, intermediate=128))
    on_gpu = cutlass._warmup_inputs
    monkeypatch.setattr(cutlass, "_warmup_inputs", lambda device, **kw: on_gpu(torch.device("cpu"), **kw))
    cutlass.fib_build()
    assert rec.one("getter")["backend"] == "90"
    call = rec.one("cutlass_fused_moe")
    assert call["use_deepseek_fp8_block_scale"] is True and call["ep_size"] == 8


# ---- flashinfer_trtllm ------------------------------------------------------------------------
def test_trtllm_prepares_arguments(trtllm, monkeypatch):
    rec = install_fake(monkeypatch, trtllm=fake_trtllm_new)
    args = make_inputs(offset=40)
    logits, bias, hs, hs_scale, w1, w1s, w2, w2s, offset, scaling, output = args
    args[0] = logits.to(torch.bfloat16)   # the wrapper must hand DeepSeekV3 routing fp32 logits
    args[1] = bias.float()                # and a bf16 bias
    trtllm.run(*args)
    call = rec.one("trtllm")
    assert call["routing_logits"].dtype == torch.float32
    assert torch.equal(call["routing_logits"], args[0].float())
    assert call["routing_bias"].dtype == torch.bfloat16 and torch.equal(call["routing_bias"], bias)
    assert call["hidden_states_scale"].shape == (H // BLOCK, T)          # block-major, as given
    assert call["hidden_states_scale"].dtype == torch.float32 and torch.equal(call["hidden_states_scale"], hs_scale)
    assert torch.equal(call["hidden_states"].view(torch.uint8), hs.view(torch.uint8))
    assert torch.equal(call["gemm1_weights"].view(torch.uint8), w1.view(torch.uint8))
    assert torch.equal(call["gemm2_weights"].view(torch.uint8), w2.view(torch.uint8))
    assert call["gemm1_weights_scale"].shape == (E_LOCAL, 2 * I // BLOCK, H // BLOCK)
    assert call["gemm2_weights_scale"].shape == (E_LOCAL, H // BLOCK, I // BLOCK)
    assert torch.equal(call["gemm1_weights_scale"], w1s) and torch.equal(call["gemm2_weights_scale"], w2s)
    assert (call["num_experts"], call["top_k"], call["n_group"], call["topk_group"]) == (E, 8, 8, 4)
    assert (call["local_expert_offset"], call["local_num_experts"], call["intermediate_size"]) == (40, E_LOCAL, I)
    assert call["routed_scaling_factor"] == 2.5
    assert call["routing_method_type"] == 2                 # DeepSeekV3
    assert call["use_shuffled_weight"] is False and call["weight_layout"] == 0  # unshuffled MajorK
    assert call["output"] is output
    assert torch.all(output.float() == 7.0)


def test_trtllm_old_signature(trtllm, monkeypatch):
    rec = install_fake(monkeypatch, trtllm=fake_trtllm_old)
    args = make_inputs(tokens=40, offset=0)
    trtllm.run(*args)
    call = rec.one("trtllm")
    assert call["use_shuffled_weight"] is False
    assert call["tile_tokens_dim"] == 8          # 40 tokens * 8 / 64 experts = 5 -> 8
    assert torch.all(args[-1].float() == 3.0)   # returned tensor copied into the DPS output
    assert trtllm.tile_tokens_dim(4096, 8, 256) == 64 and trtllm.tile_tokens_dim(300, 8, 256) == 16


def test_trtllm_uses_the_routing_enum(trtllm, monkeypatch):
    rec = install_fake(monkeypatch, trtllm=fake_trtllm_new, routing_enum=True)
    trtllm.run(*make_inputs())
    assert rec.one("trtllm")["routing_method_type"] == 2


def test_modules_import_without_flashinfer(monkeypatch):
    monkeypatch.setitem(sys.modules, "flashinfer", None)
    load(CUTLASS_DIR, "moe_cutlass.py", "nofi")
    load(TRTLLM_DIR, "moe_trtllm.py", "nofi")
