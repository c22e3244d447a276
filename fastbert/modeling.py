"""BERT on fastbert's fused ops, with transformers' classes, parameter names and outputs.

Every module class here subclasses its transformers counterpart and replaces only ``forward``: the
module tree, parameter names, initialisation, ``from_pretrained``/``save_pretrained``, weight tying and
``isinstance`` checks are transformers' own. A model is built by transformers' constructor and then
converted in place (:func:`convert_modules`), the same conversion :func:`fastbert.optimize` applies to a
model a user already has.

Padding-free execution: with a 0/1 ``attention_mask`` (any pattern, not only right padding) the real
tokens are gathered once before the embeddings, every layer runs on packed tokens only, and the result
is scattered back once. **Padded positions of ``last_hidden_state`` (and of ``hidden_states``) are
zeros**, and head outputs at padded positions (token logits, MLM scores) are computed from those zeros.
3-D/4-D masks, floating-point masks, ``output_attentions=True`` and ``padding_free=False`` take an
exact unfused path that follows transformers' eager attention, padded positions included. So does every
call whose result reads a padded position, so that losses and logits are transformers' for any input:
a per-token label at a padded position, position 0 under the pooler with left padding, and
``BertForQuestionAnswering`` given span labels (its span loss takes a softmax over every position).
Under ``torch.export`` and the ONNX exporters the exact path is traced too (shapes of an exported graph
may not depend on the mask's values), so exported graphs give transformers' values at padded positions.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _torch_module
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.modeling_utils import PreTrainedModel
from transformers.models.bert import modeling_bert as hf

from fastbert import cuda_graphs, ops
from fastbert.families import POSITIONS_FROM_PADDING, load_all
from fastbert.padding import (PackedLayout, document_layout, document_positions, full_layout, gather, scatter,
                              static_layout, unpad_layout)
from fastbert.validation import check_config_supported, validate_inputs


# ============================================================================= how a layer attends
@dataclass
class PackedAttention:
    """Packed tokens: sequence ``i`` is rows ``[cu_seqlens[i], cu_seqlens[i+1])``."""

    cu_seqlens: Tensor
    max_seqlen: int


@dataclass
class PaddedAttention:
    """Padded ``(batch, seqlen)`` rows with an additive float mask broadcastable to
    ``(batch, heads, seqlen, seqlen)`` (or None): transformers' eager attention."""

    batch: int
    seqlen: int
    additive_mask: Optional[Tensor]


class _SeedPool(threading.local):
    """The dropout seeds of the forward in progress on this thread, drawn in one call: ``(sites,)`` int64,
    site ``i`` gets the view ``seeds[i:i+1]``. Without one (or once used up) each site draws its own."""

    seeds: Optional[Tensor] = None
    used: int = 0

    @contextlib.contextmanager
    def drawn(self, sites: int, device: torch.device):
        outer = self.seeds, self.used
        self.seeds, self.used = torch.randint(0, 2**62, (sites,), dtype=torch.int64, device=device), 0
        try:
            yield
        finally:
            self.seeds, self.used = outer

    def next(self, device: torch.device) -> Tensor:
        seeds = self.seeds
        if seeds is None or self.used >= seeds.numel() or seeds.device != device:
            return ops.new_seed(device)
        self.used += 1
        return seeds[self.used - 1:self.used]


_seed_pool = _SeedPool()


def _dropout_args(module: nn.Dropout, device: torch.device):
    p = float(module.p) if module.training else 0.0
    if p == 0.0:
        return p, None
    return p, ops.new_seed(device) if torch.compiler.is_compiling() else _seed_pool.next(device)


def _unhooked(module: nn.Module) -> bool:
    """No hook, on ``module`` or global, and no forward replaced on the instance (accelerate's hooks, a
    monkeypatch) expects to see ``module`` called."""
    return not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or "forward" in module.__dict__ or _torch_module._global_forward_hooks
                or _torch_module._global_forward_pre_hooks or _torch_module._global_backward_hooks
                or _torch_module._global_backward_pre_hooks)


def _is_plain_linear(module: nn.Module) -> bool:
    # Wrapped layers (PEFT LoRA, quantised linears) and hooked ones are called as modules so their
    # extras apply; a plain one's weight may be fused into a kernel.
    return type(module) is nn.Linear and _unhooked(module)


def _linear_without_bias(dense: nn.Module, x: Tensor):
    """``(x @ W.T, bias)`` so the bias can be fused into the next op; ``(dense(x), None)`` otherwise."""
    if _is_plain_linear(dense):
        return F.linear(x, dense.weight), dense.bias
    return dense(x), None


# ============================================================================= the core modules
# transformers class -> fastbert class, for every class whose forward fastbert replaces (every family's).
FASTBERT_CLASSES: dict[type, type] = {}
# role ("layer", "intermediate", ...) -> the fastbert classes that play it, in every family.
ROLE_TYPES: dict[str, set] = {}


def converts(hf_class: type, role: Optional[str] = None):
    """Class decorator: registers a fastbert class as the conversion of transformers' ``hf_class`` (and,
    for the encoder's own modules, as one that plays ``role``)."""
    def register(cls: type) -> type:
        FASTBERT_CLASSES[hf_class] = cls
        if role is not None:
            ROLE_TYPES.setdefault(role, set()).add(cls)
        return cls
    return register


