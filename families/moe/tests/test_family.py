"""The MoE family module (families/moe/family.py): fib finds it for every MoE definition, and its
floor counts, from the routing, the bytes and FLOPs worked out here by hand from the axes."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fib.dataset import load_dataset  # noqa: E402
from fib.families import family_for  # noqa: E402
from fib.harness.inputs import definition_function, make_inputs  # noqa: E402

DS_FULL = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"
DS_SMALL = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e8_h512_i256"
QWEN3 = "moe_qwen3_fp8_block_scale_softmax_topk8_e128_h2048_i768"
MIXTRAL = "moe_mixtral_bf16_softmax_topk2_e8_h4096_i14336"


@pytest.fixture(scope="module")
def data():
    return load_dataset([REPO])


def expected(axes: dict, tokens: int, hit: int, pairs: int, *, weight_bytes: int, scales: bool, bias: bool) -> dict:
    """The floor's count, by hand: hit experts' weights (and 128-block fp32 scales) read once, the
    token inputs read once, the bf16 output written once; 2 x (2I x H + H x I) FLOPs per pair."""
    hidden, inter, experts = axes["hidden_size"], axes["intermediate_size"], axes["num_experts"]
    per_expert = weight_bytes * (2 * inter * hidden + hidden * inter)
    if scales:
        per_expert += 4 * (2 * inter // 128 * hidden // 128 + hidden // 128 * inter // 128)
    read_once = weight_bytes * tokens * hidden + 4 * tokens * experts  # hidden states, fp32 logits
    if scales:
        read_once += 4 * (hidden // 128) * tokens
    if bias:
        read_once += 2 * experts  # bf16 routing bias
    return {"bytes": hit * per_expert + read_once + 2 * tokens * hidden,
            "flops": 2 * pairs * (2 * inter * hidden + hidden * inter)}


def local_routing(data, name: str, inputs: dict, local: int) -> tuple[int, int]:
    """(experts hit, routed pairs) among the local experts, from the reference's own routing."""
    namespace = definition_function(data.definitions[name], "run").__globals__
    if "routing_bias" in inputs:
        ids, _ = namespace["route_deepseek"](inputs["routing_logits"], inputs["routing_bias"],
                                             inputs["routed_scaling_factor"])
    else:
        ids, _ = namespace["route_softmax"](inputs["routing_logits"])
    offset = int(inputs.get("local_expert_offset", 0))
    chosen = [e - offset for e in ids.flatten().tolist() if offset <= e < offset + local]
    return len(set(chosen)), len(chosen)


def test_every_moe_definition_has_the_moe_family(data):
    names = sorted(n for n, d in data.definitions.items() if d.op_type == "moe")
    assert names == sorted([DS_FULL, DS_SMALL, QWEN3, MIXTRAL])
    for name in names:
        family = family_for(data.definitions[name], data.roots)
        assert family.name == "moe" and family.token_axis == "seq_len" and family.work is not None


def test_the_small_deepseek_floor_counts_the_hit_experts(data):
    definition = data.definitions[DS_SMALL]
    family = family_for(definition, data.roots)
    axes = definition.resolve_axes({"seq_len": 1})
    seen = set()
    for workload in data.workloads[DS_SMALL]:
        inputs = make_inputs(definition, workload, seed=7, device="cpu", root=data.root_for(DS_SMALL))
        tokens = workload.axes["seq_len"]
        hit, pairs = local_routing(data, DS_SMALL, inputs, axes["num_local_experts"])
        record = family.floor(definition, workload, inputs)
        want = expected(axes, tokens, hit, pairs, weight_bytes=1, scales=True, bias=True)
        assert (record["bytes"], record["flops"]) == (want["bytes"], want["flops"]), workload.axes
        assert record["detail"] == {"experts_hit": hit, "routed_pairs": pairs}
        assert record["compute"] == "fp8_e4m3" and record["tokens"] == tokens
        seen.add(hit)
    assert len(seen) > 2  # the workloads hit different numbers of experts: the count follows the routing


def test_experts_outside_the_local_slice_cost_nothing(data):
    """Moving the local slice to experts no token chose leaves only the token inputs and the output."""
    definition = data.definitions[DS_SMALL]
    family = family_for(definition, data.roots)
    route = definition_function(definition, "run").__globals__["route_deepseek"]
    for workload in sorted(data.workloads[DS_SMALL], key=lambda w: w.axes["seq_len"]):
        inputs = make_inputs(definition, workload, seed=7, device="cpu", root=data.root_for(DS_SMALL))
        axes = definition.resolve_axes(workload.axes)
        ids = route(inputs["routing_logits"], inputs["routing_bias"], inputs["routed_scaling_factor"])[0]
        local = axes["num_local_experts"]
        free = [o for o in range(0, axes["num_experts"] - local + 1) if not ((ids >= o) & (ids < o + local)).any()]
        if free and family.floor(definition, workload, inputs)["flops"] > 0:
            break
    record = family.floor(definition, workload, {**inputs, "local_expert_offset": free[0]})
    want = expected(axes, workload.axes["seq_len"], 0, 0, weight_bytes=1, scales=True, bias=True)
    assert record["flops"] == 0 and record["bytes"] == want["bytes"]
    assert family.floor(definition, workload, inputs)["bytes"] > want["bytes"]


