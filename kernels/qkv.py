"""BERT's fused QKV projection ``[q | k | v] = x @ [Wq; Wk; Wv]^T + [bq; bk; bv]`` without stacking the weights.

- ``_qkv_fwd``: one GEMM ``out (tokens, 3 * hidden)`` that reads the three ``(hidden, hidden_in)``
  weights and three ``(hidden,)`` biases from their own pointers. The output columns are split into three
  parts of ``hidden`` columns each; every tile of ``BLOCK_N`` columns lies inside one part (each part has
  ``cdiv(hidden, BLOCK_N)`` tile columns, the last one masked), so a tile picks its weight and bias
  pointer once (a scalar select) and its K loop is exactly :mod:`kernels.ffn`'s. Any ``hidden`` works
  (96, 40: not a multiple of the tile), at the cost of ``3 * cdiv(hidden, BLOCK_N)`` tile columns
  instead of ``cdiv(3 * hidden, BLOCK_N)`` where ``hidden`` is not a multiple of ``BLOCK_N``.
- The output is one contiguous ``(tokens, 3 * hidden)`` tensor in x's dtype, which the model views as
  ``(tokens, 3, heads, head_dim)``.

So the forward launches one kernel where ``F.linear(x, torch.cat([Wq, Wk, Wv]), torch.cat([bq, bk, bv]))``
launches two concatenations and a GEMM, and autograd keeps no ``(3 * hidden, hidden_in)`` copy of the
weights for backward (the parameters themselves are saved). The stacked weight cannot be cached: fused
AdamW updates the parameters in place without bumping their version counters.

- ``_qkv_bwd_dx``: ``dX = dOut[:, :H] @ Wq + dOut[:, H:2H] @ Wk + dOut[:, 2H:] @ Wv`` (plus, when given,
  another op's gradient of x, added in the epilogue): one GEMM whose K loop walks the three weights where
  they are, so backward concatenates no weights either.

  The same launch sums dOut's columns for the biases' gradient, in programs past the GEMM's tiles.

The weights' gradient (:func:`qkv_bwd`) is one PyTorch ``(3 * hidden, hidden_in)`` GEMM, returned as three
row-block views.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastbert import torch_ops
from fastbert.ops import torch_fallback
from fastbert.routing import TENSOR_CORE_CAPABILITY

from .gemm import GROUP_M, config, fits_shape, matmul, matmul_into, operand_kind, smem_bytes, tile, tile_start
from .launch import TunedKernel, cast_rne, device_arch, device_smem_limit, fitting, input_precision, on_input_device, \
    smem_limit, upcast

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# The token count and its bucket (a tuning key only) are not specialized: one binary for any batch.
@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _qkv_fwd(
    X, Wq, Wk, Wv, Bq, Bk, Bv, Out, M, H, K, stride_xm, stride_xk, stride_wn, stride_wk, M_BUCKET,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """``Out[:, p*H:(p+1)*H] = X @ W_p^T + B_p`` for the parts ``p`` = q, k, v: ``X (M, K)``, each ``W_p
    (H, K)`` (one pair of strides for the three), ``B_p (H,)``, ``Out (M, 3H)`` contiguous.
    Grid ``(cdiv(M, BLOCK_M) * 3 * cdiv(H, BLOCK_N),)``."""
    part_width = tl.cdiv(H, BLOCK_N) * BLOCK_N  # the padded width of one part in tile columns
    row0, col0 = tile_start(M, 3 * part_width, BLOCK_M, BLOCK_N, GROUP_M)
    part = col0 // part_width  # 0: q, 1: k, 2: v; the same for the whole tile
    W = tl.where(part == 0, Wq, tl.where(part == 1, Wk, Wv))
    rows = row0 + tl.arange(0, BLOCK_M)
    cols = (col0 - part * part_width) + tl.arange(0, BLOCK_N)  # within the part
    acc = matmul(X, W, rows, cols, M, H, K, stride_xm, stride_xk, stride_wk, stride_wn, BLOCK_K,
                  INPUT_PRECISION, UPCAST)
    if HAS_BIAS:
        Bias = tl.where(part == 0, Bq, tl.where(part == 1, Bk, Bv))
        acc += tl.load(Bias + cols, mask=cols < H, other=0.0).to(tl.float32)[None, :]
    offsets = rows[:, None].to(tl.int64) * (3 * H) + (part * H + cols)[None, :]
    mask = (rows[:, None] < M) & (cols[None, :] < H)
    tl.store(Out + offsets, cast_rne(acc, Out.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _qkv_bwd_dx(
    DOut, Wq, Wk, Wv, Into, DX, DB, M, H, K, stride_dm, stride_wn, stride_wk, M_BUCKET,
    HAS_INTO: tl.constexpr, HAS_DB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """``DX = sum_p DOut[:, p*H:(p+1)*H] @ W_p (+ Into)`` over the parts ``p`` = q, k, v: ``DOut (M, 3H)``
    with a unit inner stride, each ``W_p (H, K)`` (one pair of strides for the three), ``Into`` and ``DX``
    ``(M, K)`` contiguous; with ``HAS_DB`` also the biases' gradient ``DB (3H,)``, the column sums of DOut.
    Grid ``(cdiv(M, BLOCK_M) * cdiv(K, BLOCK_N) + (cdiv(3H, BLOCK_N) if HAS_DB else 0),)``: the programs
    past the GEMM's tiles each sum one block of DOut's columns over every row, in a fixed order (no
    atomics: deterministic), in the same launch."""
    gemm_programs = tl.cdiv(M, BLOCK_M) * tl.cdiv(K, BLOCK_N)
    if HAS_DB and tl.program_id(0) >= gemm_programs:
        _column_sums(DOut, DB, tl.program_id(0) - gemm_programs, M, 3 * H, stride_dm, BLOCK_N)
    else:
        _dx_tile(DOut, Wq, Wk, Wv, Into, DX, M, H, K, stride_dm, stride_wn, stride_wk, HAS_INTO, BLOCK_M, BLOCK_N,
                 BLOCK_K, GROUP_M, INPUT_PRECISION, UPCAST)


@triton.jit
def _dx_tile(DOut, Wq, Wk, Wv, Into, DX, M, H, K, stride_dm, stride_wn, stride_wk, HAS_INTO: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
             INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """One ``(BLOCK_M, BLOCK_N)`` tile of :func:`_qkv_bwd_dx`'s DX."""
    rows, cols = tile(M, K, BLOCK_M, BLOCK_N, GROUP_M)
    # Each part is a GEMM over H with W_p as the (H, K) right operand: its rows are the reduction.
    acc = matmul(DOut, Wq, rows, cols, M, K, H, stride_dm, 1, stride_wn, stride_wk, BLOCK_K, INPUT_PRECISION,
                 UPCAST)
    acc = matmul_into(acc, DOut + H, Wk, rows, cols, M, K, H, stride_dm, 1, stride_wn, stride_wk, BLOCK_K,
                      INPUT_PRECISION, UPCAST)
    acc = matmul_into(acc, DOut + 2 * H, Wv, rows, cols, M, K, H, stride_dm, 1, stride_wn, stride_wk, BLOCK_K,
                      INPUT_PRECISION, UPCAST)
    offsets = rows[:, None].to(tl.int64) * K + cols[None, :]
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    if HAS_INTO:
        acc += tl.load(Into + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.store(DX + offsets, cast_rne(acc, DX.dtype.element_ty), mask=mask)


_SUM_ROWS = 16  # rows a column-sum program adds per step: a small tile, so the branch adds no registers


@triton.jit
def _column_sums(A, Out, block, M, N, stride_am, BLOCK_N: tl.constexpr, ROWS: tl.constexpr = _SUM_ROWS):
    """``Out[cols] = sum over rows of A[:, cols]`` (fp32) for column block ``block`` of ``A (M, N)``."""
    cols = block * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, ROWS)
    acc = tl.zeros([ROWS, BLOCK_N], tl.float32)
    for m in range(0, M, ROWS):
        ptrs = A + (m + rows)[:, None].to(tl.int64) * stride_am + cols[None, :]
        acc += tl.load(ptrs, mask=((m + rows)[:, None] < M) & (cols[None, :] < N), other=0.0).to(tl.float32)
    tl.store(Out + cols, cast_rne(tl.sum(acc, axis=0), Out.dtype.element_ty), mask=cols < N)