class EmbeddingsCore(nn.Module):
    """Any family's embeddings module: ``word_embeddings``, ``position_embeddings``, an optional
    ``token_type_embeddings``, ``LayerNorm`` and ``dropout`` (the names BERT, RoBERTa, ELECTRA and DistilBERT
    share)."""

    def forward(self, input_ids: Optional[Tensor], token_type_ids: Tensor, position_ids: Tensor,
                inputs_embeds: Optional[Tensor]) -> Tensor:
        """Fused lookup + sum + LayerNorm + dropout of ``(tokens,)`` index vectors -> ``(tokens, hidden)``."""
        modules = self._modules
        word, ln = modules["word_embeddings"], modules["LayerNorm"]
        if inputs_embeds is None and type(word) is not nn.Embedding:
            inputs_embeds, input_ids = word(input_ids), None
        device = position_ids.device
        p, seed = _dropout_args(modules["dropout"], device)
        padding_idx = word.padding_idx if input_ids is not None else None
        positions = modules["position_embeddings"]
        types = modules.get("token_type_embeddings")
        # A family without token types (DistilBERT) adds a zero row: one table gather, no second kernel.
        types = ln.weight.new_zeros(1, ln.weight.shape[0]) if types is None else types.weight
        return ops.embeddings(
            input_ids, inputs_embeds, position_ids, token_type_ids, word.weight, positions.weight, types,
            ln.weight, ln.bias, ln.eps, p, seed, -1 if padding_idx is None else padding_idx,
            -1 if positions.padding_idx is None else positions.padding_idx,
            check_values=False,  # the model validated the ids against its config
        )


def self_attention(hidden: Tensor, attn, linears: tuple, heads: int, head_size: int,
                   dropout: nn.Dropout) -> tuple[Tensor, Optional[Tensor]]:
    """Multi-head self-attention of ``(rows, hidden)`` with the q, k, v ``linears``: ``(context (rows,
    heads * head_size), probs or None)``."""
    rows = hidden.shape[0]
    qkv = _qkv(hidden, linears).view(rows, 3, heads, head_size)
    p, seed = _dropout_args(dropout, hidden.device)
    if isinstance(attn, PackedAttention):
        context = ops.attention(qkv, attn.cu_seqlens, attn.max_seqlen, p, seed, check_values=False)
        return context.reshape(rows, heads * head_size), None
    return _eager_attention(qkv, attn, dropout)


def _qkv(hidden: Tensor, linears: tuple) -> Tensor:
    """One GEMM for q, k and v: ``(rows, hidden)`` -> ``(rows, 3 * hidden)``."""
    biases = [m.bias for m in linears]
    if all(_is_plain_linear(m) for m in linears) and len({b is None for b in biases}) == 1:
        # The op reads the three weights where they are: no concatenation per call (a cached one would
        # go stale under fused optimizers, whose in-place steps leave the version counters as they were).
        return ops.qkv(hidden, *(m.weight for m in linears), *biases)
    return torch.cat([m(hidden) for m in linears], dim=-1)


class SelfAttentionCore(nn.Module):
    """BERT's self-attention names: ``query``, ``key``, ``value``, ``dropout``."""

    def forward(self, hidden: Tensor, attn) -> tuple[Tensor, Optional[Tensor]]:
        """``(rows, hidden)`` -> ``(context (rows, hidden), probs or None)``."""
        return self_attention(hidden, attn, (self.query, self.key, self.value), self.num_attention_heads,
                              self.attention_head_size, self.dropout)


def _eager_attention(qkv: Tensor, attn: PaddedAttention, dropout: nn.Dropout):
    """transformers' eager attention on padded rows; returns the (pre-dropout) probabilities too."""
    q, k, v = qkv.view(attn.batch, attn.seqlen, *qkv.shape[1:]).permute(2, 0, 3, 1, 4).unbind(0)
    scores = torch.matmul(q, k.transpose(2, 3)) * (q.shape[-1] ** -0.5)
    if attn.additive_mask is not None:
        scores = scores + attn.additive_mask
    probs = F.softmax(scores, dim=-1)
    context = torch.matmul(dropout(probs), v).transpose(1, 2).reshape(attn.batch * attn.seqlen, -1)
    return context, probs


def residual_layernorm(dense: nn.Module, hidden: Tensor, input_tensor: Tensor, dropout: Optional[nn.Dropout],
                       ln: nn.LayerNorm) -> Tensor:
    """``ln(dropout(dense(hidden)) + input_tensor)``, dense's bias and the dropout fused into the LayerNorm
    (``dropout`` None: none)."""
    x, bias = _linear_without_bias(dense, hidden)
    p, seed = _dropout_args(dropout, hidden.device) if dropout is not None else (0.0, None)
    return ops.residual_layernorm(x, bias, input_tensor, ln.weight, ln.bias, ln.eps, p, seed)


class DenseResidualLayerNormCore(nn.Module):
    """BERT's self-output and output modules: ``LayerNorm(dropout(dense(hidden)) + input_tensor)``."""

    def forward(self, hidden: Tensor, input_tensor: Tensor) -> Tensor:
        return residual_layernorm(self.dense, hidden, input_tensor, self.dropout, self.LayerNorm)


class AttentionCore(nn.Module):
    def forward(self, hidden: Tensor, attn) -> tuple[Tensor, Optional[Tensor]]:
        context, probs = self.self(hidden, attn)
        return self.output(context, hidden), probs


class IntermediateCore(nn.Module):
    def forward(self, hidden: Tensor) -> Tensor:
        """``gelu(dense(hidden))`` with the bias and exact GELU fused into the GEMM."""
        return linear_gelu(self.dense, hidden)


