"""The fused QKV projection (``kernels/qkv.py``) against float64.

On the CPU the kernel runs in the Triton interpreter (conftest sets ``TRITON_INTERPRET=1``). Outputs are
fresh ``torch.empty`` buffers: every comparison checks finiteness (:func:`lowp.max_err`), and one test
poisons the allocator's memory with NaN first.
"""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICE
from fastbert.kernels import qkv as Q
from lowp import assert_lowp_error, max_err

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NAMES = ["out", "dx", "dwq", "dwk", "dwv", "dbq", "dbk", "dbv"]


def _inputs(tokens, hidden, dtype, bias=True, seed=0, hidden_in=None):
    """``(x, wq, wk, wv, bq, bk, bv)`` scaled like a trained layer (outputs of order 1)."""
    hidden_in = hidden_in or hidden
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    x = rand(tokens, hidden_in)
    ws = [rand(hidden, hidden_in) / hidden_in ** 0.5 for _ in range(3)]
    bs = [0.5 * rand(hidden) if bias else None for _ in range(3)]
    return [t.to(DEVICE, dtype) if t is not None else None for t in (x, *ws, *bs)]


def _forward_error(ours, inputs):
    exact = Q.qkv_reference(*(t.double() if t is not None else None for t in inputs))
    theirs = Q.qkv_reference(*inputs)
    return ours, theirs, exact


def _check_forward(tokens, hidden, dtype, bias=True):
    inputs = _inputs(tokens, hidden, dtype, bias, seed=tokens + hidden)
    ours = Q.qkv_forward(*inputs)
    assert ours.shape == (tokens, 3 * hidden) and ours.dtype == dtype and ours.is_contiguous()
    ours, theirs, exact = _forward_error(ours, inputs)
    what = f"out {dtype} {tokens}x{hidden} bias={bias}"
    assert_lowp_error(ours, theirs, exact, what)  # fp32 too: at most 2x PyTorch's own F.linear error


