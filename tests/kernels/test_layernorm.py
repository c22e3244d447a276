"""The Triton residual + dropout + LayerNorm kernels (``kernels/layernorm.py``) against float64.

On the CPU the kernels run in the Triton interpreter (conftest sets ``TRITON_INTERPRET=1``). The
launchers write into fresh ``torch.empty`` buffers, so an unwritten element shows as garbage or NaN:
every comparison also checks that all values are finite.
"""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICE
from fastbert import ops
from fastbert.kernels import layernorm as L
from lowp import assert_lowp_error, max_err

EPS = 1e-12
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(rows, hidden, dtype, bias=True, residual_dtype=None, seed=0):
    """``(x, bias, residual, weight, beta)``: random rows, weight near 1, small bias and beta."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    x = rand(rows, hidden).to(DEVICE, dtype)
    residual = rand(rows, hidden).to(DEVICE, residual_dtype or dtype)
    weight = (1.0 + 0.2 * rand(hidden)).to(DEVICE, dtype)
    beta = (0.1 * rand(hidden)).to(DEVICE, dtype)
    return x, ((0.1 * rand(hidden)).to(DEVICE, dtype) if bias else None), residual, weight, beta


def _run(inputs, p, seed, dy):
    """Kernel forward and backward through the autograd Function: ``(y, grads of the five inputs)``."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    y = L.FusedResidualLayerNorm.apply(*leaves, EPS, p, seed)
    y.backward(dy.to(y.dtype))
    return y.detach(), [t.grad if t is not None else None for t in leaves]


def _reference(inputs, keep, p, dy, dtype=None):
    """Autograd of :func:`residual_layernorm_reference` on the inputs cast to ``dtype`` (None: as they are)."""
    leaves = [t.detach().to(dtype or t.dtype).clone().requires_grad_() if t is not None else None for t in inputs]
    y = L.residual_layernorm_reference(*leaves, EPS, keep, p)
    y.backward(dy.to(y.dtype))
    return y.detach(), [t.grad if t is not None else None for t in leaves]


def _check(rows, hidden, dtype, p, bias=True, residual_dtype=None):
    inputs = _inputs(rows, hidden, dtype, bias, residual_dtype, seed=rows + hidden)
    seed = torch.tensor([rows * 7 + hidden], device=DEVICE)
    keep = L.dropout_mask(rows, hidden, p, seed) if p else None
    dy = torch.randn(rows, hidden, device=DEVICE).to(dtype).float()  # one upstream gradient for every side
    y, grads = _run(inputs, p, seed, dy)
    y64, grads64 = _reference(inputs, keep, p, dy, torch.float64)
    names = ["y", "dx", "dbias", "dresidual", "dweight", "dbeta"]
    pairs = [(y, y64)] + list(zip(grads, grads64))
    if dtype == torch.float32 and residual_dtype in (None, torch.float32):
        for name, (ours, exact) in zip(names, pairs):
            if exact is not None:
                assert max_err(ours, exact) <= 2e-5 * max(1.0, exact.abs().max().item()), name
        return
    y_lowp, grads_lowp = _reference(inputs, keep, p, dy)
    for name, (ours, exact), theirs in zip(names, pairs, [y_lowp] + grads_lowp):
        if exact is not None:
            # y is in x's dtype by contract; PyTorch's own result, promoted, is rounded to it as well
            assert_lowp_error(ours, theirs.to(ours.dtype), exact, f"{name} {dtype} hidden {hidden}")


# ============================================================================= exactness
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [96, 384, 768, 1000, 1024, 4096])
def test_hidden_sizes_match_float64(hidden, dtype):
    """Forward and the gradients of all five inputs, with bias and dropout, vs float64 (4096: the
    two-pass backward over column blocks)."""
    _check(7, hidden, dtype, 0.1)


@pytest.mark.parametrize("hidden, p, bias", [(1025, 0.0, False), (2500, 0.27, True), (8192, 0.1, True)])
def test_wide_rows_over_column_blocks(hidden, p, bias, monkeypatch):
    """Rows wider than the one-pass backward: a ragged last column block (1025, 2500), the widest row
    (8192), and several rows per backward program, so the per-column partial sums add up rows."""
    monkeypatch.setattr(L, "BWD_PROGRAMS", 3)
    _check(9, hidden, torch.float32, p, bias)


@pytest.mark.parametrize("rows, p, bias", [
    (1, 0.27, True), (7, 0.0, False), (129, 0.27, False), (129, 0.1, True), (1000, 0.0, True),
])
def test_row_counts_dropout_and_bias(rows, p, bias):
    """Row counts below, at and past the backward's 256 programs (several rows per program)."""
    _check(rows, 384 if rows < 1000 else 96, torch.float32, p, bias)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fp32_residual_stream_with_low_precision_x(dtype):
    """A residual in another dtype than x (an fp32 residual stream): dresidual keeps its dtype."""
    _check(33, 768, dtype, 0.1, residual_dtype=torch.float32)


@pytest.mark.parametrize("hidden, dtype, why", [(8200, torch.float32, "hidden 8200 > 8192"),
                                                (32, torch.float64, "dtype torch.float64")])
