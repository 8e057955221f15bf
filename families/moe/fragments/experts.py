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
