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
from fastbert.pretrain.head import masked_lm_head
from fastbert.pretrain.masking import IGNORED, mask_tokens
from fastbert.pretrain.rows import PackedRows


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

    def forward(self, input_ids: Tensor, document_ids: Tensor, labels: Tensor) -> dict:
        """int64 ``(rows, seqlen)`` each -> ``loss_sum`` (fp32 scalar), ``correct`` and ``masked`` per row
        (int64 ``(rows,)``)."""
        picked = labels != IGNORED
        if self.reference:
            from fastbert.families import position_offset

            same = (document_ids[:, :, None] == document_ids[:, None, :]) & (document_ids[:, :, None] != 0)
            same = same | torch.eye(input_ids.shape[1], dtype=torch.bool, device=input_ids.device)
            positions = document_positions(document_ids, position_offset(self.model.config))
            scores = self.model(input_ids=input_ids, attention_mask=same[:, None], position_ids=positions).logits
            scores = scores[picked]
        else:
            hidden = self.model.base_model(input_ids=input_ids, document_ids=document_ids)[0]
            scores = masked_lm_head(self.model)(hidden[picked])
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        targets = labels[picked]
        rows = picked.nonzero()[:, 0]
        right = (scores.argmax(-1) == targets).long()
        count = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        return {"loss_sum": F.cross_entropy(scores, targets, reduction="sum"),
                "correct": count.index_add(0, rows, right), "masked": count.index_add(0, rows, torch.ones_like(right))}


class MaskedLM(Task):
    """BERT's masked-LM objective over packed rows: 80/10/10 masking each epoch, the loss per masked token,
    MLM accuracy and perplexity."""

    name = "masked-lm"
    auto_class = "AutoModelForMaskedLM"
    metrics = ("loss", "accuracy")
    inputs = ("input_ids", "document_ids", "labels")

    def __init__(self, mask_token_id: int, vocab_size: int, probability: float = 0.15, whole_word: bool = False,
                 seed: int = 42, pad_id: int = 0):
        super().__init__(None)
        self.mask_token_id, self.vocab_size, self.probability = mask_token_id, vocab_size, probability
        self.whole_word, self.seed, self.pad_id = whole_word, seed, pad_id

    def masked_row(self, data: PackedRows, r: int, epoch: int) -> tuple[Tensor, Tensor, Tensor]:
        """Row ``r`` as masked in ``epoch``: ``(inputs, document_ids, labels)``."""
        ids, documents, starts, maskable = data.row(r)
        generator = torch.Generator().manual_seed(hash((self.seed, epoch, r)) & (2**63 - 1))
        inputs, labels = mask_tokens(ids[None], maskable[None], self.mask_token_id, self.vocab_size,
                                     self.probability, generator, starts[None] if self.whole_word else None)
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
        return out

    def global_units(self, data, batch, epoch) -> int:
        return sum(int((self.masked_row(data, r, epoch)[2] != IGNORED).sum()) for r in batch)

    def loss_sum(self, outputs, labels, attention_mask):
        return outputs["loss_sum"]

    def bar_stats(self, outputs) -> Optional[Tensor]:
        return torch.stack([outputs["correct"].sum(), outputs["masked"].sum()])

    def predict(self, outputs, batch) -> list:
        return list(zip(outputs["correct"].tolist(), outputs["masked"].tolist()))

    def score(self, data, predictions) -> dict:
        correct, masked = (sum(p[i] for p in predictions) for i in (0, 1))
        return {"accuracy": correct / max(1, masked)}

    def with_loss(self, scores, loss) -> dict:
        return {**scores, "loss": loss, "perplexity": math.exp(min(loss, 50.0))}

    def fingerprint(self) -> dict:
        return {"task": self.name, "mlm_probability": self.probability, "whole_word_mask": self.whole_word}
