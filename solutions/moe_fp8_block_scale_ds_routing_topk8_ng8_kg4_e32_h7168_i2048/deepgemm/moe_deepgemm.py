"""DeepSeek-V3 FP8 block-scale MoE with DeepGEMM's grouped FP8 GEMMs (Hopper, SM90).

Our pieces (triton_staged's kernels through peer_common/pipeline.py): routing, the expert sort,
the gather of the routed FP8 rows into DeepGEMM's layout, SwiGLU + 1x128 FP8 re-quantization and
the weighted combine. DeepGEMM (imported, never copied) runs GEMM1 and GEMM2:

- prefill (T > MASKED_MAX): `m_grouped_fp8_gemm_nt_contiguous((a, sfa), (w, sfw), d, m_indices)`.
  a [M, K] fp8 holds each local expert's rows padded to DeepGEMM's M alignment
  (`get_mk_alignment_for_contiguous_layout()`, 128 on SM90); m_indices [M] int32 names the expert
  of each row, -1 for padding (DeepGEMM skips a block whose first row is -1). M is the static
  upper bound of align's row count (no host sync), so every row past the live ones is -1.
- decode (T <= MASKED_MAX): `m_grouped_fp8_gemm_nt_masked((a, sfa), (w, sfw), d, masked_m,
  expected_m)`, a [E_local, max_m, K] with expert e's rows first, masked_m [E_local] int32 its count.

Scales: DeepGEMM on SM90 wants FP32 activation scales MN-major and TMA-aligned (sfa[..., m, k]
with stride 1 along m and get_tma_aligned_size(m, 4) along k, i.e. m rounded up to 4). Our gather
and SwiGLU write them block-major ([K/128, M] per group), which is exactly that layout once
transposed, so DeepGEMM's own transform (get_mn_major_tma_aligned_tensor) returns them as they are
and launches nothing. Weight scales [E, N/128, K/128] contiguous are passed as given (its SM90
"SFB contiguous" rule). W13 is [up; gate]; the SwiGLU is ours, so no re-stacking is needed.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys

import torch

from peer_common import pipeline

try:
    from fib import stage as _stage
except ImportError:  # run outside fib: stages are no-ops
    def _stage(name):
        return contextlib.nullcontext()

BLOCK = 128          # FP8 block of the definition (weights 128x128, activations 1x128)
MASKED_MAX = 128     # up to this many tokens: the masked (decode) GEMMs
MASKED_ROWS = 64     # max_m is the token count rounded up to this (DeepGEMM's masked block_m <= 64..128)
EXPECTED_M_FACTOR = 1.2  # masked expected_m = factor x the mean entries per expert (DeepGEMM's own tests)


def _api():
    import deep_gemm
    return deep_gemm


def _sizes(hidden_states, hidden_states_scale, gemm1_weights, gemm2_weights):
    T, H = hidden_states.shape
    n_local, N1, _ = gemm1_weights.shape
    I = gemm2_weights.shape[2]
    QB = H // hidden_states_scale.shape[0]
    return T, H, n_local, N1, I, QB


def _contiguous(dg, ids, hidden_states, hidden_states_scale, w13, w13_scale, w2, w2_scale,
                offset, n_local, I, QB):
    alignment = dg.get_mk_alignment_for_contiguous_layout()
    with _stage("dispatch"):
        sorted_ids, expert_ids, n_post = pipeline.align(ids, offset, n_local, alignment)
        n_rows = sorted_ids.numel()
        a, a_scale, inv, m_indices = pipeline.gather_rows(hidden_states, hidden_states_scale, sorted_ids,
                                                          n_post, n_rows, n_rows, expert_ids, alignment)
    with _stage("gemm1"):
        g1 = torch.empty(n_rows, w13.shape[1], dtype=torch.bfloat16, device=a.device)
        dg.m_grouped_fp8_gemm_nt_contiguous((a, a_scale.view(-1, n_rows).t()), (w13, w13_scale), g1,
                                            m_indices)
    with _stage("activation"):
        c, c_scale = pipeline.swiglu_quant(g1, n_post, I, QB)
    with _stage("gemm2"):
        y = torch.empty(n_rows, w2.shape[1], dtype=torch.bfloat16, device=a.device)
        dg.m_grouped_fp8_gemm_nt_contiguous((c, c_scale.view(-1, n_rows).t()), (w2, w2_scale), y, m_indices)
    return y, inv


def expected_m(T, num_experts):
    """The masked GEMMs' expected rows per expert (only picks DeepGEMM's tile configuration)."""
    return max(1, math.ceil(EXPECTED_M_FACTOR * T * pipeline.TOPK / num_experts))


def _masked(dg, ids, hidden_states, hidden_states_scale, w13, w13_scale, w2, w2_scale, offset, n_local,
            I, QB, num_experts):
    T, H = hidden_states.shape
    max_m = -(-T // MASKED_ROWS) * MASKED_ROWS
    n_rows = n_local * max_m
    dev = hidden_states.device
    with _stage("dispatch"):
        row_entry, masked_m = pipeline.masked_layout(ids, offset, n_local, max_m)
        all_rows = torch.full((1,), n_rows, dtype=torch.int32, device=dev)
        a, a_scale, inv, _ = pipeline.gather_rows(hidden_states, hidden_states_scale, row_entry, all_rows,
                                                  n_rows, max_m)
    em = expected_m(T, num_experts)

    def sf(scale, k_blocks):  # [E, k_blocks, max_m] block-major per expert -> [E, max_m, k_blocks]
        return scale.view(n_local, k_blocks, max_m).transpose(1, 2)

    with _stage("gemm1"):
        g1 = torch.empty(n_local, max_m, w13.shape[1], dtype=torch.bfloat16, device=dev)
        dg.m_grouped_fp8_gemm_nt_masked((a.view(n_local, max_m, H), sf(a_scale, H // QB)), (w13, w13_scale),
                                        g1, masked_m, em)
    with _stage("activation"):
        c, c_scale = pipeline.swiglu_quant(g1.view(n_rows, -1), all_rows, I, QB, seg_rows=max_m)
    with _stage("gemm2"):
        y = torch.empty(n_local, max_m, w2.shape[1], dtype=torch.bfloat16, device=dev)
        dg.m_grouped_fp8_gemm_nt_masked((c.view(n_local, max_m, I), sf(c_scale, I // QB)), (w2, w2_scale),
                                        y, masked_m, em)
    return y.view(n_rows, -1), inv


def run(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
        gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, local_expert_offset,
        routed_scaling_factor, output):
    dg = _api()
    T, H, n_local, N1, I, QB = _sizes(hidden_states, hidden_states_scale, gemm1_weights, gemm2_weights)
    offset = int(local_expert_offset)
    with _stage("routing"):
        ids, weights = pipeline.route(routing_logits, routing_bias, routed_scaling_factor)
    args = (dg, ids, hidden_states, hidden_states_scale.contiguous(), gemm1_weights,
            gemm1_weights_scale.float().contiguous(), gemm2_weights, gemm2_weights_scale.float().contiguous(),
            offset, n_local, I, QB)
    if T <= MASKED_MAX:
        y, inv = _masked(*args, num_experts=routing_logits.shape[1])
    else:
        y, inv = _contiguous(*args)
    with _stage("finalize"):
        pipeline.combine(y, ids, weights, output, offset, n_local, rows=inv)


# ---- hooks ------------------------------------------------------------------------------------
def _deep_gemm_present() -> bool:
    if "deep_gemm" in sys.modules:
        return sys.modules["deep_gemm"] is not None
    try:
        return importlib.util.find_spec("deep_gemm") is not None
    except (ImportError, ValueError):
        return False


def fib_supported(device_info, axes):
    info = dict(device_info or {})
    if info.get("type") != "cuda":
        return "DeepGEMM's FP8 GEMMs need a CUDA GPU (SM90 here); this device is a CPU"
    if info.get("sm") != 90:
        return (f"this solution uses DeepGEMM's SM90 FP32-scale (1D2D) kernels; this GPU is sm{info.get('sm')} "
                "(SM100 wants UE8M0-packed scales, not prepared here)")
    if not _deep_gemm_present():
        return ("deep_gemm is not importable: it is not on PyPI; install it with "
                "`pip install git+https://github.com/deepseek-ai/DeepGEMM.git` (needs nvcc and CUDA 12.3+), "
                "or build it from source and put it on PYTHONPATH (benchmarks/gpu_peers.sh does that)")
    for name in ("hidden_size", "intermediate_size"):
        if name in axes and int(axes[name]) % BLOCK:
            return f"{name}={axes[name]} is not a multiple of the {BLOCK}-wide FP8 blocks"
    return None


def fib_build():
    """Import deep_gemm in this process (its JIT needs LD_PRELOAD, see solution.json worker_env) and
    check the contiguous M alignment is one align() can pad to."""
    dg = _api()
    alignment = dg.get_mk_alignment_for_contiguous_layout()
    if alignment <= 0 or alignment & (alignment - 1):
        raise RuntimeError(f"DeepGEMM's contiguous M alignment {alignment} is not a power of two")
    print(f"deep_gemm {getattr(dg, '__version__', '?')} from {dg.__file__}; M alignment {alignment}; "
          f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}", flush=True)
