"""Helpers shared by the row kernels, :mod:`.layernorm` and :mod:`.embeddings`: one row (a token) of
``hidden`` columns per program or per step, normalised with fp32 statistics.

- :func:`normalize_row`, the LayerNorm of one fp32 row (two-pass variance), for the forward kernels;
- :func:`row_block` and :func:`row_num_warps`, the power-of-two row block a row takes and its warps;
- :func:`sum_partials` / :func:`sum_partials_as`, the fixed-order sum of per-program fp32 partial sums
  ``(groups, programs, hidden)`` that the backward kernels leave for their parameter gradients (no
  atomics: bitwise deterministic for given shapes), and :func:`sum_variant`, its build for
  ``fastbert check-kernels`` at the tile an op launches;
- :func:`dropout_mask`, the debug keep mask of the row kernels' dropout stream (:func:`.dropout.keep_row`
  of ``(row, col)``, which both ops draw).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import dropout
from .launch import cast_rne, on_input_device

# The dtypes the row kernels take (their statistics and sums are fp32 whatever the dtype).
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Triton's names of those dtypes, for the ahead-of-time signatures.
TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
# The widest row a backward holds in registers in one pass (whole rows of a [rows, ONE_PASS_HIDDEN] tile);
# wider rows spill them (fastbert check-kernels): LayerNorm's backward then takes two passes over column
# blocks of this width, and the embeddings run PyTorch.
ONE_PASS_HIDDEN = 1024
# The default tile (BLOCK_P programs, BLOCK_N columns) of the partial sums' reduction: 64 programs by 32
# columns, so that an H100's 512 LayerNorm backward programs take 8 serial steps and hidden 768 spreads
# over 24 column blocks a group. ``BLOCK_P`` fixes the order of the sum (and so its last bits); ``BLOCK_N``
# only how the columns are split between programs.
SUM_TILE = (64, 32)


# ============================================================================= device helpers
@triton.jit
def normalize_row(s, mask, hidden, eps):
    """``(xhat, mean, rstd)`` of an fp32 row ``s [BLOCK]`` whose ``mask``-ed-out columns are zero, of
    ``hidden`` real columns: ``mean``/``rstd`` fp32 scalars (two-pass variance, ``eps`` inside the root),
    ``xhat = (s - mean) * rstd`` fp32 ``[BLOCK]``, zero outside ``mask``."""
    mean = tl.sum(s, 0) / hidden
    centered = tl.where(mask, s - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, 0) / hidden + eps)
    return centered * rstd, mean, rstd


@triton.jit(do_not_specialize=["programs"])
def sum_partials_kernel(Parts, Out0, Out1, Out2, programs, hidden, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """``Out<g> = sum over p of Parts[g, p]`` for ``Parts (groups, programs, hidden)`` fp32 (``groups`` at
    most 3), in a fixed order (tiles of ``BLOCK_P`` programs in turn, a fixed tree within a tile), rounded
    to nearest even once into each ``Out<g> (hidden,)``'s own dtype; zeros for ``programs == 0``.
    Grid ``(groups, column blocks of BLOCK_N)``."""
    group = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_P, BLOCK_N], tl.float32)
    for first in range(0, programs, BLOCK_P):
        p = first + tl.arange(0, BLOCK_P)
        mask = (p[:, None] < programs) & (cols[None, :] < hidden)
        acc += tl.load(Parts + (group.to(tl.int64) * programs + p[:, None]) * hidden + cols[None, :], mask=mask,
                       other=0.0)
    total = tl.sum(acc, 0)
    if group == 0:
        tl.store(Out0 + cols, cast_rne(total, Out0.dtype.element_ty), mask=cols < hidden)
    elif group == 1:
        tl.store(Out1 + cols, cast_rne(total, Out1.dtype.element_ty), mask=cols < hidden)
    else:
        tl.store(Out2 + cols, cast_rne(total, Out2.dtype.element_ty), mask=cols < hidden)


@triton.jit
def dropout_mask_kernel(Keep, Seed, hidden, dropout_p, BLOCK_H: tl.constexpr):
    """Debug: the row kernels' keep bits of one row per program into ``Keep (rows, hidden)`` int8.
    Grid ``(rows,)``."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    keep = dropout.keep_row(dropout.seed_key(Seed), dropout.threshold(dropout_p), row, 0, BLOCK_H)
    tl.store(Keep + row * hidden + cols, keep.to(tl.int8), mask=cols < hidden)


