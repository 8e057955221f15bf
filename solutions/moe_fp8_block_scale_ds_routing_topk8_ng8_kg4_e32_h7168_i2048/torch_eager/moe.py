"""DeepSeek-V3 MoE layer with FP8 block-scale weights, in plain PyTorch (FP32 math).

What a user writes first: dequantize, route with torch.topk, loop over the local experts that got
tokens. Every size is read from the tensor shapes, so the same file serves the scaled-down sibling.
"""
import torch
import torch.nn.functional as F

import fib

N_GROUPS = 8        # expert groups (definition: ng8)
TOPK_GROUPS = 4     # groups kept per token (kg4)
TOPK = 8            # experts per token (topk8)


def _route(routing_logits, routing_bias, routed_scaling_factor):
    """(expert ids [T, TOPK] global, weights [T, TOPK] fp32)."""
    scores = torch.sigmoid(routing_logits.float())
    biased = scores + routing_bias.float()
    T, E = biased.shape
    group_size = E // N_GROUPS
    group_score = biased.view(T, N_GROUPS, group_size).topk(2, dim=-1).values.sum(-1)
    keep = torch.zeros(T, N_GROUPS, dtype=torch.bool, device=biased.device)
    keep.scatter_(1, group_score.topk(TOPK_GROUPS, dim=-1).indices, True)
    keep = keep.repeat_interleave(group_size, dim=1)
    ids = biased.masked_fill(~keep, float("-inf")).topk(TOPK, dim=-1).indices
    weights = scores.gather(1, ids)
    weights = weights / weights.sum(-1, keepdim=True) * routed_scaling_factor
    return ids, weights


def _dequant_blocks(w, scale):
    """fp8 [N, K] with one scale per (N/bn, K/bk) block -> fp32 [N, K]."""
    n, k = w.shape
    bn, bk = n // scale.shape[0], k // scale.shape[1]
    return w.float() * scale.repeat_interleave(bn, 0).repeat_interleave(bk, 1)


def run(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
        gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, local_expert_offset,
        routed_scaling_factor, output):
    n_local = gemm1_weights.shape[0]
    intermediate = gemm2_weights.shape[2]
    with fib.stage("routing"):
        ids, weights = _route(routing_logits, routing_bias, routed_scaling_factor)
    with fib.stage("dispatch"):
        block = hidden_states.shape[1] // hidden_states_scale.shape[0]
        acts = hidden_states.float() * hidden_states_scale.t().repeat_interleave(block, 1)
        local = ids - local_expert_offset
        acc = torch.zeros(acts.shape, dtype=torch.float32, device=acts.device)
    for e in range(n_local):
        with fib.stage("dispatch"):
            tok, slot = (local == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        with fib.stage("gemm1"):
            g1 = acts[tok] @ _dequant_blocks(gemm1_weights[e], gemm1_weights_scale[e]).t()
        with fib.stage("activation"):
            c = F.silu(g1[:, intermediate:]) * g1[:, :intermediate]
        with fib.stage("gemm2"):
            o = c @ _dequant_blocks(gemm2_weights[e], gemm2_weights_scale[e]).t()
        with fib.stage("finalize"):
            acc.index_add_(0, tok, o * weights[tok, slot, None])
    with fib.stage("finalize"):
        output.copy_(acc)
