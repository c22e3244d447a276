"""Fused softmax attention over packed sequences, FlashAttention-2 style, with dropout inside.

Tokens of all sequences are packed along one axis (``cu_seqlens`` marks where each sequence starts),
so no padding is ever computed. q, k and v are read by strides straight out of the fused QKV
projection output ``(total_tokens, 3, heads, head_dim)``; the output ``(total_tokens, heads,
head_dim)`` is ready for the output projection. No ``L x L`` tensor is ever stored: the forward keeps
an fp32 online softmax (the scale folded into ``exp2``) and saves only the log-sum-exp per row.

Dropout on the probabilities uses counter-based random numbers (:func:`.dropout.keep_tile`): the bit of
element ``(head, query position i, key position j)`` of a sequence is a function of the seed tensor
and those indices only, one Philox call serving the four elements ``{i, i + 8} x {j, j + 8}``. Any
kernel can regenerate any element's mask bit, so the backward passes reuse the forward's mask without
storing it, and the mask does not depend on block sizes.

Backward is three kernels with no atomics (bitwise deterministic): ``delta = rowsum(dO * O)``, then
dK/dV per key block (looping over queries), then dQ per query block (looping over keys). Where every
sequence fits one key tile (``max_seqlen <= 128``, less for wide heads and fp32: the largest key block
with a spill-free tile, :data:`_TILES` "short") one kernel does all three, one program per (sequence,
head), computing each element of S, P and the dropout mask once instead of twice.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastbert.ops import interpreting, torch_fallback
from fastbert.routing import TENSOR_CORE_CAPABILITY
from fastbert.validation import check_attention_inputs

from . import dropout
from .launch import (TunedKernel, device_arch, device_smem_limit, dot, fitting, input_precision, on_input_device,
                     smem_limit, upcast)

LOG2E = tl.constexpr(1.4426950408889634)  # a constexpr: jit functions may read it
MAX_HEAD_DIM = 128
SINGLE_TILE_MAX_SEQLEN = 128
SHORT_BWD_MAX_SEQLEN = 128  # the one-program backward (_attention_bwd_short) up to here, three kernels above
MIN_MMA_ROWS = {90: 64}  # wgmma takes a warpgroup's 64 rows: smaller tiles fall back to mma.sync
PREPROCESS_WARPS = 8  # fp16 at head dim 64 spills with 4 on sm_80 under triton 3.6
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ============================================================================= shared device helpers
@triton.constexpr_function
def _per_element_keep(input_precision, block_d):
    """The backward kernels draw dropout bits one Philox call per element (:func:`.dropout.keep_tile`)
    for exact fp32 products at head-dim blocks of 128: their FMA tiles hold no whole group in a thread
    anyway, and the grouped form makes ptxas spill there."""
    return input_precision == "ieee" and block_d > 64


@triton.jit
def _load_rows(base, rows, valid, stride_t, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """A ``[len(rows), BLOCK_D]`` tile (zeros where invalid); ``base`` already points at the sequence's
    first token, so the per-element offsets stay 32-bit."""
    ptrs = base + rows[:, None] * stride_t + offs_d[None, :]
    if HEAD_DIM == BLOCK_D:
        return tl.load(ptrs, mask=valid[:, None], other=0.0)
    return tl.load(ptrs, mask=valid[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)


@triton.jit
def _store_rows(base, tile, rows, valid, stride_t, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    ptrs = base + rows[:, None] * stride_t + offs_d[None, :]
    if HEAD_DIM == BLOCK_D:
        tl.store(ptrs, tile.to(base.dtype.element_ty), mask=valid[:, None])
    else:
        tl.store(ptrs, tile.to(base.dtype.element_ty), mask=valid[:, None] & (offs_d < HEAD_DIM)[None, :])


@triton.jit
def _seq_ptrs(Q, K, V, start, head, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh):
    """Pointers to the first token of the sequence at ``start`` in head ``head`` (64-bit, once)."""
    first = start.to(tl.int64)
    return (Q + first * stride_qt + head * stride_qh, K + first * stride_kt + head * stride_kh,
            V + first * stride_vt + head * stride_vh)


# ============================================================================= forward
# The token count and the length bucket (a tuning key only) are not specialized: one binary for any batch.
@triton.jit(do_not_specialize=["total_tokens", "max_seqlen_bucket"])
def _attention_fwd(
    Q, K, V, Out, Lse, CuSeqlens, Seed,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    total_tokens, max_seqlen_bucket, sm_scale, dropout_p,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SINGLE_TILE: tl.constexpr, HAS_DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One program: BLOCK_M queries of one (sequence, head). Grid ``(batch, cdiv(max_seqlen, BLOCK_M), heads)``."""
    seq, block_m, head = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(CuSeqlens + seq)
    seqlen = tl.load(CuSeqlens + seq + 1) - start
    if block_m * BLOCK_M >= seqlen:
        return
    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < seqlen
    q_seq, k_seq, v_seq = _seq_ptrs(Q, K, V, start, head, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh)
    out_seq = Out + start.to(tl.int64) * stride_ot + head * stride_oh
    qk_scale = sm_scale * LOG2E  # scores in log2 units: exp(x * scale) == exp2(x * qk_scale)
    q = _load_rows(q_seq, offs_m, m_valid, stride_qt, offs_d, HEAD_DIM, BLOCK_D)
    if HAS_DROPOUT:
        key, t_hi = dropout.seed_key(Seed), dropout.threshold(dropout_p)
        row_base = head * total_tokens + start
        zero = dropout.runtime_zero(dropout_p)

    if SINGLE_TILE:  # the whole sequence fits one key tile: a plain softmax, no rescaling
        n_valid = offs_n < seqlen
        k = _load_rows(k_seq, offs_n, n_valid, stride_kt, offs_d, HEAD_DIM, BLOCK_D)
        v = _load_rows(v_seq, offs_n, n_valid, stride_vt, offs_d, HEAD_DIM, BLOCK_D)
        s = dot(q, tl.trans(k), INPUT_PRECISION, UPCAST) * qk_scale
        s = tl.where(n_valid[None, :], s, float("-inf"))
        m_i = tl.max(s, 1)
        p = tl.math.exp2(s - m_i[:, None])
        l_i = tl.sum(p, 1)
        if HAS_DROPOUT:
            keep = dropout.keep_tile(key, t_hi, row_base, block_m * BLOCK_M, 0, BLOCK_M, BLOCK_N, True)
            p = tl.where(keep, p, zero)
        acc = dot(p.to(v.dtype), v, INPUT_PRECISION, UPCAST)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start_n in range(0, seqlen, BLOCK_N):
            keys = start_n + offs_n
            n_valid = keys < seqlen
            k = _load_rows(k_seq, keys, n_valid, stride_kt, offs_d, HEAD_DIM, BLOCK_D)
            v = _load_rows(v_seq, keys, n_valid, stride_vt, offs_d, HEAD_DIM, BLOCK_D)
            s = dot(q, tl.trans(k), INPUT_PRECISION, UPCAST) * qk_scale
            s = tl.where(n_valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            if HAS_DROPOUT:
                keep = dropout.keep_tile(key, t_hi, row_base, block_m * BLOCK_M, start_n, BLOCK_M, BLOCK_N, True)
                p = tl.where(keep, p, zero)
            acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, INPUT_PRECISION, UPCAST)
            m_i = m_new

    out_scale = 1.0 / l_i
    if HAS_DROPOUT:
        out_scale = out_scale / (1.0 - dropout_p)
    _store_rows(out_seq, acc * out_scale[:, None], offs_m, m_valid, stride_ot, offs_d, HEAD_DIM, BLOCK_D)
    lse = (m_i + tl.math.log2(l_i)) / LOG2E  # natural-log log-sum-exp of the scaled scores
    tl.store(Lse + head * total_tokens + start + offs_m, lse, mask=m_valid)


