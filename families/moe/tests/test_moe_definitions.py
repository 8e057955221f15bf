"""The MoE definitions: schema, workloads, reference (against an independent float64 version) and
generator. References and generators run the way the harness runs them: exec of the JSON source."""
from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the real `fib` package (the editable finder may give a namespace)

from fib.schema import Definition, Workload, load_jsonl, load_model  # noqa: E402

DEFINITIONS = sorted((REPO / "definitions" / "moe").glob("*.json"))
DS_FULL = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"
DS_SMALL = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e8_h512_i256"
QWEN3 = "moe_qwen3_fp8_block_scale_softmax_topk8_e128_h2048_i768"
MIXTRAL = "moe_mixtral_bf16_softmax_topk2_e8_h4096_i14336"


def definition(name: str) -> Definition:
    return load_model(REPO / "definitions" / "moe" / f"{name}.json", Definition)


def exec_source(source: str) -> dict:
    namespace: dict = {}
    exec(compile(source, "<definition source>", "exec"), namespace)  # noqa: S102 - our own source
    return namespace


@functools.lru_cache(maxsize=None)
def _generated(name: str, tokens: int, seed: int, axes_items: tuple) -> dict:
    defn = definition(name)
    axes = {**defn.resolve_axes({"seq_len": tokens}), **dict(axes_items)}
    return exec_source(defn.generator)["generate"](axes, {}, torch.Generator().manual_seed(seed), "cpu")


def generate(defn: Definition, tokens: int, seed: int, **axes_override) -> dict:
    """The generator's inputs, cached (hashing is the slow part on CPU); tests may replace
    entries of the returned dict but must not modify its tensors in place."""
    return dict(_generated(defn.name, tokens, seed, tuple(sorted(axes_override.items()))))


def ds_args(defn: Definition, made: dict, offset: int, scaling: float = 2.5) -> list:
    scalars = {"local_expert_offset": offset, "routed_scaling_factor": scaling}
    return [made[n] if n in made else scalars[n] for n in defn.inputs]


def run_reference(defn: Definition, args: list) -> torch.Tensor:
    return exec_source(defn.reference)["run"](*args)


# ---- schema and workloads --------------------------------------------------------------------
def test_all_four_definitions_exist():
    assert {p.stem for p in DEFINITIONS} == {DS_FULL, DS_SMALL, QWEN3, MIXTRAL}


@pytest.mark.parametrize("path", DEFINITIONS, ids=lambda p: p.stem)
def test_definition_validates_and_is_consistent(path):
    defn = load_model(path, Definition)
    assert defn.name == path.stem and defn.op_type == "moe"
    assert defn.var_axes() == ["seq_len"]
    assert defn.check_constraints(defn.resolve_axes({"seq_len": 5})) == []
    assert defn.stage_names() == ["routing", "dispatch", "gemm1", "activation", "gemm2", "finalize"]
    assert defn.tolerance is not None and defn.generator is not None
    assert defn.outputs["output"].shape == ["seq_len", "hidden_size"]
    assert defn.outputs["output"].dtype == "bfloat16"
    for spec in defn.inputs.values():  # every tensor's rows are tokens or a const axis
        assert spec.shape is None or all(a == "seq_len" or a in defn.const_axes() for a in spec.shape)


def test_ds_definition_matches_the_public_contract():
    defn = definition(DS_FULL)
    assert defn.const_axes() == {
        "num_experts": 256, "num_local_experts": 32, "hidden_size": 7168, "intermediate_size": 2048,
        "gemm1_out_size": 4096, "num_hidden_blocks": 56, "num_intermediate_blocks": 16,
        "num_gemm1_out_blocks": 32}
    expected = [
        ("routing_logits", ["seq_len", "num_experts"], "float32"),
        ("routing_bias", ["num_experts"], "bfloat16"),
        ("hidden_states", ["seq_len", "hidden_size"], "float8_e4m3fn"),
        ("hidden_states_scale", ["num_hidden_blocks", "seq_len"], "float32"),
        ("gemm1_weights", ["num_local_experts", "gemm1_out_size", "hidden_size"], "float8_e4m3fn"),
        ("gemm1_weights_scale", ["num_local_experts", "num_gemm1_out_blocks", "num_hidden_blocks"], "float32"),
        ("gemm2_weights", ["num_local_experts", "hidden_size", "intermediate_size"], "float8_e4m3fn"),
        ("gemm2_weights_scale", ["num_local_experts", "num_hidden_blocks", "num_intermediate_blocks"], "float32"),
        ("local_expert_offset", None, "int32"),
        ("routed_scaling_factor", None, "float32"),
    ]
    assert [(n, s.shape, s.dtype) for n, s in defn.inputs.items()] == expected
    tol = defn.tolerance
    assert (tol.atol, tol.rtol, tol.required_matched_ratio, tol.max_relative_l2) == (0.1, 0.2, 0.98, 0.08)
    contest = defn.tolerance_preset("contest")
    assert (contest.atol, contest.rtol, contest.required_matched_ratio, contest.max_relative_l2) == (1.0, 0.3, 0.9, None)
    small = definition(DS_SMALL)
    assert [(n, s.shape, s.dtype) for n, s in small.inputs.items()] == expected
    assert small.reference == defn.reference and small.generator == defn.generator


