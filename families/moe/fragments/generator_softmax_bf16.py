# Fragment: inputs of the softmax-routed BF16 MoE definitions (all experts local).


def generate(axes, scalars, generator, device):
    """All tensor inputs, deterministic in `generator` (a CPU torch.Generator)."""
    device = torch.device(device)
    tokens, hidden, inter = axes["seq_len"], axes["hidden_size"], axes["intermediate_size"]
    experts = axes["num_experts"]
    seed = draw_seed(generator)
    popularity = expert_popularity(experts, generator, device)
    return {
        "routing_logits": routing_logits(tokens, popularity, stream_key(seed, 1), device),
        "hidden_states": activations(tokens, hidden, stream_key(seed, 3), device).to(torch.bfloat16),
        "gemm1_weights": bf16_expert_stack(experts, 2 * inter, hidden, stream_key(WEIGHTS_KEY, 4), device),
        "gemm2_weights": bf16_expert_stack(experts, hidden, inter, stream_key(WEIGHTS_KEY, 5), device),
    }
