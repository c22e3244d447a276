"""The fused ops of :mod:`fastbert.ops` (PyTorch backend) against independent float64 references.

Every reference here is written with plain autograd in float64 (no code shared with
:mod:`fastbert.torch_ops`), and both sides get the same random upstream gradient. Low-precision
forwards are judged relative to the error PyTorch itself makes doing the reference math in that dtype.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastbert import ops, torch_ops

CPU = torch.device("cpu")
LOWP = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "torch")


# ----------------------------------------------------------------------------- helpers
def _leaf(t: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return t.detach().to(dtype).clone().requires_grad_(True)


def _pair(t: torch.Tensor, dtype=torch.float32):
    """The same values as an op input (``dtype``) and as a float64 reference input, both leaves."""
    op_in = _leaf(t, dtype)
    return op_in, _leaf(op_in, torch.float64)


def _close(actual, expected, atol, rtol, what=""):
    assert actual is not None, f"{what}: no gradient"
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _assert_lowp_error(out, ref64, ref_lowp, what, floor):
    """The op's error vs float64 is at most twice PyTorch's own error in that dtype (plus ``floor``)."""
    assert out.dtype == ref_lowp.dtype
    assert torch.isfinite(out).all(), what
    err_op = (out.double() - ref64).abs().max().item()
    err_ref = (ref_lowp.double() - ref64).abs().max().item()
    assert err_op <= 2.0 * err_ref + floor, f"{what}: op error {err_op:.3g} vs reference error {err_ref:.3g}"


def _floor(dtype):
    """A tiny absolute floor, for when PyTorch's own low-precision result happens to be exact."""
    return torch.finfo(dtype).eps / 64


# ============================================================================= attention
def _cu(lengths):
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32)


def _ref_attention(qkv, lengths, keep=None, p=0.0):
    """Per-sequence ``softmax(q k^T / sqrt(d)) v`` in qkv's dtype; ``keep[b]`` is ``(heads, L, L)`` bool."""
    dim = qkv.shape[-1]
    outs, start = [], 0
    for b, n in enumerate(lengths):
        q, k, v = qkv[start:start + n].unbind(1)  # (n, heads, dim) each
        probs = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(dim), dim=-1)
        if keep is not None:
            probs = probs * keep[b].to(probs.dtype) / (1.0 - p)
        outs.append(torch.einsum("hqk,khd->qhd", probs, v))
        start += n
    return torch.cat(outs)


ATTN_LENGTHS = [1, 7, 0, 65, 3, 0]
# ragged (with empty sequences); all sequences max_seqlen long (no padding at all); a single sequence
LENGTH_CASES = {"ragged": ATTN_LENGTHS, "uniform": [33, 33, 33], "single": [65]}


@pytest.mark.parametrize("head_dim", [16, 32, 48, 64])
@pytest.mark.parametrize("slack", [0, 6], ids=["max_exact", "max_upper_bound"])
@pytest.mark.parametrize("case", list(LENGTH_CASES))
def test_attention_fp32_forward_backward(head_dim, slack, case):
    torch.manual_seed(100 + head_dim + slack + len(case))
    heads = 3
    lengths = LENGTH_CASES[case]
    total = sum(lengths)
    cu = _cu(lengths)
    qkv, qkv64 = _pair(torch.randn(total, 3, heads, head_dim))
    out = ops.attention(qkv, cu, max(lengths) + slack)
    ref = _ref_attention(qkv64, lengths)
    assert out.shape == (total, heads, head_dim) and out.dtype == torch.float32
    _close(out, ref, 1e-5, 1e-5, "out")

    dout = torch.randn(total, heads, head_dim)
    out.backward(dout)
    ref.backward(dout.double())
    _close(qkv.grad, qkv64.grad, 1e-5, 1e-5, "dqkv")


def test_attention_accepts_strided_view():
    """qkv as a strided view of a wider projection output; the gradient flows back into it."""
    torch.manual_seed(1)
    heads, head_dim = 2, 32
    lengths = [5, 1, 17]
    total = sum(lengths)
    wide, wide64 = _pair(torch.randn(total, 3 * heads * head_dim + 11))
    qkv = wide[:, 5:5 + 3 * heads * head_dim].view(total, 3, heads, head_dim)
    assert not qkv.is_contiguous()
    out = ops.attention(qkv, _cu(lengths), max(lengths))
    ref = _ref_attention(wide64[:, 5:5 + 3 * heads * head_dim].view(total, 3, heads, head_dim), lengths)
    _close(out, ref, 1e-5, 1e-5, "out")
    dout = torch.randn_like(out)
    out.backward(dout)
    ref.backward(dout.double())
    _close(wide.grad, wide64.grad, 1e-5, 1e-5, "dwide")
    assert (wide.grad[:, :5] == 0).all() and (wide.grad[:, 5 + 3 * heads * head_dim:] == 0).all()


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("head_dim", [16, 48, 64])
@pytest.mark.parametrize("case", ["ragged", "uniform"])
def test_attention_lowp_forward(dtype, head_dim, case):
    torch.manual_seed(200 + head_dim)
    heads = 2
    lengths = LENGTH_CASES[case]
    qkv = torch.randn(sum(lengths), 3, heads, head_dim).to(dtype)
    out = ops.attention(qkv, _cu(lengths), max(lengths))
    with torch.no_grad():
        ref64 = _ref_attention(qkv.double(), lengths)
        ref_lowp = _ref_attention(qkv, lengths)
    _assert_lowp_error(out, ref64, ref_lowp, f"attention {dtype}", _floor(dtype))


