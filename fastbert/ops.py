"""The one seam between the model and the kernels.

Each fused op of the encoder is a ``torch.library`` custom op (opaque to ``torch.compile``, so
``fullgraph=True`` works) with its backward registered as a second custom op. Each call picks its
backend from ``FASTBERT_BACKEND``:

- ``auto`` (default): Triton on CUDA tensors, PyTorch elsewhere;
- ``triton``: always Triton (on the CPU this needs ``TRITON_INTERPRET=1`` set before triton loads);
- ``torch``: always the pure-PyTorch implementation in :mod:`fastbert.torch_ops`.

Triton implementations live in :mod:`fastbert.kernels` and register themselves with
:func:`register_triton`; an op without a Triton kernel yet runs its PyTorch implementation.

Dropout is never stored: each op takes ``dropout_p`` and an int64 ``seed`` tensor (drawn from
torch's generator by :func:`new_seed`), and backward regenerates the same mask from it.

While a graph is exported (:func:`fastbert.torch_ops.exporting`: ``torch.export``, both ``torch.onnx``
exporters, ``torch.jit.trace``) each op runs its PyTorch composite from :mod:`fastbert.torch_ops` instead of
the custom op, so the graph holds standard ATen ops only and runs wherever torch or onnxruntime does,
without fastbert; autograd differentiates the composite there.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Callable, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fastbert import encoder_stack, routing, torch_ops
from fastbert.torch_ops import exporting
from fastbert.validation import check_attention_inputs, check_embeddings_inputs

BACKENDS = ("auto", "triton", "torch")

# op name -> {"fwd": ..., "bwd": ..., optionally "inference_fwd": ...} of the Triton implementation.
_TRITON_IMPLS: dict[str, dict[str, Callable]] = {}
_warned_missing: set[str] = set()


def register_triton(op: str, **impls: Callable) -> None:
    """Register Triton implementations of ``op`` by direction (``fwd=``, ``bwd=``, ``inference_fwd=``),
    each with the signature of the ``torch_ops`` function ``<op>_<direction>``; a direction left out
    runs its PyTorch implementation."""
    _TRITON_IMPLS.setdefault(op, {}).update(impls)


def backend_name() -> str:
    """The validated value of ``FASTBERT_BACKEND`` (default ``auto``)."""
    name = os.environ.get("FASTBERT_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"FASTBERT_BACKEND={name!r} is not one of {BACKENDS}")
    return name


def resolve_backend(device: torch.device, dtype: torch.dtype = torch.float32, op: str = "attention") -> str:
    """``"triton"`` or ``"torch"``: the backend ``op`` runs with on ``device`` for ``dtype`` inputs
    (:func:`fastbert.routing.route`)."""
    return _route(op, device, dtype).backend


def _route(op: str, device: torch.device, dtype: torch.dtype, name: Optional[str] = None) -> routing.Route:
    name = backend_name() if name is None else name
    if device.type != "cuda" or name == "torch":
        return routing.route(op, None, dtype, name)
    index = device.index if device.index is not None else torch.cuda.current_device()
    capability, bf16 = _device_facts(index)
    return routing.route(op, capability, dtype, name, bf16)


@functools.lru_cache(maxsize=None)
def _device_facts(index: int) -> tuple:
    """``(capability, whether PyTorch runs bf16)`` of CUDA device ``index``, read once."""
    with torch.cuda.device(index):
        return torch.cuda.get_device_capability(index), torch.cuda.is_bf16_supported(including_emulation=True)


def _impl(op: str, direction: str, device: torch.device, dtype: torch.dtype = torch.float32) -> Callable:
    name = backend_name()
    if name == "torch" or (name == "auto" and device.type != "cuda"):  # routing.route's answer, sooner
        return getattr(torch_ops, f"{op}_{direction}")
    route = _route(op, device, dtype, name)
    if route.backend == "triton":
        if device.type != "cuda" and not interpreting():
            raise ValueError(f"FASTBERT_BACKEND=triton on {device.type} tensors needs the Triton interpreter: "
                             "set TRITON_INTERPRET=1 before triton is imported")
        _load_kernels()
        if direction in _TRITON_IMPLS.get(op, {}):
            return _TRITON_IMPLS[op][direction]
        if name == "triton" and op not in _warned_missing:
            _warned_missing.add(op)
            warnings.warn(f"fastbert: no Triton kernel for op {op!r} yet; using the PyTorch implementation")
    elif name == "triton":  # forced, but the kernels cannot take this call
        return torch_fallback(op, direction, route.reason)
    return getattr(torch_ops, f"{op}_{direction}")


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's interpreter (it must be set before triton loads)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def torch_fallback(op: str, direction: str, reason: str) -> Callable:
    """The PyTorch implementation of ``op`` for inputs a Triton kernel does not take, with one warning
    per ``(op, direction, reason)``."""
    warnings.warn(f"fastbert: the Triton {op} kernel does not take this call ({reason}); using PyTorch")
    return getattr(torch_ops, f"{op}_{direction}")


def _load_kernels() -> None:
    # Importing the package lets each kernel module call register_triton().
    import fastbert.kernels  # noqa: F401


def new_seed(device: torch.device) -> Tensor:
    """An int64 ``(1,)`` seed tensor drawn from torch's generator on ``device``."""
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)


