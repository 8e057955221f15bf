"""DeepSeek-V3 FP8 block-scale MoE through FlashInfer's TensorRT-LLM-Gen fused MoE (Blackwell SM100).

`flashinfer.fused_moe.trtllm_fp8_block_scale_moe` does routing, both grouped GEMMs, SwiGLU and the
weighted combine in one call, and its inputs are exactly this definition's: routing logits
[T, E] (fp32 is required for DeepSeekV3 routing), routing bias [E] (bf16), FP8 hidden states
[T, H] with block-major scales [H/128, T], FP8 weights [E_local, 2I, H] / [E_local, H, I] with
128x128 block scales. The definition is FlashInfer's own trace template for this function
(flashinfer/trace/templates/moe.py, moe_fp8_block_scale_ds_routing), and the docstring splits
GEMM1's output as X1 = linear/up half, X2 = gate half, i.e. [up; gate] as given: weights are
passed unshuffled in the K-major layout (use_shuffled_weight=False, weight_layout=MajorK=0).

UNVERIFIED: written from the API documentation and source; no SM100 GPU was available. Argument
names differ between flashinfer releases (tile_tokens_dim was removed, `output` was added), so the
call is built from the installed function's signature. Checked against flashinfer-python
0.7.2.post1 (fused_moe/core.py: keyword names, `output`, no `tile_tokens_dim`; tllm_enums.py:
RoutingMethodType.DeepSeekV3 = 2, WeightLayout.MajorK = 0).
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys

import torch

try:
    from fib import stage as _stage
except ImportError:
    def _stage(name):
        return contextlib.nullcontext()

N_GROUPS = 8
TOPK_GROUPS = 4
TOPK = 8
BLOCK = 128
ROUTING_DEEPSEEK_V3 = 2   # flashinfer RoutingMethodType.DeepSeekV3
WEIGHT_LAYOUT_MAJOR_K = 0  # flashinfer WeightLayout.MajorK
SUPPORTED_SM = (100, 103)
WARMUP = dict(tokens=4, num_experts=256, local_experts=32, hidden=7168, intermediate=2048)

REQUIRED = ("routing_logits", "routing_bias", "hidden_states", "hidden_states_scale",
            "gemm1_weights", "gemm1_weights_scale", "gemm2_weights", "gemm2_weights_scale",
            "num_experts", "top_k", "n_group", "topk_group", "intermediate_size",
            "local_expert_offset", "local_num_experts", "routed_scaling_factor")


def _routing_method_deepseek_v3() -> int:
    try:
        from flashinfer.fused_moe import RoutingMethodType
        return int(RoutingMethodType.DeepSeekV3)
    except (ImportError, AttributeError):
        return ROUTING_DEEPSEEK_V3


def tile_tokens_dim(num_tokens, top_k, num_experts):
    """Tokens per CTA tile for old flashinfer releases that still ask for it: the mean number of
    tokens per expert, rounded up to a power of two, clamped to [8, 64]."""
    per_expert = max(1, (num_tokens * top_k) // num_experts)
    tile = 1 << (per_expert - 1).bit_length()
    return min(max(tile, 8), 64)


def build_kwargs(fn, routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
                 gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, local_expert_offset,
                 routed_scaling_factor, output):
    """Keyword arguments for `fn` (trtllm_fp8_block_scale_moe) matched to its signature."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        missing = [name for name in REQUIRED if name not in params]
        if missing:
            raise RuntimeError(f"this flashinfer's trtllm_fp8_block_scale_moe lacks {missing}; "
                               "flashinfer-python >= 0.4 is needed")
    T = hidden_states.shape[0]
    num_experts = routing_logits.shape[1]
    local_experts = gemm1_weights.shape[0]
    kwargs = dict(
        routing_logits=routing_logits.to(torch.float32).contiguous(),   # DeepSeekV3 reads fp32
        routing_bias=routing_bias.to(torch.bfloat16).contiguous(),
        hidden_states=hidden_states.contiguous(),
        hidden_states_scale=hidden_states_scale.to(torch.float32).contiguous(),  # [H/128, T]
        gemm1_weights=gemm1_weights.contiguous(),
        gemm1_weights_scale=gemm1_weights_scale.to(torch.float32).contiguous(),
        gemm2_weights=gemm2_weights.contiguous(),
        gemm2_weights_scale=gemm2_weights_scale.to(torch.float32).contiguous(),
        num_experts=num_experts,
        top_k=TOPK,
        n_group=N_GROUPS,
        topk_group=TOPK_GROUPS,
        intermediate_size=gemm2_weights.shape[2],
        local_expert_offset=int(local_expert_offset),
        local_num_experts=local_experts,
        routed_scaling_factor=float(routed_scaling_factor),
        routing_method_type=_routing_method_deepseek_v3(),
    )
    optional = dict(use_shuffled_weight=False, weight_layout=WEIGHT_LAYOUT_MAJOR_K,
                    tile_tokens_dim=tile_tokens_dim(T, TOPK, num_experts), output=output)
    for name, value in optional.items():
        if name in params:
            kwargs[name] = value
    return kwargs


