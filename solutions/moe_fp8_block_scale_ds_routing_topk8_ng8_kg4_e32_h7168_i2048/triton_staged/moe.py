"""DeepSeek-V3 MoE layer (FP8 block scale), one Triton kernel per pipeline stage.

routing -> align (count, scan, scatter) -> gemm1 -> swiglu + fp8 requant -> gemm2 -> combine.
Every intermediate goes through device memory; `triton_fused` removes those round trips.
Sizes come from the tensor shapes (the scaled-down sibling shares this file). No host sync: the
grids are sized by upper bounds and programs past the real work exit at once, so the whole layer
can be captured in a CUDA graph.

Configurations: `run(...)` (the definition's signature; `fib_with_config(config)` gives it with a configuration) takes T's bucket tiles (`_config`); a `config` dict
overrides any of BM, BN, warps, stages. `fib_configs(axes)` names "default" and the three
buckets' tile sets, valid at every T (`fib run --sweep triton_staged` times them).
"""
import functools
import os

import torch
import triton
import triton.language as tl

import fib

N_GROUPS = 8        # expert groups (definition: ng8)
TOPK_GROUPS = 4     # groups kept per token (kg4)
TOPK = 8            # experts per token (topk8)
ALIGN_CHUNK = 256   # routed entries per program in the align kernels
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
def _routing_kernel(logits_ptr, bias_ptr, ids_ptr, weights_ptr, scaling,
                    E: tl.constexpr, NG: tl.constexpr, KG: tl.constexpr, TOPK: tl.constexpr):
    """One token: sigmoid + bias, group score = sum of top-2, keep KG groups, top-TOPK experts."""
    t = tl.program_id(0)
    GS: tl.constexpr = E // NG
    g = tl.arange(0, NG)
    j = tl.arange(0, GS)
    idx = g[:, None] * GS + j[None, :]
    s = tl.sigmoid(tl.load(logits_ptr + t * E + idx).to(tl.float32))
    b = s + tl.load(bias_ptr + idx).to(tl.float32)
    neg = float("-inf")
    m1 = tl.max(b, axis=1)
    first = tl.min(tl.where(b == m1[:, None], j[None, :], GS), axis=1)
    m2 = tl.max(tl.where(j[None, :] == first[:, None], neg, b), axis=1)
    group_score = m1 + m2
    keep = g < 0
    for _ in tl.static_range(KG):
        cand = tl.where(keep, neg, group_score)
        best = tl.min(tl.where(cand == tl.max(cand, 0), g, NG), 0)
        keep = keep | (g == best)
    masked = tl.where(keep[:, None], b, neg)
    k = tl.arange(0, TOPK)
    ids = tl.zeros([TOPK], dtype=tl.int32)
    w = tl.zeros([TOPK], dtype=tl.float32)
    for i in tl.static_range(TOPK):
        top = tl.max(tl.max(masked, 1), 0)
        e = tl.min(tl.min(tl.where(masked == top, idx, E), 1), 0)
        hit = idx == e
        ids = tl.where(k == i, e, ids)
        w = tl.where(k == i, tl.sum(tl.sum(tl.where(hit, s, 0.0), 1), 0), w)
        masked = tl.where(hit, neg, masked)
    w = w / tl.sum(w, 0) * scaling
    tl.store(ids_ptr + t * TOPK + k, ids)
    tl.store(weights_ptr + t * TOPK + k, w)


@triton.jit
def _moe_align_count_kernel(ids_ptr, counts_ptr, n_entries, expert_offset, n_local,
                            CHUNK: tl.constexpr, EP: tl.constexpr):
    """counts[chunk, e] = routed entries of this chunk that go to local expert e."""
    pid = tl.program_id(0)
    offs = pid * CHUNK + tl.arange(0, CHUNK)
    local = tl.load(ids_ptr + offs, mask=offs < n_entries, other=-1) - expert_offset
    e = tl.arange(0, EP)
    onehot = (local[:, None] == e[None, :]) & (e[None, :] < n_local)
    tl.store(counts_ptr + pid * EP + e, tl.sum(onehot.to(tl.int32), 0))


