"""Fused BERT embeddings over packed tokens: ``dropout(LayerNorm(word[id] + pos[pid] + types[tid]))``.

Forward: one program per token gathers its three table rows (or its ``inputs_embeds`` row instead of the
word row), sums them in fp32, normalises with fp32 statistics and applies dropout from the seed tensor
(:func:`.dropout.keep_row` of ``(token, col)``, the same stream as :mod:`.layernorm`'s, so its debug
mask serves both); it saves only the fp32 ``mean``/``rstd`` per token.

Backward: a fixed number of programs recompute each token's sum, write the fp32 gradient ``ds`` of the
sum and keep per-program partial sums of dweight/dbeta (summed afterwards in a fixed order). Each
table's gradient is then a segmented sum of ``ds`` over the tokens sorted by id (stable sort): chunks
of ``CHUNK`` sorted tokens sum each run of one id in token order, then one program per table row adds
its runs' sums in order. No atomics and no host syncs (the shapes depend on the sizes only, so
backward can be captured in a CUDA graph); the table gradients are bitwise deterministic.

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
from .launch import on_input_device

from .layernorm import KERNEL_DTYPES, ONE_PASS_HIDDEN, _normalize_row, _num_warps, dropout_mask, sum_partials  # noqa: F401,E501

# The backward holds whole rows in registers (as the one-pass LayerNorm backward); wider rows run PyTorch.
MAX_HIDDEN = ONE_PASS_HIDDEN
BWD_PROGRAMS = 256  # fixed, so the dweight/dbeta partial sums (and the result bits) do not depend on the device
CHUNK = 128  # sorted tokens per program of the table gradients' first pass
TABLE_BLOCK = 256  # columns per program of the table-gradient kernels


@triton.jit
def _gather_sum(InputIds, Embeds, PositionIds, TypeIds, Word, Pos, Types, token, cols, mask, hidden,
                word_rows, pos_rows, type_rows, HAS_EMBEDS: tl.constexpr):
    """fp32 ``word[id] + pos[pid] + types[tid]`` of one token (``Embeds`` row instead of the word row
    when ``HAS_EMBEDS``), and whether every id is in range (nothing out of range is read)."""
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
    xhat, mean, rstd = _normalize_row(s, mask, hidden, eps)
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
    DY, InputIds, Embeds, PositionIds, TypeIds, Word, Pos, Types, Weight, Mean, Rstd, Seed, DS,
    DWeightPart, DBetaPart, tokens, hidden, word_rows, pos_rows, type_rows, tokens_per_program, dropout_p,
    BLOCK_H: tl.constexpr, HAS_EMBEDS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    """Tokens ``[pid * tokens_per_program, ...)``: the fp32 gradient of the sum into ``DS (tokens, hidden)``
    and this program's fp32 partial sums of dweight and dbeta (row ``pid`` of the ``*Part`` buffers).
    Grid ``(programs,)``."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < hidden
    dweight = tl.zeros([BLOCK_H], tl.float32)
    dbeta = tl.zeros([BLOCK_H], tl.float32)
    first = pid.to(tl.int64) * tokens_per_program
    last = tl.minimum(first + tokens_per_program, tokens)
    key, t_hi = dropout.key_and_threshold(Seed, dropout_p, HAS_DROPOUT)
    for token in range(first, last):
        s, valid = _gather_sum(InputIds, Embeds, PositionIds, TypeIds, Word, Pos, Types, token, cols, mask,
                               hidden, word_rows, pos_rows, type_rows, HAS_EMBEDS)
        rstd = tl.load(Rstd + token)
        xhat = tl.where(mask, (s - tl.load(Mean + token)) * rstd, 0.0)
        dln = tl.load(DY + token * hidden + cols, mask=mask, other=0.0).to(tl.float32)
        dln = tl.where(valid, dln, tl.full([BLOCK_H], float("nan"), tl.float32))  # bad id: NaN gradients
        if HAS_DROPOUT:
            dln *= tl.where(dropout.keep_row(key, t_hi, token, 0, BLOCK_H), 1.0 / (1.0 - dropout_p), 0.0)
        wdy = tl.load(Weight + cols, mask=mask, other=0.0).to(tl.float32) * dln  # cached; fewer live registers
        # d LN / d s = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy * xhat))
        ds = (wdy - (xhat * (tl.sum(xhat * wdy, 0) / hidden) + tl.sum(wdy, 0) / hidden)) * rstd
        tl.store(DS + token * hidden + cols, ds, mask=mask)
        dweight += dln * xhat
        dbeta += dln
    part = pid.to(tl.int64) * hidden + cols
    tl.store(DWeightPart + part, dweight, mask=mask)
    tl.store(DBetaPart + part, dbeta, mask=mask)