def _attention_keep_mask(lengths, heads, seed, p):
    """Recover the op's dropout mask: with v[token j of a sequence] = e_j, out[i, h, j] = P_dropped[h, i, j]."""
    dim = max(lengths)
    total = sum(lengths)
    qkv = torch.randn(total, 3, heads, dim) * 0.5
    start = 0
    for n in lengths:
        qkv[start:start + n, 2] = torch.eye(n, dim)[:, None, :]
        start += n
    out = ops.attention(qkv, _cu(lengths), max(lengths), p, seed)
    masks, start = [], 0
    for n in lengths:
        masks.append(out[start:start + n, :, :n].permute(1, 0, 2) != 0)  # (heads, n_query, n_key)
        start += n
    return masks


@pytest.mark.parametrize("p", [0.1, 0.5, 0.93])
def test_keep_mask_rate_is_one_minus_p_and_its_bits_are_independent(p):
    """The PyTorch backend's masks: four elements from each 64-bit draw, 16 bits each. On 2**22 elements the
    keep rate is 1 - p within five standard deviations (the 16-bit threshold is within 2**-17 of p), the four
    elements of a draw agree no more than independent ones would, and shapes of any size draw their prefix."""
    n = 1 << 22
    keep = torch_ops.dropout_keep_mask((n,), p, torch.tensor([2024]), CPU).double()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(keep.mean().item() - (1 - p)) < 5 * sigma + 2 ** -17
    centered = (keep - keep.mean()).view(-1, 4)
    for a, b in [(0, 1), (1, 2), (2, 3), (0, 3)]:  # within a draw
        correlation = (centered[:, a] * centered[:, b]).mean() / (p * (1 - p))
        assert abs(correlation.item()) < 5 / math.sqrt(n / 4)
    odd = torch_ops.dropout_keep_mask((3, 7), p, torch.tensor([2024]), CPU)
    assert torch.equal(odd.flatten(), keep[:21].bool())


@pytest.mark.parametrize("p", [0.1, 0.27])
def test_attention_dropout_keep_rate_and_determinism(p):
    torch.manual_seed(3)
    lengths, heads = [64, 1, 33, 64, 0], 8
    seed = torch.tensor([1234])
    masks = _attention_keep_mask(lengths, heads, seed, p)
    kept = sum(int(m.sum()) for m in masks)
    count = sum(m.numel() for m in masks)
    assert count > 50_000
    assert abs(kept / count - (1.0 - p)) < 0.01

    qkv = torch.randn(sum(lengths), 3, heads, 32)
    cu = _cu(lengths)
    a = ops.attention(qkv, cu, 64, p, seed)
    b = ops.attention(qkv, cu, 64, p, seed.clone())
    c = ops.attention(qkv, cu, 64, p, torch.tensor([4321]))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, ops.attention(qkv, cu, 64))


@pytest.mark.parametrize("p", [0.1, 0.27])
@pytest.mark.parametrize("lengths", [[9, 1, 0, 40, 5], [17, 17]], ids=["ragged", "uniform"])
def test_attention_dropout_backward_uses_forward_mask(p, lengths):
    torch.manual_seed(4)
    heads, head_dim = 2, 48
    seed = ops.new_seed(CPU)
    masks = _attention_keep_mask(lengths, heads, seed, p)

    qkv, qkv64 = _pair(torch.randn(sum(lengths), 3, heads, head_dim))
    out = ops.attention(qkv, _cu(lengths), max(lengths), p, seed)
    ref = _ref_attention(qkv64, lengths, keep=masks, p=p)
    _close(out, ref, 1e-5, 1e-5, "out")
    dout = torch.randn_like(out)
    out.backward(dout)
    ref.backward(dout.double())
    _close(qkv.grad, qkv64.grad, 1e-5, 1e-5, "dqkv")


# ============================================================================= residual + dropout + LayerNorm
def _ref_residual_layernorm(x, bias, residual, weight, beta, eps, keep=None, p=0.0):
    h = x if bias is None else x + bias
    if keep is not None:
        h = h * keep.to(h.dtype) / (1.0 - p)
    return F.layer_norm(h + residual, (x.shape[-1],), weight, beta, eps)


def _rln_inputs(rows, hidden, with_bias=True):
    x = torch.randn(rows, hidden) * 2 + 0.5
    bias = torch.randn(hidden) * 0.5 if with_bias else None
    residual = torch.randn(rows, hidden)
    weight = 1 + 0.3 * torch.randn(hidden)
    beta = 0.3 * torch.randn(hidden)
    return x, bias, residual, weight, beta