# ============================================================================= launch configuration
def row_block(hidden: int) -> int:
    """The row block of ``hidden`` columns: a power of two, at least 16 (dropout draws four columns at a
    time)."""
    return max(16, triton.next_power_of_2(hidden))


def row_num_warps(block_h: int) -> int:
    """Warps of a kernel over rows of ``block_h`` columns (:func:`row_block`): 4, but 8 at 512 columns,
    where ptxas spills LayerNorm's dropout backward with 4 (and at 1024 it is the other way round), and
    more for the forwards' wider rows; ``fastbert check-kernels`` keeps this honest."""
    return {512: 8, 2048: 8, 4096: 16, 8192: 32}.get(block_h, 4)


# ============================================================================= launchers
def _launch_sum(parts: Tensor, outs, tile: tuple) -> None:
    groups, programs, hidden = parts.shape
    assert 1 <= groups <= 3 and len(outs) == groups
    block_p, block_n = tile
    outs = list(outs) + [outs[-1]] * (3 - groups)  # groups past the grid are never stored
    sum_partials_kernel[(groups, triton.cdiv(hidden, block_n))](
        parts, *outs, programs, hidden, BLOCK_P=block_p, BLOCK_N=block_n, num_warps=4, num_stages=1)


@on_input_device
def sum_partials(parts: Tensor, tile: tuple = SUM_TILE) -> Tensor:
    """``(groups, hidden)`` fp32 sums over axis 1 of the programs' fp32 partial sums ``(groups, programs,
    hidden)`` (``groups`` at most 3, contiguous), in an order fixed by the shapes and ``tile = (BLOCK_P,
    BLOCK_N)`` alone (not by the device, unlike ``Tensor.sum``)."""
    out = torch.empty(parts.shape[0], parts.shape[2], dtype=torch.float32, device=parts.device)
    _launch_sum(parts, out.unbind(0), tile)
    return out


@on_input_device
def sum_partials_as(parts: Tensor, dtypes, tile: tuple = SUM_TILE) -> tuple:
    """:func:`sum_partials` as one ``(hidden,)`` tensor per group, group ``g`` in ``dtypes[g]`` (one dtype
    per group), rounded once from the fp32 sum by the same launch (no fp32 result, no cast copies)."""
    outs = tuple(torch.empty(parts.shape[2], dtype=dtype, device=parts.device) for dtype in dtypes)
    _launch_sum(parts, outs, tile)
    return outs


@on_input_device
def dropout_mask(rows: int, hidden: int, dropout_p: float, seed: Tensor) -> Tensor:
    """Debug: the row kernels' keep mask of ``(rows, hidden)`` under ``seed`` (an int64 tensor of one
    element), bool ``(rows, hidden)`` on the seed's device."""
    keep = torch.empty(rows, hidden, dtype=torch.int8, device=seed.device)
    block_h = row_block(hidden)
    dropout_mask_kernel[(rows,)](keep, seed, hidden, float(dropout_p), BLOCK_H=block_h,
                                 num_warps=row_num_warps(block_h), num_stages=1)
    return keep.bool()


# ============================================================================= ahead-of-time variants
def sum_variant(t: str, tile: tuple, label: str):
    """The :class:`fastbert.check_kernels.AotVariant` of :func:`sum_partials_kernel` storing into ``t``
    (``"fp16"``, ``"bf16"`` or ``"fp32"``) at ``tile``, as launched for a hidden size that is a multiple
    of 16 (the JIT then specializes ``hidden`` as divisible by 16). Each op yields the variants of the
    tiles it launches from its own ``aot_variants``, so each is built once."""
    from fastbert.check_kernels import AotVariant, aligned_arguments, signature_of

    block_p, block_n = tile
    constexprs = dict(BLOCK_P=block_p, BLOCK_N=block_n)
    signature = signature_of(sum_partials_kernel, constexprs, t, fp32_pointers=("Parts",))
    return AotVariant(sum_partials_kernel, signature, constexprs, 4, 1, label,
                      aligned_arguments(signature, ("hidden",)))
