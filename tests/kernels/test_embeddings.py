"""The Triton fused embeddings kernels (``kernels/embeddings.py``) against float64.

On the CPU the kernels run in the Triton interpreter (conftest sets ``TRITON_INTERPRET=1``). Outputs are
fresh ``torch.empty`` buffers, so an unwritten element shows as garbage or NaN: comparisons check that
every value is finite. Ids repeat (small tables, many tokens) so the table gradients really accumulate.
"""

from __future__ import annotations

import collections
import sys

import pytest
import torch
import triton
from torch.utils._python_dispatch import TorchDispatchMode
from triton.runtime.interpreter import InterpretedFunction

from conftest import DEVICE
from fastbert import ops
from fastbert.kernels import embeddings as E
from fastbert.kernels import rows as R
from lowp import assert_lowp_error, max_err

EPS = 1e-12
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NAMES = ["y", "dinputs_embeds", "dword", "dpos", "dtypes", "dweight", "dbeta"]


def _inputs(tokens, hidden, dtype, embeds=False, vocab=50, positions=40, types=3, seed=0):
    """Argument dict of :func:`embeddings_fwd` (less eps/dropout): random tables, repeating ids."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    ids = lambda rows: torch.randint(0, rows, (tokens,), generator=gen).to(DEVICE)  # noqa: E731
    args = dict(input_ids=ids(vocab), inputs_embeds=None, position_ids=ids(positions), token_type_ids=ids(types),
                word=rand(vocab, hidden), pos=0.5 * rand(positions, hidden), types=0.5 * rand(types, hidden),
                weight=1.0 + 0.2 * rand(hidden), beta=0.1 * rand(hidden))
    if embeds:
        args.update(input_ids=None, inputs_embeds=rand(tokens, hidden))
    return {k: v.to(DEVICE, dtype) if v is not None and v.dtype.is_floating_point else v for k, v in args.items()}


FLOATS = ["inputs_embeds", "word", "pos", "types", "weight", "beta"]


def _leaves(args, dtype=None):
    out = dict(args)
    for k in FLOATS:
        if args[k] is not None:
            out[k] = args[k].detach().to(dtype or args[k].dtype).clone().requires_grad_()
    return out


def _grads(leaves):
    return [leaves[k].grad if leaves[k] is not None else None for k in FLOATS]


def _run(args, p, seed, dy, padding_idx=-1, position_padding_idx=-1):
    """Kernel forward and backward through the autograd Function: ``(y, [d inputs_embeds, word, pos, types,
    weight, beta])``."""
    leaves = _leaves(args)
    a = leaves
    y = E.FusedEmbeddings.apply(a["input_ids"], a["inputs_embeds"], a["position_ids"], a["token_type_ids"],
                                a["word"], a["pos"], a["types"], a["weight"], a["beta"], EPS, p, seed, padding_idx,
                                True, position_padding_idx)
    y.backward(dy.to(y.dtype))
    return y.detach(), _grads(leaves)


def _reference(args, keep, p, dy, dtype=None, padding_idx=-1, position_padding_idx=-1):
    leaves = _leaves(args, dtype)
    a = leaves
    y = E.embeddings_reference(a["input_ids"], a["inputs_embeds"], a["position_ids"], a["token_type_ids"],
                               a["word"], a["pos"], a["types"], a["weight"], a["beta"], EPS, keep, p)
    y.backward(dy.to(y.dtype))
    grads = _grads(leaves)
    if padding_idx >= 0 and grads[1] is not None:
        grads[1][padding_idx] = 0
    if position_padding_idx >= 0:
        grads[2][position_padding_idx] = 0
    return y.detach(), grads


def _check(tokens, hidden, dtype, p, embeds=False, padding_idx=-1, ids=None, position_padding_idx=-1, **sizes):
    """Kernel forward and gradients vs float64 (fp32: 2e-5 of the largest value; 16-bit: within 2x
    PyTorch's own error in that dtype). ``ids``: ``{name: ids}`` replacing the random ones."""
    args = _inputs(tokens, hidden, dtype, embeds, seed=tokens + hidden, **sizes)
    args.update({k: v.to(DEVICE) for k, v in (ids or {}).items()})
    seed = torch.tensor([tokens * 5 + hidden], device=DEVICE)
    keep = E.dropout_mask(tokens, hidden, p, seed) if p else None
    dy = torch.randn(tokens, hidden, device=DEVICE).to(dtype).float()  # one upstream gradient for every side
    y, grads = _run(args, p, seed, dy, padding_idx, position_padding_idx)
    y64, grads64 = _reference(args, keep, p, dy, torch.float64, padding_idx, position_padding_idx)
    pairs = [(y, y64)] + list(zip(grads, grads64))
    if dtype == torch.float32:
        for name, (ours, exact) in zip(NAMES, pairs):
            if exact is not None:
                assert max_err(ours, exact) <= 2e-5 * max(1.0, exact.abs().max().item()), name
        return y, grads
    y_lowp, grads_lowp = _reference(args, keep, p, dy, padding_idx=padding_idx,
                                    position_padding_idx=position_padding_idx)
    for name, (ours, exact), theirs in zip(NAMES, pairs, [y_lowp] + grads_lowp):
        if exact is not None:
            assert_lowp_error(ours, theirs.to(ours.dtype), exact, f"{name} {dtype} hidden {hidden}")
    return y, grads


# ============================================================================= exactness
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [96, 384, 768, 1000, 1024])
def test_hidden_sizes_match_float64(hidden, dtype):
    """Forward and the gradients of the three tables and the LayerNorm, with dropout, vs float64."""
    _check(7, hidden, dtype, 0.1)