@pytest.mark.parametrize("p", [0.0, 0.2])
@pytest.mark.parametrize("with_bias", [True, False])
def test_residual_layernorm_takes_a_float64_residual_of_float32_x(p, with_bias):
    """Mixed input dtypes: the statistics stay in x's accumulation dtype (fp32) and y in x's dtype; the
    backward recomputes the forward's sum (dx is exactly 0 where dropped) and every gradient is near
    float64's."""
    torch.manual_seed(11)
    x, bias, residual, weight, beta = _rln_inputs(7, 33, with_bias)
    residual = residual.double()
    seed = torch.tensor([5]) if p else None
    keep = torch_ops.dropout_keep_mask((7, 33), p, seed, CPU) if p else None
    xo = x.clone().requires_grad_(True)
    y = ops.residual_layernorm(xo, bias, residual, weight, beta, 1e-5, p, seed)
    assert y.dtype == torch.float32
    x64 = x.double().requires_grad_(True)
    ref = _ref_residual_layernorm(x64, None if bias is None else bias.double(), residual, weight.double(),
                                  beta.double(), 1e-5, keep=keep, p=p)
    _close(y, ref, 1e-5, 1e-5, "y")
    dy = torch.randn(7, 33)
    y.backward(dy)
    ref.backward(dy.double())
    _close(xo.grad, x64.grad, 2e-5, 1e-5, "dx")
    if p:
        assert torch.equal(xo.grad != 0, keep)


def test_attention_without_dropout_takes_an_empty_batch_on_the_cpu():
    """PyTorch's fused CPU attention divides by the longest length: at 0 the op runs the batched path."""
    qkv = torch.randn(0, 3, 2, 4, requires_grad=True)
    out = ops.attention(qkv, torch.tensor([0, 0], dtype=torch.int32), 0)
    assert out.shape == (0, 2, 4)
    out.sum().backward()
    assert qkv.grad.shape == qkv.shape


@pytest.mark.parametrize("rows", [1, 7, 129])
@pytest.mark.parametrize("hidden", [96, 384, 1000])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_residual_layernorm_fp32_forward_backward(rows, hidden, with_bias):
    torch.manual_seed(rows * 1000 + hidden + with_bias)
    eps = 1e-12
    pairs = [None if t is None else _pair(t) for t in _rln_inputs(rows, hidden, with_bias)]
    op_in = [None if pr is None else pr[0] for pr in pairs]
    ref_in = [None if pr is None else pr[1] for pr in pairs]
    y = ops.residual_layernorm(*op_in, eps)
    ref = _ref_residual_layernorm(*ref_in, eps)
    assert y.shape == (rows, hidden) and y.dtype == torch.float32
    _close(y, ref, 1e-5, 1e-5, "y")

    dy = torch.randn(rows, hidden)
    y.backward(dy)
    ref.backward(dy.double())
    for name, a, r in zip(["dx", "dbias", "dresidual", "dweight", "dbeta"], op_in, ref_in):
        if a is None:
            continue
        _close(a.grad, r.grad, 2e-5, 1e-5, name)


def test_residual_layernorm_3d_input():
    torch.manual_seed(5)
    x, bias, residual, weight, beta = _rln_inputs(3 * 11, 96)
    x3, x64 = _pair(x.view(3, 11, 96))
    r3, r64 = _pair(residual.view(3, 11, 96))
    y = ops.residual_layernorm(x3, bias, r3, weight, beta, 1e-5)
    ref = _ref_residual_layernorm(x64, bias.double(), r64, weight.double(), beta.double(), 1e-5)
    assert y.shape == (3, 11, 96)
    _close(y, ref, 1e-5, 1e-5, "y")
    dy = torch.randn(3, 11, 96)
    y.backward(dy)
    ref.backward(dy.double())
    _close(x3.grad, x64.grad, 1e-5, 1e-5, "dx")
    _close(r3.grad, r64.grad, 1e-5, 1e-5, "dresidual")


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("rows, hidden", [(7, 96), (129, 384), (1, 1000)])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_residual_layernorm_lowp_forward(dtype, rows, hidden, with_bias):
    torch.manual_seed(300 + rows + hidden)
    inputs = _rln_inputs(rows, hidden, with_bias)
    lowp = [None if t is None else t.to(dtype) for t in inputs]
    y = ops.residual_layernorm(*lowp, 1e-12)
    ref64 = _ref_residual_layernorm(*[None if t is None else t.double() for t in lowp], 1e-12)
    ref_lowp = _ref_residual_layernorm(*lowp, 1e-12)
    _assert_lowp_error(y, ref64, ref_lowp, f"residual_layernorm {dtype}", _floor(dtype))


def _distinct_x(rows, hidden):
    """All-distinct, non-zero values in random order."""
    vals = torch.linspace(0.25, 3.0, rows * hidden) * torch.where(torch.rand(rows * hidden) < 0.5, -1.0, 1.0)
    return vals[torch.randperm(rows * hidden)].view(rows, hidden)