# ============================================================================= forward
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [32, 40, 96])
@pytest.mark.parametrize("tokens", [1, 7, 65, 129])
def test_forward_matches_float64(tokens, hidden, dtype):
    """Token counts below, at and past one tile; hidden sizes a multiple of the tile width, 40 (a part of
    the output that ends mid-tile) and 96 (1.5 tiles of 64)."""
    _check_forward(tokens, hidden, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", [7, 129])
def test_forward_bert_size(tokens, dtype):
    """MiniLM's hidden size, three 128-wide tile columns per part."""
    _check_forward(tokens, 384, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [40, 96])
def test_forward_without_bias(hidden, dtype):
    _check_forward(65, hidden, dtype, bias=False)


def test_every_column_is_its_own_weights_row():
    """Each output column block comes from its own weight and bias, not a neighbour's: one-hot rows of x
    read the weights back column by column."""
    hidden = 40
    x = torch.eye(hidden, device=DEVICE)
    ws = [torch.randn(hidden, hidden, device=DEVICE) for _ in range(3)]
    bs = [torch.full((hidden,), float(i + 1), device=DEVICE) for i in range(3)]
    out = Q.qkv_forward(x, *ws, *bs)
    for i, (w, b) in enumerate(zip(ws, bs)):
        torch.testing.assert_close(out[:, i * hidden:(i + 1) * hidden], w.t() + b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_kernel_writes_every_output_element(dtype, bias):
    """The kernel into a NaN-filled buffer (the launcher allocates with torch.empty): every element of
    the three 40-wide parts is written, across ragged tile rows and a part ending mid-tile."""
    inputs = _inputs(65, 40, dtype, bias)
    out = torch.full((65, 120), float("nan"), dtype=dtype, device=DEVICE)
    Q._launch(*inputs, out)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, Q.qkv_forward(*inputs), rtol=0, atol=0)


def test_general_hidden_in():
    """hidden_in != hidden (not BERT's, but the kernel does not care), with a ragged last K block."""
    inputs = _inputs(9, 40, torch.float32, hidden_in=70, seed=3)
    ours, _, exact = _forward_error(Q.qkv_forward(*inputs), inputs)
    assert max_err(ours, exact) <= 2e-5 * exact.abs().max().item()


def test_strided_inputs_are_read_by_value():
    """A column-sliced x (row stride != hidden), a transposed x view and column-major weights give the
    contiguous result."""
    x, wq, wk, wv, bq, bk, bv = _inputs(9, 40, torch.float32)
    expected = Q.qkv_forward(x, wq, wk, wv, bq, bk, bv)
    wide = torch.cat([x, x], dim=1)[:, :40]
    x_t = x.t().contiguous().t()
    w_t = [w.t().contiguous().t() for w in (wq, wk, wv)]
    assert not wide.is_contiguous() and not x_t.is_contiguous() and not w_t[0].is_contiguous()
    torch.testing.assert_close(Q.qkv_forward(wide, wq, wk, wv, bq, bk, bv), expected, rtol=0, atol=0)
    torch.testing.assert_close(Q.qkv_forward(x_t, *w_t, bq, bk, bv), expected, rtol=0, atol=0)
    torch.testing.assert_close(Q.qkv_forward(x, w_t[0], wk, wv, bq, bk, bv), expected, rtol=0, atol=0)


def test_empty_batch():
    x, *rest = _inputs(0, 40, torch.float32)
    out = Q.qkv_forward(x, *rest)
    assert out.shape == (0, 120)
    dx, dwq, dwk, dwv, db = Q.qkv_backward(torch.zeros(0, 120, device=DEVICE), x, *rest[:3], True)
    assert dx.shape == (0, 40) and (dwq == 0).all() and (db == 0).all() and db.shape == (120,)


# ============================================================================= backward
def _grads_of(fn, inputs, dy, dtype=None):
    leaves = [t.detach().to(dtype or t.dtype).clone().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*leaves)
    out.backward(dy.to(out.dtype))
    return [out.detach()] + [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens, hidden, bias", [(7, 96, True), (65, 40, True), (33, 32, False)])
def test_backward_matches_float64_autograd(tokens, hidden, bias, dtype):
    """FusedQKV's forward and every gradient against float64 autograd of the reference (torch.cat + F.linear)
    with one upstream gradient."""
    inputs = _inputs(tokens, hidden, dtype, bias, seed=tokens)
    dy = torch.randn(tokens, 3 * hidden, device=DEVICE).to(dtype).float()
    ours = _grads_of(Q.FusedQKV.apply, inputs, dy)
    exact = _grads_of(Q.qkv_reference, inputs, dy, torch.float64)
    theirs = _grads_of(Q.qkv_reference, inputs, dy)
    for name, a, b, c in zip(NAMES, ours, exact, theirs):
        if b is None:
            assert a is None, name
            continue
        assert a.shape == b.shape and a.dtype == dtype, name
        if dtype == torch.float32:
            assert max_err(a, b) <= 2e-5 * max(1.0, b.abs().max().item()), name
        else:
            assert_lowp_error(a, c, b, f"{name} {dtype} {tokens}x{hidden}")


def test_backward_returns_views_of_one_weight_gradient():
    """dwq, dwk, dwv are row blocks of one (3H, H) GEMM; db is one (3H,) sum; a 4-D dout view works."""
    x, wq, wk, wv, *_ = _inputs(7, 40, torch.float16)
    dout = torch.randn(7, 3, 4, 10, device=DEVICE).to(torch.float16)
    dx, dwq, dwk, dwv, db = Q.qkv_backward(dout, x, wq, wk, wv, True)
    assert dwq.shape == dwk.shape == dwv.shape == (40, 40)
    assert dwk.data_ptr() == dwq.data_ptr() + 40 * 40 * 2 and dwv.data_ptr() == dwk.data_ptr() + 40 * 40 * 2
    assert db.shape == (120,) and db.dtype == torch.float16
    torch.testing.assert_close(db.float(), dout.reshape(7, 120).float().sum(0), rtol=1e-3, atol=1e-3)
    assert Q.qkv_backward(dout, x, wq, wk, wv, False)[4].numel() == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens, hidden, hidden_in", [(1, 32, 32), (7, 40, 24), (65, 96, 96), (129, 32, 72)])
def test_dx_kernel_matches_float64_and_adds_another_gradient(tokens, hidden, hidden_in, dtype):
    """``_qkv_bwd_dx`` reads the three weights where they are (no concatenation), with and without the
    gradient it is asked to add (``dx_into``), into NaN-poisoned memory."""
    x, wq, wk, wv, *_ = _inputs(tokens, hidden, dtype, seed=tokens + hidden_in, hidden_in=hidden_in)
    gen = torch.Generator().manual_seed(tokens)
    dout = torch.randn(tokens, 3 * hidden, generator=gen).to(DEVICE, dtype)
    into = torch.randn(tokens, hidden_in, generator=gen).to(DEVICE, dtype)
    w = torch.cat((wq, wk, wv))
    for extra in (None, into):
        torch.empty(4 * tokens * max(hidden, hidden_in), device=DEVICE, dtype=dtype).fill_(float("nan"))
        dx, dw, db = Q.qkv_bwd(dout, x, wq, wk, wv, True, dx_into=extra)
        exact = dout.double() @ w.double() + (0 if extra is None else extra.double())
        theirs = dout @ w if extra is None else torch.addmm(extra, dout, w)
        assert dx.shape == (tokens, hidden_in) and dx.dtype == dtype
        what = f"dx {dtype} {tokens}x{hidden}->{hidden_in} into={extra is not None}"
        if dtype == torch.float32:
            assert max_err(dx, exact) <= 2e-5 * max(1.0, exact.abs().max().item()), what
        else:
            assert_lowp_error(dx, theirs, exact, what)
    assert torch.equal(dw, dout.t() @ x)
    # The biases' gradient, summed by the same launch's programs past the GEMM's tiles.
    exact_db, theirs_db = dout.double().sum(0), dout.sum(0, dtype=torch.float32).to(dtype)
    assert db.shape == (3 * hidden,) and db.dtype == dtype
    if dtype == torch.float32:
        assert max_err(db, exact_db) <= 2e-5 * max(1.0, exact_db.abs().max().item()), f"db {dtype} {tokens}"
    else:
        assert_lowp_error(db, theirs_db, exact_db, f"db {dtype} {tokens}x{hidden}")
    assert Q.qkv_bwd(dout, x, wq, wk, wv, False)[2].numel() == 0


def test_dx_kernel_adds_a_gradient_it_cannot_read_in_place_afterwards():
    """A ``dx_into`` of another dtype or layout is added after the kernel: the same sum."""
    x, wq, wk, wv, *_ = _inputs(7, 40, torch.float32)
    dout = torch.randn(7, 120, device=DEVICE)
    into = torch.randn(40, 7, device=DEVICE).t()  # not contiguous
    dx = Q.qkv_bwd(dout, x, wq, wk, wv, False, weight_grads=False, dx_into=into)[0]
    torch.testing.assert_close(dx, dout @ torch.cat((wq, wk, wv)) + into, rtol=1e-5, atol=1e-5)


def test_autograd_saves_no_stacked_weight():
    """What autograd keeps between forward and backward: x and the three parameters themselves."""
    x, wq, wk, wv, bq, bk, bv = (t.requires_grad_() for t in _inputs(7, 40, torch.float32))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        Q.FusedQKV.apply(x, wq, wk, wv, bq, bk, bv)
    assert len(saved) == 4 and all(any(s is t for t in (x, wq, wk, wv)) for s in saved)


# ============================================================================= bad input
@pytest.mark.parametrize("change, match", [
    (dict(x=torch.randn(4, 40, 2)), "x must be 2-D"),
    (dict(wq=torch.randn(40, 39)), r"wq must be \(hidden, 40\)"),
    (dict(wk=torch.randn(41, 40)), r"wk must be \(40, 40\) like wq"),
    (dict(wv=torch.randn(40, 39)), r"wv must be \(40, 40\) like wq"),
    (dict(bk=torch.randn(39)), r"bk must be \(40,\)"),
    (dict(bv=None), "bv is None but bq, bk is not"),
    (dict(bq=None, bk=None), "bq, bk is None but bv is not"),
    (dict(wv=torch.randn(40, 40, dtype=torch.float16)), "wv has dtype torch.float16"),
    (dict(bq=torch.randn(40, dtype=torch.float64)), "bq must be float16, bfloat16 or float32"),
    (dict(x=torch.ones(4, 40, dtype=torch.int64)), "x must be float16, bfloat16 or float32"),
    (dict(wk=[[1.0]]), "wk must be a tensor"),
])
def test_bad_input_raises_naming_the_argument(change, match):
    args = dict(zip(("x", "wq", "wk", "wv", "bq", "bk", "bv"), _inputs(4, 40, torch.float32)))
    args.update({k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in change.items()})
    with pytest.raises(ValueError, match=match):
        Q.qkv_forward(**args)


# ============================================================================= ahead-of-time variants
def test_aot_variants_cover_the_tile_tables():
    """check-kernels compiles every tile the launcher may pick: per dtype and precision, those that fit
    the arch's shared memory, tensor cores promised except for exact fp32; nothing before sm_80."""
    from fastbert.check_kernels import SMEM_LIMITS

    assert list(Q.aot_variants(75)) == []
    variants = list(Q.aot_variants(80))
    expected = {kernel: sum(len(Q.tile_configs(dtype, precision, SMEM_LIMITS[80], 80, kernel))
                            for dtype, precision in ((torch.float16, "tf32"), (torch.bfloat16, "tf32"),
                                                     (torch.float32, "ieee"), (torch.float32, "tf32")))
                for kernel in ("fwd", "dx")}
    assert len(variants) == sum(expected.values()) == len({(v.label, v.num_warps, v.num_stages) for v in variants})
    assert all(v.tensor_cores == ("ieee" not in v.label) for v in variants)
    forward = [v for v in variants if " fwd " in v.label]
    dx = [v for v in variants if " bwd-dx " in v.label]
    assert (len(forward), len(dx)) == (expected["fwd"], expected["dx"])
    assert all(v.constexprs["HAS_BIAS"] and "H" in v.divisible_by_16 for v in forward)
    assert all(v.constexprs["HAS_INTO"] and "K" in v.divisible_by_16 for v in dx)


# ============================================================================= the op (fastbert.ops.qkv)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_op_triton_backend_matches_torch_backend(with_bias, monkeypatch):
    from fastbert import ops

    x, *weights = _inputs(65, 40, torch.float32, bias=with_bias)
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, *weights)]
    dy = torch.randn(65, 120, device=DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("FASTBERT_BACKEND", backend)
        for t in leaves:
            if t is not None:
                t.grad = None
        out = ops.qkv(*leaves)
        out.backward(dy)
        results[backend] = [out.detach()] + [t.grad.clone() for t in leaves if t is not None]
    for ours, theirs in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)


def test_the_op_runs_float64_in_pytorch_with_a_warning(monkeypatch):
    from fastbert import ops

    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    x, *weights = _inputs(7, 32, torch.float32)
    x, *weights = (t.double() for t in (x, *weights))
    with pytest.warns(UserWarning, match="float64"):
        out = ops.qkv(x, *weights)
    torch.testing.assert_close(out, Q.qkv_reference(x, *weights))
