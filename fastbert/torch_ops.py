"""The pure-PyTorch backend of the fused ops in :mod:`fastbert.ops`.

Each op has an explicit forward and backward with the same contract as its Triton kernel: dropout
masks are regenerated from a seed (never stored), LayerNorm statistics are fp32, and attention saves
only the fp32 log-sum-exp per row (float64 inputs keep float64 statistics, :func:`stats_dtype`: their
gradients are float64-accurate, as transformers' are). These functions run without autograd; :mod:`fastbert.ops` wires
them into ``torch.library`` custom ops.

Attention works on packed tokens (``cu_seqlens``); this backend scatters them into a padded layout
internally, which costs nothing on the matmul-bound CPU path and keeps the math in a few batched
matmuls: ``(batch, heads, max_seqlen, head_dim)`` for PyTorch's fused CPU attention (no dropout), and
head-major ``(heads * batch, max_seqlen, head_dim)`` batched matrices otherwise (one copy of q, k, v).
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch import Tensor


def _NO_GRAD(like: Tensor) -> Tensor:
    """Stand-in for "no gradient" in a custom op's tuple of outputs: an empty tensor."""
    return like.new_empty(0)


def exporting() -> bool:
    """Whether a graph is being exported rather than run or compiled: ``torch.export`` (which
    ``torch.onnx.export(dynamo=True)`` and AOTInductor go through) or a ``torch.jit`` trace (which the
    TorchScript ``torch.onnx.export(dynamo=False)`` records). Two flag reads, no host sync."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


# ----------------------------------------------------------------------------- dropout masks
def dropout_keep_mask(shape, p: float, seed: Tensor, device: torch.device) -> Tensor:
    """Boolean keep-mask of ``shape``, a pure function of ``(seed, shape)``.

    Each element is 16 random bits of one 64-bit draw (four elements a draw: on a CPU half the generator's
    work of one float per element), read as a signed int16 ``r`` and kept iff ``r >= t - 32768`` with
    ``t = min(round(65536 p), 65535)`` (the unsigned ``(bits ^ 0x8000) >= t``): P(keep) = 1 - t / 65536,
    within 2**-17 of ``1 - p``, the Triton kernels' keep rate (kernels/dropout.py, which rounds in fp32).
    An exported graph cannot read the seed on the host: there the mask comes from the graph's own random
    numbers (same distribution), and autograd keeps it for backward.
    """
    if exporting():
        return torch.rand(shape, device=device) >= p
    generator = _generator(device)
    generator.manual_seed(int(seed.item()))  # a (1,) tensor: one read, no view ops
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    bits = words.random_(-2**63, None, generator=generator).view(torch.int16)  # all 64 bits uniform
    if count % 4:
        bits = bits[:count]
    return bits.view(shape) >= _threshold16(p) - 32768  # uniform bits: any fixed 16-bit reading keeps 1 - t/65536


def _threshold16(p: float) -> int:
    return min(int(p * 65536.0 + 0.5), 65535)


_generators = threading.local()


def _generator(device: torch.device) -> torch.Generator:
    """This thread's generator for ``device``, reseeded by every mask (built once: a few microseconds)."""
    cache = _generators.__dict__.setdefault("by_device", {})
    generator = cache.get(device)
    if generator is None:
        generator = cache[device] = torch.Generator(device=device)
    return generator


def _apply_dropout(x: Tensor, p: float, seed: Tensor | None) -> Tensor:
    if p == 0.0:
        return x
    keep = dropout_keep_mask(x.shape, p, seed, x.device)
    return x * keep * (1.0 / (1.0 - p))


# ----------------------------------------------------------------------------- exact GELU
def gelu(z: Tensor) -> Tensor:
    """BERT's exact GELU, ``z * Phi(z)`` with the erf form of the normal CDF."""
    return F.gelu(z)


def gelu_backward(dy: Tensor, z: Tensor) -> Tensor:
    """``dy * gelu'(z)`` with gelu'(z) = Phi(z) + z * phi(z), computed in fp32 (or float64), returned in
    z's dtype: PyTorch's own GELU backward, one op."""
    if z.dtype in (torch.float32, torch.float64) and dy.dtype == z.dtype:
        return torch.ops.aten.gelu_backward(dy, z)
    return torch.ops.aten.gelu_backward(dy.float(), z.float()).to(z.dtype)


