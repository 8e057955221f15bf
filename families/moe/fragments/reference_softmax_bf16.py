# Fragment: reference of the softmax-routed BF16 MoE (all experts local).


def run(routing_logits, hidden_states, gemm1_weights, gemm2_weights):
    topk_ids, topk_weights = route_softmax(routing_logits)

    def expert_weights(local):
        return gemm1_weights[local].float(), gemm2_weights[local].float()

    return moe_experts(hidden_states.float(), topk_ids, topk_weights, 0, gemm1_weights.shape[0],
                       expert_weights)
