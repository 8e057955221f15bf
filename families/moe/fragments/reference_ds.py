# Fragment: reference of the DeepSeek-V3 FP8 block-scale MoE (expert-parallel slice).


def run(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
        gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, local_expert_offset,
        routed_scaling_factor):
    topk_ids, topk_weights = route_deepseek(routing_logits, routing_bias, routed_scaling_factor)
    hidden = dequant_tokens(hidden_states, hidden_states_scale)

    def expert_weights(local):
        return (dequant_weight(gemm1_weights[local], gemm1_weights_scale[local]),
                dequant_weight(gemm2_weights[local], gemm2_weights_scale[local]))

    return moe_experts(hidden, topk_ids, topk_weights, int(local_expert_offset),
                       gemm1_weights.shape[0], expert_weights)