@pytest.mark.parametrize("p", [0.1, 0.27])
def test_residual_layernorm_dropout(p):
    torch.manual_seed(6)
    rows, hidden = 129, 384
    seed = torch.tensor([1234])
    x = _distinct_x(rows, hidden)
    _, bias, residual, weight, beta = _rln_inputs(rows, hidden)
    eps = 1e-12

    # (b) determinism in the seed
    y1 = ops.residual_layernorm(x, bias, residual, weight, beta, eps, p, seed)
    y2 = ops.residual_layernorm(x, bias, residual, weight, beta, eps, p, seed.clone())
    y3 = ops.residual_layernorm(x, bias, residual, weight, beta, eps, p, torch.tensor([99]))
    assert torch.equal(y1, y2)
    assert not torch.allclose(y1, y3)
    assert not torch.allclose(y1, ops.residual_layernorm(x, bias, residual, weight, beta, eps))

    # (c) forward matches the documented mask generator; backward uses the same mask
    keep = torch_ops.dropout_keep_mask((rows, hidden), p, seed, CPU)
    (xo, x64), (bo, b64), (ro, r64), (wo, w64), (beo, be64) = [_pair(t) for t in (x, bias, residual, weight, beta)]
    y = ops.residual_layernorm(xo, bo, ro, wo, beo, eps, p, seed)
    ref = _ref_residual_layernorm(x64, b64, r64, w64, be64, eps, keep=keep, p=p)
    _close(y, ref, 1e-5, 1e-5, "y")
    dy = torch.randn(rows, hidden)
    y.backward(dy)
    ref.backward(dy.double())
    # The mask recovered from the op's own backward (dx is exactly 0 where dropped) is the forward's.
    assert torch.equal(xo.grad != 0, keep)
    # (a) keep rate
    assert abs(keep.float().mean().item() - (1.0 - p)) < 0.01
    for name, a, r in [("dx", xo, x64), ("dbias", bo, b64), ("dresidual", ro, r64), ("dweight", wo, w64),
                       ("dbeta", beo, be64)]:
        _close(a.grad, r.grad, 2e-5, 1e-5, name)


def test_residual_layernorm_dropout_bias_none():
    torch.manual_seed(7)
    rows, hidden, p = 7, 1000, 0.27
    seed = ops.new_seed(CPU)
    x = _distinct_x(rows, hidden)
    _, _, residual, weight, beta = _rln_inputs(rows, hidden)
    keep = torch_ops.dropout_keep_mask((rows, hidden), p, seed, CPU)
    (xo, x64), (ro, r64) = _pair(x), _pair(residual)
    y = ops.residual_layernorm(xo, None, ro, weight, beta, 1e-5, p, seed)
    ref = _ref_residual_layernorm(x64, None, r64, weight.double(), beta.double(), 1e-5, keep=keep, p=p)
    _close(y, ref, 1e-5, 1e-5, "y")
    dy = torch.randn(rows, hidden)
    y.backward(dy)
    ref.backward(dy.double())
    _close(xo.grad, x64.grad, 1e-5, 1e-5, "dx")
    _close(ro.grad, r64.grad, 1e-5, 1e-5, "dresidual")


# ============================================================================= linear + GELU
def _ref_linear_gelu(x, weight, bias):
    return F.gelu(F.linear(x, weight, bias))


def _lg_inputs(rows, in_f, out_f, with_bias=True):
    x = torch.randn(rows, in_f)
    weight = torch.randn(out_f, in_f) / math.sqrt(in_f) * 1.5
    bias = 0.5 * torch.randn(out_f) if with_bias else None
    return x, weight, bias


@pytest.mark.parametrize("rows", [1, 7, 129])
@pytest.mark.parametrize("in_f, out_f", [(96, 384), (384, 96), (1000, 257)])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_linear_gelu_fp32_forward_backward(rows, in_f, out_f, with_bias):
    torch.manual_seed(rows + in_f + 7 * out_f + with_bias)
    x, weight, bias = _lg_inputs(rows, in_f, out_f, with_bias)
    (xo, x64), (wo, w64) = _pair(x), _pair(weight)
    bo, b64 = _pair(bias) if with_bias else (None, None)
    y = ops.linear_gelu(xo, wo, bo)
    ref = _ref_linear_gelu(x64, w64, b64)
    assert y.shape == (rows, out_f) and y.dtype == torch.float32
    _close(y, ref, 1e-5, 1e-5, "y")
    dy = torch.randn(rows, out_f)
    y.backward(dy)
    ref.backward(dy.double())
    _close(xo.grad, x64.grad, 2e-5, 1e-5, "dx")
    _close(wo.grad, w64.grad, 2e-5, 1e-5, "dweight")
    if with_bias:
        _close(bo.grad, b64.grad, 2e-5, 1e-5, "dbias")


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_linear_gelu_inference_path_matches_float64(with_bias):
    """Without autograd the op keeps no pre-activation (GELU in place); same values."""
    torch.manual_seed(29 + with_bias)
    x, weight, bias = _lg_inputs(129, 384, 96, with_bias)
    ref = _ref_linear_gelu(x.double(), weight.double(), None if bias is None else bias.double())
    with torch.no_grad():
        y = ops.linear_gelu(x, weight, bias)
    _close(y, ref, 1e-5, 1e-5, "y")
    assert torch.equal(y, ops.linear_gelu(x, weight, bias).detach())


def test_linear_gelu_3d_input():
    torch.manual_seed(8)
    x, weight, bias = _lg_inputs(2 * 13, 96, 384)
    (xo, x64) = _pair(x.view(2, 13, 96))
    y = ops.linear_gelu(xo, weight, bias)
    ref = _ref_linear_gelu(x64, weight.double(), bias.double())
    assert y.shape == (2, 13, 384)
    _close(y, ref, 1e-5, 1e-5, "y")
    dy = torch.randn(2, 13, 384)
    y.backward(dy)
    ref.backward(dy.double())
    _close(xo.grad, x64.grad, 1e-5, 1e-5, "dx")


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("rows, in_f, out_f", [(7, 96, 384), (129, 384, 96), (1, 1000, 257)])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_linear_gelu_lowp_forward(dtype, rows, in_f, out_f, with_bias):
    torch.manual_seed(400 + rows + in_f)
    lowp = [None if t is None else t.to(dtype) for t in _lg_inputs(rows, in_f, out_f, with_bias)]
    y = ops.linear_gelu(*lowp)
    ref64 = _ref_linear_gelu(*[None if t is None else t.double() for t in lowp])
    ref_lowp = _ref_linear_gelu(*lowp)
    _assert_lowp_error(y, ref64, ref_lowp, f"linear_gelu {dtype}", _floor(dtype))


