"""Fused BERT embeddings over packed tokens: ``dropout(LayerNorm(word[id] + pos[pid] + types[tid]))``.

Forward: one program per token gathers its three table rows (or its ``inputs_embeds`` row instead of the
word row), sums them in fp32, normalises with fp32 statistics and applies dropout from the seed tensor
(:func:`.dropout.keep_row` of ``(token, col)``, the same stream as :mod:`.layernorm`'s, so one debug
mask, :func:`.rows.dropout_mask`, serves both); it saves only the fp32 ``mean``/``rstd`` per token.

Backward: at most ``BWD_PROGRAMS`` programs recompute the sums of ``[TOKENS, BLOCK_H]`` tiles of tokens
(the ids of a tile loaded as one vector, its row gathers independent), write the fp32 gradient ``ds`` of
the sum (and a 16-bit ``inputs_embeds`` gradient directly) and keep per-program partial sums of
dweight/dbeta, summed afterwards in a fixed order into the weight's dtype (:func:`.rows.sum_partials_as`
at the tile ``PARTS_TILE``). Each table's gradient is then a segmented sum of ``ds`` over the tokens
sorted by id (stable sort): each chunk of ``CHUNK`` sorted tokens is one tile, whose segmented scan sums
every run of one id, then one program per table row adds its runs' sums, a tile of chunks at a time.
Everything accumulates in fp32, in an order fixed by the sizes; no atomics and no host syncs (the shapes
depend on the sizes only, so backward can be captured in a CUDA graph); the gradients are bitwise
deterministic.

PyTorch's deterministic ``embedding_dense_backward`` is no faster a route for the tables: it sorts the
ids as :func:`table_grad` does, then runs several segment kernels over a zeroed gradient of the
gradient's own dtype, so fp32 ``ds`` would come back fp32 and need a copy into a 16-bit table's dtype.

Ids are range-checked on the host before the forward kernel (one device sync, which
:func:`fastbert.ops.embeddings` skips where it cannot run); unchecked bad ids read nothing out of range
and give NaN rows in forward and NaN gradients in backward, never a silent number.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastbert.ops import torch_fallback
from fastbert.validation import check_embeddings_inputs

from . import dropout
from .dropout import INTERPRET
from .launch import cast_rne, on_input_device
# dropout_mask: the debug keep mask, the same stream as LayerNorm's (re-exported)
from .rows import (KERNEL_DTYPES, ONE_PASS_HIDDEN, TRITON_TYPES, dropout_mask, normalize_row,  # noqa: F401
                   row_block, row_num_warps, sum_partials_as, sum_variant)

# The backward holds whole rows in registers (as the one-pass LayerNorm backward); wider rows run PyTorch.
MAX_HIDDEN = ONE_PASS_HIDDEN
BWD_PROGRAMS = 256  # at most; fixed, so the dweight/dbeta partial sums (and their bits) do not depend on the device
# The tile (programs, columns) of the dweight/dbeta reduction (rows.sum_partials_as): 32 programs a step
# (its first dimension fixes the order of the sum, and so its bits), 64 columns a program.
PARTS_TILE = (32, 64)
CHUNK = 128  # sorted tokens per program of the table gradients' first pass (a power of two: one tile)
RUNS_BLOCK = 32  # its columns: a [CHUNK, 32] fp32 tile, one 128-byte line per row
TABLE_BLOCK = 256  # columns per program of the table gradients' second pass
SLOTS = 8  # chunks its programs read at a time


@triton.jit
def _gather_sum(InputIds, Embeds, PositionIds, TypeIds, Word, Pos, Types, token, cols, mask, hidden,
                word_rows, pos_rows, type_rows, HAS_EMBEDS: tl.constexpr):
    """fp32 ``word[id] + pos[pid] + types[tid]`` (``Embeds`` row instead of the word row when
    ``HAS_EMBEDS``), and whether every id is in range (nothing out of range is read): of one token
    (scalar ``token``, ``cols [BLOCK_H]``) or of a column of tokens (``token [TOKENS, 1]``, ``cols [1,
    BLOCK_H]``: ``[TOKENS, BLOCK_H]`` sums, ``[TOKENS, 1]`` validity)."""
    pid = tl.load(PositionIds + token).to(tl.int64)
    tid = tl.load(TypeIds + token).to(tl.int64)
    valid = (pid >= 0) & (pid < pos_rows) & (tid >= 0) & (tid < type_rows)
    if HAS_EMBEDS:
        s = tl.load(Embeds + token * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        wid = tl.load(InputIds + token).to(tl.int64)
        valid = valid & (wid >= 0) & (wid < word_rows)
        s = tl.load(Word + tl.where(valid, wid, 0) * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    # a bad id reads row 0 instead (every table has one), and the caller poisons the token's output
    s += tl.load(Pos + tl.where(valid, pid, 0) * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    s += tl.load(Types + tl.where(valid, tid, 0) * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    return s, valid


# Row and token counts are not specialized (one binary for any batch or vocabulary; a table of one row
# is not a constant).
@triton.jit(do_not_specialize=["word_rows", "pos_rows", "type_rows"])
def _embeddings_fwd(
    InputIds, Embeds, PositionIds, TypeIds, Word, Pos, Types, Weight, Beta, Y, Mean, Rstd, Seed,
    hidden, word_rows, pos_rows, type_rows, eps, dropout_p,
    BLOCK_H: tl.constexpr, HAS_EMBEDS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    """One program per token. Grid ``(tokens,)``."""
    token = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < hidden
    s, valid = _gather_sum(InputIds, Embeds, PositionIds, TypeIds, Word, Pos, Types, token, cols, mask, hidden,
                           word_rows, pos_rows, type_rows, HAS_EMBEDS)
    xhat, mean, rstd = normalize_row(s, mask, hidden, eps)
    w = tl.load(Weight + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(Beta + cols, mask=mask, other=0.0).to(tl.float32)
    y = xhat * w + b
    if HAS_DROPOUT:
        keep = dropout.keep_row(dropout.seed_key(Seed), dropout.threshold(dropout_p), token, 0, BLOCK_H)
        y *= tl.where(keep, 1.0 / (1.0 - dropout_p), 0.0)
    y = tl.where(valid, y, tl.full([BLOCK_H], float("nan"), tl.float32))  # a bad id never passes as a number
    tl.store(Y + token * hidden + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + token, mean)
    tl.store(Rstd + token, rstd)


@triton.jit(do_not_specialize=["tokens", "word_rows", "pos_rows", "type_rows", "tokens_per_program"])
def _embeddings_bwd(
    DY, InputIds, Embeds, PositionIds, TypeIds, Word, Pos, Types, Weight, Mean, Rstd, Seed, DS, DEmbeds,
    DWeightPart, DBetaPart, tokens, hidden, word_rows, pos_rows, type_rows, tokens_per_program, dropout_p,
    BLOCK_H: tl.constexpr, TOKENS: tl.constexpr, HAS_EMBEDS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    """Tokens ``[pid * tokens_per_program, ...)``, ``TOKENS`` at a time (``tokens_per_program`` a multiple
    of it): the fp32 gradient of the sum into ``DS (tokens, hidden)`` (and, with ``HAS_EMBEDS``, into
    ``DEmbeds (tokens, hidden)`` where that is a 16-bit buffer) and this program's fp32 partial sums of
    dweight and dbeta (row ``pid`` of the ``*Part`` buffers). Grid ``(programs,)``."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_H)[None, :]
    mask = cols < hidden
    dweight = tl.zeros([TOKENS, BLOCK_H], tl.float32)
    dbeta = tl.zeros([TOKENS, BLOCK_H], tl.float32)
    first = pid.to(tl.int64) * tokens_per_program
    last = tl.minimum(first + tokens_per_program, tokens)
    key, t_hi = dropout.key_and_threshold(Seed, dropout_p, HAS_DROPOUT)
    for step in range(first, last, TOKENS):
        token = step + tl.arange(0, TOKENS)[:, None]
        live = token < last
        token = tl.minimum(token, last - 1)  # past the end: the last token again, loaded but never stored or summed
        s, valid = _gather_sum(InputIds, Embeds, PositionIds, TypeIds, Word, Pos, Types, token, cols, mask,
                               hidden, word_rows, pos_rows, type_rows, HAS_EMBEDS)
        rstd = tl.load(Rstd + token)
        xhat = tl.where(mask, (s - tl.load(Mean + token)) * rstd, 0.0)
        dln = tl.load(DY + token * hidden + cols, mask=mask, other=0.0).to(tl.float32)
        dln = tl.where(valid, dln, tl.full([TOKENS, BLOCK_H], float("nan"), tl.float32))  # bad id: NaN gradients
        if HAS_DROPOUT:
            dln *= tl.where(dropout.keep_rows(key, t_hi, token, 0, TOKENS, BLOCK_H), 1.0 / (1.0 - dropout_p), 0.0)
        dln = tl.where(live, dln, 0.0)
        wdy = tl.load(Weight + cols, mask=mask, other=0.0).to(tl.float32) * dln  # cached; fewer live registers
        # d LN / d s = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy * xhat)), per token
        ds = (wdy - (xhat * (tl.sum(xhat * wdy, 1)[:, None] / hidden) + tl.sum(wdy, 1)[:, None] / hidden)) * rstd
        tl.store(DS + token * hidden + cols, ds, mask=live & mask)
        if HAS_EMBEDS:
            if DEmbeds.dtype.element_ty != tl.float32:  # an fp32 inputs_embeds takes DS itself
                tl.store(DEmbeds + token * hidden + cols, cast_rne(ds, DEmbeds.dtype.element_ty), mask=live & mask)
        dweight += dln * xhat
        dbeta += dln
    part = pid.to(tl.int64) * hidden + cols
    tl.store(DWeightPart + part, tl.sum(dweight, 0)[None, :], mask=mask)
    tl.store(DBetaPart + part, tl.sum(dbeta, 0)[None, :], mask=mask)