def linear_gelu(dense: nn.Module, hidden: Tensor) -> Tensor:
    """``gelu(dense(hidden))``, fused when ``dense`` is a plain linear."""
    if _is_plain_linear(dense):
        return ops.linear_gelu(hidden, dense.weight, dense.bias)
    return F.gelu(dense(hidden))


def feed_forward(hidden: Tensor, up: nn.Module, down: nn.Module, dropout: nn.Dropout, ln: nn.LayerNorm) -> Tensor:
    """``ln(dropout(down(gelu(up(hidden)))) + hidden)`` as one feed-forward op that keeps only the
    pre-activation for backward; the second bias joins dropout, residual and LayerNorm. ``up`` and
    ``down`` are plain linears."""
    ffn = ops.ffn(hidden, up.weight, up.bias, down.weight)
    p, seed = _dropout_args(dropout, hidden.device)
    return ops.residual_layernorm(ffn, down.bias, hidden, ln.weight, ln.bias, ln.eps, p, seed)


def _fusable_feed_forward(layer: nn.Module) -> bool:
    """Whether ``layer``'s feed-forward block may run as one op without calling its modules: fastbert's
    own intermediate/output modules, unhooked, with plain linears (a hook, a subclass or a replaced module
    must see its call)."""
    intermediate, output = layer.intermediate, layer.output
    return (type(intermediate) in ROLE_TYPES["intermediate"] and type(output) in ROLE_TYPES["output"]
            and _unhooked(intermediate) and _unhooked(output)
            and _is_plain_linear(intermediate.dense) and _is_plain_linear(output.dense))


class LayerCore(nn.Module):
    """BERT's layer names: ``attention`` (``self``, ``output``), ``intermediate``, ``output``."""

    def forward(self, hidden: Tensor, attn) -> tuple[Tensor, Optional[Tensor]]:
        """One encoder layer on ``(rows, hidden)``; returns ``(rows, hidden)`` and the probs (or None)."""
        attention_output, probs = self.attention(hidden, attn)
        if _fusable_feed_forward(self):
            output = self.output
            return feed_forward(attention_output, self.intermediate.dense, output.dense, output.dropout,
                                output.LayerNorm), probs
        return self.output(self.intermediate(attention_output), attention_output), probs


# ----------------------------------------------------------------------------- the encoder stack in one call
@dataclass
class LayerStack:
    """What :func:`fastbert.ops.encoder_inference`/``encoder_training`` run a stack of layers with."""

    weights: list  # ENCODER_LAYER_TENSORS a layer, in the op's order
    heads: int
    eps: float
    dropout_sites: list  # three a layer (attention probabilities, attention output, output), None: none


# fastbert layer class -> reader(layer) -> (modules that must be unhooked, the 8 modules whose weight and
# bias the op takes, the 3 dropout sites, heads), or None where a module's type is not the family's own.
STACK_READERS: dict[type, Callable] = {}


def bert_layer_reader(attention: type, intermediate: type, output: type, self_attention: type,
                      self_output: type) -> Callable:
    """The :data:`STACK_READERS` entry of a layer with BERT's module names and these fastbert types."""
    types = (attention, intermediate, output, self_attention, self_output) + (nn.Linear,) * 6

    def read(layer: nn.Module) -> Optional[tuple]:
        children = layer._modules
        attention, intermediate, output = children["attention"], children["intermediate"], children["output"]
        self_attention, self_output = attention._modules["self"], attention._modules["output"]
        a, so = self_attention._modules, self_output._modules
        modules = (attention, intermediate, output, self_attention, self_output, a["query"], a["key"], a["value"],
                   so["dense"], intermediate._modules["dense"], output._modules["dense"])
        if tuple(map(type, modules)) != types:
            return None
        parts = (*modules[5:9], so["LayerNorm"], modules[9], modules[10], output._modules["LayerNorm"])
        sites = (a["dropout"], so["dropout"], output._modules["dropout"])
        return modules, parts, sites, self_attention.num_attention_heads

    return read


def _stack_weights(encoder: nn.Module, hidden: Tensor) -> Optional[LayerStack]:
    """The tensors :func:`fastbert.ops.encoder_inference` (without autograd) or
    :func:`fastbert.ops.encoder_training` (with it) runs ``encoder``'s layers with, or None where the stack
    must run module by module: under torch.compile, export, autocast or gradient checkpointing, with
    dropout in inference, and wherever a module differs from fastbert's own (a subclass, a replaced or
    wrapped linear such as PEFT's LoRA, a hook), so that whatever a user attached sees its call.

    Called on every forward: it reads the modules' own dicts (``_modules``, ``_parameters``) rather than
    going through ``nn.Module.__getattr__``, a few microseconds a layer in all."""
    if (torch.compiler.is_compiling() or ops.exporting() or torch.is_autocast_enabled(hidden.device.type)
            or not _unhooked(encoder)):
        return None
    layers = encoder._modules["layer"]._modules.values()
    if not layers:
        return None
    training = torch.is_grad_enabled()
    weights, sites, eps, heads = [], [], None, None
    for layer in layers:
        found = _layer_parts(layer, training)
        if found is None:
            return None
        parts, layer_sites, layer_heads = found
        ln1, ln2 = parts[4], parts[7]
        if eps is None:
            eps, heads = ln1.eps, layer_heads
        if ln1.eps != eps or ln2.eps != eps or layer_heads != heads:
            return None
        for module in parts:
            # .get: a parametrized or pruned module keeps its weight elsewhere (the module path reads it).
            weights += (module._parameters.get("weight"), module._parameters.get("bias"))
        sites += layer_sites
    dtype, device = hidden.dtype, hidden.device
    for w in weights:
        if w is None or w.dtype != dtype or w.device != device:
            return None
    return LayerStack(weights, heads, eps, sites)


