"""Mixtral-8x7B MoE layer (BF16, softmax top-2 of 8 experts), Triton with the stages fused where
it pays. Modelled on the DeepSeek triton_fused (solutions/moe_fp8_block_scale_ds_routing_topk8_
ng8_kg4_e32_h7168_i2048/triton_fused/moe.py); benchmarks/NOTES.md ("Mixtral") has the floor, the
design and the predictions.

- routing + align: with `route="single"` (the default up to 256 tokens) the top-2 selection, the
  softmax over the two chosen logits, the per-expert counts, the BM-padded offsets and the
  scatter into expert order run in ONE single-program kernel; with `route="tiles"` routing+count
  runs per token tile, then a scan and a scatter (3 launches, stage "dispatch" for the last two).
- gemm1 computes the up tile and the gate tile of the same BN1 columns in one program (two bf16
  tl.dot chains into fp32 accumulators, `acc = dot(a, w, acc)`, so Hopper chains wgmma) and applies
  SwiGLU, silu(gate) * up, in its epilogue; C is stored in bf16 (the only rounding besides the
  output's: rel. L2 ~0.3% against the FP32 reference).
- gemm2 multiplies by the routing weight in its epilogue and writes one row per routed (token,
  slot); with `split2` > 1 (decode: few rows, K = 14336 deep, N = 4096 narrow, so without a split
  too few programs stream W2) each K range writes fp32 partials. The finalize sums a token's two
  rows (and the partials) in slot order in fp32 and writes bf16: deterministic, no atomics.

Configurations: `run(...)` (the definition's signature; `fib_with_config(config)` gives it with a
configuration) uses the configuration of T's bucket (`_config`); a dict passed as config overrides
any of its keys (CONFIG_DOC lists them). `fib_configs(axes)` names the configurations worth timing
at a workload ("default" first). Nothing else (no module global) changes a launch. Sizes come
from the tensor shapes; no host sync (CUDA-graph capturable): the grids are sized by an upper bound
on the row blocks and programs past the device-side row count exit at once.
"""
import functools
import os

import torch
import triton
import triton.language as tl

import fib

TOPK = 2              # experts per token (definition: topk2)
# The default configuration's token-count buckets (see _config); rows per expert ~ T * 2 / 8,
# the most popular expert about 1.6x that in the dataset's skewed routing.
TINY_MAX = 8          # up to this many: <= 2T experts hit; 32-column gemm1 tiles, gemm2 split 4 ways
SMALL_MAX = 32        # up to this many: BM=16 (at most ~10 rows per expert)
MID_MAX = 128         # up to this many: BM=32
DECODE_MAX = 512      # up to this many: BM=64 (memory-bound tiles); above: prefill (compute-bound)
SINGLE_ROUTE_MAX = 256  # up to this many: routing + align in one program
CONFIG_DOC = {
    "BM": "rows per expert block (power of 2, >= 16)",
    "BN1": "gemm1 columns per program, of up and of gate each (power of 2)",
    "BK1": "gemm1 K step (power of 2)",
    "warps1": "num_warps of gemm1", "stages1": "num_stages of gemm1",
    "BN2": "gemm2 columns per program (power of 2)",
    "BK2": "gemm2 K step (power of 2)",
    "warps2": "num_warps of gemm2", "stages2": "num_stages of gemm2",
    "split2": "gemm2 K ranges (1: bf16 rows; >1: fp32 partials summed by the finalize)",
    "group_m": "row blocks that sweep the column tiles together (L2 reuse of the weight tiles)",
    "route": "'single' (routing+align in one program) or 'tiles' (routing+count, scan, scatter)",
    "route_tile": "tokens per routing tile (power of 2; single: at most, per step of its loop)",
}
# Triton 3.9's interpreter keeps bf16 tensors as uint16 and its tl.dot multiplies those raw bits,
# and its f32 -> bf16 cast truncates (the GPU rounds to nearest even). Under it the GEMM operands
# are widened to fp32 first (exact: products of bf16 values fit fp32; on the GPU the cast of a bf16
# tile to bf16 is a no-op) and values are rounded to the bf16 grid before the cast (_to_bf16).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DOT_DTYPE = tl.float32 if INTERPRET else tl.bfloat16