# ============================================================================= backward
@triton.jit(do_not_specialize=["total_tokens"])
def _attention_bwd_preprocess(
    Out, DOut, Delta, stride_ot, stride_oh, total_tokens,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """``delta[head, t] = sum_d dO[t, head, d] * O[t, head, d]`` in fp32. Grid ``(cdiv(T, BLOCK_T), heads)``."""
    block_t, head = tl.program_id(0), tl.program_id(1)
    rows = tl.arange(0, BLOCK_T)
    tokens = block_t * BLOCK_T + rows
    offs_d = tl.arange(0, BLOCK_D)
    t_valid = tokens < total_tokens
    first = (block_t * BLOCK_T).to(tl.int64) * stride_ot + head * stride_oh
    o = _load_rows(Out + first, rows, t_valid, stride_ot, offs_d, HEAD_DIM, BLOCK_D)
    do = _load_rows(DOut + first, rows, t_valid, stride_ot, offs_d, HEAD_DIM, BLOCK_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + head * total_tokens + tokens, delta, mask=t_valid)


@triton.jit(do_not_specialize=["total_tokens", "max_seqlen_bucket"])
def _attention_bwd_dkdv(
    Q, K, V, DOut, Lse, Delta, DK, DV, CuSeqlens, Seed,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_gt, stride_gh,
    total_tokens, max_seqlen_bucket, sm_scale, dropout_p,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """dK, dV of BLOCK_N keys of one (sequence, head), looping over all its queries.

    Works on transposed tiles (keys x queries): ``dV = P^T dO``, ``dK = scale * dS^T Q`` with
    ``dS = P * (dP - delta)`` and ``dP = dO V^T``. Grid ``(batch, cdiv(max_seqlen, BLOCK_N), heads)``.
    """
    seq, block_n, head = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(CuSeqlens + seq)
    seqlen = tl.load(CuSeqlens + seq + 1) - start
    if block_n * BLOCK_N >= seqlen:
        return
    keys = block_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_valid = keys < seqlen
    q_seq, k_seq, v_seq = _seq_ptrs(Q, K, V, start, head, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh)
    dout_seq = DOut + start.to(tl.int64) * stride_ot + head * stride_oh
    dk_seq = DK + start.to(tl.int64) * stride_gt + head * stride_gh
    dv_seq = DV + start.to(tl.int64) * stride_gt + head * stride_gh
    qk_scale = sm_scale * LOG2E
    k = _load_rows(k_seq, keys, n_valid, stride_kt, offs_d, HEAD_DIM, BLOCK_D)
    v = _load_rows(v_seq, keys, n_valid, stride_vt, offs_d, HEAD_DIM, BLOCK_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if HAS_DROPOUT:
        key, t_hi = dropout.seed_key(Seed), dropout.threshold(dropout_p)
        row_base = head * total_tokens + start
        drop_scale, zero = 1.0 / (1.0 - dropout_p), dropout.runtime_zero(dropout_p)
    for start_m in range(0, seqlen, BLOCK_M):
        queries = start_m + offs_m
        m_valid = queries < seqlen
        q = _load_rows(q_seq, queries, m_valid, stride_qt, offs_d, HEAD_DIM, BLOCK_D)
        do = _load_rows(dout_seq, queries, m_valid, stride_ot, offs_d, HEAD_DIM, BLOCK_D)
        lse = tl.load(Lse + head * total_tokens + start + queries, mask=m_valid, other=0.0)
        delta = tl.load(Delta + head * total_tokens + start + queries, mask=m_valid, other=0.0)
        s_t = dot(k, tl.trans(q), INPUT_PRECISION, UPCAST) * qk_scale
        p_t = tl.math.exp2(s_t - lse[None, :] * LOG2E)
        p_t = tl.where(m_valid[None, :], p_t, 0.0)
        dp_t = dot(v, tl.trans(do), INPUT_PRECISION, UPCAST)
        if HAS_DROPOUT:
            keep_t = dropout.keep_tile(key, t_hi, row_base, start_m, block_n * BLOCK_N, BLOCK_M, BLOCK_N, False,
                                       PER_ELEMENT=_per_element_keep(INPUT_PRECISION, BLOCK_D))
            kept_scale_t = tl.where(keep_t, drop_scale, zero)  # one select for both products
            p_dropped_t = p_t * kept_scale_t
            dp_t = dp_t * kept_scale_t
        else:
            p_dropped_t = p_t
        dv += dot(p_dropped_t.to(do.dtype), do, INPUT_PRECISION, UPCAST)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += dot(ds_t.to(q.dtype), q, INPUT_PRECISION, UPCAST)
    _store_rows(dk_seq, dk * sm_scale, keys, n_valid, stride_gt, offs_d, HEAD_DIM, BLOCK_D)
    _store_rows(dv_seq, dv, keys, n_valid, stride_gt, offs_d, HEAD_DIM, BLOCK_D)


@triton.jit(do_not_specialize=["total_tokens", "max_seqlen_bucket"])
def _attention_bwd_dq(
    Q, K, V, DOut, Lse, Delta, DQ, CuSeqlens, Seed,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_gt, stride_gh,
    total_tokens, max_seqlen_bucket, sm_scale, dropout_p,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """dQ of BLOCK_M queries of one (sequence, head), looping over all its keys:
    ``dQ = scale * dS K``. Grid ``(batch, cdiv(max_seqlen, BLOCK_M), heads)``."""
    seq, block_m, head = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(CuSeqlens + seq)
    seqlen = tl.load(CuSeqlens + seq + 1) - start
    if block_m * BLOCK_M >= seqlen:
        return
    queries = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = queries < seqlen
    q_seq, k_seq, v_seq = _seq_ptrs(Q, K, V, start, head, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh)
    dout_seq = DOut + start.to(tl.int64) * stride_ot + head * stride_oh
    dq_seq = DQ + start.to(tl.int64) * stride_gt + head * stride_gh
    qk_scale = sm_scale * LOG2E
    q = _load_rows(q_seq, queries, m_valid, stride_qt, offs_d, HEAD_DIM, BLOCK_D)
    do = _load_rows(dout_seq, queries, m_valid, stride_ot, offs_d, HEAD_DIM, BLOCK_D)
    lse = tl.load(Lse + head * total_tokens + start + queries, mask=m_valid, other=0.0)
    delta = tl.load(Delta + head * total_tokens + start + queries, mask=m_valid, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if HAS_DROPOUT:
        key, t_hi = dropout.seed_key(Seed), dropout.threshold(dropout_p)
        row_base = head * total_tokens + start
        drop_scale, zero = 1.0 / (1.0 - dropout_p), dropout.runtime_zero(dropout_p)
    for start_n in range(0, seqlen, BLOCK_N):
        keys = start_n + offs_n
        n_valid = keys < seqlen
        k = _load_rows(k_seq, keys, n_valid, stride_kt, offs_d, HEAD_DIM, BLOCK_D)
        v = _load_rows(v_seq, keys, n_valid, stride_vt, offs_d, HEAD_DIM, BLOCK_D)
        s = dot(q, tl.trans(k), INPUT_PRECISION, UPCAST) * qk_scale
        p = tl.math.exp2(s - lse[:, None] * LOG2E)
        p = tl.where(n_valid[None, :], p, 0.0)
        dp = dot(do, tl.trans(v), INPUT_PRECISION, UPCAST)
        if HAS_DROPOUT:
            keep = dropout.keep_tile(key, t_hi, row_base, block_m * BLOCK_M, start_n, BLOCK_M, BLOCK_N, True,
                                     PER_ELEMENT=_per_element_keep(INPUT_PRECISION, BLOCK_D))
            dp = dp * tl.where(keep, drop_scale, zero)
        ds = p * (dp - delta[:, None])
        dq += dot(ds.to(k.dtype), k, INPUT_PRECISION, UPCAST)
    _store_rows(dq_seq, dq * sm_scale, queries, m_valid, stride_gt, offs_d, HEAD_DIM, BLOCK_D)


@triton.constexpr_function
def _query_rows(block_m, block_n):
    """Query rows per step of :func:`_attention_bwd_short`: its tile's ``BLOCK_M``, at most the key block."""
    return min(block_m, block_n)


@triton.constexpr_function
def _transposed_dq(rows, block_d, bits):
    """Whether :func:`_attention_bwd_short` computes ``dQ^T = K^T dS^T``: for 16-bit heads of at most 64
    with steps under 64 rows, where ``dS K``'s few rows leave mma.sync warps computing the same tile over
    (about 25% fewer loop instructions at head dim 64 on sm_80); elsewhere the transposed form spills."""
    return rows < 64 and block_d <= 64 and bits == 16


@triton.jit(do_not_specialize=["total_tokens", "max_seqlen_bucket"])
def _attention_bwd_short(
    Q, K, V, Out, DOut, Lse, DQ, DK, DV, CuSeqlens, Seed,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_gt, stride_gh,
    total_tokens, max_seqlen_bucket, sm_scale, dropout_p,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """dQ, dK and dV of one (sequence, head) whose keys all fit one ``BLOCK_N`` tile (``seqlen <= BLOCK_N``),
    in one program: the preprocess, dK/dV and dQ kernels in one, each element of S, P and the keep mask
    computed once. Grid ``(batch, heads)``.

    The key tile (K, V; dK, dV accumulated in fp32) stays resident while the queries go by in steps of
    ``min(BLOCK_M, BLOCK_N)`` rows (one step where BLOCK_M >= BLOCK_N). Each step computes ``delta =
    rowsum(dO * O)`` of its queries, then on transposed tiles (keys x queries), as
    :func:`_attention_bwd_dkdv`, ``dV += P^T dO``, ``dK += dS^T Q``; a step holds every key of its
    queries, so it writes their ``dQ = scale * dS K`` complete. Every gradient row is written once, by one
    program: no atomics.
    """
    ROWS: tl.constexpr = _query_rows(BLOCK_M, BLOCK_N)
    TRANSPOSED_DQ: tl.constexpr = _transposed_dq(ROWS, BLOCK_D, Q.dtype.element_ty.primitive_bitwidth)
    seq, head = tl.program_id(0), tl.program_id(1)
    start = tl.load(CuSeqlens + seq)
    seqlen = tl.load(CuSeqlens + seq + 1) - start
    keys = tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, ROWS)
    offs_d = tl.arange(0, BLOCK_D)
    n_valid = keys < seqlen
    q_seq, k_seq, v_seq = _seq_ptrs(Q, K, V, start, head, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh)
    first_o = start.to(tl.int64) * stride_ot + head * stride_oh
    out_seq, dout_seq = Out + first_o, DOut + first_o
    first_g = start.to(tl.int64) * stride_gt + head * stride_gh
    dq_seq, dk_seq, dv_seq = DQ + first_g, DK + first_g, DV + first_g
    qk_scale = sm_scale * LOG2E
    k = _load_rows(k_seq, keys, n_valid, stride_kt, offs_d, HEAD_DIM, BLOCK_D)
    v = _load_rows(v_seq, keys, n_valid, stride_vt, offs_d, HEAD_DIM, BLOCK_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if HAS_DROPOUT:
        key, t_hi = dropout.seed_key(Seed), dropout.threshold(dropout_p)
        row_base = head * total_tokens + start
        drop_scale, zero = 1.0 / (1.0 - dropout_p), dropout.runtime_zero(dropout_p)
    for start_m in range(0, seqlen, ROWS):
        queries = start_m + offs_m
        m_valid = queries < seqlen
        q = _load_rows(q_seq, queries, m_valid, stride_qt, offs_d, HEAD_DIM, BLOCK_D)
        do = _load_rows(dout_seq, queries, m_valid, stride_ot, offs_d, HEAD_DIM, BLOCK_D)
        o = _load_rows(out_seq, queries, m_valid, stride_ot, offs_d, HEAD_DIM, BLOCK_D)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        lse = tl.load(Lse + head * total_tokens + start + queries, mask=m_valid, other=0.0)
        s_t = dot(k, tl.trans(q), INPUT_PRECISION, UPCAST) * qk_scale
        # Padded keys (zero rows of k) would get exp(-lse); padded queries (zero q, dO, O, lse) contribute
        # nothing to dK, dV and their dQ is not stored.
        p_t = tl.where(n_valid[:, None], tl.math.exp2(s_t - lse[None, :] * LOG2E), 0.0)
        dp_t = dot(v, tl.trans(do), INPUT_PRECISION, UPCAST)
        if HAS_DROPOUT:
            keep_t = dropout.keep_tile(key, t_hi, row_base, start_m, 0, ROWS, BLOCK_N, False,
                                       PER_ELEMENT=_per_element_keep(INPUT_PRECISION, BLOCK_D))
            kept_scale_t = tl.where(keep_t, drop_scale, zero)
            p_dropped_t = p_t * kept_scale_t
            dp_t = dp_t * kept_scale_t
        else:
            p_dropped_t = p_t
        dv += dot(p_dropped_t.to(do.dtype), do, INPUT_PRECISION, UPCAST)
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
        dk += dot(ds_t, q, INPUT_PRECISION, UPCAST)
        if TRANSPOSED_DQ:
            dq = tl.trans(dot(tl.trans(k), ds_t, INPUT_PRECISION, UPCAST))
        else:
            dq = dot(tl.trans(ds_t), k, INPUT_PRECISION, UPCAST)
        _store_rows(dq_seq, dq * sm_scale, queries, m_valid, stride_gt, offs_d, HEAD_DIM, BLOCK_D)
    _store_rows(dk_seq, dk * sm_scale, keys, n_valid, stride_gt, offs_d, HEAD_DIM, BLOCK_D)
    _store_rows(dv_seq, dv, keys, n_valid, stride_gt, offs_d, HEAD_DIM, BLOCK_D)


@triton.jit(do_not_specialize=["total_tokens"])
def _attention_dropout_mask(
    Keep, CuSeqlens, Seed, total_tokens, dropout_p, max_seqlen,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Debug: writes the kernels' keep bits into ``Keep (heads, total_tokens, max_seqlen)`` (key position
    ``j`` of query token ``i``). Grid ``(batch, cdiv(max_seqlen, BLOCK_M), heads)``."""
    seq, block_m, head = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(CuSeqlens + seq)
    seqlen = tl.load(CuSeqlens + seq + 1) - start
    key, t_hi = dropout.seed_key(Seed), dropout.threshold(dropout_p)
    row_base = head * total_tokens + start
    queries = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    for start_n in range(0, seqlen, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        keep = dropout.keep_tile(key, t_hi, row_base, block_m * BLOCK_M, start_n, BLOCK_M, BLOCK_N, True)
        ptrs = Keep + (head * total_tokens + start + queries).to(tl.int64)[:, None] * max_seqlen + keys[None, :]
        tl.store(ptrs, keep.to(tl.int8), mask=(queries[:, None] < seqlen) & (keys[None, :] < seqlen))


# ============================================================================= launch configuration
def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _seqlen_bucket(max_seqlen: int) -> int:
    return max(16, triton.next_power_of_2(max_seqlen))


# Tiles (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel, keyed by (wide: BLOCK_D > 64, operands:
# "16bit", "tf32" or "ieee" fp32). Every entry compiles without register spills on sm_80 and sm_90
# (``fastbert check-kernels`` proves it); the first one is the default (interpreter, deterministic mode).
# "single" tiles take BLOCK_N from the sequence-length bucket (<= 128); exact fp32 with wide heads has
# none (it spills), so it takes the tiled kernel at every length. "short" tiles (the one-program backward)
# are (query rows per step, the largest key block it is proven at, warps, stages): the key block is the
# bucket (at least MIN_MMA_ROWS), and a bucket no tile is proven at takes the three-kernel backward.
_TILES = {
    "fwd": {
        (False, "16bit"): [(64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 2), (128, 32, 8, 2), (64, 64, 8, 2)],
        (True, "16bit"): [(64, 64, 4, 2), (64, 32, 4, 2), (64, 64, 8, 2)],
        (False, "tf32"): [(64, 32, 4, 2), (128, 32, 8, 2), (64, 64, 4, 2)],
        (True, "tf32"): [(128, 32, 8, 2), (64, 32, 4, 2), (64, 32, 8, 2)],
        (False, "ieee"): [(32, 32, 4, 2), (16, 32, 4, 2)],
        (True, "ieee"): [(32, 16, 8, 2), (16, 32, 8, 2), (16, 16, 4, 2)],
    },
    "single": {
        (False, "16bit"): [(64, 0, 8, 1), (32, 0, 4, 1), (32, 0, 8, 1)],
        (True, "16bit"): [(64, 0, 8, 1), (32, 0, 4, 1)],
        (False, "tf32"): [(32, 0, 4, 1), (32, 0, 8, 1)],
        (True, "tf32"): [(64, 0, 8, 1), (32, 0, 8, 1)],
        (False, "ieee"): [(16, 0, 8, 1), (16, 0, 4, 1)],
        (True, "ieee"): [],
    },
    "dkdv": {
        (False, "16bit"): [(32, 64, 4, 2), (32, 128, 8, 2), (32, 32, 4, 2)],
        (True, "16bit"): [(32, 32, 8, 2), (16, 64, 4, 2), (16, 32, 4, 2)],
        (False, "tf32"): [(32, 32, 8, 2), (16, 64, 4, 2), (16, 32, 4, 2)],
        (True, "tf32"): [(32, 32, 4, 2), (32, 32, 8, 2)],
        (False, "ieee"): [(16, 32, 4, 2), (16, 16, 4, 2)],
        (True, "ieee"): [(16, 16, 8, 2), (16, 16, 4, 1)],
    },
    "dq": {
        (False, "16bit"): [(64, 64, 4, 2), (32, 64, 4, 2), (64, 32, 4, 2), (32, 128, 8, 2)],
        (True, "16bit"): [(32, 64, 8, 2), (32, 32, 4, 2)],
        (False, "tf32"): [(32, 64, 4, 2), (64, 32, 4, 2)],
        (True, "tf32"): [(32, 32, 4, 2)],
        (False, "ieee"): [(32, 32, 4, 2), (16, 32, 4, 2)],
        (True, "ieee"): [(16, 32, 4, 2), (16, 32, 8, 2)],
    },
    "short": {
        (False, "16bit"): [(64, 128, 8, 1), (32, 128, 8, 1), (16, 128, 8, 1)],
        (True, "16bit"): [(32, 64, 8, 1), (16, 64, 8, 1)],
        (False, "tf32"): [(64, 128, 8, 1), (32, 128, 8, 1), (16, 128, 8, 1), (32, 64, 8, 1)],
        (True, "tf32"): [],
        (False, "ieee"): [(16, 128, 8, 1), (16, 64, 8, 1)],
        (True, "ieee"): [],
    },
}


def _config(tile, kind: str = "") -> triton.Config:
    block_m, block_n, warps, stages = tile
    if kind == "short":
        block_n = 0  # the launcher's key block; the table's is the largest the tile is proven at
    kwargs = {"BLOCK_M": block_m} if block_n == 0 else {"BLOCK_M": block_m, "BLOCK_N": block_n}
    return triton.Config(kwargs, num_warps=warps, num_stages=stages)


def smem_bytes(kind: str, config: triton.Config, block_d: int, dtype: torch.dtype, block_n: int = 0) -> int:
    """Estimated shared memory of one block of kernel ``kind`` with ``config``: its operand tiles, the
    ones the key (or query) loop loads once per pipeline stage. ``block_n`` is the single-tile kernel's
    and the short backward's key block (the sequence-length bucket). ``fastbert check-kernels`` fails
    where a tile this lets through exceeds the arch's limit."""
    if kind == "short":  # K, V resident, K again where transposed (fp32: every operand is), Q, dO and O per
        n = block_n  # query step, and the dS tile transposed for dQ
        m = min(config.kwargs["BLOCK_M"], n)
        resident = 4 * n if dtype == torch.float32 else (3 if _transposed_dq(m, block_d, 16) else 2) * n
        return dtype.itemsize * (block_d * (resident + 3 * m * max(config.num_stages, 1)) + n * m)
    m, n = config.kwargs["BLOCK_M"], config.kwargs.get("BLOCK_N", block_n)
    per_stage, resident = (2 * m, 2 * n) if kind == "dkdv" else (2 * n, m if kind in ("fwd", "single") else 2 * m)
    return dtype.itemsize * block_d * (resident + per_stage * max(config.num_stages, 1))


# Tiles that spill under one Triton version (``fastbert check-kernels`` run under it), as (kind, BLOCK_D,
# operands, dropout (None: either), tile, archs (None: every arch)). Under a version not measured here,
# every tile that spilled under any measured one is left out. 3.6 was measured on sm_80 and sm_90; the
# other archs take 3.9's entries there too.
_NOT_SM90 = (80, 86, 89, 100, 120)
_SPILLS_39 = [
    ("dq", 32, "16bit", None, (32, 128, 8, 2), None),
    ("single", 64, "16bit", False, (32, 0, 4, 1), (86, 89)),
    ("fwd", 32, "16bit", True, (64, 32, 4, 2), (120,)),
    ("fwd", 128, "16bit", None, (64, 64, 4, 2), (120,)),
    ("fwd", 64, "tf32", True, (64, 64, 4, 2), (120,)),
    ("dkdv", 64, "tf32", None, (16, 64, 4, 2), (120,)),
    ("dq", 64, "tf32", True, (32, 64, 4, 2), (100,)),
    ("dkdv", 32, "ieee", False, (16, 32, 4, 2), (80,)),
    ("fwd", 64, "16bit", False, (64, 32, 4, 2), (100,)),
    # Since the dropout bits come four to a Philox call (the tiles added with them take over where a
    # kernel had no other): 4 to 36 B, at 255 registers or where ptxas holds fewer.
    ("fwd", 128, "16bit", True, (64, 64, 8, 2), (86, 89)),
    ("fwd", 64, "tf32", True, (128, 32, 8, 2), (86, 89)),
    ("fwd", 32, "tf32", True, (128, 32, 8, 2), (100,)),
    ("fwd", 128, "tf32", True, (64, 32, 4, 2), (120,)),
    ("dkdv", 128, "16bit", True, (16, 64, 4, 2), (120,)),
    ("dkdv", 128, "tf32", True, (32, 32, 4, 2), (90, 100, 120)),
    ("dq", 128, "ieee", True, (16, 32, 4, 2), (120,)),
    # The one-program backward, measured on sm_80 and sm_90; what spills on sm_80 is left out on every arch
    # but sm_90 (_NOT_SM90). On sm_90 only tiles of 64 rows run (MIN_MMA_ROWS): none at wide heads (64 rows
    # spill) nor for TF32 at BLOCK_D 64, which take the three kernels there.
    ("short", 64, "16bit", None, (64, 128, 8, 1), _NOT_SM90),
    ("short", 32, "tf32", True, (64, 128, 8, 1), _NOT_SM90),
    ("short", 64, "tf32", None, (64, 128, 8, 1), None),
    ("short", 64, "tf32", None, (32, 128, 8, 1), None),
    ("short", 64, "tf32", True, (16, 128, 8, 1), _NOT_SM90),
    ("short", 64, "ieee", None, (16, 128, 8, 1), (90,)),
]
_SPILLS_BY_TRITON = {
    (3, 6): _SPILLS_39 + [
        ("single", 32, "16bit", True, (64, 0, 8, 1), None),
        ("single", 32, "16bit", True, (32, 0, 4, 1), None),
        ("single", 32, "16bit", True, (32, 0, 8, 1), None),
        ("single", 64, "16bit", True, (64, 0, 8, 1), None),
        ("single", 128, "16bit", True, (64, 0, 8, 1), None),
        ("single", 64, "ieee", None, (16, 0, 4, 1), None),
        ("single", 128, "tf32", True, (64, 0, 8, 1), None),
        ("fwd", 64, "tf32", True, (64, 64, 4, 2), None),
        ("single", 32, "tf32", True, (32, 0, 4, 1), None),
        ("single", 32, "tf32", True, (32, 0, 8, 1), None),
        ("dkdv", 32, "tf32", True, (16, 32, 4, 2), None),
        ("fwd", 64, "tf32", True, (64, 32, 4, 2), (80,)),
    ],
    (3, 9): _SPILLS_39,
}


@functools.lru_cache(maxsize=None)
def _triton_version() -> tuple:
    return tuple(int(part) for part in triton.__version__.split(".")[:2])


def _spilling(kind: str, block_d: int, operands: str, dropout: Optional[bool], version: tuple,
              arch: Optional[int]) -> set:
    """The tiles of a table that spill under Triton ``version`` on ``arch`` (every arch when None), with
    dropout or without (either when None)."""
    measured = _SPILLS_BY_TRITON.get(version)
    entries = measured if measured is not None else [e for table in _SPILLS_BY_TRITON.values() for e in table]
    return {tile for k, d, o, drop, tile, archs in entries
            if (k, d, o) == (kind, block_d, operands) and (drop is None or dropout is None or drop == dropout)
            and (archs is None or arch is None or arch in archs)}


def tile_configs(kind: str, block_d: int, dtype: torch.dtype, precision: str, limit: Optional[int] = None,
                 block_n: int = SINGLE_TILE_MAX_SEQLEN, dropout: Optional[bool] = None,
                 arch: Optional[int] = None) -> tuple:
    """The launch configs of kernel ``kind`` ("fwd", "single", "dkdv", "dq") for a head-dim block, a
    dtype and ``tl.dot``'s input precision (which only matters for fp32), default first, less those
    that spill under the installed Triton on ``arch`` (any, when None) with ``dropout`` (either way
    when None); with ``limit`` (bytes of shared memory) only those that fit it (for "single", at key
    block ``block_n``)."""
    operands = precision if dtype == torch.float32 else "16bit"
    table = tuple(_TILES[kind][(block_d > 64, operands)])
    return _tile_configs(kind, block_d, dtype, operands, table, limit, block_n, dropout, _triton_version(), arch)


@functools.lru_cache(maxsize=4096)  # called on every launch: a few microseconds saved each time
def _tile_configs(kind, block_d, dtype, operands, table, limit, block_n, dropout, version, arch) -> tuple:
    tiles = _proven_tiles(kind, block_d, operands, table, dropout, version, arch)
    if kind == "short":
        tiles = [t for t in tiles if block_n <= t[1]]  # proven at this key block
    configs = _distinct(_config(t, kind) for t in tiles)
    return tuple(fitting(configs, lambda c: smem_bytes(kind, c, block_d, dtype, block_n), limit))


def _proven_tiles(kind, block_d, operands, table, dropout, version, arch) -> list:
    """The tiles of ``table`` that compile without spills; for the short backward on tensor cores, only those
    of the rows the arch's MMA takes (:data:`MIN_MMA_ROWS`)."""
    spilling = _spilling(kind, block_d, operands, dropout, version, arch)
    min_rows = MIN_MMA_ROWS.get(arch, 0) if kind == "short" and operands != "ieee" else 0
    return [t for t in table if t not in spilling and t[0] >= min_rows]


def _distinct(configs) -> list[triton.Config]:
    """``configs`` less repeats (short-backward tiles proven at several key blocks), in order."""
    kept = {}
    for config in configs:
        kept.setdefault(str(config), config)
    return list(kept.values())


def _all_configs(kind: str) -> list[triton.Config]:
    tiles = {t for table in _TILES[kind].values() for t in table}
    return _distinct(_config(t, kind) for t in sorted(tiles))


def _allowed(kind: str):
    """The tiles proven for a launch's head dim, dtype and precision that fit its device."""
    def allowed(named_args, meta):
        q = named_args["Q"]
        return tile_configs(kind, meta["BLOCK_D"], q.dtype, meta["INPUT_PRECISION"], device_smem_limit(q.device),
                            meta.get("BLOCK_N", SINGLE_TILE_MAX_SEQLEN), meta["HAS_DROPOUT"], device_arch(q.device))
    return allowed


# The key is bucketed (next power of two of max_seqlen): a new batch shape reuses the tuning.
_KEY = ("max_seqlen_bucket", "HEAD_DIM", "HAS_DROPOUT", "INPUT_PRECISION")
_KERNELS = {"fwd": _attention_fwd, "single": _attention_fwd, "dkdv": _attention_bwd_dkdv, "dq": _attention_bwd_dq,
            "short": _attention_bwd_short}
_TUNED = {kind: TunedKernel(kernel, _all_configs(kind), _KEY, _allowed(kind)) for kind, kernel in _KERNELS.items()}


def _launch(kind: str, grid_of, *args, **meta):
    """Runs kernel ``kind`` autotuned on a GPU; otherwise with its default tile (interpreter, deterministic
    mode, CUDA-graph capture)."""
    _TUNED[kind].launch(grid_of, *args, device=args[0].device, **meta)


# ============================================================================= input checks
def check_inputs(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, dropout_p: float,
                 seed: Optional[Tensor], check_values: bool = True) -> None:
    """:func:`fastbert.validation.check_attention_inputs` plus the kernels' own limits (head_dim <= 128,
    CUDA tensors or the interpreter); raises before any kernel runs."""
    check_attention_inputs(q, k, v, cu_seqlens, max_seqlen, dropout_p, seed, check_values, KERNEL_DTYPES)
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"attention: head_dim must be at most {MAX_HEAD_DIM}, got {q.shape[-1]}")
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(f"attention: the Triton kernels need CUDA tensors (got {q.device}); on the CPU set "
                         "TRITON_INTERPRET=1 before triton is imported")


# ============================================================================= launchers
def _short_key_block(max_seqlen: int, head_dim: int, dtype: torch.dtype, precision: str, dropout: bool,
                     device: torch.device) -> int:
    """The key block of :func:`_attention_bwd_short` for a batch whose sequences are at most ``max_seqlen``
    long: the length bucket, at least the MMA rows of the device's arch; 0 where the three-kernel
    backward runs instead (longer sequences, or no spill-free tile that fits the device)."""
    if max_seqlen > SHORT_BWD_MAX_SEQLEN:
        return 0
    arch = device_arch(device)
    block_n = max(_seqlen_bucket(max_seqlen), MIN_MMA_ROWS.get(arch, 16))
    tiles = tile_configs("short", _block_d(head_dim), dtype, precision, device_smem_limit(device), block_n, dropout,
                         arch)
    return block_n if tiles else 0


def _check_offsets_fit(max_seqlen: int, *tensors: Tensor) -> None:
    """Offsets inside one sequence are 32-bit (the sequence's base pointer is 64-bit)."""
    span = max_seqlen * max(t.stride(0) for t in tensors)
    if span >= 2**31:
        raise ValueError(f"attention: max_seqlen={max_seqlen} times the token stride "
                         f"{max(t.stride(0) for t in tensors)} exceeds 2**31 elements within one sequence")


def _check_dropout_counters(total: int, heads: int, dropout_p: float) -> None:
    """The dropout counters number the rows ``head * total + token`` in 32 bits (:mod:`.dropout`)."""
    if dropout_p > 0.0 and heads * total >= 2**32:
        raise ValueError(f"attention: dropout needs heads * total_tokens < 2**32, got {heads} * {total}")


def _strides(t: Tensor) -> tuple[int, int]:
    return t.stride(0), t.stride(1)


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


@on_input_device
def attention_forward(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int,
                      dropout_p: float = 0.0, seed: Optional[Tensor] = None, out: Optional[Tensor] = None,
                      lse: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Launches the forward kernel (inputs already checked), into ``out``/``lse`` when given.

    Args:
        q, k, v: ``(total_tokens, heads, head_dim)``, any strides with a unit last stride (views of a
            packed QKV tensor are read in place).
        cu_seqlens: int32 ``(batch + 1,)``; max_seqlen: the longest sequence (an upper bound is fine).
    Returns:
        ``out`` ``(total_tokens, heads, head_dim)`` in q's dtype, ``lse`` fp32 ``(heads, total_tokens)``.
    """
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    total, heads, head_dim = q.shape
    _check_offsets_fit(max_seqlen, q, k, v)
    _check_dropout_counters(total, heads, dropout_p)
    if out is None:
        out = torch.empty(total, heads, head_dim, dtype=q.dtype, device=q.device)
    if lse is None:
        lse = torch.empty(heads, total, dtype=torch.float32, device=q.device)
    batch = cu_seqlens.numel() - 1
    if total == 0:
        return out, lse
    precision = input_precision(q.dtype, q.device)
    single = max_seqlen <= SINGLE_TILE_MAX_SEQLEN and bool(tile_configs(
        "single", _block_d(head_dim), q.dtype, precision, device_smem_limit(q.device), _seqlen_bucket(max_seqlen),
        dropout_p > 0.0, device_arch(q.device)))
    meta = dict(HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim), SINGLE_TILE=single, HAS_DROPOUT=dropout_p > 0.0,
                INPUT_PRECISION=precision, UPCAST=upcast(q.dtype))
    if single:
        meta["BLOCK_N"] = _seqlen_bucket(max_seqlen)
    grid = lambda m: (batch, triton.cdiv(max_seqlen, m["BLOCK_M"]), heads)  # noqa: E731
    args = (q, k, v, out, lse, cu_seqlens, seed if seed is not None else cu_seqlens,
            *_strides(q), *_strides(k), *_strides(v), *_strides(out),
            total, _seqlen_bucket(max_seqlen), head_dim ** -0.5, float(dropout_p))
    _launch("single" if single else "fwd", grid, *args, **meta)
    return out, lse


@on_input_device
def attention_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                       cu_seqlens: Tensor, max_seqlen: int, dropout_p: float, seed: Optional[Tensor],
                       dq: Tensor, dk: Tensor, dv: Tensor) -> None:
    """Launches the backward kernels, writing into ``dq``, ``dk``, ``dv`` ``(total_tokens, heads, head_dim)``
    views that share one pair of token/head strides (e.g. slices of one ``(T, 3, H, D)`` buffer)."""
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    dout, out = dout.contiguous(), out.contiguous()
    total, heads, head_dim = q.shape
    _check_offsets_fit(max_seqlen, q, k, v, dq)
    _check_dropout_counters(total, heads, dropout_p)
    if total == 0:
        return
    assert dq.stride() == dk.stride() == dv.stride() and dq.stride(-1) == 1
    batch = cu_seqlens.numel() - 1
    block_d = _block_d(head_dim)
    precision = input_precision(q.dtype, q.device)
    meta = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, HAS_DROPOUT=dropout_p > 0.0, INPUT_PRECISION=precision,
                UPCAST=upcast(q.dtype))
    seed_arg = seed if seed is not None else cu_seqlens
    short_block = _short_key_block(max_seqlen, head_dim, q.dtype, precision, dropout_p > 0.0, q.device)
    if short_block:
        _launch("short", lambda m: (batch, heads), q, k, v, out, dout, lse, dq, dk, dv, cu_seqlens, seed_arg,
                *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dq),
                total, _seqlen_bucket(max_seqlen), head_dim ** -0.5, float(dropout_p), BLOCK_N=short_block, **meta)
        return
    delta = torch.empty(heads, total, dtype=torch.float32, device=q.device)
    block_t = 64
    _attention_bwd_preprocess[(triton.cdiv(total, block_t), heads)](
        out, dout, delta, *_strides(out), total, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_T=block_t,
        num_warps=PREPROCESS_WARPS, num_stages=1)

    common = (*_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dq),
              total, _seqlen_bucket(max_seqlen), head_dim ** -0.5, float(dropout_p))
    _launch("dkdv", lambda m: (batch, triton.cdiv(max_seqlen, m["BLOCK_N"]), heads),
            q, k, v, dout, lse, delta, dk, dv, cu_seqlens, seed_arg, *common, **meta)
    _launch("dq", lambda m: (batch, triton.cdiv(max_seqlen, m["BLOCK_M"]), heads),
            q, k, v, dout, lse, delta, dq, cu_seqlens, seed_arg, *common, **meta)


@on_input_device
def dropout_mask(cu_seqlens: Tensor, heads: int, max_seqlen: int, dropout_p: float, seed: Tensor) -> Tensor:
    """Debug: the kernels' keep mask, bool ``(heads, total_tokens, max_seqlen)``; entry ``[h, i, j]`` is
    key position ``j`` of query token ``i``'s sequence (only ``j < len(sequence)`` is meaningful)."""
    total = int(cu_seqlens[-1])
    keep = torch.zeros(heads, total, max_seqlen, dtype=torch.int8, device=cu_seqlens.device)
    grid = (cu_seqlens.numel() - 1, triton.cdiv(max_seqlen, 64), heads)
    _attention_dropout_mask[grid](keep, cu_seqlens, seed, total, float(dropout_p), max_seqlen,
                                  BLOCK_M=64, BLOCK_N=64)
    return keep.bool()


# ============================================================================= autograd and op adapters
class FusedAttention(torch.autograd.Function):
    """Autograd wrapper of the kernels for standalone use (the model goes through ``fastbert.ops``)."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, dropout_p, seed):
        out, lse = attention_forward(q, k, v, cu_seqlens, max_seqlen, dropout_p, seed)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, seed)
        ctx.max_seqlen, ctx.dropout_p = max_seqlen, dropout_p
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, cu_seqlens, seed = ctx.saved_tensors
        grads = torch.empty(3, *q.shape, dtype=q.dtype, device=q.device).transpose(0, 1)  # (T, 3, H, D)
        dq, dk, dv = grads.unbind(1)
        attention_backward(dout, q, k, v, out, lse, cu_seqlens, ctx.max_seqlen, ctx.dropout_p, seed, dq, dk, dv)
        return dq, dk, dv, None, None, None, None


def attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, dropout_p: float = 0.0,
              seed: Optional[Tensor] = None) -> Tensor:
    """Softmax attention of packed sequences with the Triton kernels, differentiable in q, k, v.

    Args:
        q, k, v: ``(total_tokens, heads, head_dim)`` fp16/bf16/fp32, head_dim <= 128.
        cu_seqlens: int32 ``(batch + 1,)`` sequence offsets; max_seqlen: the longest sequence.
        dropout_p: dropout on the probabilities; ``seed``: int64 ``(1,)`` tensor, needed when > 0.
    Returns:
        ``(total_tokens, heads, head_dim)`` in q's dtype.
    """
    check_inputs(q, k, v, cu_seqlens, max_seqlen, dropout_p, seed)
    return FusedAttention.apply(q, k, v, cu_seqlens, max_seqlen, dropout_p, seed)


def attention_reference(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, dropout_p: float = 0.0,
                        keep: Optional[Tensor] = None) -> Tensor:
    """The same math in PyTorch, per sequence, in q's dtype: ``dropout(softmax(q k^T / sqrt(d))) v``.

    ``keep`` is a ``(heads, total_tokens, max_seqlen)`` bool mask as from :func:`dropout_mask`.
    """
    outs = []
    cu = cu_seqlens.tolist()
    for start, end in zip(cu[:-1], cu[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # (heads, n, dim)
        probs = torch.softmax(qs @ ks.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        if keep is not None:
            probs = probs * keep[:, start:end, :end - start].to(probs.dtype) / (1.0 - dropout_p)
        outs.append((probs @ vs).transpose(0, 1))
    return torch.cat(outs) if outs else q.new_empty(q.shape)


def _unsupported(qkv: Tensor) -> Optional[str]:
    """Why the kernels cannot take ``qkv`` (the op then runs PyTorch), or None."""
    if qkv.dtype not in KERNEL_DTYPES:
        return f"dtype {qkv.dtype}"
    if qkv.shape[-1] > MAX_HEAD_DIM:
        return f"head_dim {qkv.shape[-1]} > {MAX_HEAD_DIM}"
    return None


def _qkv_forward(qkv: Tensor, cu_seqlens: Tensor, max_seqlen: int, dropout_p: float, seed):
    """``fastbert.ops`` adapter: packed ``(T, 3, H, D)`` -> ``(out, lse)``."""
    reason = _unsupported(qkv)
    if reason:
        return torch_fallback("attention", "fwd", reason)(qkv, cu_seqlens, max_seqlen, dropout_p, seed)
    if dropout_p > 0.0 and seed is None:
        raise ValueError("attention: dropout_p > 0 needs seed, an int64 tensor of one element")
    q, k, v = qkv.unbind(1)
    return attention_forward(q, k, v, cu_seqlens, max_seqlen, dropout_p, seed)


def _qkv_backward(dout, qkv, out, lse, cu_seqlens, max_seqlen: int, dropout_p: float, seed):
    """``fastbert.ops`` adapter: the ``(T, 3, H, D)`` gradient of :func:`_qkv_forward`."""
    reason = _unsupported(qkv)
    if reason:
        fallback = torch_fallback("attention", "bwd", reason)
        return fallback(dout, qkv, out, lse, cu_seqlens, max_seqlen, dropout_p, seed)
    if dropout_p > 0.0 and seed is None:
        raise ValueError("attention: dropout_p > 0 needs seed, an int64 tensor of one element")
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    q, k, v = qkv.unbind(1)
    attention_backward(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, dropout_p, seed, *dqkv.unbind(1))
    return dqkv


# ============================================================================= ahead-of-time variants
_TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_AOT_PRECISIONS = {torch.float16: ("tf32",), torch.bfloat16: ("tf32",), torch.float32: ("ieee", "tf32")}
# 32: MiniLM's heads (tiles of the narrow table at BLOCK_D 32); 64: BERT's; 128: the wide table.
_AOT_HEAD_DIMS = {torch.float16: (32, 64, 128), torch.bfloat16: (32, 64, 128), torch.float32: (32, 64, 128)}


def _aot_signature(kernel, dtype: torch.dtype) -> dict:
    """Triton types of ``kernel``'s arguments as the launchers pass them."""
    types = {"Lse": "*fp32", "Delta": "*fp32", "CuSeqlens": "*i32", "Seed": "*i64", "sm_scale": "fp32",
             "dropout_p": "fp32"}
    signature = {}
    for name in kernel.arg_names:
        if name in types:
            signature[name] = types[name]
        elif name[0].isupper() and not name.isupper():  # Q, K, V, Out, DOut, DQ, ...
            signature[name] = "*" + _TRITON_TYPES[dtype]
        elif name.isupper():
            signature[name] = "constexpr"
        else:
            signature[name] = "i32"
    for name in ("Q", "K", "V", "DQ", "DK", "DV"):
        if name in signature:
            signature[name] = "*" + _TRITON_TYPES[dtype]
    return signature


def _aot_tiles(kind: str, block_d: int, dtype: torch.dtype, precision: str, arch: int, dropout: bool):
    """``(config, key block)`` of each tile that fits the arch's shared memory: the single-tile forward and
    the short backward at the largest length bucket they take it at (the one with the most registers),
    0 for the other kernels."""
    limit = smem_limit(arch)
    if kind not in ("single", "short"):
        return [(c, 0) for c in tile_configs(kind, block_d, dtype, precision, limit, dropout=dropout, arch=arch)]
    if kind == "short":  # each tile at its own largest key block (that fits)
        operands = precision if dtype == torch.float32 else "16bit"
        table = _TILES[kind][(block_d > 64, operands)]
        tiles = []
        for tile in _proven_tiles(kind, block_d, operands, table, dropout, _triton_version(), arch):
            config = _config(tile, kind)
            buckets = [b for b in (128, 64, 32, 16) if b <= tile[1] and b >= MIN_MMA_ROWS.get(arch, 16)
                       and smem_bytes(kind, config, block_d, dtype, b) <= limit]
            if buckets:
                tiles.append((config, buckets[0]))
        return tiles
    tiles = []
    for config in tile_configs(kind, block_d, dtype, precision, dropout=dropout, arch=arch):
        buckets = [b for b in (SINGLE_TILE_MAX_SEQLEN, 64, 32, 16) if smem_bytes(kind, config, block_d, dtype, b) <= limit]
        if buckets:
            tiles.append((config, buckets[0]))
    return tiles


def aot_variants(arch: int):
    """Every (kernel, tile, dtype, representative head dim, dropout) the launchers can run on compute
    capability ``arch`` (the tiles that fit its shared memory; none before sm_80, where attention runs
    PyTorch), for ``fastbert check-kernels``. Strides are multiples of 16, as for BERT's packed QKV."""
    from fastbert.check_kernels import AotVariant

    if arch < TENSOR_CORE_CAPABILITY[0] * 10:
        return  # the dot ops run PyTorch there (fastbert.routing)
    for dtype, head_dims in _AOT_HEAD_DIMS.items():
        for head_dim, precision in itertools.product(head_dims, _AOT_PRECISIONS[dtype]):
            block_d = _block_d(head_dim)
            base = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, INPUT_PRECISION=precision, UPCAST=False)
            name = f"{_TRITON_TYPES[dtype]}{'-' + precision if dtype == torch.float32 else ''} d{head_dim}"
            for kind, kernel in _KERNELS.items():
                signature = _aot_signature(kernel, dtype)
                aligned = tuple(n for n, t in signature.items()
                                if t.startswith("*") or n.startswith("stride_"))
                for dropout in (False, True):
                    for config, block_n in _aot_tiles(kind, block_d, dtype, precision, arch, dropout):
                        constexprs = {**base, **config.kwargs, "HAS_DROPOUT": dropout}
                        if kind in ("fwd", "single"):
                            constexprs["SINGLE_TILE"] = kind == "single"
                        if kind in ("single", "short"):
                            constexprs["BLOCK_N"] = block_n
                        label = (f"{name} M{constexprs['BLOCK_M']} N{constexprs['BLOCK_N']} "
                                 f"{'dropout' if dropout else 'no-dropout'}")
                        yield AotVariant(kernel, signature, constexprs, config.num_warps, config.num_stages,
                                         label, aligned, tensor_cores=precision != "ieee")
            if precision == "ieee":
                continue  # the preprocess has no dot
            pre = _attention_bwd_preprocess
            pre_signature = _aot_signature(pre, dtype)
            yield AotVariant(pre, pre_signature, dict(HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_T=64), PREPROCESS_WARPS, 1,
                             f"{name} T64", tuple(n for n, t in pre_signature.items()
                                                  if t.startswith("*") or n.startswith("stride_")))
