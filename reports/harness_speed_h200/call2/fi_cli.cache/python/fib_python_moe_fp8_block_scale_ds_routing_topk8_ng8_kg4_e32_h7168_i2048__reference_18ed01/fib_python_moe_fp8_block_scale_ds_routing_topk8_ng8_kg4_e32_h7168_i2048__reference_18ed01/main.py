"""Reference, in float32. Assembled by families/moe/build_definitions.py from families/moe/fragments."""
TOP_K = 8
N_GROUP = 8
TOPK_GROUP = 4


# Fragment: imports shared by every assembled string (see families/moe/fragments/__init__.py).
import math

import torch

BLOCK = 128  # quantisation block: 128x128 for weights, 1x128 (along hidden) for activations


# Fragment: routing. Returns (topk_ids [T, K] int64 global expert ids, topk_weights [T, K] fp32).


def route_deepseek(logits, bias, scaling_factor):
    """DeepSeek-V3 routing: sigmoid scores, bias for selection only, grouped top-k.

    s = sigmoid(logits); b = s + bias. The experts form N_GROUP equal groups; a group's score is
    the sum of its two largest b; the TOPK_GROUP best groups are kept and the TOP_K experts with
    the largest b among them are chosen. Their weights are s (without bias) normalised over the
    chosen experts, times `scaling_factor`.
    """
    scores = torch.sigmoid(logits.float())
    biased = scores + bias.float()
    tokens, experts = biased.shape
    group_size = experts // N_GROUP
    grouped = biased.view(tokens, N_GROUP, group_size)
    group_score = grouped.topk(2, dim=2).values.sum(dim=2)
    kept_groups = group_score.topk(TOPK_GROUP, dim=1).indices
    group_keep = torch.zeros(tokens, N_GROUP, dtype=torch.bool, device=logits.device)
    group_keep.scatter_(1, kept_groups, True)
    expert_keep = group_keep.unsqueeze(2).expand(tokens, N_GROUP, group_size).reshape(tokens, experts)
    candidates = biased.masked_fill(~expert_keep, float("-inf"))
    topk_ids = candidates.topk(TOP_K, dim=1).indices
    chosen = scores.gather(1, topk_ids)
    topk_weights = chosen / chosen.sum(dim=1, keepdim=True) * float(scaling_factor)
    return topk_ids, topk_weights


def route_softmax(logits):
    """Softmax top-k routing renormalised over the chosen experts (Qwen3-MoE, Mixtral).

    Softmax over all experts followed by renormalisation over the TOP_K largest is the same as
    a softmax over the TOP_K largest logits, which is what is computed.
    """
    top_logits, topk_ids = logits.float().topk(TOP_K, dim=1)
    return topk_ids, torch.softmax(top_logits, dim=1)


# Fragment: dequantisation and the expert MLPs, in float32.


def dequant_tokens(values, scale_t):
    """[T, H] FP8 values with [H/BLOCK, T] scales (block-major, i.e. transposed) -> fp32 [T, H]."""
    scale = scale_t.float().t().repeat_interleave(BLOCK, dim=1)
    return values.float() * scale


def dequant_weight(values, scale):
    """[N, K] FP8 values with [N/BLOCK, K/BLOCK] scales -> fp32 [N, K]."""
    full = scale.float().repeat_interleave(BLOCK, dim=0).repeat_interleave(BLOCK, dim=1)
    return values.float() * full


def moe_experts(hidden, topk_ids, topk_weights, local_offset, num_local, expert_weights):
    """Sum over each token's chosen experts that are local of weight * W2 (silu(gate) * up).

    `hidden`: fp32 [T, H]. `expert_weights(i)` returns fp32 (W13 [2I, H], W2 [H, I]) of local
    expert i, whose global id is local_offset + i. W13's first half is `up`, its second half the
    gate. A token none of whose chosen experts is local gets a zero row.
    """
    output = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    for local in range(num_local):
        hit = topk_ids == (local_offset + local)
        rows = hit.any(dim=1).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        weight = (topk_weights * hit).sum(dim=1).index_select(0, rows)
        w13, w2 = expert_weights(local)
        gemm1 = hidden.index_select(0, rows) @ w13.t()
        inter = w13.shape[0] // 2
        act = torch.nn.functional.silu(gemm1[:, inter:]) * gemm1[:, :inter]
        output.index_add_(0, rows, (act @ w2.t()) * weight.unsqueeze(1))
    return output


# Fragment: reference of the DeepSeek-V3 FP8 block-scale MoE (expert-parallel slice).


def run(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
        gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, local_expert_offset,
        routed_scaling_factor):
    topk_ids, topk_weights = route_deepseek(routing_logits, routing_bias, routed_scaling_factor)
    hidden = dequant_tokens(hidden_states, hidden_states_scale)

    def expert_weights(local):
        return (dequant_weight(gemm1_weights[local], gemm1_weights_scale[local]),
                dequant_weight(gemm2_weights[local], gemm2_weights_scale[local]))

    return moe_experts(hidden, topk_ids, topk_weights, int(local_expert_offset),
                       gemm1_weights.shape[0], expert_weights)


# Added by fib's benchmarks/fibench_package.py for flashinfer-bench, which requires the reference's
# outputs in the declared dtypes; fib itself judges against the float32 result of the run above.
_fib_float32_run = run


def run(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, local_expert_offset, routed_scaling_factor):
    import torch as _torch
    result = _fib_float32_run(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, local_expert_offset, routed_scaling_factor)
    if isinstance(result, dict):
        result = [result[name] for name in ['output']]
    elif not isinstance(result, (tuple, list)):
        result = [result]
    cast = [t.to(getattr(_torch, d)) for t, d in zip(result, ['bfloat16'])]
    return cast[0] if len(cast) == 1 else tuple(cast)