def _dense_like(t: Tensor) -> Tensor:
    """A fake output shaped like ``t`` with the row-major strides the implementations return (``empty_like``
    would copy a transposed input's strides)."""
    return t.new_empty(t.shape)


def _autocast_inputs(*tensors: Optional[Tensor]) -> tuple:
    """Under autocast, the floating-point inputs of a GEMM op in the autocast dtype, as autocast casts
    ``F.linear``'s: custom ops are not autocast themselves, and their backward must see one dtype."""
    device = next(t for t in tensors if t is not None).device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def _grad_or_none(grad: Tensor, input: Optional[Tensor]) -> Optional[Tensor]:
    # Custom ops return an empty tensor where autograd expects None (an absent input).
    return None if input is None else grad


# ============================================================================= eager dispatch
# In eager mode each op calls its implementation directly, through an autograd.Function that reuses the
# op's autograd formula: the custom ops' dispatcher costs 15-35 us a call on the host, which at small
# batches is most of a layer's time. torch.compile and export see the custom ops.
def _eager() -> bool:
    return not torch.compiler.is_compiling()


def _eager_function(op: str, setup: Callable, grad: Callable) -> type:
    """An autograd.Function running ``op``'s forward implementation (chosen by its first tensor input's
    device and dtype) with ``setup(ctx, inputs, outputs)`` and ``grad(ctx, *grads)`` as its backward;
    every output but the first (of a tuple) is non-differentiable (statistics, saved pre-activations)."""

    def forward(ctx, *inputs):
        outputs = _call_impl(op, "fwd", inputs)
        setup(ctx, inputs, outputs)
        ctx.direct = True  # its backward calls the implementation directly too
        if isinstance(outputs, tuple):
            ctx.mark_non_differentiable(*outputs[1:])
        # The statistics' gradients arrive as None, not as zeros filled by autograd (a launch each).
        ctx.set_materialize_grads(False)
        return outputs

    def backward(ctx, *grads):
        if grads[0] is None:  # the differentiable output got no gradient: neither does any input
            return (None,) * len(ctx.needs_input_grad)
        return grad(ctx, *grads)

    return type(f"Eager_{op}", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})


# The custom ops' inputs that their implementations' forward takes (embeddings' padding indices are for
# backward).
_FORWARD_ARITY = {"embeddings": 12}


def _call_impl(op: str, direction: str, inputs: tuple):
    """The implementation of ``op``'s ``direction`` for inputs on the device and in the dtype of the first
    floating-point tensor among ``inputs``, called on them."""
    first = next(t for t in inputs if isinstance(t, Tensor) and t.is_floating_point())
    if direction != "bwd":
        inputs = inputs[:_FORWARD_ARITY.get(op)]
    return _impl(op, direction, first.device, first.dtype)(*inputs)


def _run(op: str, custom_op, eager_function: type, *inputs):
    """``op`` on ``inputs``: the custom op under torch.compile, else the implementation directly (through
    ``eager_function`` when autograd records this call)."""
    if not _eager():
        return custom_op(*inputs)
    if torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in inputs):
        return eager_function.apply(*inputs)
    return _call_impl(op, "fwd", inputs)


def _backward(ctx, op: str, custom_op, *inputs):
    """``op``'s backward from its autograd formula: the implementation directly after an eager forward, the
    custom op after the custom op's (what torch.compile, export and opcheck trace)."""
    if getattr(ctx, "direct", False):
        return _call_impl(op, "bwd", inputs)
    return custom_op(*inputs)


def _run_direct(op: str, direction: str, custom_op, *inputs):
    """``op``'s ``direction`` (``inference_fwd``) without autograd: the custom op while compiling, else the
    implementation directly."""
    if not _eager():
        return custom_op(*inputs)
    return _call_impl(op, direction, inputs)


# ============================================================================= attention
@torch.library.custom_op("fastbert::attention", mutates_args=())
def _attention(qkv: Tensor, cu_seqlens: Tensor, max_seqlen: int, dropout_p: float,
               seed: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    return _impl("attention", "fwd", qkv.device, qkv.dtype)(qkv, cu_seqlens, max_seqlen, dropout_p, seed)


@_attention.register_fake
def _(qkv, cu_seqlens, max_seqlen, dropout_p, seed):
    total, _, heads, dim = qkv.shape
    return qkv.new_empty(total, heads, dim), qkv.new_empty(heads, total, dtype=torch_ops.stats_dtype(qkv))


@torch.library.custom_op("fastbert::attention_backward", mutates_args=())
def _attention_backward(dout: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, cu_seqlens: Tensor,
                        max_seqlen: int, dropout_p: float, seed: Optional[Tensor]) -> Tensor:
    return _impl("attention", "bwd", qkv.device, qkv.dtype)(dout, qkv, out, lse, cu_seqlens, max_seqlen, dropout_p, seed)


@_attention_backward.register_fake
def _(dout, qkv, out, lse, cu_seqlens, max_seqlen, dropout_p, seed):
    return torch.empty_like(qkv)


def _attention_setup(ctx, inputs, output):
    qkv, cu_seqlens, max_seqlen, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse, cu_seqlens, seed)
    ctx.max_seqlen, ctx.dropout_p = max_seqlen, dropout_p


