"""Tiny Triton kernels for the AOT checks of :mod:`fastbert.check_kernels`: a clean one, a spilling one,
one over the shared-memory limit and one that does not compile."""

import triton
import triton.language as tl

from fastbert.check_kernels import AotVariant


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, K, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.arange(0, BLOCK)
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None] * K + ks[None, :]
    b_ptrs = b_ptr + ks[:, None] * BLOCK + rows[None, :]
    acc = tl.zeros((BLOCK, BLOCK), tl.float32)
    for _ in range(0, K, BLOCK_K):
        acc += tl.dot(tl.load(a_ptrs), tl.load(b_ptrs))
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * BLOCK
    tl.store(c_ptr + rows[:, None] * BLOCK + rows[None, :], acc.to(tl.float16))


@triton.jit
def softmax_row_kernel(x_ptr, y_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    x = tl.load(x_ptr + offs)
    e = tl.exp(x - tl.max(x, axis=0))
    tl.store(y_ptr + offs, e / tl.sum(e, axis=0))


@triton.jit
def broken_kernel(x_ptr, N: tl.constexpr):
    tl.static_assert(N < 0, "N must be negative")
    tl.store(x_ptr, N)


MATMUL_SIG = {"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp16", "K": "i32",
              "BLOCK": "constexpr", "BLOCK_K": "constexpr"}

# K a multiple of 16 lets triton vectorize the A loads and pipeline them through shared memory.
MATMUL_ALIGNED = ("a_ptr", "b_ptr", "c_ptr", "K")
# 64x64 tile, 32-wide K steps, 3 stages: 16-24 KiB of shared memory, no spills.
CLEAN = AotVariant(matmul_kernel, MATMUL_SIG, {"BLOCK": 64, "BLOCK_K": 32}, 4, 3, "fp16 BLOCK=64 BLOCK_K=32",
                   MATMUL_ALIGNED, tensor_cores=True)
# 16 stages of 64x64 A and B tiles: 240-256 KiB, over both opt-in limits.
BIG_SMEM = AotVariant(matmul_kernel, MATMUL_SIG, {"BLOCK": 64, "BLOCK_K": 64}, 4, 16,
                      "fp16 BLOCK=64 BLOCK_K=64 16 stages", MATMUL_ALIGNED)
# 8192 fp32 values in one warp: 256 live values a thread, more than the 255 registers.
SPILLS = AotVariant(softmax_row_kernel, {"x_ptr": "*fp32", "y_ptr": "*fp32", "N": "constexpr"}, {"N": 8192},
                    1, 1, "fp32 N=8192 one warp")
BROKEN = AotVariant(broken_kernel, {"x_ptr": "*i32", "N": "constexpr"}, {"N": 4}, 4, 1, "static_assert")


@triton.jit
def fma_matmul_kernel(a_ptr, b_ptr, c_ptr, BLOCK: tl.constexpr):
    rows = tl.arange(0, BLOCK)
    tile = rows[:, None] * BLOCK + rows[None, :]
    acc = tl.dot(tl.load(a_ptr + tile), tl.load(b_ptr + tile), input_precision="ieee")
    tl.store(c_ptr + tile, acc)


# Exact fp32 products run on FFMA, never on tensor cores: a dot kernel that promised them fails from sm_80.
NO_TENSOR_CORES = AotVariant(fma_matmul_kernel, {"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32",
                                                 "BLOCK": "constexpr"}, {"BLOCK": 32}, 4, 1, "fp32 ieee dot",
                             tensor_cores=True)
