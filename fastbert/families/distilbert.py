"""DistilBERT on fastbert's encoder core. Its layer is BERT's under other names (``q_lin`` ... ``out_lin``,
``sa_layer_norm``, ``ffn.lin1``/``lin2``, ``output_layer_norm``), with no dropout after the attention's
output projection; its embeddings have no token types; no pooler."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.distilbert import modeling_distilbert as hf

from fastbert import ops
from fastbert.modeling import (STACK_READERS, EmbeddingsCore, EncoderCore, EncoderModelCore, PreTrainedCore,
                               _is_plain_linear, _unhooked, converts, feed_forward, finish_family, head_forward,
                               residual_layernorm, self_attention)


@converts(hf.Embeddings, "embeddings")
class Embeddings(EmbeddingsCore, hf.Embeddings):
    """transformers' DistilBERT ``Embeddings`` on fastbert's fused op (a zero token-type row)."""


@converts(hf.DistilBertSelfAttention, "self_attention")
class DistilBertSelfAttention(hf.DistilBertSelfAttention):
    def forward(self, hidden: Tensor, attn) -> tuple[Tensor, Optional[Tensor]]:
        """``(rows, dim)`` -> ``(out_lin(context) (rows, dim), probs or None)``."""
        context, probs = self.context(hidden, attn)
        return self.out_lin(context), probs

    def context(self, hidden: Tensor, attn) -> tuple[Tensor, Optional[Tensor]]:
        """The attention's context before ``out_lin``: ``(rows, dim)``, and the probs or None."""
        return self_attention(hidden, attn, (self.q_lin, self.k_lin, self.v_lin), self.n_heads,
                              self.attention_head_size, self.dropout)


def _layernorm(x: Tensor, residual: Tensor, ln: nn.LayerNorm) -> Tensor:
    return ops.residual_layernorm(x, None, residual, ln.weight, ln.bias, ln.eps, 0.0, None)


@converts(hf.TransformerBlock, "layer")
class TransformerBlock(hf.TransformerBlock):
    def forward(self, hidden: Tensor, attn) -> tuple[Tensor, Optional[Tensor]]:
        """One layer on ``(rows, dim)``; returns ``(rows, dim)`` and the probs (or None)."""
        attention = self.attention
        if type(attention) is DistilBertSelfAttention and _unhooked(attention):
            context, probs = attention.context(hidden, attn)
            attention_output = residual_layernorm(attention.out_lin, context, hidden, None, self.sa_layer_norm)
        else:  # a hook or a subclass sees its call
            out, probs = attention(hidden, attn)
            attention_output = _layernorm(out, hidden, self.sa_layer_norm)
        ffn = self.ffn
        if type(ffn) is hf.FFN and _unhooked(ffn) and _is_plain_linear(ffn.lin1) and _is_plain_linear(ffn.lin2):
            return feed_forward(attention_output, ffn.lin1, ffn.lin2, ffn.dropout, self.output_layer_norm), probs
        return _layernorm(ffn(attention_output), attention_output, self.output_layer_norm), probs


_BLOCK_TYPES = (DistilBertSelfAttention, hf.FFN) + (nn.Linear,) * 6


def _read_block(layer: nn.Module) -> Optional[tuple]:
    """The :data:`fastbert.modeling.STACK_READERS` entry of a DistilBERT layer."""
    children = layer._modules
    attention, ffn = children["attention"], children["ffn"]
    a, f = attention._modules, ffn._modules
    modules = (attention, ffn, a["q_lin"], a["k_lin"], a["v_lin"], a["out_lin"], f["lin1"], f["lin2"])
    if tuple(map(type, modules)) != _BLOCK_TYPES:
        return None
    parts = (*modules[2:6], children["sa_layer_norm"], f["lin1"], f["lin2"], children["output_layer_norm"])
    return modules, parts, (a["dropout"], None, f["dropout"]), attention.n_heads


STACK_READERS[TransformerBlock] = _read_block


@converts(hf.Transformer, "encoder")
class Transformer(EncoderCore, hf.Transformer):
    """transformers' DistilBERT ``Transformer`` (the encoder) on fastbert's fused ops."""


class DistilBertPreTrainedModel(PreTrainedCore, hf.DistilBertPreTrainedModel):
    """transformers' ``DistilBertPreTrainedModel`` whose encoder runs on fastbert's fused ops."""


@converts(hf.DistilBertModel)
class DistilBertModel(EncoderModelCore, DistilBertPreTrainedModel, hf.DistilBertModel):
    _encoder_name = "transformer"

    def forward(self, input_ids: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None,
                inputs_embeds: Optional[Tensor] = None, position_ids: Optional[Tensor] = None, **kwargs):
        """transformers' ``DistilBertModel.forward`` (its signature and outputs), padding-free as
        ``fastbert.BertModel.forward`` describes: ``last_hidden_state (batch, seqlen, dim)``."""
        return self._encode(input_ids, attention_mask, None, position_ids, inputs_embeds, kwargs)

    def _dropout_active(self) -> bool:
        return self.config.dropout > 0 or self.config.attention_dropout > 0

    def _output(self, sequence_output, pooled_output, hidden_states, attentions):
        return BaseModelOutput(last_hidden_state=sequence_output, hidden_states=hidden_states, attentions=attentions)


def _head(name: str, **reads) -> type:
    hf_class = getattr(hf, name)
    attributes = {"__module__": __name__, "__qualname__": name,
                  "__doc__": f"transformers' ``{name}`` on fastbert's fused ops."}
    if reads:
        attributes["forward"] = head_forward(hf_class, **reads)
    cls = converts(hf_class)(type(name, (DistilBertPreTrainedModel, hf_class), attributes))
    globals()[name] = cls
    return cls


_head("DistilBertForSequenceClassification", reads_first_token=True)  # reads hidden_state[:, 0]
_head("DistilBertForMultipleChoice", reads_first_token=True)
_head("DistilBertForTokenClassification", token_labels="labels")
_head("DistilBertForQuestionAnswering", span_labels=("start_positions", "end_positions"))
_head("DistilBertForMaskedLM", token_labels="labels")
finish_family(globals())
