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
import threading
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _torch_module
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.models.bert import modeling_bert as hf

from fastbert import cuda_graphs, ops
from fastbert.padding import PackedLayout, full_layout, gather, scatter, static_layout, unpad_layout
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


# ============================================================================= modules
class BertEmbeddings(hf.BertEmbeddings):
    def forward(self, input_ids: Optional[Tensor], token_type_ids: Tensor, position_ids: Tensor,
                inputs_embeds: Optional[Tensor]) -> Tensor:
        """Fused lookup + sum + LayerNorm + dropout of ``(tokens,)`` index vectors -> ``(tokens, hidden)``."""
        if inputs_embeds is None and type(self.word_embeddings) is not nn.Embedding:
            inputs_embeds, input_ids = self.word_embeddings(input_ids), None
        device = position_ids.device
        p, seed = _dropout_args(self.dropout, device)
        padding_idx = self.word_embeddings.padding_idx if input_ids is not None else None
        return ops.embeddings(
            input_ids, inputs_embeds, position_ids, token_type_ids, self.word_embeddings.weight,
            self.position_embeddings.weight, self.token_type_embeddings.weight, self.LayerNorm.weight,
            self.LayerNorm.bias, self.LayerNorm.eps, p, seed, -1 if padding_idx is None else padding_idx,
            check_values=False,  # the model validated the ids against its config
        )


class BertSelfAttention(hf.BertSelfAttention):
    def _qkv(self, hidden: Tensor) -> Tensor:
        """One GEMM for q, k and v: ``(rows, hidden)`` -> ``(rows, 3 * hidden)``."""
        linears = (self.query, self.key, self.value)
        biases = [m.bias for m in linears]
        if all(_is_plain_linear(m) for m in linears) and len({b is None for b in biases}) == 1:
            # The op reads the three weights where they are: no concatenation per call (a cached one would
            # go stale under fused optimizers, whose in-place steps leave the version counters as they were).
            return ops.qkv(hidden, *(m.weight for m in linears), *biases)
        return torch.cat([m(hidden) for m in linears], dim=-1)

    def forward(self, hidden: Tensor, attn) -> tuple[Tensor, Optional[Tensor]]:
        """``(rows, hidden)`` -> ``(context (rows, hidden), probs or None)``."""
        rows = hidden.shape[0]
        heads, dim = self.num_attention_heads, self.attention_head_size
        qkv = self._qkv(hidden).view(rows, 3, heads, dim)
        p, seed = _dropout_args(self.dropout, hidden.device)
        if isinstance(attn, PackedAttention):
            context = ops.attention(qkv, attn.cu_seqlens, attn.max_seqlen, p, seed, check_values=False)
            return context.reshape(rows, heads * dim), None
        return _eager_attention(qkv, attn, self.dropout)


def _eager_attention(qkv: Tensor, attn: PaddedAttention, dropout: nn.Dropout):
    """transformers' eager attention on padded rows; returns the (pre-dropout) probabilities too."""
    q, k, v = qkv.view(attn.batch, attn.seqlen, *qkv.shape[1:]).permute(2, 0, 3, 1, 4).unbind(0)
    scores = torch.matmul(q, k.transpose(2, 3)) * (q.shape[-1] ** -0.5)
    if attn.additive_mask is not None:
        scores = scores + attn.additive_mask
    probs = F.softmax(scores, dim=-1)
    context = torch.matmul(dropout(probs), v).transpose(1, 2).reshape(attn.batch * attn.seqlen, -1)
    return context, probs


def _dense_dropout_residual_layernorm(module: nn.Module, hidden: Tensor, input_tensor: Tensor) -> Tensor:
    """``LayerNorm(dropout(dense(hidden)) + input_tensor)``, bias and dropout fused into the LayerNorm."""
    x, bias = _linear_without_bias(module.dense, hidden)
    p, seed = _dropout_args(module.dropout, hidden.device)
    ln = module.LayerNorm
    return ops.residual_layernorm(x, bias, input_tensor, ln.weight, ln.bias, ln.eps, p, seed)


class BertSelfOutput(hf.BertSelfOutput):
    forward = _dense_dropout_residual_layernorm


class BertOutput(hf.BertOutput):
    forward = _dense_dropout_residual_layernorm


class BertAttention(hf.BertAttention):
    def forward(self, hidden: Tensor, attn) -> tuple[Tensor, Optional[Tensor]]:
        context, probs = self.self(hidden, attn)
        return self.output(context, hidden), probs


