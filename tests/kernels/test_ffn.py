"""The Triton feed-forward kernels (``kernels/ffn.py``) against float64.

On the CPU the kernels run in the Triton interpreter (conftest sets ``TRITON_INTERPRET=1``), where a
1000 x 768 x 3072 block takes most of a minute: the full size grid runs at 7 tokens, the token counts
at the smaller sizes. Outputs are fresh ``torch.empty`` buffers: every comparison checks finiteness.
"""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICE
from fastbert import ops
from fastbert.kernels import ffn as F
from lowp import assert_lowp_error, max_err

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NAMES = ["out", "dx", "dw1", "db1", "dw2"]


def _inputs(tokens, hidden, intermediate, dtype, bias=True, seed=0):
    """``(x, w1, b1, w2)`` scaled like a trained layer (pre-activations of order 1)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    x = rand(tokens, hidden)
    w1 = rand(intermediate, hidden) / hidden ** 0.5
    w2 = rand(hidden, intermediate) / intermediate ** 0.5
    b1 = 0.5 * rand(intermediate) if bias else None
    return [t.to(DEVICE, dtype) if t is not None else None for t in (x, w1, b1, w2)]


def _grads_of(fn, inputs, dy, dtype=None):
    leaves = [t.detach().to(dtype or t.dtype).clone().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*leaves)
    out.backward(dy.to(out.dtype))
    return [out.detach()] + [t.grad if t is not None else None for t in leaves]


def _check(tokens, hidden, intermediate, dtype, bias=True):
    inputs = _inputs(tokens, hidden, intermediate, dtype, bias, seed=tokens + hidden)
    dy = torch.randn(tokens, hidden, device=DEVICE).to(dtype).float()  # one upstream gradient for every side
    ours = _grads_of(F.FusedFFN.apply, inputs, dy)
    exact = _grads_of(F.ffn_reference, inputs, dy, torch.float64)
    if dtype == torch.float32:
        for name, a, b in zip(NAMES, ours, exact):
            if b is not None:
                assert max_err(a, b) <= 2e-5 * max(1.0, b.abs().max().item()), name
        return
    theirs = _grads_of(F.ffn_reference, inputs, dy)
    for name, a, b, c in zip(NAMES, ours, exact, theirs):
        if b is not None:
            assert_lowp_error(a, c, b, f"{name} {dtype} {tokens}x{hidden}x{intermediate}")


# ============================================================================= exactness
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden, intermediate", [(96, 200), (384, 1536), (768, 3072), (1536, 384)])
def test_sizes_match_float64(hidden, intermediate, dtype):
    """Forward and the gradients of x, w1, b1, w2 against float64, at 7 tokens."""
    _check(7, hidden, intermediate, dtype)


@pytest.mark.parametrize("tokens, hidden, intermediate, dtype", [
    (1, 96, 200, torch.float32), (129, 96, 200, torch.float32), (129, 384, 1536, torch.bfloat16),
    (1000, 96, 200, torch.float16), (129, 1536, 384, torch.float32),
    (1100, 100, 200, torch.float32),  # 9 tile rows (past one GROUP_M group), a ragged last K block
])
def test_token_counts(tokens, hidden, intermediate, dtype):
    """Token counts below, across and well past one tile (ragged last tiles in every GEMM)."""
    _check(tokens, hidden, intermediate, dtype)


def test_without_bias():
    _check(33, 96, 200, torch.float32, bias=False)


def test_first_linear_alone_gives_z_and_gelu():
    x, w1, b1, _ = _inputs(65, 96, 200, torch.float32)
    y, z = F.linear_gelu(x, w1, b1)
    z64 = torch.nn.functional.linear(x.double(), w1.double(), b1.double())
    assert max_err(z, z64) <= 1e-5 and max_err(y, torch.nn.functional.gelu(z64)) <= 1e-5
    y_only, none = F.linear_gelu(x, w1, b1, store_z=False)
    assert none is None and torch.equal(y_only, y)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("store_gelu", [True, False])
def test_backward_kernel_writes_dz_and_gelu(dtype, store_gelu):
    """``_ffn_bwd`` at 37 tokens x 50 -> 70: ``dz = (dout @ w2) * gelu'(z)`` and ``g = gelu(z)`` against
    float64 (within one rounding to the dtype plus the GEMM's error); ``g`` untouched without STORE_GELU."""
    gen = torch.Generator().manual_seed(dtype.itemsize + store_gelu)
    z, dout, w2 = (torch.randn(*shape, generator=gen).to(DEVICE, dtype) for shape in ((37, 70), (37, 50), (50, 70)))
    dz, g = torch.empty_like(z), torch.full_like(z, float("nan"))
    F._launch("bwd", 37, 70, dout, w2, z, dz, g, 37, 70, 50, 50, 1, 70, 1, F._bucket(37), STORE_GELU=store_gelu,
              INPUT_PRECISION="ieee", dtype=dtype, device=z.device)
    z64 = z.double()
    cdf = 0.5 * (1 + torch.erf(z64 / 2 ** 0.5))
    exact_dz = (dout.double() @ w2.double()) * (cdf + z64 * torch.exp(-z64 * z64 / 2) / (2 * torch.pi) ** 0.5)
    ulp = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    assert max_err(dz, exact_dz) <= 4 * ulp * exact_dz.abs().max().item()
    if store_gelu:
        assert max_err(g, z64 * cdf) <= ulp * (z64 * cdf).abs().max().item()
    else:
        assert g.isnan().all()


def test_strided_weights_are_read_by_value():
    """A transposed-view weight (inner stride not 1) and a sliced input give the contiguous result."""
    x, w1, b1, w2 = _inputs(9, 96, 200, torch.float32)
    w1_view = w1.t().contiguous().t()  # same values, column-major
    x_view = torch.cat([x, x], dim=1)[:, ::2]
    x_view.copy_(x)
    assert not w1_view.is_contiguous() and not x_view.is_contiguous()
    torch.testing.assert_close(F.ffn_fwd(x_view, w1_view, b1, w2.t().contiguous().t())[0], F.ffn_fwd(x, w1, b1, w2)[0])


def test_empty_batch():
    x, w1, b1, w2 = _inputs(0, 96, 200, torch.float32)
    out, dx, dw1, db1, dw2 = _grads_of(F.FusedFFN.apply, (x, w1, b1, w2), torch.randn(0, 96, device=DEVICE))
    assert out.shape == (0, 96) and dx.shape == (0, 96)
    assert (dw1 == 0).all() and (dw2 == 0).all() and (db1 == 0).all()


# ============================================================================= bad input
@pytest.mark.parametrize("change, error, match", [
    (dict(w1=torch.randn(200, 95)), ValueError, r"w1 must be \(intermediate, 96\)"),
    (dict(w2=torch.randn(96, 199)), ValueError, r"w2 must be \(out, 200\)"),
    (dict(b1=torch.randn(199)), ValueError, r"b1 must be \(200,\)"),
    (dict(x=torch.randn(4, 96, 2)), ValueError, "2-D"),
    (dict(w2=torch.randn(96, 200, dtype=torch.float16)), TypeError, "w2 has dtype"),
    (dict(x=torch.ones(4, 96, dtype=torch.int64)), TypeError, "x must be"),
])
def test_bad_input_raises_before_any_kernel(change, error, match):
    args = dict(zip(("x", "w1", "b1", "w2"), _inputs(4, 96, 200, torch.float32)))
    args.update({k: v.to(DEVICE) for k, v in change.items()})
    with pytest.raises(error, match=match):
        F.ffn_fwd(**args)


def test_op_rejects_shapes_that_do_not_chain():
    x, w1, b1, w2 = _inputs(4, 96, 200, torch.float32)
    with pytest.raises(ValueError, match="shapes do not chain"):
        ops.ffn(x, w1, b1, w2[:, :100])


# ============================================================================= the op
@pytest.mark.parametrize("grad", [True, False])
def test_op_triton_backend_matches_torch_backend(grad, monkeypatch):
    inputs = [t.requires_grad_(grad) for t in _inputs(65, 96, 200, torch.float32)]
    dy = torch.randn(65, 96, device=DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("FASTBERT_BACKEND", backend)
        for t in inputs:
            t.grad = None
        out = ops.ffn(*inputs)
        if grad:
            out.backward(dy)
        results[backend] = [out.detach()] + ([t.grad.clone() for t in inputs] if grad else [])
    for ours, theirs in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)


def test_linear_gelu_op_runs_the_kernel(monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    x, w1, b1, _ = _inputs(9, 96, 200, torch.float32)
    assert ops._impl("linear_gelu", "fwd", x.device) is F._linear_gelu_forward
    torch.testing.assert_close(ops.linear_gelu(x, w1, b1), torch.nn.functional.gelu(torch.nn.functional.linear(x, w1, b1)))


def test_opcheck_with_the_triton_backend(monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    inputs = [t.requires_grad_() for t in _inputs(9, 48, 80, torch.float32)]
    torch.library.opcheck(torch.ops.fastbert.ffn.default, tuple(inputs),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_tiles_are_the_checked_ones():
    """At BERT sizes the autotuner's candidates are exactly the tables check-kernels compiles; for a
    handful of tokens only the small tiles remain, and never an unproven one."""
    for kind in F._KERNELS:
        for dtype in DTYPES:
            for precision in ("ieee", "tf32"):
                configs = {str(c) for c in F.tile_configs(kind, dtype, precision)}
                big = dict(Z=torch.empty(0, dtype=dtype), M=768, N=3072, M_BUCKET=16384)
                pruned = F._TUNED[kind]._prune(F._ALL_CONFIGS, big, INPUT_PRECISION=precision)
                assert {str(c) for c in pruned} == configs and configs
                few = dict(big, M=8, M_BUCKET=8)
                small = F._TUNED[kind]._prune(F._ALL_CONFIGS, few, INPUT_PRECISION=precision)
                assert small and {str(c) for c in small} <= configs
                table = F.tile_configs(kind, dtype, precision)
                fitting = {str(c) for c in table if c.kwargs["BLOCK_M"] <= 32}
                assert {str(c) for c in small} == (fitting or {str(table[0])})


def test_fp32_follows_the_tf32_setting(monkeypatch):
    """fp32 GEMMs use TF32 exactly when PyTorch allows it for CUDA matmuls; 16-bit inputs ignore it."""
    seen = []
    monkeypatch.setattr(F, "_launch", lambda kind, *a, **meta: seen.append(meta["INPUT_PRECISION"]))
    x, w1, b1, _ = _inputs(4, 32, 64, torch.float32)
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    try:
        for setting, want in (("ieee", "ieee"), ("tf32", "tf32")):
            matmul.fp32_precision = setting
            F.linear_gelu(x, w1, b1)
            assert seen[-1] == want
    finally:
        matmul.fp32_precision = saved


def test_frozen_weights_skip_the_weight_gradients(monkeypatch):
    """With w1, b1, w2 frozen (e.g. LoRA elsewhere) backward gives dx alone, the same dx."""
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    x, w1, b1, w2 = _inputs(33, 96, 200, torch.float32)
    dy = torch.randn(33, 96, device=DEVICE)
    full = [t.clone().requires_grad_() for t in (x, w1, b1, w2)]
    ops.ffn(*full).backward(dy)
    frozen_x = x.clone().requires_grad_()
    ops.ffn(frozen_x, w1, b1, w2).backward(dy)
    torch.testing.assert_close(frozen_x.grad, full[0].grad)
    assert F.ffn_bwd(dy, x, w1, w2, F.ffn_fwd(x, w1, b1, w2)[1], True, False)[1].numel() == 0


def test_backward_fake_matches_real_strides_with_transposed_weights(monkeypatch):
    """The backward op's fake outputs are row-major like the real ones, even for column-major weights."""
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    x, w1, b1, w2 = _inputs(9, 48, 80, torch.float32)
    w1_t, w2_t = w1.t().contiguous().t(), w2.t().contiguous().t()
    z = F.ffn_fwd(x, w1, b1, w2)[1]
    dout = torch.randn(9, 48, device=DEVICE)
    torch.library.opcheck(torch.ops.fastbert.ffn_backward.default, (dout, x, w1_t, w2_t, z, True, True),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("weight, bias, match", [((200, 95), (200,), r"weight must be \(out"),
                                                 ((200, 96), (150,), r"bias must be \(200,\)")])
def test_linear_gelu_op_rejects_bad_shapes(weight, bias, match, monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    with pytest.raises(ValueError, match=match):
        ops.linear_gelu(torch.randn(4, 96, device=DEVICE), torch.randn(*weight, device=DEVICE),
                        torch.randn(*bias, device=DEVICE))