def _layer_parts(layer: nn.Module, training: bool) -> Optional[tuple]:
    """``(parts, dropout sites, heads)`` of ``layer`` (see :data:`STACK_READERS`) where it computes exactly
    what these tensors do in the one-call stack: fastbert's own unhooked modules with plain unhooked
    linears; in inference no dropout, in training no gradient checkpointing (which must recompute the
    layer from its own call). None otherwise."""
    read = STACK_READERS.get(type(layer))
    if read is None or (training and layer.__dict__.get("gradient_checkpointing")):
        return None
    found = read(layer)
    if found is None:
        return None
    modules, parts, sites, heads = found
    for module in (layer, *modules):
        # A hook, or a forward replaced on the instance (accelerate's hooks, a monkeypatch), must see its call.
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks \
                or module._backward_pre_hooks or "forward" in module.__dict__:
            return None
    if not training:
        for dropout in sites:
            if dropout is not None and dropout.training and dropout.p > 0:
                return None
    return parts, sites, heads


def _stack_dropout(sites: list, device: torch.device) -> tuple[list, list]:
    """Each dropout site's probability and seed, drawn in the per-op path's order (no draw for a site
    a family does not have)."""
    dropout, seeds = [], []
    for module in sites:
        p, seed = _dropout_args(module, device) if module is not None else (0.0, None)
        dropout.append(p)
        seeds.append(seed)
    return dropout, seeds


class EncoderCore(nn.Module):
    """Any family's encoder: a ``layer`` list of layers called as ``layer(hidden, attn)``."""

    def forward(self, hidden: Tensor, attn, keep_input=None, output_attentions: bool = False):
        """Runs every layer on ``(rows, hidden)``; returns ``(rows, hidden)`` and the probs (or None).

        keep_input: None, or ``keep_input(i, hidden) -> hidden`` called on layer ``i``'s input; layer ``i``
        runs on what it returns, so a hidden state it records is part of the graph.
        """
        if keep_input is None and not output_attentions and isinstance(attn, PackedAttention):
            stack = _stack_weights(self, hidden)
            if stack is not None:
                if not torch.is_grad_enabled():
                    return ops.encoder_inference(hidden, attn.cu_seqlens, attn.max_seqlen, stack.weights,
                                                 stack.heads, stack.eps), None
                dropout, seeds = _stack_dropout(stack.dropout_sites, hidden.device)
                return ops.encoder_training(hidden, attn.cu_seqlens, attn.max_seqlen, stack.weights, stack.heads,
                                            stack.eps, dropout, seeds), None
        all_probs = [] if output_attentions else None
        for i, layer in enumerate(self.layer):
            if keep_input is not None:
                hidden = keep_input(i, hidden)
            hidden, probs = layer(hidden, attn)
            if output_attentions:
                all_probs.append(probs)
        return hidden, all_probs


# ============================================================================= BERT's modules
@converts(hf.BertEmbeddings, "embeddings")
class BertEmbeddings(EmbeddingsCore, hf.BertEmbeddings):
    pass


@converts(hf.BertSelfAttention, "self_attention")
class BertSelfAttention(SelfAttentionCore, hf.BertSelfAttention):
    pass


@converts(hf.BertSelfOutput, "self_output")
class BertSelfOutput(DenseResidualLayerNormCore, hf.BertSelfOutput):
    pass


@converts(hf.BertOutput, "output")
class BertOutput(DenseResidualLayerNormCore, hf.BertOutput):
    pass


@converts(hf.BertAttention, "attention")
class BertAttention(AttentionCore, hf.BertAttention):
    pass


@converts(hf.BertIntermediate, "intermediate")
class BertIntermediate(IntermediateCore, hf.BertIntermediate):
    pass


@converts(hf.BertLayer, "layer")
class BertLayer(LayerCore, hf.BertLayer):
    pass


@converts(hf.BertEncoder, "encoder")
class BertEncoder(EncoderCore, hf.BertEncoder):
    pass


STACK_READERS[BertLayer] = bert_layer_reader(BertAttention, BertIntermediate, BertOutput, BertSelfAttention,
                                             BertSelfOutput)


