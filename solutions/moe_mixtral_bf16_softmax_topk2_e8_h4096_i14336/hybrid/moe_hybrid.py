"""Mixtral-8x7B MoE layer (BF16, softmax top-2 of 8): triton_fused where it is the faster, and
above LIBRARY_ABOVE tokens triton_fused's routing with the two expert GEMMs in torch's libraries.

- up to LIBRARY_ABOVE tokens: triton_fused's `run` (imported from its folder, never copied);
- above (the "library" path): triton_fused's routing + align kernels (`_route_and_align`: top-2,
  softmax over the two, each expert's rows padded to ROW_ALIGN), then
  dispatch   one Triton kernel gathers the routed token rows into expert order (zero padding
             rows), records each entry's row, and the per-expert row offsets, on the device;
  gemm1      torch._grouped_mm(rows, W13^T, offs) (bf16, no host sync), or where it does not work
             on the device one torch.mm per expert that received rows, after one device->host
             copy of the offsets (the "per_expert" path);
  activation silu(gate) * up per row, gate = the second half of G1's columns, as the definition
             says (W13 rows [0, I) are up, [I, 2I) the gate), in fp32, rounded to bf16;
  gemm2      the same library call with W2^T;
  finalize   out[t] = sum over t's two slots, in slot order, of weight * row, in fp32, then bf16.

torch._grouped_mm is probed once per process and device, on the first library call there, with a
tiny problem whose exact answer is known (an empty group, rows past the last offset, the
transposed weight view used here); the outcome is cached, so no timed call after the first
probes. Which path a call took, and why, is printed once per (device, token count, path): fib
keeps what a solution prints in the pair's trace (`evaluation.log`) and logs/<solution>.log.

Configurations (`fib run --sweep hybrid`): "default" (auto: the cut above, then one torch.mm per
expert), "triton" (triton_fused at every T), "library" (the library path at every T, grouped GEMM
where it works), "per_expert" (the library path with one torch.mm per expert at every T).
`library_above` moves the cut.

Measured on an H200 (2026-12-02, `fib run --sweep hybrid`, reports/moe_mixtral_h200/hybrid_sweep):
above the cut one cuBLAS GEMM per expert beat torch._grouped_mm (4096 tokens: 4.30 ms of kernels
against 4.73, device span 4.72 against 4.90; 1024: 1.20 against 1.57, span 1.60 against 1.62),
in spite of its host sync, so the default's library path is the per-expert one.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

import fib
from triton_fused import moe as fused

# The cut, measured on one H200 (reports/moe_mixtral_h200: floor/floor.csv, stages/by_tokens.csv;
# torch 2.11, Triton 3.6): at 1-256 tokens triton_fused is at 84-98% of the memory floor and
# beats torch_eager; at 1024 and 4096 tokens its GEMMs are slower than cuBLAS's in torch_eager
# (per call, gemm1 1088 / 3708 us against 764 / 2583, gemm2 545 / 1725 against 415 / 1250).
# No workload between 256 and 1024 was measured; 512 is a guess between them (triton_fused's
# own DECODE_MAX, its last memory-bound tile bucket).
LIBRARY_ABOVE = 512
# Each expert's rows are padded to this (the align kernels' BM), so every group offset is a
# multiple of 16 (which some torch releases' grouped GEMM asked: pytorch/pytorch#154557) and costs
# at most 15 zero rows per expert (128 would add ~6% to the GEMMs' rows at 4096 tokens).
ROW_ALIGN = 16
PATHS = ("auto", "triton", "library", "per_expert")
CONFIG_DOC = {
    "path": "'auto' (triton_fused up to library_above tokens, one torch.mm per expert above), 'triton', "
            "'library' (torch._grouped_mm where it works, else one torch.mm per expert) or "
            "'per_expert' (one torch.mm per expert)",
    "library_above": "auto: token counts above this take the library path",
}
DEFAULT = {"path": "auto", "library_above": LIBRARY_ABOVE}

_to_bf16 = fused._to_bf16  # triton_fused's fp32 -> bf16 (round to nearest even, also interpreted)
_GROUPED: dict = {}   # (device type, index) -> why torch._grouped_mm cannot serve there, or None
_NOTED: set = set()   # (device, T, path, why) already printed


# ---- kernels ----------------------------------------------------------------------------------
@triton.jit
def _dispatch_rows_kernel(hidden_ptr, sorted_ids_ptr, expert_ids_ptr, n_post_ptr, a_ptr, inv_ptr,
                          offs_ptr, n_entries, H, E,
                          TOPK: tl.constexpr, BM: tl.constexpr, BH: tl.constexpr, EP: tl.constexpr,
                          BB: tl.constexpr):
    """Row r of the grouped copy <- the token row of entry sorted_ids[r] (zeros for padding);
    inv[entry] = r. Program 0 also writes offs[e] = the end row of expert e's (padded) rows."""
    r = tl.program_id(0)
    n_post = tl.load(n_post_ptr)
    if r == 0:
        e = tl.arange(0, EP)
        count = tl.zeros([EP], dtype=tl.int32)
        for b0 in range(0, n_post // BM, BB):
            blk = b0 + tl.arange(0, BB)
            owner = tl.load(expert_ids_ptr + blk, mask=blk < n_post // BM, other=EP)
            count += tl.sum((owner[:, None] == e[None, :]).to(tl.int32), 0)
        tl.store(offs_ptr + e, tl.cumsum(count, 0) * BM, mask=e < E)
    if r >= n_post:
        return
    entry = tl.load(sorted_ids_ptr + r)
    live = entry < n_entries
    token = tl.where(live, entry // TOPK, 0).to(tl.int64)
    read_h = tl.where(live, H, 0)  # a padding row reads nothing and stores zeros
    cols = tl.arange(0, BH)
    for h0 in range(0, H, BH):
        c = h0 + cols
        x = tl.load(hidden_ptr + token * H + c, mask=c < read_h, other=0.0)
        tl.store(a_ptr + r.to(tl.int64) * H + c, x, mask=c < H)
    if live:
        tl.store(inv_ptr + entry, r)


@triton.jit
def _swiglu_kernel(g1_ptr, c_ptr, n_post_ptr, I, BI: tl.constexpr, INTERPRET: tl.constexpr):
    """C[r, j] = silu(G1[r, I + j]) * G1[r, j] for the live rows, fp32 math, bf16 out."""
    r = tl.program_id(0)
    if r >= tl.load(n_post_ptr):
        return
    cols = tl.program_id(1) * BI + tl.arange(0, BI)
    inside = cols < I
    row = g1_ptr + r.to(tl.int64) * 2 * I
    up = tl.load(row + cols, mask=inside, other=0.0).to(tl.float32)
    gate = tl.load(row + I + cols, mask=inside, other=0.0).to(tl.float32)
    c = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(c_ptr + r.to(tl.int64) * I + cols, _to_bf16(c, INTERPRET), mask=inside)


@triton.jit
def _combine_kernel(y_ptr, inv_ptr, weights_ptr, out_ptr, H, TOPK: tl.constexpr, BH: tl.constexpr,
                    INTERPRET: tl.constexpr):
    """out[t] = sum over slots k (in order) of weight[t, k] * Y[row of (t, k)], fp32, then bf16."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    inside = cols < H
    acc = tl.zeros([BH], dtype=tl.float32)
    for k in tl.static_range(TOPK):
        row = tl.load(inv_ptr + t * TOPK + k).to(tl.int64)
        w = tl.load(weights_ptr + t * TOPK + k)
        acc += w * tl.load(y_ptr + row * H + cols, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + t * H + cols, _to_bf16(acc, INTERPRET), mask=inside)


# ---- the library GEMMs ------------------------------------------------------------------------
def _probe_grouped_mm(device: torch.device) -> str | None:
    """Why torch._grouped_mm cannot serve on `device`, or None: a tiny problem (groups of 16, 0 and
    32 rows, 8 rows past the last offset, the weights as a transposed [G, N, K] view as below),
    small integers so the bf16 answer is exact."""
    grouped_mm = getattr(torch, "_grouped_mm", None)
    if grouped_mm is None:
        return f"torch {torch.__version__} has no torch._grouped_mm"
    gen = torch.Generator().manual_seed(0)
    counts, K, N = (16, 0, 32), 32, 16
    rows = sum(counts)
    a = torch.randint(-2, 3, (rows + 8, K), generator=gen).to(torch.bfloat16)
    w = torch.randint(-2, 3, (len(counts), N, K), generator=gen).to(torch.bfloat16)
    ends = torch.tensor(counts, dtype=torch.int32).cumsum(0).to(torch.int32)
    want = torch.cat([a[e - n:e].float() @ w[g].float().t() for g, (n, e) in enumerate(zip(counts, ends.tolist()))])
    try:
        got = grouped_mm(a.to(device), w.to(device).transpose(1, 2), offs=ends.to(device))
        got = got[:rows].float().cpu()
    except Exception as exc:  # noqa: BLE001 - any refusal means: use the per-expert loop here
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return f"torch._grouped_mm fails on {device} (torch {torch.__version__}): {type(exc).__name__}: {first}"
    if not torch.equal(got, want):
        return f"torch._grouped_mm gives a wrong answer on {device} (torch {torch.__version__})"
    return None


def grouped_mm_unsupported(device: torch.device) -> str | None:
    """The probe's verdict for `device`, probed on first use and cached for the process."""
    key = (device.type, device.index)
    if key not in _GROUPED:
        _GROUPED[key] = _probe_grouped_mm(device)
    return _GROUPED[key]


def _expert_gemm_grouped(a, weights, offs):
    return torch._grouped_mm(a, weights.transpose(1, 2), offs=offs)


def _expert_gemm_loop(a, weights, ends):
    """One torch.mm per expert that received rows; rows past the last end are left unset."""
    out = torch.empty(a.shape[0], weights.shape[1], dtype=torch.bfloat16, device=a.device)
    start = 0
    for e, end in enumerate(ends):
        if end > start:
            torch.mm(a[start:end], weights[e].t(), out=out[start:end])
        start = end
    return out


def _library(routing_logits, hidden_states, gemm1_weights, gemm2_weights, output, grouped):
    T, H = hidden_states.shape
    E = gemm1_weights.shape[0]
    I = gemm2_weights.shape[2]
    dev = hidden_states.device
    hidden_states = hidden_states.contiguous()
    gemm1_weights = gemm1_weights.contiguous()
    gemm2_weights = gemm2_weights.contiguous()
    # triton_fused's routing + align at T's routing configuration, rows padded to ROW_ALIGN
    cfg = fused._resolve(T, {"BM": ROW_ALIGN})
    ids, weights, sorted_ids, expert_ids, n_post = fused._route_and_align(routing_logits, ROW_ALIGN, cfg)
    rows_max = sorted_ids.numel()
    with fib.stage("dispatch"):
        a = torch.empty(rows_max, H, dtype=torch.bfloat16, device=dev)
        inv = torch.empty(T * fused.TOPK, dtype=torch.int32, device=dev)
        offs = torch.empty(E, dtype=torch.int32, device=dev)
        _dispatch_rows_kernel[(rows_max,)](
            hidden_states, sorted_ids, expert_ids, n_post, a, inv, offs, T * fused.TOPK, H, E,
            TOPK=fused.TOPK, BM=ROW_ALIGN, BH=min(2048, triton.next_power_of_2(H)),
            EP=triton.next_power_of_2(E), BB=min(128, triton.next_power_of_2(expert_ids.numel())))
        if grouped:
            gemm = functools.partial(_expert_gemm_grouped, offs=offs)
        else:  # cuBLAS takes M on the host: one device->host copy of the offsets (one sync)
            gemm = functools.partial(_expert_gemm_loop, ends=offs.tolist())
    with fib.stage("gemm1"):
        g1 = gemm(a, gemm1_weights)
    with fib.stage("activation"):
        c = torch.empty(rows_max, I, dtype=torch.bfloat16, device=dev)
        BI = min(1024, triton.next_power_of_2(I))
        _swiglu_kernel[(rows_max, triton.cdiv(I, BI))](g1, c, n_post, I, BI=BI, INTERPRET=fused.INTERPRET)
    with fib.stage("gemm2"):
        y = gemm(c, gemm2_weights)
    with fib.stage("finalize"):
        BH = min(1024, triton.next_power_of_2(H))
        _combine_kernel[(T, triton.cdiv(H, BH))](y, inv, weights, output, H, TOPK=fused.TOPK, BH=BH,
                                                 INTERPRET=fused.INTERPRET)


# ---- dispatch ---------------------------------------------------------------------------------
def resolve(config: dict | None) -> dict:
    """DEFAULT with `config`'s keys over it; ValueError naming a bad key or value."""
    cfg = dict(DEFAULT)
    if config:
        unknown = sorted(set(config) - set(DEFAULT))
        if unknown:
            raise ValueError(f"hybrid (Mixtral): unknown configuration key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(CONFIG_DOC)}")
        cfg.update(config)
    if cfg["path"] not in PATHS:
        raise ValueError(f"hybrid (Mixtral): path={cfg['path']!r} is not one of {PATHS}")
    cut = cfg["library_above"]
    if not isinstance(cut, int) or isinstance(cut, bool) or cut < 0:
        raise ValueError(f"hybrid (Mixtral): library_above={cut!r} is not a non-negative integer")
    return cfg


def choose(T: int, device: torch.device, cfg: dict = DEFAULT) -> tuple[str, str]:
    """(path, why) for a call of T tokens on `device` under the resolved configuration `cfg`:
    'triton', 'grouped_mm' or 'per_expert' (the last two: the library path)."""
    path, cut = cfg["path"], cfg["library_above"]
    if path == "triton" or (path == "auto" and T <= cut):
        return "triton", ("forced by the configuration (path='triton')" if path == "triton"
                          else f"seq_len {T} <= {cut}")
    why = f"seq_len {T} > {cut}" if path == "auto" else f"forced by the configuration (path={path!r})"
    if path in ("per_expert", "auto"):  # auto: the per-expert GEMMs measured faster (module docstring)
        return "per_expert", why
    reason = grouped_mm_unsupported(device)
    if reason:
        return "per_expert", f"{why}; {reason}"
    return "grouped_mm", why


def note(device: torch.device, T: int, path: str, why: str) -> None:
    """Print which path a call took, once per (device, T, path, why)."""
    key = (str(device), T, path, why)
    if key not in _NOTED:
        _NOTED.add(key)
        print(f"hybrid: seq_len={T} on {device}: {path} ({why})", flush=True)


def run(routing_logits, hidden_states, gemm1_weights, gemm2_weights, output):
    """The definition's signature exactly (flashinfer-bench counts the parameters): the default dispatch."""
    _run(routing_logits, hidden_states, gemm1_weights, gemm2_weights, output)


def fib_configs(axes):
    """fib's configuration hook: {name: configuration}, "default" first (what run uses)."""
    return {"default": dict(DEFAULT), "triton": {"path": "triton"}, "library": {"path": "library"},
            "per_expert": {"path": "per_expert"}}


def fib_with_config(config):
    """fib's configuration hook: `run` with the configuration dict `config` (see fib_configs)."""
    return functools.partial(_run, cfg=resolve(config))  # a bad configuration is named before any call


def _run(routing_logits, hidden_states, gemm1_weights, gemm2_weights, output, cfg=DEFAULT):
    T = hidden_states.shape[0]
    path, why = choose(T, hidden_states.device, cfg)
    note(hidden_states.device, T, path, why)
    if path == "triton":
        fused.run(routing_logits, hidden_states, gemm1_weights, gemm2_weights, output)
    else:
        _library(routing_logits, hidden_states, gemm1_weights, gemm2_weights, output, grouped=path == "grouped_mm")
