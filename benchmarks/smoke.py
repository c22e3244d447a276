"""Smoke test of every fused op in :mod:`fastbert.ops`: the Triton backend against the PyTorch one.

Each case runs one op on small, odd-sized inputs twice, with ``FASTBERT_BACKEND=triton`` and with
``FASTBERT_BACKEND=torch``, forward and backward (the same upstream gradient), and records the max abs
difference of the output and of every input gradient, each divided by the largest magnitude of the PyTorch
result (at least 1). Dropout is off: the two backends draw different masks from one seed. The
tolerances catch a broken kernel, not the last bits (:mod:`tests.kernels` does that).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from fastbert import ops

TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # the most used first: a cut-short run has it


@dataclass(frozen=True)
class Shapes:
    """Sizes of the smoke cases; none a power of two, so every kernel runs with masked tails."""

    lengths: tuple = (1, 7, 65, 130, 257)  # attention: packed sequences (past 128: the tiled path)
    heads: int = 3
    head_dim: int = 48
    tokens: int = 301  # rows of the LayerNorm, GEMM and embedding cases
    hidden: int = 200
    intermediate: int = 328
    vocab: int = 1003
    positions: int = 512


TINY = Shapes(lengths=(1, 7, 20), heads=2, head_dim=16, tokens=13, hidden=40, intermediate=72, vocab=50,
              positions=32)


@dataclass
class Case:
    """One op call: ``run(**inputs)`` returns a tensor; ``inputs`` holds every argument, the floating-point
    tensors among them get gradients."""

    op: str
    run: Callable
    inputs: dict


def _randn(gen, *shape, dtype, device, scale=1.0):
    return (scale * torch.randn(*shape, generator=gen)).to(device, dtype)


def attention_case(s: Shapes, dtype, device, gen) -> Case:
    """``ops.attention`` on qkv ``(tokens, 3, heads, head_dim)`` packed from ``s.lengths``."""
    cu = torch.tensor([0, *torch.tensor(s.lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    qkv = _randn(gen, sum(s.lengths), 3, s.heads, s.head_dim, dtype=dtype, device=device)
    return Case("attention", lambda qkv, cu, max_len: ops.attention(qkv, cu, max_len),
                {"qkv": qkv, "cu": cu, "max_len": max(s.lengths)})


def residual_layernorm_case(s: Shapes, dtype, device, gen) -> Case:
    """``ops.residual_layernorm`` on ``(tokens, hidden)`` rows with bias."""
    inputs = {"x": _randn(gen, s.tokens, s.hidden, dtype=dtype, device=device),
              "bias": _randn(gen, s.hidden, dtype=dtype, device=device),
              "residual": _randn(gen, s.tokens, s.hidden, dtype=dtype, device=device),
              "weight": (1 + _randn(gen, s.hidden, dtype=torch.float32, device=device, scale=0.1)).to(dtype),
              "beta": _randn(gen, s.hidden, dtype=dtype, device=device)}
    return Case("residual_layernorm",
                lambda x, bias, residual, weight, beta: ops.residual_layernorm(x, bias, residual, weight, beta, 1e-12),
                inputs)


def _linear_inputs(s: Shapes, dtype, device, gen) -> dict:
    return {"x": _randn(gen, s.tokens, s.hidden, dtype=dtype, device=device),
            "w1": _randn(gen, s.intermediate, s.hidden, dtype=dtype, device=device, scale=s.hidden ** -0.5),
            "b1": _randn(gen, s.intermediate, dtype=dtype, device=device)}


def linear_gelu_case(s: Shapes, dtype, device, gen) -> Case:
    """``ops.linear_gelu``: ``(tokens, hidden) -> (tokens, intermediate)``."""
    return Case("linear_gelu", lambda x, w1, b1: ops.linear_gelu(x, w1, b1), _linear_inputs(s, dtype, device, gen))


def ffn_case(s: Shapes, dtype, device, gen) -> Case:
    """``ops.ffn``: ``(tokens, hidden) -> (tokens, intermediate) -> (tokens, hidden)``."""
    inputs = {**_linear_inputs(s, dtype, device, gen),
              "w2": _randn(gen, s.hidden, s.intermediate, dtype=dtype, device=device, scale=s.intermediate ** -0.5)}
    return Case("ffn", lambda x, w1, b1, w2: ops.ffn(x, w1, b1, w2), inputs)


def embeddings_case(s: Shapes, dtype, device, gen) -> Case:
    """``ops.embeddings`` of ``tokens`` ids (id 0 the padding row), tables in ``dtype``."""
    ints = lambda high: torch.randint(0, high, (s.tokens,), generator=gen).to(device)  # noqa: E731
    inputs = {"ids": ints(s.vocab), "positions": ints(s.positions), "types": ints(2),
              "word": _randn(gen, s.vocab, s.hidden, dtype=dtype, device=device),
              "pos": _randn(gen, s.positions, s.hidden, dtype=dtype, device=device),
              "type_table": _randn(gen, 2, s.hidden, dtype=dtype, device=device),
              "weight": (1 + _randn(gen, s.hidden, dtype=torch.float32, device=device, scale=0.1)).to(dtype),
              "beta": _randn(gen, s.hidden, dtype=dtype, device=device)}

    def run(ids, positions, types, word, pos, type_table, weight, beta):
        return ops.embeddings(ids, None, positions, types, word, pos, type_table, weight, beta, 1e-12, padding_idx=0)

    return Case("embeddings", run, inputs)


CASES = (attention_case, residual_layernorm_case, linear_gelu_case, ffn_case, embeddings_case)


@contextlib.contextmanager
def backend(name: str):
    """``FASTBERT_BACKEND=name`` inside the block (the ops read it on every call)."""
    saved = os.environ.get("FASTBERT_BACKEND")
    os.environ["FASTBERT_BACKEND"] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("FASTBERT_BACKEND", None)
        else:
            os.environ["FASTBERT_BACKEND"] = saved


def forward_backward(case: Case, backend_name: str, seed: int) -> dict:
    """``{"out": output, "d<name>": gradient, ...}`` of one case on fresh leaf copies of its inputs, with
    an upstream gradient drawn from ``seed`` (the same for both backends)."""
    leaves = {k: v.detach().clone().requires_grad_(True) if torch.is_tensor(v) and v.is_floating_point() else v
              for k, v in case.inputs.items()}
    with backend(backend_name):
        out = case.run(**leaves)
        dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
        out.backward(dout)
    if out.is_cuda:
        torch.cuda.synchronize()
    grads = {f"d{k}": v.grad for k, v in leaves.items() if torch.is_tensor(v) and v.requires_grad}
    return {"out": out.detach(), **grads}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Max abs difference over ``max(1, max |reference|)``; inf when ``ours`` is not finite or missing."""
    if ours is None or not torch.isfinite(ours).all():
        return float("inf")
    if reference.numel() == 0:
        return 0.0
    scale = max(1.0, reference.double().abs().max().item())
    return (ours.double() - reference.double()).abs().max().item() / scale


