"""Our routing, permutation, activation and finalize around a library's grouped FP8 GEMMs.

Shared by the peer solutions that hand the two expert GEMMs to a library (torch_cublaslt,
deepgemm): such a library wants the routed token rows gathered into per-expert groups (a copy of
the FP8 rows and their 1x128 scales in the layout it reads) and writes the GEMM outputs in that
expert order. Routing, the expert sort (moe_align), SwiGLU + FP8 re-quantization and the weighted
combine are triton_staged's kernels (imported, not copied); this file adds the two steps only the
peers need:

- `gather_rows`: row r of the grouped copy <- token row of entry row_entry[r] (zeros for padding),
  its scales block-major per segment of `seg_rows` rows, the inverse map entry -> row (what the
  combine reads), and optionally DeepGEMM's m_indices (the expert of the row, -1 for padding).
- `masked_layout`: DeepGEMM's masked (decode) layout, entry (t, k) of local expert e at row
  e * max_m + (its rank among e's entries, in token order), and each expert's row count.

No host sync here: grids are sized by upper bounds and programs past the live rows only mark them.
"""
import torch
import triton
import triton.language as tl

from triton_staged import moe as staged

TOPK = staged.TOPK
route = staged.route
align = staged.align
swiglu_quant = staged.swiglu_quant
combine = staged.combine


@triton.jit
def _gather_rows_kernel(hidden_ptr, hidden_scale_ptr, row_entry_ptr, n_live_ptr, a_ptr, a_scale_ptr,
                        inv_ptr, m_indices_ptr, expert_ids_ptr, n_tokens, n_entries, n_rows, seg_rows,
                        H, KB, TOPK: tl.constexpr, BM: tl.constexpr, BH: tl.constexpr,
                        BKB: tl.constexpr, M_INDICES: tl.constexpr):
    r = tl.program_id(0)
    if r >= tl.load(n_live_ptr):
        if M_INDICES:
            tl.store(m_indices_ptr + r, -1)
        return
    entry = tl.load(row_entry_ptr + r)
    live = entry < n_entries
    token = tl.where(live, entry // TOPK, 0).to(tl.int64)
    read_h = tl.where(live, H, 0)  # padding rows read nothing and store zeros
    cols = tl.arange(0, BH)
    for h0 in range(0, H, BH):
        c = h0 + cols
        x = tl.load(hidden_ptr + token * H + c, mask=c < read_h, other=0.0)
        tl.store(a_ptr + r.to(tl.int64) * H + c, x, mask=c < H)
    kb = tl.arange(0, BKB)
    s = tl.load(hidden_scale_ptr + kb * n_tokens + token, mask=kb < tl.where(live, KB, 0), other=0.0)
    seg = r // seg_rows
    tl.store(a_scale_ptr + (seg * KB + kb).to(tl.int64) * seg_rows + r - seg * seg_rows, s, mask=kb < KB)
    if live:
        tl.store(inv_ptr + entry, r)
    if M_INDICES:
        tl.store(m_indices_ptr + r, tl.where(live, tl.load(expert_ids_ptr + r // BM), -1))


def gather_rows(hidden_states, hidden_states_scale, row_entry, n_live, n_rows, seg_rows,
                expert_ids=None, BM=1):
    """Gather the grouped FP8 rows. `row_entry[r]` is the routed entry (t * TOPK + k) of row r, or
    n_entries for a padding row; rows from n_live[0] on are not touched (their m_indices -1).

    Returns (a [n_rows, H] fp8, a_scale flat fp32 [n_rows / seg_rows, H / 128, seg_rows],
    inv [n_entries] int32 (row of each local entry; others unset), m_indices [n_rows] int32 or None).
    With `expert_ids` (the expert of each BM-row block, from `align`), m_indices[r] is the expert
    of row r, -1 for padding and unused rows."""
    T, H = hidden_states.shape
    KB = hidden_states_scale.shape[0]
    dev = hidden_states.device
    n_entries = T * TOPK
    assert n_rows % seg_rows == 0, (n_rows, seg_rows)
    a = torch.empty(n_rows, H, dtype=hidden_states.dtype, device=dev)
    a_scale = torch.empty(n_rows * KB, dtype=torch.float32, device=dev)
    inv = torch.empty(n_entries, dtype=torch.int32, device=dev)
    m_indices = torch.empty(n_rows, dtype=torch.int32, device=dev) if expert_ids is not None else None
    _gather_rows_kernel[(n_rows,)](
        hidden_states, hidden_states_scale, row_entry, n_live, a, a_scale, inv,
        inv if m_indices is None else m_indices, row_entry if expert_ids is None else expert_ids,
        T, n_entries, n_rows, seg_rows, H, KB, TOPK=TOPK, BM=BM,
        BH=min(4096, triton.next_power_of_2(H)), BKB=triton.next_power_of_2(KB),
        M_INDICES=m_indices is not None)
    return a, a_scale, inv, m_indices


@triton.jit
def _masked_layout_kernel(ids_ptr, row_entry_ptr, masked_m_ptr, n_entries, expert_offset, n_local,
                          max_m, CHUNK: tl.constexpr, EP: tl.constexpr):
    """One program: each local entry's row e * max_m + rank (stable, token order), counts per expert."""
    e = tl.arange(0, EP)
    carry = tl.zeros([EP], dtype=tl.int32)
    for c0 in range(0, n_entries, CHUNK):
        entry = c0 + tl.arange(0, CHUNK)
        local = tl.load(ids_ptr + entry, mask=entry < n_entries, other=-1) - expert_offset
        onehot = ((local[:, None] == e[None, :]) & (e[None, :] < n_local)).to(tl.int32)
        slot = tl.sum(onehot * (carry[None, :] + tl.cumsum(onehot, 0) - 1), 1)
        hit = tl.sum(onehot, 1) > 0
        tl.store(row_entry_ptr + local.to(tl.int64) * max_m + slot, entry, mask=hit)
        carry += tl.sum(onehot, 0)
    tl.store(masked_m_ptr + e, carry, mask=e < n_local)


def masked_layout(ids, expert_offset, n_local, max_m):
    """(row_entry [n_local * max_m] int32, n_entries on unused rows; masked_m [n_local] int32).
    max_m must be at least the token count (an expert gets at most one entry per token)."""
    n_entries = ids.numel()
    assert max_m >= ids.shape[0], (max_m, ids.shape)
    row_entry = torch.full((n_local * max_m,), n_entries, dtype=torch.int32, device=ids.device)
    masked_m = torch.empty(n_local, dtype=torch.int32, device=ids.device)
    _masked_layout_kernel[(1,)](ids, row_entry, masked_m, n_entries, expert_offset, n_local, max_m,
                                CHUNK=min(256, triton.next_power_of_2(n_entries)),
                                EP=triton.next_power_of_2(n_local))
    return row_entry, masked_m
