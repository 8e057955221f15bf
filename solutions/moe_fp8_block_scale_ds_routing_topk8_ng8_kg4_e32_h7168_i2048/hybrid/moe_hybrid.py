"""DeepSeek-V3 FP8 block-scale MoE: a per-token-count dispatch between two of our solutions, each
imported from its own folder (never copied). By default it takes triton_fused at every size: the
kernel-sum "win" of torch_cublaslt at prefill is not one end to end (below).

- path "auto" (configuration `auto`): up to LIBRARY_ABOVE tokens triton_fused's `run`; above,
  torch_cublaslt's `run` (cuBLASLt's block-scaled FP8 GEMMs through torch, one host sync), where
  its own gate (`moe_cublaslt.fib_supported`: torch with scaled_mm's BlockWise recipes, SM90 or
  newer, 128-multiple sizes) passes on the tensors' device, else triton_fused's;
- path "triton" (the default): triton_fused's `run` at every T.

Measured on an H200 (2026-12-02, reports/latency_vs_kernels_h200/table.md): at 11948 / 14107 tokens
torch_cublaslt's kernels sum to 1.66 / 2.15 ms against triton_fused's 2.09 / 3.06, but its calls take
8.7 / 9.1 ms from start to end by CUDA events (its host loop over the experts and one sync leave the
GPU idle ~85-90% of the call), against triton_fused's 2.06 / 3.03. So "auto" wins by kernel time
and loses by a factor 3-4 in the time a caller waits; the default follows the latter.

Which path a call took, and why, is printed once per (device, token count, path): fib keeps what a
solution prints in the pair's trace (`evaluation.log`) and in logs/<solution>.log, and the first
call of every pair is untimed, so the line never lands in a timed call. The gate is asked once per
device and size (cached).

Configurations (`fib_configs`, `fib_with_config`; `fib run --sweep hybrid`): "default" (path
"triton"), "triton", "cublaslt" (torch_cublaslt at every T; where its gate fails the call raises
with the gate's reason rather than run something else under that name) and "auto" (the dispatch
by kernel time above). `library_above` moves auto's cut.
"""
from __future__ import annotations

import functools

import torch

from torch_cublaslt import moe_cublaslt as cublaslt
from triton_fused import moe as fused

# The cut, measured on one H200 (reports/moe_peers_h200/table.md, torch 2.11, Triton 3.6):
# triton_fused is the fastest solution at every workload from 1 to 901 tokens (901: 0.479 ms
# against torch_cublaslt's 1.026), torch_cublaslt at 11948 and 14107 tokens (1.67 / 2.16 ms
# against triton_fused's 2.11 / 3.10). No workload between 901 and 11948 tokens was measured, so
# where the two cross in that range is not known; 1024 (triton_fused's own decode/prefill
# boundary, DECODE_MAX) is a guess inside it, not a measured crossover.
LIBRARY_ABOVE = 1024
PATHS = ("auto", "triton", "cublaslt")
CONFIG_DOC = {
    "path": "'auto' (triton_fused up to library_above tokens, torch_cublaslt above where it can run), "
            "'triton' (triton_fused at every T) or 'cublaslt' (torch_cublaslt at every T)",
    "library_above": "auto: token counts above this go to torch_cublaslt",
}
DEFAULT = {"path": "triton", "library_above": LIBRARY_ABOVE}

_GATE: dict = {}      # (device type, index, H, I) -> why torch_cublaslt cannot run there, or None
_NOTED: set = set()   # (device, T, path, why) already printed


def _device_info(device: torch.device) -> dict:
    """The facts torch_cublaslt's gate reads (fib's device_info keys), from torch."""
    if device.type != "cuda":
        return {"type": device.type, "name": str(device)}
    major, minor = torch.cuda.get_device_capability(device)
    return {"type": "cuda", "sm": major * 10 + minor, "name": torch.cuda.get_device_name(device)}


