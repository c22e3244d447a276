"""Fused BERT embeddings over packed tokens: ``dropout(LayerNorm(word[id] + pos[pid] + types[tid]))``.

Forward: one program per token gathers its three table rows (or its ``inputs_embeds`` row instead of the
word row), sums them in fp32, normalises with fp32 statistics and applies dropout from the seed tensor
(``tl.rand`` keyed by ``token * hidden + col``, the same stream as :mod:`.layernorm`'s, so its debug
mask serves both); it saves only the fp32 ``mean``/``rstd`` per token.

Backward: a fixed number of programs recompute each token's sum, write the fp32 gradient ``ds`` of the
sum and keep per-program partial sums of dweight/dbeta (summed afterwards in a fixed order). Each
table's gradient is then a segmented sum of ``ds`` over the tokens sorted by id (stable sort): pieces of
at most ``SEGMENT_PIECE`` tokens of one id are summed in token order, then the pieces of one id the same
way, until each id has one sum. No atomics, so the table gradients are bitwise deterministic too.

Ids are range-checked on the host before the forward kernel (one device sync); where that cannot run
(CUDA-graph capture), the kernel reads nothing out of range and writes NaN rows for bad ids.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastbert.ops import torch_fallback

from .layernorm import KERNEL_DTYPES, ONE_PASS_HIDDEN, _normalize_row, _num_warps, dropout_mask  # noqa: F401

# The backward holds whole rows in registers (as the one-pass LayerNorm backward); wider rows run PyTorch.
MAX_HIDDEN = ONE_PASS_HIDDEN
BWD_PROGRAMS = 256  # fixed, so the dweight/dbeta partial sums (and the result bits) do not depend on the device
SEGMENT_PIECE = 64  # tokens summed by one program of the table-gradient kernel
TABLE_BLOCK = 256  # columns per program of the table-gradient kernel


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


@triton.jit
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
        keep = tl.rand(tl.load(Seed), token * hidden + cols) >= dropout_p
        y = tl.where(keep, y / (1.0 - dropout_p), 0.0)
    y = tl.where(valid, y, tl.full([BLOCK_H], float("nan"), tl.float32))  # a bad id never passes as a number
    tl.store(Y + token * hidden + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + token, mean)
    tl.store(Rstd + token, rstd)


@triton.jit
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
    for token in range(first, last):
        s, _ = _gather_sum(InputIds, Embeds, PositionIds, TypeIds, Word, Pos, Types, token, cols, mask, hidden,
                           word_rows, pos_rows, type_rows, HAS_EMBEDS)
        rstd = tl.load(Rstd + token)
        xhat = tl.where(mask, (s - tl.load(Mean + token)) * rstd, 0.0)
        dln = tl.load(DY + token * hidden + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_DROPOUT:
            keep = tl.rand(tl.load(Seed), token * hidden + cols) >= dropout_p
            dln = tl.where(keep, dln / (1.0 - dropout_p), 0.0)
        wdy = tl.load(Weight + cols, mask=mask, other=0.0).to(tl.float32) * dln  # cached; fewer live registers
        # d LN / d s = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy * xhat))
        ds = (wdy - (xhat * (tl.sum(xhat * wdy, 0) / hidden) + tl.sum(wdy, 0) / hidden)) * rstd
        tl.store(DS + token * hidden + cols, ds, mask=mask)
        dweight += dln * xhat
        dbeta += dln
    part = pid.to(tl.int64) * hidden + cols
    tl.store(DWeightPart + part, dweight, mask=mask)
    tl.store(DBetaPart + part, dbeta, mask=mask)


@triton.jit
def _embeddings_bwd_segments(Src, Index, Starts, Out, hidden, BLOCK_N: tl.constexpr):
    """``Out[k] = sum of Src[Index[j]] for j in [Starts[k], Starts[k + 1])``, in that order, fp32.
    Grid ``(pieces, column blocks)``."""
    piece = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = cols < hidden
    acc = tl.zeros([BLOCK_N], tl.float32)
    for j in range(tl.load(Starts + piece), tl.load(Starts + piece + 1)):
        acc += tl.load(Src + tl.load(Index + j) * hidden + cols, mask=mask, other=0.0)
    tl.store(Out + piece * hidden + cols, acc, mask=mask)


# ============================================================================= checks
def check_inputs(input_ids: Optional[Tensor], inputs_embeds: Optional[Tensor], position_ids: Tensor,
                 token_type_ids: Tensor, word: Tensor, pos: Tensor, types: Tensor, weight: Tensor, beta: Tensor,
                 dropout_p: float, seed: Optional[Tensor], check_values: bool = True) -> None:
    """Raises ``TypeError``/``ValueError`` naming the bad argument, before any kernel runs.

    ``check_values`` also reads the ids' ranges (one device sync; skipped during CUDA-graph capture).
    """
    tokens = position_ids.shape[0] if position_ids.dim() == 1 else -1
    hidden = word.shape[-1]
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("embeddings: pass exactly one of input_ids or inputs_embeds")
    for name, t in (("word", word), ("pos", pos), ("types", types), ("weight", weight), ("beta", beta),
                    ("inputs_embeds", inputs_embeds)):
        if t is not None and t.dtype not in KERNEL_DTYPES:
            raise TypeError(f"embeddings: {name} must be float16, bfloat16 or float32, got {t.dtype}")
    for name, t in (("word", word), ("pos", pos), ("types", types)):
        if t.dim() != 2 or t.shape[1] != hidden or t.shape[0] < 1:
            raise ValueError(f"embeddings: {name} must be a (rows >= 1, {hidden}) table, got {tuple(t.shape)}")
    for name, t in (("weight", weight), ("beta", beta)):
        if tuple(t.shape) != (hidden,):
            raise ValueError(f"embeddings: {name} must be ({hidden},), got {tuple(t.shape)}")
    if not 1 <= hidden <= MAX_HIDDEN:
        raise ValueError(f"embeddings: hidden must be in [1, {MAX_HIDDEN}], got {hidden}")
    ids = [("position_ids", position_ids, pos.shape[0]), ("token_type_ids", token_type_ids, types.shape[0])]
    if input_ids is not None:
        ids.insert(0, ("input_ids", input_ids, word.shape[0]))
    elif tuple(inputs_embeds.shape) != (tokens, hidden):
        raise ValueError(f"embeddings: inputs_embeds must be ({tokens}, {hidden}), got {tuple(inputs_embeds.shape)}")
    for name, t, _ in ids:
        if t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"embeddings: {name} must be int32 or int64, got {t.dtype}")
        if t.dim() != 1 or t.shape[0] != tokens:
            raise ValueError(f"embeddings: {name} must be (tokens,) like position_ids "
                             f"({tuple(position_ids.shape)}), got {tuple(t.shape)}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"embeddings: dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_p > 0.0 and (seed is None or seed.dtype != torch.int64 or seed.numel() != 1):
        raise ValueError("embeddings: dropout_p > 0 needs seed, an int64 tensor of one element")
    capturing = word.is_cuda and torch.cuda.is_current_stream_capturing()
    if check_values and tokens > 0 and not capturing:
        ranges = torch.stack([torch.stack([t.min(), t.max()]).long() for _, t, _ in ids]).tolist()
        for (name, _, rows), (low, high) in zip(ids, ranges):
            if low < 0 or high >= rows:
                raise ValueError(f"embeddings: {name} must lie in [0, {rows}) (the table's rows), "
                                 f"got values in [{low}, {high}]")


# ============================================================================= launchers
def _pointer_or(t: Optional[Tensor], stand_in: Tensor) -> Tensor:
    return t if t is not None else stand_in


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
    block_h = triton.next_power_of_2(hidden)
    _embeddings_fwd[(tokens,)](
        _pointer_or(input_ids, position_ids).contiguous(), _pointer_or(inputs_embeds, word).contiguous(), position_ids.contiguous(),
        token_type_ids.contiguous(), word.contiguous(), pos.contiguous(), types.contiguous(), weight, beta,
        y, mean, rstd, _pointer_or(seed, mean), hidden, word.shape[0], pos.shape[0], types.shape[0], float(eps),
        float(dropout_p), BLOCK_H=block_h, HAS_EMBEDS=inputs_embeds is not None, HAS_DROPOUT=dropout_p > 0.0,
        num_warps=_num_warps(block_h))
    return y, mean, rstd


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
    block_h = triton.next_power_of_2(hidden)
    if tokens:
        _embeddings_bwd[(programs,)](
            dy.contiguous(), _pointer_or(input_ids, position_ids).contiguous(), _pointer_or(inputs_embeds, word).contiguous(),
            position_ids.contiguous(), token_type_ids.contiguous(), word.contiguous(), pos.contiguous(),
            types.contiguous(), weight, mean, rstd, _pointer_or(seed, mean), ds, parts[0], parts[1], tokens,
            hidden, word.shape[0], pos.shape[0], types.shape[0], per_program, float(dropout_p),
            BLOCK_H=block_h, HAS_EMBEDS=inputs_embeds is not None, HAS_DROPOUT=dropout_p > 0.0,
            num_warps=_num_warps(block_h))
    if inputs_embeds is not None:
        dembeds, dword = ds.to(inputs_embeds.dtype, copy=True), word.new_empty(0)
    else:
        dembeds, dword = word.new_empty(0), table_grad(ds, input_ids, word.shape[0], word.dtype, padding_idx)
    dpos = table_grad(ds, position_ids, pos.shape[0], pos.dtype)
    dtypes = table_grad(ds, token_type_ids, types.shape[0], types.dtype)
    return dembeds, dword, dpos, dtypes, parts[0].sum(0).to(weight.dtype), parts[1].sum(0).to(weight.dtype)


def _piece_starts(keys: Tensor) -> Tensor:
    """Start offsets (and the end) of the runs of equal sorted ``keys``, each cut into pieces of at most
    ``SEGMENT_PIECE``."""
    n = keys.numel()
    position = torch.arange(n, device=keys.device)
    run_start = torch.ones(n, dtype=torch.bool, device=keys.device)
    run_start[1:] = keys[1:] != keys[:-1]
    first_of_run = torch.cummax(torch.where(run_start, position, 0), 0).values
    piece_start = run_start | ((position - first_of_run) % SEGMENT_PIECE == 0)
    return torch.cat([position[piece_start], position.new_full((1,), n)])


def table_grad(ds: Tensor, ids: Tensor, rows: int, dtype: torch.dtype, padding_idx: int = -1) -> Tensor:
    """``(rows, hidden)`` gradient of an embedding table: row ``r`` is the sum of ``ds (tokens, hidden)``
    fp32 over the tokens with id ``r``, summed in token order (deterministic); ``padding_idx`` stays 0."""
    hidden = ds.shape[1]
    grad = torch.zeros(rows, hidden, dtype=torch.float32, device=ds.device)
    if ids.numel():
        order = torch.argsort(ids, stable=True)
        keys, src, index = ids[order], ds, order
        while True:
            starts = _piece_starts(keys)
            pieces = starts.numel() - 1
            sums = torch.empty(pieces, hidden, dtype=torch.float32, device=ds.device)
            _embeddings_bwd_segments[(pieces, triton.cdiv(hidden, TABLE_BLOCK))](
                src, index, starts, sums, hidden, BLOCK_N=TABLE_BLOCK)
            keys = keys[starts[:-1]]
            if pieces == 1 or bool((keys[1:] != keys[:-1]).all()):
                break
            src, index = sums, torch.arange(pieces, device=ds.device)
        in_range = (keys >= 0) & (keys < rows)  # bad ids made NaN rows in forward; never index with them
        grad[keys[in_range]] = sums[in_range]
    if 0 <= padding_idx < rows:
        grad[padding_idx] = 0
    return grad.to(dtype)


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
                eps, dropout_p, seed, padding_idx=-1):
        y, mean, rstd = embeddings_fwd(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types,
                                       weight, beta, eps, dropout_p, seed)
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
                dword if saved[0] is not None else None, dpos, dtypes, dweight, dbeta, None, None, None, None)


# ============================================================================= ahead-of-time variants
_TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _signature(kernel, constexprs: dict, t: str) -> dict:
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in ("Mean", "Rstd", "DS", "DWeightPart", "DBetaPart", "Src", "Out"):
            signature[name] = "*fp32"
        elif name in ("Seed", "InputIds", "PositionIds", "TypeIds", "Index", "Starts"):
            signature[name] = "*i64"
        elif name in ("eps", "dropout_p"):
            signature[name] = "fp32"
        elif name[0].isupper():
            signature[name] = f"*{t}"
        else:
            signature[name] = "i32"
    return signature


def aot_variants():
    """Forward and backward for each dtype, row block (384 -> 512, 768 -> 1024), word ids or
    ``inputs_embeds`` and dropout, and the table-gradient kernel, for ``fastbert check-kernels``."""
    from fastbert.check_kernels import AotVariant

    for t in _TRITON_TYPES.values():
        for block_h in (128, 512, 1024):
            for has_embeds in (False, True):
                for dropout in (False, True):
                    constexprs = dict(BLOCK_H=block_h, HAS_EMBEDS=has_embeds, HAS_DROPOUT=dropout)
                    label = f"{t} H{block_h}{' embeds' if has_embeds else ''}{' dropout' if dropout else ''}"
                    for kernel in (_embeddings_fwd, _embeddings_bwd):
                        yield AotVariant(kernel, _signature(kernel, constexprs, t), constexprs,
                                         _num_warps(block_h), 1, label)
    constexprs = dict(BLOCK_N=TABLE_BLOCK)
    yield AotVariant(_embeddings_bwd_segments, _signature(_embeddings_bwd_segments, constexprs, "fp32"),
                     constexprs, 4, 1, f"fp32 N{TABLE_BLOCK}")


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
    return embeddings_fwd(*args)


def _op_backward(dy, input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, mean, rstd,
                 dropout_p: float, seed, padding_idx: int):
    """``fastbert.ops`` adapter of :func:`embeddings_bwd`."""
    args = (dy, input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, mean, rstd,
            dropout_p, seed, padding_idx)
    reason = _unsupported(inputs_embeds, word, pos, types, weight)
    if reason:
        return torch_fallback("embeddings", "bwd", reason)(*args)
    return embeddings_bwd(*args)