# ============================================================================= feed-forward block
def _ref_ffn(x, w1, b1, w2):
    return F.linear(F.gelu(F.linear(x, w1, b1)), w2)


@pytest.mark.parametrize("rows, hidden, inter", [(1, 96, 200), (129, 384, 1536), (7, 1536, 384)])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_ffn_fp32_forward_backward(rows, hidden, inter, with_bias):
    torch.manual_seed(rows + hidden + with_bias)
    x, w1, b1 = _lg_inputs(rows, hidden, inter, with_bias)
    w2 = torch.randn(hidden, inter) / math.sqrt(inter)
    pairs = [_pair(t) if t is not None else (None, None) for t in (x, w1, b1, w2)]
    out = ops.ffn(*[p[0] for p in pairs])
    ref = _ref_ffn(*[p[1] for p in pairs])
    _close(out, ref, 1e-5, 1e-5, "out")
    dy = torch.randn(rows, hidden)
    out.backward(dy)
    ref.backward(dy.double())
    for name, (ours, exact) in zip(("dx", "dw1", "db1", "dw2"), pairs):
        if ours is not None:  # weight gradients sum over the tokens: fp32 rounding grows with them
            _close(ours.grad, exact.grad, 5e-5, 1e-5, name)


def test_ffn_inference_path_matches_float64():
    torch.manual_seed(31)
    x, w1, b1 = _lg_inputs(65, 96, 200)
    w2 = torch.randn(96, 200) / math.sqrt(200)
    with torch.no_grad():
        out = ops.ffn(x.view(5, 13, 96), w1, b1, w2)
    assert out.shape == (5, 13, 96)
    _close(out.view(65, 96), _ref_ffn(x.double(), w1.double(), b1.double(), w2.double()), 1e-5, 1e-5, "out")


# ============================================================================= the q, k, v projection
def _qkv_inputs(hidden, with_bias=True):
    weights = [torch.randn(hidden, hidden) / math.sqrt(hidden) for _ in range(3)]
    biases = [0.1 * torch.randn(hidden) for _ in range(3)] if with_bias else [None] * 3
    return weights + biases


@pytest.mark.parametrize("rows, hidden", [(1, 96), (129, 40), (7, 384)])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_qkv_fp32_forward_backward(rows, hidden, with_bias):
    torch.manual_seed(rows + hidden)
    x = torch.randn(rows, hidden)
    pairs = [_pair(t) if t is not None else (None, None) for t in (x, *_qkv_inputs(hidden, with_bias))]
    out = ops.qkv(*[p[0] for p in pairs])
    ours = [p[1] for p in pairs]
    bias = torch.cat(ours[4:]) if with_bias else None
    ref = F.linear(ours[0], torch.cat(ours[1:4]), bias)
    _close(out, ref, 1e-5, 1e-5, "out")
    dy = torch.randn(rows, 3 * hidden)
    out.backward(dy)
    ref.backward(dy.double())
    for name, (op_in, exact) in zip(("dx", "dwq", "dwk", "dwv", "dbq", "dbk", "dbv"), pairs):
        if op_in is not None:
            _close(op_in.grad, exact.grad, 5e-5, 1e-5, name)


def test_qkv_keeps_no_concatenated_weights_and_skips_frozen_weight_gradients():
    torch.manual_seed(3)
    x = torch.randn(2, 5, 24, requires_grad=True)
    weights = _qkv_inputs(24)
    out = ops.qkv(x, *weights)
    assert out.shape == (2, 5, 72)
    node = out.grad_fn.next_functions[0][0]  # under the reshape back to (2, 5, 72)
    assert "qkv" in node.name().lower()
    saved = {t.data_ptr() for t in node.saved_tensors}
    assert saved == {t.data_ptr() for t in (x, *weights[:3])}
    out.sum().backward()
    assert x.grad is not None and all(w.grad is None for w in weights)


def test_qkv_refuses_bad_arguments():
    x = torch.randn(4, 24)
    wq, wk, wv, bq, bk, bv = _qkv_inputs(24)
    with pytest.raises(ValueError, match="three .hidden, 24. weights"):
        ops.qkv(x, wq, wk[:, :20], wv)
    with pytest.raises(ValueError, match="all three biases"):
        ops.qkv(x, wq, wk, wv, bq, None, bv)
    with pytest.raises(ValueError, match=r"must be \(24,\)"):
        ops.qkv(x, wq, wk, wv, bq, bk, bv[:5])


# ============================================================================= embeddings
VOCAB, MAX_POS, TYPES = 50, 140, 2


