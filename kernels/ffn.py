"""BERT's feed-forward block ``gelu(x @ W1^T + b1) @ W2^T`` with the GELU fused into the GEMMs.

- ``_ffn_fwd``: ``Z = X @ W1^T + b1`` with the exact erf GELU in the epilogue; it writes ``Y = gelu(Z)``
  and, when training, ``Z`` too. The second linear ``Y @ W2^T`` is a plain GEMM (cuBLAS).
- ``_ffn_bwd``: ``dZ = (dOut @ W2) * gelu'(Z)``, the input-gradient GEMM of the second linear with the
  GELU derivative in its epilogue; when the weight gradients are wanted it also writes ``G = gelu(Z)``
  from the same tile of ``Z`` (before its K loop).

So the block keeps one ``tokens x intermediate`` tensor (``Z``) for backward, where an unfused
``Linear -> GELU -> Linear`` keeps two (``Z`` for the GELU and ``Y`` for the second linear); ``G`` is a
temporary of backward, freed once ``dW2 = dOut^T G`` is computed. That and the remaining gradients
(``dW1 = dZ^T X``, ``dX = dZ W1``, ``db1``) are plain GEMMs (cuBLAS) and a column sum.

Both kernels share one tile loop (grouped tile order for L2 reuse, fp32 accumulation, operands
addressed by strides so transposes are free) and are autotuned over tile tables that ``fastbert
check-kernels`` proves free of spills on sm_80 and sm_90; the tuning key buckets the token count.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastbert.ops import torch_fallback
from fastbert.torch_ops import input_grad
from fastbert.routing import TENSOR_CORE_CAPABILITY

from .gemm import GROUP_M, config, fits_shape, matmul, operand_kind, smem_bytes, tile, tile_start
from .launch import (TunedKernel, cast_rne, device_arch, device_smem_limit, fitting, input_precision, on_input_device,
                     smem_limit, upcast)

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@triton.jit
def _gelu(z):
    """BERT's exact GELU of fp32 ``z``: ``z * Phi(z)``."""
    return 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))


@triton.jit
def _gelu_grad(z):
    """``d gelu / dz = Phi(z) + z * phi(z)`` of fp32 ``z``."""
    return 0.5 * (1.0 + tl.erf(z * 0.7071067811865476)) + z * tl.exp(-0.5 * z * z) * 0.3989422804014327


