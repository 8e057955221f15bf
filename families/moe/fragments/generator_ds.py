# Fragment: inputs of the DeepSeek-V3 FP8 block-scale MoE definitions.


def generate(axes, scalars, generator, device):
    """All tensor inputs, deterministic in `generator` (a CPU torch.Generator). Sizes come from
    `axes`; the scalars (local_expert_offset, routed_scaling_factor) are not needed."""
    device = torch.device(device)
    tokens, hidden, inter = axes["seq_len"], axes["hidden_size"], axes["intermediate_size"]
    experts, local = axes["num_experts"], axes["num_local_experts"]
    seed = draw_seed(generator)
    popularity = expert_popularity(experts, generator, device)
    return {
        "routing_logits": routing_logits(tokens, popularity, stream_key(seed, 1), device),
        "routing_bias": (normal((experts,), stream_key(seed, 2), device) * ROUTING_BIAS_STD).to(torch.bfloat16),
        **fp8_layer_inputs(tokens, hidden, inter, local, seed, device),
    }
