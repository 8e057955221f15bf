"""Qwen3-30B-A3B MoE layer (FP8 block scale, softmax top-8 of 128 experts, all local) in Triton,
with the stages fused where it pays. Modelled on the DeepSeek triton_fused solution
(solutions/moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048/triton_fused) and on what
its sweeps on an H200 found (benchmarks/NOTES.md); the Qwen3 section there has the floor and the
predictions for this one.

- routing + align: softmax top-8 per token, ids and weights; then the moe_align of the DeepSeek
  kernel (per-expert counts, BM-padded offsets, a stable scatter of the (token, slot) entries into
  expert order, each BM row block's expert). With `route="single"` (the default up to 16 tokens)
  all of it runs in ONE single-program kernel; with `route="tiles"`, routing+count per token tile,
  then a one-pass scan and a scatter (3 launches; the last two are the "dispatch" stage).
  The top-8 packs each logit (its fp32 bits mapped to an order-preserving int32) and its expert
  index into one int64 key, so each of the 8 passes is one max-reduction (the DeepSeek kernel
  needs a max and an arg-min per pass). Ties go to the lowest expert index. The weights are
  softmax over the 8 chosen logits, which is the reference's route_softmax exactly (softmax over
  all 128 renormalised over the chosen 8 is the same thing).
- gemm1 computes the up and the gate tile of the same columns in one program (W13 rows [0, I) are
  up, [I, 2I) the gate), K stepped by the 128 scale block: one fp8 tl.dot per operand per step and
  acc += dot * (activation scale x weight scale). SwiGLU (silu(gate) * up) in the epilogue, which
  stores C either as fp8 with one scale per row of the tile (`c_dtype="fp8"`: quantisation group =
  the tile's BN1 columns) or as bf16 (`"bf16"`: gemm2 re-quantizes each 1x128 group to fp8 in
  registers, so gemm1 can use narrow tiles and gemm2 still runs one dot per 128-deep step).
- gemm2 multiplies by the routing weight in its epilogue and writes one bf16 row per (token,
  slot); the finalize sums a token's 8 rows in slot order (fp32, deterministic: no atomics).
- tile configurations per bucket of expected rows per expert (T x 8 / E: 1/16 of T here), since
  that, not T, decides padding and weight reuse (the DeepSeek notes' lesson from seq_len 901).
- no host sync, no state kept between calls: CUDA-graph capturable. Sizes come from the tensor
  shapes (H, I, E, the scale block); TOPK = 8 is the definition's.

What is left out of the DeepSeek kernel, and why: split-K and its arrival counters (DeepSeek
needed them at seq_len 1, where 2 experts x 32 tiles were too few programs; here seq_len 1 hits 8
experts and the `tiny` bucket's 32-column tiles give 192 gemm1 and 256 gemm2 programs), the
separate activation kernel (only used with split-K), the group-limited routing, the bias and the
scaling factor, the local expert offset (all 128 are local).

Self-contained rather than importing the DeepSeek module: a solution is packaged from its own
sources (solution.json `sources`, as flashinfer-bench loads it), the kernels differ in their
routing and in what they can drop (offset masks, split-K), and specialising H and I as constexprs
here changes nothing there. The align and GEMM bodies are the DeepSeek ones, simplified.

Configurations: `run(...)` (the definition's signature) uses the configuration of T's bucket
(`_config`); `fib_with_config(config)` gives `run` with a dict whose keys (CONFIG_DOC) override
it; `fib_configs(axes)` names the configurations worth timing at a workload ("default" first),
for `fib run --sweep triton_fused` (docs/interfaces.md). Nothing else changes a launch.
"""
import functools
import os

import torch
import triton
import triton.language as tl

import fib