# ============================================================================= tiles and autotuning
# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) per operand kind; the first is the default (interpreter,
# deterministic mode). The tiles of kernels/ffn.py's forward (this kernel is its K loop with a bias
# epilogue and no GELU), for the forward and the backward's dX alike; every entry compiles without spills
# on sm_80 and sm_90 (fastbert check-kernels) except those listed in _SPILLS.
_TILES = {
    "16bit": [(128, 128, 64, 8, 3), (128, 128, 32, 8, 4), (128, 64, 64, 8, 3), (64, 128, 64, 4, 3),
              (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 4, 4), (32, 64, 32, 4, 4)],
    "tf32": [(128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (128, 128, 32, 8, 3), (64, 64, 32, 4, 3),
             (64, 64, 32, 8, 3)],
    "ieee": [(64, 64, 32, 8, 2), (32, 64, 32, 4, 2), (64, 32, 32, 4, 2), (32, 32, 32, 4, 2)],
}
# kernel -> operands -> {tile: the archs it spills on (None: all)}, a few bytes each (dX's three K loops and
# its column-sum branch): the ieee M64 N32 tile with triton 3.6, the other two with 3.9; all left out under both.
_SPILLS: dict = {"fwd": {}, "dx": {"ieee": {(64, 64, 32, 8, 2): (80,), (64, 32, 32, 4, 2): (90,)},
                                   "tf32": {(128, 128, 32, 8, 3): (80,)}}}


def tile_configs(dtype: torch.dtype, precision: str, limit: Optional[int] = None,
                 arch: Optional[int] = None, kernel: str = "fwd") -> tuple:
    """The launch configs of ``_qkv_fwd`` (``kernel="fwd"``) or ``_qkv_bwd_dx`` (``"dx"``) for a dtype and
    ``tl.dot``'s input precision (which only matters for fp32), default first, less those that spill on
    ``arch`` (on any, when None); with ``limit`` (bytes of shared memory) only those that fit it."""
    operands = operand_kind(dtype, precision)
    spilling = {tile for tile, archs in _SPILLS[kernel].get(operands, {}).items()
                if archs is None or arch is None or arch in archs}
    configs = [config(t) for t in _TILES[operands] if t not in spilling]
    return tuple(fitting(configs, lambda c: smem_bytes(c, dtype), limit))


def _allowed(named_args, meta):
    """The tiles proven for this dtype and precision that fit the device, sized for one part of the
    output (the default tile alone when nothing else fits)."""
    out = named_args["Out"]
    proven = tile_configs(out.dtype, meta["INPUT_PRECISION"], device_smem_limit(out.device), device_arch(out.device))
    return [c for c in proven if fits_shape(c, named_args["M_BUCKET"], named_args["H"])] or proven[:1]


def _allowed_dx(named_args, meta):
    """As :func:`_allowed`, for dX's ``(tokens, hidden_in)`` output."""
    dx = named_args["DX"]
    proven = tile_configs(dx.dtype, meta["INPUT_PRECISION"], device_smem_limit(dx.device), device_arch(dx.device),
                          kernel="dx")
    return [c for c in proven if fits_shape(c, named_args["M_BUCKET"], named_args["K"])] or proven[:1]


_ALL_CONFIGS = [config(t) for t in sorted({t for table in _TILES.values() for t in table})]
# M_BUCKET (next power of two of the token count M) keys the tuning instead of the token count itself.
_TUNED = TunedKernel(_qkv_fwd, _ALL_CONFIGS, ("M_BUCKET", "H", "K", "INPUT_PRECISION"), _allowed)
_TUNED_DX = TunedKernel(_qkv_bwd_dx, _ALL_CONFIGS,
                        ("M_BUCKET", "H", "K", "INPUT_PRECISION", "HAS_INTO", "HAS_DB"), _allowed_dx)


# ============================================================================= checks and launchers
def check_inputs(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, bq: Optional[Tensor], bk: Optional[Tensor],
                 bv: Optional[Tensor]) -> None:
    """Raises ``ValueError`` naming the bad argument, before any kernel runs.

    x ``(tokens, hidden_in)``; wq, wk, wv ``(hidden, hidden_in)``; bq, bk, bv ``(hidden,)``, all three or
    none; one floating dtype (float16, bfloat16, float32) and one device for all.
    """
    named = (("x", x), ("wq", wq), ("wk", wk), ("wv", wv), ("bq", bq), ("bk", bk), ("bv", bv))
    for name, t in named:
        if name[0] == "b" and t is None:
            continue
        if not isinstance(t, Tensor):
            raise ValueError(f"qkv: {name} must be a tensor, got {type(t).__name__}")
        if t.dtype not in KERNEL_DTYPES:
            raise ValueError(f"qkv: {name} must be float16, bfloat16 or float32, got {t.dtype}")
        if t.dtype != x.dtype:
            raise ValueError(f"qkv: {name} has dtype {t.dtype}, x {x.dtype}; cast them to one dtype")
        if t.device != x.device:
            raise ValueError(f"qkv: {name} is on {t.device}, x on {x.device}")
    if x.dim() != 2:
        raise ValueError(f"qkv: x must be 2-D (tokens, hidden_in), got shape {tuple(x.shape)}")
    if wq.dim() != 2 or wq.shape[1] != x.shape[1]:
        raise ValueError(f"qkv: wq must be (hidden, {x.shape[1]}) for x's {x.shape[1]} features, "
                         f"got {tuple(wq.shape)}")
    for name, w in (("wk", wk), ("wv", wv)):
        if w.shape != wq.shape:
            raise ValueError(f"qkv: {name} must be {tuple(wq.shape)} like wq, got {tuple(w.shape)}")
    biases = (("bq", bq), ("bk", bk), ("bv", bv))
    given = [name for name, b in biases if b is not None]
    if given and len(given) != 3:
        missing = ", ".join(name for name, b in biases if b is None)
        raise ValueError(f"qkv: give all three biases or none; {missing} is None but {', '.join(given)} is not")
    for name, b in biases:
        if b is not None and tuple(b.shape) != (wq.shape[0],):
            raise ValueError(f"qkv: {name} must be ({wq.shape[0]},), got {tuple(b.shape)}")


def _weights(wq: Tensor, wk: Tensor, wv: Tensor) -> tuple:
    """The three weights with a unit inner stride and one row stride (nn.Linear's are as they are)."""
    ws = [w if w.stride(1) == 1 or w.shape[1] <= 1 else w.contiguous() for w in (wq, wk, wv)]
    if len({w.stride(0) for w in ws}) > 1 or any(w.stride(1) != 1 for w in ws):
        ws = [w.contiguous() for w in ws]
    return tuple(ws)


@on_input_device
def qkv_forward(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, bq: Optional[Tensor] = None,
                bk: Optional[Tensor] = None, bv: Optional[Tensor] = None) -> Tensor:
    """``out = x @ [wq; wk; wv]^T + [bq; bk; bv]``, one contiguous ``(tokens, 3 * hidden)`` tensor in x's
    dtype (view it as ``(tokens, 3, heads, head_dim)``), in one launch and without concatenating the
    weights. ``x`` may be strided (a unit inner stride is used as is, anything else is copied)."""
    check_inputs(x, wq, wk, wv, bq, bk, bv)
    return _launch(x, wq, wk, wv, bq, bk, bv)


def _launch(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, bq: Optional[Tensor], bk: Optional[Tensor],
            bv: Optional[Tensor], out: Optional[Tensor] = None) -> Tensor:
    """``_qkv_fwd`` for checked inputs into ``out (tokens, 3 * hidden)`` contiguous (a fresh one when None),
    which it returns; ``x`` and the weights get unit inner strides and one weight row stride first."""
    if x.stride(1) != 1 and x.shape[1] > 1:
        x = x.contiguous()
    wq, wk, wv = _weights(wq, wk, wv)
    if out is None:
        out = x.new_empty(x.shape[0], 3 * wq.shape[0])
    (M, K), H = x.shape, wq.shape[0]
    if not (M and H):
        return out
    has_bias = bq is not None
    bq, bk, bv = (b.contiguous() for b in (bq, bk, bv)) if has_bias else (x, x, x)
    grid = lambda m: (triton.cdiv(M, m["BLOCK_M"]) * 3 * triton.cdiv(H, m["BLOCK_N"]),)  # noqa: E731
    _TUNED.launch(grid, x, wq, wk, wv, bq, bk, bv, out, M, H, K, x.stride(0), x.stride(1), wq.stride(0),
                  wq.stride(1), triton.next_power_of_2(M), device=x.device, HAS_BIAS=has_bias, GROUP_M=GROUP_M,
                  INPUT_PRECISION=input_precision(x.dtype, x.device), UPCAST=upcast(x.dtype))
    return out


def qkv_reference(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, bq: Optional[Tensor] = None,
                  bk: Optional[Tensor] = None, bv: Optional[Tensor] = None) -> Tensor:
    """The same math in PyTorch, in the inputs' dtype: ``F.linear`` of the concatenated weights."""
    bias = torch.cat([bq, bk, bv]) if bq is not None else None
    return torch.nn.functional.linear(x, torch.cat([wq, wk, wv]), bias)


@on_input_device
def qkv_bwd(dout: Tensor, x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, has_bias: bool, weight_grads: bool = True,
            dx_into: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dw, db)`` of :func:`qkv_forward` from ``dout (tokens, 3 * hidden)``, with the signature of
    :func:`fastbert.torch_ops.qkv_bwd`: ``dx`` from ``_qkv_bwd_dx`` (the three weights read where they are,
    ``dx_into`` added when given), ``dw (3 * hidden, hidden_in)`` and ``db (3 * hidden,)`` PyTorch's (both
    empty without ``weight_grads``, ``db`` without a bias). Inputs as the forward's, checked."""
    (M, K), H = x.shape, wq.shape[0]
    dout = dout.reshape(M, 3 * H)
    if dout.stride(1) != 1 and dout.shape[1] > 1:
        dout = dout.contiguous()
    wq, wk, wv = _weights(wq, wk, wv)
    if dx_into is not None and tuple(dx_into.shape) != (M, K):
        raise ValueError(f"qkv backward: dx_into must be ({M}, {K}) like x, got {tuple(dx_into.shape)}")
    into = dx_into is not None and dx_into.dtype == x.dtype and dx_into.is_contiguous()
    with_db = has_bias and weight_grads
    dx = x.new_empty(M, K)
    db = x.new_empty(3 * H if with_db else 0)
    if M and K:
        def grid(meta):
            tiles = triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(K, meta["BLOCK_N"])
            return (tiles + (triton.cdiv(3 * H, meta["BLOCK_N"]) if with_db else 0),)
        _TUNED_DX.launch(grid, dout, wq, wk, wv, dx_into if into else dx, dx, db if with_db else dx, M, H, K,
                         dout.stride(0), wq.stride(0), wq.stride(1), triton.next_power_of_2(M), device=x.device,
                         HAS_INTO=into, HAS_DB=with_db, GROUP_M=GROUP_M,
                         INPUT_PRECISION=input_precision(x.dtype, x.device), UPCAST=upcast(x.dtype))
    elif with_db:
        db = dout.sum(0, dtype=torch.float32).to(x.dtype)  # no rows (or no columns of x): zeros
    if dx_into is not None and not into:
        dx += dx_into
    if not weight_grads:
        return dx, wq.new_empty(0), wq.new_empty(0)
    return dx, dout.t() @ x, db


