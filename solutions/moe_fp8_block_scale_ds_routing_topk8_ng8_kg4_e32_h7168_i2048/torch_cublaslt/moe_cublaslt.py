"""DeepSeek-V3 FP8 block-scale MoE with cuBLASLt's block-scaled FP8 GEMM, through PyTorch.

`torch.nn.functional.scaled_mm(a, b, scale_a, ScalingType.BlockWise1x128, scale_b,
ScalingType.BlockWise128x128, output_dtype=torch.bfloat16)` runs one expert's GEMM:
a [M, K] fp8 row-major, b = W[e].t() [K, N] (column-major view of the [N, K] weight),
scale_a [M, K/128] with strides (1, M) (a [K/128, M] block-major buffer, transposed),
scale_b = W_scale[e].t() [K/128, N/128] with strides (1, K/128). (Some torch releases want scale_b
with K/128 rounded up to 4 rows; that form is taken when the plain one is refused.) The grouped
variant (scaled_grouped_mm) has no SM90 implementation for these recipes, so the experts run one
GEMM each.

The number of rows per expert is data-dependent and cuBLASLt takes M on the host, so the call
copies align's per-expert block labels to the host once (one device->host copy and one sync per
call) and launches the GEMMs of the experts that received rows, with their exact padded row counts.
Not chosen: one CUDA graph of the expert loop keyed by those counts (it would replay only when the
same routing comes back, as it does when a benchmark repeats one input, so it would flatter the
timing and not serve real traffic), and fixed per-expert buckets (an expert may receive every
token: a safe bucket is T rows for each of the 32 experts, 32x the work, and all 32 experts'
weights are read even at one token).

Our pieces (triton_staged's kernels through peer_common/pipeline.py): routing, the expert sort
(rows padded to ROW_ALIGN per expert), the gather of the routed FP8 rows and their scales, SwiGLU +
1x128 FP8 re-quantization, the weighted combine.
"""
from __future__ import annotations

import contextlib

import torch

from peer_common import pipeline

try:
    from fib import stage as _stage
except ImportError:  # run outside fib: stages are no-ops
    def _stage(name):
        return contextlib.nullcontext()

BLOCK = 128      # FP8 block of the definition
ROW_ALIGN = 16   # each expert's rows are padded to this (16-byte aligned fp8 rows and scale columns)
SCALE_B_ROWS_MULTIPLE = 4  # the rounding of K/128 that some torch releases ask of scale_b


def _scaling_types():
    import torch.nn.functional as F
    kinds = getattr(F, "ScalingType", None)
    if kinds is None or not hasattr(F, "scaled_mm"):
        return None
    if not (hasattr(kinds, "BlockWise1x128") and hasattr(kinds, "BlockWise128x128")):
        return None
    return kinds.BlockWise1x128, kinds.BlockWise128x128


_SCALE_B_PADDED = [False]  # set once a torch release has refused the unpadded scale_b