@triton.jit
def _segmented_add(start_a, sum_a, start_b, sum_b):
    """Combine of a segmented scan over (run starts here, sum): ``b``'s sum, plus ``a``'s unless ``b``
    holds a run start."""
    return start_a | start_b, tl.where(start_b != 0, sum_b, sum_a + sum_b)


@triton.jit
def _segmented_sums(starts, x, CHUNK: tl.constexpr):
    """Inclusive fp32 sums of ``x [CHUNK, N]`` down axis 0 within runs (``starts`` int32 ``[CHUNK, N]``: 1
    where a run starts): a segmented scan. The interpreter runs a generic scan element by element in
    Python, so there the same sums come from doubling instead (log2(CHUNK) shifted adds, in another order)."""
    if INTERPRET:
        run = tl.cumsum(starts, 0)  # each row's run number
        rows = tl.broadcast_to(tl.arange(0, CHUNK)[:, None], x.shape)
        shift = 1
        while shift < CHUNK:  # x[i] = the sum over [i - 2 * shift + 1, i] within i's run
            before = tl.maximum(rows - shift, 0)
            x = tl.where((rows >= shift) & (tl.gather(run, before, 0) == run), x + tl.gather(x, before, 0), x)
            shift *= 2
        return x
    _, sums = tl.associative_scan((starts, x), 0, _segmented_add)
    return sums


