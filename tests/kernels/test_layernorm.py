"""The Triton residual + dropout + LayerNorm kernels (``kernels/layernorm.py``) against float64.

On the CPU the kernels run in the Triton interpreter (conftest sets ``TRITON_INTERPRET=1``), planning
the backward's programs for ``REFERENCE_SMS`` (an H100's 132). The launchers write into fresh
``torch.empty`` buffers, so an unwritten element shows as garbage or NaN (the tests of the backward's
odd sizes fill every such buffer with NaN first): every comparison also checks that all values are
finite.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

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
    (8192), and several rows per backward program (one SM), so the per-column partial sums add up rows."""
    monkeypatch.setattr(L, "device_sms", lambda device: 1)
    _check(9, hidden, torch.float32, p, bias)


@pytest.mark.parametrize("rows, p, bias", [
    (1, 0.27, True), (7, 0.0, False), (129, 0.27, False), (129, 0.1, True), (1000, 0.0, True),
])
def test_row_counts_dropout_and_bias(rows, p, bias):
    """Row counts of one tile of rows and less, and of many programs (1000 rows of 96: 125 programs of
    one 8-row step)."""
    _check(rows, 384 if rows < 1000 else 96, torch.float32, p, bias)


@pytest.fixture
def poisoned(monkeypatch):
    """``torch.empty``/``torch.empty_like`` of floating point filled with NaN, so that an element no
    kernel writes (a partial sum, a gradient) fails the comparison instead of reading as a stale zero."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t
    monkeypatch.setattr(torch, "empty", lambda *a, **k: nan(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan(empty_like(*a, **k)))


@pytest.mark.parametrize("rows, hidden, dtype, p, bias", [
    (1, 32, torch.float32, 0.1, True),
    (7, 1000, torch.bfloat16, 0.0, False),
    (65, 768, torch.float16, 0.1, True),
    (127, 384, torch.bfloat16, 0.1, False),
    (129, 32, torch.float16, 0.0, True),
    (129, 1000, torch.float32, 0.27, False),
    (65, 4096, torch.float16, 0.1, True),
], ids=str)
def test_backward_odd_sizes_match_float64(rows, hidden, dtype, p, bias, poisoned):
    """Odd row counts (tiles of rows cut short) and hidden sizes (a ragged row block: 1000 in 1024
    columns), every dtype, with and without bias and dropout, all outputs NaN before the kernels run."""
    _check(rows, hidden, dtype, p, bias)


@pytest.mark.parametrize("sms, plan", [(132, (129, 4)), (8, (26, 20))])
def test_many_programs_with_a_ragged_last_one(sms, plan, poisoned, monkeypatch):
    """513 rows of 384 (bf16: 4-row steps): on 132 SMs 129 programs of one step, the last with one
    row; on 8 SMs 26 programs of 5 steps, the last of 13 rows (three steps and one row)."""
    monkeypatch.setattr(L, "device_sms", lambda device: sms)
    assert L.bwd_programs(513, L._bwd_rows(512, L._bwd_num_warps(512, torch.bfloat16)), 1, sms) == plan
    _check(513, 384, torch.bfloat16, 0.1, True)


# ============================================================================= the backward's grid
@pytest.mark.parametrize("rows", [1, 7, 64, 127, 129, 513, 4096, 65536, 10**6 + 3])
@pytest.mark.parametrize("step, column_blocks", [(1, 1), (2, 1), (8, 1), (16, 1), (1, 8)])
@pytest.mark.parametrize("sms", [1, 46, 132])
def test_bwd_programs_cover_every_row_once(rows, step, column_blocks, sms):
    """Whole steps a program, no program empty, every row in exactly one, at most the target count."""
    programs, per_program = L.bwd_programs(rows, step, column_blocks, sms)
    assert per_program % step == 0
    assert (programs - 1) * per_program < rows <= programs * per_program
    target = -(-L.BWD_PROGRAMS_PER_SM * sms // column_blocks)
    assert programs <= max(1, target)
    steps = -(-rows // step)
    if steps >= target:  # rows enough: more than half the target (rounding steps up), and all of it
        assert programs > target // 2  # where the steps divide evenly
        assert programs == target or steps % target


def test_bert_base_backward_fills_an_h100(monkeypatch):
    """4096 tokens x 768 on an H100's 132 SMs: 512 programs of 8 rows (256 of 16 before), as the
    launcher plans them; the wide backward's 4 column blocks of 4096 a quarter as many each."""
    programs, column_blocks, per_program = L.bwd_grid(4096, 768, torch.bfloat16, 132)
    assert (programs, column_blocks, per_program) == (512, 1, 8) and programs > 256 and programs >= 2 * 132
    assert L.bwd_grid(4096, 4096, torch.bfloat16, 132) == (128, 4, 32)

    class Recorder:  # the launch only: the interpreter would take a minute over the kernel itself
        def __getitem__(self, grid):
            return lambda *args, **meta: launches.append((grid, args[-4:], meta))
    launches = []
    monkeypatch.setattr(L, "_residual_layernorm_bwd", Recorder())
    monkeypatch.setattr(L, "device_sms", lambda device: 132)
    x, bias, residual, weight, _ = _inputs(4096, 768, torch.bfloat16)
    stats = torch.ones(4096, device=DEVICE)
    L.residual_layernorm_bwd(x, x, bias, residual, weight, stats, stats, 0.1, torch.tensor([1], device=DEVICE))
    (grid, (rows, hidden, rows_per_program, _), meta), = launches
    assert grid == (512, 1) and (rows, hidden, rows_per_program) == (4096, 768, 8) and meta["ROWS"] == 1