def run(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
        gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, local_expert_offset,
        routed_scaling_factor, output):
    from flashinfer.fused_moe import trtllm_fp8_block_scale_moe

    with _stage("routing"):  # dtype casts only (no-ops for the definition's dtypes)
        kwargs = build_kwargs(trtllm_fp8_block_scale_moe, routing_logits, routing_bias, hidden_states,
                              hidden_states_scale, gemm1_weights, gemm1_weights_scale, gemm2_weights,
                              gemm2_weights_scale, local_expert_offset, routed_scaling_factor, output)
    # Routing, GEMMs, activation and finalize are FlashInfer kernels, attributed to stages by the
    # definition's kernel patterns.
    result = trtllm_fp8_block_scale_moe(**kwargs)
    if isinstance(result, (list, tuple)):
        result = result[0]
    if result is not None and result is not output and result.data_ptr() != output.data_ptr():
        output.copy_(result)


# ---- hooks ------------------------------------------------------------------------------------
def _flashinfer_present() -> bool:
    if "flashinfer" in sys.modules:
        return sys.modules["flashinfer"] is not None
    try:
        return importlib.util.find_spec("flashinfer") is not None
    except (ImportError, ValueError):
        return False


def _sm(device_info) -> int | None:
    info = dict(device_info or {})
    value = info.get("sm", info.get("compute_capability"))
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return int(value[0]) * 10 + int(value[1])
    text = str(value).lower().removeprefix("sm").removeprefix("_").rstrip("a")
    if "." in text:
        major, minor = text.split(".", 1)
        return int(major) * 10 + int(minor)
    return int(text) if text.isdigit() else None


def fib_supported(device_info, axes):
    info = dict(device_info or {})
    sm = _sm(info)
    if info.get("type", info.get("kind")) == "cpu" or sm is None:
        return "FlashInfer's TRT-LLM-Gen fused MoE needs a Blackwell GPU (SM100/SM103); this device is a CPU"
    if sm not in SUPPORTED_SM:
        return (f"FlashInfer's TRT-LLM-Gen FP8 block-scale MoE runs on SM100/SM103 only "
                f"(its kernels are Blackwell cubins); this GPU is sm{sm}")
    if not _flashinfer_present():
        return "flashinfer is not installed (pip install flashinfer-python flashinfer-cubin)"
    axes = dict(axes or {})
    for name in ("hidden_size", "intermediate_size"):
        if name in axes and int(axes[name]) % BLOCK:
            return f"{name}={axes[name]} is not a multiple of the {BLOCK}-wide FP8 blocks"
    return None


def fib_build():
    """Load FlashInfer's TRT-LLM-Gen MoE module and make one small call with the real expert shapes
    (loads the kernels' cubins; without network they must come from flashinfer-cubin)."""
    if not torch.cuda.is_available():
        raise RuntimeError("flashinfer_trtllm builds on an SM100/SM103 GPU; no CUDA GPU is visible")
    major, minor = torch.cuda.get_device_capability()
    if major * 10 + minor not in SUPPORTED_SM:
        raise RuntimeError(f"flashinfer_trtllm needs SM100/SM103; this GPU is sm{major * 10 + minor}")
    from flashinfer.fused_moe import core
    getter = getattr(core, "get_trtllm_moe_sm100_module", None)
    if getter is not None:
        getter()
    device = torch.device("cuda")
    w = WARMUP
    fp8 = torch.float8_e4m3fn
    T, E, El, H, I = w["tokens"], w["num_experts"], w["local_experts"], w["hidden"], w["intermediate"]
    output = torch.empty(T, H, dtype=torch.bfloat16, device=device)
    run(torch.randn(T, E, device=device), torch.zeros(E, dtype=torch.bfloat16, device=device),
        torch.zeros(T, H, dtype=fp8, device=device), torch.ones(H // BLOCK, T, device=device),
        torch.zeros(El, 2 * I, H, dtype=fp8, device=device), torch.ones(El, 2 * I // BLOCK, H // BLOCK, device=device),
        torch.zeros(El, H, I, dtype=fp8, device=device), torch.ones(El, H // BLOCK, I // BLOCK, device=device),
        0, 2.5, output)
    torch.cuda.synchronize()
