"""Token layouts of :mod:`fastbert.padding`: unpad / static / full, gather and scatter.

Expected layouts are derived here from the mask with plain Python loops, independently of the
vectorised implementation.
"""

from __future__ import annotations

import pytest
import torch

from fastbert import ops
from fastbert.padding import full_layout, gather, scatter, static_layout, unpad_layout

CPU = torch.device("cpu")

MASKS = {
    "right_padding": [[1, 1, 1, 0, 0, 0, 0],
                      [1, 1, 1, 1, 1, 1, 1],
                      [1, 0, 0, 0, 0, 0, 0]],
    "left_padding": [[0, 0, 0, 0, 1, 1, 1],
                     [0, 1, 1, 1, 1, 1, 1],
                     [0, 0, 0, 0, 0, 0, 1]],
    "holes": [[1, 0, 1, 1, 0, 0, 1],
              [0, 1, 0, 1, 0, 1, 0],
              [1, 1, 1, 0, 1, 1, 1]],
    "all_zero_row": [[1, 1, 0, 1, 0, 0, 0],
                     [0, 0, 0, 0, 0, 0, 0],
                     [1, 1, 1, 1, 1, 0, 1]],
    "full": [[1] * 7] * 3,
    "single_token": [[0, 0, 0, 1, 0, 0, 0]],
}


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "torch")


def _mask(name, dtype=torch.int64):
    return torch.tensor(MASKS[name], dtype=dtype)


def _expected_unpad(rows):
    """(positions, cu_seqlens, max_seqlen) of the real tokens, from the nested-list mask."""
    seqlen = len(rows[0])
    positions = [b * seqlen + i for b, row in enumerate(rows) for i, m in enumerate(row) if m]
    lengths = [sum(1 for m in row if m) for row in rows]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return positions, cu, max(lengths)


def _expected_static(rows):
    """(order, cu_seqlens): each row's real positions then its padding positions; real and tail sequences."""
    seqlen = len(rows[0])
    order, cu = [], [0]
    for b, row in enumerate(rows):
        real = [b * seqlen + i for i, m in enumerate(row) if m]
        pad = [b * seqlen + i for i, m in enumerate(row) if not m]
        order += real + pad
        cu += [cu[-1] + len(real), cu[-1] + seqlen]
    return order, cu


# ----------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("name", list(MASKS))
@pytest.mark.parametrize("mask_dtype", [torch.int64, torch.bool, torch.float32])
def test_unpad_layout(name, mask_dtype):
    rows = MASKS[name]
    batch, seqlen = len(rows), len(rows[0])
    layout = unpad_layout(_mask(name, mask_dtype))
    positions, cu, max_len = _expected_unpad(rows)
    assert (layout.batch, layout.seqlen) == (batch, seqlen)
    assert layout.cu_seqlens.dtype == torch.int32
    assert layout.keep is None
    if name == "full":
        assert layout.indices is None
        assert layout.cu_seqlens.tolist() == [i * seqlen for i in range(batch + 1)]
        assert layout.max_seqlen == seqlen
    else:
        assert layout.indices.tolist() == positions
        assert layout.cu_seqlens.tolist() == cu
        assert layout.max_seqlen == max_len


def test_unpad_layout_all_zero_mask():
    layout = unpad_layout(torch.zeros(2, 5, dtype=torch.int64))
    assert layout.indices.numel() == 0
    assert layout.cu_seqlens.tolist() == [0, 0, 0]
    assert layout.max_seqlen == 0
    x = torch.randn(2, 5, 3)
    assert gather(x, layout).shape == (0, 3)
    assert torch.equal(scatter(gather(x, layout), layout), torch.zeros(2, 5, 3))


def test_unpad_layout_refuses_to_pack_when_a_padded_position_is_read():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    reads_real = torch.tensor([[True, True, False], [False, True, True]])
    assert unpad_layout(mask, reads_real) is not None
    assert unpad_layout(mask, reads_real | torch.tensor([[False, False, True], [False, False, False]])) is None


def test_unpad_layout_reads_the_host_once(monkeypatch):
    """One device-to-host copy for the count, the longest length and the read check (no nonzero sync)."""
    calls = []
    for name in ("item", "tolist", "__bool__", "__int__", "nonzero"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    original_nonzero = torch.nonzero
    monkeypatch.setattr(torch, "nonzero", lambda *a, **k: calls.append("torch.nonzero") or original_nonzero(*a, **k))
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 1]])
    layout = unpad_layout(mask, torch.ones(2, 4, dtype=torch.bool) & mask.bool())
    assert calls == ["tolist"]
    assert layout.indices.tolist() == [0, 1, 4, 6, 7] and layout.max_seqlen == 3


@pytest.mark.parametrize("name", list(MASKS))
def test_static_layout(name):
    rows = MASKS[name]
    batch, seqlen = len(rows), len(rows[0])
    layout = static_layout(_mask(name))
    order, cu = _expected_static(rows)
    assert (layout.batch, layout.seqlen) == (batch, seqlen)
    assert layout.indices.tolist() == order
    assert layout.cu_seqlens.dtype == torch.int32
    assert layout.cu_seqlens.tolist() == cu
    assert layout.max_seqlen == seqlen
    assert layout.keep.tolist() == [bool(m) for row in rows for m in row]
    # every sequence fits max_seqlen, and real tokens never share a sequence with padding
    lengths = (layout.cu_seqlens[1:] - layout.cu_seqlens[:-1]).tolist()
    assert all(0 <= n <= layout.max_seqlen for n in lengths)
    assert sum(lengths) == batch * seqlen


