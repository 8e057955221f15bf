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