TOPK = 8            # experts per token (topk8)
NUM_EXPERTS = 128   # the definition's; _config takes E from the weights' shape
# Buckets of the default configuration (see _config)
TINY_MAX = 2        # up to this many tokens: 32-column gemm1 tiles, 64-column gemm2 tiles
SINGLE_ROUTE_MAX = 8    # up to this many tokens: routing + align in one program
DECODE_RPE = 16     # expected rows per expert (T * TOPK / E) up to this: BM 16, bf16 C
MID_RPE = 32        # ... up to this: BM 32, fp8 C in 64-wide groups
LARGE_RPE = 128     # ... up to this: BM 64; above it the prefill tiles (BM 128, 8 warps)
SCAN_ROWS = 64      # routing tiles' counts per step of the align scan ([64, 128] int32, 8 warps)
CONFIG_DOC = {
    "BM": "rows per expert block (power of 2, >= 16)",
    "BN1": "gemm1 columns of C per program (power of 2, 16..128; it computes BN1 up and BN1 gate columns)",
    "BN2": "gemm2 columns per program (power of 2, 16..128)",
    "warps": "num_warps of gemm1 and gemm2",
    "stages1": "num_stages of gemm1", "stages2": "num_stages of gemm2",
    "c_dtype": "the intermediate C: 'fp8' (quantized in gemm1's epilogue, one scale per row and "
               "BN1 columns) or 'bf16' (gemm2 re-quantizes each 1x128 group in registers)",
    "route": "'single' (routing+align in one program) or 'tiles' (routing+count, scan, scatter)",
    "route_tile": "tokens per routing tile (power of 2; single: at most, per step of its loop)",
    "route_one_tile": "single: keep the ids in registers when T fits one tile",
    "route_warps": "num_warps of the single-program routing+align (tiles: 4)",
}
# Triton 3.9's interpreter converts f32 -> fp8 without carrying a rounded-up mantissa into the
# exponent (31.4 -> 16.0); under it we round to the e4m3 grid first so the cast is exact.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _to_fp8(x, INTERPRET: tl.constexpr):
    """f32 -> fp8 e4m3 (x already within +-448)."""
    if INTERPRET:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576  # round to nearest even, 3 bits
        x = bits.to(tl.float32, bitcast=True)
    return x.to(tl.float8e4nv)


# ----------------------------------------------------------------------------------------------
# routing and align


@triton.jit
def _route_tile(logits_ptr, ids_ptr, weights_ptr, t0, T,
                E: tl.constexpr, EP: tl.constexpr, TOPK: tl.constexpr, TB: tl.constexpr):
    """Route tokens t0..t0+TB (rows past T are skipped): the TOPK largest logits (ties: lowest
    expert index), softmax over them; store ids/weights; return the ids and the live rows."""
    tok = t0 + tl.arange(0, TB)
    live = tok < T
    ex = tl.arange(0, EP)
    x = tl.load(logits_ptr + tok[:, None].to(tl.int64) * E + ex[None, :],
                mask=live[:, None] & (ex[None, :] < E), other=float("-inf"))
    x = tl.where(live[:, None], x, 0.0)  # rows past T (never stored): finite, so no NaN below
    # order-preserving int32 of the fp32 bits (negative floats: flip the magnitude bits), then
    # (value, EP-1-index) in one int64: its max is the largest logit, lowest index on ties
    bits = x.to(tl.int32, bitcast=True)
    order = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key = (order.to(tl.int64) << 32) | (EP - 1 - ex)[None, :].to(tl.int64)
    k = tl.arange(0, TOPK)[None, :]
    ids = tl.zeros([TB, TOPK], dtype=tl.int32)
    top = tl.zeros([TB, TOPK], dtype=tl.float32)
    for i in tl.static_range(TOPK):
        best = tl.max(key, 1)
        e = (EP - 1) - (best & (EP - 1)).to(tl.int32)
        hi = (best >> 32).to(tl.int32)
        value = tl.where(hi < 0, hi ^ 0x7FFFFFFF, hi).to(tl.float32, bitcast=True)
        ids = tl.where(k == i, e[:, None], ids)
        top = tl.where(k == i, value[:, None], top)
        key = tl.where(key == best[:, None], -9223372036854775807, key)
    w = tl.exp(top - tl.max(top, 1)[:, None])
    w = w / tl.sum(w, 1)[:, None]
    offs = tok[:, None] * TOPK + k
    tl.store(ids_ptr + offs, ids, mask=live[:, None])
    tl.store(weights_ptr + offs, w, mask=live[:, None])
    return ids, live


@triton.jit
def _onehot(ids, live, EP: tl.constexpr, N: tl.constexpr):
    """[N, EP] int32 one-hot of each entry's expert (zero rows for entries past the last token)."""
    flat = tl.reshape(ids, [N])
    return ((flat[:, None] == tl.arange(0, EP)[None, :]) & live[:, None]).to(tl.int32)