@triton.jit
def _to_bf16(x, INTERPRET: tl.constexpr):
    """fp32 -> bf16, rounded to nearest even (as the GPU's cast; done by hand in the interpreter)."""
    if INTERPRET:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        x = bits.to(tl.float32, bitcast=True)
    return x.to(tl.bfloat16)


@triton.jit
def _route_tile(logits_ptr, ids_ptr, weights_ptr, t0, T,
                E: tl.constexpr, EP: tl.constexpr, TOPK: tl.constexpr, TB: tl.constexpr):
    """Route tokens t0..t0+TB (rows past T are skipped): the two largest logits (lowest expert id
    first among equal ones), softmax over those two; store ids/weights; return the ids [TB, 2]."""
    tok = t0 + tl.arange(0, TB)
    live = tok < T
    ex = tl.arange(0, EP)[None, :]
    x = tl.load(logits_ptr + tok[:, None] * E + ex, mask=live[:, None] & (ex < E), other=0.0)
    x = tl.where(ex < E, x, float("-inf"))  # rows past T stay finite (0): no inf - inf below
    m1 = tl.max(x, 1)
    e1 = tl.min(tl.where(x == m1[:, None], ex, EP), 1)
    x = tl.where(ex == e1[:, None], float("-inf"), x)
    m2 = tl.max(x, 1)
    e2 = tl.min(tl.where(x == m2[:, None], ex, EP), 1)
    r = tl.exp(m2 - m1)  # exp(l2 - l1) <= 1: the softmax of the two without overflow
    k = tl.arange(0, TOPK)[None, :]
    ids = tl.where(k == 0, e1[:, None], e2[:, None])
    w = tl.where(k == 0, 1.0, r[:, None]) / (1.0 + r)[:, None]
    offs = tok[:, None] * TOPK + k
    tl.store(ids_ptr + offs, ids, mask=live[:, None])
    tl.store(weights_ptr + offs, w, mask=live[:, None])
    return ids


@triton.jit
def _onehot(ids, live, EP: tl.constexpr, N: tl.constexpr):
    """[N, EP] int32 one-hot of each entry's expert (zero rows where not live)."""
    e = tl.arange(0, EP)[None, :]
    return ((tl.reshape(ids, [N])[:, None] == e) & live[:, None]).to(tl.int32)


