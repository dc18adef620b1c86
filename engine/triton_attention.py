"""Paged attention in Triton: one launch for a mixed batch of prefill chunks and decodes.

Same semantics as ``engine.attention.paged_attention_reference``. Layout of the work:

- A program owns one *query tile* (``BLOCK_Q`` consecutive query tokens of one
  sequence) times all query heads of one KV head (GQA group), flattened into
  ``BLOCK_M = BLOCK_Q * GROUP`` rows, so each K/V tile is loaded once per group.
- Query tiles are numbered without a host sync: sequence i owns tiles starting at
  ``cu_seqlens_q[i] // BLOCK_Q + i``; the grid is the upper bound
  ``T // BLOCK_Q + S`` and a program finds its sequence by binary search over
  ``cu_seqlens_q`` (programs past their sequence's last tile exit). When the caller
  promises ``max_q_len == 1`` (decode, CUDA graphs) tile i is sequence i.
- K/V are gathered token by token through the block table, so a KV tile
  (``BLOCK_N`` tokens) may span several cache blocks of any power-of-two size.
- Online softmax in fp32, base 2 (``scale * log2(e)`` folded into the scores).
- Split-KV (flash-decoding): when the grid is too small to fill the GPU (decode at
  small batch, long context), a third grid axis splits each sequence's keys; the
  splits write unnormalised partials and a second kernel merges them.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634
# Finite stand-in for -inf as the running max: a row that saw no key yet keeps
# exp2(s - m) == 0 and alpha == 1 instead of NaN from (-inf) - (-inf).
_NEG_BIG = tl.constexpr(-1.0e30)


@triton.jit
def _find_sequence(cu_seqlens_q_ptr, num_seqs, tile, BLOCK_Q: tl.constexpr):
    """Largest i with cu_seqlens_q[i] // BLOCK_Q + i <= tile."""
    # explicit int32 tensors: a literal 0 (or num_seqs == 1, which Triton
    # specialises to a constant) would not be a valid loop-carried value
    lo = tl.full([], 0, tl.int32)
    hi = tl.full([], 0, tl.int32) + num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_tile = tl.load(cu_seqlens_q_ptr + mid) // BLOCK_Q + mid
        if first_tile <= tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