@triton.jit(do_not_specialize=["tokens"])
def _embeddings_bwd_runs(DS, Order, Keys, Part, tokens, hidden, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr):
    """Pass 1 of a table's gradient. ``Keys`` are the ids sorted (stably), ``Order`` the tokens in that
    order; over sorted positions ``[c * CHUNK, (c + 1) * CHUNK)`` the fp32 sum of ``DS`` over each run of
    equal keys goes to ``Part`` at the run's first position (in the chunk). Grid ``(chunks, column blocks)``."""
    first = tl.program_id(0).to(tl.int64) * CHUNK
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = cols < hidden
    key = tl.load(Keys + first)
    slot = first
    acc = tl.zeros([BLOCK_N], tl.float32)
    for j in range(first, tl.minimum(first + CHUNK, tokens)):
        next_key = tl.load(Keys + j)
        if next_key != key:
            tl.store(Part + slot * hidden + cols, acc, mask=mask)
            acc = tl.zeros([BLOCK_N], tl.float32)
            slot = j
            key = next_key
        acc += tl.load(DS + tl.load(Order + j) * hidden + cols, mask=mask, other=0.0)
    tl.store(Part + slot * hidden + cols, acc, mask=mask)


@triton.jit(do_not_specialize=["padding_idx"])
def _embeddings_bwd_rows(Part, Starts, Ends, Grad, hidden, padding_idx, CHUNK: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    """Pass 2: row ``r`` of the table's gradient is the sum, in order, of its runs' sums in ``Part``: the
    one at its first sorted position ``Starts[r]`` and one at each chunk start before ``Ends[r]``; rows
    without tokens, and ``padding_idx``, get zeros. Grid ``(table rows, column blocks)``."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = cols < hidden
    start, end = tl.load(Starts + row), tl.load(Ends + row)
    acc = tl.zeros([BLOCK_N], tl.float32)
    if start < end:
        acc = tl.load(Part + start * hidden + cols, mask=mask, other=0.0)
    for chunk_start in range((start // CHUNK + 1) * CHUNK, end, CHUNK):
        acc += tl.load(Part + chunk_start * hidden + cols, mask=mask, other=0.0)
    if row == padding_idx:
        acc = tl.zeros([BLOCK_N], tl.float32)
    tl.store(Grad + row * hidden + cols, acc.to(Grad.dtype.element_ty), mask=mask)


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
def _block_h(hidden: int) -> int:
    """The row block: a power of two, at least 16 (dropout draws four columns at a time)."""
    return max(16, triton.next_power_of_2(hidden))


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
    block_h = _block_h(hidden)
    _embeddings_fwd[(tokens,)](
        _pointer_or(input_ids, position_ids).contiguous(), _pointer_or(inputs_embeds, word).contiguous(), position_ids.contiguous(),
        token_type_ids.contiguous(), word.contiguous(), pos.contiguous(), types.contiguous(), weight.contiguous(),
        beta.contiguous(), y, mean, rstd, _pointer_or(seed, mean), hidden, word.shape[0], pos.shape[0], types.shape[0], float(eps),
        float(dropout_p), BLOCK_H=block_h, HAS_EMBEDS=inputs_embeds is not None, HAS_DROPOUT=dropout_p > 0.0,
        num_warps=_num_warps(block_h), num_stages=1)
    return y, mean, rstd


@on_input_device
def embeddings_bwd(dy, input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight,
                   mean, rstd, dropout_p: float, seed, padding_idx: int):
    """``(dinputs_embeds, dword, dpos, dtypes, dweight, dbeta)``, each in its input's dtype; the one of
    ``inputs_embeds``/``word`` not in use is empty, and row ``padding_idx`` of ``dword`` stays zero.
    The signature of :func:`fastbert.torch_ops.embeddings_bwd`."""
    tokens, hidden = position_ids.shape[0], word.shape[1]
    programs = max(1, min(tokens, BWD_PROGRAMS))
    per_program = triton.cdiv(tokens, programs)
    programs = triton.cdiv(tokens, per_program) if tokens else 1
    ds = torch.empty(tokens, hidden, dtype=torch.float32, device=word.device)
    parts = torch.zeros(2, programs, hidden, dtype=torch.float32, device=word.device)
    block_h = _block_h(hidden)
    if tokens:
        _embeddings_bwd[(programs,)](
            dy.contiguous(), _pointer_or(input_ids, position_ids).contiguous(), _pointer_or(inputs_embeds, word).contiguous(),
            position_ids.contiguous(), token_type_ids.contiguous(), word.contiguous(), pos.contiguous(),
            types.contiguous(), weight.contiguous(), mean, rstd, _pointer_or(seed, mean), ds, parts[0], parts[1], tokens,
            hidden, word.shape[0], pos.shape[0], types.shape[0], per_program, float(dropout_p),
            BLOCK_H=block_h, HAS_EMBEDS=inputs_embeds is not None, HAS_DROPOUT=dropout_p > 0.0,
            num_warps=_num_warps(block_h), num_stages=1)
    if inputs_embeds is not None:
        dembeds, dword = ds.to(inputs_embeds.dtype, copy=True), word.new_empty(0)
    else:
        dembeds, dword = word.new_empty(0), table_grad(ds, input_ids, word.shape[0], word.dtype, padding_idx)
    dpos = table_grad(ds, position_ids, pos.shape[0], pos.dtype)
    dtypes = table_grad(ds, token_type_ids, types.shape[0], types.dtype)
    sums = sum_partials(parts)
    return dembeds, dword, dpos, dtypes, sums[0].to(weight.dtype, copy=True), sums[1].to(weight.dtype, copy=True)


@on_input_device
def table_grad(ds: Tensor, ids: Tensor, rows: int, dtype: torch.dtype, padding_idx: int = -1) -> Tensor:
    """``(rows, hidden)`` gradient of an embedding table in ``dtype``: row ``r`` is the sum of
    ``ds (tokens, hidden)`` fp32 over the tokens with id ``r``, in token order (deterministic, no host
    sync); row ``padding_idx`` and rows no token uses are zero, ids outside ``[0, rows)`` are left out."""
    tokens, hidden = ds.shape
    grad = torch.empty(rows, hidden, dtype=dtype, device=ds.device)
    keys, order = torch.sort(ids.long(), stable=True)
    table_rows = torch.arange(rows, device=ds.device)
    starts = torch.searchsorted(keys, table_rows)
    ends = torch.searchsorted(keys, table_rows, right=True)
    part = torch.empty_like(ds) if tokens else ds
    col_blocks = triton.cdiv(hidden, TABLE_BLOCK)
    if tokens:
        _embeddings_bwd_runs[(triton.cdiv(tokens, CHUNK), col_blocks)](
            ds, order, keys, part, tokens, hidden, CHUNK=CHUNK, BLOCK_N=TABLE_BLOCK, num_warps=4, num_stages=1)
    _embeddings_bwd_rows[(rows, col_blocks)](part, starts, ends, grad, hidden, padding_idx, CHUNK=CHUNK,
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
                eps, dropout_p, seed, padding_idx=-1, check_values=True):
        y, mean, rstd = embeddings_fwd(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types,
                                       weight, beta, eps, dropout_p, seed, check_values)
        ctx.save_for_backward(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight,
                              mean, rstd, seed)
        ctx.dropout_p, ctx.padding_idx = dropout_p, padding_idx
        return y

    @staticmethod
    def backward(ctx, dy):
        *saved, seed = ctx.saved_tensors
        dembeds, dword, dpos, dtypes, dweight, dbeta = embeddings_bwd(dy, *saved, ctx.dropout_p, seed,
                                                                      ctx.padding_idx)
        return (None, dembeds if saved[1] is not None else None, None, None,
                dword if saved[0] is not None else None, dpos, dtypes, dweight, dbeta, None, None, None, None, None)


# ============================================================================= ahead-of-time variants
_TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


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
    ids or ``inputs_embeds`` and dropout, and the two table-gradient kernels, for ``fastbert
    check-kernels``."""
    for dtype, t in _TRITON_TYPES.items():
        if dtype == torch.bfloat16 and arch < 80:
            continue
        for block_h in (128, 512, 1024):
            for has_embeds in (False, True):
                for dropout in (False, True):
                    constexprs = dict(BLOCK_H=block_h, HAS_EMBEDS=has_embeds, HAS_DROPOUT=dropout)
                    label = f"{t} H{block_h}{' embeds' if has_embeds else ''}{' dropout' if dropout else ''}"
                    for kernel in (_embeddings_fwd, _embeddings_bwd):
                        yield _variant(kernel, constexprs, t, _num_warps(block_h), label)
    constexprs = dict(CHUNK=CHUNK, BLOCK_N=TABLE_BLOCK)
    yield _variant(_embeddings_bwd_runs, constexprs, "fp32", 4, "fp32 table runs")
    for dtype, t in _TRITON_TYPES.items():
        if dtype != torch.bfloat16 or arch >= 80:
            yield _variant(_embeddings_bwd_rows, constexprs, t, 4, f"{t} table rows")


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
                 dropout_p: float, seed, padding_idx: int):
    """``fastbert.ops`` adapter of :func:`embeddings_bwd`."""
    args = (dy, input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, mean, rstd,
            dropout_p, seed, padding_idx)
    reason = _unsupported(inputs_embeds, word, pos, types, weight)
    if reason:
        return torch_fallback("embeddings", "bwd", reason)(*args)
    return embeddings_bwd(*args)
