"""Masked-LM pretraining as a task of the one training loop (:class:`~fastbert.finetune.loop.FineTuner`).

A feature is a packed row (:mod:`.rows`); each epoch masks it anew from a generator seeded by the seed, the
epoch and the row, so every process (and a resumed run) draws the same masks, and the loss's denominator,
the global batch's masked tokens, is known to all. The model is wrapped in :class:`MaskedLMObjective`,
which runs the encoder on the packed rows and the head on the masked positions only.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastbert.finetune.tasks.base import Task
from fastbert.padding import document_positions
from fastbert.pretrain.head import masked_scores
from fastbert.pretrain.masking import IGNORED, mask_tokens
from fastbert.pretrain.rows import PackedRows


def per_row(values: Tensor, rows: Tensor, count: int) -> Tensor:
    """Sums ``values`` of the masked positions into their rows: ``(count,)``."""
    return torch.zeros(count, dtype=values.dtype, device=values.device).index_add(0, rows, values)


def masked_lm_terms(scores: Tensor, labels: Tensor, masked_index: Tensor) -> dict:
    """Per-row masked-LM loss sums, right predictions and masked counts, and the loss sum, from the head's
    ``scores`` at ``masked_index``."""
    rows, seqlen = labels.shape
    targets = labels.flatten().index_select(0, masked_index)
    losses = F.cross_entropy(scores, targets, reduction="none")
    row = masked_index // seqlen
    right = (scores.argmax(-1) == targets).long()
    return {"mlm_sum": losses.sum(), "mlm_rows": per_row(losses.detach(), row, rows),
            "correct": per_row(right, row, rows), "masked": per_row(torch.ones_like(right), row, rows)}


class MaskedLMObjective(nn.Module):
    """``model`` (a ``*ForMaskedLM``) with the masked-LM loss of packed rows as its forward, so that the loop
    (and DDP) see one module. fastbert's model runs the rows with ``document_ids`` and its head on the masked
    positions only; transformers' own (``reference=True``) runs them with a block-diagonal 4-D mask and
    per-document positions, and its head over every position, as transformers does."""

    def __init__(self, model: nn.Module, reference: bool = False):
        super().__init__()
        self.model, self.reference = model, reference

    @property
    def config(self):
        return self.model.config

    def save_pretrained(self, folder, **kwargs) -> None:
        self.model.save_pretrained(folder, **kwargs)

    def forward(self, input_ids: Tensor, document_ids: Tensor, labels: Tensor, masked_index: Tensor) -> dict:
        """int64 ``(rows, seqlen)`` each, ``masked_index`` int64 ``(masked,)`` -> ``mlm_sum`` (at least fp32),
        and per row ``mlm_rows``, ``correct``, ``masked``."""
        if self.reference:
            from fastbert.families import position_offset

            same = (document_ids[:, :, None] == document_ids[:, None, :]) & (document_ids[:, :, None] != 0)
            same = same | torch.eye(input_ids.shape[1], dtype=torch.bool, device=input_ids.device)
            positions = document_positions(document_ids, position_offset(self.model.config))
            logits = self.model(input_ids=input_ids, attention_mask=same[:, None], position_ids=positions).logits
            scores = logits.flatten(0, 1).index_select(0, masked_index)
            scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        else:
            hidden = self.model.base_model(input_ids=input_ids, document_ids=document_ids)[0]
            scores = masked_scores(self.model, hidden, masked_index)
        return masked_lm_terms(scores, labels, masked_index)


class MaskedLM(Task):
    """BERT's masked-LM objective over packed rows: 80/10/10 masking each epoch, the loss per masked token,
    MLM accuracy and perplexity."""

    name = "masked-lm"
    auto_class = "AutoModelForMaskedLM"
    metrics = ("loss", "accuracy")
    inputs = ("input_ids", "document_ids", "labels", "masked_index")

    def __init__(self, mask_token_id: int, vocab_size: int, probability: float = 0.15, whole_word: bool = False,
                 seed: int = 42, pad_id: int = 0):
        super().__init__(None)
        self.mask_token_id, self.vocab_size, self.probability = mask_token_id, vocab_size, probability
        self.whole_word, self.seed, self.pad_id = whole_word, seed, pad_id

    def generator(self, epoch: int, example: int, stream: int = 0) -> torch.Generator:
        """The generator of one example's draws in one epoch (ints only: Python salts the hash of a str per
        process, and every process must draw the same)."""
        return torch.Generator().manual_seed(hash((self.seed, epoch, example, stream)) & (2**63 - 1))

    def masked_row(self, data: PackedRows, r: int, epoch: int) -> tuple[Tensor, Tensor, Tensor]:
        """Row ``r`` as masked in ``epoch``: ``(inputs, document_ids, labels)``."""
        ids, documents, starts, maskable = data.row(r)
        inputs, labels = mask_tokens(ids[None], maskable[None], self.mask_token_id, self.vocab_size,
                                     self.probability, self.generator(epoch, r),
                                     starts[None] if self.whole_word else None)
        return inputs[0], documents, labels[0]

    def collate_share(self, data, share, epoch, pad_id, batch=None) -> dict:
        longest = max(data.lengths[r] for r in share)
        out = {"input_ids": torch.full((len(share), longest), self.pad_id, dtype=torch.long),
               "document_ids": torch.zeros(len(share), longest, dtype=torch.long),
               "labels": torch.full((len(share), longest), IGNORED, dtype=torch.long)}
        for i, r in enumerate(share):
            row = self.masked_row(data, r, epoch)
            for key, values in zip(("input_ids", "document_ids", "labels"), row):
                out[key][i, :len(values)] = values
        return with_masked_index(out)

    def global_units(self, data, batch, epoch):
        return None  # the masked tokens, counted when collating and summed over the processes by the loop

    def loss_sum(self, outputs, labels, attention_mask, totals=None):
        return outputs["mlm_sum"]

    def bar_stats(self, outputs) -> Optional[Tensor]:
        return torch.stack([outputs["correct"].sum(), outputs["masked"].sum()])

    def predict(self, outputs, batch) -> list:
        return list(zip(outputs["correct"].tolist(), outputs["masked"].tolist(), outputs["mlm_rows"].tolist()))

    def score(self, data, predictions) -> dict:
        correct, masked, loss = (sum(p[i] for p in predictions) for i in (0, 1, 2))
        mlm = loss / max(1, masked)
        return {"accuracy": correct / max(1, masked), "loss": mlm, "perplexity": math.exp(min(mlm, 50.0))}

    def with_loss(self, scores, loss) -> dict:
        return scores  # its own: per masked token over the whole evaluation set

    def fingerprint(self) -> dict:
        return {"task": self.name, "mlm_probability": self.probability, "whole_word_mask": self.whole_word}


def with_masked_index(batch: dict) -> dict:
    """Adds ``units`` (the masked tokens) and ``masked_index`` (their flat positions) of a collated share."""
    masked_index = (batch["labels"] != IGNORED).flatten().nonzero().flatten()
    return {**batch, "masked_index": masked_index, "units": len(masked_index)}
