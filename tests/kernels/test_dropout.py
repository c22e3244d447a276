"""The dropout random numbers the kernels share (``kernels/dropout.py``).

The generator against Random123's published Philox2x32-10 answers; both element mappings, as the
kernels' debug masks give them, against a NumPy model of the documented mapping, bit for bit at sizes
that are not multiples of a group; and the properties a wrong amortization breaks whatever the
mapping: the keep rate (to 16-bit resolution), independent neighbours (no two elements of a group
sharing bits) and the backward passes reading exactly the forward's mask at ragged tails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from conftest import DEVICE
from fastbert.kernels import attention as A
from fastbert.kernels import dropout as D
from fastbert.kernels import embeddings as E
from fastbert.kernels import layernorm as L

WORD = np.uint64(0xFFFFFFFF)
# Random123's kat_vectors: philox2x32 10 <counter c0 c1> <key> -> <w0 w1>
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000), 0x00000000, (0xFF1DAE59, 0x6CD10DF2)),
    ((0xFFFFFFFF, 0xFFFFFFFF), 0xFFFFFFFF, (0x2C3F628B, 0xAB4FD7AD)),
    ((0x243F6A88, 0x85A308D3), 0x13198A2E, (0xDD7CE038, 0xF62A4C12)),
]


# ============================================================================= a NumPy model of the mapping
def _philox2x32(c0, c1, key: int, rounds: int = 10):
    """NumPy Philox2x32: uint64 arrays holding 32-bit words (broadcast), an int key -> ``(w0, w1)``."""
    c0, c1 = np.asarray(c0, np.uint64) & WORD, np.asarray(c1, np.uint64) & WORD
    k = np.uint64(key)
    for _ in range(rounds):
        product = c0 * np.uint64(0xD256D193)  # < 2**64
        c0, c1 = ((product >> np.uint64(32)) ^ c1 ^ k) & WORD, product & WORD
        k = (k + np.uint64(0x9E3779B9)) & WORD
    return c0, c1


def _key(seed: int) -> int:
    seed &= 2**64 - 1
    return (seed & 0xFFFFFFFF) ^ (seed >> 32)


def _threshold(p: float) -> int:
    """``t`` as the kernels compute it (in fp32)."""
    return min(int(np.float32(p) * np.float32(65536.0) + np.float32(0.5)), 65535)


def _bits16(w0, w1, s):
    """16-bit element ``s`` of ``(w1 << 32) | w0``."""
    word = np.where(s >= 2, w1, w0)
    return (word >> (np.uint64(16) * (s % 2).astype(np.uint64))) & np.uint64(0xFFFF)


def _row_mask(seed: int, p: float, rows: int, hidden: int) -> np.ndarray:
    row, col = np.arange(rows)[:, None], np.arange(hidden)[None, :]
    w0, w1 = _philox2x32(col // 4, row, _key(seed))
    return _bits16(w0, w1, np.broadcast_to(col % 4, (rows, hidden))) >= _threshold(p)


def _attention_mask(seed: int, p: float, lengths, heads: int) -> list[np.ndarray]:
    """Per sequence, bool ``(heads, n, n)``: query ``i`` (axis 1), key ``j`` (axis 2)."""
    g = lambda x: (x // 16) * 8 + x % 8  # noqa: E731
    h = lambda x: (x // 8) % 2  # noqa: E731
    total, start, masks = sum(lengths), 0, []
    for n in lengths:
        head, i, j = np.arange(heads)[:, None, None], np.arange(n)[None, :, None], np.arange(n)[None, None, :]
        w0, w1 = _philox2x32(g(j), head * total + start + g(i), _key(seed))
        s = np.broadcast_to(2 * h(i) + h(j), (heads, n, n))
        masks.append(_bits16(w0, w1, s) >= _threshold(p))
        start += n
    return masks


def test_the_numpy_model_is_philox2x32_10():
    for (c0, c1), key, (w0, w1) in KNOWN_ANSWERS:
        assert tuple(int(w) for w in _philox2x32(c0, c1, key)) == (w0, w1)


# ============================================================================= the generator in a kernel
@triton.jit
def _philox_kernel(Counters, Keys, Out):
    i = tl.program_id(0)
    c0 = tl.load(Counters + 2 * i).to(tl.uint32)
    c1 = tl.load(Counters + 2 * i + 1).to(tl.uint32)
    w0, w1 = D.philox2x32(c0, c1, tl.load(Keys + i).to(tl.uint32))
    tl.store(Out + 2 * i, w0.to(tl.int64))
    tl.store(Out + 2 * i + 1, w1.to(tl.int64))


def test_kernel_philox_matches_the_known_answers():
    """The kernels' generator, compiled (its ``mul.wide.u32``) on a GPU, interpreted here."""
    counters = torch.tensor([c for c, _, _ in KNOWN_ANSWERS], dtype=torch.int64, device=DEVICE)
    keys = torch.tensor([k for _, k, _ in KNOWN_ANSWERS], dtype=torch.int64, device=DEVICE)
    out = torch.empty_like(counters)
    _philox_kernel[(len(KNOWN_ANSWERS),)](counters, keys, out)
    assert [tuple(row) for row in out.tolist()] == [w for _, _, w in KNOWN_ANSWERS]


