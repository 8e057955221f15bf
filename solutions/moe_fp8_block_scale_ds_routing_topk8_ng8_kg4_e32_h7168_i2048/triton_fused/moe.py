"""DeepSeek-V3 MoE layer (FP8 block scale), Triton with the stages fused where it pays.

- routing + align: with `route="single"` (the default up to 8 tokens), routing, counting, the
  padded-offset scan and the scatter run in ONE single-program kernel; with `route="tiles"`,
  routing+count per token tile, then a scan and a scatter (3 launches).
- gemm1 computes the up and the gate tile of the same columns in one program and applies SwiGLU
  in its epilogue. With `c_dtype="bf16"` (default from 9 to 128 tokens) it stores C in bf16 and
  gemm2 re-quantizes each 1x128 group to fp8 in registers; with `"fp8"` gemm1's epilogue
  quantizes C to fp8 per tile-wide group (BN1 columns: 64 up to 1024 tokens, so more programs
  stream the weights; 128 above) and gemm2 steps K by the weight's 128-block with one dot per
  activation group.
- gemm2 multiplies by the routing weight in its epilogue and writes one bf16 row per routed
  (token, slot); a light reduce sums a token's rows in slot order (deterministic, no atomics).
- with `split` > 1 (the default up to 8 tokens: a few experts hit, too few tiles to fill the GPU),
  gemm1 splits K into `split` ranges that write fp32 partials. With `act="gemm1"` (default from 4
  tokens) the last of the programs covering a tile's up and gate columns (an arrival count per
  tile, acq_rel atomics; the counters persist per device and reset themselves) sums them, applies
  SwiGLU and stores bf16 C; with `act="kernel"` a small kernel does that and re-quantizes per 1x128
  group (the stage is then called "activation", as in triton_staged). gemm2 splits K into
  `split2` ranges with fp32 partials that the finalize reduce sums.
- with `tma` (the prefill default since v8), gemm1 reads its weight tiles and gemm2 its weight
  and fp8 C tiles through host-side TMA descriptors (separate kernels; the decode buckets keep the
  pointer-loaded ones); `acc="rescale"` carries the fp32 sum through the dots instead of a second
  accumulator per dot (_scaled_dot). With `a_tma` (a prefill variant) a gather kernel first copies
  the A rows (and their scales) into sorted-row order, so gemm1 reads A through a descriptor too.

Configurations: `run(...)` (the definition's signature; `fib_with_config(config)` gives it with a configuration) picks the configuration of T's bucket (`_config`); a
dict passed as `config` overrides any of its keys (CONFIG_DOC lists them). `fib_configs(axes)`
names the configurations worth timing at a workload (`fib run --sweep triton_fused` times them all;
`--config triton_fused=NAME` one): "default" (what config=None runs) and the variants measured in
benchmarks/NOTES.md for that bucket. Nothing else (no module global) changes a launch.
Sizes come from the tensor shapes; no host sync (CUDA-graph capturable).
"""
import functools
import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

import fib

N_GROUPS = 8        # expert groups (definition: ng8)
TOPK_GROUPS = 4     # groups kept per token (kg4)
TOPK = 8            # experts per token (topk8)
SINGLE_ROUTE_WARPS = 8  # warps of the single-program routing+align (fewer: cheaper reductions)
# The default configuration's token-count buckets (see _config)
SPLITK_MAX = 8      # up to this many tokens: gemm1/gemm2 split along K, single-program routing
ACT_IN_GEMM1_FROM = 4  # ... of which from this many: SwiGLU in gemm1's last-arriving program
TINY_MAX = 16       # up to this many: routing tiles of 2 tokens
SMALL_MAX = 128     # up to this many: BM=16, bf16 C re-quantized in gemm2
DECODE_MAX = 1024   # up to this many: decode tile configurations; above, prefill tiles
CONFIG_DOC = {
    "BM": "rows per expert block (power of 2)",
    "BN1": "gemm1 columns per program (power of 2; at most the 128 scale block)",
    "BN2": "gemm2 columns per program (power of 2)",
    "warps": "num_warps of gemm1 and gemm2",
    "stages1": "num_stages of gemm1", "stages2": "num_stages of gemm2",
    "split": "gemm1 K ranges (1: unsplit, SwiGLU in its epilogue; >1: fp32 partials)",
    "split2": "gemm2 K ranges (>1: fp32 partials summed by the finalize)",
    "act": "where SwiGLU runs: 'gemm1' (its epilogue; split-K: its last-arriving program) or "
           "'kernel' (a separate activation kernel; split-K only)",
    "c_dtype": "the intermediate C: 'fp8' (quantized where SwiGLU runs) or 'bf16' (gemm2 "
               "re-quantizes each 1x128 group in registers); split-K: gemm1 -> bf16, kernel -> fp8",
    "route": "'single' (routing+align in one program) or 'tiles' (routing+count, scan, scatter)",
    "route_tile": "tokens per routing tile (power of 2; single: at most, per step of its loop)",
    "route_one_tile": "single: keep the ids in registers when T fits one tile",
    "tma": "gemm1 reads its weight tiles, gemm2 its weight and fp8 C tiles, through TMA "
           "descriptors (unsplit, fp8 C only; False: pointer loads)",
    "acc": "tma only: 'promote' (each 128-deep K block's dot scaled into the fp32 sum in registers) "
           "or 'rescale' (the sum carried through the dots, rescaled by the scale ratio: fewer registers)",
    "fin": "the finalize's loads: 'masked' (a token's TOPK slots as one masked tile) or 'branch' (slot by "
           "slot behind a test of its expert: no load for a non-local slot)",
    "a_tma": "tma only: gemm1 reads A through a TMA descriptor too, over a copy of the A rows (and "
             "their scales) gathered into sorted-row order by a kernel of its own (stage 'dispatch'); "
             "False: A rows gathered by token with pointer loads",
}
# Triton 3.9's interpreter converts f32 -> fp8 without carrying a rounded-up mantissa into the
# exponent (31.4 -> 16.0); under it we round to the e4m3 grid first so the cast is exact.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _to_fp8(x, INTERPRET: tl.constexpr):
    if INTERPRET:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576  # round to nearest even, 3 bits
        x = bits.to(tl.float32, bitcast=True)
    return x.to(tl.float8e4nv)


@triton.jit
def _route_tile(logits_ptr, bias_ptr, ids_ptr, weights_ptr, t0, T, scaling,
                E: tl.constexpr, NG: tl.constexpr, KG: tl.constexpr, TOPK: tl.constexpr,
                TB: tl.constexpr):
    """Route tokens t0..t0+TB (rows past T are skipped); store ids/weights; return the ids."""
    GS: tl.constexpr = E // NG
    tok = t0 + tl.arange(0, TB)
    live = tok < T
    ex = tl.arange(0, E)
    s = tl.sigmoid(tl.load(logits_ptr + tok[:, None] * E + ex[None, :], mask=live[:, None], other=0.0))
    b = s + tl.load(bias_ptr + ex).to(tl.float32)[None, :]
    neg = float("-inf")
    b3 = tl.reshape(b, [TB, NG, GS])
    j = tl.arange(0, GS)[None, None, :]
    m1 = tl.max(b3, axis=2)
    first = tl.min(tl.where(b3 == m1[:, :, None], j, GS), axis=2)
    group_score = m1 + tl.max(tl.where(j == first[:, :, None], neg, b3), axis=2)
    g = tl.arange(0, NG)[None, :]
    keep = group_score != group_score  # all False
    for _ in tl.static_range(KG):
        cand = tl.where(keep, neg, group_score)
        best = tl.min(tl.where(cand == tl.max(cand, 1)[:, None], g, NG), 1)
        keep = keep | (g == best[:, None])
    keep_e = tl.reshape(tl.broadcast_to(keep[:, :, None], [TB, NG, GS]), [TB, E])
    masked = tl.where(keep_e, b, neg)
    k = tl.arange(0, TOPK)[None, :]
    ids = tl.zeros([TB, TOPK], dtype=tl.int32)
    w = tl.zeros([TB, TOPK], dtype=tl.float32)
    for i in tl.static_range(TOPK):
        top = tl.max(masked, 1)
        e = tl.min(tl.where(masked == top[:, None], ex[None, :], E), 1)
        hit = ex[None, :] == e[:, None]
        ids = tl.where(k == i, e[:, None], ids)
        w = tl.where(k == i, tl.sum(tl.where(hit, s, 0.0), 1)[:, None], w)
        masked = tl.where(hit, neg, masked)
    w = w / tl.sum(w, 1)[:, None] * scaling
    offs = tok[:, None] * TOPK + k
    tl.store(ids_ptr + offs, ids, mask=live[:, None])
    tl.store(weights_ptr + offs, w, mask=live[:, None])
    return ids, live