class _Launches(TorchDispatchMode):
    """What a backward call would launch on a GPU and allocate: Triton kernels (the interpreter's runs)
    with their grids, and ATen calls outside them."""

    def __init__(self, monkeypatch):
        super().__init__()
        from triton.runtime.interpreter import InterpretedFunction

        self.kernels, self.aten, self.inside = [], [], False
        run = InterpretedFunction.run

        def counted(kernel, *args, grid, **kwargs):
            self.kernels.append((kernel.fn.__name__, tuple(grid)))
            self.inside = True
            try:
                return run(kernel, *args, grid=grid, **kwargs)
            finally:
                self.inside = False
        monkeypatch.setattr(InterpretedFunction, "run", counted)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside:
            self.aten.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


ALLOCATIONS = {"empty", "empty_like", "new_empty", "empty_strided"}
VIEWS = {"select", "unbind", "lift_fresh", "detach", "alias"}


@pytest.mark.parametrize("hidden, bias", [(768, True), (768, False), (4096, True)])
def test_backward_launches_and_allocations(hidden, bias, monkeypatch):
    """Two launches (three with the wide first pass) and nothing else on the device: no zero fill of
    the partial sums, no cast copies of the gradients (six launches before, seven wide); allocations
    for the five outputs (dbias an empty stand-in without bias), the partial sums and the wide pass's
    row terms only (seven and eight before)."""
    x, b, residual, weight, beta = _inputs(40, hidden, torch.bfloat16, bias)
    seed = torch.tensor([4], device=DEVICE)
    _, mean, rstd = L.residual_layernorm_fwd(x, b, residual, weight, beta, EPS, 0.1, seed)
    dy = torch.randn(40, hidden, device=DEVICE).to(x.dtype)
    with _Launches(monkeypatch) as launches:
        L.residual_layernorm_bwd(dy, x, b, residual, weight, mean, rstd, 0.1, seed)
    wide = ["_residual_layernorm_bwd_terms"] if hidden > L.ONE_PASS_HIDDEN else []
    assert [name for name, _ in launches.kernels] == wide + ["_residual_layernorm_bwd", "sum_partials_kernel"]
    assert set(launches.aten) <= ALLOCATIONS | VIEWS, launches.aten
    assert sum(name in ALLOCATIONS for name in launches.aten) == 6 + len(wide)


# ============================================================================= dropout
def test_dropout_keep_rate():
    p = 0.27
    keep = L.dropout_mask(1000, 1024, p, torch.tensor([99], device=DEVICE))
    assert abs(keep.float().mean().item() - (1 - p)) < 0.01
    assert not torch.equal(keep[0], keep[1])  # rows draw different bits


@pytest.mark.parametrize("rows, hidden", [(50, 96), (37, 200), (5, 1500)])
def test_backward_uses_the_forward_mask(rows, hidden):
    """dx / dresidual is exactly the kept-and-scaled factor of the debug mask (one row a program, as
    the forward draws it), element by element: tiles of 8 rows (96, 37 rows ending in a short tile),
    of 4 (200) and wide rows over column blocks (1500)."""
    p = 0.3
    inputs = _inputs(rows, hidden, torch.float32, bias=True)
    seed = torch.tensor([5], device=DEVICE)
    _, (dx, _, dres, _, _) = _run(inputs, p, seed, torch.randn(rows, hidden, device=DEVICE))
    keep = L.dropout_mask(rows, hidden, p, seed)
    torch.testing.assert_close(dx, dres * keep / (1 - p), rtol=1e-6, atol=0)


@pytest.mark.parametrize("rows, hidden, dtype, sms", [(64, 96, torch.bfloat16, 1), (61, 96, torch.float16, 132),
                                                      (13, 1500, torch.float32, 1)])
def test_same_seed_is_bitwise_deterministic(rows, hidden, dtype, sms, monkeypatch):
    """Forward and all five gradients bit for bit across runs: on one SM 64 rows of 96 are 4 programs of
    two 8-row steps, and 13 wide rows one program a column block; on 132 SMs 61 rows are 8 programs,
    the last of 5 rows."""
    monkeypatch.setattr(L, "device_sms", lambda device: sms)
    inputs = _inputs(rows, hidden, dtype)
    dy = torch.randn(rows, hidden, device=DEVICE)
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