# ============================================================================= the mappings, bit for bit
@pytest.mark.parametrize("rows, hidden", [(3, 1), (5, 3), (4, 37), (2, 1000), (2, 1025)])
def test_row_mask_matches_the_model(rows, hidden):
    """Hidden sizes below, between and past groups of four; 1025 also leaves a one-column tail block."""
    seed, p = -(2**62) + 12345, 0.37  # a negative seed: both halves of the key in use
    keep = L.dropout_mask(rows, hidden, p, torch.tensor([seed], device=DEVICE))
    assert np.array_equal(keep.cpu().numpy(), _row_mask(seed, p, rows, hidden))


def test_attention_mask_matches_the_model():
    """Lengths around the group strides (8, 16) and the debug kernel's 64-position tiles, three heads."""
    lengths, heads, seed, p = [1, 7, 9, 17, 70], 3, 2**61 + 99, 0.27
    cu = torch.tensor(np.cumsum([0] + lengths), dtype=torch.int32, device=DEVICE)
    keep = A.dropout_mask(cu, heads, max(lengths), p, torch.tensor([seed], device=DEVICE)).cpu().numpy()
    start = 0
    for n, want in zip(lengths, _attention_mask(seed, p, lengths, heads)):
        assert np.array_equal(keep[:, start:start + n, :n], want), f"sequence of {n}"
        start += n


# ============================================================================= what a wrong amortization breaks
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate_is_p_to_16_bits(p):
    """2M elements: the rate is within 5 sigma of ``1 - t / 65536`` (which is ``1 - p`` to 2**-17); 8-bit
    thresholds (p = 0.1 -> 26/256) would be 7 sigma off."""
    keep = L.dropout_mask(512, 4096, p, torch.tensor([2024], device=DEVICE))
    rate, n = keep.double().mean().item(), keep.numel()
    assert abs(_threshold(p) / 65536 - p) <= 2**-17
    assert abs(rate - (1 - _threshold(p) / 65536)) < 5 * (p * (1 - p) / n) ** 0.5


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a == b).double().mean().item()


def test_row_neighbours_are_independent():
    """At p = 0.5 two independent bits agree half the time; elements of one group (columns +1..+3),
    of neighbouring groups and rows agree no more (a shared random value would agree always)."""
    keep = L.dropout_mask(512, 1024, 0.5, torch.tensor([7], device=DEVICE))
    sigma = (0.25 / keep[:, 4:].numel()) ** 0.5
    for dc in (1, 2, 3, 4, 5):
        assert abs(_agreement(keep[:, dc:], keep[:, :-dc]) - 0.5) < 5 * sigma, f"columns {dc} apart"
    assert abs(_agreement(keep[1:], keep[:-1]) - 0.5) < 5 * sigma, "rows"


def test_attention_neighbours_are_independent():
    """Queries and keys 1, 8 and (8, 8) apart (the group ``{i, i+8} x {j, j+8}``), and heads."""
    lengths, heads = [256, 200], 2
    cu = torch.tensor(np.cumsum([0] + lengths), dtype=torch.int32, device=DEVICE)
    keep = A.dropout_mask(cu, heads, 256, 0.5, torch.tensor([31], device=DEVICE))[:, :256, :256]  # sequence 0
    sigma = (0.25 / keep[:, 8:, 8:].numel()) ** 0.5
    shifts = {"key +1": (0, 1), "key +8": (0, 8), "query +1": (1, 0), "query +8": (8, 0), "both +8": (8, 8)}
    for name, (di, dj) in shifts.items():
        a, b = keep[:, di:, dj:], keep[:, :keep.shape[1] - di, :keep.shape[2] - dj]
        assert abs(_agreement(a, b) - 0.5) < 5 * sigma, name
    assert abs(_agreement(keep[0], keep[1]) - 0.5) < 5 * sigma, "heads"


# ============================================================================= backward reads the forward's mask
@pytest.mark.parametrize("hidden", [37, 1025])
def test_layernorm_backward_uses_the_forward_mask_at_ragged_tails(hidden):
    """dx is dresidual times the debug mask's kept-and-scaled factor, column by column, at a hidden size
    that is not a multiple of four (37) and one whose backward has a one-column tail block (1025)."""
    rows, p = 6, 0.3
    gen = torch.Generator().manual_seed(hidden)
    x, residual = (torch.randn(rows, hidden, generator=gen).to(DEVICE) for _ in range(2))
    weight, beta = torch.ones(hidden, device=DEVICE), torch.zeros(hidden, device=DEVICE)
    seed = torch.tensor([hidden * 3 + 1], device=DEVICE)
    y, mean, rstd = L.residual_layernorm_fwd(x, None, residual, weight, beta, 1e-12, p, seed)
    dx, _, dres, _, _ = L.residual_layernorm_bwd(torch.randn(rows, hidden, generator=gen).to(DEVICE), x, None,
                                                 residual, weight, mean, rstd, p, seed)
    keep = L.dropout_mask(rows, hidden, p, seed)
    torch.testing.assert_close(dx, dres * keep / (1 - p), rtol=1e-6, atol=0)
    want = L.residual_layernorm_reference(x, None, residual, weight, beta, 1e-12, keep, p)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