class BertIntermediate(hf.BertIntermediate):
    def forward(self, hidden: Tensor) -> Tensor:
        """``gelu(dense(hidden))`` with the bias and exact GELU fused into the GEMM."""
        if _is_plain_linear(self.dense):
            return ops.linear_gelu(hidden, self.dense.weight, self.dense.bias)
        return F.gelu(self.dense(hidden))


def _fusable_feed_forward(layer: nn.Module) -> bool:
    """Whether ``layer``'s feed-forward block may run as one op without calling its modules: fastbert's
    own intermediate/output modules, unhooked, with plain linears (a hook, a subclass or a replaced module
    must see its call)."""
    intermediate, output = layer.intermediate, layer.output
    return (type(intermediate) is BertIntermediate and type(output) is BertOutput
            and _unhooked(intermediate) and _unhooked(output)
            and _is_plain_linear(intermediate.dense) and _is_plain_linear(output.dense))


class BertLayer(hf.BertLayer):
    def forward(self, hidden: Tensor, attn) -> tuple[Tensor, Optional[Tensor]]:
        """One encoder layer on ``(rows, hidden)``; returns ``(rows, hidden)`` and the probs (or None)."""
        attention_output, probs = self.attention(hidden, attn)
        if _fusable_feed_forward(self):
            intermediate, output = self.intermediate.dense, self.output.dense
            # The whole feed-forward block in one op that keeps only the pre-activation for backward;
            # the second bias joins dropout, residual and LayerNorm.
            ffn = ops.ffn(attention_output, intermediate.weight, intermediate.bias, output.weight)
            p, seed = _dropout_args(self.output.dropout, hidden.device)
            ln = self.output.LayerNorm
            return ops.residual_layernorm(ffn, output.bias, attention_output, ln.weight, ln.bias, ln.eps, p,
                                          seed), probs
        return self.output(self.intermediate(attention_output), attention_output), probs


def _stack_weights(encoder: nn.Module, hidden: Tensor) -> Optional[list]:
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
    weights, eps = [], None
    for layer in layers:
        parts = _layer_parts(layer, training)
        if parts is None:
            return None
        query, key, value, attention_dense, ln1, intermediate_dense, output_dense, ln2 = parts
        if eps is None:
            eps = ln1.eps
        if ln1.eps != eps or ln2.eps != eps:
            return None
        for module in parts:
            # .get: a parametrized or pruned module keeps its weight elsewhere (the module path reads it).
            weights += (module._parameters.get("weight"), module._parameters.get("bias"))
    dtype, device = hidden.dtype, hidden.device
    for w in weights:
        if w is None or w.dtype != dtype or w.device != device:
            return None
    return weights


def _layer_parts(layer: nn.Module, training: bool) -> Optional[tuple]:
    """``layer``'s query, key, value, attention-output dense, LayerNorm 1, intermediate dense, output dense
    and LayerNorm 2 where it computes exactly what these tensors do in the one-call stack: fastbert's own
    unhooked modules with plain unhooked linears; in inference no dropout, in training no gradient
    checkpointing (which must recompute the layer from its own call). None otherwise."""
    if type(layer) is not BertLayer or (training and layer.__dict__.get("gradient_checkpointing")):
        return None
    children = layer._modules
    attention, intermediate, output = children["attention"], children["intermediate"], children["output"]
    self_attention, self_output = attention._modules["self"], attention._modules["output"]
    a, so = self_attention._modules, self_output._modules
    modules = (attention, intermediate, output, self_attention, self_output, a["query"], a["key"], a["value"],
               so["dense"], intermediate._modules["dense"], output._modules["dense"])
    if tuple(map(type, modules)) != _LAYER_TYPES:
        return None
    for module in (layer, *modules):
        # A hook, or a forward replaced on the instance (accelerate's hooks, a monkeypatch), must see its call.
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks \
                or module._backward_pre_hooks or "forward" in module.__dict__:
            return None
    if not training:
        for dropout in _dropout_sites(layer):
            if dropout.training and dropout.p > 0:
                return None
    return (*modules[5:9], so["LayerNorm"], modules[9], modules[10], output._modules["LayerNorm"])


def _dropout_sites(layer: nn.Module) -> tuple:
    """A layer's three dropout modules in the order its forward draws their seeds (read from the modules'
    dicts, as :func:`_layer_parts` reads the rest: this runs on every training forward)."""
    attention = layer._modules["attention"]._modules
    return (attention["self"]._modules["dropout"], attention["output"]._modules["dropout"],
            layer._modules["output"]._modules["dropout"])