# The token count and its bucket (a tuning key only) are not specialized: one binary for any batch.
@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _ffn_fwd(
    X, W, Bias, Z, Y, M, N, K, stride_xm, stride_xk, stride_wn, stride_wk, M_BUCKET,
    HAS_BIAS: tl.constexpr, STORE_Z: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """``Z = X @ W^T + Bias``, ``Y = gelu(Z)`` for ``X (M, K)``, ``W (N, K)``; ``Z``/``Y`` ``(M, N)``
    contiguous. Grid ``(tiles,)``."""
    rows, cols = tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    z = matmul(X, W, rows, cols, M, N, K, stride_xm, stride_xk, stride_wk, stride_wn, BLOCK_K, INPUT_PRECISION,
               UPCAST)
    if HAS_BIAS:
        z += tl.load(Bias + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    offsets = rows[:, None].to(tl.int64) * N + cols[None, :]
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    if STORE_Z:
        tl.store(Z + offsets, cast_rne(z, Z.dtype.element_ty), mask=mask)
    tl.store(Y + offsets, cast_rne(_gelu(z), Y.dtype.element_ty), mask=mask)


@triton.jit
def _store_gelu(Z, G, row0, col0, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``G = gelu(Z)`` on the ``(BLOCK_M, BLOCK_N)`` tile at ``(row0, col0)`` of ``(M, N)`` contiguous
    ``Z``/``G``. Addressed from the tile's corner (64-bit) and 32-bit offsets within it: nothing the
    epilogue's addressing shares, so no pointer tile stays live across the K loop that follows."""
    corner = row0.to(tl.int64) * N + col0
    r = tl.arange(0, BLOCK_M)[:, None]
    c = tl.arange(0, BLOCK_N)[None, :]
    inside = (r < M - row0) & (c < N - col0)
    within = r * N + c
    gelu = _gelu(tl.load(Z + corner + within, mask=inside, other=0.0).to(tl.float32))
    tl.store(G + corner + within, cast_rne(gelu, G.dtype.element_ty), mask=inside)


@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _ffn_bwd(
    DOut, W2, Z, DZ, G, M, N, K, stride_dm, stride_dk, stride_wk, stride_wn, M_BUCKET,
    STORE_GELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """``DZ = (DOut @ W2) * gelu'(Z)`` and, when ``STORE_GELU``, ``G = gelu(Z)``, for ``DOut (M, K)``,
    ``W2 (K, N)`` (the second linear's weight); ``Z``/``DZ``/``G`` ``(M, N)`` contiguous. Grid ``(tiles,)``.

    ``G`` is written before the K loop, while the accumulator holds no registers: written after it,
    beside the accumulator and the fp32 ``gelu'`` tile, the 128-wide tiles spill on sm_80 and sm_90."""
    row0, col0 = tile_start(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    if STORE_GELU:
        _store_gelu(Z, G, row0, col0, M, N, BLOCK_M, BLOCK_N)
    rows, cols = row0 + tl.arange(0, BLOCK_M), col0 + tl.arange(0, BLOCK_N)
    dy = matmul(DOut, W2, rows, cols, M, N, K, stride_dm, stride_dk, stride_wk, stride_wn, BLOCK_K,
                INPUT_PRECISION, UPCAST)
    offsets = rows[:, None].to(tl.int64) * N + cols[None, :]
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    z = tl.load(Z + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.store(DZ + offsets, cast_rne(dy * _gelu_grad(z), DZ.dtype.element_ty), mask=mask)


# ============================================================================= tiles and autotuning
# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) per operand kind; the first is the default (interpreter,
# deterministic mode). Every entry compiles without spills on sm_80 and sm_90 (fastbert check-kernels)
# for each kernel, except those listed in _SPILLS. 128x128 tiles need 8 warps: with 4, the fp32 tile
# and the erf epilogue pass 255 registers.
_TILES = {
    "16bit": [(128, 128, 64, 8, 3), (128, 128, 32, 8, 4), (128, 64, 64, 8, 3), (64, 128, 64, 4, 3),
              (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 4, 4), (32, 64, 32, 4, 4)],
    "tf32": [(128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (128, 128, 32, 8, 3), (64, 64, 32, 4, 3),
             (64, 64, 32, 8, 3)],
    "ieee": [(64, 64, 32, 8, 2), (32, 64, 32, 4, 2), (64, 32, 32, 4, 2), (32, 32, 32, 4, 2)],
}
# (kind, operands) -> {tile: the archs it spills on (None: all)}, under triton 3.6 and 3.9.
_SPILLS = {("bwd", "tf32"): {(128, 128, 32, 8, 3): None},  # 24 B of spills on sm_90
           ("bwd", "16bit"): {(64, 128, 32, 4, 4): (80,)},  # 12 B in bf16 under triton 3.6 once G is written
           ("fwd", "ieee"): {(64, 64, 32, 8, 2): (120,)}}
def tile_configs(kind: str, dtype: torch.dtype, precision: str, limit: Optional[int] = None,
                 arch: Optional[int] = None) -> tuple:
    """The launch configs of kernel ``kind`` ("fwd", "bwd") for a dtype and ``tl.dot``'s input
    precision (which only matters for fp32), default first, less those that spill on ``arch`` (on any,
    when None); with ``limit`` (bytes of shared memory) only those that fit it."""
    operands = operand_kind(dtype, precision)
    spilling = frozenset(tile for tile, archs in _SPILLS.get((kind, operands), {}).items()
                         if archs is None or arch is None or arch in archs)
    return _tile_configs(kind, dtype, tuple(_TILES[operands]), spilling, limit)


@functools.lru_cache(maxsize=1024)  # called on every launch
def _tile_configs(kind, dtype, table, excluded, limit) -> tuple:
    configs = [config(t) for t in table if t not in excluded]
    return tuple(fitting(configs, lambda c: smem_bytes(c, dtype), limit))


def _allowed(kind: str):
    """The tiles proven for this kernel, dtype and precision that fit the device, sized for the output
    (the default tile alone when nothing else fits)."""
    def allowed(named_args, meta):
        z = named_args["Z"]
        proven = tile_configs(kind, z.dtype, meta["INPUT_PRECISION"], device_smem_limit(z.device), device_arch(z.device))
        return [c for c in proven if fits_shape(c, named_args["M_BUCKET"], named_args["N"])] or proven[:1]
    return allowed


_ALL_CONFIGS = [config(t) for t in sorted({t for table in _TILES.values() for t in table})]
# M_BUCKET (next power of two of the token count M) keys the tuning instead of the token count itself,
# so a new batch shape reuses it.
_KERNELS = {"fwd": _ffn_fwd, "bwd": _ffn_bwd}
_TUNED = {kind: TunedKernel(kernel, _ALL_CONFIGS, ("M_BUCKET", "N", "K", "INPUT_PRECISION"), _allowed(kind))
          for kind, kernel in _KERNELS.items()}


def _launch(kind: str, M: int, N: int, *args, dtype: torch.dtype, device: torch.device, **meta):
    grid = lambda m: (triton.cdiv(M, m["BLOCK_M"]) * triton.cdiv(N, m["BLOCK_N"]),)  # noqa: E731
    meta.update(GROUP_M=GROUP_M, UPCAST=upcast(dtype))
    _TUNED[kind].launch(grid, *args, device=device, **meta)


def _bucket(m: int) -> int:
    return triton.next_power_of_2(max(m, 1))


# ============================================================================= checks and launchers
def check_inputs(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor) -> None:
    """Raises ``TypeError``/``ValueError`` naming the bad argument, before any kernel runs.

    x ``(tokens, hidden)``, w1 ``(intermediate, hidden)``, b1 ``(intermediate,)`` or None,
    w2 ``(hidden_out, intermediate)``; one floating dtype for all.
    """
    for name, t in (("x", x), ("w1", w1), ("b1", b1), ("w2", w2)):
        if t is not None and t.dtype not in KERNEL_DTYPES:
            raise TypeError(f"ffn: {name} must be float16, bfloat16 or float32, got {t.dtype}")
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"ffn: {name} has dtype {t.dtype}, x {x.dtype}; cast them to one dtype")
    if x.dim() != 2 or w1.dim() != 2 or w2.dim() != 2:
        raise ValueError(f"ffn: x, w1, w2 must be 2-D, got shapes {tuple(x.shape)}, {tuple(w1.shape)}, "
                         f"{tuple(w2.shape)}")
    if w1.shape[1] != x.shape[1]:
        raise ValueError(f"ffn: w1 must be (intermediate, {x.shape[1]}) for x's {x.shape[1]} features, "
                         f"got {tuple(w1.shape)}")
    if w2.shape[1] != w1.shape[0]:
        raise ValueError(f"ffn: w2 must be (out, {w1.shape[0]}) for w1's {w1.shape[0]} outputs, "
                         f"got {tuple(w2.shape)}")
    if b1 is not None and tuple(b1.shape) != (w1.shape[0],):
        raise ValueError(f"ffn: b1 must be ({w1.shape[0]},), got {tuple(b1.shape)}")


def _unit_stride_inner(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


@on_input_device
def linear_gelu(x: Tensor, w1: Tensor, b1: Optional[Tensor], store_z: bool = True) -> tuple[Tensor, Optional[Tensor]]:
    """``(y, z)``: ``z = x @ w1^T + b1`` ``(tokens, intermediate)`` and ``y = gelu(z)``, both in x's dtype;
    ``z`` is None when not ``store_z``. ``x`` and ``w1`` may be strided (a unit inner stride is used as is)."""
    x, w1 = _unit_stride_inner(x), _unit_stride_inner(w1)
    (M, K), N = x.shape, w1.shape[0]
    y = x.new_empty(M, N)
    z = x.new_empty(M, N) if store_z else None
    if M and N:
        _launch("fwd", M, N, x, w1, b1.contiguous() if b1 is not None else x, z if store_z else y, y, M, N, K,
                x.stride(0), x.stride(1), w1.stride(0), w1.stride(1), _bucket(M), HAS_BIAS=b1 is not None,
                STORE_Z=store_z, INPUT_PRECISION=input_precision(x.dtype, x.device), dtype=x.dtype, device=x.device)
    return y, z


def ffn_fwd(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor) -> tuple[Tensor, Tensor]:
    """``(out, z)``: ``out = gelu(z) @ w2^T`` ``(tokens, hidden_out)`` and the pre-activation ``z`` that
    backward needs. The signature of :func:`fastbert.torch_ops.ffn_fwd`."""
    check_inputs(x, w1, b1, w2)
    y, z = linear_gelu(x, w1, b1)
    return y @ w2.t(), z


def ffn_inference_fwd(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor) -> Tensor:
    """``gelu(x @ w1^T + b1) @ w2^T`` without keeping ``z``."""
    check_inputs(x, w1, b1, w2)
    return linear_gelu(x, w1, b1, store_z=False)[0] @ w2.t()


@on_input_device
def ffn_bwd(dout: Tensor, x: Tensor, w1: Tensor, w2: Tensor, z: Tensor, has_bias: bool, weight_grads: bool = True,
            dx_into: Optional[Tensor] = None):
    """``(dx, dw1, db1, dw2)`` from the saved ``z``; ``db1`` is empty without a bias, the weight gradients
    are empty (and not computed) without ``weight_grads``; ``dx_into``, when given, is added to ``dx`` by
    its GEMM. The signature of :func:`fastbert.torch_ops.ffn_bwd`.

    Besides ``dz`` the kernel writes ``gelu(z)`` (a ``tokens x intermediate`` temporary, freed after
    the ``dw2`` GEMM) only for the weight gradients."""
    dout, z, w2 = _unit_stride_inner(dout), z.contiguous(), _unit_stride_inner(w2)
    (M, N), H = z.shape, dout.shape[1]
    dz = torch.empty_like(z)
    g = torch.empty_like(z) if weight_grads else None
    if M and N:
        # dZ = (dOut @ W2) * gelu'(Z), G = gelu(Z): A = dOut (M, H), B = W2 (H, N)
        _launch("bwd", M, N, dout, w2, z, dz, dz if g is None else g, M, N, H, dout.stride(0), dout.stride(1),
                w2.stride(0), w2.stride(1), _bucket(M), STORE_GELU=weight_grads,
                INPUT_PRECISION=input_precision(x.dtype, x.device), dtype=x.dtype, device=x.device)
    if not weight_grads:
        return input_grad(dz, w1, dx_into), w1.new_empty(0), w1.new_empty(0), w2.new_empty(0)
    dw2 = dout.t() @ g
    del g  # before dx and dw1 are allocated
    dx = input_grad(dz, w1, dx_into)
    dw1 = dz.t() @ x
    db1 = dz.sum(0, dtype=torch.float32).to(w1.dtype) if has_bias else w1.new_empty(0)
    return dx, dw1, db1, dw2


def ffn_reference(x, w1, b1, w2):
    """The same math in PyTorch, in the inputs' dtype."""
    return torch.nn.functional.gelu(torch.nn.functional.linear(x, w1, b1)) @ w2.t()


class FusedFFN(torch.autograd.Function):
    """Autograd wrapper of the kernels for standalone use (the model goes through ``fastbert.ops``)."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2):
        out, z = ffn_fwd(x, w1, b1, w2)
        ctx.save_for_backward(x, w1, w2, z)
        ctx.has_bias = b1 is not None
        return out

    @staticmethod
    def backward(ctx, dout):
        x, w1, w2, z = ctx.saved_tensors
        dx, dw1, db1, dw2 = ffn_bwd(dout, x, w1, w2, z, ctx.has_bias)
        return dx, dw1, db1 if ctx.has_bias else None, dw2


# ============================================================================= ahead-of-time variants
_TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


# Per kernel: the strides the launchers pass as 1 (the JIT specializes them to constants), the
# integer arguments that are multiples of 16 for BERT's sizes (the token count is not), and the flags of
# the heaviest form launched (training with a bias and weight gradients; the others do less of the same).
_UNIT_STRIDES = {"fwd": ("stride_xk", "stride_wk"), "bwd": ("stride_dk", "stride_wn")}
_INTS = ("M", "N", "K", "M_BUCKET")
_ALIGNED_INTS = {"fwd": ("N", "K", "stride_xm", "stride_wn"), "bwd": ("N", "K", "stride_dm", "stride_wk")}
_FLAGS = {"fwd": dict(HAS_BIAS=True, STORE_Z=True), "bwd": dict(STORE_GELU=True)}


def aot_variants(arch: int):
    """Every (kernel, tile, dtype, precision) the launchers can run on compute capability ``arch`` (the
    tiles that fit its shared memory; none before sm_80, where the GEMMs run PyTorch), for ``fastbert
    check-kernels``."""
    from fastbert.check_kernels import AotVariant, signature_of
    if arch < TENSOR_CORE_CAPABILITY[0] * 10:
        return  # the dot ops run PyTorch there (fastbert.routing)

    for dtype, t in _TRITON_TYPES.items():
        for precision in (("ieee", "tf32") if dtype == torch.float32 else ("tf32",)):
            name = f"{t}{'-' + precision if dtype == torch.float32 else ''}"
            for kind, kernel in _KERNELS.items():
                for config in tile_configs(kind, dtype, precision, smem_limit(arch), arch):
                    constexprs = dict(config.kwargs, GROUP_M=GROUP_M, INPUT_PRECISION=precision, UPCAST=False)
                    constexprs.update({stride: 1 for stride in _UNIT_STRIDES[kind]}, **_FLAGS[kind])
                    signature = signature_of(kernel, constexprs, t, ints=_INTS)
                    aligned = tuple(n for n in kernel.arg_names
                                    if signature[n].startswith("*") or n in _ALIGNED_INTS[kind])
                    label = "{} {} M{BLOCK_M} N{BLOCK_N} K{BLOCK_K}".format(name, kind, **config.kwargs)
                    yield AotVariant(kernel, signature, constexprs, config.num_warps, config.num_stages, label,
                                     aligned, tensor_cores=precision != "ieee")


# ============================================================================= op adapters
def _unsupported(x: Tensor, *weights: Optional[Tensor]) -> Optional[str]:
    for t in (x, *weights):
        if t is not None and t.dtype not in KERNEL_DTYPES:
            return f"dtype {t.dtype}"
    if any(t is not None and t.dtype != x.dtype for t in weights):
        return "mixed dtypes"
    return None


def _op_forward(x, w1, b1, w2):
    reason = _unsupported(x, w1, b1, w2)
    if reason:
        return torch_fallback("ffn", "fwd", reason)(x, w1, b1, w2)
    return ffn_fwd(x, w1, b1, w2)


def _op_inference_forward(x, w1, b1, w2):
    reason = _unsupported(x, w1, b1, w2)
    if reason:
        return torch_fallback("ffn", "inference_fwd", reason)(x, w1, b1, w2)
    return ffn_inference_fwd(x, w1, b1, w2)


def _op_backward(dout, x, w1, w2, z, has_bias: bool, weight_grads: bool, dx_into: Optional[Tensor] = None):
    reason = _unsupported(x, w1, w2)
    if reason:
        return torch_fallback("ffn", "bwd", reason)(dout, x, w1, w2, z, has_bias, weight_grads, dx_into)
    return ffn_bwd(dout, x, w1, w2, z, has_bias, weight_grads, dx_into)


def _check_linear(x, weight, bias) -> None:
    if x.dim() != 2 or weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"linear_gelu: weight must be (out, {x.shape[-1]}) for x {tuple(x.shape)}, "
                         f"got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear_gelu: bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")


def _linear_gelu_forward(x, weight, bias):
    """``fastbert.ops.linear_gelu`` adapter (the first linear alone): ``(y, z)``."""
    _check_linear(x, weight, bias)
    reason = _unsupported(x, weight, bias)
    if reason:
        return torch_fallback("linear_gelu", "fwd", reason)(x, weight, bias)
    return linear_gelu(x, weight, bias)


def _linear_gelu_inference_forward(x, weight, bias):
    _check_linear(x, weight, bias)
    reason = _unsupported(x, weight, bias)
    if reason:
        return torch_fallback("linear_gelu", "inference_fwd", reason)(x, weight, bias)
    return linear_gelu(x, weight, bias, store_z=False)[0]

