"""Plain PyTorch (eager) baseline for the Qwen3-30B-A3B style FP8 block-scale MoE.

What an unoptimised framework would do: dequantise to BF16, sort the (token, expert) pairs by
expert, run one BF16 matmul per expert with tokens, and scatter-add the weighted results. It
syncs with the host once (the per-expert counts) and re-dequantises the weights of the experts
in use on every call.
"""
import torch

import fib

BLOCK = 128
TOP_K = 8


def _dequant_tokens(values, scale_t):
    scale = scale_t.t().repeat_interleave(BLOCK, dim=1)
    return (values.float() * scale).to(torch.bfloat16)


def _dequant_weight(values, scale):
    full = scale.repeat_interleave(BLOCK, dim=0).repeat_interleave(BLOCK, dim=1)
    return (values.float() * full).to(torch.bfloat16)


def run(routing_logits, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale,
        gemm2_weights, gemm2_weights_scale, output):
    num_experts, gemm1_out, _ = gemm1_weights.shape
    inter = gemm1_out // 2
    with fib.stage("routing"):
        top_logits, topk_ids = routing_logits.float().topk(TOP_K, dim=1)
        topk_weights = torch.softmax(top_logits, dim=1)
    with fib.stage("dispatch"):
        flat_ids = topk_ids.flatten()
        order = torch.argsort(flat_ids, stable=True)
        token_of_row = order // TOP_K
        rows = _dequant_tokens(hidden_states, hidden_states_scale).index_select(0, token_of_row)
        counts = torch.bincount(flat_ids, minlength=num_experts).tolist()
    bounds = [(expert, sum(counts[:expert]), count) for expert, count in enumerate(counts) if count]
    with fib.stage("gemm1"):
        gemm1 = torch.empty(rows.shape[0], gemm1_out, dtype=torch.bfloat16, device=rows.device)
        for expert, start, count in bounds:
            w13 = _dequant_weight(gemm1_weights[expert], gemm1_weights_scale[expert])
            torch.matmul(rows[start:start + count], w13.t(), out=gemm1[start:start + count])
    with fib.stage("activation"):
        act = torch.nn.functional.silu(gemm1[:, inter:]) * gemm1[:, :inter]
    with fib.stage("gemm2"):
        down = torch.empty(rows.shape, dtype=torch.bfloat16, device=rows.device)
        for expert, start, count in bounds:
            w2 = _dequant_weight(gemm2_weights[expert], gemm2_weights_scale[expert])
            torch.matmul(act[start:start + count], w2.t(), out=down[start:start + count])
    with fib.stage("finalize"):
        weighted = down.float() * topk_weights.flatten().index_select(0, order).unsqueeze(1)
        total = torch.zeros(output.shape, dtype=torch.float32, device=output.device)
        total.index_add_(0, token_of_row, weighted)
        output.copy_(total)