@pytest.mark.parametrize("path", DEFINITIONS, ids=lambda p: p.stem)
def test_workloads_validate_against_their_definition(path):
    defn = load_model(path, Definition)
    lines = list(load_jsonl(REPO / "datasets" / "moe" / f"{defn.name}.jsonl"))
    assert lines
    uuids = set()
    for number, data in lines:
        work = Workload.model_validate(data)
        uuids.add(work.uuid)
        axes = defn.resolve_axes(work.axes)
        assert list(work.inputs) == list(defn.inputs), f"line {number}"
        for name, spec in work.inputs.items():
            declared = defn.inputs[name]
            if declared.is_scalar:
                assert spec.type == "scalar", f"line {number}: {name}"
            elif spec.type == "safetensors":
                tensor = load_file(REPO / spec.path)[spec.tensor_key]
                assert tuple(tensor.shape) == defn.shape_of(declared, axes)
                assert tensor.dtype == getattr(torch, declared.dtype)
            else:
                assert spec.type == "generator", f"line {number}: {name}"
    assert len(uuids) == len(lines)


def test_ds_workloads_are_the_contest_ones():
    lines = [Workload.model_validate(d) for _, d in load_jsonl(REPO / "datasets" / "moe" / f"{DS_FULL}.jsonl")]
    assert [w.axes["seq_len"] for w in lines] == [1, 7, 14, 15, 16, 32, 52, 53, 54, 55, 56, 57, 58, 59,
                                                   62, 80, 901, 11948, 14107]
    offsets = [w.scalar_inputs()["local_expert_offset"] for w in lines]
    assert offsets[:8] == list(range(0, 256, 32)) and offsets[8:16] == offsets[:8]
    assert {w.scalar_inputs()["routed_scaling_factor"] for w in lines} == {2.5}


def test_small_sibling_has_a_safetensors_workload_that_runs():
    defn = definition(DS_SMALL)
    lines = [Workload.model_validate(d) for _, d in load_jsonl(REPO / "datasets" / "moe" / f"{DS_SMALL}.jsonl")]
    blob = [w for w in lines if any(s.type == "safetensors" for s in w.inputs.values())]
    assert len(blob) == 1
    work = blob[0]
    spec = work.inputs["routing_logits"]
    assert (REPO / spec.path).stat().st_size < 8192
    made = generate(defn, work.axes["seq_len"], seed=3)
    made["routing_logits"] = load_file(REPO / spec.path)[spec.tensor_key]
    out = run_reference(defn, ds_args(defn, made, work.scalar_inputs()["local_expert_offset"]))
    assert out.shape == (work.axes["seq_len"], 512) and torch.isfinite(out).all()


