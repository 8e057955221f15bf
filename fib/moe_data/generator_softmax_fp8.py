# Fragment: inputs of the softmax-routed FP8 block-scale MoE definitions (all experts local).


def generate(axes, scalars, generator, device):
    """All tensor inputs, deterministic in `generator` (a CPU torch.Generator)."""
    device = torch.device(device)
    tokens, hidden, inter = axes["seq_len"], axes["hidden_size"], axes["intermediate_size"]
    experts = axes["num_experts"]
    seed = draw_seed(generator)
    popularity = expert_popularity(experts, generator, device)
    hidden_states, hidden_states_scale = quantize_token_groups(
        activations(tokens, hidden, stream_key(seed, 3), device))
    gemm1_weights, gemm1_weights_scale = fp8_expert_stack(experts, 2 * inter, hidden, stream_key(WEIGHTS_KEY, 4), device)
    gemm2_weights, gemm2_weights_scale = fp8_expert_stack(experts, hidden, inter, stream_key(WEIGHTS_KEY, 5), device)
    return {
        "routing_logits": routing_logits(tokens, popularity, stream_key(seed, 1), device),
        "hidden_states": hidden_states,
        "hidden_states_scale": hidden_states_scale,
        "gemm1_weights": gemm1_weights,
        "gemm1_weights_scale": gemm1_weights_scale,
        "gemm2_weights": gemm2_weights,
        "gemm2_weights_scale": gemm2_weights_scale,
    }
