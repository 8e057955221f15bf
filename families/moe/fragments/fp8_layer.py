# Fragment: the tensors every FP8 block-scale MoE generator makes the same way.


def fp8_layer_inputs(tokens, hidden, inter, experts, seed, device):
    """The workload's FP8 hidden states (1x128 groups, from its seed) and the layer's FP8 expert
    stacks of `experts` experts (128x128 blocks, from WEIGHTS_KEY: shared by every workload)."""
    hidden_states, hidden_states_scale = quantize_token_groups(
        activations(tokens, hidden, stream_key(seed, 3), device))
    gemm1_weights, gemm1_weights_scale = fp8_expert_stack(experts, 2 * inter, hidden, stream_key(WEIGHTS_KEY, 4), device)
    gemm2_weights, gemm2_weights_scale = fp8_expert_stack(experts, hidden, inter, stream_key(WEIGHTS_KEY, 5), device)
    return {
        "hidden_states": hidden_states,
        "hidden_states_scale": hidden_states_scale,
        "gemm1_weights": gemm1_weights,
        "gemm1_weights_scale": gemm1_weights_scale,
        "gemm2_weights": gemm2_weights,
        "gemm2_weights_scale": gemm2_weights_scale,
    }
