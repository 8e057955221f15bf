"""Plain PyTorch (eager) baseline for the Mixtral-8x7B style BF16 MoE.

Sort the (token, expert) pairs by expert, one BF16 matmul per expert with tokens, scatter-add the
weighted results in FP32. One host sync (the per-expert counts).
"""
import torch

import fib

TOP_K = 2


def run(routing_logits, hidden_states, gemm1_weights, gemm2_weights, output):
    num_experts, gemm1_out, _ = gemm1_weights.shape
    inter = gemm1_out // 2
    with fib.stage("routing"):
        top_logits, topk_ids = routing_logits.float().topk(TOP_K, dim=1)
        topk_weights = torch.softmax(top_logits, dim=1)
    with fib.stage("dispatch"):
        flat_ids = topk_ids.flatten()
        order = torch.argsort(flat_ids, stable=True)
        token_of_row = order // TOP_K
        rows = hidden_states.index_select(0, token_of_row)
        counts = torch.bincount(flat_ids, minlength=num_experts).tolist()
    bounds = [(expert, sum(counts[:expert]), count) for expert, count in enumerate(counts) if count]
    with fib.stage("gemm1"):
        gemm1 = torch.empty(rows.shape[0], gemm1_out, dtype=torch.bfloat16, device=rows.device)
        for expert, start, count in bounds:
            torch.matmul(rows[start:start + count], gemm1_weights[expert].t(), out=gemm1[start:start + count])
    with fib.stage("activation"):
        act = torch.nn.functional.silu(gemm1[:, inter:]) * gemm1[:, :inter]
    with fib.stage("gemm2"):
        down = torch.empty(rows.shape, dtype=torch.bfloat16, device=rows.device)
        for expert, start, count in bounds:
            torch.matmul(act[start:start + count], gemm2_weights[expert].t(), out=down[start:start + count])
    with fib.stage("finalize"):
        weighted = down.float() * topk_weights.flatten().index_select(0, order).unsqueeze(1)
        total = torch.zeros(output.shape, dtype=torch.float32, device=output.device)
        total.index_add_(0, token_of_row, weighted)
        output.copy_(total)
