"""Checks that turn unsupported configs and bad inputs into clear errors before any compute."""

from __future__ import annotations

from typing import Optional

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
    if position_type != "absolute":
        raise ValueError(f"fastbert supports absolute position embeddings only: "
                         f"config.position_embedding_type={position_type!r}")
    act = getattr(config, "hidden_act", "gelu")
    if act not in EXACT_GELU_NAMES:
        raise ValueError(f"fastbert fuses the exact erf GELU only: config.hidden_act={act!r} is not supported "
                         f"(supported: {', '.join(EXACT_GELU_NAMES)})")
    if config.hidden_size % config.num_attention_heads != 0:
        raise ValueError(f"config.hidden_size={config.hidden_size} is not a multiple of "
                         f"config.num_attention_heads={config.num_attention_heads}")


def _check_index_tensor(name: str, t: Tensor, shape, limit: int, what: str, check_values: bool) -> None:
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if check_values and t.numel():
        low, high = int(t.min()), int(t.max())
        if low < 0 or high >= limit:
            raise ValueError(f"{name} must lie in [0, {limit}) ({what}), got values in [{low}, {high}]")


def validate_inputs(config, input_ids: Optional[Tensor], inputs_embeds: Optional[Tensor],
                    attention_mask: Optional[Tensor], token_type_ids: Optional[Tensor],
                    position_ids: Optional[Tensor], check_values: bool = True) -> tuple[int, int]:
    """Validates a ``BertModel.forward`` call; returns ``(batch, seqlen)``.

    ``check_values`` also reads the index tensors' ranges (one host sync); it is off under
    ``torch.compile``, where a data-dependent branch would break the graph.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds "
                         f"(got {'both' if input_ids is not None else 'neither'})")
    if input_ids is not None:
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-D (batch, seqlen), got shape {tuple(input_ids.shape)}")
        batch, seqlen = input_ids.shape
    else:
        if not inputs_embeds.dtype.is_floating_point:
            raise TypeError(f"inputs_embeds must be a floating-point tensor, got dtype {inputs_embeds.dtype}")
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(f"inputs_embeds must be (batch, seqlen, {config.hidden_size}), "
                             f"got shape {tuple(inputs_embeds.shape)}")
        batch, seqlen = inputs_embeds.shape[:2]
    if batch == 0 or seqlen == 0:
        raise ValueError(f"empty batch: inputs have shape (batch={batch}, seqlen={seqlen})")
    if position_ids is None and seqlen > config.max_position_embeddings:
        raise ValueError(f"sequence length {seqlen} exceeds config.max_position_embeddings="
                         f"{config.max_position_embeddings}")
    if input_ids is not None:
        _check_index_tensor("input_ids", input_ids, (batch, seqlen), config.vocab_size,
                            "config.vocab_size", check_values)
    if token_type_ids is not None:
        _check_index_tensor("token_type_ids", token_type_ids, (batch, seqlen), config.type_vocab_size,
                            "config.type_vocab_size", check_values)
    if position_ids is not None:
        shape = (batch, seqlen) if position_ids.dim() == 2 and position_ids.shape[0] == batch else (1, seqlen)
        if position_ids.dim() == 1:
            shape = (seqlen,)
        _check_index_tensor("position_ids", position_ids, shape, config.max_position_embeddings,
                            "config.max_position_embeddings", check_values)
    if attention_mask is not None:
        _check_mask(attention_mask, batch, seqlen, config.num_attention_heads)
    return batch, seqlen


def _check_mask(mask: Tensor, batch: int, seqlen: int, heads: int) -> None:
    if mask.dtype.is_complex:
        raise TypeError(f"attention_mask must be a real tensor, got dtype {mask.dtype}")
    shape = tuple(mask.shape)
    ok = {
        2: shape == (batch, seqlen),
        3: shape == (batch, seqlen, seqlen),
        4: len(shape) == 4 and shape[0] in (1, batch) and shape[1] in (1, heads) and shape[2:] == (seqlen, seqlen),
    }.get(mask.dim(), False)
    if not ok:
        raise ValueError(f"attention_mask has shape {shape}; expected ({batch}, {seqlen}), ({batch}, {seqlen}, "
                         f"{seqlen}) or ({batch} or 1, {heads} or 1, {seqlen}, {seqlen}) to match input_ids")