def _emb_inputs(tokens, hidden, padding_idx=-1):
    input_ids = torch.randint(0, VOCAB, (tokens,))
    if padding_idx >= 0 and tokens > 1:
        input_ids[:: max(1, tokens // 4)] = padding_idx  # the padding row is used, several times
    position_ids = torch.randint(0, MAX_POS, (tokens,))
    token_type_ids = torch.randint(0, TYPES, (tokens,))
    word = torch.randn(VOCAB, hidden)
    pos = 0.5 * torch.randn(MAX_POS, hidden)
    types = 0.5 * torch.randn(TYPES, hidden)
    weight = 1 + 0.3 * torch.randn(hidden)
    beta = 0.3 * torch.randn(hidden)
    return input_ids, position_ids, token_type_ids, word, pos, types, weight, beta


def _ref_embeddings(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, beta, eps,
                    padding_idx=-1, keep=None, p=0.0):
    if inputs_embeds is None:
        base = F.embedding(input_ids, word, padding_idx=padding_idx if padding_idx >= 0 else None)
    else:
        base = inputs_embeds
    s = base + F.embedding(position_ids, pos) + F.embedding(token_type_ids, types)
    y = F.layer_norm(s, (s.shape[-1],), weight, beta, eps)
    if keep is not None:
        y = y * keep.to(y.dtype) / (1.0 - p)
    return y


@pytest.mark.parametrize("tokens", [1, 7, 129])
@pytest.mark.parametrize("hidden", [96, 384, 1000])
@pytest.mark.parametrize("padding_idx", [-1, 0, 3])
def test_embeddings_fp32_forward_backward(tokens, hidden, padding_idx):
    torch.manual_seed(tokens + hidden + padding_idx)
    eps = 1e-12
    ids, pids, tids, *tables = _emb_inputs(tokens, hidden, padding_idx)
    pairs = [_pair(t) for t in tables]
    op_t = [a for a, _ in pairs]
    ref_t = [r for _, r in pairs]
    y = ops.embeddings(ids, None, pids, tids, *op_t, eps, padding_idx=padding_idx)
    ref = _ref_embeddings(ids, None, pids, tids, *ref_t, eps, padding_idx=padding_idx)
    assert y.shape == (tokens, hidden) and y.dtype == torch.float32
    _close(y, ref, 1e-5, 1e-5, "y")
    dy = torch.randn(tokens, hidden)
    y.backward(dy)
    ref.backward(dy.double())
    for name, a, r in zip(["dword", "dpos", "dtypes", "dweight", "dbeta"], op_t, ref_t):
        _close(a.grad, r.grad, 2e-5, 1e-5, name)
    dword = op_t[0].grad
    if padding_idx >= 0:
        assert (dword[padding_idx] == 0).all()
    elif (ids == 0).any():
        assert (dword[0] != 0).any()


def test_embeddings_padding_idx_row_stays_zero():
    """Every token is the padding id: the whole word gradient is zero, the other tables still get one."""
    torch.manual_seed(9)
    ids, pids, tids, *tables = _emb_inputs(33, 96)
    ids = torch.full_like(ids, 5)
    op_t = [_leaf(t) for t in tables]
    y = ops.embeddings(ids, None, pids, tids, *op_t, 1e-12, padding_idx=5)
    y.backward(torch.randn_like(y))
    assert (op_t[0].grad == 0).all()
    assert (op_t[1].grad != 0).any()
    # without padding_idx the same row does get a gradient
    op_t2 = [_leaf(t) for t in tables]
    y = ops.embeddings(ids, None, pids, tids, *op_t2, 1e-12)
    y.backward(torch.randn_like(y))
    assert (op_t2[0].grad[5] != 0).any()


@pytest.mark.parametrize("tokens, hidden", [(7, 96), (129, 1000)])
def test_embeddings_inputs_embeds(tokens, hidden):
    torch.manual_seed(10 + tokens)
    eps = 1e-5
    _, pids, tids, *tables = _emb_inputs(tokens, hidden)
    embeds, embeds64 = _pair(torch.randn(tokens, hidden))
    pairs = [_pair(t) for t in tables]
    op_t = [a for a, _ in pairs]
    ref_t = [r for _, r in pairs]
    y = ops.embeddings(None, embeds, pids, tids, *op_t, eps)
    ref = _ref_embeddings(None, embeds64, pids, tids, *ref_t, eps)
    _close(y, ref, 1e-5, 1e-5, "y")
    dy = torch.randn(tokens, hidden)
    y.backward(dy)
    ref.backward(dy.double())
    _close(embeds.grad, embeds64.grad, 2e-5, 1e-5, "dinputs_embeds")
    assert op_t[0].grad is None  # the word table is not used
    for name, a, r in zip(["dpos", "dtypes", "dweight", "dbeta"], op_t[1:], ref_t[1:]):
        _close(a.grad, r.grad, 2e-5, 1e-5, name)


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("tokens, hidden", [(7, 96), (129, 384), (1, 1000)])
def test_embeddings_lowp_forward(dtype, tokens, hidden):
    torch.manual_seed(500 + tokens + hidden)
    ids, pids, tids, *tables = _emb_inputs(tokens, hidden, 0)
    lowp = [t.to(dtype) for t in tables]
    y = ops.embeddings(ids, None, pids, tids, *lowp, 1e-12, padding_idx=0)
    ref64 = _ref_embeddings(ids, None, pids, tids, *[t.double() for t in lowp], 1e-12)
    ref_lowp = _ref_embeddings(ids, None, pids, tids, *lowp, 1e-12)
    _assert_lowp_error(y, ref64, ref_lowp, f"embeddings {dtype}", _floor(dtype))


@pytest.mark.parametrize("p", [0.1, 0.27])
def test_embeddings_dropout(p):
    torch.manual_seed(11)
    tokens, hidden, eps = 257, 384, 1e-12
    seed = torch.tensor([1234])
    ids, pids, tids, *tables = _emb_inputs(tokens, hidden, 0)

    y_p = ops.embeddings(ids, None, pids, tids, *tables, eps, p, seed, padding_idx=0)
    y_0 = ops.embeddings(ids, None, pids, tids, *tables, eps, padding_idx=0)
    # dropout is applied after the LayerNorm: the op's mask is where its output is zero
    keep = y_p != 0
    assert (y_0 != 0).all()
    assert abs(keep.float().mean().item() - (1.0 - p)) < 0.01  # (a)
    torch.testing.assert_close(y_p, torch.where(keep, y_0 / (1.0 - p), 0.0), atol=1e-6, rtol=1e-6)
    assert torch.equal(keep, torch_ops.dropout_keep_mask((tokens, hidden), p, seed, CPU))

    # (b) determinism in the seed
    assert torch.equal(y_p, ops.embeddings(ids, None, pids, tids, *tables, eps, p, seed.clone(), padding_idx=0))
    assert not torch.equal(keep, ops.embeddings(ids, None, pids, tids, *tables, eps, p, torch.tensor([7]),
                                                padding_idx=0) != 0)

    # (c) gradients with the recovered mask
    pairs = [_pair(t) for t in tables]
    op_t = [a for a, _ in pairs]
    ref_t = [r for _, r in pairs]
    y = ops.embeddings(ids, None, pids, tids, *op_t, eps, p, seed, padding_idx=0)
    ref = _ref_embeddings(ids, None, pids, tids, *ref_t, eps, padding_idx=0, keep=keep, p=p)
    _close(y, ref, 1e-5, 1e-5, "y")
    dy = torch.randn(tokens, hidden)
    y.backward(dy)
    ref.backward(dy.double())
    for name, a, r in zip(["dword", "dpos", "dtypes", "dweight", "dbeta"], op_t, ref_t):
        _close(a.grad, r.grad, 2e-5, 1e-5, name)


def test_embeddings_dropout_inputs_embeds():
    torch.manual_seed(12)
    tokens, hidden, p = 9, 96, 0.27
    seed = ops.new_seed(CPU)
    _, pids, tids, *tables = _emb_inputs(tokens, hidden)
    keep = torch_ops.dropout_keep_mask((tokens, hidden), p, seed, CPU)
    embeds, embeds64 = _pair(torch.randn(tokens, hidden))
    y = ops.embeddings(None, embeds, pids, tids, *tables, 1e-12, p, seed)
    ref = _ref_embeddings(None, embeds64, pids, tids, *[t.double() for t in tables], 1e-12, keep=keep, p=p)
    _close(y, ref, 1e-5, 1e-5, "y")
    dy = torch.randn(tokens, hidden)
    y.backward(dy)
    ref.backward(dy.double())
    _close(embeds.grad, embeds64.grad, 2e-5, 1e-5, "dinputs_embeds")


# ============================================================================= torch.library.opcheck
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _opcheck(op, args):
    result = torch.library.opcheck(op, args, test_utils=OPCHECK_UTILS)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("lengths, p", [([3, 0, 5], 0.0), ([3, 0, 5], 0.1), ([4, 4], 0.0)])
def test_opcheck_attention(lengths, p):
    torch.manual_seed(13)
    qkv = torch.randn(sum(lengths), 3, 2, 16, requires_grad=True)
    seed = torch.tensor([1234]) if p else None
    _opcheck(torch.ops.fastbert.attention.default, (qkv, _cu(lengths), max(lengths), p, seed))


@pytest.mark.parametrize("with_bias, p", [(True, 0.0), (False, 0.1)])
def test_opcheck_residual_layernorm(with_bias, p):
    torch.manual_seed(14)
    x, bias, residual, weight, beta = [None if t is None else t.requires_grad_()
                                       for t in _rln_inputs(5, 24, with_bias)]
    seed = torch.tensor([1234]) if p else None
    _opcheck(torch.ops.fastbert.residual_layernorm.default, (x, bias, residual, weight, beta, 1e-5, p, seed))


@pytest.mark.parametrize("with_bias", [True, False])
def test_opcheck_linear_gelu(with_bias):
    torch.manual_seed(15)
    x, weight, bias = [None if t is None else t.requires_grad_() for t in _lg_inputs(5, 24, 40, with_bias)]
    _opcheck(torch.ops.fastbert.linear_gelu.default, (x, weight, bias))


def test_opcheck_linear_gelu_inference():
    torch.manual_seed(17)
    x, weight, bias = _lg_inputs(5, 24, 40, True)
    _opcheck(torch.ops.fastbert.linear_gelu_inference.default, (x, weight, bias))


@pytest.mark.parametrize("with_bias", [True, False])
def test_opcheck_qkv(with_bias):
    torch.manual_seed(19)
    inputs = [torch.randn(5, 24, requires_grad=True)] + [None if t is None else t.requires_grad_()
                                                        for t in _qkv_inputs(24, with_bias)]
    _opcheck(torch.ops.fastbert.qkv.default, tuple(inputs))


@pytest.mark.parametrize("with_bias", [True, False])
def test_opcheck_ffn(with_bias):
    torch.manual_seed(18)
    x, w1, b1 = [None if t is None else t.requires_grad_() for t in _lg_inputs(5, 24, 40, with_bias)]
    w2 = torch.randn(24, 40, requires_grad=True)
    _opcheck(torch.ops.fastbert.ffn.default, (x, w1, b1, w2))
    _opcheck(torch.ops.fastbert.ffn_inference.default,
             tuple(None if t is None else t.detach() for t in (x, w1, b1, w2)))


@pytest.mark.parametrize("use_embeds, p", [(False, 0.0), (True, 0.1)])
def test_opcheck_embeddings(use_embeds, p):
    torch.manual_seed(16)
    ids, pids, tids, *tables = _emb_inputs(6, 24, 0)
    tables = [t.requires_grad_() for t in tables]
    embeds = torch.randn(6, 24, requires_grad=True) if use_embeds else None
    seed = torch.tensor([1234]) if p else None
    _opcheck(torch.ops.fastbert.embeddings.default,
             (None if use_embeds else ids, embeds, pids, tids, *tables, 1e-12, p, seed, 0, 1))


# ============================================================================= backend selection
@pytest.mark.parametrize("value", ["bogus", "cuda", "tritonn"])
def test_invalid_backend_raises(monkeypatch, value):
    monkeypatch.setenv("FASTBERT_BACKEND", value)
    with pytest.raises(ValueError, match="FASTBERT_BACKEND"):
        ops.resolve_backend(CPU)
    with pytest.raises(ValueError, match="FASTBERT_BACKEND"):
        ops.linear_gelu(torch.randn(2, 4), torch.randn(3, 4), None)


@pytest.mark.parametrize("value", ["torch", " Torch "])
def test_torch_backend_resolves(monkeypatch, value):
    monkeypatch.setenv("FASTBERT_BACKEND", value)
    assert ops.backend_name() == "torch"
    assert ops.resolve_backend(CPU) == "torch"
    assert ops.resolve_backend(torch.device("cuda")) == "torch"


def test_auto_backend_on_cpu(monkeypatch):
    monkeypatch.delenv("FASTBERT_BACKEND", raising=False)
    assert ops.backend_name() == "auto"
    assert ops.resolve_backend(CPU) == "torch"
    monkeypatch.setenv("FASTBERT_BACKEND", "auto")
    assert ops.resolve_backend(CPU) == "torch"


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_attention_composite_differentiates_under_autograd_as_its_backward(p):
    """An exported graph differentiates ``torch_ops.attention_fwd`` itself (no in-place op on what autograd
    keeps): its gradients equal ``attention_bwd``'s with the same seed."""
    gen = torch.Generator().manual_seed(4)
    qkv = torch.randn(9, 3, 2, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    cu, seed = torch.tensor([0, 4, 9], dtype=torch.int32), torch.tensor([21])
    out, lse = torch_ops.attention_fwd(qkv, cu, 5, p, seed)
    dout = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (got,) = torch.autograd.grad(out, qkv, dout)
    want = torch_ops.attention_bwd(dout, qkv.detach(), out.detach(), lse, cu, 5, p, seed)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- float64: gradcheck
def _f64(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


_GRADCHECKED = {
    "attention": lambda: ((_f64(7, 3, 2, 4),), lambda q: ops.attention(q, _cu([3, 4]), 4)),
    "attention, dropout": lambda: ((_f64(7, 3, 2, 4),), lambda q: ops.attention(q, _cu([3, 4]), 4, 0.3,
                                                                                  torch.tensor([3]))),
    "residual_layernorm": lambda: ((_f64(5, 8), _f64(8), _f64(5, 8), _f64(8), _f64(8)),
                                   lambda *a: ops.residual_layernorm(*a, 1e-5)),
    "residual_layernorm, dropout": lambda: ((_f64(5, 8), _f64(8), _f64(5, 8), _f64(8), _f64(8)),
                                            lambda *a: ops.residual_layernorm(*a, 1e-5, 0.3, torch.tensor([3]))),
    "ffn": lambda: ((_f64(5, 8), _f64(12, 8), _f64(12), _f64(8, 12)), ops.ffn),
    "linear_gelu": lambda: ((_f64(5, 8), _f64(12, 8), _f64(12)), ops.linear_gelu),
    "qkv": lambda: ((_f64(5, 8), _f64(8, 8), _f64(8, 8), _f64(8, 8), _f64(8), _f64(8), _f64(8)), ops.qkv),
    "embeddings": lambda: ((_f64(11, 8), _f64(9, 8), _f64(2, 8), _f64(8), _f64(8)),
                           lambda word, pos, types, w, b: ops.embeddings(
                               torch.tensor([1, 4, 10, 4, 0]), None, torch.tensor([0, 1, 2, 0, 8]),
                               torch.tensor([0, 0, 1, 1, 0]), word, pos, types, w, b, 1e-12, 0.2, torch.tensor([5]))),
}


@pytest.mark.parametrize("op", list(_GRADCHECKED))
def test_float64_ops_pass_gradcheck(op):
    """Every op's backward in float64 against finite differences (torch.autograd.gradcheck, which also
    sends an undefined output gradient): float64 statistics, so the analytic gradients are float64's."""
    torch.manual_seed(0)
    inputs, fn = _GRADCHECKED[op]()
    assert torch.autograd.gradcheck(fn, inputs)