class PreTrainedCore:
    """Mixed into every family's ``*PreTrainedModel``: the encoder runs on fastbert's fused ops."""

    # fastbert records hidden states and attentions itself (transformers does it with hooks).
    _can_record_outputs = {}
    _keys_to_ignore_on_load_unexpected = [r"position_ids"]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' ``from_pretrained``; checkpoints load through safetensors or
        ``torch.load(weights_only=True)`` only (a pickle cannot run code)."""
        if kwargs.get("weights_only", True) is not True:
            raise ValueError("fastbert loads checkpoints through safetensors or torch.load(weights_only=True) "
                             "only: weights_only=False is refused")
        if args and kwargs.get("config") is None:
            _check_model_type(cls, args[0], kwargs)
        return super().from_pretrained(*args, **kwargs)


class BertPreTrainedModel(PreTrainedCore, hf.BertPreTrainedModel):
    """transformers' ``BertPreTrainedModel`` whose encoder runs on fastbert's fused ops."""


def _check_model_type(cls, path, kwargs) -> None:
    """A checkpoint of another architecture (RoBERTa, ELECTRA, ...) would load into BERT's modules with
    a warning and wrong numbers: refuse it, naming both types. RoBERTa's three names load into each other's
    classes, as in transformers."""
    hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
    try:
        config_dict, _ = cls.config_class.get_config_dict(path, **hub)
    except OSError:
        return  # nothing readable there: transformers' own loading says what is missing
    model_type, expected = config_dict.get("model_type"), cls.config_class.model_type
    if {model_type, expected} <= set(POSITIONS_FROM_PADDING):
        return  # RoBERTa, XLM-RoBERTa and CamemBERT are one architecture under three names
    if model_type is not None and model_type != expected:
        raise ValueError(f"{cls.__name__}.from_pretrained: {path} holds a {model_type!r} checkpoint; fastbert's "
                         f"{cls.__name__} takes {cls.config_class.model_type!r} checkpoints only (fastbert.AutoModel* "
                         f"picks the class from the checkpoint)")


class EncoderModelCore(nn.Module):
    """Any family's base model (``BertModel``, ``RobertaModel``, ...): validation, the padding-free layout,
    embeddings, the encoder and the outputs. A family changes the hooks below, not the forward."""

    _encoder_name = "encoder"  # the attribute holding the layers (DistilBERT: "transformer")

    def _default_position_ids(self, input_ids: Optional[Tensor], inputs_embeds: Optional[Tensor], batch: int,
                              seqlen: int, device) -> Tensor:
        """Position ids when none are given: ``0 .. seqlen-1`` (RoBERTa counts from its padding index)."""
        return torch.arange(seqlen, device=device)

    def _position_offset(self) -> int:
        """How far past ``seqlen`` the default position ids reach (RoBERTa: its padding index + 1)."""
        return 0

    def _embed(self, input_ids, token_type_ids, position_ids, inputs_embeds) -> Tensor:
        """``(tokens,)`` packed ids -> the encoder's input ``(tokens, hidden)``."""
        return self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)

    def _dropout_active(self) -> bool:
        config = self.config
        return config.hidden_dropout_prob > 0 or config.attention_probs_dropout_prob > 0

    def _output(self, sequence_output: Tensor, pooled_output: Optional[Tensor], hidden_states, attentions):
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output, pooler_output=pooled_output, hidden_states=hidden_states,
            attentions=attentions)

    def _encode(self, input_ids: Optional[Tensor], attention_mask: Optional[Tensor],
                token_type_ids: Optional[Tensor], position_ids: Optional[Tensor], inputs_embeds: Optional[Tensor],
                kwargs: dict):
        """The forward shared by every family (see ``BertModel.forward``); ``kwargs`` holds
        ``output_attentions``, ``output_hidden_states``, ``return_dict``, ``padding_free``, ``token_labels``
        and ``reads_first_token`` (a head that reads position 0, as the pooler does)."""
        config = self.config
        output_attentions = kwargs.pop("output_attentions", None)
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = kwargs.pop("output_hidden_states", None)
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = kwargs.pop("return_dict", None)
        return_dict = config.return_dict if return_dict is None else return_dict
        padding_free = kwargs.pop("padding_free", None)
        document_ids = kwargs.pop("document_ids", None)
        if document_ids is not None:
            return self._encode_documents(input_ids, document_ids, token_type_ids, position_ids, inputs_embeds,
                                          attention_mask, output_attentions, output_hidden_states, return_dict)
        if padding_free is None and getattr(self, "_exact_for_head", None):
            padding_free = False  # a head fastbert lacks may read any padded position (_head_fastbert_lacks)
        token_labels = kwargs.pop("token_labels", None)
        pooler = self._modules.get("pooler")
        reads_first = kwargs.pop("reads_first_token", False) or pooler is not None
        compiling = torch.compiler.is_compiling() or ops.exporting()
        batch, seqlen, position_ids = validate_inputs(
            config, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids,
            check_values=not compiling, embedding_size=self.embeddings.LayerNorm.weight.shape[0],
            position_offset=self._position_offset(),
            default_position_ids=lambda b, s, d: self._default_position_ids(input_ids, inputs_embeds, b, s, d))
        device = (input_ids if input_ids is not None else inputs_embeds).device
        position_ids = position_ids.expand(batch, seqlen)
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch, seqlen, dtype=torch.long, device=device)

        # An exported graph takes the exact padded path: its shapes may not depend on the mask's values.
        packed = padding_free is not False and not output_attentions and not ops.exporting() and (
            attention_mask is None or (attention_mask.dim() == 2 and not attention_mask.is_floating_point()))
        layout = None
        if packed:
            # padding_free=True: the caller vouches that nothing it uses reads a padded position.
            reads = None if padding_free else _padded_reads(attention_mask, token_labels, reads_first)
            layout = _packed_layout(attention_mask, batch, seqlen, device, compiling, reads)
        if layout is not None:
            attn = PackedAttention(layout.cu_seqlens, layout.max_seqlen)
        else:
            layout = full_layout(batch, seqlen, device)
            attn = PaddedAttention(batch, seqlen, _additive_mask(attention_mask, self.dtype))

        num_layers = len(self._modules[self._encoder_name].layer)
        selected = _selected_hidden_states(output_hidden_states, num_layers)
        kept = {}

        def keep_input(i: int, h: Tensor) -> Tensor:
            if i not in selected:
                return h
            kept[i] = scatter(h, layout)
            return gather(kept[i], layout)  # the next layer runs on the returned state: it stays in the graph

        if isinstance(attn, PackedAttention) and self._graph_eligible(input_ids, selected, compiling):
            hidden = cuda_graphs.graphed_encoder(self, EncoderModelCore._encode_static)(
                gather(input_ids, layout), gather(token_type_ids, layout), gather(position_ids, layout),
                layout.cu_seqlens, layout.max_seqlen)
            if layout.indices is None:
                hidden = hidden.clone()  # scatter would return a view of the graph's buffer
            all_probs = None
        else:
            with self._dropout_seeds(device, compiling):
                hidden = self._embed(
                    gather(input_ids, layout) if input_ids is not None else None,
                    gather(token_type_ids, layout), gather(position_ids, layout),
                    gather(inputs_embeds, layout) if inputs_embeds is not None else None,
                )
                hidden, all_probs = self._modules[self._encoder_name](
                    hidden, attn, keep_input if selected else None, output_attentions)

        sequence_output = scatter(hidden, layout)
        pooled_output = pooler(sequence_output) if pooler is not None else None
        hidden_states = None
        if selected is not None:
            hidden_states = tuple(kept.get(i) for i in range(num_layers)) + (
                sequence_output if num_layers in selected else None,)
        result = self._output(sequence_output, pooled_output, hidden_states,
                              tuple(all_probs) if all_probs else None)
        return result if return_dict else result.to_tuple()

    def _encode_documents(self, input_ids, document_ids, token_type_ids, position_ids, inputs_embeds,
                          attention_mask, output_attentions, output_hidden_states, return_dict):
        """The forward of rows packing several documents each (``document_ids``, see ``BertModel.forward``)."""
        if input_ids is None or inputs_embeds is not None or attention_mask is not None:
            raise ValueError("document_ids goes with input_ids, without attention_mask or inputs_embeds (its "
                             "nonzero positions are the real tokens)")
        if output_attentions or output_hidden_states:
            raise ValueError("document_ids does not go with output_attentions or output_hidden_states")
        if torch.compiler.is_compiling() or ops.exporting():
            raise ValueError("document_ids runs in eager mode only (its layout is read on the host)")
        if document_ids.shape != input_ids.shape or document_ids.dtype.is_floating_point:
            raise ValueError(f"document_ids must be an integer tensor shaped like input_ids {tuple(input_ids.shape)}, "
                             f"got {document_ids.dtype} {tuple(document_ids.shape)}")
        if position_ids is None:
            position_ids = document_positions(document_ids, self._position_offset())
        batch, seqlen, position_ids = validate_inputs(
            self.config, input_ids, None, None, token_type_ids, position_ids,
            embedding_size=self.embeddings.LayerNorm.weight.shape[0], position_offset=self._position_offset())
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        layout = document_layout(document_ids)
        attn = PackedAttention(layout.cu_seqlens, layout.max_seqlen)
        with self._dropout_seeds(input_ids.device, False):
            hidden = self._embed(gather(input_ids, layout), gather(token_type_ids, layout),
                                 gather(position_ids.expand(batch, seqlen), layout), None)
            hidden, _ = self._modules[self._encoder_name](hidden, attn, None, False)
        sequence_output = scatter(hidden, layout)
        pooler = self._modules.get("pooler")
        result = self._output(sequence_output, pooler(sequence_output) if pooler is not None else None, None, None)
        return result if (self.config.return_dict if return_dict is None else return_dict) else result.to_tuple()

    def use_cuda_graphs(self, enabled: bool = True) -> None:
        """Replays inference calls through CUDA graphs, one per bucket of batch shapes
        (:mod:`fastbert.cuda_graphs`); ``fastbert.optimize(model, cuda_graphs=True)`` calls it."""
        self._cuda_graphs_enabled = enabled

    def _graph_eligible(self, input_ids: Optional[Tensor], selected, compiling: bool) -> bool:
        """A call the graphs can take: inference on ids, nothing recorded, not traced or captured."""
        if not getattr(self, "_cuda_graphs_enabled", False) or input_ids is None or selected is not None:
            return False
        if self.training or torch.is_grad_enabled() or compiling or torch.is_autocast_enabled(input_ids.device.type):
            return False
        return not (input_ids.is_cuda and torch.cuda.is_current_stream_capturing())

    def _encode_static(self, static: "cuda_graphs.StaticBatch") -> Tensor:
        """Embeddings and every layer on a bucket's static buffers: ``(tokens, hidden)``."""
        hidden = self._embed(static.ids, static.types, static.positions, None)
        return self._modules[self._encoder_name](hidden, PackedAttention(static.cu_seqlens, static.key.max_seqlen))[0]

    def _dropout_seeds(self, device: torch.device, compiling: bool):
        """One seed draw for every dropout site of a training forward (embeddings, then three per layer).
        Not while compiling, nor with gradient checkpointing, whose recomputation draws its seeds again
        from the restored RNG state."""
        layers = self._modules[self._encoder_name].layer
        if not (self.training and self._dropout_active()) or compiling or any(
                getattr(layer, "gradient_checkpointing", False) for layer in layers):
            return contextlib.nullcontext()
        return _seed_pool.drawn(1 + 3 * len(layers), device)