def test_what_the_kernels_do_not_take_falls_back_to_pytorch(hidden, dtype, why, monkeypatch):
    """Rows wider than 8192 and float64: the op runs PyTorch, warning once."""
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    x, bias, residual, weight, beta = (t.requires_grad_() for t in _inputs(5, hidden, dtype))
    with pytest.warns(UserWarning, match=why):
        y = ops.residual_layernorm(x, bias, residual, weight, beta, EPS)
    torch.testing.assert_close(y, L.residual_layernorm_reference(x, bias, residual, weight, beta, EPS))
    with pytest.warns(UserWarning, match=why):
        y.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (x, bias, residual, weight, beta))


# ============================================================================= dropout
def test_dropout_keep_rate():
    p = 0.27
    keep = L.dropout_mask(1000, 1024, p, torch.tensor([99], device=DEVICE))
    assert abs(keep.float().mean().item() - (1 - p)) < 0.01
    assert not torch.equal(keep[0], keep[1])  # rows draw different bits


def test_backward_uses_the_forward_mask():
    """dx / dresidual is exactly the kept-and-scaled factor of the debug mask, element by element."""
    p = 0.3
    inputs = _inputs(50, 96, torch.float32, bias=True)
    seed = torch.tensor([5], device=DEVICE)
    _, (dx, _, dres, _, _) = _run(inputs, p, seed, torch.randn(50, 96, device=DEVICE))
    keep = L.dropout_mask(50, 96, p, seed)
    torch.testing.assert_close(dx, dres * keep / (1 - p), rtol=1e-6, atol=0)


def test_same_seed_is_bitwise_deterministic(monkeypatch):
    monkeypatch.setattr(L, "BWD_PROGRAMS", 16)  # 64 rows: 16 backward programs of 4 rows each
    inputs = _inputs(64, 96, torch.bfloat16)
    dy = torch.randn(64, 96, device=DEVICE)
    seed = torch.tensor([11], device=DEVICE)
    first, again = _run(inputs, 0.1, seed, dy), _run(inputs, 0.1, seed.clone(), dy)
    assert torch.equal(first[0], again[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], again[1]))
    assert not torch.equal(first[0], L.residual_layernorm_fwd(*inputs, EPS, 0.1, seed + 1)[0])


# ============================================================================= bad input and the op
def _bad(**changes):
    x, bias, residual, weight, beta = _inputs(4, 16, torch.float32)
    args = dict(x=x, bias=bias, residual=residual, weight=weight, beta=beta, eps=EPS, dropout_p=0.0, seed=None)
    args.update(changes)
    return lambda: L.residual_layernorm_fwd(**args)


@pytest.mark.parametrize("changes, error, match", [
    (dict(x=torch.ones(4, 16, dtype=torch.int32)), TypeError, "x must be"),
    (dict(residual=torch.randn(4, 15)), ValueError, "residual has shape"),
    (dict(weight=torch.randn(17)), ValueError, "weight must be"),
    (dict(bias=torch.randn(16, 1)), ValueError, "bias must be"),
    (dict(x=torch.randn(4, 16, 2)), ValueError, "rows, hidden"),
    (dict(x=torch.randn(2, 8193), residual=torch.randn(2, 8193), weight=torch.ones(8193), beta=torch.ones(8193),
          bias=None), ValueError, "hidden must be"),
    (dict(dropout_p=0.1), ValueError, "needs seed"),
])
def test_bad_input_raises_before_any_kernel(changes, error, match):
    with pytest.raises(error, match=match):
        _bad(**{k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in changes.items()})()


def test_op_triton_backend_matches_torch_backend(monkeypatch):
    x, bias, residual, weight, beta = (t.requires_grad_() for t in _inputs(65, 200, torch.float32))
    dy = torch.randn(65, 200, device=DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("FASTBERT_BACKEND", backend)
        for t in (x, bias, residual, weight, beta):
            t.grad = None
        y = ops.residual_layernorm(x, bias, residual, weight, beta, EPS)
        y.backward(dy)
        results[backend] = [y.detach()] + [t.grad.clone() for t in (x, bias, residual, weight, beta)]
    for ours, theirs in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)


def test_opcheck_with_the_triton_backend(monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    x, bias, residual, weight, beta = (t.requires_grad_() for t in _inputs(9, 48, torch.float32))
    torch.library.opcheck(torch.ops.fastbert.residual_layernorm.default,
                          (x, bias, residual, weight, beta, EPS, 0.1, torch.tensor([3], device=DEVICE)),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_non_contiguous_parameters():
    """Strided weight, beta and bias (views of larger tensors) are read as their values, not their storage."""
    x, bias, residual, weight, beta = _inputs(9, 64, torch.float32)
    strided = [t.repeat_interleave(2)[::2] for t in (bias, weight, beta)]
    assert not strided[1].is_contiguous()
    dy = torch.randn(9, 64, device=DEVICE)
    want = _run((x, bias, residual, weight, beta), 0.0, None, dy)
    got = _run((x, strided[0], residual, strided[1], strided[2]), 0.0, None, dy)
    torch.testing.assert_close(got[0], want[0])
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w)
