"""Checks that turn unsupported configs and bad inputs into clear errors before any compute."""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
from torch import Tensor

# Activations fastbert computes exactly (BERT's erf GELU).
EXACT_GELU_NAMES = ("gelu", "gelu_python")


def check_config_supported(config) -> None:
    """Raises ``ValueError`` naming the first setting of ``config`` fastbert cannot run exactly."""
    if getattr(config, "is_decoder", False):
        raise ValueError("fastbert supports BERT encoders only: config.is_decoder=True is not supported")
    if getattr(config, "add_cross_attention", False):
        raise ValueError("fastbert does not support cross-attention: config.add_cross_attention=True")
    position_type = getattr(config, "position_embedding_type", "absolute")
    if position_type != "absolute" and transformers_reads_position_type(position_type):
        raise ValueError(f"fastbert supports absolute position embeddings only: "
                         f"config.position_embedding_type={position_type!r}")
    name = "activation" if config.model_type == "distilbert" else "hidden_act"  # DistilBERT's name for it
    act = getattr(config, name, "gelu")
    if act not in EXACT_GELU_NAMES:
        raise ValueError(f"fastbert fuses the exact erf GELU only: config.{name}={act!r} is not supported "
                         f"(supported: {', '.join(EXACT_GELU_NAMES)})")
    if config.hidden_size % config.num_attention_heads != 0:
        raise ValueError(f"config.hidden_size={config.hidden_size} is not a multiple of "
                         f"config.num_attention_heads={config.num_attention_heads}")


@functools.lru_cache(maxsize=None)
def transformers_reads_position_type(position_type: str) -> bool:
    """Whether the installed transformers' BERT computes ``position_embedding_type=position_type``
    differently from absolute positions (transformers 4 built distance embeddings for the relative
    types; transformers 5 ignores the setting), probed on a tiny attention module."""
    from transformers import BertConfig
    from transformers.models.bert import modeling_bert

    config = BertConfig(hidden_size=8, num_attention_heads=2, position_embedding_type=position_type)
    return hasattr(modeling_bert.BertSelfAttention(config), "distance_embedding")


def _check_index_tensor(name: str, t: Tensor, shape) -> None:
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def check_index_ranges(checks) -> None:
    """Raises ``ValueError`` for the first ``(name, tensor, limit, what)`` of ``checks`` whose values leave
    ``[0, limit)``; every tensor's range is read in one host copy."""
    checks = [c for c in checks if c[1].numel()]
    if not checks:
        return
    ranges = torch.stack([torch.stack([t.min(), t.max()]).long() for _, t, _, _ in checks]).tolist()
    for (name, _, limit, what), (low, high) in zip(checks, ranges):
        if low < 0 or high >= limit:
            raise ValueError(f"{name} must lie in [0, {limit}) ({what}), got values in [{low}, {high}]")