def check_encoder_only(encoder_hidden_states, encoder_attention_mask, cache, kwargs) -> None:
    """Raises ``ValueError`` for the decoder inputs an encoder-only fastbert model does not take."""
    if encoder_hidden_states is not None or encoder_attention_mask is not None:
        raise ValueError("fastbert runs BERT-family models as encoders only: encoder_hidden_states "
                         "(cross-attention) is not supported")
    if cache is not None or kwargs.get("past_key_values") is not None:
        raise ValueError("fastbert runs BERT-family models as encoders only: cache (incremental decoding) is "
                         "not supported")


class BertModelCore(EncoderModelCore):
    """The forward of the families whose base model takes BERT's arguments (BERT, RoBERTa, XLM-R, ELECTRA)."""

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None,
        encoder_hidden_states: Optional[Tensor] = None,
        encoder_attention_mask: Optional[Tensor] = None,
        cache=None,
        use_cache: Optional[bool] = None,
        **kwargs,
    ):
        """transformers' ``BertModel.forward``: the same signature and outputs, with ``output_attentions``,
        ``output_hidden_states`` and ``return_dict`` among the keyword arguments as there.

        input_ids / token_type_ids / position_ids: int ``(batch, seqlen)``; inputs_embeds:
        ``(batch, seqlen, hidden)``; attention_mask: ``(batch, seqlen)`` 0/1 (packed, padding-free), or
        ``(batch, seqlen, seqlen)`` / ``(batch, 1 or heads, seqlen, seqlen)`` (unfused path).
        output_hidden_states: True for all ``num_hidden_layers + 1`` hidden states, or an index or list
        of indices (negative ones from the end) for only those, the others None, as transformers.
        padding_free (keyword): None (default) packs the real tokens whenever the mask allows it and
        nothing read comes from a padded position (see below); True always packs (the caller vouches that
        it uses no value derived from a padded position); False runs the exact unfused path, which
        computes padded positions as transformers does.
        token_labels (keyword): int ``(batch, seqlen)`` per-token labels a head's loss reads (-100 ignored).
        document_ids (keyword, fastbert's own): int ``(batch, seqlen)`` for rows packing several documents
        each (pretraining): 0 at padding, each run of one nonzero id in a row a document that attends only
        to itself, with position ids counted from its start; in place of ``attention_mask``.

        With ``padding_free=None``, a call whose result reads a padded position (a labelled padded token,
        or position 0 under the pooler with left padding) runs the exact path; the check shares
        unpadding's one host read. Under ``torch.compile`` it cannot branch on values: such an input fails
        an assertion instead, naming ``padding_free=False``. Returns ``last_hidden_state (batch, seqlen, hidden)`` (zeros at
        padded positions when packed) and ``pooler_output (batch, hidden)``.
        """
        check_encoder_only(encoder_hidden_states, encoder_attention_mask, cache, kwargs)
        return self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)


