"""An encoder layer in training as two functions over one backend's op implementations: a forward that
keeps what each op's backward needs, and a backward that runs the ops' backward implementations in reverse.

These are the calls the per-op module path makes (the same implementations, the same arguments, the same
dropout seeds, so the same masks and outputs) without a module call or an autograd node per op: each layer
is one node (:func:`fastbert.ops.encoder_training`), so its saved tensors are freed, and its weights'
gradients are ready (for DDP's bucketed all-reduce), as soon as its backward is done. What is kept for
backward is what the per-op path keeps; nothing more.
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


def layer_forward(impls: Implementations, hidden: Tensor, cu_seqlens: Tensor, max_seqlen: int, weights,
                  heads: int, eps: float, dropout, seeds) -> tuple[Tensor, LayerSaved]:
    """One layer's forward on packed ``hidden (tokens, width)`` with its ``ENCODER_LAYER_TENSORS`` weights;
    ``dropout``/``seeds``: its three sites' probabilities and seeds (None where the probability is 0).
    Returns the layer's output and what its backward reads."""
    wq, bq, wk, bk, wv, bv, wo, bo, ln1_w, ln1_b, w1, b1, w2, b2, ln2_w, ln2_b = weights
    rows, width = hidden.shape
    qkv = impls.qkv_fwd(hidden, wq, wk, wv, bq, bk, bv).view(rows, 3, heads, width // heads)
    context, lse = impls.attention_fwd(qkv, cu_seqlens, max_seqlen, dropout[0], seeds[0])
    projected = F.linear(context.reshape(rows, width), wo)
    attended, mean1, rstd1 = impls.layernorm_fwd(projected, bo, hidden, ln1_w, ln1_b, eps, dropout[1], seeds[1])
    ffn_out, z = impls.ffn_fwd(attended, w1, b1, w2)
    out, mean2, rstd2 = impls.layernorm_fwd(ffn_out, b2, attended, ln2_w, ln2_b, eps, dropout[2], seeds[2])
    return out, LayerSaved(hidden, qkv, context, lse, projected, attended, mean1, rstd1, z, ffn_out, mean2, rstd2)


def layer_backward(impls: Implementations, grad: Tensor, s: LayerSaved, cu_seqlens: Tensor, max_seqlen: int,
                   weights, dropout, seeds, wanted) -> tuple[Tensor, list]:
    """The gradients of :func:`layer_forward` from ``grad (tokens, width)`` of its output: the input's and
    the weights' (None where ``wanted[j]`` is false for weight ``j``)."""
    wq, bq, wk, bk, wv, bv, wo, bo, ln1_w, ln1_b, w1, b1, w2, b2, ln2_w, ln2_b = weights
    rows, width = grad.shape
    d_ffn, d_b2, d_attended, d_ln2_w, d_ln2_b = impls.layernorm_bwd(
        grad, s.ffn_out, b2, s.attended, ln2_w, s.mean2, s.rstd2, dropout[2], seeds[2])
    ffn_weight_grads = any(wanted[10:13])
    # The residual's gradient joins the FFN's input gradient inside its GEMM (one launch, not two).
    d_attended, d_w1, d_b1, d_w2 = impls.ffn_bwd(d_ffn, s.attended, w1, w2, s.z, True, ffn_weight_grads,
                                                 d_attended)
    d_projected, d_bo, d_hidden, d_ln1_w, d_ln1_b = impls.layernorm_bwd(
        d_attended, s.projected, bo, s.hidden, ln1_w, s.mean1, s.rstd1, dropout[1], seeds[1])
    d_context = d_projected @ wo
    d_wo = d_projected.t() @ s.context.reshape(rows, width) if wanted[6] else None
    d_qkv = impls.attention_bwd(d_context.view(s.context.shape), s.qkv, s.context, s.lse, cu_seqlens, max_seqlen,
                                dropout[0], seeds[0])
    qkv_weight_grads = any(wanted[0:6])
    # Likewise the residual's gradient joins qkv's input gradient.
    grad, d_w, d_b = impls.qkv_bwd(d_qkv.reshape(rows, 3 * width), s.hidden, wq, wk, wv, True, qkv_weight_grads,
                                   d_hidden)
    d_wq, d_wk, d_wv = d_w.chunk(3) if qkv_weight_grads else (None, None, None)
    d_bq, d_bk, d_bv = d_b.chunk(3) if qkv_weight_grads else (None, None, None)
    if not ffn_weight_grads:
        d_w1 = d_b1 = d_w2 = None
    grads = (d_wq, d_bq, d_wk, d_bk, d_wv, d_bv, d_wo, d_bo, d_ln1_w, d_ln1_b, d_w1, d_b1, d_w2, d_b2, d_ln2_w,
             d_ln2_b)
    return grad, [g if want else None for g, want in zip(grads, wanted)]