def test_embeddings_share_the_layernorm_stream():
    """The embeddings' dropout zeroes exactly the debug mask's dropped outputs at a ragged hidden size."""
    tokens, hidden, p = 9, 37, 0.4
    gen = torch.Generator().manual_seed(0)
    word, pos, types = (torch.randn(rows, hidden, generator=gen).to(DEVICE) for rows in (11, 9, 2))
    ids = torch.arange(tokens, device=DEVICE) % 11
    seed = torch.tensor([55], device=DEVICE)
    y, _, _ = E.embeddings_fwd(ids, None, torch.arange(tokens, device=DEVICE), ids % 2, word, pos, types,
                               torch.ones(hidden, device=DEVICE), torch.zeros(hidden, device=DEVICE), 1e-12, p, seed)
    assert torch.equal(y != 0, L.dropout_mask(tokens, hidden, p, seed))


@pytest.mark.parametrize("head_dim", [64, 128], ids=["grouped", "per_element"])
def test_dkdv_reads_the_forward_mask(head_dim):
    """dK/dV works on transposed (keys x queries) tiles. With q = k = 0 every probability is ``1/n``, and
    with ``dO`` the identity (row ``i`` one-hot at ``i``) ``dV[j, i] = keep[i, j] / (n (1 - p))``: dV is
    the transposed mask, at lengths past and between the 16-position groups, over two key blocks. At
    head dim 128 the exact-fp32 backward (the interpreter's) draws per element."""
    lengths, heads, p = [1, 23, 64], 2, 0.35
    total = sum(lengths)
    cu = torch.tensor(np.cumsum([0] + lengths), dtype=torch.int32, device=DEVICE)
    q = k = torch.zeros(total, heads, head_dim, device=DEVICE)
    v = torch.randn(total, heads, head_dim, device=DEVICE)
    dout = torch.zeros(total, heads, head_dim, device=DEVICE)
    start = 0
    for n in lengths:
        dout[start:start + n] = torch.eye(n, head_dim, device=DEVICE)[:, None, :]
        start += n
    seed = torch.tensor([4321], device=DEVICE)
    out, lse = A.attention_forward(q, k, v, cu, max(lengths), p, seed)
    dq, dk, dv = (torch.empty_like(q) for _ in range(3))
    A.attention_backward(dout, q, k, v, out, lse, cu, max(lengths), p, seed, dq, dk, dv)
    keep = A.dropout_mask(cu, heads, max(lengths), p, seed)
    start = 0
    for n in lengths:
        got = dv[start:start + n, :, :n].permute(1, 2, 0)  # (heads, query i, key j)
        want = keep[:, start:start + n, :n] / (n * (1 - p))
        torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-7)
        start += n


@pytest.mark.parametrize("head_dim", [64, 128], ids=["grouped", "per_element"])
def test_dq_reads_the_forward_mask(head_dim):
    """dQ, exactly: with q = 0 (probabilities ``1/n``), keys one-hot (``k_j = e_j``), ``v_j = dO_i = e_0``,
    ``dS_ij = (keep_ij / (1 - p) - delta_i) / n`` with ``delta_i`` the row's kept count over ``n (1 - p)``,
    and ``dQ[i, j] = scale * dS_ij``."""
    lengths, heads, p = [1, 23, 64], 2, 0.35
    total, scale = sum(lengths), head_dim ** -0.5
    cu = torch.tensor(np.cumsum([0] + lengths), dtype=torch.int32, device=DEVICE)
    q = torch.zeros(total, heads, head_dim, device=DEVICE)
    k, v, dout = (torch.zeros(total, heads, head_dim, device=DEVICE) for _ in range(3))
    v[..., 0] = dout[..., 0] = 1.0
    start = 0
    for n in lengths:
        k[start:start + n] = torch.eye(n, head_dim, device=DEVICE)[:, None, :]
        start += n
    seed = torch.tensor([987], device=DEVICE)
    out, lse = A.attention_forward(q, k, v, cu, max(lengths), p, seed)
    dq, dk, dv = (torch.empty_like(q) for _ in range(3))
    A.attention_backward(dout, q, k, v, out, lse, cu, max(lengths), p, seed, dq, dk, dv)
    keep = A.dropout_mask(cu, heads, max(lengths), p, seed).float()
    start = 0
    for n in lengths:
        kept = keep[:, start:start + n, :n]  # (heads, i, j)
        delta = kept.sum(-1, keepdim=True) / (n * (1 - p))
        want = scale * (kept / (1 - p) - delta) / n
        torch.testing.assert_close(dq[start:start + n, :, :n].transpose(0, 1), want, rtol=1e-5, atol=1e-7)
        start += n