def qkv_backward(dout: Tensor, x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor,
                 has_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dx, dwq, dwk, dwv, db)`` of :func:`qkv_forward` from ``dout (tokens, 3 * hidden)`` (or any view of
    that many elements per token, e.g. ``(tokens, 3, heads, head_dim)``): ``dx`` from ``_qkv_bwd_dx``, the
    weight gradients row blocks (views) of one GEMM, ``db`` one ``(3 * hidden,)`` tensor whose
    ``hidden``-long blocks are the gradients of bq, bk, bv (empty without a bias).
    """
    check_inputs(x, wq, wk, wv, None, None, None)
    dx, dw, db = qkv_bwd(dout, x, wq, wk, wv, has_bias)
    H = wq.shape[0]
    return dx, dw[:H], dw[H:2 * H], dw[2 * H:], db


class FusedQKV(torch.autograd.Function):
    """Autograd wrapper for standalone use (the model goes through ``fastbert.ops``): saves x and the three
    weights as they are, no concatenated copy."""

    @staticmethod
    def forward(ctx, x, wq, wk, wv, bq=None, bk=None, bv=None):
        out = qkv_forward(x, wq, wk, wv, bq, bk, bv)
        ctx.save_for_backward(x, wq, wk, wv)
        ctx.has_bias = bq is not None
        return out

    @staticmethod
    def backward(ctx, dout):
        x, wq, wk, wv = ctx.saved_tensors
        dx, dwq, dwk, dwv, db = qkv_backward(dout, x, wq, wk, wv, ctx.has_bias)
        dbq, dbk, dbv = db.view(3, -1).unbind(0) if ctx.has_bias else (None, None, None)
        return dx, dwq, dwk, dwv, dbq, dbk, dbv


# ============================================================================= ahead-of-time variants
_TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
# The strides the launcher passes as 1 (the JIT specializes them to constants), the integer arguments
# that are multiples of 16 for BERT's sizes (the token count is not), and the heaviest form (with biases).
_UNIT_STRIDES = ("stride_xk", "stride_wk")
_INTS = ("M", "H", "K", "M_BUCKET")
_ALIGNED_INTS = ("H", "K", "stride_xm", "stride_wn")
_ALIGNED_INTS_DX = ("H", "K", "stride_dm", "stride_wn")


def aot_variants(arch: int):
    """Every (tile, dtype, precision) :func:`qkv_forward` can run on compute capability ``arch`` (the
    tiles that fit its shared memory; none before sm_80, where the GEMMs run PyTorch), for ``fastbert
    check-kernels``. Labels as ffn's forward ("fp16 fwd M128 N128 K64"), op "qkv"."""
    from fastbert.check_kernels import AotVariant, signature_of
    if arch < TENSOR_CORE_CAPABILITY[0] * 10:
        return  # the dot ops run PyTorch there (fastbert.routing)

    for dtype, t in _TRITON_TYPES.items():
        for precision in (("ieee", "tf32") if dtype == torch.float32 else ("tf32",)):
            name = f"{t}{'-' + precision if dtype == torch.float32 else ''}"
            for config in tile_configs(dtype, precision, smem_limit(arch), arch):
                constexprs = dict(config.kwargs, GROUP_M=GROUP_M, INPUT_PRECISION=precision, UPCAST=False,
                                  HAS_BIAS=True)
                constexprs.update({stride: 1 for stride in _UNIT_STRIDES})
                signature = signature_of(_qkv_fwd, constexprs, t, ints=_INTS)
                aligned = tuple(n for n in _qkv_fwd.arg_names if signature[n].startswith("*") or n in _ALIGNED_INTS)
                label = "{} fwd M{BLOCK_M} N{BLOCK_N} K{BLOCK_K}".format(name, **config.kwargs)
                yield AotVariant(_qkv_fwd, signature, constexprs, config.num_warps, config.num_stages, label,
                                 aligned, tensor_cores=precision != "ieee")
            for config in tile_configs(dtype, precision, smem_limit(arch), arch, kernel="dx"):
                constexprs = dict(config.kwargs, GROUP_M=GROUP_M, INPUT_PRECISION=precision, UPCAST=False,
                                  HAS_INTO=True, HAS_DB=True, stride_wk=1)
                signature = signature_of(_qkv_bwd_dx, constexprs, t, ints=_INTS)
                aligned = tuple(n for n in _qkv_bwd_dx.arg_names
                                if signature[n].startswith("*") or n in _ALIGNED_INTS_DX)
                label = "{} bwd-dx M{BLOCK_M} N{BLOCK_N} K{BLOCK_K}".format(name, **config.kwargs)
                yield AotVariant(_qkv_bwd_dx, signature, constexprs, config.num_warps, config.num_stages, label,
                                 aligned, tensor_cores=precision != "ieee")