@triton.jit
def _onehot(ids, live, expert_offset, n_local, EP: tl.constexpr, N: tl.constexpr):
    """[N, EP] int32 one-hot of each entry's local expert (zero rows for non-local entries)."""
    local = tl.reshape(ids, [N]) - expert_offset
    e = tl.arange(0, EP)[None, :]
    return ((local[:, None] == e) & (e < n_local) & live[:, None]).to(tl.int32)


@triton.jit
def _align_offsets(total, sorted_ids_ptr, expert_ids_ptr, n_post_ptr, n_entries, n_local,
                   BM: tl.constexpr, EP: tl.constexpr, BB: tl.constexpr):
    """Given per-expert totals: write n_post, each BM block's expert, the padding sentinels;
    return each expert's first row."""
    e = tl.arange(0, EP)
    padded = (total + BM - 1) // BM * BM
    end = tl.cumsum(padded, 0)
    start = end - padded
    n_post = tl.sum(padded, 0)
    tl.store(n_post_ptr, n_post)
    pad = tl.arange(0, BM)
    slot = (start + total)[:, None] + pad[None, :]
    tl.store(sorted_ids_ptr + slot, n_entries + 0 * slot, mask=(slot < end[:, None]) & (e[:, None] < n_local))
    end_live = tl.where(e < n_local, end, 2147483647)
    bb = tl.arange(0, BB)
    for b0 in range(0, n_post // BM, BB):
        blk = b0 + bb
        owner = tl.sum((end_live[None, :] <= blk[:, None] * BM).to(tl.int32), 1)
        tl.store(expert_ids_ptr + blk, owner, mask=blk < n_post // BM)
    return start


@triton.jit
def _routing_align_kernel(logits_ptr, bias_ptr, ids_ptr, weights_ptr, sorted_ids_ptr,
                          expert_ids_ptr, n_post_ptr, T, scaling, expert_offset, n_local,
                          E: tl.constexpr, NG: tl.constexpr, KG: tl.constexpr, TOPK: tl.constexpr,
                          TB: tl.constexpr, BM: tl.constexpr, EP: tl.constexpr,
                          ONE_TILE: tl.constexpr, BB: tl.constexpr):
    """Decode: the whole routing + moe_align in one program (one launch instead of four).
    ONE_TILE (T <= TB): the ids stay in registers between routing and the scatter. BB: row blocks
    labelled per step (at most the launch's row-block bound: T=1's one warp holds [8, EP], not
    [128, EP], which spilled)."""
    NE: tl.constexpr = TB * TOPK
    if ONE_TILE:
        ids1, _ = _route_tile(logits_ptr, bias_ptr, ids_ptr, weights_ptr, 0, T, scaling,
                                  E, NG, KG, TOPK, TB)
        entry = tl.arange(0, NE)
        onehot = _onehot(ids1, entry < T * TOPK, expert_offset, n_local, EP, NE)
        start = _align_offsets(tl.sum(onehot, 0), sorted_ids_ptr, expert_ids_ptr, n_post_ptr,
                               T * TOPK, n_local, BM, EP, BB)
        pos = tl.sum(onehot * (start[None, :] + tl.cumsum(onehot, 0) - 1), 1)
        tl.store(sorted_ids_ptr + pos, entry, mask=tl.sum(onehot, 1) > 0)
    else:
        total = tl.zeros([EP], dtype=tl.int32)
        for t0 in range(0, T, TB):
            ids, live = _route_tile(logits_ptr, bias_ptr, ids_ptr, weights_ptr, t0, T, scaling,
                                    E, NG, KG, TOPK, TB)
            entry = t0 * TOPK + tl.arange(0, NE)
            total += tl.sum(_onehot(ids, entry < T * TOPK, expert_offset, n_local, EP, NE), 0)
        start = _align_offsets(total, sorted_ids_ptr, expert_ids_ptr, n_post_ptr, T * TOPK, n_local,
                               BM, EP, BB)
        tl.debug_barrier()  # the ids written above are read back by other threads of this program
        carry = start
        for t0 in range(0, T, TB):
            entry = t0 * TOPK + tl.arange(0, NE)
            live = entry < T * TOPK
            ids = tl.load(ids_ptr + entry, mask=live, other=-1)
            onehot = _onehot(ids, live, expert_offset, n_local, EP, NE)
            pos = tl.sum(onehot * (carry[None, :] + tl.cumsum(onehot, 0) - 1), 1)
            tl.store(sorted_ids_ptr + pos, entry, mask=tl.sum(onehot, 1) > 0)
            carry += tl.sum(onehot, 0)


@triton.jit
def _routing_kernel(logits_ptr, bias_ptr, ids_ptr, weights_ptr, counts_ptr, T, scaling,
                    expert_offset, n_local,
                    E: tl.constexpr, NG: tl.constexpr, KG: tl.constexpr, TOPK: tl.constexpr,
                    TB: tl.constexpr, EP: tl.constexpr):
    """Prefill: route one token tile and count its entries per local expert."""
    pid = tl.program_id(0)
    ids, live = _route_tile(logits_ptr, bias_ptr, ids_ptr, weights_ptr, pid * TB, T, scaling,
                            E, NG, KG, TOPK, TB)
    entry = pid * TB * TOPK + tl.arange(0, TB * TOPK)
    onehot = _onehot(ids, entry < T * TOPK, expert_offset, n_local, EP, TB * TOPK)
    tl.store(counts_ptr + pid * EP + tl.arange(0, EP), tl.sum(onehot, 0))


@triton.jit
def _moe_align_scan_kernel(counts_ptr, chunk_base_ptr, sorted_ids_ptr, expert_ids_ptr, n_post_ptr,
                           n_chunks, n_entries, n_local,
                           BM: tl.constexpr, EP: tl.constexpr, CB: tl.constexpr):
    """One program: padded per-expert offsets, and where each tile's entries start."""
    e = tl.arange(0, EP)
    c = tl.arange(0, CB)
    total = tl.zeros([EP], dtype=tl.int32)
    for c0 in range(0, n_chunks, CB):
        rows = c0 + c
        total += tl.sum(tl.load(counts_ptr + rows[:, None] * EP + e[None, :],
                                mask=rows[:, None] < n_chunks, other=0), 0)
    carry = _align_offsets(total, sorted_ids_ptr, expert_ids_ptr, n_post_ptr, n_entries, n_local,
                           BM, EP, 128)
    for c0 in range(0, n_chunks, CB):
        rows = c0 + c
        mask = rows[:, None] < n_chunks
        tile = tl.load(counts_ptr + rows[:, None] * EP + e[None, :], mask=mask, other=0)
        tl.store(chunk_base_ptr + rows[:, None] * EP + e[None, :],
                 carry[None, :] + tl.cumsum(tile, 0) - tile, mask=mask)
        carry += tl.sum(tile, 0)


@triton.jit
def _moe_align_scatter_kernel(ids_ptr, chunk_base_ptr, sorted_ids_ptr, n_entries, expert_offset,
                              n_local, CHUNK: tl.constexpr, EP: tl.constexpr):
    """sorted_ids[position] = entry index, stable within each expert (token order)."""
    pid = tl.program_id(0)
    entry = pid * CHUNK + tl.arange(0, CHUNK)
    live = entry < n_entries
    ids = tl.load(ids_ptr + entry, mask=live, other=-1)
    onehot = _onehot(ids, live, expert_offset, n_local, EP, CHUNK)
    base = tl.load(chunk_base_ptr + pid * EP + tl.arange(0, EP))
    pos = tl.sum(onehot * (base[None, :] + tl.cumsum(onehot, 0) - 1), 1)
    tl.store(sorted_ids_ptr + pos, entry, mask=tl.sum(onehot, 1) > 0)


@triton.jit
def _tile_ids(pid, n_m, n_n, GROUP_M: tl.constexpr):
    """Grouped launch order: GROUP_M row blocks sweep the column tiles together (L2 reuse)."""
    per_group = GROUP_M * n_n
    first_m = (pid // per_group) * GROUP_M
    rows = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % rows
    pid_n = (pid % per_group) // rows
    return pid_m, pid_n


@triton.jit
def _row_block(expert_ids_ptr, sorted_ids_ptr, pid_m, pid_n, n_entries, TOPK: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr):
    """One tile's expert, its BM sorted rows, their entries (live: not padding), the tokens the
    entries came from, and the tile's BN columns."""
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    rows = pid_m * BM + tl.arange(0, BM)
    entry = tl.load(sorted_ids_ptr + rows)
    live = entry < n_entries
    token = tl.where(live, entry // TOPK, 0).to(tl.int64)
    cols = pid_n * BN + tl.arange(0, BN)
    return expert, rows, entry, live, token, cols


@triton.jit
def _k_range(split, n_kb, SPLIT: tl.constexpr):
    """The K blocks [kb0, kb1) of the split-th of SPLIT ranges (the last ones may be short or empty)."""
    per = tl.cdiv(n_kb, SPLIT)
    kb0 = split * per
    return kb0, tl.minimum(kb0 + per, n_kb)


@triton.jit
def _gemm1_swiglu_kernel(a_ptr, a_scale_ptr, w_ptr, w_scale_ptr, c_ptr, c_scale_ptr,
                         sorted_ids_ptr, expert_ids_ptr, n_post_ptr, n_tokens, n_entries, I, K,
                         n_m, n_rows,
                         TOPK: tl.constexpr, QB: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                         GROUP_M: tl.constexpr, QUANT: tl.constexpr, INTERPRET: tl.constexpr):
    """C[row, cols] = silu(A W_gate^T) * (A W_up^T) for the BN columns `cols` of one expert;
    QUANT: fp8 out with one scale per row of this tile (quantization group = BN <= QB columns),
    stored block-major at c_scale[pid_n, row]; else bf16 out."""
    pid_m, pid_n = _tile_ids(tl.program_id(0), n_m, I // BN, GROUP_M)
    # loaded alongside n_post, not after it (as in gemm2)
    expert, rows, entry, live, token, cols = _row_block(expert_ids_ptr, sorted_ids_ptr, pid_m, pid_n,
                                                        n_entries, TOPK, BM, BN)
    if pid_m * BM >= tl.load(n_post_ptr):
        return
    kk = tl.arange(0, QB)
    a_ptrs = a_ptr + token[:, None] * K + kk[None, :]
    up_ptrs = w_ptr + expert * 2 * I * K + cols[None, :].to(tl.int64) * K + kk[:, None]
    gate_ptrs = up_ptrs + I * K
    n_kb = K // QB
    up_s_ptrs = w_scale_ptr + expert * (2 * I // QB) * n_kb + (cols // QB) * n_kb
    gate_s_ptrs = up_s_ptrs + (I // QB) * n_kb
    acc_up = tl.zeros([BM, BN], dtype=tl.float32)
    acc_gate = tl.zeros([BM, BN], dtype=tl.float32)
    for kb in range(0, n_kb):
        a = tl.load(a_ptrs, mask=live[:, None], other=0.0)
        a_s = tl.load(a_scale_ptr + kb * n_tokens + token)[:, None]
        w_up = tl.load(up_ptrs)
        w_gate = tl.load(gate_ptrs)
        acc_up += tl.dot(a, w_up) * (a_s * tl.load(up_s_ptrs + kb)[None, :])
        acc_gate += tl.dot(a, w_gate) * (a_s * tl.load(gate_s_ptrs + kb)[None, :])
        a_ptrs += QB
        up_ptrs += QB
        gate_ptrs += QB
    c = acc_gate / (1.0 + tl.exp(-acc_gate)) * acc_up
    out = c_ptr + rows[:, None].to(tl.int64) * I + cols[None, :]
    if QUANT:
        scale = tl.maximum(tl.max(tl.abs(c), 1), 1e-12) / 448.0
        tl.store(out, _to_fp8(c / scale[:, None], INTERPRET))
        tl.store(c_scale_ptr + pid_n * n_rows + rows, scale)
    else:
        tl.store(out, c.to(tl.bfloat16))


@triton.jit
def _scaled_dot(acc, prev, a, w, s, RESCALE: tl.constexpr):
    """One K block into the fp32 sum: acc + s * (a @ w), s the block's scale (rows x 1).
    Not RESCALE: the block's dot has its own accumulator, scaled into acc in registers (DeepSeek's
    promotion every 128 K). RESCALE: acc holds the sum divided by `prev` (the last block's scale)
    and the dot accumulates onto acc * prev / s: no second [BM, BN] fp32 tile per dot, and the
    dot chains on the last one (the tensor core's own fp32 accumulation across K blocks, ~2^-14
    relative per block on Hopper's fp8 path, against C's 2^-4 fp8 rounding after gemm1).
    Returns the new acc and the scale it is divided by."""
    if RESCALE:
        s = tl.maximum(s, 1e-20)  # an all-zero block's scale: no 0/0 in the next ratio
        return tl.dot(a, w, acc * (prev / s)), s
    else:
        return acc + tl.dot(a, w) * s, prev


@triton.jit
def _gemm1_swiglu_tma_kernel(a_ptr, a_scale_ptr, w_desc, w_scale_ptr, c_ptr, c_scale_ptr,
                             sorted_ids_ptr, expert_ids_ptr, n_post_ptr, n_tokens, n_entries, I, K,
                             n_m, n_rows,
                             TOPK: tl.constexpr, QB: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                             GROUP_M: tl.constexpr, QUANT: tl.constexpr, INTERPRET: tl.constexpr,
                             RESCALE: tl.constexpr):
    """_gemm1_swiglu_kernel with the weight tiles read through a TMA descriptor (config tma):
    w_desc views W13 as [E * 2I, K] with [BN, QB] blocks, K-major, so `dot(a, w.T)` is fp8
    wgmma's own operand layout and no pointer tensor holds the weight addresses (registers);
    the loads pipeline as bulk copies. The A rows are gathered by token, so they stay pointer
    loads (Hopper's TMA has no row gather). BN <= QB: the tile lies in one scale block, so each
    K step loads one up and one gate scale, not BN copies of them. RESCALE: see _scaled_dot."""
    tl.static_assert(BN <= QB)
    pid_m, pid_n = _tile_ids(tl.program_id(0), n_m, I // BN, GROUP_M)
    expert, rows, entry, live, token, cols = _row_block(expert_ids_ptr, sorted_ids_ptr, pid_m, pid_n,
                                                        n_entries, TOPK, BM, BN)
    if pid_m * BM >= tl.load(n_post_ptr):
        return
    kk = tl.arange(0, QB)
    a_ptrs = a_ptr + token[:, None] * K + kk[None, :]
    up_row = (expert * 2 * I + pid_n * BN).to(tl.int32)
    gate_row = up_row + I
    n_kb = K // QB
    up_s_ptr = w_scale_ptr + expert * (2 * I // QB) * n_kb + (pid_n * BN // QB) * n_kb
    gate_s_ptr = up_s_ptr + (I // QB) * n_kb
    acc_up = tl.zeros([BM, BN], dtype=tl.float32)
    acc_gate = tl.zeros([BM, BN], dtype=tl.float32)
    p_up = tl.full([BM, 1], 1.0, tl.float32)
    p_gate = tl.full([BM, 1], 1.0, tl.float32)
    for kb in range(0, n_kb):
        a = tl.load(a_ptrs, mask=live[:, None], other=0.0)
        a_s = tl.load(a_scale_ptr + kb * n_tokens + token)[:, None]
        w_up = w_desc.load([up_row, kb * QB])
        w_gate = w_desc.load([gate_row, kb * QB])
        acc_up, p_up = _scaled_dot(acc_up, p_up, a, w_up.T, a_s * tl.load(up_s_ptr + kb), RESCALE)
        acc_gate, p_gate = _scaled_dot(acc_gate, p_gate, a, w_gate.T, a_s * tl.load(gate_s_ptr + kb),
                                       RESCALE)
        a_ptrs += QB
    if RESCALE:
        acc_up = acc_up * p_up
        acc_gate = acc_gate * p_gate
    c = acc_gate / (1.0 + tl.exp(-acc_gate)) * acc_up
    out = c_ptr + rows[:, None].to(tl.int64) * I + cols[None, :]
    if QUANT:
        scale = tl.maximum(tl.max(tl.abs(c), 1), 1e-12) / 448.0
        tl.store(out, _to_fp8(c / scale[:, None], INTERPRET))
        tl.store(c_scale_ptr + pid_n * n_rows + rows, scale)
    else:
        tl.store(out, c.to(tl.bfloat16))


@triton.jit
def _gather_rows_kernel(a_ptr, a_scale_ptr, out_ptr, out_scale_ptr, sorted_ids_ptr, n_post_ptr,
                        n_tokens, n_entries, n_rows, K,
                        TOPK: tl.constexpr, QB: tl.constexpr, RB: tl.constexpr, NB: tl.constexpr):
    """Config a_tma: out[row] = A[token(row)] for RB sorted rows, and their K-block scales into
    out_scale [K // QB, n_rows] (a row block's scales of one K block contiguous); padding rows
    zero, so gemm1 needs no row mask. Rows from n_post on are left unwritten (gemm1 never reads
    them). NB scale blocks (NB * QB columns) per step."""
    pid = tl.program_id(0)
    rows = pid * RB + tl.arange(0, RB)
    entry = tl.load(sorted_ids_ptr + rows)
    if pid * RB >= tl.load(n_post_ptr):
        return
    live = entry < n_entries
    token = tl.where(live, entry // TOPK, 0).to(tl.int64)
    kk = tl.arange(0, NB * QB)
    kb = tl.arange(0, NB)
    src = a_ptr + token[:, None] * K + kk[None, :]
    dst = out_ptr + rows[:, None].to(tl.int64) * K + kk[None, :]
    for k0 in range(0, K, NB * QB):
        tl.store(dst + k0, tl.load(src + k0, mask=live[:, None], other=0.0))
        blk = k0 // QB + kb[None, :]
        s = tl.load(a_scale_ptr + blk * n_tokens + token[:, None], mask=live[:, None], other=0.0)
        tl.store(out_scale_ptr + blk * n_rows + rows[:, None], s)


@triton.jit
def _gemm1_swiglu_tma_a_kernel(a_desc, a_scale_ptr, w_desc, w_scale_ptr, c_ptr, c_scale_ptr,
                               expert_ids_ptr, n_post_ptr, I, K, n_m, n_rows,
                               QB: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                               GROUP_M: tl.constexpr, QUANT: tl.constexpr, INTERPRET: tl.constexpr,
                               RESCALE: tl.constexpr):
    """_gemm1_swiglu_tma_kernel with A through a TMA descriptor as well (config a_tma): a_desc
    views the gathered rows [n_rows, K] (sorted order, padding rows zero) in [BM, QB] blocks, and
    a_scale holds their scales [K // QB, n_rows]. The row block is dense, so no token ids, row
    mask or A addresses are kept in registers, and every operand arrives by bulk copy (no
    cp.async group and CTA barrier per K step next to the TMA barrier)."""
    tl.static_assert(BN <= QB)
    pid_m, pid_n = _tile_ids(tl.program_id(0), n_m, I // BN, GROUP_M)
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    if pid_m * BM >= tl.load(n_post_ptr):
        return
    a_row = pid_m * BM
    rows = a_row + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    up_row = (expert * 2 * I + pid_n * BN).to(tl.int32)
    gate_row = up_row + I
    n_kb = K // QB
    up_s_ptr = w_scale_ptr + expert * (2 * I // QB) * n_kb + (pid_n * BN // QB) * n_kb
    gate_s_ptr = up_s_ptr + (I // QB) * n_kb
    acc_up = tl.zeros([BM, BN], dtype=tl.float32)
    acc_gate = tl.zeros([BM, BN], dtype=tl.float32)
    p_up = tl.full([BM, 1], 1.0, tl.float32)
    p_gate = tl.full([BM, 1], 1.0, tl.float32)
    for kb in range(0, n_kb):
        a = a_desc.load([a_row, kb * QB])
        a_s = tl.load(a_scale_ptr + kb * n_rows + rows)[:, None]
        w_up = w_desc.load([up_row, kb * QB])
        w_gate = w_desc.load([gate_row, kb * QB])
        acc_up, p_up = _scaled_dot(acc_up, p_up, a, w_up.T, a_s * tl.load(up_s_ptr + kb), RESCALE)
        acc_gate, p_gate = _scaled_dot(acc_gate, p_gate, a, w_gate.T, a_s * tl.load(gate_s_ptr + kb),
                                       RESCALE)
    if RESCALE:
        acc_up = acc_up * p_up
        acc_gate = acc_gate * p_gate
    c = acc_gate / (1.0 + tl.exp(-acc_gate)) * acc_up
    out = c_ptr + rows[:, None].to(tl.int64) * I + cols[None, :]
    if QUANT:
        scale = tl.maximum(tl.max(tl.abs(c), 1), 1e-12) / 448.0
        tl.store(out, _to_fp8(c / scale[:, None], INTERPRET))
        tl.store(c_scale_ptr + pid_n * n_rows + rows, scale)
    else:
        tl.store(out, c.to(tl.bfloat16))


@triton.jit
def _gemm1_splitk_kernel(a_ptr, a_scale_ptr, w_ptr, w_scale_ptr, part_ptr, sorted_ids_ptr,
                         expert_ids_ptr, n_post_ptr, n_tokens, n_entries, N, K, n_m, n_rows,
                         TOPK: tl.constexpr, QB: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                         SPLIT: tl.constexpr, count_ptr=None, c_ptr=None,
                         FUSE_ACT: tl.constexpr = False):
    """Tiny T: part[split, row, cols] = the split-th K range of A W13^T (fp32). SPLIT programs per
    tile put all SMs on the weight stream when only a few experts are hit.
    FUSE_ACT: the last of the 2 x SPLIT programs that cover a row block's up tile j and gate tile j
    (arrivals counted on count[pid_m, j], acq_rel, after a barrier over the stores) sums the
    partials, applies SwiGLU and stores bf16 C[rows, j-th BN columns] (zero for padding rows),
    then resets its count; gemm2 re-quantizes C per 1x128 group (A_MODE 2)."""
    pid = tl.program_id(0)
    split = pid % SPLIT
    tile = pid // SPLIT
    n_n = N // BN
    pid_m = tile // n_n
    pid_n = tile % n_n
    # loaded alongside n_post, not after it (as in gemm2)
    expert, rows, entry, live, token, cols = _row_block(expert_ids_ptr, sorted_ids_ptr, pid_m, pid_n,
                                                        n_entries, TOPK, BM, BN)
    if pid_m * BM >= tl.load(n_post_ptr):
        return
    n_kb = K // QB
    kb0, kb1 = _k_range(split, n_kb, SPLIT)
    kk = kb0 * QB + tl.arange(0, QB)
    a_ptrs = a_ptr + token[:, None] * K + kk[None, :]
    w_ptrs = w_ptr + expert * N * K + cols[None, :].to(tl.int64) * K + kk[:, None]
    ws_ptrs = w_scale_ptr + expert * (N // QB) * n_kb + (cols // QB) * n_kb
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for kb in range(kb0, kb1):
        a = tl.load(a_ptrs, mask=live[:, None], other=0.0)
        w = tl.load(w_ptrs)
        a_s = tl.load(a_scale_ptr + kb * n_tokens + token)[:, None]
        acc += tl.dot(a, w) * (a_s * tl.load(ws_ptrs + kb)[None, :])
        a_ptrs += QB
        w_ptrs += QB
    out = part_ptr + (split * n_rows + rows[:, None]).to(tl.int64) * N + cols[None, :]
    tl.store(out, acc)
    if FUSE_ACT:
        n_j = n_n // 2
        j = pid_n % n_j
        tl.debug_barrier()  # every thread's partial is stored before the arrival is counted
        arrived = tl.atomic_add(count_ptr + pid_m * n_j + j, 1, sem="acq_rel", scope="gpu")
        if arrived == 2 * SPLIT - 1:  # the last one in: both halves of every split are visible
            cj = j * BN + tl.arange(0, BN)
            up = tl.zeros([BM, BN], dtype=tl.float32)
            gate = tl.zeros([BM, BN], dtype=tl.float32)
            for sp in tl.static_range(SPLIT):
                base = part_ptr + (sp * n_rows + rows[:, None]).to(tl.int64) * N + cj[None, :]
                up += tl.load(base, mask=live[:, None], other=0.0, cache_modifier=".cg")
                gate += tl.load(base + N // 2, mask=live[:, None], other=0.0, cache_modifier=".cg")
            c = gate / (1.0 + tl.exp(-gate)) * up
            tl.store(c_ptr + rows[:, None].to(tl.int64) * (N // 2) + cj[None, :], c.to(tl.bfloat16))
            tl.store(count_ptr + pid_m * n_j + j, 0)  # ready for the next call (stream order)


@triton.jit
def _splitk_swiglu_quant_kernel(part_ptr, c_ptr, c_scale_ptr, n_post_ptr, n_rows, I,
                                QB: tl.constexpr, BM: tl.constexpr, SPLIT: tl.constexpr,
                                INTERPRET: tl.constexpr):
    """Sum the SPLIT partial G1 tiles of BM rows, c = silu(gate) * up over one 1 x QB group,
    fp8 re-quantized (one program per row block and group: few programs exit empty)."""
    pid_m = tl.program_id(0)
    grp = tl.program_id(1)
    if pid_m * BM >= tl.load(n_post_ptr):
        return
    rows = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    cols = grp * QB + tl.arange(0, QB)
    up = tl.zeros([BM, QB], dtype=tl.float32)
    gate = tl.zeros([BM, QB], dtype=tl.float32)
    for sp in tl.static_range(SPLIT):
        base = part_ptr + (sp * n_rows + rows[:, None]) * 2 * I + cols[None, :]
        up += tl.load(base)
        gate += tl.load(base + I)
    c = gate / (1.0 + tl.exp(-gate)) * up
    scale = tl.maximum(tl.max(tl.abs(c), 1), 1e-12) / 448.0
    tl.store(c_ptr + rows[:, None] * I + cols[None, :], _to_fp8(c / scale[:, None], INTERPRET))
    tl.store(c_scale_ptr + grp * n_rows + rows, scale)


@triton.jit
def _gemm2_combine_kernel(c_ptr, c_scale_ptr, w_ptr, w_scale_ptr, y_ptr, weights_ptr,
                          sorted_ids_ptr, expert_ids_ptr, n_post_ptr, n_rows, n_entries, N, K, n_m,
                          QB: tl.constexpr, QG: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                          GROUP_M: tl.constexpr, A_MODE: tl.constexpr, INTERPRET: tl.constexpr,
                          SPLIT: tl.constexpr = 1):
    """y[entry(row), cols] = weight(entry) * C[row] @ dequant(W2[expert])[cols]^T (bf16).
    A_MODE 0: C is fp8 with one scale per 1xQG group (QG divides QB; fp8 dots);
    2: C is bf16 (QG = QB) and each 1xQB group is re-quantized to fp8 here, in registers (amax /
    448, as gemm1's epilogue would), so gemm1 can use narrow tiles and gemm2 still runs one fp8 dot
    per QB-deep step. (A_MODE 1, bf16 C with W2 widened to bf16, measured 2x slower: removed.)
    SPLIT > 1: the split-th K range only, into fp32 y[split, entry, cols] (finalize sums them)."""
    pid = tl.program_id(0)
    split = pid % SPLIT
    pid_m, pid_n = _tile_ids(pid // SPLIT, n_m, N // BN, GROUP_M)
    # the tile's expert and rows are loaded before n_post is known (in bounds: n_m blocks exist),
    # so the three loads are in flight together instead of one after the other
    expert, rows, entry, live, _, cols = _row_block(expert_ids_ptr, sorted_ids_ptr, pid_m, pid_n,
                                                    n_entries, 1, BM, BN)
    if pid_m * BM >= tl.load(n_post_ptr):
        return
    n_kb = K // QB
    kb0, kb1 = _k_range(split, n_kb, SPLIT)
    kk = kb0 * QB + tl.arange(0, QG)
    a_ptrs = c_ptr + rows[:, None].to(tl.int64) * K + kk[None, :]
    w_ptrs = w_ptr + expert * N * K + cols[None, :].to(tl.int64) * K + kk[:, None]
    ws_ptrs = w_scale_ptr + expert * (N // QB) * n_kb + (cols // QB) * n_kb
    SUB: tl.constexpr = QB // QG
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    # K steps by the weight's scale block QB; with narrower activation groups (QG < QB) each
    # step runs QB // QG dots, so every pipelined step still streams a QB-deep weight tile.
    for kb in range(kb0, kb1):
        w_s = tl.load(ws_ptrs + kb)[None, :]
        for g in tl.static_range(SUB):
            w = tl.load(w_ptrs + g * QG)
            a = tl.load(a_ptrs + g * QG)
            if A_MODE == 2:  # 1 x QB group re-quantized to fp8 in registers (amax / 448)
                af = a.to(tl.float32)
                a_s = tl.maximum(tl.max(tl.abs(af), 1), 1e-12) / 448.0
                acc += tl.dot(_to_fp8(af / a_s[:, None], INTERPRET), w) * (a_s[:, None] * w_s)
            else:  # A_MODE 0
                a_s = tl.load(c_scale_ptr + (kb * SUB + g) * n_rows + rows)[:, None]
                acc += tl.dot(a, w) * (a_s * w_s)
        a_ptrs += QB
        w_ptrs += QB
    weight = tl.load(weights_ptr + entry, mask=live, other=0.0)
    out = y_ptr + (split * n_entries + entry[:, None]).to(tl.int64) * N + cols[None, :]
    tl.store(out, (acc * weight[:, None]).to(y_ptr.dtype.element_ty), mask=live[:, None])


@triton.jit
def _gemm2_combine_tma_kernel(c_desc, c_scale_ptr, w_desc, w_scale_ptr, y_ptr, weights_ptr,
                              sorted_ids_ptr, expert_ids_ptr, n_post_ptr, n_rows, n_entries, N, K,
                              n_m, QB: tl.constexpr, QG: tl.constexpr, BM: tl.constexpr,
                              BN: tl.constexpr, GROUP_M: tl.constexpr, RESCALE: tl.constexpr,
                              SPLIT: tl.constexpr = 1):
    """_gemm2_combine_kernel's A_MODE 0 (fp8 C, one scale per 1xQG group) with both operands
    read through TMA descriptors (config tma): C's rows are the sorted positions themselves, so
    its [BM, QG] tile is dense (c_desc over C [rows, I]); w_desc views W2 as [E * H, I] with
    [BN, QG] blocks, K-major (`dot(a, w.T)`). BN <= QB: one weight scale per K step.
    RESCALE: see _scaled_dot."""
    tl.static_assert(BN <= QB)
    pid = tl.program_id(0)
    split = pid % SPLIT
    pid_m, pid_n = _tile_ids(pid // SPLIT, n_m, N // BN, GROUP_M)
    expert, rows, entry, live, _, cols = _row_block(expert_ids_ptr, sorted_ids_ptr, pid_m, pid_n,
                                                    n_entries, 1, BM, BN)
    if pid_m * BM >= tl.load(n_post_ptr):
        return
    n_kb = K // QB
    kb0, kb1 = _k_range(split, n_kb, SPLIT)
    w_row = (expert * N + pid_n * BN).to(tl.int32)
    a_row = pid_m * BM
    ws_ptr = w_scale_ptr + expert * (N // QB) * n_kb + (pid_n * BN // QB) * n_kb
    SUB: tl.constexpr = QB // QG
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    prev = tl.full([BM, 1], 1.0, tl.float32)
    for kb in range(kb0, kb1):
        w_s = tl.load(ws_ptr + kb)
        for g in tl.static_range(SUB):
            w = w_desc.load([w_row, kb * QB + g * QG])
            a = c_desc.load([a_row, kb * QB + g * QG])
            a_s = tl.load(c_scale_ptr + (kb * SUB + g) * n_rows + rows)[:, None]
            acc, prev = _scaled_dot(acc, prev, a, w.T, a_s * w_s, RESCALE)
    if RESCALE:
        acc = acc * prev
    weight = tl.load(weights_ptr + entry, mask=live, other=0.0)
    out = y_ptr + (split * n_entries + entry[:, None]).to(tl.int64) * N + cols[None, :]
    tl.store(out, (acc * weight[:, None]).to(y_ptr.dtype.element_ty), mask=live[:, None])


@triton.jit
def _finalize_reduce_kernel(y_ptr, ids_ptr, out_ptr, expert_offset, n_local, H, n_entries,
                            TOPK: tl.constexpr, BH: tl.constexpr, SPLIT: tl.constexpr = 1):
    """out[t] = sum of the token's weighted local rows (and of gemm2's SPLIT K-range partials),
    in slot order (fp32, then bf16)."""
    t = tl.program_id(0)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    k = tl.arange(0, TOPK)
    local = tl.load(ids_ptr + t * TOPK + k) - expert_offset
    hit = (local >= 0) & (local < n_local)
    rows = (t * TOPK + k).to(tl.int64)
    y = tl.zeros([TOPK, BH], dtype=tl.float32)
    for sp in tl.static_range(SPLIT):
        y += tl.load(y_ptr + (sp * n_entries + rows[:, None]) * H + cols[None, :],
                     mask=hit[:, None] & (cols[None, :] < H), other=0.0).to(tl.float32)
    tl.store(out_ptr + t.to(tl.int64) * H + cols, tl.sum(y, 0).to(tl.bfloat16), mask=cols < H)


@triton.jit
def _finalize_branch_kernel(y_ptr, ids_ptr, out_ptr, expert_offset, n_local, H, n_entries,
                            TOPK: tl.constexpr, BH: tl.constexpr, SPLIT: tl.constexpr = 1):
    """_finalize_reduce_kernel slot by slot behind a scalar test of the slot's expert (config
    fin="branch"): a slot whose expert is not local (with 32 of 256 experts local, ~7 of a token's
    8) costs no masked [BH] load and no address arithmetic."""
    t = tl.program_id(0)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    acc = tl.zeros([BH], dtype=tl.float32)
    for k in tl.static_range(TOPK):
        local = tl.load(ids_ptr + t * TOPK + k) - expert_offset
        if (local >= 0) & (local < n_local):
            row = (t * TOPK + k).to(tl.int64)
            for sp in tl.static_range(SPLIT):
                acc += tl.load(y_ptr + (sp * n_entries + row) * H + cols, mask=cols < H,
                               other=0.0).to(tl.float32)
    tl.store(out_ptr + t.to(tl.int64) * H + cols, acc.to(tl.bfloat16), mask=cols < H)


def _config(T):
    """The default configuration of T's bucket (every key of CONFIG_DOC)."""
    # Routing (v7b, cupti): up to 8 tokens one single-program launch with the ids in registers
    # (T=7 0.0877 vs 0.0891 ms reloaded); at 9-16 the three-kernel path with 2-token tiles is
    # 1.4-2.8% faster (the one program's serial top-k over 16 tokens was ~12 us); 4-token tiles
    # up to 1024 tokens (more programs, shorter serial top-k chains), 16 above.
    if T <= SPLITK_MAX:
        route = dict(route="single", route_tile=16, route_one_tile=True)
    else:
        route = dict(route="tiles", route_tile=2 if T <= TINY_MAX else 4 if T <= DECODE_MAX else 16,
                     route_one_tile=True)
    one = dict(split=1, split2=1, act="gemm1", tma=False, acc="promote", fin="masked", a_tma=False)
    if T > DECODE_MAX:
        # v8 sweep (H200, fib's cupti kernel sum, benchmarks/NOTES.md): TMA weight (and gemm2 C) tiles with
        # the rescaled sum and 3 gemm2 stages (two gemm2 CTAs per SM): 1.744 / 2.413 ms at 11948 / 14107
        # tokens against 2.094 / 3.060 for v7's pointer-loaded tiles ("pointer").
        # v9 sweeps (H200, cupti, reports/moe_deepseek_h200/v9/): the finalize loading only local slots
        # (fin="branch"): 1.543 / 2.317 ms against v8's 1.592 / 2.449 at 11948 / 14107, and 1.541 / 2.364 against
        # 1.687 / 2.467 in a second call.
        return dict(BM=128, BN1=128, BN2=128, warps=8, stages1=4, stages2=3, c_dtype="fp8", **route,
                    **dict(one, tma=True, acc="rescale", fin="branch"))
    # v4 sweep (H200, graph ms, benchmarks/NOTES.md): with gemm2 streaming QB-deep weight tiles
    # over 64-wide activation groups, BN1=64 (32 gemm1 programs per expert) and BM=16 won at
    # every decode size tried (T=7..80: 0.157/0.145/0.301/0.310 ms vs 0.167/0.166/0.340/0.346
    # for v3's BM=32, BN1=128); at T=901, BM=32 with BN2=128 (0.486 vs 0.635 for the prefill tiles).
    # v5 sweep (H200, graph ms): at T=1 (2 experts hit) gemm1/gemm2 split 2/2 0.048 vs 0.063
    # unsplit (gemm1 36 -> ~20 us); T=7 equal (0.103); from T=14 splitting loses (T=16: 0.207 vs
    # 0.219+): enough experts are hit to fill the GPU.
    # v7 sweep (H200, fib's cupti kernel sum, L2 flushed): T=1 0.0400 ms with the separate
    # activation kernel and 3 gemm2 stages (0.0407 with 4; 20.9 us floor: 52%); T=7 0.0857 with
    # SwiGLU in gemm1's last-arriving program and BN2=128 (0.0888 apart).
    if T <= SPLITK_MAX:
        split = dict(split=2, split2=2, tma=False, acc="promote", fin="masked", a_tma=False)
        if T >= ACT_IN_GEMM1_FROM:
            return dict(BM=16, BN1=64, BN2=128, warps=4, stages1=4, stages2=4, c_dtype="bf16", act="gemm1",
                        **split, **route)
        return dict(BM=16, BN1=64, BN2=64, warps=4, stages1=4, stages2=3, c_dtype="fp8", act="kernel",
                    **split, **route)
    # v6 sweep (H200, graph ms): up to 128 tokens, bf16 C re-quantized inside gemm2 with BN2=128
    # beat fp8 C from gemm1's epilogue (64-wide groups, BN2=64) by 2-4% (T=32: 0.271 vs 0.282,
    # 52: 0.277 vs 0.286, 59: 0.280 vs 0.288, 80: 0.253 vs 0.260); at 901 it lost (0.509 vs 0.491).
    if T <= SMALL_MAX:
        return dict(BM=16, BN1=64, BN2=128, warps=4, stages1=4, stages2=4, c_dtype="bf16", **one, **route)
    return dict(BM=32, BN1=64, BN2=128, warps=4, stages1=4, stages2=4, c_dtype="fp8", **one, **route)


def _variants(T):
    """The named alternatives to T's default that the sweeps in benchmarks/NOTES.md timed (and a
    few they left open), as overrides of the bucket's configuration."""
    # fin_branch at every decode bucket: v9's prefill finalize. Timed (v9/sweep_decode): +1.8% at 7 tokens, equal at
    # 80, -1.3% at 901 (within the run-to-run spread): not the default there.
    if T <= SPLITK_MAX:  # v5/v7: where SwiGLU runs, gemm2 stages, ids in registers or reloaded
        kernel = dict(act="kernel", c_dtype="fp8", BN2=64, stages2=3)
        gemm1 = dict(act="gemm1", c_dtype="bf16", BN2=128, stages2=4)
        return {"act_kernel": kernel, "act_gemm1": gemm1,
                "act_kernel_reload": dict(kernel, route_one_tile=False),
                "act_gemm1_reload": dict(gemm1, route_one_tile=False),
                "act_kernel_s4": dict(kernel, stages2=4), "fin_branch": dict(fin="branch")}
    if T <= TINY_MAX:  # v7b: routing at 9-16 tokens; NOTES open item 4: split-K when few experts hit
        return {"route_single": dict(route="single", route_tile=16),
                "route_single_reload": dict(route="single", route_tile=16, route_one_tile=False),
                "route_tiles4": dict(route_tile=4), "route_tiles8": dict(route_tile=8),
                "splitk": dict(split=2, split2=2), "fin_branch": dict(fin="branch")}
    if T <= SMALL_MAX:  # v6: fp8 C from gemm1 (v5) against bf16 C re-quantized in gemm2
        return {"fp8c_bn64": dict(c_dtype="fp8", BN2=64), "rq_bn64": dict(BN2=64),
                "bn1_32": dict(BN1=32, BN2=64), "fin_branch": dict(fin="branch")}
    if T <= DECODE_MAX:  # v6 at 901; NOTES open item 3: BM=64
        return {"rq": dict(c_dtype="bf16"), "rq_bn64": dict(c_dtype="bf16", BN2=64), "bm64": dict(BM=64),
                "fin_branch": dict(fin="branch")}
    # prefill (v8, benchmarks/NOTES.md): the default is TMA tiles with the rescaled sum and 3 gemm2 stages
    # (gemm1 220 registers, no spill; gemm2 114, two CTAs per SM). pointer: v7's default (pointer-loaded
    # tiles, a second accumulator per dot, 5 gemm2 stages), 20-27% slower; tma_s5: 5 gemm2 stages (one
    # CTA), 7-14% slower; tma_promote: TMA with v7's sum, 21-32% slower; tma_bn64: 64-wide gemm1 tiles and
    # 3 stages in both (two CTAs per SM in both), even at 11948, 11% slower at 14107. v3's s34 and bm64_w4
    # (equal to and 2.5x slower than v7's default) were dropped with v8.
    # v9 (reports/moe_deepseek_h200/v9/sweep, ncu at 14107 in v8/ncu: finalize 166 us at 54% DRAM / 82% SM for
    # ~448 MB, 106 us at the copy ceiling; routing 107 us, 75 of it one kernel at 224 registers and 12% occupancy):
    # fin="branch" became the default (-3% / -5%); fin_masked is v8's finalize. 4- and 8-token routing tiles
    # (56 / 111 registers) were within noise of the 16-token default (route4 +2.6% / -3.0%, route8 -0.4% / -4.4%,
    # with fin_branch as "edges" +1.3% / +3.9% over fin_branch alone): route8 stays to be timed over fin_branch,
    # route4 and edges were dropped.
    # v9 (NOTES "v9 candidate: A through TMA"): the A rows gathered into sorted order first (dispatch stage), so
    # gemm1 reads A by TMA too: tma_a on the default's tiles, tma_a_bn64 on tma_bn64's. Timed on the H200
    # (reports/moe_deepseek_h200/v9/sweep_prefill): 10% / 9% slower than the default at 11948 / 14107 (tma_a_bn64
    # 15% / 14%): the gather costs more than gemm1 saves (171 registers, still one CTA per SM).
    return {"pointer": dict(tma=False, acc="promote", stages2=5, fin="masked"),
            "tma_s5": dict(stages2=5), "tma_promote": dict(acc="promote", stages2=5),
            "tma_bn64": dict(BN1=64, stages1=3), "fin_masked": dict(fin="masked"), "route8": dict(route_tile=8),
            "tma_a": dict(a_tma=True), "tma_a_bn64": dict(a_tma=True, BN1=64, stages1=3)}


def fib_configs(axes):
    """fib's configuration hook: {name: configuration} valid at these axes, "default" first (what
    run(config=None) uses there). A name may appear at several buckets with a different dict."""
    T = int(axes["seq_len"])
    base = _config(T)
    return {"default": base, **{name: {**base, **over} for name, over in _variants(T).items()}}


def _invalid(cfg):
    """Why this configuration cannot run, or None."""
    for key in ("BM", "BN1", "BN2", "warps", "route_tile"):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1 or v & (v - 1):
            return f"{key}={v!r} is not a power of 2"
    for key in ("stages1", "stages2", "split", "split2"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            return f"{key}={cfg[key]!r} is not a positive integer"
    for key, allowed in (("act", ("gemm1", "kernel")), ("c_dtype", ("fp8", "bf16")),
                         ("route", ("single", "tiles")), ("route_one_tile", (True, False)),
                         ("tma", (True, False)), ("acc", ("promote", "rescale")), ("fin", ("masked", "branch")),
                         ("a_tma", (True, False))):
        if cfg[key] not in allowed:
            return f"{key}={cfg[key]!r} is not one of {allowed}"
    if cfg["split"] == 1 and cfg["act"] != "gemm1":
        return "act='kernel' needs split > 1 (unsplit, SwiGLU runs in gemm1's epilogue)"
    if cfg["split"] > 1 and (cfg["act"], cfg["c_dtype"]) not in (("gemm1", "bf16"), ("kernel", "fp8")):
        return "with split > 1, act='gemm1' writes bf16 C and act='kernel' fp8 C"
    if cfg["acc"] != "promote" and not cfg["tma"]:
        return "acc='rescale' needs tma=True (only the TMA kernels carry it)"
    if cfg["a_tma"] and (not cfg["tma"] or cfg["split"] > 1):
        return "a_tma=True needs tma=True and split=1 (only the unsplit TMA gemm1 reads gathered rows)"
    if cfg["tma"]:
        if cfg["split"] > 1:
            return "tma=True needs split=1 (the split-K gemm1 loads its weights through pointers)"
        if cfg["c_dtype"] != "fp8":
            return "tma=True needs c_dtype='fp8' (gemm2 reads fp8 C tiles through a descriptor)"
        if cfg["BN1"] < 32:
            return "tma=True needs BN1 >= 32 (gemm2's C tiles are BN1 bytes wide: one fp8 wgmma K step)"
        if cfg["BM"] > 256:
            return "tma=True needs BM <= 256 (a TMA box has at most 256 rows)"
        if cfg["BN2"] > 128:
            return "tma=True needs BN2 <= 128 (one weight scale block per gemm2 tile)"
    return None


def _resolve(T, config):
    """T's default configuration with `config`'s keys over it; ValueError naming a bad key."""
    cfg = _config(T)
    if config is None:
        return cfg
    unknown = sorted(set(config) - set(cfg))
    if unknown:
        raise ValueError(f"triton_fused: unknown configuration key(s) {', '.join(unknown)}; "
                         f"known: {', '.join(CONFIG_DOC)}")
    cfg = {**cfg, **config}
    problem = _invalid(cfg)
    if problem:
        raise ValueError(f"triton_fused: configuration {config}: {problem}")
    return cfg


_COUNTERS = {}  # (device type, index) -> int32 arrival counters, zero between calls


def _arrival_counters(dev, n):
    """The persistent, self-resetting arrival counters of the fused activation (ACT_IN_GEMM1_FROM).
    Made once per device, outside any CUDA-graph capture; None (the separate activation kernel
    runs instead) if the first call is being captured. One stream at a time per device:
    concurrent calls on several streams would share them."""
    key = (dev.type, dev.index)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        if dev.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=dev)
        _COUNTERS[key] = buf
    return buf


def _route_and_align(routing_logits, routing_bias, scaling, expert_offset, n_local, cfg):
    T, E = routing_logits.shape
    BM = cfg["BM"]
    dev = routing_logits.device
    n_entries = T * TOPK
    EP = triton.next_power_of_2(n_local)
    ids = torch.empty(T, TOPK, dtype=torch.int32, device=dev)
    weights = torch.empty(T, TOPK, dtype=torch.float32, device=dev)
    # every non-empty BM block holds at least one entry: at most n_entries blocks (T=1: 8, not 30,
    # so the GEMM grids launch fewer programs that only find themselves past n_post and exit)
    blocks_max = min((n_entries + n_local * (BM - 1)) // BM, n_local * triton.cdiv(T, BM), n_entries)
    sorted_ids = torch.empty(blocks_max * BM, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(blocks_max, dtype=torch.int32, device=dev)
    n_post = torch.empty(1, dtype=torch.int32, device=dev)
    logits = routing_logits.contiguous()
    consts = dict(E=E, NG=N_GROUPS, KG=TOPK_GROUPS, TOPK=TOPK)
    if cfg["route"] == "single":
        consts["TB"] = min(cfg["route_tile"], triton.next_power_of_2(T))  # no masked rows at T=1, 2, 4, 8
        warps = SINGLE_ROUTE_WARPS if consts["TB"] > 2 else consts["TB"]  # one token: one warp
        _routing_align_kernel[(1,)](logits, routing_bias, ids, weights, sorted_ids, expert_ids,
                                    n_post, T, float(scaling), expert_offset, n_local,
                                    BM=BM, EP=EP, ONE_TILE=cfg["route_one_tile"] and T <= consts["TB"],
                                    BB=min(128, triton.next_power_of_2(blocks_max)), **consts,
                                    num_warps=warps)
        return ids, weights, sorted_ids, expert_ids, n_post
    tile = cfg["route_tile"]
    consts["TB"] = tile
    n_tiles = triton.cdiv(T, tile)
    counts = torch.empty(n_tiles, EP, dtype=torch.int32, device=dev)
    chunk_base = torch.empty(n_tiles, EP, dtype=torch.int32, device=dev)
    _routing_kernel[(n_tiles,)](logits, routing_bias, ids, weights, counts, T, float(scaling),
                                expert_offset, n_local, EP=EP, **consts, num_warps=4)
    _moe_align_scan_kernel[(1,)](counts, chunk_base, sorted_ids, expert_ids, n_post, n_tiles,
                                 n_entries, n_local, BM=BM, EP=EP, CB=64)
    _moe_align_scatter_kernel[(n_tiles,)](ids, chunk_base, sorted_ids, n_entries, expert_offset,
                                          n_local, CHUNK=tile * TOPK, EP=EP)
    return ids, weights, sorted_ids, expert_ids, n_post


def _desc(t, block):
    """A host-side TMA descriptor over `t` viewed 2-D ([E, N, K] -> [E * N, K]; K contiguous),
    in `block`-shaped tiles. Plain host data (the driver encodes it at launch): graph-capturable."""
    t2 = t.view(-1, t.shape[-1])
    return TensorDescriptor(t2, list(t2.shape), list(t2.stride()), list(block))


def _gemm1_fused(cfg, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale,
                 sorted_ids, expert_ids, n_post, T, n_entries, I, H, n_m, rows_max, BM, BN1, quant,
                 QB, dev):
    if cfg["a_tma"]:  # tma, split 1 (_invalid): A rows into sorted order, then TMA on both operands
        with fib.stage("dispatch"):  # the definition's stage for sorting token rows into expert order
            a = torch.empty(rows_max, H, dtype=hidden_states.dtype, device=dev)
            a_scale = torch.empty(H // QB, rows_max, dtype=torch.float32, device=dev)
            RB, NB = min(16, BM), next(n for n in (4, 2, 1) if (H // QB) % n == 0)
            _gather_rows_kernel[(rows_max // RB,)](
                hidden_states, hidden_states_scale, a, a_scale, sorted_ids, n_post, T, n_entries,
                rows_max, H, TOPK=TOPK, QB=QB, RB=RB, NB=NB, num_warps=4)
        with fib.stage("gemm1"):
            c = torch.empty(rows_max, I, dtype=torch.float8_e4m3fn if quant else torch.bfloat16, device=dev)
            c_scale = torch.empty(I // BN1 if quant else 1, rows_max, dtype=torch.float32, device=dev)
            _gemm1_swiglu_tma_a_kernel[(n_m * (I // BN1),)](
                _desc(a, (BM, QB)), a_scale, _desc(gemm1_weights, (BN1, QB)), gemm1_weights_scale, c,
                c_scale, expert_ids, n_post, I, H, n_m, rows_max,
                QB=QB, BM=BM, BN=BN1, GROUP_M=8, QUANT=quant, INTERPRET=INTERPRET,
                RESCALE=cfg["acc"] == "rescale", num_warps=cfg["warps"], num_stages=cfg["stages1"])
        return c, c_scale
    with fib.stage("gemm1"):
        c = torch.empty(rows_max, I, dtype=torch.float8_e4m3fn if quant else torch.bfloat16, device=dev)
        c_scale = torch.empty(I // BN1 if quant else 1, rows_max, dtype=torch.float32, device=dev)
        kernel, w, rescale = _gemm1_swiglu_kernel, gemm1_weights, {}
        if cfg["tma"]:
            kernel, w = _gemm1_swiglu_tma_kernel, _desc(gemm1_weights, (BN1, QB))
            rescale = dict(RESCALE=cfg["acc"] == "rescale")
        kernel[(n_m * (I // BN1),)](
            hidden_states, hidden_states_scale, w, gemm1_weights_scale, c, c_scale,
            sorted_ids, expert_ids, n_post, T, n_entries, I, H, n_m, rows_max,
            TOPK=TOPK, QB=QB, BM=BM, BN=BN1, GROUP_M=8, QUANT=quant, INTERPRET=INTERPRET,
            num_warps=cfg["warps"], num_stages=cfg["stages1"], **rescale)
    return c, c_scale


def run(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
        gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, local_expert_offset,
        routed_scaling_factor, output):
    """The definition's signature exactly (flashinfer-bench counts the parameters): T's default tiles."""
    _run(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale,
         gemm2_weights, gemm2_weights_scale, local_expert_offset, routed_scaling_factor, output)


def fib_with_config(config):
    """fib's configuration hook: `run` with the configuration dict `config` (see fib_configs)."""
    return functools.partial(_run, config=config)


def _run(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
         gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, local_expert_offset,
         routed_scaling_factor, output, config=None):
    T, H = hidden_states.shape
    n_local = gemm1_weights.shape[0]
    I = gemm2_weights.shape[2]
    QB = H // hidden_states_scale.shape[0]
    cfg = _resolve(T, config)
    BM = cfg["BM"]
    BN1, BN2 = min(cfg["BN1"], I, QB), min(cfg["BN2"], H)
    dev = hidden_states.device
    n_entries = T * TOPK
    with fib.stage("routing"):
        ids, weights, sorted_ids, expert_ids, n_post = _route_and_align(
            routing_logits, routing_bias, routed_scaling_factor, local_expert_offset, n_local, cfg)
    rows_max = sorted_ids.numel()
    n_m = rows_max // BM
    split = cfg["split"]
    if split > 1:  # tiny T: partial G1 per K range, then SwiGLU + 1 x QB re-quantization
        counts1 = _arrival_counters(dev, n_m * (I // BN1)) if cfg["act"] == "gemm1" else None
        fuse = {}
        if counts1 is not None:  # gemm1's last program per tile pair: SwiGLU, bf16 C
            c = torch.empty(rows_max, I, dtype=torch.bfloat16, device=dev)
            fuse = dict(count_ptr=counts1, c_ptr=c, FUSE_ACT=True)
        with fib.stage("gemm1"):
            part = torch.empty(split, rows_max, 2 * I, dtype=torch.float32, device=dev)
            _gemm1_splitk_kernel[(n_m * (2 * I // BN1) * split,)](
                hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale, part,
                sorted_ids, expert_ids, n_post, T, n_entries, 2 * I, H, n_m, rows_max,
                TOPK=TOPK, QB=QB, BM=BM, BN=BN1, SPLIT=split, **fuse,
                num_warps=cfg["warps"], num_stages=cfg["stages1"])
        if fuse:
            c_scale, a_mode = c, 2
        else:
            with fib.stage("activation"):
                c = torch.empty(rows_max, I, dtype=torch.float8_e4m3fn, device=dev)
                c_scale = torch.empty(I // QB, rows_max, dtype=torch.float32, device=dev)
                _splitk_swiglu_quant_kernel[(n_m, I // QB)](part, c, c_scale, n_post, rows_max, I,
                                                            QB=QB, BM=BM, SPLIT=split,
                                                            INTERPRET=INTERPRET)
            a_mode = 0
        BN1 = QB  # the activation groups gemm2 reads
    else:
        quant = cfg["c_dtype"] == "fp8"
        c, c_scale = _gemm1_fused(cfg, hidden_states, hidden_states_scale, gemm1_weights,
                                  gemm1_weights_scale, sorted_ids, expert_ids, n_post, T, n_entries,
                                  I, H, n_m, rows_max, BM, BN1, quant, QB, dev)
        a_mode = 0 if quant else 2
    split2 = cfg["split2"]
    with fib.stage("gemm2"):  # split2 > 1: fp32 partials per K range, summed by finalize
        y = torch.empty(split2, n_entries, H, dtype=torch.float32 if split2 > 1 else torch.bfloat16,
                        device=dev)
        if cfg["tma"]:  # fp8 C (a_mode 0, _invalid): C and W2 tiles through descriptors
            _gemm2_combine_tma_kernel[(n_m * (H // BN2) * split2,)](
                _desc(c, (BM, BN1)), c_scale, _desc(gemm2_weights, (BN2, BN1)), gemm2_weights_scale,
                y, weights, sorted_ids, expert_ids, n_post, rows_max, n_entries, H, I, n_m,
                QB=QB, QG=BN1, BM=BM, BN=BN2, GROUP_M=8, RESCALE=cfg["acc"] == "rescale",
                SPLIT=split2,
                num_warps=cfg["warps"], num_stages=cfg["stages2"])
        else:
            _gemm2_combine_kernel[(n_m * (H // BN2) * split2,)](
                c, c_scale, gemm2_weights, gemm2_weights_scale, y, weights, sorted_ids, expert_ids,
                n_post, rows_max, n_entries, H, I, n_m,
                QB=QB, QG=BN1 if a_mode == 0 else QB, BM=BM, BN=BN2, GROUP_M=8,
                A_MODE=a_mode, INTERPRET=INTERPRET, SPLIT=split2,
                num_warps=cfg["warps"], num_stages=cfg["stages2"])
    with fib.stage("finalize"):
        BH = min(1024, triton.next_power_of_2(H))
        finalize = _finalize_branch_kernel if cfg["fin"] == "branch" else _finalize_reduce_kernel
        finalize[(T, triton.cdiv(H, BH))](y, ids, output, local_expert_offset, n_local, H, n_entries,
                                          TOPK=TOPK, BH=BH, SPLIT=split2)
