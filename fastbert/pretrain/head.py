"""The masked-LM head on the masked positions only.

At 15% masking the vocabulary GEMM over every token is several times the whole encoder's work (30,522 x 768
per token for BERT-base against about 7 x 768 x 768 per layer); gathered to the masked positions first, the
head's transform and decoder run on 15% of the tokens and give the same loss."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastbert.pretrain.masking import IGNORED


def masked_lm_head(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The function from hidden states ``(n, hidden)`` to vocabulary scores ``(n, vocab)`` of a masked-LM
    model (``BertForMaskedLM``, ``BertForPreTraining``, and the other families' ``*ForMaskedLM``)."""
    if hasattr(model, "cls"):  # BERT: BertOnlyMLMHead or BertPreTrainingHeads, both holding .predictions
        return model.cls.predictions
    if hasattr(model, "lm_head"):  # RoBERTa, XLM-R, CamemBERT
        return model.lm_head
    if hasattr(model, "generator_lm_head"):  # ELECTRA's generator
        return lambda h: model.generator_lm_head(model.generator_predictions(h))
    if hasattr(model, "vocab_projector"):  # DistilBERT
        return lambda h: model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(h))))
    raise TypeError(f"{type(model).__name__} has no masked-LM head fastbert knows")


def masked_scores(model: nn.Module, hidden: Tensor, masked_index: Tensor) -> Tensor:
    """The masked-LM head on the masked positions only: ``hidden (rows, seqlen, hidden)``, ``masked_index``
    int64 flat positions (computed on the host when collating, so no host sync here) -> ``(masked, vocab)``,
    at least fp32."""
    scores = masked_lm_head(model)(hidden.flatten(0, 1).index_select(0, masked_index))
    return scores.to(torch.promote_types(scores.dtype, torch.float32))


def masked_lm_loss_sum(model: nn.Module, sequence_output: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The masked-LM cross-entropy summed over the masked positions, and how many of them the model
    predicts right, from the head run on those positions only.

    Args:
        sequence_output: ``(batch, seqlen, hidden)``, the encoder's last hidden states.
        labels: int64 ``(batch, seqlen)``, the original ids at masked positions, -100 elsewhere.
    Returns:
        ``(loss_sum, correct)``: a scalar of at least fp32, an int64 scalar.
    """
    masked_index = (labels != IGNORED).flatten().nonzero().flatten()
    targets = labels.flatten().index_select(0, masked_index)
    scores = masked_scores(model, sequence_output, masked_index)
    loss_sum = F.cross_entropy(scores, targets, reduction="sum")
    return loss_sum, (scores.argmax(-1) == targets).sum()


def encoder_of(model: nn.Module) -> nn.Module:
    """The base model under a masked-LM or pretraining head (``model.bert``, ``model.roberta``, ...)."""
    return model.base_model


def sequence_output(model: nn.Module, **inputs) -> Tensor:
    """The encoder's last hidden states ``(batch, seqlen, hidden)`` for ``inputs``."""
    return encoder_of(model)(**inputs)[0]
