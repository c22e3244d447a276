"""Fused ``LayerNorm(dropout(x + bias) + residual)`` over rows, forward and backward.

One program normalises one row in a single pass held in registers (hidden sizes up to 8192; wider
rows run the PyTorch implementation), with fp32 statistics. Dropout uses counter-based random numbers
(:func:`.dropout.keep_row`, one Philox call per four columns) keyed by the seed tensor and the element
``(row, col)``, so backward regenerates the mask and nothing is stored;
forward saves only the fp32 ``mean``/``rstd`` per row (the op keeps ``x`` and ``residual``, which
are alive anyway). Backward gives dx, dresidual and per-program fp32 partial sums of dweight,
dbeta and dbias, summed afterwards in a fixed order straight into the parameters' dtype
(:func:`.rows.sum_partials_as`): bitwise deterministic on a device, no atomics. Its programs (a few
per SM, :func:`bwd_programs`) step over their rows in tiles of several rows, with the parameters
loaded once. Up to 1024 columns it holds whole rows in one pass; wider rows would spill its registers,
so a first pass reduces the two per-row means LayerNorm's gradient needs and the second runs over
column blocks.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastbert.ops import interpreting, torch_fallback

from . import dropout
from .launch import on_input_device
# dropout_mask: the debug keep mask, the same stream as the embeddings' (re-exported)
from .rows import (KERNEL_DTYPES, ONE_PASS_HIDDEN, SUM_TILE, TRITON_TYPES, dropout_mask,  # noqa: F401
                   normalize_row, row_block, row_num_warps, sum_partials_as, sum_variant)

# Hidden sizes the kernels take (BERT-base 768, MiniLM 384, BERT-large 1024, up to 8192); wider rows
# run the PyTorch implementation. Rows wider than ONE_PASS_HIDDEN (kernels/rows.py) take the two-pass
# backward over column blocks of that width.
MAX_HIDDEN = 8192
# Backward programs per SM, counted over the column blocks: rows in flight enough to cover the memory
# latency, while each program adds one row of partial sums to reduce. Those are summed by
# rows.sum_partials_as at its default tile, rows.SUM_TILE (64 programs by 32 columns: an H100's 512
# programs take 8 serial steps).
BWD_PROGRAMS_PER_SM = 4
REFERENCE_SMS = 132  # the SM count off a GPU (the interpreter): an H100's grid


@triton.jit
def _row_sum(x, bias_ptr, residual_ptr, key, t_hi, row, col0, cols, mask, hidden, dropout_p,
             BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr):
    """``s = dropout(x + bias) + residual`` of one row in fp32, and the kept-and-scaled factor, for the
    ``BLOCK`` columns ``cols = col0 + arange(BLOCK)``; ``key``/``t_hi`` from :func:`dropout.key_and_threshold`."""
    h = x.to(tl.float32)
    if HAS_BIAS:
        h += tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    scale = tl.full(h.shape, 1.0, tl.float32)
    if HAS_DROPOUT:
        keep = dropout.keep_row(key, t_hi, row, col0, BLOCK)
        scale = tl.where(keep, 1.0 / (1.0 - dropout_p), 0.0)
        h = h * scale
    residual = tl.load(residual_ptr + row * hidden + cols, mask=mask, other=0.0)
    return h + residual.to(tl.float32), scale


@triton.jit
def _residual_layernorm_fwd(
    X, Bias, Residual, Weight, Beta, Y, Mean, Rstd, Seed, hidden, eps, dropout_p,
    BLOCK_H: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    """One program per row. Grid ``(rows,)``."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < hidden
    base = row * hidden
    x = tl.load(X + base + cols, mask=mask, other=0.0)
    key, t_hi = dropout.key_and_threshold(Seed, dropout_p, HAS_DROPOUT)
    s, _ = _row_sum(x, Bias, Residual, key, t_hi, row, 0, cols, mask, hidden, dropout_p, BLOCK_H, HAS_BIAS,
                    HAS_DROPOUT)
    xhat, mean, rstd = normalize_row(s, mask, hidden, eps)
    w = tl.load(Weight + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(Beta + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + base + cols, (xhat * w + b).to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _residual_layernorm_bwd_terms(
    DY, X, Bias, Residual, Weight, Mean, Rstd, Seed, Terms, hidden, dropout_p,
    BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    """Rows wider than one block, pass 1 of 2: the row means ``mean(xhat * w * dy)`` and ``mean(w * dy)``
    into ``Terms (rows, 2)`` fp32, over column blocks of ``BLOCK_N``. Grid ``(rows,)``."""
    row = tl.program_id(0).to(tl.int64)
    base = row * hidden
    mean, rstd = tl.load(Mean + row), tl.load(Rstd + row)
    sum_xhat_wdy = tl.zeros([BLOCK_N], tl.float32)
    sum_wdy = tl.zeros([BLOCK_N], tl.float32)
    key, t_hi = dropout.key_and_threshold(Seed, dropout_p, HAS_DROPOUT)
    for start in range(0, hidden, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = cols < hidden
        x = tl.load(X + base + cols, mask=mask, other=0.0)
        s, _ = _row_sum(x, Bias, Residual, key, t_hi, row, start, cols, mask, hidden, dropout_p, BLOCK_N, HAS_BIAS,
                        HAS_DROPOUT)
        xhat = tl.where(mask, (s - mean) * rstd, 0.0)
        w = tl.load(Weight + cols, mask=mask, other=0.0).to(tl.float32)
        wdy = w * tl.load(DY + base + cols, mask=mask, other=0.0).to(tl.float32)
        sum_xhat_wdy += xhat * wdy
        sum_wdy += wdy
    tl.store(Terms + 2 * row, tl.sum(sum_xhat_wdy, 0) / hidden)
    tl.store(Terms + 2 * row + 1, tl.sum(sum_wdy, 0) / hidden)


@triton.jit(do_not_specialize=["rows", "rows_per_program"])  # one binary for any row count
def _residual_layernorm_bwd(
    DY, X, Bias, Residual, Weight, Mean, Rstd, Seed, Terms, DX, DRes, DWeightPart, DBetaPart, DBiasPart,
    rows, hidden, rows_per_program, dropout_p,
    ROWS: tl.constexpr, BLOCK_H: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    WIDE: tl.constexpr,
):
    """Rows ``[pid * rows_per_program, ...)`` (a multiple of ``ROWS``), ``ROWS`` at a time, columns of
    block ``program_id(1)``: dx, dresidual, and this program's fp32 partial sums of dweight, dbeta,
    dbias (row ``pid`` of the ``*Part (programs, hidden)`` buffers, written whole). Weight and bias are
    loaded once. A block holds whole rows and reduces their two row means itself, unless ``WIDE``,
    where pass 1 (``_residual_layernorm_bwd_terms``) left them in ``Terms (rows, 2)``.
    Grid ``(programs, column blocks)``."""
    pid = tl.program_id(0)
    col0 = tl.program_id(1) * BLOCK_H if WIDE else 0
    cols = col0 + tl.arange(0, BLOCK_H)
    mask = cols < hidden
    w = tl.load(Weight + cols, mask=mask, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        b = tl.load(Bias + cols, mask=mask, other=0.0).to(tl.float32)[None, :]
    # [ROWS, BLOCK_H] accumulators, summed over their rows once at the end
    dweight = tl.zeros([ROWS, BLOCK_H], tl.float32)
    dbeta = tl.zeros([ROWS, BLOCK_H], tl.float32)
    dbias = tl.zeros([ROWS, BLOCK_H], tl.float32)
    first = pid.to(tl.int64) * rows_per_program  # 64-bit rows: row * hidden may pass 2**31
    last = tl.minimum(first + rows_per_program, rows)
    for start in range(first, last, ROWS):
        row = start + tl.arange(0, ROWS)
        row_mask = row < last
        tile_mask = row_mask[:, None] & mask[None, :]
        offsets = row[:, None] * hidden + cols[None, :]
        h = tl.load(X + offsets, mask=tile_mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            h += b
        scale = tl.full([ROWS, BLOCK_H], 1.0, tl.float32)
        if HAS_DROPOUT:
            # per step: hoisted, the key's ten round keys stay live and ptxas spills the wide pass on sm_100
            key, t_hi = dropout.key_and_threshold(Seed, dropout_p, HAS_DROPOUT)
            scale = tl.where(dropout.keep_rows(key, t_hi, row[:, None], col0, ROWS, BLOCK_H), 1.0 / (1.0 - dropout_p), 0.0)
            h = h * scale
        s = h + tl.load(Residual + offsets, mask=tile_mask, other=0.0).to(tl.float32)
        rstd = tl.load(Rstd + row, mask=row_mask, other=0.0)[:, None]
        xhat = tl.where(tile_mask, (s - tl.load(Mean + row, mask=row_mask, other=0.0)[:, None]) * rstd, 0.0)
        dy = tl.load(DY + offsets, mask=tile_mask, other=0.0).to(tl.float32)
        wdy = w * dy
        # d LN / d s = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy * xhat))
        if WIDE:
            c1 = tl.load(Terms + 2 * row, mask=row_mask, other=0.0)[:, None]
            c2 = tl.load(Terms + 2 * row + 1, mask=row_mask, other=0.0)[:, None]
        else:
            c1, c2 = (tl.sum(xhat * wdy, 1) / hidden)[:, None], (tl.sum(wdy, 1) / hidden)[:, None]
        ds = tl.where(tile_mask, (wdy - (xhat * c1 + c2)) * rstd, 0.0)
        dh = ds * scale
        tl.store(DRes + offsets, ds.to(DRes.dtype.element_ty), mask=tile_mask)
        tl.store(DX + offsets, dh.to(DX.dtype.element_ty), mask=tile_mask)
        dweight += dy * xhat
        dbeta += dy
        if HAS_BIAS:
            dbias += dh
    part = pid.to(tl.int64) * hidden + cols
    tl.store(DWeightPart + part, tl.sum(dweight, 0), mask=mask)
    tl.store(DBetaPart + part, tl.sum(dbeta, 0), mask=mask)
    if HAS_BIAS:
        tl.store(DBiasPart + part, tl.sum(dbias, 0), mask=mask)


# ============================================================================= launch configuration
TERMS_NUM_WARPS = 8  # the wide backward's first pass (fp32 with a bias spills with 4 on sm_90)


def _bwd_num_warps(block_h: int, dtype: torch.dtype) -> int:
    """The one-pass backward's warps: :func:`.rows.row_num_warps`, but 4 for fp32 rows of 512, which
    spill the dropout backward with 8 under triton 3.6."""
    return 4 if block_h == 512 and dtype == torch.float32 else row_num_warps(block_h)


def _bwd_rows(block_h: int, num_warps: int) -> int:
    """Rows a backward step holds: 8 elements a thread, as a row of 1024 at 4 warps (more take the
    registers of resident programs), 1 to 16 rows."""
    return max(1, min(16, 8 * 32 * num_warps // block_h))


def bwd_programs(rows: int, rows_per_step: int, column_blocks: int, sms: int) -> tuple[int, int]:
    """``(programs, rows_per_program)`` of the backward on a device of ``sms`` SMs: up to
    ``BWD_PROGRAMS_PER_SM`` programs an SM over all ``column_blocks``, each of whole steps of
    ``rows_per_step`` rows and none empty. The partial sums, and so the gradients' last bits, depend
    on this split, and so on the device's SM count (never on anything else)."""
    if rows == 0:
        return 1, rows_per_step
    steps = triton.cdiv(rows, rows_per_step)
    target = max(1, triton.cdiv(BWD_PROGRAMS_PER_SM * sms, column_blocks))
    rows_per_program = rows_per_step * triton.cdiv(steps, min(steps, target))
    return triton.cdiv(rows, rows_per_program), rows_per_program


def _bwd_config(hidden: int, dtype: torch.dtype) -> tuple[bool, int, int, int]:
    """``(wide, block_h, num_warps, rows_per_step)`` of the backward's main kernel."""
    wide = hidden > ONE_PASS_HIDDEN
    block_h = ONE_PASS_HIDDEN if wide else row_block(hidden)
    num_warps = row_num_warps(block_h) if wide else _bwd_num_warps(block_h, dtype)
    return wide, block_h, num_warps, _bwd_rows(block_h, num_warps)


def bwd_grid(rows: int, hidden: int, dtype: torch.dtype, sms: int) -> tuple[int, int, int]:
    """``(programs, column_blocks, rows_per_program)`` of the backward of ``(rows, hidden)`` in ``dtype``
    on ``sms`` SMs: its grid is ``(programs, column_blocks)``."""
    _, block_h, _, step = _bwd_config(hidden, dtype)
    column_blocks = triton.cdiv(hidden, block_h)
    programs, rows_per_program = bwd_programs(rows, step, column_blocks, sms)
    return programs, column_blocks, rows_per_program


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def device_sms(device: torch.device) -> int:
    """The SM count :func:`bwd_programs` plans for: the CUDA device's, else ``REFERENCE_SMS``."""
    if device.type != "cuda" or interpreting():
        return REFERENCE_SMS
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def check_inputs(x: Tensor, bias: Optional[Tensor], residual: Tensor, weight: Tensor, beta: Tensor,
                 dropout_p: float, seed: Optional[Tensor]) -> None:
    """Raises ``TypeError``/``ValueError`` naming the bad argument, before any kernel runs."""
    if x.dim() != 2:
        raise ValueError(f"residual_layernorm: x must be (rows, hidden), got shape {tuple(x.shape)}")
    hidden = x.shape[1]
    for name, t in (("x", x), ("residual", residual), ("weight", weight), ("beta", beta), ("bias", bias)):
        if t is not None and t.dtype not in KERNEL_DTYPES:
            raise TypeError(f"residual_layernorm: {name} must be float16, bfloat16 or float32, got {t.dtype}")
    if residual.shape != x.shape:
        raise ValueError(f"residual_layernorm: residual has shape {tuple(residual.shape)}, x {tuple(x.shape)}")
    for name, t in (("weight", weight), ("beta", beta), ("bias", bias)):
        if t is not None and tuple(t.shape) != (hidden,):
            raise ValueError(f"residual_layernorm: {name} must be ({hidden},), got {tuple(t.shape)}")
    if not 1 <= hidden <= MAX_HIDDEN:
        raise ValueError(f"residual_layernorm: hidden must be in [1, {MAX_HIDDEN}], got {hidden}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"residual_layernorm: dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_p > 0.0 and (seed is None or seed.dtype != torch.int64 or seed.numel() != 1):
        raise ValueError("residual_layernorm: dropout_p > 0 needs seed, an int64 tensor of one element")


# ============================================================================= launchers
@on_input_device
def residual_layernorm_fwd(x: Tensor, bias: Optional[Tensor], residual: Tensor, weight: Tensor, beta: Tensor,
                           eps: float, dropout_p: float, seed: Optional[Tensor]):
    """``(y, mean, rstd)`` for ``(rows, hidden)`` inputs; ``y`` in x's dtype, statistics fp32 ``(rows,)``.
    The signature of :func:`fastbert.torch_ops.residual_layernorm_fwd`."""
    check_inputs(x, bias, residual, weight, beta, dropout_p, seed)
    x, residual, weight, beta = x.contiguous(), residual.contiguous(), weight.contiguous(), beta.contiguous()
    bias = bias.contiguous() if bias is not None else None
    rows, hidden = x.shape
    y = torch.empty_like(x)
    mean = torch.empty(rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    if rows == 0:
        return y, mean, rstd
    block_h = row_block(hidden)
    _residual_layernorm_fwd[(rows,)](
        x, bias if bias is not None else x, residual, weight, beta, y, mean, rstd,
        seed if seed is not None else mean, hidden, float(eps), float(dropout_p),
        BLOCK_H=block_h, HAS_BIAS=bias is not None, HAS_DROPOUT=dropout_p > 0.0, num_warps=row_num_warps(block_h),
        num_stages=1)
    return y, mean, rstd


@on_input_device
def residual_layernorm_bwd(dy: Tensor, x: Tensor, bias: Optional[Tensor], residual: Tensor, weight: Tensor,
                           mean: Tensor, rstd: Tensor, dropout_p: float, seed: Optional[Tensor]):
    """``(dx, dbias, dresidual, dweight, dbeta)``; ``dbias`` is empty when ``bias`` is None.
    The signature of :func:`fastbert.torch_ops.residual_layernorm_bwd`."""
    x, residual, dy, weight = x.contiguous(), residual.contiguous(), dy.contiguous(), weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    rows, hidden = x.shape
    dx = torch.empty_like(x)
    dres = torch.empty_like(residual)
    wide, block_h, num_warps, step = _bwd_config(hidden, x.dtype)
    programs, column_blocks, rows_per_program = bwd_grid(rows, hidden, x.dtype, device_sms(x.device))
    # every program writes its whole row of partial sums; without rows there are none to write
    parts = (torch.empty if rows else torch.zeros)(3 if bias is not None else 2, programs, hidden,
                                                   dtype=torch.float32, device=x.device)
    seed_arg, bias_arg = seed if seed is not None else mean, bias if bias is not None else x
    terms = torch.empty(rows, 2, dtype=torch.float32, device=x.device) if wide else mean
    if rows and wide:
        _residual_layernorm_bwd_terms[(rows,)](
            dy, x, bias_arg, residual, weight, mean, rstd, seed_arg, terms, hidden, float(dropout_p),
            BLOCK_N=block_h, HAS_BIAS=bias is not None, HAS_DROPOUT=dropout_p > 0.0,
            num_warps=TERMS_NUM_WARPS, num_stages=1)
    if rows:
        _residual_layernorm_bwd[(programs, column_blocks)](
            dy, x, bias_arg, residual, weight, mean, rstd, seed_arg, terms, dx, dres, parts[0], parts[1],
            parts[-1], rows, hidden, rows_per_program, float(dropout_p),
            ROWS=step, BLOCK_H=block_h, HAS_BIAS=bias is not None, HAS_DROPOUT=dropout_p > 0.0, WIDE=wide,
            num_warps=num_warps, num_stages=1)
    dtypes = (weight.dtype, weight.dtype) + ((bias.dtype,) if bias is not None else ())
    dweight, dbeta, *dbias = sum_partials_as(parts, dtypes)
    return dx, dbias[0] if bias is not None else x.new_empty(0), dres, dweight, dbeta


def residual_layernorm_reference(x, bias, residual, weight, beta, eps: float, keep: Optional[Tensor] = None,
                                 dropout_p: float = 0.0) -> Tensor:
    """The same math in PyTorch (in x's dtype, or the dtype the inputs promote to)."""
    h = x if bias is None else x + bias
    if keep is not None:
        h = h * keep.to(h.dtype) / (1.0 - dropout_p)
    s = h + residual
    return torch.nn.functional.layer_norm(s, (x.shape[-1],), weight.to(s.dtype), beta.to(s.dtype), eps)


class FusedResidualLayerNorm(torch.autograd.Function):
    """Autograd wrapper of the kernels for standalone use (the model goes through ``fastbert.ops``)."""

    @staticmethod
    def forward(ctx, x, bias, residual, weight, beta, eps, dropout_p, seed):
        y, mean, rstd = residual_layernorm_fwd(x, bias, residual, weight, beta, eps, dropout_p, seed)
        ctx.save_for_backward(x, bias, residual, weight, mean, rstd, seed)
        ctx.dropout_p = dropout_p
        return y

    @staticmethod
    def backward(ctx, dy):
        x, bias, residual, weight, mean, rstd, seed = ctx.saved_tensors
        dx, dbias, dres, dweight, dbeta = residual_layernorm_bwd(dy, x, bias, residual, weight, mean, rstd,
                                                                 ctx.dropout_p, seed)
        return dx, dbias if bias is not None else None, dres, dweight, dbeta, None, None, None


# ============================================================================= ahead-of-time variants
def _signature(kernel, constexprs: dict, t: str) -> dict:
    from fastbert.check_kernels import signature_of

    fp32 = ("Mean", "Rstd", "Terms", "DWeightPart", "DBetaPart", "DBiasPart")
    return signature_of(kernel, constexprs, t, fp32_pointers=fp32, i64_pointers=("Seed",))


def _variant(kernel, constexprs: dict, t: str, num_warps: int, label: str):
    """The variant as launched for a hidden size that is a multiple of 16 (BERT's are: the JIT then
    specializes ``hidden`` as divisible by 16)."""
    from fastbert.check_kernels import AotVariant, aligned_arguments

    signature = _signature(kernel, constexprs, t)
    return AotVariant(kernel, signature, constexprs, num_warps, 1, label, aligned_arguments(signature, ("hidden",)))


def aot_variants(arch: int):
    """Every launch for each dtype (bf16 from sm_80), bias and dropout, for ``fastbert check-kernels``:
    the forward at row blocks 128 (hidden 96), 512 (384), 1024 and 2048..8192, the one-pass backward
    up to 1024, both passes of the wide backward, and the sum of the partial sums."""
    for dtype, t in TRITON_TYPES.items():
        if dtype == torch.bfloat16 and arch < 80:
            continue
        for has_bias in (False, True):
            for dropout in (False, True):
                flags = dict(HAS_BIAS=has_bias, HAS_DROPOUT=dropout)
                extra = f"{' bias' if has_bias else ''}{' dropout' if dropout else ''}"
                launches = [(_residual_layernorm_fwd, dict(BLOCK_H=b), f"H{b}")
                            for b in (128, 512, 1024, 2048, 4096, 8192)]
                launches += [(_residual_layernorm_bwd, dict(BLOCK_H=b, WIDE=False), f"H{b}")
                             for b in (128, 512, ONE_PASS_HIDDEN)]
                launches += [(_residual_layernorm_bwd, dict(BLOCK_H=ONE_PASS_HIDDEN, WIDE=True), "wide"),
                             (_residual_layernorm_bwd_terms, dict(BLOCK_N=ONE_PASS_HIDDEN), "wide")]
                for kernel, blocks, width in launches:
                    constexprs = dict(blocks, **flags)
                    block = blocks.get("BLOCK_H", blocks.get("BLOCK_N"))
                    one_pass = kernel is _residual_layernorm_bwd and not blocks["WIDE"]
                    warps = _bwd_num_warps(block, dtype) if one_pass else row_num_warps(block)
                    if kernel is _residual_layernorm_bwd_terms:
                        warps = TERMS_NUM_WARPS
                    if kernel is _residual_layernorm_bwd:
                        constexprs["ROWS"] = _bwd_rows(block, warps)
                    yield _variant(kernel, constexprs, t, warps, f"{t} {width}{extra}")
        yield sum_variant(t, SUM_TILE, f"{t} partial sums")  # the tile residual_layernorm_bwd launches


# ============================================================================= op adapters
def _unsupported(x: Tensor, residual: Tensor, weight: Tensor) -> Optional[str]:
    """Why the kernels cannot take these inputs (the op then runs PyTorch), or None."""
    for t in (x, residual, weight):
        if t.dtype not in KERNEL_DTYPES:
            return f"dtype {t.dtype}"
    if x.shape[-1] > MAX_HIDDEN:
        return f"hidden {x.shape[-1]} > {MAX_HIDDEN}"
    return None


def _op_forward(x, bias, residual, weight, beta, eps: float, dropout_p: float, seed):
    """``fastbert.ops`` adapter of :func:`residual_layernorm_fwd` (PyTorch for what it cannot take)."""
    reason = _unsupported(x, residual, weight)
    if reason:
        fallback = torch_fallback("residual_layernorm", "fwd", reason)
        return fallback(x, bias, residual, weight, beta, eps, dropout_p, seed)
    return residual_layernorm_fwd(x, bias, residual, weight, beta, eps, dropout_p, seed)


def _op_backward(dy, x, bias, residual, weight, mean, rstd, dropout_p: float, seed):
    """``fastbert.ops`` adapter of :func:`residual_layernorm_bwd`."""
    reason = _unsupported(x, residual, weight)
    if reason:
        fallback = torch_fallback("residual_layernorm", "bwd", reason)
        return fallback(dy, x, bias, residual, weight, mean, rstd, dropout_p, seed)
    return residual_layernorm_bwd(dy, x, bias, residual, weight, mean, rstd, dropout_p, seed)