def _stack_dropout(encoder: nn.Module, device: torch.device) -> tuple[list, list]:
    """Each layer's three dropout probabilities and seeds, drawn in the per-op path's order."""
    dropout, seeds = [], []
    for layer in encoder.layer:
        for module in _dropout_sites(layer):
            p, seed = _dropout_args(module, device)
            dropout.append(p)
            seeds.append(seed)
    return dropout, seeds


# The types _layer_parts requires, in its order: exactly fastbert's modules and plain linears.
_LAYER_TYPES = (BertAttention, BertIntermediate, BertOutput, BertSelfAttention, BertSelfOutput) + (nn.Linear,) * 6


class BertEncoder(hf.BertEncoder):
    def forward(self, hidden: Tensor, attn, keep_input=None, output_attentions: bool = False):
        """Runs every layer on ``(rows, hidden)``; returns ``(rows, hidden)`` and the probs (or None).

        keep_input: None, or ``keep_input(i, hidden) -> hidden`` called on layer ``i``'s input; layer ``i``
        runs on what it returns, so a hidden state it records is part of the graph.
        """
        if keep_input is None and not output_attentions and isinstance(attn, PackedAttention):
            weights = _stack_weights(self, hidden)
            if weights is not None:
                first = self.layer[0].attention
                heads, eps = first.self.num_attention_heads, first.output.LayerNorm.eps
                if not torch.is_grad_enabled():
                    return ops.encoder_inference(hidden, attn.cu_seqlens, attn.max_seqlen, weights, heads, eps), None
                dropout, seeds = _stack_dropout(self, hidden.device)
                return ops.encoder_training(hidden, attn.cu_seqlens, attn.max_seqlen, weights, heads, eps, dropout,
                                            seeds), None
        all_probs = [] if output_attentions else None
        for i, layer in enumerate(self.layer):
            if keep_input is not None:
                hidden = keep_input(i, hidden)
            hidden, probs = layer(hidden, attn)
            if output_attentions:
                all_probs.append(probs)
        return hidden, all_probs


class BertPreTrainedModel(hf.BertPreTrainedModel):
    """transformers' ``BertPreTrainedModel`` whose encoder runs on fastbert's fused ops."""

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


def _check_model_type(cls, path, kwargs) -> None:
    """A checkpoint of another architecture (RoBERTa, ELECTRA, ...) would load into BERT's modules with
    a warning and wrong numbers: refuse it, naming both types."""
    hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
    try:
        config_dict, _ = cls.config_class.get_config_dict(path, **hub)
    except OSError:
        return  # nothing readable there: transformers' own loading says what is missing
    model_type = config_dict.get("model_type")
    if model_type is not None and model_type != cls.config_class.model_type:
        raise ValueError(f"{cls.__name__}.from_pretrained: {path} holds a {model_type!r} checkpoint; fastbert's "
                         f"{cls.__name__} takes {cls.config_class.model_type!r} checkpoints only")