@triton.jit
def _align_offsets(total, sorted_ids_ptr, expert_ids_ptr, n_post_ptr, n_entries,
                   BM: tl.constexpr, EP: tl.constexpr, BB: tl.constexpr):
    """Given per-expert totals: write n_post, each BM block's expert, the padding sentinels
    (n_entries); return each expert's first row."""
    e = tl.arange(0, EP)
    padded = (total + BM - 1) // BM * BM
    end = tl.cumsum(padded, 0)
    start = end - padded
    n_post = tl.sum(padded, 0)
    tl.store(n_post_ptr, n_post)
    pad = tl.arange(0, BM)
    slot = (start + total)[:, None] + pad[None, :]
    tl.store(sorted_ids_ptr + slot, n_entries + 0 * slot, mask=slot < end[:, None])
    bb = tl.arange(0, BB)
    for b0 in range(0, n_post // BM, BB):
        blk = b0 + bb
        owner = tl.sum((end[None, :] <= blk[:, None] * BM).to(tl.int32), 1)
        tl.store(expert_ids_ptr + blk, owner, mask=blk < n_post // BM)
    return start


@triton.jit
def _routing_align_kernel(logits_ptr, ids_ptr, weights_ptr, sorted_ids_ptr, expert_ids_ptr,
                          n_post_ptr, T,
                          E: tl.constexpr, EP: tl.constexpr, TOPK: tl.constexpr, TB: tl.constexpr,
                          BM: tl.constexpr, ONE_TILE: tl.constexpr, BB: tl.constexpr):
    """Decode: routing + moe_align in one program (one launch instead of three). ONE_TILE
    (T <= TB): the ids stay in registers between the routing and the scatter."""
    NE: tl.constexpr = TB * TOPK
    if ONE_TILE:
        ids = _route_tile(logits_ptr, ids_ptr, weights_ptr, 0, T, E, EP, TOPK, TB)
        entry = tl.arange(0, NE)
        onehot = _onehot(ids, entry < T * TOPK, EP, NE)
        start = _align_offsets(tl.sum(onehot, 0), sorted_ids_ptr, expert_ids_ptr, n_post_ptr,
                               T * TOPK, BM, EP, BB)
        pos = tl.sum(onehot * (start[None, :] + tl.cumsum(onehot, 0) - 1), 1)
        tl.store(sorted_ids_ptr + pos, entry, mask=tl.sum(onehot, 1) > 0)
    else:
        total = tl.zeros([EP], dtype=tl.int32)
        for t0 in range(0, T, TB):
            ids = _route_tile(logits_ptr, ids_ptr, weights_ptr, t0, T, E, EP, TOPK, TB)
            entry = t0 * TOPK + tl.arange(0, NE)
            total += tl.sum(_onehot(ids, entry < T * TOPK, EP, NE), 0)
        start = _align_offsets(total, sorted_ids_ptr, expert_ids_ptr, n_post_ptr, T * TOPK,
                               BM, EP, BB)
        tl.debug_barrier()  # the ids written above are read back by other threads of this program
        carry = start
        for t0 in range(0, T, TB):
            entry = t0 * TOPK + tl.arange(0, NE)
            live = entry < T * TOPK
            onehot = _onehot(tl.load(ids_ptr + entry, mask=live, other=0), live, EP, NE)
            pos = tl.sum(onehot * (carry[None, :] + tl.cumsum(onehot, 0) - 1), 1)
            tl.store(sorted_ids_ptr + pos, entry, mask=tl.sum(onehot, 1) > 0)
            carry += tl.sum(onehot, 0)


@triton.jit
def _routing_kernel(logits_ptr, ids_ptr, weights_ptr, counts_ptr, T,
                    E: tl.constexpr, EP: tl.constexpr, TOPK: tl.constexpr, TB: tl.constexpr):
    """Prefill: route one token tile and count its entries per expert."""
    pid = tl.program_id(0)
    ids = _route_tile(logits_ptr, ids_ptr, weights_ptr, pid * TB, T, E, EP, TOPK, TB)
    entry = pid * TB * TOPK + tl.arange(0, TB * TOPK)
    onehot = _onehot(ids, entry < T * TOPK, EP, TB * TOPK)
    tl.store(counts_ptr + pid * EP + tl.arange(0, EP), tl.sum(onehot, 0))


@triton.jit
def _moe_align_scan_kernel(counts_ptr, chunk_base_ptr, sorted_ids_ptr, expert_ids_ptr, n_post_ptr,
                           n_chunks, n_entries,
                           BM: tl.constexpr, EP: tl.constexpr, CB: tl.constexpr, BB: tl.constexpr):
    """One program: padded per-expert offsets, and where each tile's entries start."""
    e = tl.arange(0, EP)
    c = tl.arange(0, CB)
    total = tl.zeros([EP], dtype=tl.int32)
    for c0 in range(0, n_chunks, CB):
        rows = c0 + c
        total += tl.sum(tl.load(counts_ptr + rows[:, None] * EP + e[None, :],
                                mask=rows[:, None] < n_chunks, other=0), 0)
    carry = _align_offsets(total, sorted_ids_ptr, expert_ids_ptr, n_post_ptr, n_entries, BM, EP, BB)
    for c0 in range(0, n_chunks, CB):
        rows = c0 + c
        mask = rows[:, None] < n_chunks
        tile = tl.load(counts_ptr + rows[:, None] * EP + e[None, :], mask=mask, other=0)
        tl.store(chunk_base_ptr + rows[:, None] * EP + e[None, :],
                 carry[None, :] + tl.cumsum(tile, 0) - tile, mask=mask)
        carry += tl.sum(tile, 0)


@triton.jit
def _moe_align_scatter_kernel(ids_ptr, chunk_base_ptr, sorted_ids_ptr, n_entries,
                              CHUNK: tl.constexpr, EP: tl.constexpr):
    """sorted_ids[position] = entry index, stable within each expert (token order)."""
    pid = tl.program_id(0)
    entry = pid * CHUNK + tl.arange(0, CHUNK)
    live = entry < n_entries
    onehot = _onehot(tl.load(ids_ptr + entry, mask=live, other=0), live, EP, CHUNK)
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
def _gemm1_swiglu_kernel(a_ptr, w_ptr, c_ptr, sorted_ids_ptr, expert_ids_ptr, n_post_ptr,
                         n_entries, I, K, n_m,
                         TOPK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                         GROUP_M: tl.constexpr, DOT: tl.constexpr,
                         INTERPRET: tl.constexpr):
    """C[row, cols] = silu(A W_gate^T) * (A W_up^T) (bf16) for the BN columns `cols` of one
    expert: rows [0, I) of W13 are up, [I, 2I) the gate. Padding rows get 0."""
    pid_m, pid_n = _tile_ids(tl.program_id(0), n_m, I // BN, GROUP_M)
    # the tile's expert and rows are loaded alongside n_post, not after it
    expert, rows, entry, live, token, cols = _row_block(expert_ids_ptr, sorted_ids_ptr, pid_m, pid_n,
                                                        n_entries, TOPK, BM, BN)
    if pid_m * BM >= tl.load(n_post_ptr):
        return
    kk = tl.arange(0, BK)
    a_ptrs = a_ptr + token[:, None] * K + kk[None, :]
    w_base = w_ptr + expert * 2 * I * K + kk[:, None]
    up_ptrs = w_base + cols[None, :].to(tl.int64) * K
    gate_ptrs = w_base + (I + cols[None, :]).to(tl.int64) * K
    acc_up = tl.zeros([BM, BN], dtype=tl.float32)
    acc_gate = tl.zeros([BM, BN], dtype=tl.float32)
    for _ in range(0, K // BK):
        a = tl.load(a_ptrs, mask=live[:, None], other=0.0).to(DOT)
        acc_up = tl.dot(a, tl.load(up_ptrs).to(DOT), acc_up)
        acc_gate = tl.dot(a, tl.load(gate_ptrs).to(DOT), acc_gate)
        a_ptrs += BK
        up_ptrs += BK
        gate_ptrs += BK
    c = acc_gate / (1.0 + tl.exp(-acc_gate)) * acc_up
    tl.store(c_ptr + rows[:, None].to(tl.int64) * I + cols[None, :], _to_bf16(c, INTERPRET))


@triton.jit
def _k_range(split, n_kb, SPLIT: tl.constexpr):
    """The K blocks [kb0, kb1) of the split-th of SPLIT ranges (the last ones may be short or empty)."""
    per = tl.cdiv(n_kb, SPLIT)
    kb0 = split * per
    return kb0, tl.minimum(kb0 + per, n_kb)


@triton.jit
def _gemm2_weighted_kernel(c_ptr, w_ptr, y_ptr, weights_ptr, sorted_ids_ptr, expert_ids_ptr,
                           n_post_ptr, n_entries, N, K, n_m,
                           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                           GROUP_M: tl.constexpr, SPLIT: tl.constexpr, DOT: tl.constexpr,
                           INTERPRET: tl.constexpr):
    """y[split, entry(row), cols] = weight(entry) * C[row, K range] @ W2[expert][cols, K range]^T:
    bf16 when SPLIT is 1, else fp32 partials of the split-th K range (the finalize sums them)."""
    pid = tl.program_id(0)
    split = pid % SPLIT
    pid_m, pid_n = _tile_ids(pid // SPLIT, n_m, N // BN, GROUP_M)
    expert, rows, entry, live, _, cols = _row_block(expert_ids_ptr, sorted_ids_ptr, pid_m, pid_n,
                                                    n_entries, 1, BM, BN)
    if pid_m * BM >= tl.load(n_post_ptr):
        return
    kb0, kb1 = _k_range(split, K // BK, SPLIT)
    kk = kb0 * BK + tl.arange(0, BK)
    a_ptrs = c_ptr + rows[:, None].to(tl.int64) * K + kk[None, :]
    w_ptrs = w_ptr + expert * N * K + cols[None, :].to(tl.int64) * K + kk[:, None]
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for _ in range(kb0, kb1):
        acc = tl.dot(tl.load(a_ptrs).to(DOT), tl.load(w_ptrs).to(DOT), acc)
        a_ptrs += BK
        w_ptrs += BK
    weight = tl.load(weights_ptr + entry, mask=live, other=0.0)
    out = y_ptr + (split * n_entries + entry[:, None]).to(tl.int64) * N + cols[None, :]
    y = acc * weight[:, None]
    if SPLIT == 1:
        y = _to_bf16(y, INTERPRET)
    tl.store(out, y, mask=live[:, None])


@triton.jit
def _finalize_kernel(y_ptr, out_ptr, T, H, n_entries, TOPK: tl.constexpr, BT: tl.constexpr,
                     BH: tl.constexpr, SPLIT: tl.constexpr, INTERPRET: tl.constexpr):
    """out[t] = the token's TOPK weighted rows (each the sum of gemm2's SPLIT K-range partials),
    summed in slot order in fp32, then bf16; BT tokens x BH columns per program."""
    t = (tl.program_id(0) * BT + tl.arange(0, BT)).to(tl.int64)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    inside = (t < T)[:, None] & (cols < H)[None, :]
    acc = tl.zeros([BT, BH], dtype=tl.float32)
    for k in tl.static_range(TOPK):
        for sp in tl.static_range(SPLIT):
            rows = sp * n_entries + t * TOPK + k
            acc += tl.load(y_ptr + rows[:, None] * H + cols[None, :], mask=inside,
                           other=0.0).to(tl.float32)
    tl.store(out_ptr + t[:, None] * H + cols[None, :], _to_bf16(acc, INTERPRET), mask=inside)


def _config(T):
    """The default configuration of T's bucket (every key of CONFIG_DOC). Reasoned first
    (benchmarks/NOTES.md, "Mixtral"): decode streams 352 MB of bf16 weights per hit expert and
    wants many programs with ~90 KB of loads in flight per SM (2-3 programs per SM, 16 KB weight
    tile per stage); prefill wants 128-row wgmma tiles, 256 output columns per program. Then
    corrected by the H200 sweep of 2026-12-02 (`fib run --sweep triton_fused`,
    reports/moe_mixtral_h200/sweep): 32 x 128 gemm1 weight tiles at 9-32 tokens (-3.3% at 16),
    BK1 128 with 3 stages at 33-128 (-1.9% at 64), group_m 16 at prefill (-1.0/-1.4% at 1024/4096)."""
    if T <= SINGLE_ROUTE_MAX:
        route = dict(route="single", route_tile=SINGLE_ROUTE_MAX)
    else:
        route = dict(route="tiles", route_tile=128)
    if T > DECODE_MAX:  # compute-bound: 128 x (2 x 128) gemm1 tiles, 128 x 256 gemm2 tiles
        return dict(BM=128, BN1=128, BK1=64, warps1=8, stages1=4,
                    BN2=256, BK2=64, warps2=8, stages2=4, split2=1, group_m=16, **route)
    if T <= TINY_MAX:
        # 2-8 experts hit: gemm1 with 32-column tiles (448 programs per expert: 6.8 per SM at
        # T=1, so the busiest SMs stream 3% more than the average; 18% with 64-column tiles);
        # gemm2 has 64 programs per expert before its 4-way split
        return dict(BM=16, BN1=32, BK1=128, warps1=4, stages1=4,
                    BN2=64, BK2=128, warps2=4, stages2=4, split2=4, group_m=8, **route)
    if T <= SMALL_MAX:
        return dict(BM=16, BN1=32, BK1=128, warps1=4, stages1=4,
                    BN2=64, BK2=128, warps2=4, stages2=4, split2=2, group_m=8, **route)
    if T <= MID_MAX:
        return dict(BM=32, BN1=64, BK1=128, warps1=4, stages1=3,
                    BN2=64, BK2=128, warps2=4, stages2=4, split2=2, group_m=8, **route)
    return dict(BM=64, BN1=64, BK1=64, warps1=4, stages1=4,
                BN2=128, BK2=64, warps2=4, stages2=4, split2=2, group_m=8, **route)


def _variants(T):
    """Named alternatives to T's default worth timing (overrides of the bucket's configuration)."""
    split = {f"split2_{n}": dict(split2=n) for n in (1, 2, 4, 8)}  # the default's own is left out
    if T > DECODE_MAX:
        return {"stages3": dict(stages1=3, stages2=3), "bn2_128": dict(BN2=128, stages2=3),
                "split2_3": dict(split2=3), "bm64": dict(BM=64, BN1=64, warps1=4, warps2=4, BN2=128),
                "bm64_w8": dict(BM=64),  # 64 x 256 tiles over two warpgroups: less padding at 1024
                "bn1_64": dict(BN1=64), "group8": dict(group_m=8),
                "route_single": dict(route="single", route_tile=256)}
    if T <= TINY_MAX:
        return {**split, "bn1_64": dict(BN1=64, BK1=64, stages1=5), "stages1_3": dict(stages1=3),
                "bk2_64": dict(BK2=64, stages2=6), "route_tiles": dict(route="tiles", route_tile=2)}
    decode = {**split, "bn1_32": dict(BN1=32, BK1=128, stages1=4), "bk1_128": dict(BK1=128, stages1=3),
              "bk2_64": dict(BK2=64, stages2=6), "bn1_64_bk64": dict(BN1=64, BK1=64, stages1=5)}
    if T <= SMALL_MAX:
        return {**decode, "bm32": dict(BM=32)}
    if T <= MID_MAX:
        return {**decode, "bm16": dict(BM=16), "bm64": dict(BM=64)}
    return {**split, "bm32": dict(BM=32, BN2=64, BK2=128), "bm128": dict(BM=128, warps1=8, warps2=8),
            "bn2_64": dict(BN2=64, BK2=128), "route_tiles": dict(route="tiles", route_tile=128)}


def fib_configs(axes):
    """fib's configuration hook: {name: configuration} valid at these axes, "default" first (what
    run uses there). Variants equal to the default are left out."""
    T = int(axes["seq_len"])
    base = _config(T)
    out = {"default": base}
    for name, over in _variants(T).items():
        cfg = {**base, **over}
        if cfg != base and cfg not in out.values():
            out[name] = cfg
    return out


def _invalid(cfg):
    """Why this configuration cannot run, or None."""
    for key in ("BM", "BN1", "BK1", "BN2", "BK2", "warps1", "warps2", "route_tile"):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1 or v & (v - 1):
            return f"{key}={v!r} is not a power of 2"
    for key in ("BM", "BN1", "BK1", "BN2", "BK2"):
        if cfg[key] < 16:
            return f"{key}={cfg[key]} is below 16 (tl.dot's smallest tile)"
    for key in ("stages1", "stages2", "split2", "group_m"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            return f"{key}={cfg[key]!r} is not a positive integer"
    if cfg["route"] not in ("single", "tiles"):
        return f"route={cfg['route']!r} is not one of ('single', 'tiles')"
    return None


def _resolve(T, config):
    """T's default configuration with `config`'s keys over it; ValueError naming a bad key."""
    cfg = _config(T)
    if config is None:
        return cfg
    unknown = sorted(set(config) - set(cfg))
    if unknown:
        raise ValueError(f"triton_fused (Mixtral): unknown configuration key(s) {', '.join(unknown)}; "
                         f"known: {', '.join(CONFIG_DOC)}")
    cfg = {**cfg, **config}
    problem = _invalid(cfg)
    if problem:
        raise ValueError(f"triton_fused (Mixtral): configuration {config}: {problem}")
    return cfg


def _tiles(cfg, H, I):
    """The tile sizes clamped to the shapes; ValueError where one does not divide its dimension."""
    tiles = dict(BN1=min(cfg["BN1"], I), BK1=min(cfg["BK1"], H), BN2=min(cfg["BN2"], H),
                 BK2=min(cfg["BK2"], I))
    for key, dim, size in (("BN1", "intermediate_size", I), ("BK1", "hidden_size", H),
                           ("BN2", "hidden_size", H), ("BK2", "intermediate_size", I)):
        if size % tiles[key]:
            raise ValueError(f"triton_fused (Mixtral): {key}={tiles[key]} does not divide {dim}={size}")
    return tiles


def _route_and_align(routing_logits, BM, cfg):
    """(ids [T, 2] int32, weights [T, 2] fp32, sorted_ids, expert_ids, n_post) on the device."""
    T, E = routing_logits.shape
    dev = routing_logits.device
    n_entries = T * TOPK
    EP = triton.next_power_of_2(E)
    ids = torch.empty(T, TOPK, dtype=torch.int32, device=dev)
    weights = torch.empty(T, TOPK, dtype=torch.float32, device=dev)
    # every non-empty BM block holds at least one entry, an expert at most T entries
    blocks_max = min((n_entries + E * (BM - 1)) // BM, E * triton.cdiv(T, BM), n_entries)
    sorted_ids = torch.empty(blocks_max * BM, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(blocks_max, dtype=torch.int32, device=dev)
    n_post = torch.empty(1, dtype=torch.int32, device=dev)
    logits = routing_logits.contiguous()
    BB = min(128, triton.next_power_of_2(blocks_max))
    if cfg["route"] == "single":
        with fib.stage("routing"):
            TB = min(cfg["route_tile"], triton.next_power_of_2(T))  # no masked rows at T = 2^k
            _routing_align_kernel[(1,)](logits, ids, weights, sorted_ids, expert_ids, n_post, T,
                                        E=E, EP=EP, TOPK=TOPK, TB=TB, BM=BM, ONE_TILE=T <= TB, BB=BB,
                                        num_warps=1 if TB <= 2 else 4)
        return ids, weights, sorted_ids, expert_ids, n_post
    tile = cfg["route_tile"]
    n_tiles = triton.cdiv(T, tile)
    counts = torch.empty(n_tiles, EP, dtype=torch.int32, device=dev)
    chunk_base = torch.empty(n_tiles, EP, dtype=torch.int32, device=dev)
    with fib.stage("routing"):
        _routing_kernel[(n_tiles,)](logits, ids, weights, counts, T, E=E, EP=EP, TOPK=TOPK, TB=tile,
                                    num_warps=4)
    with fib.stage("dispatch"):
        _moe_align_scan_kernel[(1,)](counts, chunk_base, sorted_ids, expert_ids, n_post, n_tiles,
                                     n_entries, BM=BM, EP=EP, CB=64, BB=BB)
        _moe_align_scatter_kernel[(n_tiles,)](ids, chunk_base, sorted_ids, n_entries,
                                              CHUNK=tile * TOPK, EP=EP)
    return ids, weights, sorted_ids, expert_ids, n_post


def run(routing_logits, hidden_states, gemm1_weights, gemm2_weights, output):
    """The definition's signature exactly (flashinfer-bench counts the parameters): T's default tiles."""
    _run(routing_logits, hidden_states, gemm1_weights, gemm2_weights, output)


def fib_with_config(config):
    """fib's configuration hook: `run` with the configuration dict `config` (see fib_configs)."""
    return functools.partial(_run, config=config)


def _run(routing_logits, hidden_states, gemm1_weights, gemm2_weights, output, config=None):
    T, H = hidden_states.shape
    n_experts, two_i, _ = gemm1_weights.shape
    I = gemm2_weights.shape[2]
    if two_i != 2 * I or routing_logits.shape[1] != n_experts:
        raise ValueError(f"triton_fused (Mixtral): gemm1_weights {tuple(gemm1_weights.shape)}, "
                         f"gemm2_weights {tuple(gemm2_weights.shape)}, routing_logits "
                         f"{tuple(routing_logits.shape)} do not agree (W13 must have 2 x I rows)")
    cfg = _resolve(T, config)
    tiles = _tiles(cfg, H, I)
    BM, GROUP_M = cfg["BM"], cfg["group_m"]
    dev = hidden_states.device
    n_entries = T * TOPK
    hidden_states = hidden_states.contiguous()
    gemm1_weights = gemm1_weights.contiguous()
    gemm2_weights = gemm2_weights.contiguous()
    ids, weights, sorted_ids, expert_ids, n_post = _route_and_align(routing_logits, BM, cfg)
    rows_max = sorted_ids.numel()
    n_m = rows_max // BM
    with fib.stage("gemm1"):
        BN1 = tiles["BN1"]
        c = torch.empty(rows_max, I, dtype=torch.bfloat16, device=dev)
        _gemm1_swiglu_kernel[(n_m * (I // BN1),)](
            hidden_states, gemm1_weights, c, sorted_ids, expert_ids, n_post, n_entries, I, H, n_m,
            TOPK=TOPK, BM=BM, BN=BN1, BK=tiles["BK1"], GROUP_M=GROUP_M, DOT=DOT_DTYPE,
            INTERPRET=INTERPRET, num_warps=cfg["warps1"], num_stages=cfg["stages1"])
    split2 = cfg["split2"]
    with fib.stage("gemm2"):
        BN2 = tiles["BN2"]
        y = torch.empty(split2, n_entries, H, dtype=torch.float32 if split2 > 1 else torch.bfloat16,
                        device=dev)
        _gemm2_weighted_kernel[(n_m * (H // BN2) * split2,)](
            c, gemm2_weights, y, weights, sorted_ids, expert_ids, n_post, n_entries, H, I, n_m,
            BM=BM, BN=BN2, BK=tiles["BK2"], GROUP_M=GROUP_M, SPLIT=split2, DOT=DOT_DTYPE,
            INTERPRET=INTERPRET, num_warps=cfg["warps2"], num_stages=cfg["stages2"])
    with fib.stage("finalize"):
        # tiny T: 256-column programs (more of them); else 4 (8 for prefill) tokens per program
        BT = 1 if T <= TINY_MAX else 4 if T <= DECODE_MAX else 8
        BH = min(256 if T <= TINY_MAX else 1024, triton.next_power_of_2(H))
        _finalize_kernel[(triton.cdiv(T, BT), triton.cdiv(H, BH))](
            y, output, T, H, n_entries, TOPK=TOPK, BT=BT, BH=BH, SPLIT=split2, INTERPRET=INTERPRET)