@pytest.mark.parametrize("tokens, p", [(1, 0.27), (7, 0.0), (129, 0.1), (1000, 0.0)])
def test_token_counts(tokens, p):
    """Token counts below, at and past the backward's 256 programs (several tokens per program)."""
    _check(tokens, 96 if tokens == 1000 else 384, torch.float32, p)


@pytest.mark.parametrize("tokens, hidden, dtype, p", [
    (1, 32, torch.bfloat16, 0.1), (7, 1000, torch.float16, 0.0), (65, 384, torch.float32, 0.1),
    (127, 32, torch.float16, 0.1), (129, 1000, torch.bfloat16, 0.0), (513, 32, torch.float32, 0.1),
], ids=str)
def test_odd_sizes_match_float64(tokens, hidden, dtype, p):
    """Token counts that leave the backward's last tile and the table passes' last chunk part full (tiles of
    2 tokens at 1000 columns, 4 at 384, 32 at 32; chunks of 128), odd widths, every dtype."""
    _check(tokens, hidden, dtype, p)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_all_tokens_one_id_match_float64(dtype):
    """Every token has the same word, position and type id: 300 gradients of one row in each table,
    summed across three chunks (in fp32, where PyTorch's own 16-bit backward sums in 16 bits)."""
    full = lambda value: torch.full((300,), value)  # noqa: E731
    _check(300, 32, dtype, 0.1, ids=dict(input_ids=full(49), position_ids=full(0), token_type_ids=full(2)))


