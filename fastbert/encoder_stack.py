"""The encoder's layers in training as two loops over one backend's op implementations: a forward that
keeps what each op's backward needs, and a backward that runs the ops' backward implementations in reverse.

These are the calls the per-op module path makes (the same implementations, the same arguments, the same
dropout seeds, so the same numbers bit for bit) without a module call or an autograd node per op: the
whole stack is one node (:func:`fastbert.ops.encoder_training`). What is kept for backward is what the
per-op path keeps; nothing more.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch.nn.functional as F
from torch import Tensor

from fastbert.torch_ops import ENCODER_LAYER_TENSORS

# What one site of a layer draws its dropout with: attention probabilities, then the two residual sums.
SITES_PER_LAYER = 3


class Implementations(NamedTuple):
    """One backend's forward and backward implementations of the ops a layer is made of, with the
    signatures of :mod:`fastbert.torch_ops`' ``<op>_fwd``/``<op>_bwd``."""

    qkv_fwd: Callable
    qkv_bwd: Callable
    attention_fwd: Callable
    attention_bwd: Callable
    layernorm_fwd: Callable
    layernorm_bwd: Callable
    ffn_fwd: Callable
    ffn_bwd: Callable


class LayerSaved(NamedTuple):
    """What a layer's backward reads: its input, the projections, attention's output and log-sum-exp,
    the attention output's GEMM result, both LayerNorms' statistics, the FFN's pre-activation and output."""

    hidden: Tensor
    qkv: Tensor
    context: Tensor
    lse: Tensor
    projected: Tensor
    attended: Tensor
    mean1: Tensor
    rstd1: Tensor
    z: Tensor
    ffn_out: Tensor
    mean2: Tensor
    rstd2: Tensor


def layer_tensors(weights, layer: int) -> tuple:
    """Layer ``layer``'s ``ENCODER_LAYER_TENSORS`` tensors out of the stack's flat list."""
    return tuple(weights[layer * ENCODER_LAYER_TENSORS:(layer + 1) * ENCODER_LAYER_TENSORS])


def training_forward(impls: Implementations, hidden: Tensor, cu_seqlens: Tensor, max_seqlen: int, weights,
                     heads: int, eps: float, dropout: list, seeds: list) -> tuple[Tensor, list]:
    """Every layer's forward on packed ``hidden (tokens, width)``; returns the last hidden state and one
    :class:`LayerSaved` a layer. ``dropout[3 * i + s]`` / ``seeds[3 * i + s]`` are layer ``i``'s site ``s``
    probability and seed (None when the probability is 0)."""
    rows, width = hidden.shape
    saved = []
    for i in range(len(weights) // ENCODER_LAYER_TENSORS):
        wq, bq, wk, bk, wv, bv, wo, bo, ln1_w, ln1_b, w1, b1, w2, b2, ln2_w, ln2_b = layer_tensors(weights, i)
        site = SITES_PER_LAYER * i
        qkv = impls.qkv_fwd(hidden, wq, wk, wv, bq, bk, bv).view(rows, 3, heads, width // heads)
        context, lse = impls.attention_fwd(qkv, cu_seqlens, max_seqlen, dropout[site], seeds[site])
        projected = F.linear(context.reshape(rows, width), wo)
        attended, mean1, rstd1 = impls.layernorm_fwd(projected, bo, hidden, ln1_w, ln1_b, eps, dropout[site + 1],
                                                     seeds[site + 1])
        ffn_out, z = impls.ffn_fwd(attended, w1, b1, w2)
        out, mean2, rstd2 = impls.layernorm_fwd(ffn_out, b2, attended, ln2_w, ln2_b, eps, dropout[site + 2],
                                                seeds[site + 2])
        saved.append(LayerSaved(hidden, qkv, context, lse, projected, attended, mean1, rstd1, z, ffn_out,
                                mean2, rstd2))
        hidden = out
    return hidden, saved


def training_backward(impls: Implementations, grad: Tensor, saved: list, cu_seqlens: Tensor, max_seqlen: int,
                      weights, dropout: list, seeds: list, weight_grads: list) -> tuple[Tensor, list]:
    """The gradients of :func:`training_forward` from ``grad (tokens, width)`` of its output: the input's
    gradient and a flat list of the weights' (None where ``weight_grads[j]`` is false for weight ``j``)."""
    grads: list[Optional[Tensor]] = [None] * len(weights)
    for i in reversed(range(len(saved))):
        s = saved[i]
        wq, bq, wk, bk, wv, bv, wo, bo, ln1_w, ln1_b, w1, b1, w2, b2, ln2_w, ln2_b = layer_tensors(weights, i)
        wanted = weight_grads[i * ENCODER_LAYER_TENSORS:(i + 1) * ENCODER_LAYER_TENSORS]
        site = SITES_PER_LAYER * i
        rows, width = grad.shape
        d_ffn, d_b2, d_attended, d_ln2_w, d_ln2_b = impls.layernorm_bwd(
            grad, s.ffn_out, b2, s.attended, ln2_w, s.mean2, s.rstd2, dropout[site + 2], seeds[site + 2])
        ffn_weight_grads = any(wanted[10:13])
        # The residual's gradient joins the FFN's input gradient inside its GEMM (one launch, not two).
        d_attended, d_w1, d_b1, d_w2 = impls.ffn_bwd(d_ffn, s.attended, w1, w2, s.z, True, ffn_weight_grads,
                                                     d_attended)
        d_projected, d_bo, d_hidden, d_ln1_w, d_ln1_b = impls.layernorm_bwd(
            d_attended, s.projected, bo, s.hidden, ln1_w, s.mean1, s.rstd1, dropout[site + 1], seeds[site + 1])
        d_context = d_projected @ wo
        d_wo = d_projected.t() @ s.context.reshape(rows, width) if wanted[6] else None
        d_qkv = impls.attention_bwd(d_context.view(s.context.shape), s.qkv, s.context, s.lse, cu_seqlens,
                                    max_seqlen, dropout[site], seeds[site])
        qkv_weight_grads = any(wanted[0:6])
        grad, d_w, d_b = impls.qkv_bwd(d_qkv.reshape(rows, 3 * width), s.hidden, wq, wk, wv, True,
                                       qkv_weight_grads, d_hidden)
        d_wq, d_wk, d_wv = d_w.chunk(3) if qkv_weight_grads else (None, None, None)
        d_bq, d_bk, d_bv = d_b.chunk(3) if qkv_weight_grads else (None, None, None)
        if not ffn_weight_grads:
            d_w1 = d_b1 = d_w2 = None
        layer_grads = (d_wq, d_bq, d_wk, d_bk, d_wv, d_bv, d_wo, d_bo, d_ln1_w, d_ln1_b, d_w1, d_b1, d_w2, d_b2,
                       d_ln2_w, d_ln2_b)
        start = i * ENCODER_LAYER_TENSORS
        grads[start:start + ENCODER_LAYER_TENSORS] = [g if want else None for g, want in zip(layer_grads, wanted)]
    return grad, grads