@pytest.mark.parametrize("batch, seqlen", [(1, 1), (3, 7), (4, 129)])
def test_full_layout(batch, seqlen):
    layout = full_layout(batch, seqlen, CPU)
    assert layout.indices is None and layout.keep is None
    assert layout.cu_seqlens.dtype == torch.int32
    assert layout.cu_seqlens.tolist() == [i * seqlen for i in range(batch + 1)]
    assert layout.max_seqlen == seqlen
    torch.manual_seed(batch * seqlen)
    x = torch.randn(batch, seqlen, 5)
    packed = gather(x, layout)
    assert packed.shape == (batch * seqlen, 5)
    assert torch.equal(packed, x.reshape(-1, 5))
    assert torch.equal(scatter(packed, layout), x)


# ----------------------------------------------------------------------------- gather / scatter
@pytest.mark.parametrize("name", list(MASKS))
@pytest.mark.parametrize("make_layout", [unpad_layout, static_layout], ids=["unpad", "static"])
def test_gather_scatter_round_trip(name, make_layout):
    torch.manual_seed(len(name))
    mask = _mask(name)
    batch, seqlen = mask.shape
    layout = make_layout(mask)
    x = torch.randn(batch, seqlen, 2, 3) + 3.0  # never zero
    packed = gather(x, layout)

    if make_layout is unpad_layout:
        positions, _, _ = _expected_unpad(MASKS[name])
    else:
        positions, _ = _expected_static(MASKS[name])
    assert packed.shape == (len(positions), 2, 3)
    assert torch.equal(packed, x.reshape(-1, 2, 3)[positions])

    back = scatter(packed, layout)
    real = mask.bool()[:, :, None, None]
    assert back.shape == x.shape
    assert torch.equal(back, torch.where(real, x, torch.zeros(())))

    # any packed values: real positions get their row, padding gets exactly zero
    y = torch.randn_like(packed) - 5.0
    grid = scatter(y, layout)
    real_at = mask.bool().flatten()[positions][:, None, None]
    assert torch.equal(grid.reshape(-1, 2, 3)[positions], torch.where(real_at, y, torch.zeros(())))
    assert (grid[~mask.bool()] == 0).all()


@pytest.mark.parametrize("make_layout", [unpad_layout, static_layout], ids=["unpad", "static"])
def test_scatter_gradient_is_zero_at_padding(make_layout):
    torch.manual_seed(2)
    mask = _mask("holes")
    layout = make_layout(mask)
    x = torch.randn(*mask.shape, 4, requires_grad=True)
    packed = gather(x, layout)
    dy = torch.randn(*mask.shape, 4)
    scatter(packed * 2.0, layout).backward(dy)
    real = mask.bool()[:, :, None]
    assert torch.equal(x.grad, torch.where(real, 2.0 * dy, torch.zeros(())))


def test_static_scatter_zeroes_nonfinite_padding_rows():
    """scatter promises zeros at padded positions, even if a padding row overflowed."""
    mask = _mask("right_padding")
    layout = static_layout(mask)
    packed = torch.ones(mask.numel(), 3)
    packed[layout.keep[layout.indices].logical_not()] = float("inf")
    grid = scatter(packed, layout)
    assert torch.equal(grid[~mask.bool()], torch.zeros(int((~mask.bool()).sum()), 3))
    assert torch.equal(grid[mask.bool()], torch.ones(int(mask.sum()), 3))


# ----------------------------------------------------------------------------- attention over layouts
@pytest.mark.parametrize("name", list(MASKS))
def test_attention_static_matches_unpad(name):
    torch.manual_seed(len(name) + 1)
    mask = _mask(name)
    batch, seqlen = mask.shape
    heads, head_dim = 2, 16
    qkv_grid = torch.randn(batch, seqlen, 3, heads, head_dim)
    dy = torch.randn(batch, seqlen, heads, head_dim)

    results = []
    for make_layout in (unpad_layout, static_layout):
        layout = make_layout(mask)
        grid = qkv_grid.clone().requires_grad_(True)
        out = ops.attention(gather(grid, layout), layout.cu_seqlens, layout.max_seqlen)
        y = scatter(out, layout)
        y.backward(dy)
        results.append((y, grid.grad))
    (y_u, g_u), (y_s, g_s) = results

    torch.testing.assert_close(y_s, y_u, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_s, g_u, atol=1e-6, rtol=1e-5)
    assert (y_u[~mask.bool()] == 0).all() and (y_s[~mask.bool()] == 0).all()
    assert (g_s[~mask.bool()] == 0).all()
    # real positions are attention over the real tokens of their own row only (float64 reference)
    for b in range(batch):
        idx = mask[b].nonzero().flatten()
        if idx.numel() == 0:
            continue
        q, k, v = qkv_grid[b, idx].double().unbind(1)
        probs = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / head_dim ** 0.5, dim=-1)
        ref = torch.einsum("hqk,khd->qhd", probs, v)
        torch.testing.assert_close(y_s[b, idx].double(), ref, atol=1e-5, rtol=1e-5)


def test_document_layout_makes_each_run_of_one_id_a_sequence():
    from fastbert.padding import document_layout, document_positions

    docs = torch.tensor([[1, 1, 2, 2, 2, 0], [3, 3, 3, 3, 3, 3], [1, 0, 1, 1, 0, 0]])
    layout = document_layout(docs)
    assert layout.indices.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 14, 15]
    assert layout.cu_seqlens.tolist() == [0, 2, 5, 11, 12, 14] and layout.max_seqlen == 6
    assert document_positions(docs).tolist() == [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 0, 0]]
    assert document_positions(docs, 2)[0].tolist() == [2, 3, 2, 3, 4, 2]
    full = document_layout(torch.ones(2, 3, dtype=torch.long))
    assert full.indices is None and full.cu_seqlens.tolist() == [0, 3, 6]