@pytest.mark.parametrize("name, weight_bytes, scales, bias", [
    (DS_FULL, 1, True, True), (QWEN3, 1, True, False), (MIXTRAL, 2, False, False)])
def test_the_full_size_floors_are_counted_from_shapes_and_routing(data, name, weight_bytes, scales, bias):
    """The full-size definitions' weights are too large to generate on a CPU here: they are given
    as meta tensors (shape and dtype, no data), which is all the count reads of them; the routing
    inputs are real."""
    definition = data.definitions[name]
    family = family_for(definition, data.roots)
    workload = next(w for w in data.workloads[name] if 4 <= w.axes["seq_len"] <= 64)
    axes = definition.resolve_axes(workload.axes)
    generator = torch.Generator().manual_seed(3)
    inputs = {}
    for input_name, spec in definition.inputs.items():
        shape = definition.shape_of(spec, axes)
        dtype = getattr(torch, spec.dtype)
        if input_name == "routing_logits":
            inputs[input_name] = torch.randn(shape, generator=generator)
        elif input_name == "routing_bias":
            inputs[input_name] = (0.05 * torch.randn(shape, generator=generator)).to(dtype)
        elif input_name == "local_expert_offset":
            inputs[input_name] = 64
        elif input_name == "routed_scaling_factor":
            inputs[input_name] = 2.5
        else:
            inputs[input_name] = torch.empty(shape, dtype=dtype, device="meta")
    local = axes.get("num_local_experts", axes["num_experts"])
    hit, pairs = local_routing(data, name, inputs, local)
    record = family.floor(definition, workload, inputs)
    want = expected(axes, workload.axes["seq_len"], hit, pairs, weight_bytes=weight_bytes, scales=scales, bias=bias)
    assert (record["bytes"], record["flops"]) == (want["bytes"], want["flops"])
    assert record["compute"] == ("bf16" if name == MIXTRAL else "fp8_e4m3")
    assert 0 < hit <= local and pairs <= workload.axes["seq_len"] * (2 if name == MIXTRAL else 8)
    assert math.isclose(record["bytes"] / 1e6, want["bytes"] / 1e6)


def test_the_committed_roofline_is_what_the_family_counts():
    """reports/moe_deepseek_h200: the floor records this module counts from each trace's seed (on the
    CPU: the routing alone) give the roofline.csv that the H200 run's report was made from (5 solutions
    that ran x 19 workloads)."""
    import pandas as pd
    from fib.report.floor import floor_table, kept_floors, load_ceilings, passed_traces
    report = REPO / "reports" / "moe_deepseek_h200"
    run = report / "run"
    table, notes = floor_table(passed_traces(run), {}, ceilings=load_ceilings(report / "ceilings.json"),
                               kept=kept_floors(run))
    roofline = pd.read_csv(report / "roofline.csv")
    merged = roofline.merge(table, on=["solution", "workload"], suffixes=("", "_now"))
    assert len(merged) == len(roofline) == 95 and not notes
    for column in ("experts_hit", "routed_pairs", "bytes_mb", "gflop", "floor_ms", "of_floor"):
        assert merged[column].to_numpy() == pytest.approx(merged[f"{column}_now"].to_numpy(), rel=1e-12), column
    assert (merged["bound"] == merged["bound_now"]).all()


def test_roofline_py_writes_the_committed_roofline_again(tmp_path, monkeypatch):
    """benchmarks/roofline.py is `fib report floor` with ceilings measured on the spot: given the
    committed run and its ceilings (as if measured now), it writes the committed roofline.csv."""
    import json
    import pandas as pd
    from benchmark_module import load
    report = REPO / "reports" / "moe_deepseek_h200"
    roofline = load("roofline")
    monkeypatch.setattr(roofline, "measure_ceilings",
                        lambda device: json.loads((report / "ceilings.json").read_text()))
    monkeypatch.setattr(sys, "argv", ["roofline.py", str(report / "run"), "--output", str(tmp_path), "--device", "cpu"])
    roofline.main()
    now = pd.read_csv(tmp_path / "roofline.csv")
    committed = pd.read_csv(report / "roofline.csv")
    assert list(now.columns[:len(committed.columns)]) == list(committed.columns)
    now = now.set_index(["workload", "solution"]).loc[committed.set_index(["workload", "solution"]).index]
    for column in committed.columns.drop(["workload", "solution"]):
        if pd.api.types.is_numeric_dtype(committed[column]):
            assert now[column].to_numpy() == pytest.approx(committed[column].to_numpy(), rel=1e-12), column
        else:
            assert list(now[column]) == list(committed[column]), column
    assert not (report / "run" / "floor.jsonl").exists()  # counted from the seeds, not from kept records