def check_case(make_case, shapes: Shapes, dtype, device, seed: int = 0) -> dict:
    """One row: the op, dtype, the output's and the worst gradient's error, the tolerance, ``ok``, the
    seconds the Triton run took (compilation included) and any fallback-to-PyTorch warning it gave."""
    case = make_case(shapes, dtype, device, torch.Generator().manual_seed(seed))
    reference = forward_backward(case, "torch", seed)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = forward_backward(case, "triton", seed)
    seconds = time.perf_counter() - start
    errors = {name: relative_error(ours.get(name), ref) for name, ref in reference.items()}
    grads = {name: e for name, e in errors.items() if name != "out"}
    worst = max(grads, key=grads.get)
    row = {"op": case.op, "dtype": str(dtype)[6:], "out_err": errors["out"], "grad_err": grads[worst],
           "worst_grad": worst, "tolerance": TOLERANCE[dtype], "triton_s": seconds}
    row["ok"] = max(errors.values()) <= row["tolerance"]
    fallbacks = sorted({str(w.message) for w in caught if "using PyTorch" in str(w.message)})
    if fallbacks:  # the Triton backend ran PyTorch code for part of this op
        row["fallbacks"] = fallbacks
    return row


def run_smoke(shapes: Shapes, device, dtypes=DTYPES, on_row=None) -> list:
    """:func:`check_case` rows of every op and dtype; a case that raises is a failed row with its error.
    ``on_row(row)`` after each."""
    rows = []
    for dtype in dtypes:
        for make_case in CASES:
            try:
                row = check_case(make_case, shapes, dtype, device)
            except Exception as error:  # noqa: BLE001 - one broken op must not hide the others
                row = {"op": make_case.__name__.removesuffix("_case"), "dtype": str(dtype)[6:], "ok": False,
                       "error": f"{type(error).__name__}: {error}".splitlines()[0]}
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def markdown(rows: list) -> list[str]:
    """The smoke rows as a markdown table."""
    lines = ["| op | dtype | output error | worst gradient error | tolerance | Triton s | ok |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['dtype']} | {r['error']} | | | | no |")
            continue
        note = " (PyTorch fallback)" if r.get("fallbacks") else ""
        lines.append(f"| {r['op']} | {r['dtype']} | {r['out_err']:.2g} | {r['grad_err']:.2g} ({r['worst_grad']}) "
                     f"| {r['tolerance']:.0e} | {r['triton_s']:.2f} | {'yes' if r['ok'] else 'NO'}{note} |")
    return lines
