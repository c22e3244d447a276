"""The Triton attention kernels (``kernels/attention.py``) against float64 references.

On the CPU the kernels run in the Triton interpreter (``TRITON_INTERPRET=1``, set in conftest); with a
GPU the same tests run the compiled kernels, plus the ``cuda``-marked ones at BERT-base sizes.
Low-precision results are judged against the error PyTorch itself makes doing the same math in
that dtype. bf16 ``tl.dot`` is wrong in triton 3.9.0's interpreter, so there the kernels compute bf16
products in fp32 (what the tensor cores do); :func:`test_interpreter_bf16_workaround_is_probed`
keeps that switch honest.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from fastbert import ops
from fastbert.kernels import attention as A
from conftest import DEVICE
from lowp import assert_lowp_error as _assert_lowp_error

MIXED = [1, 7, 65, 127, 128, 129, 384, 513]  # the packed batch: single-token to multi-tile
SHORT = [1, 7, 65, 127, 128]  # max_seqlen <= 128: the single-tile path
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NAN = float("nan")


def _cu(lengths) -> torch.Tensor:
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    return torch.tensor(offsets, dtype=torch.int32, device=DEVICE)


def _qkv(lengths, heads, head_dim, dtype, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(sum(lengths), 3, heads, head_dim, generator=gen).to(DEVICE, dtype)


def _run(qkv, lengths, max_seqlen=None, dropout_p=0.0, seed=None, dout=None):
    """Kernel forward and backward; outputs and gradients are poisoned with NaN first."""
    q, k, v = qkv.unbind(1)
    cu = _cu(lengths)
    max_seqlen = max_seqlen or max(lengths)
    A.check_inputs(q, k, v, cu, max_seqlen, dropout_p, seed)
    out = torch.full(q.shape, NAN, dtype=q.dtype, device=DEVICE)
    lse = torch.full((q.shape[1], q.shape[0]), NAN, device=DEVICE)
    out, lse = A.attention_forward(q, k, v, cu, max_seqlen, dropout_p, seed, out=out, lse=lse)
    if dout is None:
        return out, None
    dqkv = torch.full_like(qkv, NAN)
    A.attention_backward(dout, q, k, v, out, lse, cu, max_seqlen, dropout_p, seed, *dqkv.unbind(1))
    return out, dqkv


def _reference(qkv, lengths, dout=None, keep=None, dropout_p=0.0):
    """``attention_reference`` with autograd in qkv's dtype; returns ``(out, dqkv)``."""
    leaf = qkv.detach().clone().requires_grad_(dout is not None)
    out = A.attention_reference(*leaf.unbind(1), _cu(lengths), dropout_p, keep)
    if dout is None:
        return out.detach(), None
    out.backward(dout.to(out.dtype))
    return out.detach(), leaf.grad


def _max_err(actual, expected) -> float:
    assert torch.isfinite(actual).all(), "non-finite values (an unwritten element?)"
    return (actual.double() - expected.double()).abs().max().item()


def _check_against_float64(qkv, lengths, max_seqlen=None, what="", backward=True):
    """Forward and dqkv (same upstream gradient) vs float64; low precision within 2x PyTorch's own error."""
    dout = torch.randn(qkv.shape[0], *qkv.shape[2:], generator=torch.Generator().manual_seed(1)).to(DEVICE)
    dout = dout if backward else None
    out, dqkv = _run(qkv, lengths, max_seqlen, dout=None if dout is None else dout.to(qkv.dtype))
    out64, dqkv64 = _reference(qkv.double(), lengths, dout)
    if qkv.dtype == torch.float32:
        assert _max_err(out, out64) <= 2e-5, what
        if backward:
            assert _max_err(dqkv, dqkv64) <= 5e-5 * max(1.0, dqkv64.abs().max().item()), what
        return
    out_lowp, dqkv_lowp = _reference(qkv, lengths, dout)
    _assert_lowp_error(out, out_lowp, out64, f"{what} out")
    if backward:
        _assert_lowp_error(dqkv, dqkv_lowp, dqkv64, f"{what} dqkv")


# ============================================================================= exactness
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mixed_lengths_match_float64(dtype):
    """One packed batch of lengths 1..513 (single-token, tail tiles, several key tiles), head_dim 64."""
    _check_against_float64(_qkv(MIXED, 1, 64, dtype), MIXED, what=f"{dtype}")