@triton.jit
def _moe_align_scan_kernel(counts_ptr, chunk_base_ptr, sorted_ids_ptr, expert_ids_ptr, n_post_ptr,
                           n_chunks, n_entries, n_local,
                           BM: tl.constexpr, EP: tl.constexpr, CB: tl.constexpr, BB: tl.constexpr):
    """One program: per-expert totals padded to BM, where each chunk's entries start, which expert
    owns each BM block, and the sentinel (n_entries) in every padding slot."""
    e = tl.arange(0, EP)
    c = tl.arange(0, CB)
    total = tl.zeros([EP], dtype=tl.int32)
    for c0 in range(0, n_chunks, CB):
        rows = c0 + c
        tile = tl.load(counts_ptr + rows[:, None] * EP + e[None, :], mask=rows[:, None] < n_chunks, other=0)
        total += tl.sum(tile, 0)
    padded = (total + BM - 1) // BM * BM
    end = tl.cumsum(padded, 0)
    start = end - padded
    n_post = tl.sum(padded, 0)
    tl.store(n_post_ptr, n_post)
    carry = start
    for c0 in range(0, n_chunks, CB):
        rows = c0 + c
        mask = rows[:, None] < n_chunks
        tile = tl.load(counts_ptr + rows[:, None] * EP + e[None, :], mask=mask, other=0)
        base = carry[None, :] + tl.cumsum(tile, 0) - tile
        tl.store(chunk_base_ptr + rows[:, None] * EP + e[None, :], base, mask=mask)
        carry += tl.sum(tile, 0)
    pad = tl.arange(0, BM)
    slot = (start + total)[:, None] + pad[None, :]
    tl.store(sorted_ids_ptr + slot, n_entries + 0 * slot, mask=(slot < end[:, None]) & (e[:, None] < n_local))
    end_live = tl.where(e < n_local, end, 2147483647)
    bb = tl.arange(0, BB)
    for b0 in range(0, n_post // BM, BB):
        blk = b0 + bb
        owner = tl.sum((end_live[None, :] <= blk[:, None] * BM).to(tl.int32), 1)
        tl.store(expert_ids_ptr + blk, owner, mask=blk < n_post // BM)


@triton.jit
def _moe_align_scatter_kernel(ids_ptr, chunk_base_ptr, sorted_ids_ptr, n_entries, expert_offset,
                              n_local, CHUNK: tl.constexpr, EP: tl.constexpr):
    """sorted_ids[position] = entry index, stable within each expert (token order)."""
    pid = tl.program_id(0)
    offs = pid * CHUNK + tl.arange(0, CHUNK)
    local = tl.load(ids_ptr + offs, mask=offs < n_entries, other=-1) - expert_offset
    e = tl.arange(0, EP)
    onehot = ((local[:, None] == e[None, :]) & (e[None, :] < n_local)).to(tl.int32)
    base = tl.load(chunk_base_ptr + pid * EP + e)
    pos = tl.sum(onehot * (base[None, :] + tl.cumsum(onehot, 0) - 1), 1)
    valid = (local >= 0) & (local < n_local) & (offs < n_entries)
    tl.store(sorted_ids_ptr + pos, offs, mask=valid)


@triton.jit
def _tile_ids(n_m, n_n, GROUP_M: tl.constexpr):
    """Grouped launch order: GROUP_M row blocks sweep the column tiles together (L2 reuse)."""
    pid = tl.program_id(0)
    per_group = GROUP_M * n_n
    first_m = (pid // per_group) * GROUP_M
    rows = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % rows
    pid_n = (pid % per_group) // rows
    return pid_m, pid_n


@triton.jit
def _row_block(expert_ids_ptr, sorted_ids_ptr, pid_m, pid_n, n_entries, BM: tl.constexpr,
               BN: tl.constexpr):
    """One tile's expert, its BM sorted rows, their entries (live: not padding), its BN columns."""
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    rows = pid_m * BM + tl.arange(0, BM)
    entry = tl.load(sorted_ids_ptr + rows)
    return expert, rows, entry, entry < n_entries, pid_n * BN + tl.arange(0, BN)


@triton.jit
def _gemm1_kernel(a_ptr, a_scale_ptr, w_ptr, w_scale_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr,
                  n_post_ptr, n_tokens, n_entries, N, K, n_m,
                  TOPK: tl.constexpr, QB: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                  BK: tl.constexpr, GROUP_M: tl.constexpr):
    """out[row, :] = dequant(A[token(row)]) @ dequant(W1[expert])^T, rows in sorted order (bf16)."""
    pid_m, pid_n = _tile_ids(n_m, N // BN, GROUP_M)
    if pid_m * BM >= tl.load(n_post_ptr):
        return
    expert, rows, entry, live, cols = _row_block(expert_ids_ptr, sorted_ids_ptr, pid_m, pid_n,
                                                 n_entries, BM, BN)
    token = tl.where(live, entry // TOPK, 0).to(tl.int64)
    kk = tl.arange(0, BK)
    a_ptrs = a_ptr + token[:, None] * K + kk[None, :]
    w_ptrs = w_ptr + expert * N * K + cols[None, :].to(tl.int64) * K + kk[:, None]
    n_kb = K // QB
    ws_ptrs = w_scale_ptr + expert * (N // QB) * n_kb + (cols // QB) * n_kb
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for kb in range(0, K // BK):
        a = tl.load(a_ptrs, mask=live[:, None], other=0.0)
        w = tl.load(w_ptrs)
        a_s = tl.load(a_scale_ptr + kb * n_tokens + token)
        w_s = tl.load(ws_ptrs + kb)
        acc += tl.dot(a, w) * a_s[:, None] * w_s[None, :]
        a_ptrs += BK
        w_ptrs += BK
    tl.store(out_ptr + rows[:, None].to(tl.int64) * N + cols[None, :], acc.to(tl.bfloat16))


@triton.jit
def _swiglu_quant_kernel(g1_ptr, c_ptr, c_scale_ptr, n_post_ptr, n_rows, I, seg_rows,
                         QB: tl.constexpr, INTERPRET: tl.constexpr):
    """c = silu(gate) * up over one 1 x QB group of one row, re-quantized to fp8 with amax / 448.
    The scales are block-major per segment of `seg_rows` rows: [n_rows / seg_rows, I / QB, seg_rows]
    (seg_rows = n_rows: the plain block-major [I / QB, n_rows])."""
    row = tl.program_id(0)
    grp = tl.program_id(1)
    if row >= tl.load(n_post_ptr):
        return
    cols = grp * QB + tl.arange(0, QB)
    base = g1_ptr + row.to(tl.int64) * 2 * I
    up = tl.load(base + cols).to(tl.float32)
    gate = tl.load(base + I + cols).to(tl.float32)
    c = gate * tl.sigmoid(gate) * up
    scale = tl.maximum(tl.max(tl.abs(c), 0), 1e-12) / 448.0
    tl.store(c_ptr + row.to(tl.int64) * I + cols, _to_fp8(c / scale, INTERPRET))
    seg = row // seg_rows
    tl.store(c_scale_ptr + (seg * (I // QB) + grp).to(tl.int64) * seg_rows + row - seg * seg_rows, scale)


@triton.jit
def _gemm2_kernel(c_ptr, c_scale_ptr, w_ptr, w_scale_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr,
                  n_post_ptr, n_rows, n_entries, N, K, n_m,
                  QB: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                  GROUP_M: tl.constexpr):
    """out[entry(row), :] = dequant(C[row]) @ dequant(W2[expert])^T (bf16, unweighted)."""
    pid_m, pid_n = _tile_ids(n_m, N // BN, GROUP_M)
    if pid_m * BM >= tl.load(n_post_ptr):
        return
    expert, rows, entry, live, cols = _row_block(expert_ids_ptr, sorted_ids_ptr, pid_m, pid_n,
                                                 n_entries, BM, BN)
    kk = tl.arange(0, BK)
    a_ptrs = c_ptr + rows[:, None].to(tl.int64) * K + kk[None, :]
    w_ptrs = w_ptr + expert * N * K + cols[None, :].to(tl.int64) * K + kk[:, None]
    n_kb = K // QB
    ws_ptrs = w_scale_ptr + expert * (N // QB) * n_kb + (cols // QB) * n_kb
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for kb in range(0, K // BK):
        a = tl.load(a_ptrs)
        w = tl.load(w_ptrs)
        a_s = tl.load(c_scale_ptr + kb * n_rows + rows)
        w_s = tl.load(ws_ptrs + kb)
        acc += tl.dot(a, w) * a_s[:, None] * w_s[None, :]
        a_ptrs += BK
        w_ptrs += BK
    tl.store(out_ptr + entry[:, None].to(tl.int64) * N + cols[None, :], acc.to(tl.bfloat16),
             mask=live[:, None])


@triton.jit
def _combine_kernel(y_ptr, ids_ptr, weights_ptr, out_ptr, rows_ptr, expert_offset, n_local, H,
                    TOPK: tl.constexpr, BH: tl.constexpr, ROW_MAP: tl.constexpr):
    """out[t] = sum over the token's local experts of weight * y[row(t, k)], in slot order (bf16);
    row(t, k) = t * TOPK + k, or rows[t * TOPK + k] with ROW_MAP (y in expert-sorted order)."""
    t = tl.program_id(0)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    acc = tl.zeros([BH], dtype=tl.float32)
    for k in range(TOPK):
        local = tl.load(ids_ptr + t * TOPK + k) - expert_offset
        if (local >= 0) & (local < n_local):
            w = tl.load(weights_ptr + t * TOPK + k)
            row = t * TOPK + k
            if ROW_MAP:
                row = tl.load(rows_ptr + row)
            acc += w * tl.load(y_ptr + row.to(tl.int64) * H + cols, mask=cols < H).to(tl.float32)
    tl.store(out_ptr + t.to(tl.int64) * H + cols, acc.to(tl.bfloat16), mask=cols < H)


def _config(T):
    """BM, BN (gemm1 and gemm2), warps and stages per token-count bucket; BK is the 128 scale block."""
    if T <= 16:
        return TILES["bm16_bn64"]
    if T <= 128:
        return TILES["bm32_bn64"]
    return TILES["bm64_bn128_s3"]


TILES = {"bm16_bn64": dict(BM=16, BN=64, warps=4, stages=4), "bm32_bn64": dict(BM=32, BN=64, warps=4, stages=4),
         "bm64_bn128_s3": dict(BM=64, BN=128, warps=4, stages=3)}


def fib_configs(axes):
    """fib's configuration hook: "default" (T's bucket, what config=None runs) and every bucket's
    tiles by name (the kernels take any of them at any T)."""
    return {"default": _config(int(axes["seq_len"])), **TILES}


def _resolve(T, config):
    cfg = dict(_config(T))
    if config is None:
        return cfg
    unknown = sorted(set(config) - set(cfg))
    if unknown:
        raise ValueError(f"triton_staged: unknown configuration key(s) {', '.join(unknown)}; known: "
                         f"{', '.join(cfg)}")
    cfg.update(config)
    for key, v in cfg.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1 or (key != "stages" and v & (v - 1)):
            raise ValueError(f"triton_staged: configuration {config}: {key}={v!r} is not a "
                             + ("positive integer" if key == "stages" else "power of 2"))
    return cfg


def route(routing_logits, routing_bias, routed_scaling_factor):
    T, E = routing_logits.shape
    ids = torch.empty(T, TOPK, dtype=torch.int32, device=routing_logits.device)
    weights = torch.empty(T, TOPK, dtype=torch.float32, device=routing_logits.device)
    _routing_kernel[(T,)](routing_logits.contiguous(), routing_bias.contiguous(), ids, weights,
                          float(routed_scaling_factor), E=E, NG=N_GROUPS, KG=TOPK_GROUPS, TOPK=TOPK)
    return ids, weights


def align(ids, expert_offset, n_local, BM):
    """Sort routed entries by local expert, each expert padded to BM rows (sentinel = n_entries).
    Returns sorted_ids [rows_max], expert_ids [blocks_max], n_post [1] (rows actually used)."""
    dev = ids.device
    n_entries = ids.numel()
    T = ids.shape[0]
    EP = triton.next_power_of_2(n_local)
    n_chunks = triton.cdiv(n_entries, ALIGN_CHUNK)
    blocks_max = min((n_entries + n_local * (BM - 1)) // BM, n_local * triton.cdiv(T, BM))
    sorted_ids = torch.empty(blocks_max * BM, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(blocks_max, dtype=torch.int32, device=dev)
    n_post = torch.empty(1, dtype=torch.int32, device=dev)
    counts = torch.empty(n_chunks, EP, dtype=torch.int32, device=dev)
    chunk_base = torch.empty(n_chunks, EP, dtype=torch.int32, device=dev)
    flat = ids.view(-1)
    _moe_align_count_kernel[(n_chunks,)](flat, counts, n_entries, expert_offset, n_local,
                                         CHUNK=ALIGN_CHUNK, EP=EP)
    _moe_align_scan_kernel[(1,)](counts, chunk_base, sorted_ids, expert_ids, n_post, n_chunks,
                                 n_entries, n_local, BM=BM, EP=EP, CB=64, BB=128)
    _moe_align_scatter_kernel[(n_chunks,)](flat, chunk_base, sorted_ids, n_entries, expert_offset,
                                           n_local, CHUNK=ALIGN_CHUNK, EP=EP)
    return sorted_ids, expert_ids, n_post


def swiglu_quant(g1, n_post, I, QB, seg_rows=None):
    """C = silu(gate) * up of the bf16 rows g1 [n_rows, 2 * I] ([up | gate]), re-quantized to fp8
    per 1 x QB group; rows from n_post[0] on are skipped. Returns (c [n_rows, I] fp8, scales fp32):
    scales block-major per segment of seg_rows rows ([n_rows / seg_rows, I / QB, seg_rows] flat;
    default one segment: [I / QB, n_rows])."""
    n_rows = g1.shape[0]
    seg_rows = seg_rows or n_rows
    assert n_rows % seg_rows == 0, (n_rows, seg_rows)
    c = torch.empty(n_rows, I, dtype=torch.float8_e4m3fn, device=g1.device)
    c_scale = torch.empty(I // QB * n_rows, dtype=torch.float32, device=g1.device)
    _swiglu_quant_kernel[(n_rows, I // QB)](g1, c, c_scale, n_post, n_rows, I, seg_rows, QB=QB,
                                            INTERPRET=INTERPRET)
    return c, c_scale


def combine(y, ids, weights, output, expert_offset, n_local, rows=None):
    """output[t] = sum of weight * y[row] over the token's local (t, k) entries, in slot order; row is
    t * TOPK + k, or rows[t * TOPK + k] when y holds the rows in another (expert-sorted) order."""
    T, H = output.shape
    BH = min(1024, triton.next_power_of_2(H))
    _combine_kernel[(T, triton.cdiv(H, BH))](y, ids, weights, output, ids if rows is None else rows,
                                             expert_offset, n_local, H, TOPK=TOPK, BH=BH,
                                             ROW_MAP=rows is not None)


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
    n_local, N1, _ = gemm1_weights.shape
    I = gemm2_weights.shape[2]
    QB = H // hidden_states_scale.shape[0]
    cfg = _resolve(T, config)
    BM, BN, warps, stages = cfg["BM"], cfg["BN"], cfg["warps"], cfg["stages"]
    BN1, BN2 = min(BN, N1), min(BN, H)
    dev = hidden_states.device
    n_entries = T * TOPK
    with fib.stage("routing"):
        ids, weights = route(routing_logits, routing_bias, routed_scaling_factor)
    with fib.stage("dispatch"):
        sorted_ids, expert_ids, n_post = align(ids, local_expert_offset, n_local, BM)
    rows_max = sorted_ids.numel()
    n_m = rows_max // BM
    with fib.stage("gemm1"):
        g1 = torch.empty(rows_max, N1, dtype=torch.bfloat16, device=dev)
        _gemm1_kernel[(n_m * (N1 // BN1),)](
            hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale, g1,
            sorted_ids, expert_ids, n_post, T, n_entries, N1, H, n_m,
            TOPK=TOPK, QB=QB, BM=BM, BN=BN1, BK=QB, GROUP_M=8, num_warps=warps, num_stages=stages)
    with fib.stage("activation"):
        c, c_scale = swiglu_quant(g1, n_post, I, QB)
    with fib.stage("gemm2"):
        y = torch.empty(n_entries, H, dtype=torch.bfloat16, device=dev)
        _gemm2_kernel[(n_m * (H // BN2),)](
            c, c_scale, gemm2_weights, gemm2_weights_scale, y, sorted_ids, expert_ids, n_post,
            rows_max, n_entries, H, I, n_m,
            QB=QB, BM=BM, BN=BN2, BK=QB, GROUP_M=8, num_warps=warps, num_stages=stages)
    with fib.stage("finalize"):
        combine(y, ids, weights, output, local_expert_offset, n_local)
