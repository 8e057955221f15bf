"""DeepSeek-V3 FP8 block-scale MoE through FlashInfer's CUTLASS fused MoE (Hopper, SM90).

`flashinfer.fused_moe.cutlass_fused_moe(..., use_deepseek_fp8_block_scale=True)` takes BF16
activations (it quantizes them to FP8 1x128 blocks itself), precomputed top-k expert ids (GLOBAL
ids, int32) and weights (fp32), FP8 weights with one fp32 scale per 128x128 block, and expert
parallelism as (ep_size, ep_rank): the weights passed are the rank's local slice, experts
[ep_rank * E_local, (ep_rank + 1) * E_local), and top-k entries naming other ranks' experts are
skipped.

Layout decision: FlashInfer's CUTLASS SwiGLU splits fc1's rows as [w3 (up, linear half);
w1 (gate, activated half)] and computes silu(gate) * up (its own test reference chunks w31 into
w3, w1 and uses silu(x @ w1.T) * (x @ w3.T)). The definition's gemm1_weights are [up; gate] with
C = silu(gate) * up, so the weights and their scales are passed unchanged, no reordering.

API checked against flashinfer-python 0.7.2.post1 (fused_moe/core.py, fused_moe/fused_routing_dsv3.py) and
docs.flashinfer.ai; the call uses keyword arguments only. Every size is read from the tensors.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys

import torch

try:
    from fib import stage as _stage
except ImportError:  # run outside fib (e.g. by flashinfer-bench): stages are no-ops
    def _stage(name):
        return contextlib.nullcontext()

N_GROUPS = 8       # expert groups (definition: ng8)
TOPK_GROUPS = 4    # groups kept per token (kg4)
TOPK = 8           # experts per token (topk8)
BLOCK = 128        # FP8 block size of activations and weights
MIN_CUDA = (12, 8)  # flashinfer raises NotImplementedError for FP8 block scaling below CUDA 12.8

# Shapes of the warm-up call in fib_build: the definition's real expert shapes (the SM90 FP8
# block-scale GEMMs may JIT per-shape kernels at first use), few tokens.
WARMUP = dict(tokens=4, num_experts=256, local_experts=32, hidden=7168, intermediate=2048)


# ---- pieces (each testable on CPU) ------------------------------------------------------------
def deepseek_routing(routing_logits, routing_bias, routed_scaling_factor,
                     n_group=N_GROUPS, topk_group=TOPK_GROUPS, top_k=TOPK):
    """PyTorch DeepSeek-V3 routing: (weights fp32 [T, top_k], GLOBAL expert ids int32 [T, top_k]).

    sigmoid(logits) + bias ranks; groups scored by the sum of their top-2; keep topk_group
    groups; top_k experts among them; weights are the unbiased sigmoid scores of the chosen
    experts, normalised over them and multiplied by routed_scaling_factor.
    """
    scores = torch.sigmoid(routing_logits.float())
    biased = scores + routing_bias.float().reshape(1, -1)
    T, E = biased.shape
    group_size = E // n_group
    group_score = biased.view(T, n_group, group_size).topk(2, dim=-1).values.sum(-1)
    keep = torch.zeros(T, n_group, dtype=torch.bool, device=biased.device)
    keep.scatter_(1, group_score.topk(topk_group, dim=-1).indices, True)
    keep = keep.unsqueeze(-1).expand(T, n_group, group_size).reshape(T, E)
    ids = biased.masked_fill(~keep, float("-inf")).topk(top_k, dim=-1).indices
    weights = scores.gather(1, ids)
    weights = weights / (weights.sum(-1, keepdim=True) + 1e-20) * routed_scaling_factor
    return weights.float().contiguous(), ids.to(torch.int32).contiguous()


def route(routing_logits, routing_bias, routed_scaling_factor):
    """FlashInfer's fused DeepSeek-V3 routing kernel when this flashinfer has it, else PyTorch."""
    import flashinfer.fused_moe as fused_moe
    fused = getattr(fused_moe, "fused_topk_deepseek", None)
    if fused is None:
        return deepseek_routing(routing_logits, routing_bias, routed_scaling_factor)
    T = routing_logits.shape[0]
    scores = routing_logits.float().contiguous()
    weights = torch.empty(T, TOPK, dtype=torch.float32, device=scores.device)
    ids = torch.empty(T, TOPK, dtype=torch.int32, device=scores.device)
    # bias must have the scores' dtype (docs: "Must match the dtype of scores")
    fused(scores, routing_bias.to(scores.dtype).contiguous(), N_GROUPS, TOPK_GROUPS, TOPK,
          float(routed_scaling_factor), weights, ids)
    return weights, ids


