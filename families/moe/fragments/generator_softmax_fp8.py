# Fragment: inputs of the softmax-routed FP8 block-scale MoE definitions (all experts local).


def generate(axes, scalars, generator, device):
    """All tensor inputs, deterministic in `generator` (a CPU torch.Generator)."""
    device = torch.device(device)
    tokens, hidden, inter = axes["seq_len"], axes["hidden_size"], axes["intermediate_size"]
    experts = axes["num_experts"]
    seed = draw_seed(generator)
    popularity = expert_popularity(experts, generator, device)
    return {
        "routing_logits": routing_logits(tokens, popularity, stream_key(seed, 1), device),
        **fp8_layer_inputs(tokens, hidden, inter, experts, seed, device),
    }
