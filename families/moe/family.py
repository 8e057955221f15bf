"""The MoE family as fib sees it (fib/families.py): its token axis and the floor of its workloads.

The floor counts what a fused MoE layer must do at least on one workload, from its actual routing
(the definition's own reference routing applied to the workload's generated logits):

- bytes: every weight tensor (values and block scales) of the local experts at least one token
  chose, read once; every other tensor input (activations, their scales, routing logits and bias)
  read once; the outputs written once;
- FLOPs: 2 x (gemm1_out x hidden + hidden x intermediate) per routed (token, local expert) pair,
  against the matmul ceiling of the weights' dtype (FP8 e4m3 or BF16).

It covers the four MoE definitions that families/moe/build_definitions.py writes (DeepSeek-V3
grouped-sigmoid routing, full size and scaled down; Qwen3 FP8 and Mixtral BF16 softmax top-k).
"""
from __future__ import annotations

import math

OP_TYPES = ("moe",)
TOKEN_AXIS = "seq_len"

# The weight stacks, [local experts, ...]: only the experts the routing hits are read.
EXPERT_TENSORS = ("gemm1_weights", "gemm1_weights_scale", "gemm2_weights", "gemm2_weights_scale")
# The routing tag of a definition -> the reference's routing function and the inputs it takes.
ROUTING = {
    "routing:deepseek-grouped-sigmoid": ("route_deepseek", ("routing_logits", "routing_bias", "routed_scaling_factor")),
    "routing:softmax-topk": ("route_softmax", ("routing_logits",)),
}
COMPUTE = {"float8_e4m3fn": "fp8_e4m3", "bfloat16": "bf16"}


def routed_ids(definition, inputs):
    """[tokens, top_k] global expert ids, as the definition's own reference routing chooses them."""
    from fib.errors import FibError
    from fib.harness.inputs import definition_function
    tags = [t for t in definition.tags if t in ROUTING]
    if len(tags) != 1:
        raise FibError(f"definition '{definition.name}' has routing tags {tags}; the MoE floor needs one of "
                       f"{sorted(ROUTING)}", field="tags")
    function, arguments = ROUTING[tags[0]]
    route = definition_function(definition, "run").__globals__.get(function)
    if route is None:
        raise FibError(f"the reference of definition '{definition.name}' defines no {function}(); the MoE floor "
                       "routes with the reference's own function (families/moe/fragments/routing.py)",
                       field="reference")
    ids, _ = route(*(inputs[name] for name in arguments))
    return ids


def nbytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()


def work(definition, workload, inputs) -> dict:
    """Bytes and FLOPs the workload needs at least, from its actual routing."""
    import torch
    from fib.harness.inputs import torch_dtype
    ids = routed_ids(definition, inputs)
    w1, w2 = inputs["gemm1_weights"], inputs["gemm2_weights"]
    local, gemm1_out, hidden = w1.shape
    intermediate = w2.shape[2]
    offset = int(inputs.get("local_expert_offset", 0))
    local_ids = ids[(ids >= offset) & (ids < offset + local)] - offset
    experts_hit = torch.unique(local_ids).numel()
    routed_pairs = local_ids.numel()
    per_expert = sum(nbytes(inputs[name][0]) for name in EXPERT_TENSORS if name in inputs)
    read_once = sum(nbytes(value) for name, value in inputs.items()
                    if isinstance(value, torch.Tensor) and name not in EXPERT_TENSORS)
    axes = definition.resolve_axes(workload.axes)
    written = sum(math.prod(definition.shape_of(spec, axes)) * torch.empty((), dtype=torch_dtype(spec.dtype)).element_size()
                  for spec in definition.outputs.values())
    return {"bytes": experts_hit * per_expert + read_once + written,
            "flops": 2 * routed_pairs * (gemm1_out * hidden + hidden * intermediate),
            "compute": COMPUTE[str(w1.dtype).removeprefix("torch.")],
            "experts_hit": experts_hit, "routed_pairs": routed_pairs}