def _attention_grad(ctx, dout, dlse):
    qkv, out, lse, cu_seqlens, seed = ctx.saved_tensors
    dqkv = _backward(ctx, "attention", _attention_backward, dout.contiguous(), qkv, out, lse, cu_seqlens,
                         ctx.max_seqlen, ctx.dropout_p, seed)
    return dqkv, None, None, None, None


_attention.register_autograd(_attention_grad, setup_context=_attention_setup)
_EagerAttention = _eager_function("attention", _attention_setup, _attention_grad)


def attention(qkv: Tensor, cu_seqlens: Tensor, max_seqlen: int, dropout_p: float = 0.0,
              seed: Optional[Tensor] = None, check_values: bool = True) -> Tensor:
    """Bidirectional softmax attention over packed sequences, scale ``1/sqrt(head_dim)``.

    The Triton kernel takes fp16, bf16 and fp32 with head dims up to 128; float64 and larger head dims
    run the PyTorch implementation (one warning). The two backends draw different (equally
    distributed) dropout masks from a seed.

    Args:
        qkv: ``(total_tokens, 3, heads, head_dim)``, the fused QKV projection output (a view is fine).
        cu_seqlens: int32 ``(batch + 1,)``, sequence ``b`` is tokens ``[cu[b], cu[b+1])``.
        max_seqlen: an upper bound of the longest sequence.
        dropout_p: dropout on the attention probabilities; needs ``seed`` when > 0.
        check_values: also check ``cu_seqlens``' values (one host sync; skipped under ``torch.compile``
            and while exporting).
    Returns:
        ``(total_tokens, heads, head_dim)`` in ``qkv``'s dtype.
    """
    if qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"attention: qkv must be (total_tokens, 3, heads, head_dim), got shape {tuple(qkv.shape)}")
    # No host read while compiling, exporting or capturing a CUDA graph.
    export = exporting()
    capturing = qkv.is_cuda and torch.cuda.is_current_stream_capturing()
    check_attention_inputs(*qkv.unbind(1), cu_seqlens, max_seqlen, dropout_p, seed,
                           check_values and not torch.compiler.is_compiling() and not capturing and not export)
    if export:
        return torch_ops.attention_fwd(qkv, cu_seqlens, max_seqlen, dropout_p, seed)[0]
    return _run("attention", _attention, _EagerAttention, qkv, cu_seqlens, max_seqlen, dropout_p, seed)[0]


# ============================================================================= the q, k, v projection
@torch.library.custom_op("fastbert::qkv", mutates_args=())
def _qkv(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, bq: Optional[Tensor], bk: Optional[Tensor],
         bv: Optional[Tensor]) -> Tensor:
    return _impl("qkv", "fwd", x.device, x.dtype)(x, wq, wk, wv, bq, bk, bv)


@_qkv.register_fake
def _(x, wq, wk, wv, bq, bk, bv):
    return x.new_empty(x.shape[0], 3 * wq.shape[0])