# num_seqs and the block-table stride change with every batch: specialising on them (== 1,
# divisible by 16) would compile new variants of this kernel while serving, seconds each
@triton.jit(do_not_specialize=["num_seqs", "stride_bt"])
def _paged_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,  # q/o [T, Hq, D]; k/v [N, B, Hkv, D]
    part_o_ptr,
    part_ml_ptr,  # [T, Hq, SPLITS, D] fp32; [T, Hq, SPLITS, 2] fp32
    cu_seqlens_q_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    qk_scale_log2,  # scale * log2(e)
    num_seqs,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_bt,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # tokens per cache block
    GROUP: tl.constexpr,  # query heads per KV head
    BLOCK_Q: tl.constexpr,  # query tokens per tile
    BLOCK_M: tl.constexpr,  # rows per tile, >= BLOCK_Q * GROUP, power of two
    BLOCK_N: tl.constexpr,  # keys per KV tile
    NUM_SPLITS: tl.constexpr,
    DECODE_ONLY: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    if DECODE_ONLY:
        seq = tile
        tile_in_seq = 0
    else:
        seq = _find_sequence(cu_seqlens_q_ptr, num_seqs, tile, BLOCK_Q)
        tile_in_seq = tile - (tl.load(cu_seqlens_q_ptr + seq) // BLOCK_Q + seq)
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    if tile_in_seq * BLOCK_Q >= q_len:
        return
    kv_len = tl.load(seq_lens_ptr + seq)

    rows = tl.arange(0, BLOCK_M)
    row_tok = tile_in_seq * BLOCK_Q + rows // GROUP  # query index inside the sequence
    row_head = kv_head * GROUP + rows % GROUP
    row_valid = (rows < BLOCK_Q * GROUP) & (row_tok < q_len)
    row_pos = kv_len - q_len + row_tok  # causal position of each row
    dims = tl.arange(0, HEAD_DIM_PAD)
    dim_valid = dims < HEAD_DIM

    q_offs = (q_start + row_tok)[:, None] * stride_qt + row_head[:, None] * stride_qh + dims[None, :]
    io_mask = row_valid[:, None] & dim_valid[None, :]
    q = tl.load(q_ptr + q_offs, mask=io_mask, other=0.0)  # [BLOCK_M, D]

    # keys this tile may see: 0 .. position of its last query
    last_tok = tl.minimum(tile_in_seq * BLOCK_Q + BLOCK_Q, q_len)
    kv_end = kv_len - q_len + last_tok
    num_kv_tiles = tl.cdiv(kv_end, BLOCK_N)
    tiles_per_split = tl.cdiv(num_kv_tiles, NUM_SPLITS)
    tile_lo = split * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, num_kv_tiles)

    m_i = tl.full([BLOCK_M], _NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    table_row = block_tables_ptr + seq * stride_bt
    # Tiles wholly at or before the tile's first query position are visible to every row and
    # hold only valid keys: they run without the causal and bounds masks (the prefill bulk).
    first_pos = kv_len - q_len + tile_in_seq * BLOCK_Q
    open_hi = tl.maximum(tl.minimum(tile_hi, (first_pos + 1) // BLOCK_N), tile_lo)
    dim_mask = (tl.arange(0, BLOCK_N) >= 0)[:, None] & dim_valid[None, :]  # [BLOCK_N, D]; folds when D is a power of two
    for kv_tile in range(tile_lo, open_hi):
        keys = kv_tile * BLOCK_N + tl.arange(0, BLOCK_N)
        blocks = tl.load(table_row + keys // BLOCK_SIZE).to(tl.int64)
        slots = keys % BLOCK_SIZE
        k_offs = blocks[:, None] * stride_kb + slots[:, None] * stride_ks + kv_head * stride_kh + dims[None, :]
        v_offs = blocks[:, None] * stride_vb + slots[:, None] * stride_vs + kv_head * stride_vh + dims[None, :]
        k = tl.load(k_ptr + k_offs, mask=dim_mask, other=0.0)  # [BLOCK_N, D]
        v = tl.load(v_ptr + v_offs, mask=dim_mask, other=0.0)  # [BLOCK_N, D]
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2  # [BLOCK_M, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    # the diagonal (and, for decode, the last partial) tiles: masked
    for kv_tile in range(open_hi, tile_hi):
        keys = kv_tile * BLOCK_N + tl.arange(0, BLOCK_N)
        key_valid = keys < kv_end
        blocks = tl.load(table_row + keys // BLOCK_SIZE, mask=key_valid, other=0).to(tl.int64)
        slots = keys % BLOCK_SIZE
        kv_mask = key_valid[:, None] & dim_valid[None, :]
        k_offs = blocks[:, None] * stride_kb + slots[:, None] * stride_ks + kv_head * stride_kh + dims[None, :]
        v_offs = blocks[:, None] * stride_vb + slots[:, None] * stride_vs + kv_head * stride_vh + dims[None, :]
        k = tl.load(k_ptr + k_offs, mask=kv_mask, other=0.0)  # [BLOCK_N, D]
        v = tl.load(v_ptr + v_offs, mask=kv_mask, other=0.0)  # [BLOCK_N, D]

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2  # [BLOCK_M, BLOCK_N]
        visible = (keys[None, :] <= row_pos[:, None]) & key_valid[None, :]
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    if NUM_SPLITS == 1:
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        o_offs = (q_start + row_tok)[:, None] * stride_ot + row_head[:, None] * stride_oh + dims[None, :]
        tl.store(o_ptr + o_offs, out.to(o_ptr.dtype.element_ty), mask=io_mask)
    else:
        # partials are contiguous [T, Hq, SPLITS, D] / [T, Hq, SPLITS, 2]
        num_q_heads = tl.num_programs(1) * GROUP
        part_row = ((q_start + row_tok) * num_q_heads + row_head) * NUM_SPLITS + split
        tl.store(part_o_ptr + part_row[:, None] * HEAD_DIM_PAD + dims[None, :], acc, mask=row_valid[:, None])
        tl.store(part_ml_ptr + part_row * 2, m_i, mask=row_valid)
        tl.store(part_ml_ptr + part_row * 2 + 1, l_i, mask=row_valid)


@triton.jit
def _merge_splits_kernel(
    o_ptr,
    part_o_ptr,
    part_ml_ptr,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    token = tl.program_id(0)
    head = tl.program_id(1)
    part_row = (token * tl.num_programs(1) + head) * NUM_SPLITS + tl.arange(0, SPLITS_PAD)
    split_valid = tl.arange(0, SPLITS_PAD) < NUM_SPLITS
    dims = tl.arange(0, HEAD_DIM_PAD)
    m = tl.load(part_ml_ptr + part_row * 2, mask=split_valid, other=float("-inf"))
    row_sum = tl.load(part_ml_ptr + part_row * 2 + 1, mask=split_valid, other=0.0)
    acc = tl.load(part_o_ptr + part_row[:, None] * HEAD_DIM_PAD + dims[None, :], mask=split_valid[:, None], other=0.0)
    w = tl.exp2(m - tl.max(m, axis=0))  # [SPLITS_PAD]
    denom = tl.sum(w * row_sum, axis=0)
    denom = tl.where(denom == 0.0, 1.0, denom)
    out = tl.sum(acc * w[:, None], axis=0) / denom  # [HEAD_DIM_PAD]
    tl.store(o_ptr + token * stride_ot + head * stride_oh + dims, out.to(o_ptr.dtype.element_ty), mask=dims < HEAD_DIM)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


MAX_KV_SPLITS = 64
KV_SPLIT_CHOICES = tuple(1 << i for i in range(MAX_KV_SPLITS.bit_length()))  # 1, 2, 4, ..., 64


def _choose_kv_splits(device: torch.device, programs: int, max_kv_tiles: int) -> int:
    """Split the keys only when the grid would leave most SMs idle.

    Always a power of two: NUM_SPLITS is a compile-time constant, so each value is a kernel
    of its own, and any count from 1 to 64 would compile new kernels (about a second each)
    while serving, whenever a batch shape first needs one. ``warm_up`` compiles all seven.
    """
    if device.type != "cuda":
        return 1
    sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device())
    if programs >= sms:
        return 1
    splits = max(1, min(triton.cdiv(2 * sms, programs), max_kv_tiles, MAX_KV_SPLITS))
    return 1 << (splits.bit_length() - 1)  # round down


def warm_up(device: torch.device, dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int) -> None:
    """Compile every kernel variant a serving engine can launch (decode, mixed and prefill layouts, each
    split count) on a tiny batch, so that no request waits for the compiler."""
    num_blocks = 2 * MAX_KV_SPLITS
    k_cache = torch.zeros(num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype, device=device)
    v_cache = torch.zeros_like(k_cache)
    seq_len = num_blocks * block_size
    for q_len, max_q_len in ((1, 1), (1, None), (2, 2)):  # decode launch, decode-like mixed launch, prefill tiles
        q = torch.zeros(q_len, num_heads, head_dim, dtype=dtype, device=device)
        cu = torch.tensor([0, q_len], dtype=torch.int32, device=device)
        lens = torch.tensor([seq_len], dtype=torch.int32, device=device)
        table = torch.arange(num_blocks, dtype=torch.int32, device=device)[None]
        for splits in KV_SPLIT_CHOICES:
            paged_attention_triton(q, k_cache, v_cache, cu, lens, table, 1.0, max_q_len, kv_splits=splits)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paged_attention_triton(
    q: torch.Tensor,  # [T, Hq, D], sequences packed one after another
    k_cache: torch.Tensor,  # [N, B, Hkv, D]
    v_cache: torch.Tensor,  # [N, B, Hkv, D]
    cu_seqlens_q: torch.Tensor,  # [S+1] int32
    seq_lens: torch.Tensor,  # [S] int32, KV length including the new tokens
    block_tables: torch.Tensor,  # [S, max_blocks] int32
    scale: float,
    max_q_len: int | None = None,
    *,
    kv_splits: int | None = None,
    out: torch.Tensor | None = None,  # [T, Hq, D], contiguous; e.g. a CUDA-graph static buffer
    tiles: dict[str, int] | None = None,
) -> torch.Tensor:  # [T, Hq, D]
    """Causal paged attention over a mixed prefill/decode batch in one launch.

    ``max_q_len`` is a hint that never costs a sync: ``1`` selects the decode
    layout (one program per sequence and KV head, CUDA-graph safe); None guesses
    decode when every sequence could have one query (T == S). ``kv_splits``
    overrides the split-KV heuristic (tests); ``out`` receives the result; ``tiles``
    overrides the launch shape (keys of ``BLOCK_M``, ``BLOCK_N``, ``num_warps``,
    ``num_stages``; bench/attention_bench.py --sweep).
    """
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    num_seqs = seq_lens.shape[0]
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"query heads ({num_heads}) must be a multiple of KV heads ({num_kv_heads})")
    if block_size & (block_size - 1):
        raise ValueError(f"cache block size must be a power of two, got {block_size}")
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache need a contiguous head_dim")
    if out is None:
        out = torch.empty(num_tokens, num_heads, head_dim, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype} with a contiguous head_dim")
    if num_tokens == 0 or num_seqs == 0:
        return out

    group = num_heads // num_kv_heads
    on_gpu = q.is_cuda
    decode_only = max_q_len == 1
    decode_like = decode_only or (max_q_len is None and num_tokens == num_seqs)
    if decode_like:
        block_q = 1
        block_m = max(16, triton.next_power_of_2(group))
        block_n = 64 if on_gpu else 16
        num_warps, num_stages = 4, 2  # H200 sweep (attention_bench --sweep): 2 stages 9% faster at B=128
    else:
        # H200 sweep (attention_bench --sweep --only prefill): 256 x 64 tiles with 16 warps, 2 stages
        # beat 128 x 64 / 8 warps / 3 stages by 16-22% on 4k and 8k causal prompts
        block_m = 256 if on_gpu and head_dim <= 128 else 128 if on_gpu else 16
        block_m = max(block_m, triton.next_power_of_2(group))
        block_q = max(1, block_m // group)
        block_n = 64 if on_gpu else 16
        num_warps, num_stages = (16, 2) if on_gpu and block_m >= 256 else (8, 3) if on_gpu else (4, 1)
    if tiles:
        block_m = tiles.get("BLOCK_M", block_m)
        block_q = 1 if decode_like else max(1, block_m // group)
        block_n = tiles.get("BLOCK_N", block_n)
        num_warps, num_stages = tiles.get("num_warps", num_warps), tiles.get("num_stages", num_stages)
    head_dim_pad = max(16, triton.next_power_of_2(head_dim))

    num_tiles = num_seqs if decode_only else num_tokens // block_q + num_seqs
    max_kv_tiles = triton.cdiv(block_tables.shape[1] * block_size, block_n)
    splits = kv_splits or _choose_kv_splits(q.device, num_tiles * num_kv_heads, max_kv_tiles)

    if splits > 1:
        part_o = torch.empty(num_tokens, num_heads, splits, head_dim_pad, dtype=torch.float32, device=q.device)
        part_ml = torch.empty(num_tokens, num_heads, splits, 2, dtype=torch.float32, device=q.device)
    else:
        part_o = part_ml = out  # unused by the kernel
    dot_precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _paged_attention_kernel[(num_tiles, num_kv_heads, splits)](
        q,
        k_cache,
        v_cache,
        out,
        part_o,
        part_ml,
        cu_seqlens_q,
        seq_lens,
        block_tables,
        scale * _LOG2E,
        num_seqs,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        block_tables.stride(0),
        HEAD_DIM=head_dim,
        HEAD_DIM_PAD=head_dim_pad,
        BLOCK_SIZE=block_size,
        GROUP=group,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        NUM_SPLITS=splits,
        DECODE_ONLY=decode_only,
        DOT_PRECISION=dot_precision,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if splits > 1:
        _merge_splits_kernel[(num_tokens, num_heads)](
            out,
            part_o,
            part_ml,
            out.stride(0),
            out.stride(1),
            HEAD_DIM=head_dim,
            HEAD_DIM_PAD=head_dim_pad,
            NUM_SPLITS=splits,
            SPLITS_PAD=triton.next_power_of_2(splits),
            num_warps=4,
        )
    return out


__all__ = ["paged_attention_triton"]