class BertModel(BertPreTrainedModel, hf.BertModel):
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

        With ``padding_free=None``, a call whose result reads a padded position (a labelled padded token,
        or position 0 under the pooler with left padding) runs the exact path; the check shares
        unpadding's one host read. Under ``torch.compile`` it cannot branch on values: such an input fails
        an assertion instead, naming ``padding_free=False``. Returns ``last_hidden_state (batch, seqlen, hidden)`` (zeros at
        padded positions when packed) and ``pooler_output (batch, hidden)``.
        """
        config = self.config
        output_attentions = kwargs.pop("output_attentions", None)
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = kwargs.pop("output_hidden_states", None)
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = kwargs.pop("return_dict", None)
        return_dict = config.return_dict if return_dict is None else return_dict
        padding_free = kwargs.pop("padding_free", None)
        token_labels = kwargs.pop("token_labels", None)
        if encoder_hidden_states is not None or encoder_attention_mask is not None:
            raise ValueError("fastbert runs BERT as an encoder only: encoder_hidden_states (cross-attention) "
                             "is not supported")
        if cache is not None or kwargs.get("past_key_values") is not None:
            raise ValueError("fastbert runs BERT as an encoder only: cache (incremental decoding) is not supported")
        compiling = torch.compiler.is_compiling() or ops.exporting()
        batch, seqlen = validate_inputs(config, input_ids, inputs_embeds, attention_mask, token_type_ids,
                                        position_ids, check_values=not compiling)
        device = (input_ids if input_ids is not None else inputs_embeds).device
        if position_ids is None:
            position_ids = torch.arange(seqlen, device=device)
        position_ids = position_ids.expand(batch, seqlen)
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch, seqlen, dtype=torch.long, device=device)

        # An exported graph takes the exact padded path: its shapes may not depend on the mask's values.
        packed = padding_free is not False and not output_attentions and not ops.exporting() and (
            attention_mask is None or (attention_mask.dim() == 2 and not attention_mask.is_floating_point()))
        layout = None
        if packed:
            # padding_free=True: the caller vouches that nothing it uses reads a padded position.
            reads = None if padding_free else _padded_reads(attention_mask, token_labels, self.pooler is not None)
            layout = _packed_layout(attention_mask, batch, seqlen, device, compiling, reads)
        if layout is not None:
            attn = PackedAttention(layout.cu_seqlens, layout.max_seqlen)
        else:
            layout = full_layout(batch, seqlen, device)
            attn = PaddedAttention(batch, seqlen, _additive_mask(attention_mask, self.dtype))

        selected = _selected_hidden_states(output_hidden_states, config.num_hidden_layers)
        kept = {}

        def keep_input(i: int, h: Tensor) -> Tensor:
            if i not in selected:
                return h
            kept[i] = scatter(h, layout)
            return gather(kept[i], layout)  # the next layer runs on the returned state: it stays in the graph

        if isinstance(attn, PackedAttention) and self._graph_eligible(input_ids, selected, compiling):
            hidden = cuda_graphs.graphed_encoder(self, BertModel._encode_static)(
                gather(input_ids, layout), gather(token_type_ids, layout), gather(position_ids, layout),
                layout.cu_seqlens, layout.max_seqlen)
            if layout.indices is None:
                hidden = hidden.clone()  # scatter would return a view of the graph's buffer
            all_probs = None
        else:
            with self._dropout_seeds(device, compiling):
                hidden = self.embeddings(
                    gather(input_ids, layout) if input_ids is not None else None,
                    gather(token_type_ids, layout), gather(position_ids, layout),
                    gather(inputs_embeds, layout) if inputs_embeds is not None else None,
                )
                hidden, all_probs = self.encoder(hidden, attn, keep_input if selected else None, output_attentions)

        sequence_output = scatter(hidden, layout)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        hidden_states = None
        if selected is not None:
            last = config.num_hidden_layers
            hidden_states = tuple(kept.get(i) for i in range(last)) + (
                sequence_output if last in selected else None,)
        result = BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            hidden_states=hidden_states,
            attentions=tuple(all_probs) if all_probs else None,
        )
        return result if return_dict else result.to_tuple()


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
        hidden = self.embeddings(static.ids, static.types, static.positions, None)
        return self.encoder(hidden, PackedAttention(static.cu_seqlens, static.key.max_seqlen))[0]

    def _dropout_seeds(self, device: torch.device, compiling: bool):
        """One seed draw for every dropout site of a training forward (embeddings, then three per layer).
        Not while compiling, nor with gradient checkpointing, whose recomputation draws its seeds again
        from the restored RNG state."""
        config = self.config
        dropout = config.hidden_dropout_prob > 0 or config.attention_probs_dropout_prob > 0
        if not (self.training and dropout) or compiling or any(
                getattr(layer, "gradient_checkpointing", False) for layer in self.encoder.layer):
            return contextlib.nullcontext()
        return _seed_pool.drawn(1 + 3 * config.num_hidden_layers, device)


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
# transformers' head classes with fastbert's encoder: their forward, losses and outputs are unchanged.
class BertForSequenceClassification(BertPreTrainedModel, hf.BertForSequenceClassification):
    pass


class BertForTokenClassification(BertPreTrainedModel, hf.BertForTokenClassification):
    def forward(self, input_ids: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None,
                token_type_ids: Optional[Tensor] = None, position_ids: Optional[Tensor] = None,
                inputs_embeds: Optional[Tensor] = None, labels: Optional[Tensor] = None, **kwargs):
        """transformers' forward; a label at a padded position makes the call exact (``BertModel.forward``)."""
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                               position_ids=position_ids, inputs_embeds=inputs_embeds, labels=labels,
                               token_labels=labels, **kwargs)


class BertForQuestionAnswering(BertPreTrainedModel, hf.BertForQuestionAnswering):
    def forward(self, input_ids: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None,
                token_type_ids: Optional[Tensor] = None, position_ids: Optional[Tensor] = None,
                inputs_embeds: Optional[Tensor] = None, start_positions: Optional[Tensor] = None,
                end_positions: Optional[Tensor] = None, **kwargs):
        """transformers' forward, with its signature (``Trainer`` picks dataset columns from it).

        transformers' span loss takes a softmax over every position, padded ones included, so a call with
        a loss needs the padded positions' hidden states: it runs unpacked, exactly as transformers."""
        if start_positions is not None and end_positions is not None:
            kwargs.setdefault("padding_free", False)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                               position_ids=position_ids, inputs_embeds=inputs_embeds,
                               start_positions=start_positions, end_positions=end_positions, **kwargs)