def weight_scale_operand(scale, padded):
    """scale_b for one expert from its [N/128, K/128] weight scales: [K/128, N/128] strides (1, K/128),
    or (padded) [round_up(K/128, 4), N/128] strides (1, that), the extra rows zero."""
    if not padded:
        return scale.t()
    nb, kb = scale.shape
    rows = -(-kb // SCALE_B_ROWS_MULTIPLE) * SCALE_B_ROWS_MULTIPLE
    full = torch.zeros(nb, rows, dtype=scale.dtype, device=scale.device)
    full[:, :kb] = scale
    return full.t()


def expert_gemm(a, weight, a_scale_t, w_scale):
    """One expert: a [M, K] fp8 x weight [N, K]^T with scales, bf16 [M, N]. a_scale_t is the
    block-major [K/128, M] (contiguous) scale block of these rows."""
    import torch.nn.functional as F
    act, wgt = _scaling_types()
    scale_a = a_scale_t.t()
    try:
        return F.scaled_mm(a, weight.t(), scale_a, act, weight_scale_operand(w_scale, _SCALE_B_PADDED[0]),
                           wgt, output_dtype=torch.bfloat16)
    except (RuntimeError, ValueError) as exc:
        if _SCALE_B_PADDED[0] or "scale_b" not in str(exc) or w_scale.shape[1] % SCALE_B_ROWS_MULTIPLE == 0:
            raise
        _SCALE_B_PADDED[0] = True
        return expert_gemm(a, weight, a_scale_t, w_scale)


def expert_segments(expert_ids, n_post, BM):
    """[(expert, first row, rows)] of the experts that received rows: one device->host copy."""
    host = torch.empty(expert_ids.numel() + 1, dtype=torch.int32, pin_memory=expert_ids.is_cuda)
    host[:1].copy_(n_post, non_blocking=True)
    host[1:].copy_(expert_ids, non_blocking=True)
    if expert_ids.is_cuda:
        torch.cuda.current_stream().synchronize()
    values = host.tolist()
    blocks = values[1:1 + values[0] // BM]
    segments = []
    for b, e in enumerate(blocks):
        if segments and segments[-1][0] == e:
            segments[-1][2] += BM
        else:
            segments.append([e, b * BM, BM])
    return [tuple(s) for s in segments]


def grouped_gemm(a, a_scale_bm, weights, weight_scales, segments, n_rows):
    """out[rows of e] = a[rows of e] @ weights[e]^T per segment; a_scale_bm is [K/128, n_rows]."""
    out = torch.empty(n_rows, weights.shape[1], dtype=torch.bfloat16, device=a.device)
    for e, start, rows in segments:
        part = slice(start, start + rows)
        out[part] = expert_gemm(a[part], weights[e], a_scale_bm[:, part].contiguous(), weight_scales[e])
    return out


def run(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
        gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, local_expert_offset,
        routed_scaling_factor, output):
    T, H = hidden_states.shape
    n_local = gemm1_weights.shape[0]
    I = gemm2_weights.shape[2]
    QB = H // hidden_states_scale.shape[0]
    offset = int(local_expert_offset)
    with _stage("routing"):
        ids, weights = pipeline.route(routing_logits, routing_bias, routed_scaling_factor)
    with _stage("dispatch"):
        sorted_ids, expert_ids, n_post = pipeline.align(ids, offset, n_local, ROW_ALIGN)
        segments = expert_segments(expert_ids, n_post, ROW_ALIGN)
        n_rows = sum(rows for _, _, rows in segments)
        if n_rows == 0:  # no token chose a local expert
            output.zero_()
            return
        a, a_scale, inv, _ = pipeline.gather_rows(hidden_states, hidden_states_scale.contiguous(), sorted_ids,
                                                  n_post, n_rows, n_rows)
    g1_scales, g2_scales = gemm1_weights_scale.float(), gemm2_weights_scale.float()
    with _stage("gemm1"):
        g1 = grouped_gemm(a, a_scale.view(-1, n_rows), gemm1_weights, g1_scales, segments, n_rows)
    with _stage("activation"):
        c, c_scale = pipeline.swiglu_quant(g1, n_post, I, QB)
    with _stage("gemm2"):
        y = grouped_gemm(c, c_scale.view(-1, n_rows), gemm2_weights, g2_scales, segments, n_rows)
    with _stage("finalize"):
        pipeline.combine(y, ids, weights, output, offset, n_local, rows=inv)


def fib_supported(device_info, axes):
    info = dict(device_info or {})
    if info.get("type") != "cuda":
        return "cuBLASLt's block-scaled FP8 GEMM needs a CUDA GPU (SM90 or newer); this device is a CPU"
    if (info.get("sm") or 0) < 90:
        return f"cuBLASLt's 1x128 / 128x128 block-scaled FP8 GEMM needs SM90 or newer; this GPU is sm{info.get('sm')}"
    if _scaling_types() is None:
        return (f"torch {torch.__version__} has no torch.nn.functional.scaled_mm with ScalingType.BlockWise1x128 / "
                "BlockWise128x128 (torch 2.10 or newer)")
    for name in ("hidden_size", "intermediate_size"):
        if name in axes and int(axes[name]) % BLOCK:
            return f"{name}={axes[name]} is not a multiple of the {BLOCK}-wide FP8 blocks"
    return None