@converts(hf.BertModel)
class BertModel(BertModelCore, BertPreTrainedModel, hf.BertModel):
    pass


def _selected_hidden_states(output_hidden_states, num_layers: int) -> Optional[frozenset]:
    """Which of the ``num_layers + 1`` hidden states to return, read as transformers reads
    ``output_hidden_states`` (a flag, an index or a list of indices); None for none at all."""
    if not output_hidden_states:
        return None
    count = num_layers + 1
    if output_hidden_states is True:
        return frozenset(range(count))
    wanted = [output_hidden_states] if isinstance(output_hidden_states, int) else list(output_hidden_states)
    return frozenset(i % count for i in wanted if -count <= i < count)


def _padded_reads(mask: Optional[Tensor], token_labels: Optional[Tensor], pooled: bool) -> Optional[Tensor]:
    """bool ``(batch, seqlen)``: the positions the result reads (labelled tokens; position 0 under the
    pooler), or None when nothing but real tokens can be read."""
    if mask is None or mask.dim() != 2:
        return None
    reads = None
    if token_labels is not None and token_labels.shape == mask.shape:
        reads = token_labels != -100
    if pooled:
        first = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
        first[:, 0] = True
        reads = first if reads is None else reads | first
    return reads


def _packed_layout(mask: Optional[Tensor], batch: int, seqlen: int, device, compiling: bool,
                   reads: Optional[Tensor]) -> Optional[PackedLayout]:
    """The packed layout, or None when ``reads`` marks a padded position (the call must run exact)."""
    if mask is None:
        return full_layout(batch, seqlen, device)
    if not compiling:
        return unpad_layout(mask, reads)
    if reads is not None:
        torch._assert_async(~(reads & ~mask.bool()).any(), "fastbert: this input reads a padded position (a "
                            "label there, or position 0 under the pooler); under torch.compile pass "
                            "padding_free=False for transformers' numbers (or True to pack regardless)")
    return static_layout(mask)


