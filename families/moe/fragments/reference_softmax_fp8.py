# Fragment: reference of the softmax-routed FP8 block-scale MoE (all experts local).


def run(routing_logits, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale,
        gemm2_weights, gemm2_weights_scale):
    topk_ids, topk_weights = route_softmax(routing_logits)
    hidden = dequant_tokens(hidden_states, hidden_states_scale)

    def expert_weights(local):
        return (dequant_weight(gemm1_weights[local], gemm1_weights_scale[local]),
                dequant_weight(gemm2_weights[local], gemm2_weights_scale[local]))

    return moe_experts(hidden, topk_ids, topk_weights, 0, gemm1_weights.shape[0], expert_weights)