def test_ids_at_the_table_ends_match_float64():
    """Ids 0 and rows - 1 only, in runs across chunk starts, with padding_idx 0 and the position table's
    padding index (RoBERTa has one) at its last row."""
    ends = lambda rows: torch.tensor([0, rows - 1])[torch.arange(300) // 70 % 2]  # noqa: E731
    _check(300, 48, torch.float32, 0.0, padding_idx=0, position_padding_idx=39,
           ids=dict(input_ids=ends(50), position_ids=ends(40), token_type_ids=ends(3)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inputs_embeds_instead_of_word_ids(dtype):
    _check(33, 384, dtype, 0.1, embeds=True)


@pytest.mark.parametrize("tokens, hidden, dtype, p", [(1, 1000, torch.float16, 0.0), (129, 32, torch.bfloat16, 0.1),
                                                      (65, 384, torch.float32, 0.0)], ids=str)
def test_inputs_embeds_odd_sizes(tokens, hidden, dtype, p):
    """The gradient of ``inputs_embeds`` comes in its own dtype, written by the kernel (fp32: ``ds`` itself)."""
    _, grads = _check(tokens, hidden, dtype, p, embeds=True)
    assert grads[0].dtype == dtype and grads[0].shape == (tokens, hidden)


def test_table_gradients_of_ids_spanning_many_chunks(monkeypatch):
    """Chunks of 4 sorted tokens: 300 tokens of 2 types and 3 hot word ids run across dozens of chunks."""
    monkeypatch.setattr(E, "CHUNK", 4)
    _check(300, 48, torch.float32, 0.0, vocab=3, types=2)


@pytest.mark.parametrize("ids", [[5], [2, 2, 2, 2, 2, 2, 2], [6, 5, 4, 3, 2, 1, 0], [0, 3, 3, 1, 3, 3, 0, 3, 3],
                                 [7, -1, 8, 0, 7, 100, 7]])
def test_table_grad_edge_cases(ids, monkeypatch):
    """One token, one id for all, all ids distinct, runs across chunk starts, ids outside the table (left
    out) next to its last row: vs a float64 index_add."""
    monkeypatch.setattr(E, "CHUNK", 2)
    ids = torch.tensor(ids, device=DEVICE)
    ds = torch.randn(len(ids), 70, device=DEVICE)
    inside = (ids >= 0) & (ids < 8)
    want = torch.zeros(8, 70, dtype=torch.float64, device=DEVICE).index_add_(0, ids[inside], ds[inside].double())
    want[4] = 0
    got = E.table_grad(ds, ids, 8, torch.float32, padding_idx=4)
    assert max_err(got, want) <= 1e-6


@pytest.mark.parametrize("chunk", [4, 128])
def test_table_grad_of_one_hot_row_is_its_fp32_sum(chunk, monkeypatch):
    """2049 tokens of one id (the type table's usual case): 17 or 513 chunks, several steps of the second
    pass, within fp32 rounding of the exact sum; the other rows exactly zero."""
    monkeypatch.setattr(E, "CHUNK", chunk)
    ids = torch.full((2049,), 1, device=DEVICE)
    ds = torch.randn(2049, 40, device=DEVICE)
    got = E.table_grad(ds, ids, 3, torch.float32)
    exact = ds.double().sum(0)
    assert (got[1].double() - exact).abs().max() <= 1e-5 * ds.abs().sum(0).max()
    assert torch.equal(got[[0, 2]], torch.zeros(2, 40, device=DEVICE))


def test_segmented_scan_of_the_gpu_path(monkeypatch):
    """The runs pass as compiled for a GPU (``tl.associative_scan``, which the interpreter runs element by
    element; other tests take its doubling stand-in) sums the same runs."""
    monkeypatch.setattr(E, "CHUNK", 8)
    ids = torch.tensor([3, 0, 3, 3, 1, 0, 3, 3, 2, 3, 3, 3, 1], device=DEVICE)
    ds = torch.randn(len(ids), 20, device=DEVICE)
    fast = E.table_grad(ds, ids, 4, torch.float32)
    monkeypatch.setattr(E, "INTERPRET", triton.language.constexpr(False))
    scanned = E.table_grad(ds, ids, 4, torch.float32)
    want = torch.zeros(4, 20, dtype=torch.float64, device=DEVICE).index_add_(0, ids, ds.double())
    assert max_err(scanned, want) <= 1e-6 and max_err(fast, want) <= 1e-6


def test_padding_idx_row_gets_no_gradient():
    args = _inputs(40, 32, torch.float32, vocab=5)
    args["input_ids"][:10] = 2
    _, grads = _run(args, 0.0, None, torch.randn(40, 32, device=DEVICE), padding_idx=2)
    assert torch.equal(grads[1][2], torch.zeros(32, device=DEVICE))
    assert grads[1][[0, 1, 3, 4]].abs().sum(1).min() > 0


def test_empty_batch():
    args = _inputs(0, 32, torch.float32)
    y, grads = _run(args, 0.1, torch.tensor([1], device=DEVICE), torch.randn(0, 32, device=DEVICE))
    assert y.shape == (0, 32)
    assert all(g is None or (g == 0).all() for g in grads)


# ============================================================================= dropout
@pytest.mark.parametrize("tokens, hidden", [(60, 64), (19, 384), (7, 1000)])
def test_dropout_zeroes_exactly_the_masked_outputs_and_backward_uses_the_same_mask(tokens, hidden):
    """Backward tiles of 16, 4 and 2 tokens (the last one part full) draw the forward's bits."""
    p = 0.3
    args = _inputs(tokens, hidden, torch.float32)
    seed = torch.tensor([17], device=DEVICE)
    keep = E.dropout_mask(tokens, hidden, p, seed)
    assert abs(keep.float().mean().item() - (1 - p)) < 0.05
    dy = torch.randn(tokens, hidden, device=DEVICE)
    y, grads = _run(args, p, seed, dy)
    assert torch.equal(y == 0, ~keep)
    # dbeta is the sum over tokens of the gradient that reaches LayerNorm: dy kept and scaled
    torch.testing.assert_close(grads[5], (dy * keep / (1 - p)).sum(0), rtol=1e-5, atol=1e-5)
    # and each token's gradient is the LayerNorm backward of exactly that
    _, want = _reference(args, keep, p, dy, torch.float64)
    assert max_err(grads[1], want[1]) <= 2e-5 * max(1.0, want[1].abs().max().item())


def test_same_seed_is_bitwise_deterministic(monkeypatch):
    monkeypatch.setattr(E, "BWD_PROGRAMS", 16)  # 64 tokens: 8 backward programs of one 8-token step each
    monkeypatch.setattr(E, "CHUNK", 4)
    args = _inputs(64, 96, torch.bfloat16, vocab=7, types=2)
    dy = torch.randn(64, 96, device=DEVICE)
    seed = torch.tensor([11], device=DEVICE)
    first, again = _run(args, 0.1, seed, dy), _run(args, 0.1, seed.clone(), dy)
    assert torch.equal(first[0], again[0])
    assert all(a is None or torch.equal(a, b) for a, b in zip(first[1], again[1]))


def test_repeated_ids_are_bitwise_deterministic():
    """513 tokens of three word ids at the real tile and chunk sizes, with dropout: the same bits twice."""
    args = _inputs(513, 48, torch.float32, vocab=3, types=2)
    dy = torch.randn(513, 48, device=DEVICE)
    seed = torch.tensor([5], device=DEVICE)
    first, again = _run(args, 0.1, seed, dy), _run(args, 0.1, seed.clone(), dy)
    assert all(a is None or torch.equal(a, b) for a, b in zip(first[1], again[1]))


_POISON = {torch.float32: float("nan"), torch.float16: float("nan"), torch.bfloat16: float("nan"),
           torch.int64: -(2 ** 40), torch.int32: -(2 ** 30)}


def _poisoned(make):
    """``make`` (``torch.empty`` and its kin) whose result is filled with NaN (or a huge negative integer)
    when the kernels' module asks for it: an element the kernels leave unwritten, or a scratch slot read
    before it is written, then shows in the gradients."""
    def poisoned(*args, **kwargs):
        out = make(*args, **kwargs)
        if sys._getframe(1).f_globals.get("__name__") in (E.__name__, R.__name__) and out.dtype in _POISON:
            out.fill_(_POISON[out.dtype])
        return out
    return poisoned


@pytest.mark.parametrize("embeds, dtype", [(False, torch.float32), (False, torch.bfloat16), (True, torch.float16),
                                           (True, torch.float32)], ids=str)
def test_gradients_from_poisoned_buffers_are_the_same(embeds, dtype, monkeypatch):
    """Every buffer the backward allocates starts poisoned: the gradients are bit for bit the clean run's."""
    args = _inputs(129, 48, dtype, embeds=embeds, vocab=7, types=2)
    args["input_ids"] = None if embeds else torch.arange(129, device=DEVICE) % 7 // 3  # runs of 3 ids, rows unused
    dy = torch.randn(129, 48, device=DEVICE)
    seed = torch.tensor([9], device=DEVICE)
    clean = _run(args, 0.1, seed, dy, padding_idx=1)
    monkeypatch.setattr(torch, "empty", _poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", _poisoned(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", _poisoned(torch.Tensor.new_empty))
    poisoned = _run(args, 0.1, seed, dy, padding_idx=1)
    assert torch.equal(clean[0], poisoned[0])
    for name, a, b in zip(NAMES[1:], clean[1], poisoned[1]):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), name


class _Calls(TorchDispatchMode):
    """ATen calls by name, outside Triton's runs (the interpreter's own are left out)."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.names, self.inside = collections.Counter(), False
        run = InterpretedFunction.run

        def outside(kernel, *args, **kwargs):
            self.inside = True
            try:
                return run(kernel, *args, **kwargs)
            finally:
                self.inside = False
        monkeypatch.setattr(InterpretedFunction, "run", outside)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside:
            self.names[func.__name__.split(".")[0]] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("embeds, dtype", [(False, torch.float16), (True, torch.float16), (True, torch.float32)],
                         ids=str)
def test_backward_copies_nothing(embeds, dtype, monkeypatch):
    """The kernels write each gradient in its own dtype: no copy, no fill but each table's row ranges,
    and per table one sort (searchsorted and arange no more)."""
    args = _inputs(40, 32, dtype, embeds=embeds)
    y, mean, rstd = E.embeddings_fwd(**args, eps=EPS, dropout_p=0.0, seed=None)
    dy = torch.randn(40, 32, device=DEVICE).to(dtype)
    with _Calls(monkeypatch) as calls:
        grads = E.embeddings_bwd(dy, args["input_ids"], args["inputs_embeds"], args["position_ids"],
                                 args["token_type_ids"], args["word"], args["pos"], args["types"], args["weight"],
                                 mean, rstd, 0.0, None, -1)
    tables = 2 if embeds else 3
    assert not {"_to_copy", "copy_", "clone", "fill_", "zero_"} & set(calls.names), calls.names
    assert calls.names["zeros"] == tables and calls.names["sort"] == tables, calls.names
    assert not {"searchsorted", "arange"} & set(calls.names), calls.names
    assert [g.dtype for g in grads] == [dtype] * 6


# ============================================================================= bad input
def _call(check_values=True, **changes):
    args = _inputs(6, 16, torch.float32, vocab=10, positions=8, types=2)
    args.update(eps=EPS, dropout_p=0.0, seed=None)
    args.update({k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in changes.items()})
    return E.embeddings_fwd(**args, check_values=check_values)


@pytest.mark.parametrize("changes, error, match", [
    (dict(input_ids=torch.tensor([0, 1, 2, 3, 4, 10])), ValueError, r"input_ids must lie in \[0, 10\).*\[0, 10\]"),
    (dict(input_ids=torch.tensor([0, -1, 2, 3, 4, 5])), ValueError, "input_ids must lie in"),
    (dict(position_ids=torch.tensor([0, 1, 2, 3, 4, 8])), ValueError, r"position_ids must lie in \[0, 8\)"),
    (dict(token_type_ids=torch.tensor([0, 1, 2, 0, 0, 0])), ValueError, r"token_type_ids must lie in \[0, 2\)"),
    (dict(input_ids=torch.zeros(6)), TypeError, "input_ids must be int32 or int64"),
    (dict(token_type_ids=torch.zeros(5, dtype=torch.long)), ValueError, r"token_type_ids must be \(tokens,\)"),
    (dict(inputs_embeds=torch.randn(6, 16)), ValueError, "exactly one of input_ids or inputs_embeds"),
    (dict(input_ids=None, inputs_embeds=torch.randn(6, 15)), ValueError, "inputs_embeds must be"),
    (dict(pos=torch.randn(8, 17)), ValueError, "pos must be"),
    (dict(weight=torch.randn(15)), ValueError, "weight must be"),
    (dict(word=torch.randn(10, 16, dtype=torch.float64)), TypeError, "word must be"),
    (dict(dropout_p=0.1), ValueError, "needs seed"),
    (dict(dropout_p=1.0, seed=torch.tensor([1])), ValueError, "dropout_p"),
])
def test_bad_input_raises_before_any_kernel(changes, error, match):
    with pytest.raises(error, match=match):
        _call(**changes)


@pytest.mark.parametrize("name, bad", [("input_ids", 10_000_000), ("input_ids", -3), ("position_ids", 8),
                                       ("token_type_ids", -1)])
def test_unchecked_out_of_range_id_reads_nothing_and_gives_nan(name, bad):
    """Where the host check cannot run (CUDA-graph capture), a bad id never reads out of bounds: its row
    is NaN, every other row is right, and backward gives NaN gradients rather than quiet numbers."""
    args = _inputs(6, 16, torch.float32, vocab=10, positions=8, types=2)
    args[name] = args[name].clone()
    args[name][5] = bad
    leaves = _leaves(args)
    a = leaves
    y = E.FusedEmbeddings.apply(a["input_ids"], None, a["position_ids"], a["token_type_ids"], a["word"], a["pos"],
                                a["types"], a["weight"], a["beta"], EPS, 0.0, None, -1, False)
    assert torch.isnan(y[5]).all() and torch.isfinite(y[:5]).all()
    good = _inputs(6, 16, torch.float32, vocab=10, positions=8, types=2)
    torch.testing.assert_close(y[:5], E.embeddings_fwd(**good, eps=EPS, dropout_p=0.0, seed=None)[0][:5])
    y.sum().backward()
    assert torch.isnan(leaves["weight"].grad).all() and torch.isnan(leaves["beta"].grad).all()


def test_non_contiguous_layernorm_parameters():
    args = _inputs(7, 64, torch.float32)
    strided = dict(args, weight=args["weight"].repeat_interleave(2)[::2], beta=args["beta"].repeat_interleave(2)[::2])
    assert not strided["weight"].is_contiguous()
    dy = torch.randn(7, 64, device=DEVICE)
    want, got = _run(args, 0.0, None, dy), _run(strided, 0.0, None, dy)
    torch.testing.assert_close(got[0], want[0])
    for g, w in zip(got[1], want[1]):
        assert (g is None) == (w is None) and (g is None or torch.allclose(g, w))


# ============================================================================= the op
def _op_results(args, dy):
    leaves = _leaves(args)
    a = leaves
    y = ops.embeddings(a["input_ids"], a["inputs_embeds"], a["position_ids"], a["token_type_ids"], a["word"],
                       a["pos"], a["types"], a["weight"], a["beta"], EPS, 0.0, None, 1)
    y.backward(dy)
    return [y.detach()] + [g for g in _grads(leaves) if g is not None]


@pytest.mark.parametrize("embeds, id_dtype", [(False, torch.int64), (False, torch.int32), (True, torch.int64)])
def test_op_triton_backend_matches_torch_backend(embeds, id_dtype, monkeypatch):
    args = _inputs(65, 200, torch.float32, embeds=embeds, vocab=20)
    args.update({k: v.to(id_dtype) for k, v in args.items() if v is not None and not v.dtype.is_floating_point})
    dy = torch.randn(65, 200, device=DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("FASTBERT_BACKEND", backend)
        results[backend] = _op_results(args, dy)
    for ours, theirs in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("hidden, dtype, why", [(1100, torch.float32, "hidden 1100 > 1024"),
                                                (32, torch.float64, "dtype torch.float64")])
def test_what_the_kernels_do_not_take_falls_back_to_pytorch(hidden, dtype, why, monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    args = _inputs(5, hidden, dtype)
    with pytest.warns(UserWarning, match=why):
        results = _op_results(args, torch.randn(5, hidden, device=DEVICE, dtype=dtype))
    assert all(torch.isfinite(t).all() for t in results)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_op_checks_id_ranges_on_every_backend(backend, monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", backend)
    args = _inputs(6, 16, torch.float32, vocab=10, positions=8, types=2)
    args["position_ids"][2] = 8
    with pytest.raises(ValueError, match=r"position_ids must lie in \[0, 8\)"):
        ops.embeddings(**args, eps=EPS)


@pytest.mark.parametrize("embeds", [False, True])
def test_opcheck_with_the_triton_backend(embeds, monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    a = _leaves(_inputs(9, 48, torch.float32, embeds=embeds))
    torch.library.opcheck(
        torch.ops.fastbert.embeddings.default,
        (a["input_ids"], a["inputs_embeds"], a["position_ids"], a["token_type_ids"], a["word"], a["pos"], a["types"],
         a["weight"], a["beta"], EPS, 0.1, torch.tensor([3], device=DEVICE), 0, 2),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