@triton.jit
def _align_offsets(total, sorted_ids_ptr, expert_ids_ptr, n_post_ptr, n_entries,
                   E: tl.constexpr, BM: tl.constexpr, EP: tl.constexpr, BB: tl.constexpr):
    """Given per-expert totals: write n_post, each BM block's expert, the padding sentinels
    (n_entries); return each expert's first row. [EP, PB] and [BB, EP] per step (PB = BM up to
    32): [128, 128] tiles spilled on sm_90a."""
    e = tl.arange(0, EP)
    padded = (total + BM - 1) // BM * BM
    end = tl.cumsum(padded, 0)
    start = end - padded
    n_post = tl.sum(padded, 0)
    tl.store(n_post_ptr, n_post)
    PB: tl.constexpr = 32 if BM > 32 else BM
    for p0 in tl.static_range(0, BM, PB):
        slot = (start + total + p0)[:, None] + tl.arange(0, PB)[None, :]
        tl.store(sorted_ids_ptr + slot, n_entries + 0 * slot, mask=(slot < end[:, None]) & (e[:, None] < E))
    end_live = tl.where(e < E, end, 2147483647)
    bb = tl.arange(0, BB)
    for b0 in range(0, n_post // BM, BB):
        blk = b0 + bb
        owner = tl.sum((end_live[None, :] <= blk[:, None] * BM).to(tl.int32), 1)
        tl.store(expert_ids_ptr + blk, owner, mask=blk < n_post // BM)
    return start


@triton.jit
def _routing_align_kernel(logits_ptr, ids_ptr, weights_ptr, sorted_ids_ptr, expert_ids_ptr,
                          n_post_ptr, T,
                          E: tl.constexpr, EP: tl.constexpr, TOPK: tl.constexpr, TB: tl.constexpr,
                          BM: tl.constexpr, ONE_TILE: tl.constexpr, BB: tl.constexpr):
    """Small T: the whole routing + moe_align in one program (one launch instead of three).
    ONE_TILE (T <= TB): the ids stay in registers between routing and the scatter."""
    NE: tl.constexpr = TB * TOPK
    if ONE_TILE:
        ids1, _ = _route_tile(logits_ptr, ids_ptr, weights_ptr, 0, T, E, EP, TOPK, TB)
        entry = tl.arange(0, NE)
        onehot = _onehot(ids1, entry < T * TOPK, EP, NE)
        start = _align_offsets(tl.sum(onehot, 0), sorted_ids_ptr, expert_ids_ptr, n_post_ptr,
                               T * TOPK, E, BM, EP, BB)
        pos = tl.sum(onehot * (start[None, :] + tl.cumsum(onehot, 0) - 1), 1)
        tl.store(sorted_ids_ptr + pos, entry, mask=tl.sum(onehot, 1) > 0)
    else:
        total = tl.zeros([EP], dtype=tl.int32)
        for t0 in range(0, T, TB):
            ids, _ = _route_tile(logits_ptr, ids_ptr, weights_ptr, t0, T, E, EP, TOPK, TB)
            entry = t0 * TOPK + tl.arange(0, NE)
            total += tl.sum(_onehot(ids, entry < T * TOPK, EP, NE), 0)
        start = _align_offsets(total, sorted_ids_ptr, expert_ids_ptr, n_post_ptr, T * TOPK,
                               E, BM, EP, BB)
        tl.debug_barrier()  # the ids written above are read back by other threads of this program
        carry = start
        for t0 in range(0, T, TB):
            entry = t0 * TOPK + tl.arange(0, NE)
            live = entry < T * TOPK
            ids = tl.load(ids_ptr + entry, mask=live, other=-1)
            onehot = _onehot(ids, live, EP, NE)
            pos = tl.sum(onehot * (carry[None, :] + tl.cumsum(onehot, 0) - 1), 1)
            tl.store(sorted_ids_ptr + pos, entry, mask=tl.sum(onehot, 1) > 0)
            carry += tl.sum(onehot, 0)


@triton.jit
def _routing_kernel(logits_ptr, ids_ptr, weights_ptr, counts_ptr, T,
                    E: tl.constexpr, EP: tl.constexpr, TOPK: tl.constexpr, TB: tl.constexpr):
    """Larger T: route one token tile and count its entries per expert."""
    pid = tl.program_id(0)
    ids, _ = _route_tile(logits_ptr, ids_ptr, weights_ptr, pid * TB, T, E, EP, TOPK, TB)
    entry = pid * TB * TOPK + tl.arange(0, TB * TOPK)
    onehot = _onehot(ids, entry < T * TOPK, EP, TB * TOPK)
    tl.store(counts_ptr + pid * EP + tl.arange(0, EP), tl.sum(onehot, 0))


@triton.jit
def _moe_align_scan_kernel(counts_ptr, chunk_base_ptr, start_ptr, sorted_ids_ptr, expert_ids_ptr,
                           n_post_ptr, n_chunks, n_entries,
                           E: tl.constexpr, BM: tl.constexpr, EP: tl.constexpr, CB: tl.constexpr):
    """One program, one pass over the tiles' counts: where each tile's entries of each expert
    start within that expert's segment (chunk_base), then the padded segments (start, n_post,
    each block's expert, the padding). One pass instead of two: the loop's loads are a serial
    chain (~1 L2 round trip per CB tiles)."""
    e = tl.arange(0, EP)
    c = tl.arange(0, CB)
    carry = tl.zeros([EP], dtype=tl.int32)
    for c0 in range(0, n_chunks, CB):
        rows = c0 + c
        mask = rows[:, None] < n_chunks
        tile = tl.load(counts_ptr + rows[:, None] * EP + e[None, :], mask=mask, other=0)
        tl.store(chunk_base_ptr + rows[:, None] * EP + e[None, :],
                 carry[None, :] + tl.cumsum(tile, 0) - tile, mask=mask)
        carry += tl.sum(tile, 0)
    start = _align_offsets(carry, sorted_ids_ptr, expert_ids_ptr, n_post_ptr, n_entries, E, BM, EP, 32)
    tl.store(start_ptr + e, start)


@triton.jit
def _moe_align_scatter_kernel(ids_ptr, chunk_base_ptr, start_ptr, sorted_ids_ptr, n_entries,
                              CHUNK: tl.constexpr, EP: tl.constexpr):
    """sorted_ids[position] = entry index, stable within each expert (token order)."""
    pid = tl.program_id(0)
    entry = pid * CHUNK + tl.arange(0, CHUNK)
    live = entry < n_entries
    ids = tl.load(ids_ptr + entry, mask=live, other=-1)
    onehot = _onehot(ids, live, EP, CHUNK)
    e = tl.arange(0, EP)
    base = tl.load(start_ptr + e) + tl.load(chunk_base_ptr + pid * EP + e)
    pos = tl.sum(onehot * (base[None, :] + tl.cumsum(onehot, 0) - 1), 1)
    tl.store(sorted_ids_ptr + pos, entry, mask=tl.sum(onehot, 1) > 0)


# ----------------------------------------------------------------------------------------------
# the expert GEMMs and the finalize


@triton.jit
def _tile_ids(pid, n_m, n_n, GROUP_M: tl.constexpr):
    """Grouped launch order: GROUP_M row blocks sweep the column tiles together, so the row blocks
    of one expert read each weight tile at about the same time (L2 reuse)."""
    per_group = GROUP_M * n_n
    first_m = (pid // per_group) * GROUP_M
    rows = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % rows
    pid_n = (pid % per_group) // rows
    return pid_m, pid_n


@triton.jit
def _row_block(expert_ids_ptr, sorted_ids_ptr, pid_m, n_entries, TOPK: tl.constexpr, BM: tl.constexpr):
    """One row block's expert, its BM sorted rows, their entries (live: not padding) and the
    tokens the entries came from. Loaded before n_post is known (in bounds: the grid covers the
    allocated blocks), so these loads and n_post's are in flight together."""
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    rows = pid_m * BM + tl.arange(0, BM)
    entry = tl.load(sorted_ids_ptr + rows)
    live = entry < n_entries
    token = tl.where(live, entry // TOPK, 0).to(tl.int64)
    return expert, rows, entry, live, token


@triton.jit
def _gemm1_swiglu_kernel(a_ptr, a_scale_ptr, w_ptr, w_scale_ptr, c_ptr, c_scale_ptr,
                         sorted_ids_ptr, expert_ids_ptr, n_post_ptr, n_tokens, n_entries, n_m, n_rows,
                         I: tl.constexpr, K: tl.constexpr, TOPK: tl.constexpr, QB: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr,
                         QUANT: tl.constexpr, INTERPRET: tl.constexpr):
    """C[row, cols] = silu(A W_gate^T) * (A W_up^T) for the BN columns `cols` of one expert's row
    block. QUANT: fp8 out with one scale per row of this tile (group = BN <= QB columns), stored
    block-major at c_scale[pid_n, row]; else bf16 out."""
    pid_m, pid_n = _tile_ids(tl.program_id(0), n_m, I // BN, GROUP_M)
    expert, rows, entry, live, token = _row_block(expert_ids_ptr, sorted_ids_ptr, pid_m, n_entries,
                                                  TOPK, BM)
    if pid_m * BM >= tl.load(n_post_ptr):
        return
    n_kb: tl.constexpr = K // QB
    cols = pid_n * BN + tl.arange(0, BN)
    kk = tl.arange(0, QB)
    a_ptrs = a_ptr + token[:, None] * K + kk[None, :]
    up_ptrs = w_ptr + expert * (2 * I * K) + cols[None, :].to(tl.int64) * K + kk[:, None]
    gate_ptrs = up_ptrs + I * K
    # the tile's BN <= QB columns lie in one 128-row scale block of W13: one scalar per K step
    up_s_ptr = w_scale_ptr + expert * (2 * I // QB) * n_kb + (pid_n * BN // QB) * n_kb
    gate_s_ptr = up_s_ptr + (I // QB) * n_kb
    acc_up = tl.zeros([BM, BN], dtype=tl.float32)
    acc_gate = tl.zeros([BM, BN], dtype=tl.float32)
    for kb in range(0, n_kb):
        a = tl.load(a_ptrs, mask=live[:, None], other=0.0)
        a_s = tl.load(a_scale_ptr + kb * n_tokens + token)[:, None]
        w_up = tl.load(up_ptrs)
        w_gate = tl.load(gate_ptrs)
        acc_up += tl.dot(a, w_up) * (a_s * tl.load(up_s_ptr + kb))
        acc_gate += tl.dot(a, w_gate) * (a_s * tl.load(gate_s_ptr + kb))
        a_ptrs += QB
        up_ptrs += QB
        gate_ptrs += QB
    c = acc_gate / (1.0 + tl.exp(-acc_gate)) * acc_up
    out = c_ptr + rows[:, None].to(tl.int64) * I + cols[None, :]
    if QUANT:
        amax = tl.maximum(tl.max(tl.abs(c), 1), 1e-12)
        q = tl.minimum(tl.maximum(c * (448.0 / amax)[:, None], -448.0), 448.0)
        tl.store(out, _to_fp8(q, INTERPRET))
        tl.store(c_scale_ptr + pid_n * n_rows + rows, amax / 448.0)
    else:
        tl.store(out, c.to(tl.bfloat16))


@triton.jit
def _gemm2_kernel(c_ptr, c_scale_ptr, w_ptr, w_scale_ptr, y_ptr, weights_ptr,
                  sorted_ids_ptr, expert_ids_ptr, n_post_ptr, n_rows, n_entries, n_m,
                  N: tl.constexpr, K: tl.constexpr, QB: tl.constexpr, QG: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr,
                  A_BF16: tl.constexpr, INTERPRET: tl.constexpr):
    """y[entry(row), cols] = weight(entry) * C[row] @ dequant(W2[expert])[cols]^T, in bf16.
    C fp8 (A_BF16 False): one scale per 1xQG group (QG divides QB), QB // QG fp8 dots per step.
    C bf16 (A_BF16, QG = QB): each 1xQB group is re-quantized to fp8 here, in registers (amax /
    448), and one fp8 dot runs per step. K steps by the weight's scale block QB either way, so
    every pipelined step streams a QB-deep weight tile."""
    pid_m, pid_n = _tile_ids(tl.program_id(0), n_m, N // BN, GROUP_M)
    expert, rows, entry, live, _ = _row_block(expert_ids_ptr, sorted_ids_ptr, pid_m, n_entries, 1, BM)
    if pid_m * BM >= tl.load(n_post_ptr):
        return
    n_kb: tl.constexpr = K // QB
    SUB: tl.constexpr = QB // QG
    cols = pid_n * BN + tl.arange(0, BN)
    kk = tl.arange(0, QG)
    a_ptrs = c_ptr + rows[:, None].to(tl.int64) * K + kk[None, :]
    w_ptrs = w_ptr + expert * (N * K) + cols[None, :].to(tl.int64) * K + kk[:, None]
    ws_ptr = w_scale_ptr + expert * (N // QB) * n_kb + (pid_n * BN // QB) * n_kb  # BN <= QB
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for kb in range(0, n_kb):
        w_s = tl.load(ws_ptr + kb)
        for g in tl.static_range(SUB):
            w = tl.load(w_ptrs + g * QG)
            a = tl.load(a_ptrs + g * QG)
            if A_BF16:
                af = a.to(tl.float32)
                amax = tl.maximum(tl.max(tl.abs(af), 1), 1e-12)
                q = tl.minimum(tl.maximum(af * (448.0 / amax)[:, None], -448.0), 448.0)
                acc += tl.dot(_to_fp8(q, INTERPRET), w) * ((amax / 448.0)[:, None] * w_s)
            else:
                a_s = tl.load(c_scale_ptr + (kb * SUB + g) * n_rows + rows)[:, None]
                acc += tl.dot(a, w) * (a_s * w_s)
        a_ptrs += QB
        w_ptrs += QB
    weight = tl.load(weights_ptr + entry, mask=live, other=0.0)
    out = y_ptr + entry[:, None].to(tl.int64) * N + cols[None, :]
    tl.store(out, (acc * weight[:, None]).to(tl.bfloat16), mask=live[:, None])


@triton.jit
def _finalize_kernel(y_ptr, out_ptr, out_stride, H, TOPK: tl.constexpr, BH: tl.constexpr):
    """out[t] = the sum of the token's TOPK weighted rows, in slot order (fp32, then bf16)."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    k = tl.arange(0, TOPK)
    y = tl.load(y_ptr + (t * TOPK + k)[:, None] * H + cols[None, :], mask=cols[None, :] < H, other=0.0)
    tl.store(out_ptr + t * out_stride + cols, tl.sum(y.to(tl.float32), 0).to(tl.bfloat16), mask=cols < H)


# ----------------------------------------------------------------------------------------------
# configurations


def _config(T, E=NUM_EXPERTS):
    """The default configuration of T's bucket (every key of CONFIG_DOC); E = number of experts.

    First reasoned from what the DeepSeek kernel's H200 sweeps found in the same regime of rows
    per expert (below), then corrected by this definition's H200 sweep of 2026-12-02 (`fib run
    --sweep triton_fused`, reports/moe_qwen3_h200/sweep; benchmarks/NOTES.md, Qwen3): the decode
    tiles up to 16 rows per expert (-7.4% at 256 tokens against BM 32 with an fp8 C), 3 stages in
    both GEMMs at <= 128 rows per expert (-8.9% at 1024), 5 gemm2 stages at prefill (-1.0 to
    -1.5%), routing tiles of 2 tokens at 9-16 tokens (-5.6% at 16 against the one program), and
    at 1-2 tokens a bf16 C re-quantized in gemm2 with 128 columns (-6.1% at 1 token against the
    fp8 C with 64 columns that DeepSeek preferred).
    - tiny (T <= 2: 8-16 experts hit, one live row each): with 64 columns gemm1 would have only
      12 programs per expert (96 at T=1 on 132 SMs); 32 columns give 192, each 16 steps of 8 KB of
      weights with 6 stages in flight. fp8 C (32-wide groups, 4 dots per gemm2 step): at T=1 the
      DeepSeek re-quantizing gemm2 cost +3 us over an fp8 C. gemm2 64 columns: 256 programs.
    - decode (<= 16 rows per expert, T <= 256): BM 16, 64-column gemm1 tiles (12 programs per
      expert), bf16 C re-quantized in gemm2 with 128 columns: DeepSeek's winner at 9..128 tokens.
    - mid (<= 32, T <= 512): BM 32, fp8 C in 64-wide groups (DeepSeek's 129..1024 winner; not
      measured here: no workload falls in it).
    - large (<= 128, T <= 2048): BM 64 (T=1024: 64 rows per expert on average, where BM 32 would
      take twice the tiles and wgmma wants 64 rows per warp group), 64-column gemm1 tiles (96 KB
      of shared memory at 4 stages: two programs per SM).
    - prefill: DeepSeek's prefill tiles (BM 128, 128 columns, 8 warps), fp8 C in 1x128 groups.
    Routing: one program up to 8 tokens (8 int64 max passes over [16, 128]); one warp for 1-2
    tokens (shuffles only: DeepSeek's 6.5 -> 4.7 us at T=1), 4 up to 8 tokens; above, routing
    tiles of 2 tokens up to 16 (the one program with 8 warps was 5.6% slower end to end at 16
    tokens), 4 up to 256 (DeepSeek v7b:
    more programs, shorter serial top-k chains), 8 up to 1024 and 16 beyond, so the one-program
    align scan takes few serial steps of 64 tiles (1, 2, 8 at 256, 1024, 8192 tokens)."""
    if T <= SINGLE_ROUTE_MAX:
        route = dict(route="single", route_tile=16, route_one_tile=True,
                     route_warps=1 if T <= 2 else 4 if T <= 8 else 8)
    else:
        route = dict(route="tiles", route_tile=2 if T <= 16 else 4 if T <= 256 else 8 if T <= 1024 else 16,
                     route_one_tile=True, route_warps=4)
    rpe = T * TOPK / E
    if T <= TINY_MAX:
        tiles = dict(BM=16, BN1=32, BN2=128, warps=4, stages1=6, stages2=4, c_dtype="bf16")
    elif rpe <= DECODE_RPE:
        tiles = dict(BM=16, BN1=64, BN2=128, warps=4, stages1=4, stages2=4, c_dtype="bf16")
    elif rpe <= MID_RPE:
        tiles = dict(BM=32, BN1=64, BN2=128, warps=4, stages1=4, stages2=4, c_dtype="fp8")
    elif rpe <= LARGE_RPE:
        tiles = dict(BM=64, BN1=64, BN2=128, warps=4, stages1=3, stages2=3, c_dtype="fp8")
    else:
        tiles = dict(BM=128, BN1=128, BN2=128, warps=8, stages1=4, stages2=5, c_dtype="fp8")
    return {**tiles, **route}


def _variants(T, E=NUM_EXPERTS):
    """The named alternatives to T's default worth timing in its bucket (overrides of it): the
    choices _config's docstring argues for, each against its nearest rival."""
    rpe = T * TOPK / E
    if T <= TINY_MAX:
        return {"bn1_64": dict(BN1=64, stages1=4), "fp8c": dict(c_dtype="fp8"),
                "bn2_64": dict(BN2=64), "s4": dict(stages1=4), "fp8c_bn64": dict(c_dtype="fp8", BN2=64)}
    if rpe <= DECODE_RPE:
        out = {"fp8c": dict(c_dtype="fp8"), "fp8c_bn64": dict(c_dtype="fp8", BN2=64),
               "bn1_32": dict(BN1=32), "bm32": dict(BM=32)}
        if T <= SINGLE_ROUTE_MAX:
            warps = 4 if _config(T, E)["route_warps"] == 8 else 8
            out.update({"route_tiles": dict(route="tiles", route_tile=2), f"route_w{warps}": dict(route_warps=warps),
                        "route_reload": dict(route_one_tile=False)})
        elif T <= 16:  # the one program the sweep beat here
            out["route_single"] = dict(route="single", route_tile=16, route_one_tile=True, route_warps=8)
        return out
    if rpe <= MID_RPE:
        return {"rq": dict(c_dtype="bf16"), "bm16": dict(BM=16, c_dtype="bf16"), "bm64": dict(BM=64),
                "bn1_128": dict(BN1=128)}
    if rpe <= LARGE_RPE:
        return {"bm32": dict(BM=32), "bn1_128": dict(BN1=128),
                "bm128_w8": dict(BM=128, BN1=128, warps=8), "s44": dict(stages1=4, stages2=4)}
    return {"s34": dict(stages1=3, stages2=4), "s44": dict(stages1=4, stages2=4),
            "bm64_w4": dict(BM=64, BN1=64, warps=4), "bn1_64": dict(BN1=64)}


def fib_configs(axes):
    """fib's configuration hook: {name: configuration} valid at these axes, "default" first (what
    run uses there)."""
    T, E = int(axes["seq_len"]), int(axes.get("num_experts", NUM_EXPERTS))
    base = _config(T, E)
    return {"default": base, **{name: {**base, **over} for name, over in _variants(T, E).items()}}


def _invalid(cfg):
    """Why this configuration cannot run, or None."""
    for key, low, high in (("BM", 16, 256), ("BN1", 16, 128), ("BN2", 16, 128), ("warps", 1, 16),
                           ("route_tile", 1, 64), ("route_warps", 1, 16)):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < low or v > high or v & (v - 1):
            return f"{key}={v!r} is not a power of 2 in [{low}, {high}]"
    for key in ("stages1", "stages2"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            return f"{key}={cfg[key]!r} is not a positive integer"
    for key, allowed in (("c_dtype", ("fp8", "bf16")), ("route", ("single", "tiles")),
                         ("route_one_tile", (True, False))):
        if cfg[key] not in allowed:
            return f"{key}={cfg[key]!r} is not one of {allowed}"
    return None


def _resolve(T, E, config):
    """T's default configuration with `config`'s keys over it; ValueError naming a bad key."""
    cfg = _config(T, E)
    if config is None:
        return cfg
    unknown = sorted(set(config) - set(cfg))
    if unknown:
        raise ValueError(f"triton_fused (qwen3): unknown configuration key(s) {', '.join(unknown)}; "
                         f"known: {', '.join(CONFIG_DOC)}")
    cfg = {**cfg, **config}
    problem = _invalid(cfg)
    if problem:
        raise ValueError(f"triton_fused (qwen3): configuration {config}: {problem}")
    return cfg


# ----------------------------------------------------------------------------------------------
# the host side (no sync: every size comes from shapes)


def _route_and_align(routing_logits, E, cfg):
    """ids [T, TOPK] int32, weights [T, TOPK] fp32, sorted_ids, expert_ids, n_post (device)."""
    T = routing_logits.shape[0]
    BM = cfg["BM"]
    dev = routing_logits.device
    n_entries = T * TOPK
    EP = triton.next_power_of_2(E)
    ids = torch.empty(T, TOPK, dtype=torch.int32, device=dev)
    weights = torch.empty(T, TOPK, dtype=torch.float32, device=dev)
    # every non-empty BM block holds at least one entry; an expert takes at most one entry per token
    blocks_max = min((n_entries + E * (BM - 1)) // BM, E * triton.cdiv(T, BM), n_entries)
    sorted_ids = torch.empty(blocks_max * BM, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(blocks_max, dtype=torch.int32, device=dev)
    n_post = torch.empty(1, dtype=torch.int32, device=dev)
    logits = routing_logits.contiguous()
    consts = dict(E=E, EP=EP, TOPK=TOPK)
    if cfg["route"] == "single":
        TB = min(cfg["route_tile"], triton.next_power_of_2(T))  # no masked rows at T=1, 2, 4, 8, 16
        _routing_align_kernel[(1,)](logits, ids, weights, sorted_ids, expert_ids, n_post, T,
                                    TB=TB, BM=BM, ONE_TILE=cfg["route_one_tile"] and T <= TB,
                                    BB=min(128, triton.next_power_of_2(blocks_max)), **consts,
                                    num_warps=cfg["route_warps"])
        return ids, weights, sorted_ids, expert_ids, n_post
    tile = cfg["route_tile"]
    n_tiles = triton.cdiv(T, tile)
    counts = torch.empty(n_tiles, EP, dtype=torch.int32, device=dev)
    chunk_base = torch.empty(n_tiles, EP, dtype=torch.int32, device=dev)
    start = torch.empty(EP, dtype=torch.int32, device=dev)
    _routing_kernel[(n_tiles,)](logits, ids, weights, counts, T, TB=tile, **consts, num_warps=4)
    with fib.stage("dispatch"):
        _moe_align_scan_kernel[(1,)](counts, chunk_base, start, sorted_ids, expert_ids, n_post, n_tiles,
                                     n_entries, E=E, BM=BM, EP=EP, CB=SCAN_ROWS, num_warps=8)
        _moe_align_scatter_kernel[(n_tiles,)](ids, chunk_base, start, sorted_ids, n_entries,
                                              CHUNK=tile * TOPK, EP=EP)
    return ids, weights, sorted_ids, expert_ids, n_post


def run(routing_logits, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale,
        gemm2_weights, gemm2_weights_scale, output):
    """The definition's signature exactly (flashinfer-bench counts the parameters): T's default tiles."""
    _run(routing_logits, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale,
         gemm2_weights, gemm2_weights_scale, output)


def fib_with_config(config):
    """fib's configuration hook: `run` with the configuration dict `config` (see fib_configs)."""
    return functools.partial(_run, config=config)


def _run(routing_logits, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale,
         gemm2_weights, gemm2_weights_scale, output, config=None):
    T, H = hidden_states.shape
    E, N1, _ = gemm1_weights.shape
    I = N1 // 2
    QB = H // hidden_states_scale.shape[0]
    if T == 0:
        return
    for name, w in (("gemm1_weights", gemm1_weights), ("gemm1_weights_scale", gemm1_weights_scale),
                    ("gemm2_weights", gemm2_weights), ("gemm2_weights_scale", gemm2_weights_scale)):
        if not w.is_contiguous():  # metadata only: no sync; a copy would cost more than the layer
            raise ValueError(f"triton_fused (qwen3): {name} must be contiguous (stride {w.stride()})")
    hidden_states, hidden_states_scale = hidden_states.contiguous(), hidden_states_scale.contiguous()
    cfg = _resolve(T, E, config)
    BM = cfg["BM"]
    BN1, BN2 = min(cfg["BN1"], I, QB), min(cfg["BN2"], H, QB)
    dev = hidden_states.device
    n_entries = T * TOPK
    with fib.stage("routing"):
        ids, weights, sorted_ids, expert_ids, n_post = _route_and_align(routing_logits, E, cfg)
    rows_max = sorted_ids.numel()
    n_m = rows_max // BM
    quant = cfg["c_dtype"] == "fp8"
    with fib.stage("gemm1"):
        c = torch.empty(rows_max, I, dtype=torch.float8_e4m3fn if quant else torch.bfloat16, device=dev)
        c_scale = torch.empty(I // BN1 if quant else 1, rows_max, dtype=torch.float32, device=dev)
        _gemm1_swiglu_kernel[(n_m * (I // BN1),)](
            hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale, c, c_scale,
            sorted_ids, expert_ids, n_post, T, n_entries, n_m, rows_max,
            I=I, K=H, TOPK=TOPK, QB=QB, BM=BM, BN=BN1, GROUP_M=8, QUANT=quant, INTERPRET=INTERPRET,
            num_warps=cfg["warps"], num_stages=cfg["stages1"])
    with fib.stage("gemm2"):
        y = torch.empty(n_entries, H, dtype=torch.bfloat16, device=dev)
        _gemm2_kernel[(n_m * (H // BN2),)](
            c, c_scale, gemm2_weights, gemm2_weights_scale, y, weights, sorted_ids, expert_ids,
            n_post, rows_max, n_entries, n_m,
            N=H, K=I, QB=QB, QG=BN1 if quant else QB, BM=BM, BN=BN2, GROUP_M=8,
            A_BF16=not quant, INTERPRET=INTERPRET, num_warps=cfg["warps"], num_stages=cfg["stages2"])
    with fib.stage("finalize"):
        BH = min(1024, triton.next_power_of_2(H))
        _finalize_kernel[(T, triton.cdiv(H, BH))](y, output, output.stride(0), H, TOPK=TOPK, BH=BH)