# ============================================================================= op adapter
@on_input_device
def _op_forward(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, bq: Optional[Tensor], bk: Optional[Tensor],
                bv: Optional[Tensor]) -> Tensor:
    """``fastbert.ops`` adapter (shapes checked there): the kernel, or PyTorch's implementation for dtypes
    it does not take (float64, mixed)."""
    tensors = [t for t in (x, wq, wk, wv, bq, bk, bv) if t is not None]
    if any(t.dtype not in KERNEL_DTYPES or t.dtype != x.dtype for t in tensors):
        reason = f"dtypes {sorted({str(t.dtype) for t in tensors})}"
        return torch_fallback("qkv", "fwd", reason)(x, wq, wk, wv, bq, bk, bv)
    return _launch(x, wq, wk, wv, bq, bk, bv)


@on_input_device
def _op_backward(dout: Tensor, x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, has_bias: bool, weight_grads: bool,
                 dx_into: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """``fastbert.ops`` adapter of :func:`qkv_bwd`, or PyTorch's implementation for dtypes the kernel does
    not take."""
    tensors = (dout, x, wq, wk, wv)
    if any(t.dtype not in KERNEL_DTYPES or t.dtype != x.dtype for t in tensors):
        reason = f"dtypes {sorted({str(t.dtype) for t in tensors})}"
        return torch_fallback("qkv", "bwd", reason)(dout, x, wq, wk, wv, has_bias, weight_grads, dx_into)
    return qkv_bwd(dout, x, wq, wk, wv, has_bias, weight_grads, dx_into)
