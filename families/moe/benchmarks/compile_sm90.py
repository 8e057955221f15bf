"""Compile a Triton solution's kernels for SM90 on a machine without a GPU.

The Triton interpreter (what the CPU tests run) skips code generation, so an error that only the
compiler raises (a loop-carried type change, a layout the backend refuses) first shows on the GPU,
and costs device time. This records the launches one `run()` call makes (meta tensors of the
real shapes: nothing is allocated, nothing runs), compiles each for sm_90a with the installed
Triton's own ptxas, and reads the resource report: registers, stack (spills), shared memory.

    python families/moe/benchmarks/compile_sm90.py --tokens 1 7 80 2000 [--sweep] [--definition D]

--sweep also compiles every configuration the solution's fib_configs declares at each T (what
`fib run --sweep` would time), passed through fib's SolutionCall as config=: nothing is patched
in the solution's module. --definition picks another definition's solution (default: the DeepSeek
one); its meta inputs come from the definition's declared shapes and dtypes (scalars: 0 / 1.0).

Run it with the Triton the GPU machine has (3.6 there) for resource numbers that match it; the
project's CPU test runs it with whatever Triton is installed, for compile errors.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import inspect
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction
from triton.tools.tensor_descriptor import TensorDescriptor

REPO = Path(__file__).resolve().parents[3]
DEF = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"
DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "i32",
          torch.int64: "i64", torch.float8_e4m3fn: "fp8e4nv", torch.uint8: "u8", torch.int8: "i8"}


def load_solution(name: str, definition: str = DEF):
    path = REPO / "solutions" / definition / name / "moe.py"
    spec = importlib.util.spec_from_file_location(f"compile_sm90_{definition}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    sys.path.insert(0, str(REPO))  # `import fib` from a checkout that is not installed
    spec.loader.exec_module(module)
    return module


def meta_inputs(T: int, H=7168, I=2048, E=256, n_local=32, offset=0) -> dict:
    """The definition's inputs at seq_len T as meta tensors (shapes and dtypes only), by name."""
    m = dict(device="meta")
    return {"routing_logits": torch.empty(T, E, dtype=torch.float32, **m),
            "routing_bias": torch.empty(E, dtype=torch.bfloat16, **m),
            "hidden_states": torch.empty(T, H, dtype=torch.float8_e4m3fn, **m),
            "hidden_states_scale": torch.empty(H // 128, T, dtype=torch.float32, **m),
            "gemm1_weights": torch.empty(n_local, 2 * I, H, dtype=torch.float8_e4m3fn, **m),
            "gemm1_weights_scale": torch.empty(n_local, 2 * I // 128, H // 128, dtype=torch.float32, **m),
            "gemm2_weights": torch.empty(n_local, H, I, dtype=torch.float8_e4m3fn, **m),
            "gemm2_weights_scale": torch.empty(n_local, H // 128, I // 128, dtype=torch.float32, **m),
            "local_expert_offset": offset, "routed_scaling_factor": 2.5}


def definition_meta_inputs(definition, axes: dict) -> dict:
    """Any definition's inputs at these axes as meta tensors, by name (scalars: 0, or 1.0 for a
    float)."""
    from fib.harness.inputs import torch_dtype
    out = {}
    for name, spec in definition.inputs.items():
        dtype = torch_dtype(spec.dtype)
        if spec.is_scalar:
            out[name] = 1.0 if dtype.is_floating_point else 0
        else:
            out[name] = torch.empty(definition.shape_of(spec, axes), dtype=dtype, device="meta")
    return out


@functools.lru_cache(maxsize=None)
def _fib_objects(definition_name: str, name: str):
    """The definition and the solution `name` as fib loads them (SolutionCall needs both)."""
    from fib.schema import Definition, Solution, load_model
    definition = load_model(REPO / "definitions" / "moe" / f"{definition_name}.json", Definition)
    return definition, load_model(REPO / "solutions" / definition_name / name / "solution.json", Solution)


def _definition_of(module) -> str:
    """solutions/<definition>/<solution>/moe.py -> <definition>"""
    return Path(module.__file__).parent.parent.name


def solution_call(module, T: int, config: dict | None = None):
    """fib's SolutionCall of `module.run` at seq_len T on meta tensors, with `config` (None: the
    solution's own choice)."""
    from fib.harness.call import SolutionCall
    definition, solution = _fib_objects(_definition_of(module), Path(module.__file__).parent.name)
    axes = definition.resolve_axes({"seq_len": T})
    return SolutionCall(module.run, solution, definition, axes, "meta", config=config)


def module_meta_inputs(module, T: int) -> dict:
    """The meta inputs of the module's definition at seq_len T (DeepSeek: meta_inputs' values)."""
    if _definition_of(module) == DEF:
        return meta_inputs(T)
    definition, _ = _fib_objects(_definition_of(module), Path(module.__file__).parent.name)
    return definition_meta_inputs(definition, definition.resolve_axes({"seq_len": T}))


def _signature(fn: JITFunction, args, kwargs):
    """Triton's signature, constexprs and divisibility attributes for one launch, as its launcher
    would specialize them (pointers taken as 16-byte aligned, as fresh allocations are)."""
    bound = inspect.signature(fn.fn).bind(*args, **kwargs)
    bound.apply_defaults()
    sig, consts, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        v = bound.arguments[p.name]
        if p.is_constexpr or v is None:
            sig[p.name], consts[p.name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[p.name] = "*" + DTYPES[v.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, TensorDescriptor):  # host-side TMA descriptor: typed by its block
            sig[p.name] = f"tensordesc<{DTYPES[v.base.dtype]}[{', '.join(map(str, v.block_shape))}]>"
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            if v == 1 and not p.do_not_specialize:  # Triton specializes 1 as a constant
                sig[p.name], consts[p.name] = "constexpr", 1
                continue
            sig[p.name] = "i32" if -2**31 <= v < 2**31 else "i64"
            if v % 16 == 0 and not p.do_not_specialize:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            sig[p.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {p.name} of type {type(v).__name__}")
    return sig, consts, attrs


def record_launches(module, T: int, config: dict | None = None, *, grids: bool = False):
    """The kernels one `module.run` call at seq_len T launches (through fib's SolutionCall, with
    `config`): [(fn, sig, consts, attrs, options)], each with its grid last when `grids`."""
    launches = []

    def fake_run(self, *args, grid, warmup, **kwargs):
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "num_ctas") if k in kwargs}
        launches.append((self, *_signature(self, args, kwargs), options) + ((tuple(grid),) if grids else ()))

    call = solution_call(module, T, config)
    real_run = JITFunction.run
    try:
        JITFunction.run = fake_run
        call(module_meta_inputs(module, T))
    finally:
        JITFunction.run = real_run
    return launches


def _resources(cubin: bytes) -> dict:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        text = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    out = {}
    for line in text.splitlines():
        for part in line.replace(",", " ").split():
            key, _, val = part.partition(":")
            if key in ("REG", "STACK", "SHARED", "LOCAL") and val.isdigit():
                out[key.lower()] = int(val)
    return out


# SM90 (H100/H200) per-SM limits: 64K registers (allocated per warp in units of 256, i.e. per
# thread in multiples of 8), 228 KB of shared memory with 1 KB reserved per CTA, 2048 threads
SM90_REGS, SM90_SMEM, SM90_THREADS = 65536, 233472, 2048


def ctas_per_sm(reg: int, shared: int, warps: int) -> int:
    """How many CTAs of this kernel one SM holds at once (registers, shared memory, threads)."""
    threads = 32 * warps
    by_regs = SM90_REGS // (-(-reg // 8) * 8 * threads)
    by_smem = SM90_SMEM // (shared + 1024)
    return min(by_regs, by_smem, SM90_THREADS // threads, 32)


def compile_launch(fn, sig, consts, attrs, options, arch: int = 90) -> dict:
    """Compile one recorded launch for sm_{arch}; its resource report and instruction counts."""
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(options))
    ptx = kernel.asm["ptx"]
    row = dict(kernel=fn.__name__, warps=options.get("num_warps", 4), stages=options.get("num_stages"),
               shared_bytes=kernel.metadata.shared, **_resources(kernel.asm["cubin"]),
               wgmma=ptx.count("wgmma.mma_async"), mma_sync=ptx.count("mma.sync"),
               cp_async=ptx.count("cp.async.cg") + ptx.count("cp.async.ca"),
               tma=ptx.count("cp.async.bulk.tensor"))
    if "reg" in row:
        row["ctas_per_sm"] = ctas_per_sm(row["reg"], row["shared_bytes"], row["warps"])
    return row


def compile_run(module, T: int, config=None) -> list[dict]:
    rows = []
    for fn, sig, consts, attrs, options in record_launches(module, T, config):
        rows.append(dict(T=T, **compile_launch(fn, sig, consts, attrs, options)))
    return rows


def main():
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--solution", default="triton_fused")
    parser.add_argument("--definition", default=DEF, help="the solution's definition (solutions/<definition>/)")
    parser.add_argument("--tokens", type=int, nargs="*", default=[1, 7, 14, 80, 901, 11948])
    parser.add_argument("--sweep", action="store_true", help="also every configuration the solution's "
                        "fib_configs declares at each T")
    args = parser.parse_args()
    module = load_solution(args.solution, args.definition)
    print(f"triton {triton.__version__}, target sm_90a; regs/stack(spill)/shared bytes per kernel")
    failed = 0
    for T in args.tokens:
        configs = {"(own choice)": None}
        if args.sweep:
            configs.update(module.fib_configs({"seq_len": T}))
        for label, cfg in configs.items():
            try:
                for r in compile_run(module, T, config=cfg):
                    print(f"T={T:<6} {r['kernel']:<32} w{r['warps']} s{r['stages']} "
                          f"reg={r.get('reg')} stack={r.get('stack')} smem={r['shared_bytes']} "
                          f"wgmma={r['wgmma']} mma={r['mma_sync']} cp.async={r['cp_async']} "
                          f"tma={r['tma']} cta/SM={r.get('ctas_per_sm')}  [{label}]")
            except Exception as exc:  # noqa: BLE001  (report every configuration, then fail)
                failed += 1
                print(f"T={T:<6} COMPILE ERROR [{label}]: {type(exc).__name__}: {str(exc)[:600]}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