def validate_inputs(config, input_ids: Optional[Tensor], inputs_embeds: Optional[Tensor],
                    attention_mask: Optional[Tensor], token_type_ids: Optional[Tensor],
                    position_ids: Optional[Tensor], check_values: bool = True, embedding_size: Optional[int] = None,
                    position_offset: int = 0,
                    default_position_ids: Optional[Callable[[int, int, torch.device], Tensor]] = None) -> tuple[int, int, Tensor]:
    """Validates a base model's forward call (``BertModel``, ``RobertaModel``, ...); returns ``(batch, seqlen,
    position_ids)``, the given position ids or ``default_position_ids(batch, seqlen, device)``.

    ``check_values`` also reads the index tensors' ranges (one host read for all of them, the default
    position ids included); it is off under ``torch.compile``, where a data-dependent branch would break the
    graph. ``embedding_size``: the width of ``inputs_embeds`` (ELECTRA's may differ from ``hidden_size``);
    ``position_offset``: the first default position id (RoBERTa: its padding index + 1). Without
    ``default_position_ids`` the defaults are ``position_offset .. position_offset + seqlen - 1``.
    """
    embedding_size = config.hidden_size if embedding_size is None else embedding_size
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds "
                         f"(got {'both' if input_ids is not None else 'neither'})")
    if input_ids is not None:
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-D (batch, seqlen), got shape {tuple(input_ids.shape)}")
        batch, seqlen = input_ids.shape
        device = input_ids.device
    else:
        if not inputs_embeds.dtype.is_floating_point:
            raise TypeError(f"inputs_embeds must be a floating-point tensor, got dtype {inputs_embeds.dtype}")
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != embedding_size:
            raise ValueError(f"inputs_embeds must be (batch, seqlen, {embedding_size}), "
                             f"got shape {tuple(inputs_embeds.shape)}")
        batch, seqlen = inputs_embeds.shape[:2]
        device = inputs_embeds.device
    if batch == 0 or seqlen == 0:
        raise ValueError(f"empty batch: inputs have shape (batch={batch}, seqlen={seqlen})")
    # RoBERTa's default positions from ids count only the real tokens: padding lets a row hold more than
    # max_position_embeddings - position_offset tokens, so those are range-checked as computed.
    positions_from_ids = input_ids is not None and position_offset > 0
    if position_ids is None and not positions_from_ids and seqlen + position_offset > config.max_position_embeddings:
        offset = f" less the {position_offset} position ids before the first token's" if position_offset else ""
        raise ValueError(f"sequence length {seqlen} exceeds config.max_position_embeddings="
                         f"{config.max_position_embeddings}{offset}")
    ranges = []
    if input_ids is not None:
        _check_index_tensor("input_ids", input_ids, (batch, seqlen))
        ranges.append(("input_ids", input_ids, config.vocab_size, "config.vocab_size"))
    if token_type_ids is not None:
        _check_index_tensor("token_type_ids", token_type_ids, (batch, seqlen))
        ranges.append(("token_type_ids", token_type_ids, config.type_vocab_size, "config.type_vocab_size"))
    if position_ids is not None:
        shape = (batch, seqlen) if position_ids.dim() == 2 and position_ids.shape[0] == batch else (1, seqlen)
        if position_ids.dim() == 1:
            shape = (seqlen,)
        _check_index_tensor("position_ids", position_ids, shape)
        ranges.append(("position_ids", position_ids, config.max_position_embeddings,
                       "config.max_position_embeddings"))
    else:
        position_ids = (default_position_ids(batch, seqlen, device) if default_position_ids is not None
                        else torch.arange(position_offset, position_offset + seqlen, device=device))
        if positions_from_ids:
            ranges.append(("the position ids computed from input_ids (the padding index + the running count of "
                           "non-pad tokens)", position_ids, config.max_position_embeddings,
                           "config.max_position_embeddings"))
    if attention_mask is not None:
        _check_mask(attention_mask, batch, seqlen, config.num_attention_heads)
    if check_values:
        check_index_ranges(ranges)
    return batch, seqlen, position_ids


def _check_mask(mask: Tensor, batch: int, seqlen: int, heads: int) -> None:
    if mask.dtype.is_complex:
        raise TypeError(f"attention_mask must be a real tensor, got dtype {mask.dtype}")
    shape = tuple(mask.shape)
    ok = {
        2: shape == (batch, seqlen),
        3: shape == (batch, seqlen, seqlen),
        # transformers uses a 4-D mask as is (broadcast over batch, heads and queries)
        4: (len(shape) == 4 and shape[0] in (1, batch) and shape[1] in (1, heads) and shape[2] in (1, seqlen)
            and shape[3] == seqlen),
    }.get(mask.dim(), False)
    if not ok:
        raise ValueError(f"attention_mask has shape {shape}; expected ({batch}, {seqlen}), ({batch}, {seqlen}, "
                         f"{seqlen}) or ({batch} or 1, {heads} or 1, {seqlen} or 1, {seqlen}) to match input_ids")


