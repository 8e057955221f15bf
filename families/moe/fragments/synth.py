# Fragment: realistic synthetic MoE inputs built on rng.py.

# Expert popularity is Zipf-like: the expert of popularity rank r gets -POPULARITY_SKEW*ln(1+r)
# added to every token's router logit, on top of per-token noise of std LOGIT_NOISE_STD.
POPULARITY_SKEW = 0.3
LOGIT_NOISE_STD = 1.0
ROUTING_BIAS_STD = 0.05  # DeepSeek's selection-only bias: small next to sigmoid scores in (0, 1)


def expert_popularity(num_experts, generator, device):
    """[E] fp32 per-expert logit offsets; which expert is most popular comes from `generator`."""
    rank = torch.randperm(num_experts, generator=generator).tolist()
    offsets = [-POPULARITY_SKEW * math.log1p(r) for r in rank]
    return torch.tensor(offsets, dtype=torch.float32).to(device)


def routing_logits(tokens, popularity, key, device):
    """fp32 [T, E] router logits: per-token noise plus the experts' popularity offsets."""
    noise = normal((tokens, popularity.numel()), key, device) * LOGIT_NOISE_STD
    return noise + popularity


def activations(tokens, hidden, key, device):
    """fp32 [T, H] hidden states: normal values times per-channel and per-token factors
    (roughly log-normal), so some channels and tokens run larger, as in real activations."""
    values = normal((tokens, hidden), stream_key(key, 0), device)
    channel = lognormal_factors(hidden, stream_key(key, 1), device)
    token = lognormal_factors(tokens, stream_key(key, 2), device)
    return values * channel * token.unsqueeze(1)


def expert_weight(out_features, in_features, key, device):
    """fp32 [out, in] weight master: std ~1/sqrt(in) with a log-normal factor per output row,
    so a layer maps O(1) activations to O(1) outputs."""
    values = normal((out_features, in_features), stream_key(key, 0), device)
    row = lognormal_factors(out_features, stream_key(key, 1), device) * (1.0 / math.sqrt(in_features))
    return values * row.unsqueeze(1)


# The expert weights are one layer's: every workload and input set of a definition shares them
# (in serving only the tokens change), so generators key them by WEIGHTS_KEY, not the workload's
# seed. They are most of a generator's GPU work, so each stack is built once per process and
# handed out as copies: a solution that writes into its inputs cannot taint a later input set.
WEIGHTS_KEY = 0x3C6EF372
_WEIGHT_MEMO = {}
_WEIGHT_MEMO_MAX = 2  # the two stacks of this definition (the namespace is per definition)


def memo_weights(label, build):
    """build() once per label (evicting the oldest beyond _WEIGHT_MEMO_MAX); fresh clones after."""
    if label not in _WEIGHT_MEMO:
        while len(_WEIGHT_MEMO) >= _WEIGHT_MEMO_MAX:
            _WEIGHT_MEMO.pop(next(iter(_WEIGHT_MEMO)))
        _WEIGHT_MEMO[label] = build()
    made = _WEIGHT_MEMO[label]
    return tuple(t.clone() for t in made) if isinstance(made, tuple) else made.clone()


def fp8_expert_stack(experts, out_features, in_features, key, device):
    """(float8_e4m3fn [E, out, in], fp32 [E, out/BLOCK, in/BLOCK]) block-quantised expert weights."""
    return memo_weights(("fp8", experts, out_features, in_features, key, str(device)),
                        lambda: _fp8_expert_stack(experts, out_features, in_features, key, device))


def _fp8_expert_stack(experts, out_features, in_features, key, device):
    values = torch.empty(experts, out_features, in_features, dtype=torch.float8_e4m3fn, device=device)
    scales = torch.empty(experts, out_features // BLOCK, in_features // BLOCK, dtype=torch.float32,
                         device=device)
    for expert in range(experts):
        values[expert], scales[expert] = quantize_weight_blocks(
            expert_weight(out_features, in_features, stream_key(key, expert), device))
    return values, scales


def bf16_expert_stack(experts, out_features, in_features, key, device):
    """bfloat16 [E, out, in] expert weights."""
    return memo_weights(("bf16", experts, out_features, in_features, key, str(device)),
                        lambda: _bf16_expert_stack(experts, out_features, in_features, key, device))


def _bf16_expert_stack(experts, out_features, in_features, key, device):
    values = torch.empty(experts, out_features, in_features, dtype=torch.bfloat16, device=device)
    for expert in range(experts):
        values[expert] = expert_weight(out_features, in_features, stream_key(key, expert), device)
    return values