@triton.jit(do_not_specialize=["tokens", "rows"])
def _embeddings_bwd_runs(DS, Order, Keys, Part, Starts, Ends, tokens, hidden, rows, CHUNK: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    """Pass 1 of a table's gradient. ``Keys`` are the ids sorted (stably), ``Order`` the tokens in that
    order. Sorted positions ``[c * CHUNK, (c + 1) * CHUNK)`` are one ``[CHUNK, BLOCK_N]`` tile of ``DS``
    rows (one vector of indices, every row load independent); a segmented scan down the tile sums each
    run of equal keys in fp32, and the run's sum goes to ``Part`` at its last position in the chunk.
    The first column block also writes each in-range key's sorted range ``[Starts[k], Ends[k])``
    (rows without tokens keep the caller's zeros). Grid ``(chunks, column blocks)``."""
    first = tl.program_id(0).to(tl.int64) * CHUNK
    end = tl.minimum(first + CHUNK, tokens)
    j = first + tl.arange(0, CHUNK)
    live = j < end
    key = tl.load(Keys + j, mask=live, other=0)
    prev = tl.load(Keys + j - 1, mask=live & (j > 0), other=0)
    following = tl.load(Keys + j + 1, mask=live & (j + 1 < tokens), other=0)
    run_start = (j == 0) | (key != prev)
    run_end = (j == tokens - 1) | (key != following)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = live[:, None] & (cols[None, :] < hidden)
    ds = tl.load(DS + tl.load(Order + j, mask=live, other=0)[:, None] * hidden + cols[None, :], mask=mask, other=0.0)
    starts = tl.broadcast_to((run_start | (j == first)).to(tl.int32)[:, None], [CHUNK, BLOCK_N])
    sums = _segmented_sums(starts, ds, CHUNK)
    tl.store(Part + j[:, None] * hidden + cols[None, :], sums, mask=mask & (run_end | (j == end - 1))[:, None])
    if tl.program_id(1) == 0:
        in_table = live & (key >= 0) & (key < rows)
        row = tl.where(in_table, key, 0)
        tl.store(Starts + row, j, mask=in_table & run_start)
        tl.store(Ends + row, j + 1, mask=in_table & run_end)


@triton.jit(do_not_specialize=["padding_idx"])
def _embeddings_bwd_rows(Part, Starts, Ends, Grad, hidden, padding_idx, CHUNK: tl.constexpr, SLOTS: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    """Pass 2: row ``r`` of the table's gradient is the sum of its runs' sums in ``Part``, one at its last
    position ``min((c + 1) * CHUNK, Ends[r]) - 1`` in each chunk ``c`` its sorted range ``[Starts[r],
    Ends[r])`` meets, ``SLOTS`` chunks a step (summed in a fixed order); rows without tokens, and
    ``padding_idx``, get zeros. Grid ``(table rows, column blocks)``."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    mask = cols < hidden
    start, end = tl.load(Starts + row), tl.load(Ends + row)
    start, end = tl.where(row == padding_idx, 0, start), tl.where(row == padding_idx, 0, end)
    acc = tl.zeros([SLOTS, BLOCK_N], tl.float32)
    for c0 in range(start // CHUNK, tl.cdiv(end, CHUNK), SLOTS):
        c = c0 + tl.arange(0, SLOTS)[:, None]
        slot = tl.minimum((c + 1) * CHUNK, end) - 1
        acc += tl.load(Part + slot * hidden + cols, mask=(c * CHUNK < end) & mask, other=0.0)
    tl.store(Grad + row * hidden + cols, cast_rne(tl.sum(acc, 0)[None, :], Grad.dtype.element_ty), mask=mask)


# ============================================================================= checks
def check_inputs(input_ids: Optional[Tensor], inputs_embeds: Optional[Tensor], position_ids: Tensor,
                 token_type_ids: Tensor, word: Tensor, pos: Tensor, types: Tensor, weight: Tensor, beta: Tensor,
                 dropout_p: float, seed: Optional[Tensor], check_values: bool = True) -> None:
    """Raises ``TypeError``/``ValueError`` naming the bad argument, before any kernel runs.

    ``check_values`` also reads the ids' ranges (one device sync; skipped during CUDA-graph capture).
    """
    capturing = word.is_cuda and torch.cuda.is_current_stream_capturing()
    check_embeddings_inputs(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, beta,
                            dropout_p, seed, check_values and not capturing, KERNEL_DTYPES)
    if not 1 <= word.shape[1] <= MAX_HIDDEN:
        raise ValueError(f"embeddings: hidden must be in [1, {MAX_HIDDEN}], got {word.shape[1]}")


# ============================================================================= launchers
def _pointer_or(t: Optional[Tensor], stand_in: Tensor) -> Tensor:
    return t if t is not None else stand_in


@on_input_device
def embeddings_fwd(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, beta,
                   eps: float, dropout_p: float, seed, check_values: bool = True):
    """``(y, mean, rstd)``: ``y (tokens, hidden)`` in the tables' dtype, fp32 ``(tokens,)`` statistics.
    The signature of :func:`fastbert.torch_ops.embeddings_fwd`; ids are int32/int64 ``(tokens,)``."""
    check_inputs(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, beta,
                 dropout_p, seed, check_values)
    tokens, hidden = position_ids.shape[0], word.shape[1]
    y = word.new_empty(tokens, hidden)
    mean = torch.empty(tokens, dtype=torch.float32, device=word.device)
    rstd = torch.empty_like(mean)
    if tokens == 0:
        return y, mean, rstd
    block_h = row_block(hidden)
    _embeddings_fwd[(tokens,)](
        _pointer_or(input_ids, position_ids).contiguous(), _pointer_or(inputs_embeds, word).contiguous(), position_ids.contiguous(),
        token_type_ids.contiguous(), word.contiguous(), pos.contiguous(), types.contiguous(), weight.contiguous(),
        beta.contiguous(), y, mean, rstd, _pointer_or(seed, mean), hidden, word.shape[0], pos.shape[0], types.shape[0], float(eps),
        float(dropout_p), BLOCK_H=block_h, HAS_EMBEDS=inputs_embeds is not None, HAS_DROPOUT=dropout_p > 0.0,
        num_warps=row_num_warps(block_h), num_stages=1)
    return y, mean, rstd


# The backward's (warps, tokens per step) by row block: at most 16 elements of a [TOKENS, BLOCK_H] tile per
# thread, and no spills (fastbert check-kernels); two rows of 1024 take 9% more instructions a token than
# one (at 8 warps 22% more), at 128 and 512 columns a token takes 45% and 29% fewer than one at a time.
_BWD_CONFIG = {128: (4, 8), 512: (8, 4), 1024: (4, 2)}


def _bwd_num_warps(block_h: int) -> int:
    """Warps of the backward."""
    return _BWD_CONFIG.get(block_h, (row_num_warps(block_h), 1))[0]


def _bwd_tokens(block_h: int) -> int:
    """Tokens per step of the backward (a power of two)."""
    return _BWD_CONFIG.get(block_h, (4, max(1, 1024 // block_h)))[1]


@on_input_device
def embeddings_bwd(dy, input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight,
                   mean, rstd, dropout_p: float, seed, padding_idx: int, position_padding_idx: int = -1):
    """``(dinputs_embeds, dword, dpos, dtypes, dweight, dbeta)``, each in its input's dtype; the one of
    ``inputs_embeds``/``word`` not in use is empty, and row ``padding_idx`` of ``dword``
    (``position_padding_idx`` of ``dpos``) stays zero.
    The signature of :func:`fastbert.torch_ops.embeddings_bwd`."""
    tokens, hidden = position_ids.shape[0], word.shape[1]
    block_h = row_block(hidden)
    step = _bwd_tokens(block_h)
    per_program = step * max(1, triton.cdiv(triton.cdiv(tokens, BWD_PROGRAMS), step))  # whole steps
    programs = triton.cdiv(tokens, per_program)
    ds = torch.empty(tokens, hidden, dtype=torch.float32, device=word.device)
    if inputs_embeds is None or inputs_embeds.dtype == torch.float32:
        dembeds = ds if inputs_embeds is not None else word.new_empty(0)
    else:
        dembeds = torch.empty(tokens, hidden, dtype=inputs_embeds.dtype, device=word.device)
    parts = torch.empty(2, programs, hidden, dtype=torch.float32, device=word.device)  # every row written
    if tokens:
        _embeddings_bwd[(programs,)](
            dy.contiguous(), _pointer_or(input_ids, position_ids).contiguous(), _pointer_or(inputs_embeds, word).contiguous(),
            position_ids.contiguous(), token_type_ids.contiguous(), word.contiguous(), pos.contiguous(),
            types.contiguous(), weight.contiguous(), mean, rstd, _pointer_or(seed, mean), ds,
            dembeds if inputs_embeds is not None else ds, parts[0], parts[1], tokens, hidden, word.shape[0],
            pos.shape[0], types.shape[0], per_program, float(dropout_p), BLOCK_H=block_h, TOKENS=step,
            HAS_EMBEDS=inputs_embeds is not None, HAS_DROPOUT=dropout_p > 0.0, num_warps=_bwd_num_warps(block_h),
            num_stages=1)
    part = torch.empty_like(ds)  # pass 1's run sums, one buffer for the three tables in turn
    dword = word.new_empty(0) if inputs_embeds is not None else table_grad(ds, input_ids, word.shape[0], word.dtype,
                                                                           padding_idx, part)
    dpos = table_grad(ds, position_ids, pos.shape[0], pos.dtype, position_padding_idx, part)
    dtypes = table_grad(ds, token_type_ids, types.shape[0], types.dtype, part=part)
    dweight, dbeta = sum_partials_as(parts, (weight.dtype, weight.dtype), PARTS_TILE)  # zeros without tokens
    return dembeds, dword, dpos, dtypes, dweight, dbeta


@on_input_device
def table_grad(ds: Tensor, ids: Tensor, rows: int, dtype: torch.dtype, padding_idx: int = -1,
               part: Optional[Tensor] = None) -> Tensor:
    """``(rows, hidden)`` gradient of an embedding table in ``dtype``: row ``r`` is the fp32 sum of
    ``ds (tokens, hidden)`` fp32 over the tokens with id ``r``, in an order fixed by the sizes
    (deterministic, no host sync); row ``padding_idx`` and rows no token uses are zero, ids outside
    ``[0, rows)`` are left out. ``part``: a scratch buffer of ``ds``'s shape and dtype (or a new one)."""
    tokens, hidden = ds.shape
    grad = torch.empty(rows, hidden, dtype=dtype, device=ds.device)
    keys, order = torch.sort(ids.long(), stable=True)
    bounds = torch.zeros(2, rows, dtype=torch.int64, device=ds.device)  # each row's sorted range; empty if unused
    if tokens:
        part = torch.empty_like(ds) if part is None else part
        _embeddings_bwd_runs[(triton.cdiv(tokens, CHUNK), triton.cdiv(hidden, RUNS_BLOCK))](
            ds, order, keys, part, bounds[0], bounds[1], tokens, hidden, rows, CHUNK=CHUNK, BLOCK_N=RUNS_BLOCK,
            num_warps=4, num_stages=1)
    _embeddings_bwd_rows[(rows, triton.cdiv(hidden, TABLE_BLOCK))](
        _pointer_or(part, ds), bounds[0], bounds[1], grad, hidden, padding_idx, CHUNK=CHUNK, SLOTS=SLOTS,
        BLOCK_N=TABLE_BLOCK, num_warps=4, num_stages=1)
    return grad


def embeddings_reference(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, beta,
                         eps: float, keep: Optional[Tensor] = None, dropout_p: float = 0.0) -> Tensor:
    """The same math in PyTorch, in the dtype the inputs promote to."""
    s = inputs_embeds if inputs_embeds is not None else word[input_ids]
    s = s + pos[position_ids] + types[token_type_ids]
    y = torch.nn.functional.layer_norm(s, (s.shape[-1],), weight.to(s.dtype), beta.to(s.dtype), eps)
    return y if keep is None else y * keep.to(y.dtype) / (1.0 - dropout_p)


class FusedEmbeddings(torch.autograd.Function):
    """Autograd wrapper of the kernels for standalone use (the model goes through ``fastbert.ops``)."""

    @staticmethod
    def forward(ctx, input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, beta,
                eps, dropout_p, seed, padding_idx=-1, check_values=True, position_padding_idx=-1):
        y, mean, rstd = embeddings_fwd(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types,
                                       weight, beta, eps, dropout_p, seed, check_values)
        ctx.save_for_backward(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight,
                              mean, rstd, seed)
        ctx.dropout_p, ctx.padding_idx, ctx.position_padding_idx = dropout_p, padding_idx, position_padding_idx
        return y

    @staticmethod
    def backward(ctx, dy):
        *saved, seed = ctx.saved_tensors
        dembeds, dword, dpos, dtypes, dweight, dbeta = embeddings_bwd(dy, *saved, ctx.dropout_p, seed,
                                                                      ctx.padding_idx, ctx.position_padding_idx)
        return (None, dembeds if saved[1] is not None else None, None, None,
                dword if saved[0] is not None else None, dpos, dtypes, dweight, dbeta, None, None, None, None, None,
                None)


# ============================================================================= ahead-of-time variants
def _signature(kernel, constexprs: dict, t: str) -> dict:
    from fastbert.check_kernels import signature_of

    return signature_of(kernel, constexprs, t, fp32_pointers=("Mean", "Rstd", "DS", "DWeightPart", "DBetaPart", "Part"),
                        i64_pointers=("Seed", "InputIds", "PositionIds", "TypeIds", "Order", "Keys", "Starts", "Ends"))


def _variant(kernel, constexprs: dict, t: str, num_warps: int, label: str):
    """The variant as launched for a hidden size that is a multiple of 16 (BERT's are: the JIT then
    specializes ``hidden`` as divisible by 16)."""
    from fastbert.check_kernels import AotVariant, aligned_arguments

    signature = _signature(kernel, constexprs, t)
    return AotVariant(kernel, signature, constexprs, num_warps, 1, label, aligned_arguments(signature, ("hidden",)))


def aot_variants(arch: int):
    """Forward and backward for each dtype (bf16 from sm_80), row block (384 -> 512, 768 -> 1024), word
    ids or ``inputs_embeds`` and dropout, the dweight/dbeta sum and the two table-gradient kernels, for
    ``fastbert check-kernels``."""
    for dtype, t in TRITON_TYPES.items():
        if dtype == torch.bfloat16 and arch < 80:
            continue
        for block_h in (128, 512, 1024):
            for has_embeds in (False, True):
                for dropout in (False, True):
                    constexprs = dict(BLOCK_H=block_h, HAS_EMBEDS=has_embeds, HAS_DROPOUT=dropout)
                    label = f"{t} H{block_h}{' embeds' if has_embeds else ''}{' dropout' if dropout else ''}"
                    yield _variant(_embeddings_fwd, constexprs, t, row_num_warps(block_h), label)
                    yield _variant(_embeddings_bwd, dict(constexprs, TOKENS=_bwd_tokens(block_h)), t,
                                   _bwd_num_warps(block_h), label)
    yield _variant(_embeddings_bwd_runs, dict(CHUNK=CHUNK, BLOCK_N=RUNS_BLOCK), "fp32", 4, "fp32 table runs")
    for dtype, t in TRITON_TYPES.items():
        if dtype != torch.bfloat16 or arch >= 80:
            yield sum_variant(t, PARTS_TILE, f"{t} dweight/dbeta")  # the tile embeddings_bwd launches
            yield _variant(_embeddings_bwd_rows, dict(CHUNK=CHUNK, SLOTS=SLOTS, BLOCK_N=TABLE_BLOCK), t, 4,
                           f"{t} table rows")


# ============================================================================= op adapters
def _unsupported(inputs_embeds, word, pos, types, weight) -> Optional[str]:
    """Why the kernels cannot take these inputs (the op then runs PyTorch), or None."""
    for t in (inputs_embeds, word, pos, types, weight):
        if t is not None and t.dtype not in KERNEL_DTYPES:
            return f"dtype {t.dtype}"
    if word.shape[-1] > MAX_HIDDEN:
        return f"hidden {word.shape[-1]} > {MAX_HIDDEN}"
    return None


def _op_forward(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, beta,
                eps: float, dropout_p: float, seed):
    """``fastbert.ops`` adapter of :func:`embeddings_fwd` (PyTorch for what it cannot take)."""
    args = (input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, beta, eps,
            dropout_p, seed)
    reason = _unsupported(inputs_embeds, word, pos, types, weight)
    if reason:
        return torch_fallback("embeddings", "fwd", reason)(*args)
    return embeddings_fwd(*args, check_values=False)  # fastbert.ops.embeddings checked them where it could


def _op_backward(dy, input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, mean, rstd,
                 dropout_p: float, seed, padding_idx: int, position_padding_idx: int):
    """``fastbert.ops`` adapter of :func:`embeddings_bwd`."""
    args = (dy, input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, mean, rstd,
            dropout_p, seed, padding_idx, position_padding_idx)
    reason = _unsupported(inputs_embeds, word, pos, types, weight)
    if reason:
        return torch_fallback("embeddings", "bwd", reason)(*args)
    return embeddings_bwd(*args)