ATTENTION_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_attention_inputs(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int,
                           dropout_p: float, seed: Optional[Tensor], check_values: bool = True,
                           dtypes: tuple = ATTENTION_DTYPES) -> None:
    """Raises ``TypeError``/``ValueError`` naming the bad argument of a packed attention call.

    q, k, v: ``(total_tokens, heads, head_dim)`` of one of ``dtypes``. ``check_values`` also reads ``cu_seqlens`` (one host
    sync): it must start at 0, never decrease, end at ``total_tokens`` and hold no sequence longer than
    ``max_seqlen`` (a shorter bound would leave rows uncomputed).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"attention: {name} must be one of {names}; got {t.dtype}")
        if t.dim() != 3:
            raise ValueError(f"attention: {name} must be (total_tokens, heads, head_dim), got shape {tuple(t.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"attention: q, k, v shapes disagree: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"attention: q, k, v dtypes disagree: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-1] < 1:
        raise ValueError(f"attention: head_dim must be positive, got {q.shape[-1]}")
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise TypeError(f"attention: cu_seqlens must be a 1-D int32 tensor of batch + 1 >= 2 offsets, "
                        f"got {cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != q.device:
        raise ValueError(f"attention: cu_seqlens is on {cu_seqlens.device}, q on {q.device}")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 0:
        raise ValueError(f"attention: max_seqlen must be an int >= 0, got {max_seqlen!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_p > 0.0 and (seed is None or seed.dtype != torch.int64 or seed.numel() != 1):
        raise ValueError("attention: dropout_p > 0 needs seed, an int64 tensor of one element")
    if check_values:
        cu = cu_seqlens.tolist()
        lengths = [end - start for start, end in zip(cu[:-1], cu[1:])]
        if cu[0] != 0 or min(lengths) < 0 or cu[-1] != q.shape[0]:
            raise ValueError(f"attention: cu_seqlens must start at 0, never decrease and end at total_tokens="
                             f"{q.shape[0]}; got {cu[:3]} ... {cu[-2:]}")
        if max(lengths) > max_seqlen:
            raise ValueError(f"attention: a sequence has {max(lengths)} tokens, more than max_seqlen={max_seqlen}")


EMBEDDING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_embeddings_inputs(input_ids: Optional[Tensor], inputs_embeds: Optional[Tensor], position_ids: Tensor,
                            token_type_ids: Tensor, word: Tensor, pos: Tensor, types: Tensor, weight: Tensor,
                            beta: Tensor, dropout_p: float, seed: Optional[Tensor], check_values: bool = True,
                            dtypes: tuple = EMBEDDING_DTYPES) -> None:
    """Raises ``TypeError``/``ValueError`` naming the bad argument of a fused embeddings call.

    Ids are int32/int64 ``(tokens,)``; exactly one of ``input_ids`` and ``inputs_embeds (tokens, hidden)``;
    tables ``(rows, hidden)`` and LayerNorm ``(hidden,)`` of one of ``dtypes``. ``check_values`` also
    reads the ids' ranges against the tables' rows (one host sync).
    """
    tokens = position_ids.shape[0] if position_ids.dim() == 1 else -1
    hidden = word.shape[-1]
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("embeddings: pass exactly one of input_ids or inputs_embeds")
    for name, t in (("word", word), ("pos", pos), ("types", types), ("weight", weight), ("beta", beta),
                    ("inputs_embeds", inputs_embeds)):
        if t is not None and t.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"embeddings: {name} must be one of {names}; got {t.dtype}")
    for name, t in (("word", word), ("pos", pos), ("types", types)):
        if t.dim() != 2 or t.shape[1] != hidden or t.shape[0] < 1:
            raise ValueError(f"embeddings: {name} must be a (rows >= 1, {hidden}) table, got {tuple(t.shape)}")
    for name, t in (("weight", weight), ("beta", beta)):
        if tuple(t.shape) != (hidden,):
            raise ValueError(f"embeddings: {name} must be ({hidden},), got {tuple(t.shape)}")
    ids = [("position_ids", position_ids, pos.shape[0]), ("token_type_ids", token_type_ids, types.shape[0])]
    if input_ids is not None:
        ids.insert(0, ("input_ids", input_ids, word.shape[0]))
    elif tuple(inputs_embeds.shape) != (tokens, hidden):
        raise ValueError(f"embeddings: inputs_embeds must be ({tokens}, {hidden}), got {tuple(inputs_embeds.shape)}")
    for name, t, _ in ids:
        if t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"embeddings: {name} must be int32 or int64, got {t.dtype}")
        if t.dim() != 1 or t.shape[0] != tokens:
            raise ValueError(f"embeddings: {name} must be (tokens,) like position_ids "
                             f"({tuple(position_ids.shape)}), got {tuple(t.shape)}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"embeddings: dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_p > 0.0 and (seed is None or seed.dtype != torch.int64 or seed.numel() != 1):
        raise ValueError("embeddings: dropout_p > 0 needs seed, an int64 tensor of one element")
    if check_values and tokens > 0:
        ranges = torch.stack([torch.stack([t.min(), t.max()]).long() for _, t, _ in ids]).tolist()
        for (name, _, rows), (low, high) in zip(ids, ranges):
            if low < 0 or high >= rows:
                raise ValueError(f"embeddings: {name} must lie in [0, {rows}) (the table's rows), "
                                 f"got values in [{low}, {high}]")