def dequantize_hidden(hidden_states, hidden_states_scale):
    """FP8 [T, H] with block-major scales [H/128, T] -> BF16 [T, H] (value * its block's scale)."""
    T, H = hidden_states.shape
    blocks = hidden_states_scale.shape[0]
    x = hidden_states.to(torch.float32).view(T, blocks, H // blocks)
    x = x * hidden_states_scale.to(torch.float32).t().unsqueeze(-1)
    return x.view(T, H).to(torch.bfloat16)


def expert_parallel(num_experts, local_experts, local_expert_offset):
    """(ep_size, ep_rank) for a rank holding experts [offset, offset + local_experts)."""
    if num_experts % local_experts:
        raise ValueError(f"{num_experts} experts do not split into ranks of {local_experts}")
    if local_expert_offset % local_experts:
        raise ValueError(f"local_expert_offset {local_expert_offset} is not a multiple of the "
                         f"{local_experts} local experts: cutlass_fused_moe places rank r at r * E_local")
    return num_experts // local_experts, local_expert_offset // local_experts


# ---- entry point ------------------------------------------------------------------------------
def run(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
        gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, local_expert_offset,
        routed_scaling_factor, output):
    from flashinfer.fused_moe import cutlass_fused_moe

    num_experts = routing_logits.shape[1]
    local_experts = gemm1_weights.shape[0]
    ep_size, ep_rank = expert_parallel(num_experts, local_experts, int(local_expert_offset))

    with _stage("routing"):
        topk_weights, topk_ids = route(routing_logits, routing_bias, routed_scaling_factor)
    with _stage("dispatch"):
        x = dequantize_hidden(hidden_states, hidden_states_scale)
    # gemm1 + SwiGLU + gemm2 + finalize run inside FlashInfer; their kernels are left outside any
    # fib.stage so the definition's kernel patterns attribute them to gemm1/activation/gemm2/combine.
    cutlass_fused_moe(
        input=x,
        token_selected_experts=topk_ids,
        token_final_scales=topk_weights,
        fc1_expert_weights=gemm1_weights.contiguous(),   # [E_local, 2I, H] = [up; gate]
        fc2_expert_weights=gemm2_weights.contiguous(),   # [E_local, H, I]
        output_dtype=torch.bfloat16,
        quant_scales=[gemm1_weights_scale.float().contiguous(),   # [E_local, 2I/128, H/128]
                      gemm2_weights_scale.float().contiguous()],  # [E_local, H/128, I/128]
        ep_size=ep_size,
        ep_rank=ep_rank,
        output=output,
        use_deepseek_fp8_block_scale=True,
    )


# ---- hooks ------------------------------------------------------------------------------------
def _flashinfer_present() -> bool:
    if "flashinfer" in sys.modules:
        return sys.modules["flashinfer"] is not None
    try:
        return importlib.util.find_spec("flashinfer") is not None
    except (ImportError, ValueError):
        return False


def _sm(device_info) -> int | None:
    """Compute capability as an int (90) from the forms a device description may use."""
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


def _cuda_version() -> tuple[int, int] | None:
    version = torch.version.cuda
    if not version:
        return None
    parts = version.split(".")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0


def fib_supported(device_info, axes):
    info = dict(device_info or {})
    if info.get("type", info.get("kind")) == "cpu" or _sm(info) is None:
        return "FlashInfer's CUTLASS fused MoE needs a CUDA GPU (SM90); this device is a CPU"
    if _sm(info) != 90:
        return (f"FlashInfer's CUTLASS FP8 block-scale MoE is implemented for SM90 only "
                f"(flashinfer raises NotImplementedError elsewhere); this GPU is sm{_sm(info)}")
    if not _flashinfer_present():
        return "flashinfer is not installed (pip install flashinfer-python)"
    cuda = _cuda_version()
    if cuda is not None and cuda < MIN_CUDA:
        return f"FlashInfer's FP8 block scaling needs CUDA >= 12.8; torch is built with CUDA {torch.version.cuda}"
    axes = dict(axes or {})
    for name in ("hidden_size", "intermediate_size"):
        if name in axes and int(axes[name]) % BLOCK:
            return f"{name}={axes[name]} is not a multiple of the {BLOCK}-wide FP8 blocks"
    if "num_experts" in axes and "num_local_experts" in axes and int(axes["num_experts"]) % int(axes["num_local_experts"]):
        return "num_experts is not a multiple of num_local_experts (needed for ep_size)"
    return None


def _warmup_inputs(device, tokens, num_experts, local_experts, hidden, intermediate):
    fp8 = torch.float8_e4m3fn
    return [
        torch.zeros(tokens, num_experts, dtype=torch.float32, device=device),
        torch.zeros(num_experts, dtype=torch.bfloat16, device=device),
        torch.zeros(tokens, hidden, dtype=fp8, device=device),
        torch.ones(hidden // BLOCK, tokens, dtype=torch.float32, device=device),
        torch.zeros(local_experts, 2 * intermediate, hidden, dtype=fp8, device=device),
        torch.ones(local_experts, 2 * intermediate // BLOCK, hidden // BLOCK, dtype=torch.float32, device=device),
        torch.zeros(local_experts, hidden, intermediate, dtype=fp8, device=device),
        torch.ones(local_experts, hidden // BLOCK, intermediate // BLOCK, dtype=torch.float32, device=device),
        0,
        2.5,
        torch.empty(tokens, hidden, dtype=torch.bfloat16, device=device),
    ]


def fib_build():
    """Compile FlashInfer's SM90 fused-MoE module (fused_moe_90, ~30 min from source) and the
    DeepSeek routing module, then make one small call so the first timed run compiles nothing."""
    if not torch.cuda.is_available():
        raise RuntimeError("flashinfer_cutlass builds on an SM90 GPU; no CUDA GPU is visible")
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major * 10 + minor}"
    if arch != "90":
        raise RuntimeError(f"flashinfer_cutlass needs SM90; this GPU is sm{arch}")
    from flashinfer.fused_moe import core
    getter = getattr(core, "get_cutlass_fused_moe_module", None)
    if getter is not None:
        # The same getter and default arguments cutlass_fused_moe uses, so the run finds this build.
        getter(arch)
    else:  # older flashinfer: build the JIT spec directly
        from flashinfer.jit.fused_moe import gen_cutlass_fused_moe_sm90_module
        gen_cutlass_fused_moe_sm90_module().build_and_load()
    args = _warmup_inputs(torch.device("cuda"), **WARMUP)
    run(*args)
    torch.cuda.synchronize()
    if not torch.isfinite(args[-1].float()).all():
        raise RuntimeError("warm-up call produced non-finite output")