@torch.library.custom_op("fastbert::qkv_backward", mutates_args=())
def _qkv_backward(dout: Tensor, x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, has_bias: bool,
                  weight_grads: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _impl("qkv", "bwd", x.device, x.dtype)(dout, x, wq, wk, wv, has_bias, weight_grads)


@_qkv_backward.register_fake
def _(dout, x, wq, wk, wv, has_bias, weight_grads):
    if not weight_grads:
        return _dense_like(x), wq.new_empty(0), wq.new_empty(0)
    rows = 3 * wq.shape[0]
    return _dense_like(x), wq.new_empty(rows, wq.shape[1]), wq.new_empty(rows if has_bias else 0)


def _qkv_setup(ctx, inputs, output):
    x, wq, wk, wv, bq, bk, bv = inputs
    ctx.save_for_backward(x, wq, wk, wv)
    ctx.has_bias = bq is not None


def _qkv_grad(ctx, dout):
    x, wq, wk, wv = ctx.saved_tensors
    weight_grads = any(ctx.needs_input_grad[1:])
    dx, dw, db = _backward(ctx, "qkv", _qkv_backward, dout.contiguous(), x, wq, wk, wv, ctx.has_bias, weight_grads)
    if not weight_grads:
        return dx, None, None, None, None, None, None
    dwq, dwk, dwv = dw.chunk(3)  # views of one GEMM's rows
    dbq, dbk, dbv = db.chunk(3) if ctx.has_bias else (None, None, None)
    return dx, dwq, dwk, dwv, dbq, dbk, dbv


_qkv.register_autograd(_qkv_grad, setup_context=_qkv_setup)
_EagerQkv = _eager_function("qkv", _qkv_setup, _qkv_grad)


def qkv(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, bq: Optional[Tensor] = None, bk: Optional[Tensor] = None,
        bv: Optional[Tensor] = None) -> Tensor:
    """The query, key and value projections in one GEMM, ``x @ [wq; wk; wv]^T + [bq; bk; bv]``, reading the
    three weights where they are (the Triton kernel; PyTorch's backend concatenates them). Backward keeps
    ``x`` and the weights themselves, no concatenated copy.

    Args:
        x: ``(..., hidden_in)``; wq, wk, wv: ``(hidden, hidden_in)``; bq, bk, bv: ``(hidden,)``, all or none.
    Returns:
        ``(..., 3 * hidden)`` in x's dtype: queries, then keys, then values.
    """
    weights = (wq, wk, wv)
    if any(w.dim() != 2 or w.shape != wq.shape for w in weights) or x.shape[-1] != wq.shape[1]:
        raise ValueError(f"qkv: wq, wk, wv must be three (hidden, {x.shape[-1]}) weights for x {tuple(x.shape)}, "
                         f"got {[tuple(w.shape) for w in weights]}")
    biases = (bq, bk, bv)
    if any(b is None for b in biases) != all(b is None for b in biases):
        raise ValueError("qkv: pass all three biases bq, bk, bv or none")
    if bq is not None and any(tuple(b.shape) != (wq.shape[0],) for b in biases):
        raise ValueError(f"qkv: bq, bk, bv must be ({wq.shape[0]},), got {[tuple(b.shape) for b in biases]}")
    inputs = _autocast_inputs(x, wq, wk, wv, bq, bk, bv)
    lead = x.shape[:-1]
    inputs = (inputs[0].reshape(-1, x.shape[-1]), *inputs[1:])
    if exporting():
        out = torch_ops.qkv_fwd(*inputs)
    elif torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        out = _run("qkv", _qkv, _EagerQkv, *inputs)
    else:
        out = _run_direct("qkv", "fwd", _qkv, *inputs)
    return out.view(*lead, 3 * wq.shape[0])


# ============================================================================= residual + dropout + LayerNorm
@torch.library.custom_op("fastbert::residual_layernorm", mutates_args=())
def _residual_layernorm(x: Tensor, bias: Optional[Tensor], residual: Tensor, weight: Tensor, beta: Tensor,
                        eps: float, dropout_p: float, seed: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    return _impl("residual_layernorm", "fwd", x.device, x.dtype)(x, bias, residual, weight, beta, eps, dropout_p, seed)


@_residual_layernorm.register_fake
def _(x, bias, residual, weight, beta, eps, dropout_p, seed):
    rows = x.shape[0]
    stats = x.new_empty(rows, dtype=torch_ops.stats_dtype(x))
    return _dense_like(x), stats, torch.empty_like(stats)


@torch.library.custom_op("fastbert::residual_layernorm_backward", mutates_args=())
def _residual_layernorm_backward(
    dy: Tensor, x: Tensor, bias: Optional[Tensor], residual: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor,
    dropout_p: float, seed: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _impl("residual_layernorm", "bwd", x.device, x.dtype)(dy, x, bias, residual, weight, mean, rstd, dropout_p, seed)


@_residual_layernorm_backward.register_fake
def _(dy, x, bias, residual, weight, mean, rstd, dropout_p, seed):
    dbias = x.new_empty(0) if bias is None else _dense_like(bias)
    return (_dense_like(x), dbias, _dense_like(residual), _dense_like(weight), _dense_like(weight))


def _residual_layernorm_setup(ctx, inputs, output):
    x, bias, residual, weight, beta, eps, dropout_p, seed = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, bias, residual, weight, mean, rstd, seed)
    ctx.dropout_p = dropout_p


def _residual_layernorm_grad(ctx, dy, dmean, drstd):
    x, bias, residual, weight, mean, rstd, seed = ctx.saved_tensors
    dx, dbias, dres, dweight, dbeta = _backward(
        ctx, "residual_layernorm", _residual_layernorm_backward, dy.contiguous(), x, bias, residual, weight, mean,
        rstd, ctx.dropout_p, seed)
    return dx, _grad_or_none(dbias, bias), dres, dweight, dbeta, None, None, None


_residual_layernorm.register_autograd(_residual_layernorm_grad, setup_context=_residual_layernorm_setup)
_EagerResidualLayerNorm = _eager_function("residual_layernorm", _residual_layernorm_setup,
                                          _residual_layernorm_grad)


def residual_layernorm(x: Tensor, bias: Optional[Tensor], residual: Tensor, weight: Tensor, beta: Tensor,
                       eps: float, dropout_p: float = 0.0, seed: Optional[Tensor] = None) -> Tensor:
    """``LayerNorm(dropout(x + bias) + residual)`` over the last dim, fp32 statistics (float64 for float64 x).

    Args:
        x, residual: ``(..., hidden)``; ``bias``, ``weight``, ``beta``: ``(hidden,)``; ``bias`` may be None.
    Returns:
        ``(..., hidden)`` in ``x``'s dtype.
    """
    shape = x.shape
    hidden = shape[-1]
    inputs = (x.reshape(-1, hidden), bias, residual.reshape(-1, hidden), weight, beta, eps, dropout_p, seed)
    if exporting():
        y, _, _ = torch_ops.residual_layernorm_fwd(*inputs)
    else:
        y, _, _ = _run("residual_layernorm", _residual_layernorm, _EagerResidualLayerNorm, *inputs)
    return y.view(shape)


# ============================================================================= linear + bias + GELU
@torch.library.custom_op("fastbert::linear_gelu", mutates_args=())
def _linear_gelu(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    return _impl("linear_gelu", "fwd", x.device, x.dtype)(x, weight, bias)


@_linear_gelu.register_fake
def _(x, weight, bias):
    out = x.new_empty(x.shape[0], weight.shape[0])
    return out, torch.empty_like(out)


@torch.library.custom_op("fastbert::linear_gelu_backward", mutates_args=())
def _linear_gelu_backward(dy: Tensor, x: Tensor, weight: Tensor, z: Tensor,
                          has_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _impl("linear_gelu", "bwd", x.device, x.dtype)(dy, x, weight, z, has_bias)


@_linear_gelu_backward.register_fake
def _(dy, x, weight, z, has_bias):
    dbias = weight.new_empty(weight.shape[0] if has_bias else 0)
    return _dense_like(x), _dense_like(weight), dbias


def _linear_gelu_setup(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.has_bias = bias is not None


def _linear_gelu_grad(ctx, dy, dz):
    x, weight, z = ctx.saved_tensors
    dx, dweight, dbias = _backward(ctx, "linear_gelu", _linear_gelu_backward, dy.contiguous(), x, weight, z,
                                       ctx.has_bias)
    return dx, dweight, dbias if ctx.has_bias else None


_linear_gelu.register_autograd(_linear_gelu_grad, setup_context=_linear_gelu_setup)
_EagerLinearGelu = _eager_function("linear_gelu", _linear_gelu_setup, _linear_gelu_grad)


@torch.library.custom_op("fastbert::linear_gelu_inference", mutates_args=())
def _linear_gelu_inference(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    return _impl("linear_gelu", "inference_fwd", x.device, x.dtype)(x, weight, bias)


@_linear_gelu_inference.register_fake
def _(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0])


def linear_gelu(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``gelu(x @ weight.T + bias)`` with BERT's exact erf GELU.

    When no gradient is needed the pre-activation is not kept (GELU in place, one buffer).

    Args:
        x: ``(..., in_features)``; weight: ``(out_features, in_features)``; bias: ``(out_features,)`` or None.
    Returns:
        ``(..., out_features)`` in ``x``'s dtype.
    """
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear_gelu: weight must be (out_features, {x.shape[-1]}) for x {tuple(x.shape)}, "
                         f"got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear_gelu: bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
    x, weight, bias = _autocast_inputs(x, weight, bias)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias))
    if exporting():
        y = torch_ops.linear_gelu_fwd(x2, weight, bias)[0]
    elif needs_grad:
        y = _run("linear_gelu", _linear_gelu, _EagerLinearGelu, x2, weight, bias)[0]
    else:
        y = _run_direct("linear_gelu", "inference_fwd", _linear_gelu_inference, x2, weight, bias)
    return y.view(*lead, weight.shape[0])


# ============================================================================= feed-forward block
@torch.library.custom_op("fastbert::ffn", mutates_args=())
def _ffn(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor) -> tuple[Tensor, Tensor]:
    return _impl("ffn", "fwd", x.device, x.dtype)(x, w1, b1, w2)


@_ffn.register_fake
def _(x, w1, b1, w2):
    return x.new_empty(x.shape[0], w2.shape[0]), x.new_empty(x.shape[0], w1.shape[0])


@torch.library.custom_op("fastbert::ffn_backward", mutates_args=())
def _ffn_backward(dout: Tensor, x: Tensor, w1: Tensor, w2: Tensor, z: Tensor, has_bias: bool,
                  weight_grads: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _impl("ffn", "bwd", x.device, x.dtype)(dout, x, w1, w2, z, has_bias, weight_grads)


@_ffn_backward.register_fake
def _(dout, x, w1, w2, z, has_bias, weight_grads):
    if not weight_grads:
        return _dense_like(x), w1.new_empty(0), w1.new_empty(0), w2.new_empty(0)
    db1 = w1.new_empty(w1.shape[0] if has_bias else 0)
    return _dense_like(x), _dense_like(w1), db1, _dense_like(w2)


def _ffn_setup(ctx, inputs, output):
    x, w1, b1, w2 = inputs
    ctx.save_for_backward(x, w1, w2, output[1])
    ctx.has_bias = b1 is not None


def _ffn_grad(ctx, dout, dz):
    x, w1, w2, z = ctx.saved_tensors
    # Frozen FFN weights (e.g. LoRA on attention only) skip the two weight-gradient GEMMs.
    weight_grads = any(ctx.needs_input_grad[1:4])
    dx, dw1, db1, dw2 = _backward(ctx, "ffn", _ffn_backward, dout.contiguous(), x, w1, w2, z, ctx.has_bias,
                                      weight_grads)
    if not weight_grads:
        return dx, None, None, None
    return dx, dw1, db1 if ctx.has_bias else None, dw2


_ffn.register_autograd(_ffn_grad, setup_context=_ffn_setup)
_EagerFfn = _eager_function("ffn", _ffn_setup, _ffn_grad)


@torch.library.custom_op("fastbert::ffn_inference", mutates_args=())
def _ffn_inference(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor) -> Tensor:
    return _impl("ffn", "inference_fwd", x.device, x.dtype)(x, w1, b1, w2)


@_ffn_inference.register_fake
def _(x, w1, b1, w2):
    return x.new_empty(x.shape[0], w2.shape[0])


def ffn(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor) -> Tensor:
    """BERT's feed-forward block without its last bias: ``gelu(x @ w1.T + b1) @ w2.T``, exact erf GELU.

    For backward it keeps only the pre-activation ``z`` (``tokens x intermediate``) and recomputes the
    GELU, where ``Linear -> GELU -> Linear`` keeps both ``z`` and ``gelu(z)``. Without a gradient it
    keeps nothing.

    Args:
        x: ``(..., hidden)``; w1: ``(intermediate, hidden)``; b1: ``(intermediate,)`` or None;
        w2: ``(hidden_out, intermediate)``; all one dtype.
    Returns:
        ``(..., hidden_out)`` in x's dtype.
    """
    if x.shape[-1] != w1.shape[-1] or w1.dim() != 2 or w2.dim() != 2 or w2.shape[-1] != w1.shape[0]:
        raise ValueError(f"ffn: shapes do not chain: x {tuple(x.shape)}, w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}"
                         " (need x (..., h), w1 (i, h), w2 (o, i))")
    if b1 is not None and tuple(b1.shape) != (w1.shape[0],):
        raise ValueError(f"ffn: b1 must be ({w1.shape[0]},), got {tuple(b1.shape)}")
    x, w1, b1, w2 = _autocast_inputs(x, w1, b1, w2)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w1, b1, w2))
    if exporting():
        out = torch_ops.ffn_fwd(x2, w1, b1, w2)[0]
    elif needs_grad:
        out = _run("ffn", _ffn, _EagerFfn, x2, w1, b1, w2)[0]
    else:
        out = _run_direct("ffn", "inference_fwd", _ffn_inference, x2, w1, b1, w2)
    return out.view(*lead, w2.shape[0])


# ============================================================================= embeddings
@torch.library.custom_op("fastbert::embeddings", mutates_args=())
def _embeddings(input_ids: Optional[Tensor], inputs_embeds: Optional[Tensor], position_ids: Tensor,
                token_type_ids: Tensor, word: Tensor, pos: Tensor, types: Tensor, weight: Tensor, beta: Tensor,
                eps: float, dropout_p: float, seed: Optional[Tensor],
                padding_idx: int, position_padding_idx: int) -> tuple[Tensor, Tensor, Tensor]:
    return _impl("embeddings", "fwd", word.device, word.dtype)(input_ids, inputs_embeds, position_ids, token_type_ids, word,
                                                  pos, types, weight, beta, eps, dropout_p, seed)


@_embeddings.register_fake
def _(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, beta, eps, dropout_p,
      seed, padding_idx, position_padding_idx):
    tokens = position_ids.shape[0]
    stats = word.new_empty(tokens, dtype=torch_ops.stats_dtype(word))
    return word.new_empty(tokens, word.shape[1]), stats, torch.empty_like(stats)


@torch.library.custom_op("fastbert::embeddings_backward", mutates_args=())
def _embeddings_backward(
    dy: Tensor, input_ids: Optional[Tensor], inputs_embeds: Optional[Tensor], position_ids: Tensor,
    token_type_ids: Tensor, word: Tensor, pos: Tensor, types: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor,
    dropout_p: float, seed: Optional[Tensor], padding_idx: int, position_padding_idx: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _impl("embeddings", "bwd", word.device, word.dtype)(dy, input_ids, inputs_embeds, position_ids, token_type_ids,
                                                  word, pos, types, weight, mean, rstd, dropout_p, seed,
                                                  padding_idx, position_padding_idx)


@_embeddings_backward.register_fake
def _(dy, input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, mean, rstd,
      dropout_p, seed, padding_idx, position_padding_idx):
    dembeds = word.new_empty(0) if inputs_embeds is None else _dense_like(inputs_embeds)
    dword = _dense_like(word) if inputs_embeds is None else word.new_empty(0)
    return dembeds, dword, _dense_like(pos), _dense_like(types), _dense_like(weight), _dense_like(weight)


def _embeddings_setup(ctx, inputs, output):
    (input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, beta, eps, dropout_p,
     seed, padding_idx, position_padding_idx) = inputs
    ctx.save_for_backward(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight,
                          output[1], output[2], seed)
    ctx.dropout_p = dropout_p
    ctx.padding_idx, ctx.position_padding_idx = padding_idx, position_padding_idx


def _embeddings_grad(ctx, dy, dmean, drstd):
    (input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, mean, rstd,
     seed) = ctx.saved_tensors
    dembeds, dword, dpos, dtypes, dweight, dbeta = _backward(
        ctx, "embeddings", _embeddings_backward, dy.contiguous(), input_ids, inputs_embeds, position_ids,
        token_type_ids, word, pos, types, weight, mean, rstd, ctx.dropout_p, seed, ctx.padding_idx,
        ctx.position_padding_idx)
    return (None, _grad_or_none(dembeds, inputs_embeds), None, None, _grad_or_none(dword, input_ids), dpos,
            dtypes, dweight, dbeta, None, None, None, None, None)


_embeddings.register_autograd(_embeddings_grad, setup_context=_embeddings_setup)
_EagerEmbeddings = _eager_function("embeddings", _embeddings_setup, _embeddings_grad)


def embeddings(input_ids: Optional[Tensor], inputs_embeds: Optional[Tensor], position_ids: Tensor,
               token_type_ids: Tensor, word: Tensor, pos: Tensor, types: Tensor, weight: Tensor, beta: Tensor,
               eps: float, dropout_p: float = 0.0, seed: Optional[Tensor] = None, padding_idx: int = -1,
               position_padding_idx: int = -1, check_values: bool = True) -> Tensor:
    """``dropout(LayerNorm(word[input_ids] + pos[position_ids] + types[token_type_ids]))``.

    Args:
        input_ids, position_ids, token_type_ids: int64 ``(tokens,)``; ``input_ids`` may be None when
            ``inputs_embeds`` ``(tokens, hidden)`` is given instead.
        word, pos, types: the ``(rows, hidden)`` embedding tables; weight, beta: LayerNorm ``(hidden,)``.
        padding_idx: the word row that gets no gradient (as in ``nn.Embedding``), -1 for none.
        position_padding_idx: the same for the position table (RoBERTa's position embeddings have one).
        check_values: also check that every id indexes its table (one host sync; skipped under
            ``torch.compile``, export and CUDA-graph capture, where the Triton kernel writes NaN rows for bad
            ids).
    Returns:
        ``(tokens, hidden)`` in the tables' dtype.
    """
    export = exporting()
    capturing = word.is_cuda and torch.cuda.is_current_stream_capturing()
    check_embeddings_inputs(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, weight, beta,
                            dropout_p, seed, check_values and not torch.compiler.is_compiling() and not capturing
                            and not export)
    if export:
        return torch_ops.embeddings_fwd(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types,
                                        weight, beta, eps, dropout_p, seed)[0]
    return _run("embeddings", _embeddings, _EagerEmbeddings, input_ids, inputs_embeds, position_ids,
                token_type_ids, word, pos, types, weight, beta, eps, dropout_p, seed, padding_idx,
                position_padding_idx)[0]


# ============================================================================= the encoder stack in inference
ENCODER_LAYER_TENSORS = torch_ops.ENCODER_LAYER_TENSORS


def _check_stack_arguments(name: str, hidden: Tensor, weights: list, heads: int) -> None:
    if len(weights) % ENCODER_LAYER_TENSORS:
        raise ValueError(f"{name}: weights must hold {ENCODER_LAYER_TENSORS} tensors a layer, got {len(weights)}")
    if hidden.dim() != 2 or hidden.shape[1] % heads:
        raise ValueError(f"{name}: hidden must be (tokens, hidden) with hidden a multiple of heads={heads}, "
                         f"got {tuple(hidden.shape)}")


def encoder_inference(hidden: Tensor, cu_seqlens: Tensor, max_seqlen: int, weights: list, heads: int,
                      eps: float) -> Tensor:
    """Every layer of a post-LayerNorm BERT encoder on packed tokens, in eager inference: no dropout, no
    autograd, one Python call for the stack instead of a dozen module and op calls per layer.

    The backend is the attention op's for hidden's device and dtype: PyTorch runs each layer as its fused
    encoder layer (:func:`fastbert.torch_ops.encoder_inference_fwd`); Triton runs the same kernels as the
    per-op path, layer by layer, called directly. Not for torch.compile or export, which see the per-op
    path (the model does not call this there).

    Args:
        hidden: ``(tokens, hidden)``; cu_seqlens: int32 ``(batch + 1,)``; max_seqlen: the longest sequence.
        weights: ``ENCODER_LAYER_TENSORS`` tensors a layer, in :data:`fastbert.torch_ops.ENCODER_LAYER_TENSORS`'
            order, every one in hidden's dtype on its device.
        heads: attention heads (dividing hidden); eps: the LayerNorms' epsilon.
    Returns:
        ``(tokens, hidden)`` in hidden's dtype.
    """
    _check_stack_arguments("encoder_inference", hidden, weights, heads)
    device, dtype = hidden.device, hidden.dtype
    attention_impl = _impl("attention", "fwd", device, dtype)
    if attention_impl is torch_ops.attention_fwd:
        return torch_ops.encoder_inference_fwd(hidden, cu_seqlens, max_seqlen, weights, heads, eps)
    return torch_ops.layered_encoder_inference(
        hidden, cu_seqlens, max_seqlen, weights, heads, eps, _impl("qkv", "fwd", device, dtype), attention_impl,
        _impl("residual_layernorm", "fwd", device, dtype), _impl("ffn", "inference_fwd", device, dtype))


# ============================================================================= the encoder stack in training
def _implementations(device: torch.device, dtype: torch.dtype) -> encoder_stack.Implementations:
    return encoder_stack.Implementations(
        *(_impl(op, direction, device, dtype) for op in ("qkv", "attention", "residual_layernorm", "ffn")
          for direction in ("fwd", "bwd")))


class _EncoderLayerTraining(torch.autograd.Function):
    """One layer as one autograd node: the per-op path's implementations and saved tensors, without a node,
    a module call or a dispatcher pass per op."""

    @staticmethod
    def forward(ctx, hidden, cu_seqlens, max_seqlen, heads, eps, impls, dropout, seeds, *weights):
        out, saved = encoder_stack.layer_forward(impls, hidden, cu_seqlens, max_seqlen, weights, heads, eps,
                                                 dropout, seeds)
        ctx.save_for_backward(cu_seqlens, *weights, *saved)
        ctx.impls, ctx.max_seqlen, ctx.dropout, ctx.seeds = impls, max_seqlen, dropout, seeds
        return out

    @staticmethod
    @once_differentiable  # a hand-written backward: a second derivative raises instead of coming out wrong
    def backward(ctx, grad):
        cu_seqlens, *tensors = ctx.saved_tensors
        weights, saved = tensors[:ENCODER_LAYER_TENSORS], encoder_stack.LayerSaved(*tensors[ENCODER_LAYER_TENSORS:])
        d_hidden, d_weights = encoder_stack.layer_backward(ctx.impls, grad.contiguous(), saved, cu_seqlens,
                                                           ctx.max_seqlen, weights, ctx.dropout, ctx.seeds,
                                                           ctx.needs_input_grad[8:])
        return (d_hidden, None, None, None, None, None, None, None, *d_weights)


def encoder_training(hidden: Tensor, cu_seqlens: Tensor, max_seqlen: int, weights: list, heads: int, eps: float,
                     dropout: list, seeds: list) -> Tensor:
    """Every layer of a post-LayerNorm BERT encoder on packed tokens, in eager training: the calls and the
    numbers of the per-op path (dropout included), with one autograd node a layer instead of six, and one
    Python call for the stack instead of a dozen module and op calls a layer. A layer's saved tensors are
    freed, and its weights' gradients are ready, as soon as its backward is done, as on the per-op path. Not for torch.compile or
    export, which see the per-op path (the model does not call this there).

    Args:
        hidden: ``(tokens, hidden)``; cu_seqlens: int32 ``(batch + 1,)``; max_seqlen: the longest sequence.
        weights: ``ENCODER_LAYER_TENSORS`` tensors a layer as :func:`encoder_inference`'s, in hidden's dtype.
        heads: attention heads; eps: the LayerNorms' epsilon.
        dropout: 3 probabilities a layer (attention probabilities, attention output, feed-forward output);
        seeds: the matching int64 ``(1,)`` seed tensors, None where the probability is 0.
    Returns:
        ``(tokens, hidden)`` in hidden's dtype.
    """
    _check_stack_arguments("encoder_training", hidden, weights, heads)
    layers = len(weights) // ENCODER_LAYER_TENSORS
    sites = encoder_stack.SITES_PER_LAYER * layers
    if len(dropout) != sites or len(seeds) != sites:
        raise ValueError(f"encoder_training: dropout and seeds must hold {sites} entries ({layers} layers x "
                         f"{encoder_stack.SITES_PER_LAYER} sites), got {len(dropout)} and {len(seeds)}")
    if any(p > 0 and s is None for p, s in zip(dropout, seeds)):
        raise ValueError("encoder_training: every site with a dropout probability above 0 needs a seed")
    impls = _implementations(hidden.device, hidden.dtype)
    sites_per_layer = encoder_stack.SITES_PER_LAYER
    for i in range(layers):
        sites = slice(i * sites_per_layer, (i + 1) * sites_per_layer)
        hidden = _EncoderLayerTraining.apply(
            hidden, cu_seqlens, max_seqlen, heads, eps, impls, dropout[sites], seeds[sites],
            *weights[i * ENCODER_LAYER_TENSORS:(i + 1) * ENCODER_LAYER_TENSORS])
    return hidden