class BertForMultipleChoice(BertPreTrainedModel, hf.BertForMultipleChoice):
    pass


class BertForMaskedLM(BertPreTrainedModel, hf.BertForMaskedLM):
    def forward(self, input_ids: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None,
                token_type_ids: Optional[Tensor] = None, position_ids: Optional[Tensor] = None,
                inputs_embeds: Optional[Tensor] = None, encoder_hidden_states: Optional[Tensor] = None,
                encoder_attention_mask: Optional[Tensor] = None, labels: Optional[Tensor] = None, **kwargs):
        """transformers' forward; a label at a padded position makes the call exact (``BertModel.forward``)."""
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                               position_ids=position_ids, inputs_embeds=inputs_embeds,
                               encoder_hidden_states=encoder_hidden_states,
                               encoder_attention_mask=encoder_attention_mask, labels=labels, token_labels=labels,
                               **kwargs)


class BertForNextSentencePrediction(BertPreTrainedModel, hf.BertForNextSentencePrediction):
    pass


class BertForPreTraining(BertPreTrainedModel, hf.BertForPreTraining):
    def forward(self, input_ids: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None,
                token_type_ids: Optional[Tensor] = None, position_ids: Optional[Tensor] = None,
                inputs_embeds: Optional[Tensor] = None, labels: Optional[Tensor] = None,
                next_sentence_label: Optional[Tensor] = None, **kwargs):
        """transformers' forward; a masked-LM label at a padded position makes the call exact
        (``BertModel.forward``)."""
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                               position_ids=position_ids, inputs_embeds=inputs_embeds, labels=labels,
                               next_sentence_label=next_sentence_label, token_labels=labels, **kwargs)


# transformers class -> fastbert class, for every class whose forward fastbert replaces.
FASTBERT_CLASSES: dict[type, type] = {
    hf.BertEmbeddings: BertEmbeddings,
    hf.BertSelfAttention: BertSelfAttention,
    hf.BertSelfOutput: BertSelfOutput,
    hf.BertAttention: BertAttention,
    hf.BertIntermediate: BertIntermediate,
    hf.BertOutput: BertOutput,
    hf.BertLayer: BertLayer,
    hf.BertEncoder: BertEncoder,
    hf.BertModel: BertModel,
    hf.BertForSequenceClassification: BertForSequenceClassification,
    hf.BertForTokenClassification: BertForTokenClassification,
    hf.BertForQuestionAnswering: BertForQuestionAnswering,
    hf.BertForMultipleChoice: BertForMultipleChoice,
    hf.BertForMaskedLM: BertForMaskedLM,
    hf.BertForNextSentencePrediction: BertForNextSentencePrediction,
    hf.BertForPreTraining: BertForPreTraining,
}


def convert_modules(model: nn.Module) -> int:
    """Swaps, in place, the class of every transformers BERT module in ``model`` for fastbert's.

    Parameters, buffers, hooks, device, dtype, mode and ``requires_grad`` are untouched (the objects
    stay the same). Returns how many modules were converted; 0 when there was nothing left to do.
    """
    targets = [(m, FASTBERT_CLASSES[type(m)]) for m in model.modules() if type(m) in FASTBERT_CLASSES]
    for module, _ in targets:  # refuse before touching anything
        if isinstance(module, hf.BertPreTrainedModel):
            check_config_supported(module.config)
    for module, target in targets:
        module.__class__ = target
    return len(targets)


def _build_then_convert(cls):
    """Gives a fastbert model class transformers' constructor followed by :func:`convert_modules`."""
    base = next(b for b in cls.__mro__[1:] if b in FASTBERT_CLASSES)

    def __init__(self, config, *args, **kwargs):
        check_config_supported(config)
        base.__init__(self, config, *args, **kwargs)
        convert_modules(self)

    __init__.__doc__ = f"Builds ``transformers.{base.__name__}`` from ``config``, then converts it to fastbert."
    cls.__init__ = __init__
    return cls


for _cls in set(FASTBERT_CLASSES.values()):
    if issubclass(_cls, BertPreTrainedModel):
        _build_then_convert(_cls)