@pytest.mark.parametrize("head_dim", [16, 32, 48, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_head_dims_match_float64(head_dim, dtype):
    """Head dims below, at and between powers of two (48 is masked up to 64) on a multi-tile batch."""
    lengths = [1, 7, 129, 200]
    _check_against_float64(_qkv(lengths, 2, head_dim, dtype, seed=head_dim), lengths, what=f"d={head_dim}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [32, 80])
def test_single_tile_path_matches_float64(dtype, head_dim):
    """max_seqlen <= 128 takes the single-tile kernel; an upper bound of 300 takes the tiled one."""
    qkv = _qkv(SHORT, 2, head_dim, dtype, seed=3)
    _check_against_float64(qkv, SHORT, what="single tile")
    _check_against_float64(qkv, SHORT, max_seqlen=300, what="tiled, max_seqlen an upper bound")


@pytest.mark.parametrize("dtype, head_dim", [(torch.float32, 48), (torch.float16, 48), (torch.float16, 96),
                                             (torch.float32, 96)], ids=str)
@pytest.mark.parametrize("kind", ["fwd", "single", "dkdv", "dq", "short"])
def test_every_autotune_config_is_exact(kind, dtype, head_dim, monkeypatch):
    """Each tile the autotuner may pick on a GPU gives the right answer (here run one by one), for the
    narrow (BLOCK_D 64) and wide (BLOCK_D 128) tables."""
    lengths = [1, 65, 100] if kind in ("single", "short") else [1, 65, 133]
    qkv = _qkv(lengths, 1, head_dim, dtype, seed=5)
    table_key = (head_dim > 64, "ieee" if dtype == torch.float32 else "16bit")  # fp32: exact by default
    monkeypatch.setitem(A._SPILLS_BY_TRITON, (0, 0), [])  # tiles left out on some arch compute right too
    monkeypatch.setattr(A, "_triton_version", lambda: (0, 0))
    for tile in A._TILES[kind][table_key]:
        monkeypatch.setitem(A._TILES[kind], table_key, [tile])
        if kind == "short":  # sequences up to the key block the tile is proven at, which it then runs
            lengths = [1, 33, tile[1] - 3]
            qkv = _qkv(lengths, 1, head_dim, dtype, seed=5)
            assert A._short_key_block(max(lengths), head_dim, dtype, "ieee", False, qkv.device) == tile[1]
        _check_against_float64(qkv, lengths, what=f"{kind} {tile}", backward=kind in ("dkdv", "dq", "short"))


def test_strided_qkv_view_is_read_in_place():
    """q, k, v as strided views of a wider projection output (no copies) give the same result."""
    lengths = [5, 1, 17, 140]
    wide = torch.randn(sum(lengths), 3 * 2 * 32 + 9, device=DEVICE)
    qkv = wide[:, 4:4 + 3 * 2 * 32].view(-1, 3, 2, 32)
    assert not qkv.is_contiguous()
    _check_against_float64(qkv, lengths, what="strided view")


def test_empty_sequences_and_an_empty_batch(monkeypatch):
    """Zero-length sequences (``static_layout`` makes them) and a batch with no tokens at all."""
    lengths = [3, 0, 70, 0, 5]
    _check_against_float64(_qkv(lengths, 2, 32, torch.float32), lengths, what="empty sequences")
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    empty = torch.empty(0, 3, 2, 32, device=DEVICE, requires_grad=True)
    out = ops.attention(empty, torch.zeros(3, dtype=torch.int32, device=DEVICE), 0)
    out.sum().backward()
    assert out.shape == (0, 2, 32) and empty.grad.shape == empty.shape


@pytest.mark.parametrize("kind", list(A._TILES))
def test_autotuner_prunes_to_the_proven_tiles(kind):
    """The autotuner only tries the tiles check-kernels proved for that head dim and dtype (here, without
    a device limit: the interpreter's)."""
    for block_d, dtype, precision, dropout in itertools.product((16, 32, 64, 128), A.KERNEL_DTYPES, ("ieee", "tf32"),
                                                               (False, True)):
        q = torch.empty(1, 1, block_d, dtype=dtype)
        kept = A._TUNED[kind]._prune(A._all_configs(kind), {"Q": q}, BLOCK_D=block_d, INPUT_PRECISION=precision,
                                     HAS_DROPOUT=dropout)
        want = A.tile_configs(kind, block_d, dtype, precision, dropout=dropout)
        assert sorted(map(str, kept)) == sorted(map(str, want))
        assert kept or kind in ("single", "short")  # some dtypes and head dims have none (they spill)


def test_tiles_that_spill_under_a_triton_version_are_left_out(monkeypatch):
    """Under a measured version only its own spilling tiles go; under an unmeasured one, every tile that
    spilled under any measured version."""
    default = A._TILES["single"][(False, "16bit")][0]
    for version, dropout, present in (((3, 6), True, False), ((3, 6), False, True), ((3, 9), True, True),
                                      ((3, 7), True, False), ((3, 7), None, False)):
        monkeypatch.setattr(A, "_triton_version", lambda: version)
        tiles = A.tile_configs("single", 64, torch.float16, "tf32", dropout=dropout)
        assert (str(A._config(default)) in map(str, tiles)) == present, (version, dropout)
    monkeypatch.setattr(A, "_triton_version", lambda: (3, 6))
    seen = []
    monkeypatch.setattr(A, "_launch", lambda kind, *args, **meta: seen.append(kind))
    q = torch.randn(8, 1, 32, device=DEVICE, dtype=torch.float16)
    A.attention_forward(q, q, q, _cu([8]), 8, 0.1, torch.tensor([1], device=DEVICE))
    A.attention_forward(q, q, q, _cu([8]), 8)
    assert seen == ["fwd", "single"]  # under 3.6 every d32 single tile spills with dropout


@pytest.mark.parametrize("arch", [80, 86, 89, 90, 100, 120])
def test_every_kernel_has_a_tile_that_fits_each_arch(arch):
    """On every arch with tensor cores (below sm_80 attention runs PyTorch) the tables leave a tile
    within its shared memory for each kernel, dtype and head dim, and only such tiles; check-kernels
    compiles exactly these."""
    from fastbert.routing import smem_limit

    limit = smem_limit(arch)
    for kind, block_d, dtype, precision in itertools.product(("fwd", "dkdv", "dq"), (32, 64, 128), A.KERNEL_DTYPES,
                                                            ("ieee", "tf32")):
        tiles = A.tile_configs(kind, block_d, dtype, precision, limit)
        assert tiles, (kind, block_d, dtype, precision)
        assert all(A.smem_bytes(kind, c, block_d, dtype) <= limit for c in tiles)
        assert len(tiles) <= len(A.tile_configs(kind, block_d, dtype, precision))


def test_single_tile_is_skipped_where_its_length_bucket_does_not_fit(monkeypatch):
    """With a device limit below the single tile's shared memory at 128 keys, 128-token batches take
    the tiled kernel and still match the reference."""
    seen = []
    real = A._launch
    monkeypatch.setattr(A, "_launch", lambda kind, *a, **m: seen.append(kind) or real(kind, *a, **m))
    monkeypatch.setattr(A, "device_smem_limit", lambda device: 60000)
    q, k, v = (torch.randn(128, 2, 128, device=DEVICE, dtype=torch.float16) for _ in range(3))
    cu = _cu([128])
    out, _ = A.attention_forward(q, k, v, cu, 128)
    assert seen == ["fwd"]
    ref = A.attention_reference(q.float(), k.float(), v.float(), cu)
    assert (out.float() - ref).abs().max() < 1e-2


# ============================================================================= the one-program backward
def _backward_kernels(monkeypatch) -> list:
    """The kernels each backward launches from now on, in order: "short", or "preprocess", "dkdv", "dq"."""
    seen = []
    launch, preprocess = A._launch, A._attention_bwd_preprocess

    class Preprocess:
        def __getitem__(self, grid):
            seen.append("preprocess")
            return preprocess[grid]

    def recorded(kind, *args, **meta):
        if kind not in ("fwd", "single"):
            seen.append(kind)
        launch(kind, *args, **meta)

    monkeypatch.setattr(A, "_launch", recorded)
    monkeypatch.setattr(A, "_attention_bwd_preprocess", Preprocess())
    return seen


THREE_KERNELS = ["preprocess", "dkdv", "dq"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [32, 40, 64])
def test_short_backward_matches_float64(dtype, head_dim, monkeypatch):
    """Up to 128 tokens one program per (sequence, head) computes dQ, dK and dV: a mixed batch (lengths 1
    to 128, several query steps) and one in the smallest key block (16), gradients poisoned with NaN.
    Exact fp32 at BLOCK_D 64 is proven up to 64 keys in the interpreter (any arch): its 128-token batch
    takes the three kernels there."""
    seen, expected = _backward_kernels(monkeypatch), []
    for lengths in (SHORT, [16, 7, 3, 1]):
        qkv = _qkv(lengths, 2, head_dim, dtype, seed=head_dim + len(lengths))
        _check_against_float64(qkv, lengths, what=f"short backward {lengths}")
        fused = A._short_key_block(max(lengths), head_dim, dtype, A.input_precision(dtype), False, qkv.device)
        expected += ["short"] if fused else THREE_KERNELS
    assert seen == expected and "short" in seen


def test_backward_routes_on_max_seqlen(monkeypatch):
    """The one-program backward runs for max_seqlen <= SHORT_BWD_MAX_SEQLEN, the three kernels above it:
    for a longer sequence in the batch and for a larger upper bound alike. A batch cannot pass a
    max_seqlen below one of its lengths (checked before any kernel), so no sequence longer than the
    short kernel's key block reaches it."""
    seen = _backward_kernels(monkeypatch)
    lengths = SHORT + [A.SHORT_BWD_MAX_SEQLEN + 1]
    qkv = _qkv(lengths, 2, 32, torch.float16, seed=4)
    short = qkv[:sum(SHORT)]
    for batch, rows, max_seqlen, kernels in ((short, SHORT, None, ["short"]),
                                             (short, SHORT, A.SHORT_BWD_MAX_SEQLEN + 1, THREE_KERNELS),
                                             (qkv, lengths, None, THREE_KERNELS)):
        seen.clear()
        _check_against_float64(batch, rows, max_seqlen, what=f"max_seqlen {max_seqlen or max(rows)}")
        assert seen == kernels, (max_seqlen, rows)
    with pytest.raises(ValueError, match="more than max_seqlen"):
        A.check_inputs(*qkv.unbind(1), _cu(lengths), A.SHORT_BWD_MAX_SEQLEN, 0.0, None)


def test_short_backward_tiles_have_64_rows_on_sm90(monkeypatch):
    """On sm_90 the key block is at least 64 and the query steps too (wgmma takes 64 rows), and the padded
    tile computes right; on sm_80 short batches take the 16-key block."""
    q = torch.empty(1, 1, 64, device=DEVICE)
    assert A._short_key_block(7, 64, torch.float16, "tf32", False, q.device) == 16
    monkeypatch.setattr(A, "device_arch", lambda device: 90)
    assert A._short_key_block(7, 64, torch.float16, "tf32", False, q.device) == 64
    for dropout in (False, True):
        tiles = A.tile_configs("short", 64, torch.float16, "tf32", block_n=64, dropout=dropout, arch=90)
        assert tiles and all(c.kwargs["BLOCK_M"] >= 64 for c in tiles)
    seen = _backward_kernels(monkeypatch)
    lengths = [7, 1, 3]
    _check_against_float64(_qkv(lengths, 2, 64, torch.float16, seed=8), lengths, what="sm_90 tile")
    assert seen == ["short"]


# ============================================================================= dropout
def test_dropout_keep_rate():
    p = 0.27
    lengths = [1, 300, 129, 64]
    cu = _cu(lengths)
    keep = A.dropout_mask(cu, 4, max(lengths), p, torch.tensor([77], device=DEVICE))
    kept = count = 0
    for start, n in zip(cu.tolist(), lengths):
        block = keep[:, start:start + n, :n]
        kept, count = kept + int(block.sum()), count + block.numel()
    assert count > 400_000
    assert abs(kept / count - (1 - p)) < 0.01
    assert not keep[:, :, :].all(dim=0).all()  # heads draw different bits


@pytest.mark.parametrize("max_seqlen", [64, 200], ids=["single_tile", "tiled"])
def test_forward_applies_the_debug_mask(max_seqlen):
    """With v = identity rows, out[i, h, j] reads the kernel's dropped probability of key j: it is zero
    exactly where :func:`dropout_mask` says dropped (both kernel paths)."""
    p, heads = 0.3, 2
    lengths = [64, 1, 33, 64]
    seed = torch.tensor([1234], device=DEVICE)
    qkv = _qkv(lengths, heads, 64, torch.float32) * 0.5
    start = 0
    for n in lengths:
        qkv[start:start + n, 2] = torch.eye(n, 64, device=DEVICE)[:, None, :]
        start += n
    out, _ = _run(qkv, lengths, max_seqlen, p, seed)
    keep = A.dropout_mask(_cu(lengths), heads, max_seqlen, p, seed)
    start = 0
    for n in lengths:
        got = out[start:start + n, :, :n].permute(1, 0, 2) != 0  # (heads, query, key)
        assert torch.equal(got, keep[:, start:start + n, :n])
        start += n


@pytest.mark.parametrize("lengths, head_dim", [([9, 1, 140, 40], 48), ([9, 1, 128, 40], 32)],
                         ids=["three_kernels", "short"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p", [0.1, 0.27])
def test_dropout_backward_uses_the_forward_mask(p, dtype, lengths, head_dim, monkeypatch):
    """Forward and all gradients match the reference run with the kernel's own mask, on both backward paths."""
    seen = _backward_kernels(monkeypatch)
    seed = ops.new_seed(DEVICE)
    qkv = _qkv(lengths, 2, head_dim, dtype, seed=11)
    keep = A.dropout_mask(_cu(lengths), 2, max(lengths), p, seed)
    dout = torch.randn(qkv.shape[0], 2, head_dim, device=DEVICE)
    out, dqkv = _run(qkv, lengths, dropout_p=p, seed=seed, dout=dout.to(dtype))
    out64, dqkv64 = _reference(qkv.double(), lengths, dout, keep, p)
    if dtype == torch.float32:
        assert _max_err(out, out64) <= 2e-5 and _max_err(dqkv, dqkv64) <= 1e-4
    else:
        out_lowp, dqkv_lowp = _reference(qkv, lengths, dout, keep, p)
        _assert_lowp_error(out, out_lowp, out64, "out")
        _assert_lowp_error(dqkv, dqkv_lowp, dqkv64, "dqkv")
    assert seen == (["short"] if max(lengths) <= A.SHORT_BWD_MAX_SEQLEN else THREE_KERNELS)


@pytest.mark.parametrize("lengths", [[7, 130, 65], [7, 128, 65]], ids=["three_kernels", "short"])
def test_same_seed_is_bitwise_deterministic(lengths):
    qkv = _qkv(lengths, 2, 32, torch.float16)
    dout = torch.randn(qkv.shape[0], 2, 32, device=DEVICE).half()
    seed = torch.tensor([5], device=DEVICE)
    first = _run(qkv, lengths, dropout_p=0.2, seed=seed, dout=dout)
    second = _run(qkv, lengths, dropout_p=0.2, seed=seed.clone(), dout=dout)
    other = _run(qkv, lengths, dropout_p=0.2, seed=seed + 1, dout=dout)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


# ============================================================================= bad input
def _bad_call(**changes):
    lengths = [3, 5]
    qkv = _qkv(lengths, 2, 16, torch.float32)
    args = dict(q=qkv[:, 0], k=qkv[:, 1], v=qkv[:, 2], cu_seqlens=_cu(lengths), max_seqlen=5, dropout_p=0.0,
                seed=None)
    args.update(changes)
    return lambda: A.attention(**args)


@pytest.mark.parametrize("changes, error, match", [
    (dict(k=torch.randn(8, 2, 32, device=DEVICE)), ValueError, "shapes disagree"),
    (dict(v=torch.randn(8, 3, 16, device=DEVICE)), ValueError, "shapes disagree"),
    (dict(q=torch.ones(8, 2, 16, dtype=torch.int32, device=DEVICE)), TypeError, "must be one of float16, bfloat16, float32"),
    (dict(cu_seqlens=torch.tensor([0, 5, 3], dtype=torch.int32, device=DEVICE)), ValueError, "never decrease"),
    (dict(cu_seqlens=torch.tensor([0, 3, 7], dtype=torch.int32, device=DEVICE)), ValueError, "end at total_tokens"),
    (dict(cu_seqlens=torch.tensor([0, 3, 8])), TypeError, "int32"),
    (dict(max_seqlen=4), ValueError, "more than max_seqlen"),
    (dict(dropout_p=0.1), ValueError, "needs seed"),
    (dict(dropout_p=1.0), ValueError, "dropout_p"),
])
def test_bad_input_raises_before_any_kernel(changes, error, match):
    with pytest.raises(error, match=match):
        _bad_call(**changes)()


@pytest.mark.parametrize("head_dim, dtype, why", [(160, torch.float32, "head_dim 160 > 128"),
                                                   (16, torch.float64, "dtype torch.float64")])
def test_what_the_kernels_do_not_take_falls_back_to_pytorch(head_dim, dtype, why, monkeypatch):
    """The kernel API refuses it; the op runs the PyTorch implementation (documented) with a warning."""
    qkv = _qkv([3, 5], 1, head_dim, dtype).requires_grad_()
    with pytest.raises((ValueError, TypeError), match="head_dim must be at most 128|must be one of"):
        _bad_call(q=qkv[:, 0], k=qkv[:, 1], v=qkv[:, 2])()
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    with pytest.warns(UserWarning, match=why):
        out = ops.attention(qkv, _cu([3, 5]), 5)
    torch.testing.assert_close(out, _reference(qkv, [3, 5])[0])
    with pytest.warns(UserWarning, match=why):
        out.sum().backward()
    assert torch.isfinite(qkv.grad).all()


def test_offsets_past_32_bits_within_a_sequence_are_refused():
    qkv = _qkv([3, 5], 1, 16, torch.float32)
    with pytest.raises(ValueError, match="exceeds 2\\*\\*31"):
        A.attention(*qkv.unbind(1), _cu([3, 5]), 2**26)


def test_dropout_without_a_seed_is_refused_by_the_raw_op(monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    qkv = _qkv([3, 5], 1, 16, torch.float32)
    with pytest.raises(ValueError, match="needs seed"):
        torch.ops.fastbert.attention(qkv, _cu([3, 5]), 5, 0.1, None)


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET")
    qkv = torch.randn(8, 3, 2, 16)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        ops.attention(qkv, torch.tensor([0, 8], dtype=torch.int32), 8)


# ============================================================================= the op and the model
def test_op_triton_backend_matches_torch_backend(monkeypatch):
    lengths = [1, 7, 130, 65]
    qkv = _qkv(lengths, 3, 32, torch.float32).requires_grad_()
    dout = torch.randn(qkv.shape[0], 3, 32, device=DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("FASTBERT_BACKEND", backend)
        qkv.grad = None
        out = ops.attention(qkv, _cu(lengths), max(lengths))
        out.backward(dout)
        results[backend] = (out.detach(), qkv.grad.clone())
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(results["triton"][1], results["torch"][1], atol=1e-5, rtol=1e-5)


def test_opcheck_with_the_triton_backend(monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    lengths = [3, 9]
    qkv = _qkv(lengths, 2, 16, torch.float32).requires_grad_()
    torch.library.opcheck(torch.ops.fastbert.attention.default,
                          (qkv, _cu(lengths), max(lengths), 0.1, torch.tensor([3], device=DEVICE)),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


# ============================================================================= native kernels at BERT-base sizes
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (the CPU runs these kernels above)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("max_len", [128, 512])
def test_bert_base_sizes_on_gpu(dtype, max_len):
    gen = torch.Generator().manual_seed(max_len)
    lengths = torch.randint(max_len // 4, max_len + 1, (32,), generator=gen).tolist()
    qkv = _qkv(lengths, 12, 64, dtype)
    _check_against_float64(qkv, lengths, what=f"BERT-base {dtype} max {max_len}")
    dout = torch.randn(qkv.shape[0], 12, 64, device=DEVICE, dtype=dtype)
    seed = torch.tensor([9], device=DEVICE)
    first = _run(qkv, lengths, dropout_p=0.1, seed=seed, dout=dout)
    again = _run(qkv, lengths, dropout_p=0.1, seed=seed, dout=dout)
    assert torch.equal(first[1], again[1])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_long_sequences_and_many_sequences_on_gpu():
    """Up to 8192 tokens in one sequence; more sequences than a CUDA grid's y axis holds (65535)."""
    lengths = [8192, 4097, 1]
    _check_against_float64(_qkv(lengths, 2, 64, torch.bfloat16), lengths, what="8192 tokens")
    many = [1, 2, 3] * 23_000
    qkv = _qkv(many, 1, 16, torch.float16)
    out, _ = _run(qkv, many)
    ref, _ = _reference(qkv.float(), many)
    assert _max_err(out, ref) < 2e-3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_fp32_with_tf32_on_gpu():
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    lengths = [200, 77]
    qkv = _qkv(lengths, 4, 64, torch.float32)
    try:
        matmul.fp32_precision = "tf32"
        out, _ = _run(qkv, lengths)
    finally:
        matmul.fp32_precision = saved
    assert _max_err(out, _reference(qkv.double(), lengths)[0]) < 5e-3