def _additive_mask(mask: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """transformers' mask semantics as an additive float mask broadcastable to (batch, heads, q, k).

    2-D and 3-D masks: nonzero means attend. 4-D masks: boolean means attend-if-True; floating-point is
    already additive and used as is.
    """
    if mask is None:
        return None
    if mask.dim() == 4 and mask.is_floating_point():
        return mask.to(dtype)
    keep = mask.bool()
    if keep.dim() == 2:
        keep = keep[:, None, None, :]
    elif keep.dim() == 3:
        keep = keep[:, None, :, :]
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(keep, zero, torch.finfo(dtype).min)


# ============================================================================= task heads
def head_forward(hf_class: type, token_labels: Optional[str] = None, reads_first_token: bool = False,
                 span_labels: tuple = (), summary: Optional[str] = None) -> Callable:
    """transformers' ``hf_class.forward`` (its signature kept: ``Trainer`` picks dataset columns from it)
    telling the base model what the head reads, so that padded positions it reads are computed exactly:

    token_labels: the argument holding per-token labels (a label at a padded position makes the call exact);
    reads_first_token: the head reads position 0 (a pad token under left padding);
    span_labels: arguments whose presence makes the call exact (a span loss takes a softmax over every
    position, padded ones included);
    summary: the attribute holding the head's sequence summary, which pools as its ``summary_type`` says:
    ``"first"`` reads position 0, any other type (last, mean, cls_index) reads padded positions, so the
    call is exact."""
    forward = hf_class.forward
    signature = inspect.signature(forward)
    names = [n for n, p in signature.parameters.items()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][1:]

    def head(self, *args, **kwargs):
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}.forward takes {len(names)} positional arguments, got {len(args)}")
        for name in names[:len(args)]:
            if name in kwargs:
                raise TypeError(f"{type(self).__name__}.forward() got multiple values for argument {name!r}")
        kwargs.update(zip(names, args))
        if token_labels is not None:
            kwargs["token_labels"] = kwargs.get(token_labels)
        if reads_first_token:
            kwargs["reads_first_token"] = True
        if summary is not None:
            if getattr(self, summary).summary_type == "first":
                kwargs["reads_first_token"] = True
            else:
                kwargs.setdefault("padding_free", False)
        if span_labels and all(kwargs.get(name) is not None for name in span_labels):
            kwargs.setdefault("padding_free", False)
        return forward(self, **kwargs)

    head.__signature__ = signature
    head.__doc__ = f"transformers' ``{hf_class.__name__}.forward``, on fastbert's encoder."
    head.__name__ = head.__qualname__ = "forward"
    return head


# transformers' head classes with fastbert's encoder: their forward, losses and outputs are unchanged.
@converts(hf.BertForSequenceClassification)
class BertForSequenceClassification(BertPreTrainedModel, hf.BertForSequenceClassification):
    pass


@converts(hf.BertForTokenClassification)
class BertForTokenClassification(BertPreTrainedModel, hf.BertForTokenClassification):
    forward = head_forward(hf.BertForTokenClassification, token_labels="labels")


@converts(hf.BertForQuestionAnswering)
class BertForQuestionAnswering(BertPreTrainedModel, hf.BertForQuestionAnswering):
    forward = head_forward(hf.BertForQuestionAnswering, span_labels=("start_positions", "end_positions"))


@converts(hf.BertForMultipleChoice)
class BertForMultipleChoice(BertPreTrainedModel, hf.BertForMultipleChoice):
    pass


@converts(hf.BertForMaskedLM)
class BertForMaskedLM(BertPreTrainedModel, hf.BertForMaskedLM):
    forward = head_forward(hf.BertForMaskedLM, token_labels="labels")


@converts(hf.BertForNextSentencePrediction)
class BertForNextSentencePrediction(BertPreTrainedModel, hf.BertForNextSentencePrediction):
    pass


@converts(hf.BertForPreTraining)
class BertForPreTraining(BertPreTrainedModel, hf.BertForPreTraining):
    forward = head_forward(hf.BertForPreTraining, token_labels="labels")


def convert_modules(model: nn.Module) -> int:
    """Swaps, in place, the class of every transformers module of a supported family in ``model`` for
    fastbert's.

    Parameters, buffers, hooks, device, dtype, mode and ``requires_grad`` are untouched (the objects
    stay the same). Returns how many modules were converted; 0 when there was nothing left to do.
    """
    load_all()  # every family registers its classes on import
    targets = [(m, FASTBERT_CLASSES[type(m)]) for m in model.modules() if type(m) in FASTBERT_CLASSES]
    for module, _ in targets:  # refuse before touching anything
        if isinstance(module, PreTrainedModel):
            check_config_supported(module.config)
    for module, target in targets:
        module.__class__ = target
    for parent in model.modules():
        for child in parent.children():
            if isinstance(child, EncoderModelCore) and _head_fastbert_lacks(parent):
                child._exact_for_head = type(parent).__name__
    return len(targets)


def _head_fastbert_lacks(module: nn.Module) -> bool:
    """A transformers model holding a base model that fastbert has no class for (``RobertaForCausalLM``,
    ``BertLMHeadModel``, a user's ``BertPreTrainedModel`` subclass): fastbert cannot know which positions it
    reads, so its base model runs the exact padded path, with transformers' values at every position."""
    return isinstance(module, PreTrainedModel) and not isinstance(module, PreTrainedCore)


def build_then_convert(cls: type) -> type:
    """Gives a fastbert model class transformers' constructor followed by :func:`convert_modules`."""
    base = next(b for b in cls.__mro__[1:] if b in FASTBERT_CLASSES)

    def __init__(self, config, *args, **kwargs):
        check_config_supported(config)
        base.__init__(self, config, *args, **kwargs)
        convert_modules(self)

    __init__.__doc__ = f"Builds ``transformers.{base.__name__}`` from ``config``, then converts it to fastbert."
    cls.__init__ = __init__
    return cls


def finish_family(namespace: dict) -> None:
    """Gives every fastbert model class defined in ``namespace`` (a family module's globals) transformers'
    constructor followed by the conversion."""
    for cls in list(namespace.values()):
        if isinstance(cls, type) and issubclass(cls, PreTrainedCore) and cls in FASTBERT_CLASSES.values():
            build_then_convert(cls)


finish_family(globals())