# ----------------------------------------------------------------------------- linear + GELU
def linear_gelu_fwd(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """``y = gelu(x @ weight.T + bias)``; returns ``(y, z)`` with ``z`` the pre-activation."""
    z = F.linear(x, weight, bias)
    return gelu(z), z


def linear_gelu_inference_fwd(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``gelu(x @ weight.T + bias)`` without keeping the pre-activation: GELU runs in place."""
    return torch.ops.aten.gelu_(F.linear(x, weight, bias))


def linear_gelu_bwd(dy: Tensor, x: Tensor, weight: Tensor, z: Tensor, has_bias: bool):
    """Gradients ``(dx, dweight, dbias)`` of :func:`linear_gelu_fwd` from the saved ``z``.

    Custom ops cannot return None: an absent gradient is an empty tensor (see :func:`_NO_GRAD`).
    """
    dz = gelu_backward(dy, z)
    dx = dz @ weight
    dweight = dz.t() @ x
    dbias = dz.sum(0, dtype=stats_dtype(dz)).to(weight.dtype) if has_bias else _NO_GRAD(weight)
    return dx, dweight, dbias


# ----------------------------------------------------------------------------- feed-forward block
def ffn_fwd(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor) -> tuple[Tensor, Tensor]:
    """``(out, z)``: ``z = x @ w1.T + b1`` and ``out = gelu(z) @ w2.T`` (no second bias: the caller fuses
    it into what follows). Only ``z`` is kept for backward; ``gelu(z)`` is recomputed there."""
    z = F.linear(x, w1, b1)
    return F.linear(gelu(z), w2), z


def ffn_inference_fwd(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor) -> Tensor:
    """``gelu(x @ w1.T + b1) @ w2.T`` with GELU in place: one ``tokens x intermediate`` buffer."""
    return F.linear(torch.ops.aten.gelu_(F.linear(x, w1, b1)), w2)


def ffn_bwd(dout: Tensor, x: Tensor, w1: Tensor, w2: Tensor, z: Tensor, has_bias: bool, weight_grads: bool = True,
            dx_into: Tensor | None = None):
    """Gradients ``(dx, dw1, db1, dw2)`` of :func:`ffn_fwd` from the saved ``z``; ``db1`` is empty
    without a bias, and all three weight gradients are empty without ``weight_grads``. ``dx_into``
    ``(tokens, hidden)``, when given, is added to ``dx`` by its GEMM (x's gradient from another op)."""
    dz = gelu_backward(dout @ w2, z)
    dx = input_grad(dz, w1, dx_into)
    if not weight_grads:
        return dx, _NO_GRAD(w1), _NO_GRAD(w1), _NO_GRAD(w2)
    dw2 = dout.t() @ gelu(z)
    db1 = dz.sum(0, dtype=stats_dtype(dz)).to(w1.dtype) if has_bias else _NO_GRAD(w1)
    return dx, dz.t() @ x, db1, dw2


def input_grad(dout: Tensor, weight: Tensor, dx_into: Tensor | None) -> Tensor:
    """``dout @ weight``, plus ``dx_into`` in the same GEMM when given (one launch, not two)."""
    return dout @ weight if dx_into is None else torch.addmm(dx_into, dout, weight)


# ----------------------------------------------------------------------------- the q, k, v projection
def qkv_fwd(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, bq: Tensor | None, bk: Tensor | None,
            bv: Tensor | None) -> Tensor:
    """``x @ [wq; wk; wv]^T + [bq; bk; bv]``: ``x (tokens, hidden_in)``, each weight ``(hidden, hidden_in)``,
    the biases all ``(hidden,)`` or all None; returns ``(tokens, 3 * hidden)``."""
    bias = torch.cat((bq, bk, bv)) if bq is not None else None
    return F.linear(x, torch.cat((wq, wk, wv)), bias)


def qkv_bwd(dout: Tensor, x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, has_bias: bool,
            weight_grads: bool = True, dx_into: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dw, db)`` of :func:`qkv_fwd` from ``dout (tokens, 3 * hidden)``: ``dw`` is one
    ``(3 * hidden, hidden_in)`` tensor and ``db`` one ``(3 * hidden,)`` (row blocks q, k, v), ``db`` empty
    without biases and both empty without ``weight_grads``. The weights' concatenation lives only for the
    ``dx`` GEMM: nothing of it is kept between forward and backward. Launches: the concatenation, one GEMM
    for ``dx`` (adding ``dx_into``, x's gradient from another op, when given), and with ``weight_grads``
    one for ``dw`` and a column sum."""
    dout = dout.reshape(x.shape[0], 3 * wq.shape[0])
    dx = input_grad(dout, torch.cat((wq, wk, wv)), dx_into)
    if not weight_grads:
        return dx, _NO_GRAD(wq), _NO_GRAD(wq)
    db = dout.sum(0, dtype=stats_dtype(dout)).to(wq.dtype) if has_bias else _NO_GRAD(wq)
    return dx, dout.t() @ x, db


# ----------------------------------------------------------------------------- residual + dropout + LayerNorm
def residual_layernorm_fwd(x, bias, residual, weight, beta, eps: float, p: float, seed):
    """``y = LayerNorm(dropout(x + bias) + residual)`` over the last dim of ``(rows, hidden)``.

    Returns ``(y, mean, rstd)``; ``mean``/``rstd`` are ``(rows,)`` in :func:`stats_dtype` (fp32, float64 for
    float64 x); ``y`` has ``x``'s dtype.
    """
    acc = stats_dtype(x)
    h = _as(x, acc) if bias is None else _as(x, acc) + _as(bias, acc)
    keep = dropout_keep_mask(h.shape, p, seed, h.device) if p > 0.0 else None
    s = _residual_sum(h, h is not x, residual, keep, p, acc)
    # weight.shape, not s.shape: a jit trace (the TorchScript ONNX exporter) keeps a parameter's shape constant.
    y, mean, rstd = torch.native_layer_norm(s, weight.shape, _as(weight, acc), _as(beta, acc), eps)
    return _as(y, x.dtype), mean.view(-1), rstd.view(-1)  # statistics in acc


def _residual_sum(h: Tensor, fresh: bool, residual: Tensor, keep: Tensor | None, p: float, acc: torch.dtype) -> Tensor:
    """``s = dropout(h) + residual`` in ``acc``: ``residual + scale * h * keep`` in one op with dropout,
    else added into ``h`` when ``fresh`` (few fresh buffers: on a CPU large allocations cost as much as a
    pass over memory). LayerNorm's forward and backward both take s from here: the same bits."""
    if keep is not None:
        s = torch.addcmul(residual, h, keep, value=1.0 / (1.0 - p))
    else:
        s = h.add_(residual) if fresh else h + residual
    return _as(s, acc)  # a float64 residual of lower-precision x promotes the sum


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``: itself when it already is (no call at all: a no-op ``.to`` still costs a dispatch)."""
    return t if t.dtype == dtype else t.to(dtype)


def stats_dtype(x: Tensor) -> torch.dtype:
    """The dtype of a backend's statistics and sums (LayerNorm mean/rstd, attention's log-sum-exp, bias
    gradients) for inputs like ``x``: fp32 for fp32 and lower precisions; float64 inputs keep float64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def residual_layernorm_bwd(dy, x, bias, residual, weight, mean, rstd, p: float, seed):
    """Gradients ``(dx, dbias, dresidual, dweight, dbeta)``; the dropout mask is regenerated."""
    hidden = x.shape[-1]
    acc = stats_dtype(x)
    h = _as(x, acc) if bias is None else _as(x, acc) + _as(bias, acc)  # the forward's sum, in its dtype
    keep = dropout_keep_mask(h.shape, p, seed, h.device) if p > 0.0 else None
    s = _residual_sum(h, h is not x, residual, keep, p, acc)  # the forward's s, bit for bit
    weight_acc = _as(weight, acc)
    # The bias argument only lends dbeta its dtype: its values do not enter any gradient.
    ds, dweight, dbeta = torch.ops.aten.native_layer_norm_backward(
        _as(dy, acc), s, (hidden,), _as(mean.view(-1, 1), acc), _as(rstd.view(-1, 1), acc), weight_acc,
        weight_acc, [True, True, True],
    )
    dh = ds.clone() if keep is None else torch.mul(ds, keep).mul_(1.0 / (1.0 - p))  # outputs may not alias
    dbias = _as(dh.sum(0), bias.dtype) if bias is not None else _NO_GRAD(x)
    return (_as(dh, x.dtype), dbias, _as(ds, residual.dtype), _as(dweight, weight.dtype), _as(dbeta, weight.dtype))


# ----------------------------------------------------------------------------- embeddings
def _embedding_sum(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, acc):
    base = inputs_embeds if inputs_embeds is not None else F.embedding(input_ids, word)
    return _as(base, acc) + _as(F.embedding(token_type_ids, types), acc) + _as(F.embedding(position_ids, pos), acc)


def embeddings_fwd(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types,
                   weight, beta, eps: float, p: float, seed):
    """``dropout(LayerNorm(word[ids] + pos[pids] + types[tids]))`` for ``(tokens,)`` index vectors.

    ``inputs_embeds`` ``(tokens, hidden)`` replaces the word lookup when given. Returns
    ``(y, mean, rstd)`` with ``(tokens,)`` statistics in :func:`stats_dtype` of the tables; ``y`` has the
    tables' dtype.
    """
    acc = stats_dtype(word)
    s = _embedding_sum(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, acc)
    y, mean, rstd = torch.native_layer_norm(s, weight.shape, _as(weight, acc), _as(beta, acc), eps)
    y = _apply_dropout(y, p, seed)
    return _as(y, word.dtype), mean.view(-1), rstd.view(-1)


def embeddings_bwd(dy, input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types,
                   weight, mean, rstd, p: float, seed, padding_idx: int, position_padding_idx: int = -1):
    """Gradients ``(dinputs_embeds, dword, dpos, dtypes, dweight, dbeta)``.

    Table gradients are dense and accumulated with ``index_add`` (deterministic on the CPU);
    the row ``padding_idx`` of ``dword`` (``position_padding_idx`` of ``dpos``) stays zero, as with
    ``nn.Embedding(padding_idx=...)``.
    """
    hidden = word.shape[-1]
    acc = stats_dtype(word)
    s = _embedding_sum(input_ids, inputs_embeds, position_ids, token_type_ids, word, pos, types, acc)
    dln = _as(dy, acc)
    if p > 0.0:
        dln = dln * dropout_keep_mask(dln.shape, p, seed, dln.device) * (1.0 / (1.0 - p))
    ds, dweight, dbeta = torch.ops.aten.native_layer_norm_backward(
        dln, s, (hidden,), _as(mean.view(-1, 1), acc), _as(rstd.view(-1, 1), acc), _as(weight, acc),
        torch.zeros_like(weight, dtype=acc), [True, True, True],
    )
    dinputs_embeds = dword = _NO_GRAD(word)
    if inputs_embeds is not None:
        dinputs_embeds = ds.to(inputs_embeds.dtype)
    else:
        dword = torch.zeros(word.shape, dtype=acc, device=ds.device).index_add_(0, input_ids, ds)
        if 0 <= padding_idx < word.shape[0]:
            dword[padding_idx] = 0
        dword = dword.to(word.dtype)
    dpos = torch.zeros(pos.shape, dtype=acc, device=ds.device).index_add_(0, position_ids, ds)
    if 0 <= position_padding_idx < pos.shape[0]:
        dpos[position_padding_idx] = 0
    dtypes = torch.zeros(types.shape, dtype=acc, device=ds.device).index_add_(0, token_type_ids, ds)
    return (dinputs_embeds, dword, dpos.to(pos.dtype), dtypes.to(types.dtype),
            dweight.to(weight.dtype), dbeta.to(weight.dtype))


# ----------------------------------------------------------------------------- attention
class _PaddedLayout:
    """Packed token ``t`` <-> slot ``b * max_seqlen + i`` of a padded ``(batch, max_seqlen)`` grid.

    When every sequence is exactly ``max_seqlen`` long (``total == batch * max_seqlen``) the packed
    rows already are the grid and no index is built.
    """

    def __init__(self, cu_seqlens: Tensor, max_seqlen: int, total: int):
        cu = cu_seqlens.long()
        self.batch, self.seqlen = cu.numel() - 1, max_seqlen
        self.uniform = total == self.batch * max_seqlen
        self.slots = self.key_valid = None
        self._masks = {}
        if not self.uniform:
            lengths = cu[1:] - cu[:-1]
            seq_of_token = torch.repeat_interleave(torch.arange(self.batch, device=cu.device), lengths,
                                                   output_size=total)
            offset_in_seq = torch.arange(total, device=cu.device) - cu[seq_of_token]
            self.slots = seq_of_token * max_seqlen + offset_in_seq
            self.key_valid = torch.arange(max_seqlen, device=cu.device)[None, :] < lengths[:, None]

    def to_grid(self, x: Tensor) -> Tensor:
        """``(total, heads, ...)`` -> ``(batch, heads, max_seqlen, ...)`` (zeros at padding)."""
        if not self.uniform:
            x = x.new_zeros(self.batch * self.seqlen, *x.shape[1:]).index_copy_(0, self.slots, x)
        return x.view(self.batch, self.seqlen, *x.shape[1:]).transpose(1, 2)

    def from_grid(self, x: Tensor) -> Tensor:
        """``(batch, heads, max_seqlen, ...)`` -> ``(total, heads, ...)``."""
        return self.from_rows(x.transpose(1, 2).reshape(self.batch * self.seqlen, *x.shape[1:2], *x.shape[3:]))

    def from_rows(self, rows: Tensor) -> Tensor:
        """``(batch * max_seqlen, ...)`` grid rows -> the packed ``(total, ...)`` ones."""
        return rows if self.uniform else rows.index_select(0, self.slots)

    def additive_mask(self, dtype: torch.dtype) -> Tensor | None:
        """``(batch, 1, 1, max_seqlen)`` with -inf at padded keys, or None when there is no padding."""
        if self.uniform:
            return None
        if dtype not in self._masks:
            zero = torch.zeros((), dtype=dtype, device=self.key_valid.device)
            self._masks[dtype] = torch.where(self.key_valid, zero, float("-inf"))[:, None, None, :]
        return self._masks[dtype]

    # Head-major: the attention of the training path, where each head's rows are one batched matrix.
    def to_heads(self, x: Tensor) -> Tensor:
        """``(total, groups, dim)`` -> ``(groups, batch * max_seqlen, dim)`` contiguous, zeros at padding:
        group ``g``'s rows sequence by sequence, so ``[g].view(batch, max_seqlen, dim)`` is its grid."""
        rows = x.transpose(0, 1)
        if self.uniform:
            return rows.contiguous()
        return x.new_zeros(x.shape[1], self.batch * self.seqlen, x.shape[2]).index_copy_(1, self.slots, rows)

    def from_heads(self, x: Tensor) -> Tensor:
        """``(groups, batch * max_seqlen, dim)`` -> the packed ``(total, groups, dim)``, contiguous."""
        rows = x.transpose(0, 1)
        return rows.contiguous() if self.uniform else rows.index_select(0, self.slots)

    def head_mask(self, heads: int, dtype: torch.dtype) -> Tensor | None:
        """``(heads * batch, 1, max_seqlen)`` with -inf at padded keys (the rows of head-major scores), or
        None when there is no padding."""
        if self.uniform:
            return None
        if (heads, dtype) not in self._masks:
            mask = self.additive_mask(dtype)[:, 0]  # (batch, 1, max_seqlen)
            self._masks[heads, dtype] = mask.expand(heads, *mask.shape).reshape(heads * self.batch, 1, self.seqlen)
        return self._masks[heads, dtype]


_last_layout = threading.local()


def _padded_layout(cu_seqlens: Tensor, max_seqlen: int, total: int) -> _PaddedLayout:
    """The :class:`_PaddedLayout` of ``cu_seqlens``, built once for all the layers (and their backward)
    that share that tensor: the last one built is kept, per thread. A traced graph builds its own. An
    inference tensor has no version counter: it is matched by identity (fastbert never edits its own)."""
    if exporting() or torch.compiler.is_compiling():
        return _PaddedLayout(cu_seqlens, max_seqlen, total)
    key = (0 if cu_seqlens.is_inference() else cu_seqlens._version, max_seqlen, total)
    last = getattr(_last_layout, "entry", None)
    if last is not None and last[0] is cu_seqlens and last[1] == key:
        return last[2]
    layout = _PaddedLayout(cu_seqlens, max_seqlen, total)
    _last_layout.entry = (cu_seqlens, key, layout)
    return layout


def _split_qkv(qkv: Tensor, layout: _PaddedLayout):
    """``(total, 3, heads, dim)`` -> q, k, v each ``(batch, heads, max_seqlen, dim)``."""
    grid = layout.to_grid(qkv.flatten(1, 2))  # (batch, 3 * heads, max_seqlen, dim)
    return grid.unflatten(1, (3, qkv.shape[2])).unbind(1)


def _head_qkv(qkv: Tensor, layout: _PaddedLayout):
    """``(total, 3, heads, dim)`` -> q, k, v each ``(heads * batch, max_seqlen, dim)`` contiguous: one
    copy of the three, and the batched matrix products take them without another."""
    _, _, heads, dim = qkv.shape
    rows = layout.to_heads(qkv.flatten(1, 2))  # (3 * heads, batch * max_seqlen, dim)
    return rows.view(3, heads * layout.batch, layout.seqlen, dim).unbind(0)


def _head_scores(q: Tensor, k: Tensor, layout: _PaddedLayout, heads: int, scale: float) -> Tensor:
    """``scale * q k^T`` with -inf at padded keys, ``(heads * batch, max_seqlen, max_seqlen)`` in the
    statistics' dtype: one ``baddbmm`` (mask, product and scale) where that is q's dtype."""
    acc = stats_dtype(q)
    mask = layout.head_mask(heads, acc)
    if q.dtype == acc and mask is not None:
        return torch.baddbmm(mask, q, k.transpose(1, 2), alpha=scale)
    scores = _as(torch.bmm(q, k.transpose(1, 2)), acc).mul_(scale)
    return scores if mask is None else scores.add_(mask)


def _probs_times_v(probs: Tensor, v: Tensor, scale: float) -> Tensor:
    """``scale * probs @ v`` in v's dtype (``probs`` in the statistics' dtype, scaled before a cast)."""
    if probs.dtype == v.dtype:
        # beta=0: the input only lends its shape (nothing of it is read)
        return torch.bmm(probs, v) if scale == 1.0 else torch.baddbmm(v, probs, v, beta=0.0, alpha=scale)
    return torch.bmm((probs * scale if scale != 1.0 else probs).to(v.dtype), v)


def attention_fwd(qkv: Tensor, cu_seqlens: Tensor, max_seqlen: int, p: float, seed):
    """Softmax attention of packed sequences, scale ``1/sqrt(head_dim)``, dropout ``p`` on the probs.

    qkv: ``(tokens, 3, heads, head_dim)``; cu_seqlens: int32 ``(batch + 1,)``.
    Returns ``(out (tokens, heads, head_dim), lse (heads, tokens))``, lse in :func:`stats_dtype` (fp32,
    float64 for float64 qkv).
    """
    total, _, heads, dim = qkv.shape
    scale = dim ** -0.5
    layout = _padded_layout(cu_seqlens, max_seqlen, total)
    if p == 0.0 and qkv.device.type == "cpu" and max_seqlen > 0:  # (it dies of a division by zero at 0)
        # PyTorch's fused CPU attention also returns the log-sum-exp.
        q, k, v = _split_qkv(qkv, layout)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=layout.additive_mask(q.dtype), scale=scale)
        lse = torch.nan_to_num(_as(lse, stats_dtype(qkv)), neginf=0.0, posinf=0.0)  # rows that see no key are never read
        return layout.from_grid(out), layout.from_grid(lse[..., None])[..., 0].t().contiguous()
    # Head-major: q, k, v, the scores and the output are (heads * batch, ...) batched matrices.
    q, k, v = _head_qkv(qkv, layout)
    scores = _head_scores(q, k, layout, heads, scale)
    lse = torch.logsumexp(scores, dim=-1)  # (heads * batch, max_seqlen)
    # Out of place where autograd records this (an exported graph): logsumexp keeps scores for backward.
    recorded = torch.is_grad_enabled() and qkv.requires_grad
    probs = torch.exp(scores - lse[..., None]) if recorded else scores.sub_(lse[..., None]).exp_()
    if p > 0.0:
        keep = dropout_keep_mask(probs.shape, p, seed, probs.device)
        probs = probs * keep if recorded else probs.mul_(keep)
    out = _probs_times_v(probs, v, 1.0 / (1.0 - p))
    # Rows that see no key (padding of an empty sequence) are never read; keep their lse finite.
    lse = torch.nan_to_num(_as(lse, stats_dtype(qkv)), neginf=0.0, posinf=0.0).view(heads, -1)
    return (layout.from_heads(out.view(heads, -1, dim)),
            lse if layout.uniform else lse.index_select(1, layout.slots))


def attention_bwd(dout, qkv, out, lse, cu_seqlens, max_seqlen: int, p: float, seed):
    """Gradient of :func:`attention_fwd` w.r.t. ``qkv``, recomputing the probabilities from ``lse``, in
    the forward's head-major layout (its dropout mask).

    FlashAttention-2's math: ``dS = P * (dP - rowsum(dO * O))``.
    """
    total, _, heads, dim = qkv.shape
    scale = dim ** -0.5
    layout = _padded_layout(cu_seqlens, max_seqlen, total)
    rows = heads * layout.batch
    q, k, v = _head_qkv(qkv, layout)
    acc = stats_dtype(qkv)
    do = layout.to_heads(dout).view(rows, layout.seqlen, dim)
    delta = (_as(dout, acc) * _as(out, acc)).sum(-1)  # (tokens, heads)
    # Padded query rows have dO = 0 and delta = 0 (and finite scores): every gradient they feed is 0.
    stats = layout.to_heads(torch.stack((_as(lse.t(), acc), delta), dim=-1)).view(rows, layout.seqlen, 2)
    probs = _head_scores(q, k, layout, heads, scale).sub_(stats[..., 0:1]).exp_()
    dprobs = _as(torch.bmm(do, v.transpose(1, 2)), acc)
    probs_dropped = probs
    if p > 0.0:
        keep_scale = dropout_keep_mask(probs.shape, p, seed, probs.device) * (1.0 / (1.0 - p))
        probs_dropped = probs * keep_scale
        dprobs.mul_(keep_scale)
    dscores = _as(dprobs.sub_(stats[..., 1:2]).mul_(probs).mul_(scale), q.dtype)
    # dq, dk, dv as one (3 * heads, batch * seq, dim) tensor, gathered to packed rows at once (no bmm out=:
    # this also runs where autograd records, an exported graph's backward).
    grads = torch.cat((torch.bmm(dscores, k), torch.bmm(dscores.transpose(1, 2), q),
                       torch.bmm(_as(probs_dropped, v.dtype).transpose(1, 2), do)))
    return layout.from_heads(grads.view(3 * heads, -1, dim)).view(total, 3, heads, dim)


# ----------------------------------------------------------------------------- the encoder stack in inference
ENCODER_LAYER_TENSORS = 16  # a layer's tensors in :func:`encoder_inference_fwd`'s ``weights``, in this order:
# query, key, value, attention-output and LayerNorm-1 weights and biases, then the two feed-forward linears'
# and LayerNorm-2's: (Wq, bq, Wk, bk, Wv, bv, Wo, bo, ln1_w, ln1_b, W1, b1, W2, b2, ln2_w, ln2_b).


def layered_encoder_inference(hidden: Tensor, cu_seqlens: Tensor, max_seqlen: int, weights: list, heads: int,
                              eps: float, qkv, attention, layernorm, ffn) -> Tensor:
    """The encoder stack, layer by layer, from one backend's op implementations (``qkv``: :func:`qkv_fwd`'s
    signature, ``attention``: :func:`attention_fwd`'s, ``layernorm``: :func:`residual_layernorm_fwd`'s,
    ``ffn``: :func:`ffn_inference_fwd`'s), without dropout or autograd; the same calls a module's forward
    makes. Arguments as :func:`encoder_inference_fwd`'s."""
    rows, width = hidden.shape
    for i in range(0, len(weights), ENCODER_LAYER_TENSORS):
        wq, bq, wk, bk, wv, bv, wo, bo, ln1_w, ln1_b, w1, b1, w2, b2, ln2_w, ln2_b = \
            weights[i:i + ENCODER_LAYER_TENSORS]
        projected = qkv(hidden, wq, wk, wv, bq, bk, bv).view(rows, 3, heads, -1)
        context = attention(projected, cu_seqlens, max_seqlen, 0.0, None)[0].reshape(rows, width)
        attended = layernorm(F.linear(context, wo), bo, hidden, ln1_w, ln1_b, eps, 0.0, None)[0]
        hidden = layernorm(ffn(attended, w1, b1, w2), b2, attended, ln2_w, ln2_b, eps, 0.0, None)[0]
    return hidden


def _native_layer_takes(hidden: Tensor) -> bool:
    """Whether PyTorch's fused encoder layer (``aten::_transformer_encoder_layer_fwd``) runs ``hidden``'s
    device and dtype."""
    if hidden.device.type == "cuda":
        return hidden.dtype in (torch.float32, torch.float16, torch.bfloat16)
    return hidden.device.type == "cpu" and hidden.dtype in (torch.float32, torch.bfloat16)


# Above this many multiply-adds per layer's linear (rows x hidden x hidden) a CPU runs a layer faster as separate
# GEMMs around PyTorch's fused CPU attention (no probabilities in memory) than as the fused encoder layer,
# whose softmax runs over a materialized (batch, heads, seqlen, seqlen) tensor: 5 to 22% faster at MiniLM's
# size from 32 to 256 tokens, measured on a 2-core EPYC. Below it the fused layer's single dispatch wins.
_CPU_SEPARATE_GEMMS_FROM = 1 << 24


def encoder_inference_fwd(hidden: Tensor, cu_seqlens: Tensor, max_seqlen: int, weights: list, heads: int,
                          eps: float) -> Tensor:
    """A post-LayerNorm BERT encoder stack with exact GELU, in inference (no dropout, no autograd).

    The layers run on a padded ``(batch, max_seqlen, hidden)`` grid built once for the stack, padded keys
    masked out. Each layer is one call of PyTorch's fused encoder layer (the op behind
    ``nn.TransformerEncoderLayer``'s inference fast path: the same math as the per-op path, one dispatch
    instead of a dozen), or on a CPU past :data:`_CPU_SEPARATE_GEMMS_FROM` its GEMMs around PyTorch's fused
    CPU attention (:func:`_cpu_grid_layer`); elsewhere (float64) the per-op implementations of this module.

    Args:
        hidden: ``(tokens, hidden)`` packed rows; cu_seqlens: int32 ``(batch + 1,)``; max_seqlen: the longest.
        weights: ``ENCODER_LAYER_TENSORS`` tensors per layer, in that constant's order, in hidden's dtype.
        heads: attention heads; eps: the LayerNorms' epsilon.
    Returns:
        ``(tokens, hidden)`` in hidden's dtype.
    """
    if not _native_layer_takes(hidden):
        return layered_encoder_inference(hidden, cu_seqlens, max_seqlen, weights, heads, eps, qkv_fwd,
                                         attention_fwd, residual_layernorm_fwd, ffn_inference_fwd)
    total, width = hidden.shape
    layout = _padded_layout(cu_seqlens, max_seqlen, total)
    grid = layout.to_grid(hidden[:, None])[:, 0]  # (batch, max_seqlen, hidden), zeros at padding
    separate = hidden.device.type == "cpu" and grid.numel() * width >= _CPU_SEPARATE_GEMMS_FROM
    key_padding = None if layout.uniform else ~layout.key_valid
    for i in range(0, len(weights), ENCODER_LAYER_TENSORS):
        layer = weights[i:i + ENCODER_LAYER_TENSORS]
        if separate:
            grid = _cpu_grid_layer(grid, layout, heads, eps, layer)
            continue
        wq, bq, wk, bk, wv, bv, wo, bo, ln1_w, ln1_b, w1, b1, w2, b2, ln2_w, ln2_b = layer
        grid = torch._transformer_encoder_layer_fwd(
            grid, width, heads, torch.cat((wq, wk, wv)), torch.cat((bq, bk, bv)), wo, bo,
            True, False, eps,  # exact GELU, post-LayerNorm
            ln1_w, ln1_b, ln2_w, ln2_b, w1, b1, w2, b2, key_padding, None if key_padding is None else 1)
    return layout.from_grid(grid[:, None])[:, 0]


def _cpu_grid_layer(grid: Tensor, layout: _PaddedLayout, heads: int, eps: float, weights: list) -> Tensor:
    """One post-LayerNorm layer on a padded ``(batch, seqlen, hidden)`` grid: the q, k, v GEMM, PyTorch's
    fused CPU attention with padded keys masked, and the other GEMMs with their bias, residual, exact GELU
    and LayerNorm in place. ``weights``: one layer's, in :data:`ENCODER_LAYER_TENSORS`' order."""
    wq, bq, wk, bk, wv, bv, wo, bo, ln1_w, ln1_b, w1, b1, w2, b2, ln2_w, ln2_b = weights
    batch, seqlen, width = grid.shape
    x = grid.reshape(batch * seqlen, width)
    q, k, v = qkv_fwd(x, wq, wk, wv, bq, bk, bv).view(batch, seqlen, 3, heads, -1).permute(2, 0, 3, 1, 4)
    context = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, False, attn_mask=layout.additive_mask(x.dtype))[0]
    context = context.transpose(1, 2).reshape(batch * seqlen, width)
    attended = F.layer_norm(torch.addmm(bo, context, wo.t()).add_(x), (width,), ln1_w, ln1_b, eps)
    out = torch.addmm(b2, torch.ops.aten.gelu_(torch.addmm(b1, attended, w1.t())), w2.t()).add_(attended)
    return F.layer_norm(out, (width,), ln2_w, ln2_b, eps).view(batch, seqlen, width)
