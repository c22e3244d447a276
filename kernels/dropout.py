"""Dropout keep masks from counter-based random numbers, shared by the attention, LayerNorm and
embeddings kernels.

A mask bit is a pure function of ``(seed, element)``: any kernel regenerates any element's bit, so
backward passes reuse the forward's mask without storing it, and no bit depends on block sizes.

**Generator.** Philox2x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a
64-bit counter ``(c0, c1)``, a 32-bit key, ten rounds of one 32 x 32 -> 64-bit multiply and one
three-way xor; 64 random bits per call. The key is ``seed_lo ^ seed_hi`` of the int64 seed tensor
(two seeds share a stream with probability 2**-32).

**One call, four elements, 16 bits each.** Element ``s`` (0..3) of a group reads bits ``16 s .. 16 s +
15`` of ``(w1 << 32) | w0`` as an integer ``r`` in ``[0, 65536)`` and is kept iff ``r >= t``, ``t =
min(round(65536 p), 65535)``: the keep rate is ``1 - t / 65536``, ``1 - p`` to within 2**-17. A group
is at most four elements (below), so 8-bit thresholds would save no Philox work, only halve a call's
output, and would round p = 0.1 to 26/256 = 0.1016, a 1.6% error in p. The 16-bit halves are compared
in place: the high half of ``w`` is kept iff ``w >= t << 16``, the low half iff ``w << 16 >= t << 16``.

**Element -> (counter, s).** A group's four elements sit in one thread's registers of the tiles that
use them, so a thread computes one call per group and nothing moves between threads (``tl.join``,
``tl.permute`` and ``tl.reshape`` lay the words out as the tile):

- rows (LayerNorm, embeddings: one stream keyed by ``(row, col)``, ``row`` the token): counter
  ``(col // 4, row)``, ``s = col % 4``; four consecutive columns, which a thread holds together
  wherever it loads 128 bits of a row.
- attention probabilities (element ``(head, query position i, key position j)`` of the sequence starting
  at packed token ``start`` of ``total``): with ``g(x) = (x // 16) * 8 + x % 8`` and ``h(x) = (x //
  8) % 2``, counter ``(g(j), head * total + start + g(i))`` and ``s = 2 h(i) + h(j)``: a group is
  ``{i, i + 8} x {j, j + 8}``. Rows ``r, r + 8`` of a tensor-core accumulator (mma.sync and wgmma) are
  in one thread, and so are columns ``c, c + 8`` where a warp spans 16 columns or more: the forward and
  dQ tiles (queries x keys) and the dK/dV tile (keys x queries) hold whole groups. ``g(i) <= i``, so
  the counters of different sequences and heads never meet (``heads * total < 2**32``).

Tiles laid out otherwise (narrow warps, exact-fp32 dots) get the same bits, with some calls made by two
threads or words moved through shared memory; ``keep_tile(PER_ELEMENT=True)`` draws them one call per
element, where that is cheaper.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastbert.ops import interpreting

INTERPRET = tl.constexpr(interpreting())  # Triton's interpreter runs no PTX
ROUNDS = tl.constexpr(10)
PHILOX_M = tl.constexpr(0xD256D193)  # Philox2x32 multiplier
PHILOX_W = tl.constexpr(0x9E3779B9)  # its key increment (the golden ratio)


@triton.jit
def _mulhilo(c):
    """``(hi, lo)`` uint32 of the 64-bit product ``c * PHILOX_M``. On a GPU ``mul.hi`` and ``mul.lo`` side
    by side in one asm block, which ptxas fuses into one IMAD.WIDE.U32; as two LLVM operations they
    stay two instructions, and a 64-bit tensor product makes the layout pass move the words through
    shared memory."""
    if INTERPRET:
        return tl.math.umulhi(c, PHILOX_M), tl.mul(c, PHILOX_M, sanitize_overflow=False)
    return tl.inline_asm_elementwise(  # 0xD256D193 is PHILOX_M
        "mul.hi.u32 $0, $2, 0xD256D193; mul.lo.u32 $1, $2, 0xD256D193;", "=r,=r,r", [c],
        dtype=(tl.uint32, tl.uint32), is_pure=True, pack=1)


@triton.jit
def philox2x32(c0, c1, key, N_ROUNDS: tl.constexpr = ROUNDS):
    """Philox2x32 of the uint32 counter ``(c0, c1)`` (broadcast against each other) under the uint32
    scalar ``key``: ``(w0, w1)`` uint32."""
    c0 = tl.cast(c0, tl.uint32)  # tl.cast also takes the interpreter's Python ints
    c1 = tl.cast(c1, tl.uint32)
    for _ in tl.static_range(N_ROUNDS):
        hi, lo = _mulhilo(c0)
        c0 = hi ^ c1 ^ key
        c1 = lo
        key = tl.add(key, PHILOX_W, sanitize_overflow=False)
    return c0, c1


@triton.jit
def seed_key(seed_ptr):
    """The Philox key of the int64 seed at ``seed_ptr``: ``seed_lo ^ seed_hi`` (uint32 scalar)."""
    seed = tl.load(seed_ptr).to(tl.uint64, bitcast=True)
    return (seed & 0xFFFFFFFF).to(tl.uint32) ^ (seed >> 32).to(tl.uint32)


@triton.jit
def threshold(dropout_p):
    """``t << 16`` (uint32 scalar) for the keep test, ``t = min(round(65536 p), 65535)``."""
    t = tl.minimum(tl.cast(tl.cast(dropout_p, tl.float32) * 65536.0 + 0.5, tl.int32), 65535)  # fp32, as on a GPU
    return (t << 16).to(tl.uint32)


@triton.jit
def key_and_threshold(seed_ptr, dropout_p, HAS_DROPOUT: tl.constexpr):
    """``(seed_key(seed_ptr), threshold(dropout_p))``, or two zeros without dropout (nothing loaded)."""
    if HAS_DROPOUT:
        return seed_key(seed_ptr), threshold(dropout_p)
    return tl.full((), 0, tl.uint32), tl.full((), 0, tl.uint32)


@triton.jit
def runtime_zero(dropout_p):
    """0.0 that the compiler cannot see as a constant, for ``tl.where(keep, x, zero)``: with a literal
    0.0, LLVM moves the select past a following fp32 -> 16-bit conversion and selects 16-bit halves
    (unpack, select, repack: about twice the instructions)."""
    return dropout_p * 0.0


@triton.jit
def _halves(w):
    """The low and the high 16 bits of the uint32 ``w``, each in the high half of a uint32 (compared
    with ``t << 16``)."""
    return w << 16, w


@triton.jit
def keep_row(key, t_hi, row, col0, BLOCK: tl.constexpr):
    """Keep bits ``[BLOCK]`` of columns ``col0 + arange(BLOCK)`` of ``row`` (``col0`` a multiple of 4,
    ``BLOCK`` of 4 and at least 4)."""
    tl.static_assert(BLOCK % 4 == 0, "keep_row: BLOCK must be a multiple of 4")
    groups = col0 // 4 + tl.arange(0, BLOCK // 4)
    w0, w1 = philox2x32(groups, row, key)
    r0, r1 = _halves(w0)
    r2, r3 = _halves(w1)
    # [groups, word, half] -> column 4 * group + 2 * word + half
    return tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), [BLOCK]) >= t_hi


@triton.jit
def keep_rows(key, t_hi, rows, col0, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """:func:`keep_row` for a tile of rows: keep bits ``[ROWS, BLOCK]`` of columns ``col0 + arange(BLOCK)``
    of the rows ``rows [ROWS, 1]``, bit for bit each row's, one Philox call per row and four columns."""
    tl.static_assert(BLOCK % 4 == 0, "keep_rows: BLOCK must be a multiple of 4")
    groups = col0 // 4 + tl.arange(0, BLOCK // 4)
    w0, w1 = philox2x32(groups[None, :], rows, key)
    r0, r1 = _halves(w0)
    r2, r3 = _halves(w1)
    # [rows, groups, word, half] -> (row, 4 * group + 2 * word + half), as keep_row lays out a row
    return tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), [ROWS, BLOCK]) >= t_hi


