"""RoBERTa on fastbert's encoder core.

RoBERTa's layers are BERT's; what differs is the position ids, ``padding_idx + 1`` plus the running count of
non-pad tokens (pad tokens keep ``padding_idx``), computed from the ids before packing so that any 0/1 mask,
left padding included, gives transformers' numbers, and one token type.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from transformers.models.roberta import modeling_roberta as hf

from fastbert.families import bert_shaped_family
from fastbert.modeling import BertModelCore

TOKEN_LABELS = {"token_labels": "labels"}
SPAN_LABELS = {"span_labels": ("start_positions", "end_positions")}
# head -> what it reads (fastbert.modeling.head_forward's options; None: transformers' forward as it is)
HEADS = {
    "ForSequenceClassification": {"reads_first_token": True},  # its classification head reads <s>
    "ForTokenClassification": TOKEN_LABELS,
    "ForQuestionAnswering": SPAN_LABELS,
    "ForMaskedLM": TOKEN_LABELS,
    "ForMultipleChoice": None,  # the pooler reads <s>: the base model knows
}


def roberta_position_ids(input_ids: Optional[Tensor], padding_idx: int, seqlen: int, device) -> Tensor:
    """transformers' RoBERTa position ids: from ``input_ids (batch, seqlen)``, ``padding_idx`` + the running
    count of non-pad tokens, ``padding_idx`` at pad tokens; without ids, ``padding_idx + 1 ..
    padding_idx + seqlen``."""
    if input_ids is None:
        return torch.arange(padding_idx + 1, seqlen + padding_idx + 1, device=device)
    real = input_ids.ne(padding_idx).int()
    return (torch.cumsum(real, dim=1).type_as(real) * real).long() + padding_idx


class RobertaModelCore(BertModelCore):
    """BERT's model core with RoBERTa's position ids."""

    def _default_position_ids(self, input_ids, inputs_embeds, batch, seqlen, device) -> Tensor:
        return roberta_position_ids(input_ids, self.embeddings.padding_idx, seqlen, device)

    def _position_offset(self) -> int:
        return self.embeddings.padding_idx + 1


bert_shaped_family(hf, "Roberta", globals(), {f"Roberta{name}": options for name, options in HEADS.items()},
                   model_core=RobertaModelCore)
