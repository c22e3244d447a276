"""What the GEMM kernels share (``kernels/ffn.py``, ``kernels/qkv.py``): the grouped tile order, the
fp32-accumulating K loop over strided operands, and the tile bookkeeping of their tables (launch
configs, shared memory, which tiles are worth timing for an output's size)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import dot


@triton.jit
def tile_start(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """``(first row, first column)`` of this program's output tile, in grouped order: ``GROUP_M`` tile
    rows walk the tile columns together, so their operand tiles stay in L2."""
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(N, BLOCK_N)
    group_width = GROUP_M * tiles_n
    first_m = (pid // group_width) * GROUP_M
    group_rows = tl.minimum(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
    pid_m = first_m + (pid % group_width) % group_rows
    pid_n = (pid % group_width) // group_rows
    return pid_m * BLOCK_M, pid_n * BLOCK_N


@triton.jit
def tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """``(rows, cols)`` index vectors of this program's output tile (:func:`tile_start`)."""
    row0, col0 = tile_start(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    return row0 + tl.arange(0, BLOCK_M), col0 + tl.arange(0, BLOCK_N)


@triton.jit
def matmul(A, B, rows, cols, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
            BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """fp32 ``A[rows, :] @ B[:, cols]``; rows are 64-bit offsets."""
    acc = tl.zeros([rows.shape[0], cols.shape[0]], tl.float32)
    return matmul_into(acc, A, B, rows, cols, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, BLOCK_K,
                       INPUT_PRECISION, UPCAST)


@triton.jit
def matmul_into(acc, A, B, rows, cols, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + A[rows, :] @ B[:, cols]`` in fp32, accumulating in ``acc`` itself (one accumulator live, where
    ``acc + matmul(...)`` would hold two)."""
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = A + rows[:, None].to(tl.int64) * stride_am + ks[None, :] * stride_ak
    b_ptrs = B + ks[:, None].to(tl.int64) * stride_bk + cols[None, :] * stride_bn
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=(rows[:, None] < M) & (ks[None, :] < K - k), other=0.0)
        b = tl.load(b_ptrs, mask=(ks[:, None] < K - k) & (cols[None, :] < N), other=0.0)
        acc += dot(a, b, INPUT_PRECISION, UPCAST)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    return acc


GROUP_M = 8  # tile rows that walk the tile columns together (tile_start)


def operand_kind(dtype: torch.dtype, precision: str) -> str:
    """The tile table a GEMM of ``dtype`` operands and ``tl.dot`` precision ``precision`` takes: "16bit", "tf32", "ieee"."""
    return precision if dtype == torch.float32 else "16bit"


def config(tile) -> triton.Config:
    """The launch config of a ``(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)`` tile."""
    block_m, block_n, block_k, warps, stages = tile
    return triton.Config(dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k), num_warps=warps,
                         num_stages=stages)


def smem_bytes(config: triton.Config, dtype: torch.dtype) -> int:
    """Shared memory of one block: the pipeline's A and B tiles, one pair per stage."""
    kw = config.kwargs
    return dtype.itemsize * kw["BLOCK_K"] * (kw["BLOCK_M"] + kw["BLOCK_N"]) * max(config.num_stages, 1)


def fits_shape(config: triton.Config, m: int, n: int) -> bool:
    """Whether a tile is worth timing for an ``m x n`` output: no tile dimension more than twice the
    (power-of-two rounded) output's, so few tokens do not time 128-row tiles that are mostly padding."""
    return (config.kwargs["BLOCK_M"] <= max(32, 2 * triton.next_power_of_2(m))
            and config.kwargs["BLOCK_N"] <= max(32, 2 * triton.next_power_of_2(n)))