# ---- reference against an independent float64 per-token implementation ----------------------
def expected_routing(logits_row, bias, n_group=8, topk_group=4, top_k=8):
    """Plain-Python DeepSeek-V3 routing of one token, in float64: [(expert, weight_before_scaling)]."""
    scores = [1 / (1 + math.exp(-float(x))) for x in logits_row]
    biased = [s + float(b) for s, b in zip(scores, bias)]
    size = len(scores) // n_group
    group_scores = []
    for group in range(n_group):
        members = sorted(biased[group * size:(group + 1) * size], reverse=True)
        group_scores.append((members[0] + members[1], group))
    kept = {g for _, g in sorted(group_scores, reverse=True)[:topk_group]}
    candidates = sorted(((biased[e], e) for e in range(len(scores)) if e // size in kept), reverse=True)
    chosen = [e for _, e in candidates[:top_k]]
    total = sum(scores[e] for e in chosen)
    return [(e, scores[e] / total) for e in chosen]


def expected_ds_output(made, offset, scaling):
    """Float64 reference: per token, per chosen local expert, explicit blockwise dequantisation."""
    logits = made["routing_logits"].double()
    bias = made["routing_bias"].double()
    hidden = made["hidden_states"].double()
    hidden_scale = made["hidden_states_scale"].double()  # [H/128, T]
    tokens, size = hidden.shape
    num_local = made["gemm1_weights"].shape[0]

    def dequant(values, scale):  # per 128x128 block through a reshape, not repeat_interleave
        rows, cols = values.shape
        blocks = values.double().reshape(rows // 128, 128, cols // 128, 128)
        return (blocks * scale.double()[:, None, :, None]).reshape(rows, cols)

    w13 = [dequant(made["gemm1_weights"][i], made["gemm1_weights_scale"][i]) for i in range(num_local)]
    w2 = [dequant(made["gemm2_weights"][i], made["gemm2_weights_scale"][i]) for i in range(num_local)]
    out = torch.zeros(tokens, size, dtype=torch.float64)
    for t in range(tokens):
        x = (hidden[t].reshape(-1, 128) * hidden_scale[:, t, None]).reshape(-1)
        for expert, weight in expected_routing(logits[t], bias):
            local = expert - offset
            if not 0 <= local < num_local:
                continue
            g1 = w13[local] @ x
            inter = g1.shape[0] // 2
            gate, up = g1[inter:], g1[:inter]
            act = gate / (1 + torch.exp(-gate)) * up
            out[t] += weight * scaling * (w2[local] @ act)
    return out


@pytest.mark.parametrize("seed,offset", [(0, 0), (1, 24), (2, 56), (3, 40)])
def test_ds_reference_matches_float64_per_token_loop(seed, offset):
    defn = definition(DS_SMALL)
    made = generate(defn, 24, seed)
    out = run_reference(defn, ds_args(defn, made, offset, 2.5))
    assert out.dtype == torch.float32 and out.shape == (24, 512)
    expected = expected_ds_output(made, offset, 2.5)
    assert expected.abs().max() > 0.1  # some token has a local expert
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_ds_token_without_local_expert_gets_a_zero_row():
    defn = definition(DS_SMALL)
    made = generate(defn, 6, seed=5)
    offset = 16  # local experts 16..23: groups 2 and 3
    logits = made["routing_logits"].clone()
    logits[0, offset:offset + 8] = -30.0  # token 0 can never pick a local expert
    logits[1, :] = -30.0
    logits[1, offset:offset + 8] = 5.0  # token 1 picks all eight local experts
    made["routing_logits"] = logits
    out = run_reference(defn, ds_args(defn, made, offset))
    assert torch.count_nonzero(out[0]) == 0
    assert out[1].abs().sum() > 0
    torch.testing.assert_close(out.double(), expected_ds_output(made, offset, 2.5), rtol=1e-5,
                               atol=1e-5 * float(out.abs().max()))


def test_ds_routing_picks_eight_experts_from_at_most_four_groups():
    defn = definition(DS_SMALL)
    namespace = exec_source(defn.reference)
    made = generate(defn, 64, seed=7)
    ids, weights = namespace["route_deepseek"](made["routing_logits"], made["routing_bias"], 2.5)
    assert ids.shape == (64, 8)
    for t in range(64):
        chosen = ids[t].tolist()
        assert len(set(chosen)) == 8
        assert len({e // 8 for e in chosen}) <= 4
        expected = expected_routing(made["routing_logits"][t].double(), made["routing_bias"].double())
        assert sorted(chosen) == sorted(e for e, _ in expected)
    torch.testing.assert_close(weights.sum(dim=1), torch.full((64,), 2.5))


# ---- generator ---------------------------------------------------------------------------------
def as_bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.uint8) if tensor.dtype == torch.float8_e4m3fn else tensor


@pytest.mark.parametrize("name", [DS_SMALL, QWEN3, MIXTRAL])
def test_generator_is_deterministic_and_seed_dependent(name):
    defn = definition(name)
    small = {} if name == DS_SMALL else {"num_experts": 8, "hidden_size": 256, "intermediate_size": 128,
                                         "gemm1_out_size": 256}
    first, again, other = (_generated.__wrapped__(name, 9, seed, tuple(sorted(small.items())))
                           for seed in (11, 11, 12))
    tensors = [n for n, s in defn.inputs.items() if not s.is_scalar]
    assert sorted(first) == sorted(tensors)
    for n in tensors:
        assert first[n].dtype == getattr(torch, defn.inputs[n].dtype)
        assert torch.equal(as_bits(first[n]), as_bits(again[n])), n
        # the expert weights are the layer's, shared by every workload; the tokens change
        shared = n.startswith(("gemm1_weights", "gemm2_weights"))
        assert torch.equal(as_bits(first[n]), as_bits(other[n])) == shared, n


def test_generator_weights_are_built_once_and_handed_out_as_copies():
    defn = definition(DS_SMALL)
    ns = exec_source(defn.generator)
    builds = []
    real = ns["_fp8_expert_stack"]
    ns["_fp8_expert_stack"] = lambda *a: builds.append(a) or real(*a)
    gen = lambda seed: ns["generate"](defn.resolve_axes({"seq_len": 4}), {}, torch.Generator().manual_seed(seed), "cpu")
    first = gen(1)
    first["gemm1_weights"].view(torch.uint8).fill_(0)  # a solution writing into its inputs
    first["gemm2_weights_scale"].fill_(-1.0)
    second = gen(2)
    assert len(builds) == 2  # W13 and W2, once each
    assert (second["gemm1_weights"].float().abs().amax() == 448.0) and (second["gemm2_weights_scale"] > 0).all()


def test_ds_generator_shapes_and_positive_scales():
    defn = definition(DS_SMALL)
    made = generate(defn, 10, seed=1)
    axes = defn.resolve_axes({"seq_len": 10})
    for name, spec in defn.inputs.items():
        if not spec.is_scalar:
            assert tuple(made[name].shape) == defn.shape_of(spec, axes), name
            assert made[name].is_contiguous(), name
    for name in ("hidden_states_scale", "gemm1_weights_scale", "gemm2_weights_scale"):
        assert (made[name] > 0).all() and torch.isfinite(made[name]).all()
    for name in ("hidden_states", "gemm1_weights", "gemm2_weights"):
        values = made[name].float()
        assert torch.isfinite(values).all() and values.abs().max() == 448.0  # each block hits amax


def fp8_error_bound(master: torch.Tensor, scale_full: torch.Tensor) -> torch.Tensor:
    # E4M3: 3 mantissa bits, so rounding is within 2**-4 relative; below the smallest normal
    # (2**-6 * scale) the step is 2**-9 * scale, so half a step absolute.
    return torch.maximum(master.abs() * 2.0**-4, scale_full * 2.0**-10) * (1 + 1e-6)


def test_ds_generator_fp8_values_reconstruct_the_master():
    defn = definition(DS_SMALL)
    ns = exec_source(defn.generator)
    tokens, seed = 12, 4
    made = generate(defn, tokens, seed)
    key = ns["draw_seed"](torch.Generator().manual_seed(seed))  # generate's first draw
    # expert 1 of W13 and W2
    for stream, name, shape in ((4, "gemm1_weights", (512, 512)), (5, "gemm2_weights", (512, 256))):
        master = ns["expert_weight"](*shape, ns["stream_key"](ns["stream_key"](ns["WEIGHTS_KEY"], stream), 1), "cpu")
        scale = made[f"{name}_scale"][1].repeat_interleave(128, 0).repeat_interleave(128, 1)
        error = (made[name][1].float() * scale - master).abs()
        assert (error <= fp8_error_bound(master, scale)).all()
        assert 0.5 / math.sqrt(shape[1]) < float(master.std()) < 2 / math.sqrt(shape[1])
    master = ns["activations"](tokens, 512, ns["stream_key"](key, 3), "cpu")
    scale = made["hidden_states_scale"].t().repeat_interleave(128, 1)
    error = (made["hidden_states"].float() * scale - master).abs()
    assert (error <= fp8_error_bound(master, scale)).all()


def test_generator_routing_popularity_is_skewed():
    defn = definition(DS_SMALL)
    made = generate(defn, 2000, seed=9)
    ids, _ = exec_source(defn.reference)["route_deepseek"](made["routing_logits"], made["routing_bias"], 2.5)
    share = torch.bincount(ids.flatten(), minlength=64).double() / ids.numel()
    ranked = share.sort(descending=True).values * 64  # 1.0 = the uniform share
    assert ranked[0] > 2.2 and ranked[:4].mean() > 2
    assert ranked[-8:].mean() < 0.6  # and the unpopular tail is starved
    scores = torch.sigmoid(made["routing_logits"])
    assert 0.001 < scores.min() and scores.max() < 0.999  # no saturation into ties


def test_generator_routing_logits_have_no_ties_in_the_top_k():
    defn = definition(DS_FULL)
    ns = exec_source(defn.generator)
    popularity = ns["expert_popularity"](256, torch.Generator().manual_seed(0), "cpu")
    logits = ns["routing_logits"](512, popularity, 123, "cpu")
    top = logits.topk(9, dim=1).values
    assert (top[:, :-1] > top[:, 1:]).all()