@triton.jit
def _tile_groups(first, BLOCK: tl.constexpr):
    """``g(x)`` of positions ``first + arange(BLOCK)`` as ``[BLOCK // 16, 8]`` (``first`` a multiple of 16)."""
    blocks = first // 16 + tl.arange(0, BLOCK // 16)
    return blocks[:, None] * 8 + tl.arange(0, 8)[None, :]


@triton.jit
def _tile_bits(key, row_base, queries, keys):
    """The 16 bits of :func:`keep_tile` for the broadcast of ``queries`` and ``keys``, one call per
    element, in the high half of a uint32."""
    w0, w1 = philox2x32((keys // 16) * 8 + keys % 8, row_base + (queries // 16) * 8 + queries % 8, key)
    w = tl.where((queries // 8) % 2 == 1, w1, w0)
    return tl.where((keys // 8) % 2 == 1, w, w << 16)


@triton.jit
def keep_tile(key, t_hi, row_base, q0, k0, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
              QUERY_ROWS: tl.constexpr, PER_ELEMENT: tl.constexpr = False):
    """Attention keep bits of queries ``q0 + arange(BLOCK_Q)`` and keys ``k0 + arange(BLOCK_K)`` (positions
    in the sequence, ``q0``/``k0`` multiples of 16, blocks of at least 16), ``row_base = head * total +
    start``: ``[BLOCK_Q, BLOCK_K]`` if ``QUERY_ROWS`` else ``[BLOCK_K, BLOCK_Q]``. ``PER_ELEMENT``: the
    same bits from one call per element, for tiles whose layout splits the groups anyway."""
    tl.static_assert(BLOCK_Q % 16 == 0 and BLOCK_K % 16 == 0, "keep_tile: blocks must be multiples of 16")
    if PER_ELEMENT:
        queries, keys = q0 + tl.arange(0, BLOCK_Q), k0 + tl.arange(0, BLOCK_K)
        if QUERY_ROWS:
            r = _tile_bits(key, row_base, queries[:, None], keys[None, :])
        else:
            r = _tile_bits(key, row_base, queries[None, :], keys[:, None])
    else:
        gq = row_base + _tile_groups(q0, BLOCK_Q)  # [BQ/16, 8]
        gk = _tile_groups(k0, BLOCK_K)  # [BK/16, 8]
        if QUERY_ROWS:
            w0, w1 = philox2x32(gk[None, None, :, :], gq[:, :, None, None], key)  # [BQ/16, 8, BK/16, 8]
        else:
            w0, w1 = philox2x32(gk[:, :, None, None], gq[None, None, :, :], key)  # [BK/16, 8, BQ/16, 8]
        r00, r01 = _halves(w0)  # r<h(i)><h(j)>
        r10, r11 = _halves(w1)
        r = tl.join(tl.join(r00, r10), tl.join(r01, r11))  # [..., h(i), h(j)]
        if QUERY_ROWS:  # [i/16, i%8, j/16, j%8, h(i), h(j)] -> [i/16, h(i), i%8, j/16, h(j), j%8]
            r = tl.reshape(tl.permute(r, (0, 4, 1, 2, 5, 3)), [BLOCK_Q, BLOCK_K])
        else:  # [j/16, j%8, i/16, i%8, h(i), h(j)] -> [j/16, h(j), j%8, i/16, h(i), i%8]
            r = tl.reshape(tl.permute(r, (0, 5, 1, 2, 4, 3)), [BLOCK_K, BLOCK_Q])
    return r >= t_hi