def cublaslt_unsupported(device: torch.device, H: int, I: int) -> str | None:
    """torch_cublaslt's own verdict for this device and these sizes (asked once, cached)."""
    key = (device.type, device.index, H, I)
    if key not in _GATE:
        _GATE[key] = cublaslt.fib_supported(_device_info(device), {"hidden_size": H, "intermediate_size": I})
    return _GATE[key]


def resolve(config: dict | None) -> dict:
    """DEFAULT with `config`'s keys over it; ValueError naming a bad key or value."""
    cfg = dict(DEFAULT)
    if config:
        unknown = sorted(set(config) - set(DEFAULT))
        if unknown:
            raise ValueError(f"hybrid: unknown configuration key(s) {', '.join(unknown)}; known: {', '.join(CONFIG_DOC)}")
        cfg.update(config)
    if cfg["path"] not in PATHS:
        raise ValueError(f"hybrid: path={cfg['path']!r} is not one of {PATHS}")
    cut = cfg["library_above"]
    if not isinstance(cut, int) or isinstance(cut, bool) or cut < 0:
        raise ValueError(f"hybrid: library_above={cut!r} is not a non-negative integer")
    return cfg


def choose(T: int, device: torch.device, H: int, I: int, cfg: dict = DEFAULT) -> tuple[str, str]:
    """(path, why) for a call of T tokens on `device` under the resolved configuration `cfg`:
    'triton' or 'cublaslt'. A configuration that forces 'cublaslt' where its gate fails raises
    RuntimeError with the gate's reason."""
    path, cut = cfg["path"], cfg["library_above"]
    if path == "triton":
        return "triton", "path='triton', the default: torch_cublaslt's calls wait 4-18x their kernel time"
    reason = None if path == "auto" and T <= cut else cublaslt_unsupported(device, H, I)
    if path == "cublaslt":
        if reason:
            raise RuntimeError(f"hybrid: the configuration forces torch_cublaslt (path='cublaslt'), which cannot "
                               f"run here: {reason}")
        return "cublaslt", "forced by the configuration (path='cublaslt')"
    if T <= cut:
        return "triton", f"seq_len {T} <= {cut}"
    if reason:
        return "triton", f"seq_len {T} > {cut}, but torch_cublaslt cannot run here: {reason}"
    return "cublaslt", f"seq_len {T} > {cut}"


def note(device: torch.device, T: int, path: str, why: str) -> None:
    """Print which path a call took, once per (device, T, path, why)."""
    key = (str(device), T, path, why)
    if key not in _NOTED:
        _NOTED.add(key)
        print(f"hybrid: seq_len={T} on {device}: {path} ({why})", flush=True)


def run(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
        gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, local_expert_offset,
        routed_scaling_factor, output):
    """The definition's signature exactly (flashinfer-bench counts the parameters): the default dispatch."""
    _run(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale,
         gemm2_weights, gemm2_weights_scale, local_expert_offset, routed_scaling_factor, output)


def fib_configs(axes):
    """fib's configuration hook: {name: configuration}, "default" first (what run uses)."""
    return {"default": dict(DEFAULT), "triton": {"path": "triton"}, "cublaslt": {"path": "cublaslt"},
            "auto": {"path": "auto"}}


def fib_with_config(config):
    """fib's configuration hook: `run` with the configuration dict `config` (see fib_configs)."""
    return functools.partial(_run, cfg=resolve(config))  # a bad configuration is named before any call


def _run(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale,
         gemm2_weights, gemm2_weights_scale, local_expert_offset, routed_scaling_factor, output, cfg=DEFAULT):
    T, H = hidden_states.shape
    I = gemm2_weights.shape[2]
    path, why = choose(T, hidden_states.device, H, I, cfg)
    note(hidden_states.device, T, path, why)
    target = cublaslt.run if path == "cublaslt" else fused.run
    target(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale,
           gemm2_weights, gemm2_weights_scale, local_expert_offset, routed_scaling_factor, output)
