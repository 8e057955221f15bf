"""MoE definitions: the torch_eager solutions of the Qwen3 and Mixtral families against the
reference (scaled-down axes; everything reads sizes from the tensors), the generated JSON being
in step with its fragments, and CPU/CUDA agreement of the generator."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from fib.harness.check import check_outputs
from fib.schema import Status
from test_moe_definitions import DS_FULL, DS_SMALL, MIXTRAL, QWEN3, REPO, definition, exec_source

SMALL_AXES = {"num_experts": 16, "hidden_size": 256, "intermediate_size": 128, "gemm1_out_size": 256,
              "num_hidden_blocks": 2, "num_intermediate_blocks": 1, "num_gemm1_out_blocks": 2}


def load_solution(definition_name: str):
    path = REPO / "solutions" / definition_name / "torch_eager" / "moe.py"
    spec = importlib.util.spec_from_file_location(f"_eager_{definition_name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", [QWEN3, MIXTRAL])
@pytest.mark.parametrize("tokens", [1, 37])
def test_torch_eager_matches_reference_on_scaled_down_axes(name, tokens):
    defn = definition(name)
    axes = {**defn.resolve_axes({"seq_len": tokens}),
            **{k: v for k, v in SMALL_AXES.items() if k in defn.axes}}
    if name == MIXTRAL:
        axes["num_experts"] = 8  # keep top-2 of 8
    made = exec_source(defn.generator)["generate"](axes, {}, torch.Generator().manual_seed(tokens), "cpu")
    args = [made[n] for n in defn.inputs]
    reference = exec_source(defn.reference)["run"](*args)
    output = torch.full((tokens, axes["hidden_size"]), float("nan"), dtype=torch.bfloat16)
    load_solution(name).run(*args, output)
    assert torch.isfinite(output).all()
    result = check_outputs(defn, axes, [output], [reference], defn.tolerance)  # fib's own check
    assert result.status == Status.PASSED, result.reason
    assert result.correctness.relative_l2_error < 0.01  # BF16 rounding only


def test_generated_files_are_up_to_date():
    done = subprocess.run([sys.executable, str(REPO / "families" / "moe" / "build_definitions.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", [DS_SMALL, QWEN3, MIXTRAL])
def test_generator_is_bit_identical_on_cpu_and_cuda(name):
    defn = definition(name)
    axes = defn.resolve_axes({"seq_len": 33})
    if name != DS_SMALL:
        axes.update({k: v for k, v in SMALL_AXES.items() if k in defn.axes})
        axes["num_experts"] = 8
    generate = exec_source(defn.generator)["generate"]
    on_cpu = generate(axes, {}, torch.Generator().manual_seed(1), "cpu")
    on_gpu = generate(axes, {}, torch.Generator().manual_seed(1), "cuda")
    for key, value in on_cpu.items():
        a, b = value, on_gpu[key].cpu()
        if a.dtype == torch.float8_e4m3fn:
            a, b = a.view(torch.uint8), b.view(torch.uint8)
        assert torch.equal(a, b), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_full_size_ds_generator_and_reference_on_gpu():
    import time
    defn = definition(DS_FULL)
    axes = defn.resolve_axes({"seq_len": 14107})
    start = time.perf_counter()
    made = exec_source(defn.generator)["generate"](axes, {}, torch.Generator().manual_seed(0), "cuda")
    torch.cuda.synchronize()
    generated = time.perf_counter() - start
    args = [made[n] if n in made else {"local_expert_offset": 96, "routed_scaling_factor": 2.5}[n]
            for n in defn.inputs]
    start = time.perf_counter()
    out = exec_source(defn.reference)["run"](*args)
    torch.cuda.synchronize()
    referenced = time.perf_counter() - start
    print(f"generate {generated:.2f} s, reference {referenced:.2f} s, |out| mean {out.abs().mean():.3f}")
    assert torch.isfinite(out).all() and generated < 30 and referenced < 30


def test_small_sibling_workloads_through_the_harness_inputs():
    inputs = pytest.importorskip("fib.harness.inputs")
    from fib.schema import Workload, load_jsonl

    defn = definition(DS_SMALL)
    reference = exec_source(defn.reference)["run"]
    lines = [Workload.model_validate(line) for _, line in load_jsonl(REPO / "datasets" / "moe" / f"{DS_SMALL}.jsonl")]
    for work in (lines[0], lines[-1]):  # a generated one and the safetensors one
        made = inputs.make_inputs(defn, work, seed=0, device="cpu", root=REPO)
        assert list(made) == list(defn.inputs)
        out = reference(*made.values())
        assert out.shape == (work.axes["seq_len"], 512) and torch.isfinite(out).all()
