"""Next-sentence prediction beside the masked LM (``fastbert pretrain --nsp``), as BERT was pretrained.

Each example is a chunk of one document of at most ``max_length - 3`` pieces; each epoch cuts it in two at a
random point: segment A is the first part, and B is the rest (label 0, "is next") or, half the time, a span
of the same length from another document (label 1, "random"), as ``BertForPreTraining`` reads its labels.
A row is ``[CLS] A [SEP] B [SEP]`` with token types 0 then 1, padded to the batch's longest: no packing, the
pooler reads each row's [CLS]. The loss is BERT's: the mean masked-LM loss plus the mean NSP loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastbert.pretrain.corpus import Corpus
from fastbert.pretrain.masking import IGNORED, mask_tokens
from fastbert.pretrain.head import masked_scores
from fastbert.pretrain.task import MaskedLM, masked_lm_terms, with_masked_index


@dataclass
class SegmentPairs:
    """The examples of an NSP run: ``chunks`` int64 ``(examples, 3)``: document, start and end of each chunk's
    pieces in ``corpus.tokens``; ``lengths``: each example's row length, special tokens included."""

    corpus: Corpus
    chunks: np.ndarray
    lengths: list[int]
    cls_id: int
    sep_id: int

    def __len__(self) -> int:
        return len(self.lengths)


def cut_into_chunks(corpus: Corpus, max_length: int, cls_id: int, sep_id: int) -> SegmentPairs:
    """Every document cut into chunks of at most ``max_length - 3`` pieces (chunks of one piece dropped:
    they cannot be cut in two)."""
    room = max_length - 3
    if room < 2:
        raise ValueError(f"--max-length {max_length} leaves no room for two segments beside [CLS] and 2 [SEP]")
    if len(corpus) < 2:
        raise ValueError("--nsp draws random segments from other documents: the corpus needs at least 2")
    chunks = []
    for d in range(len(corpus)):
        begin, end = int(corpus.documents[d]), int(corpus.documents[d + 1])
        chunks += [(d, s, min(s + room, end)) for s in range(begin, end, room) if min(s + room, end) - s >= 2]
    chunks = np.asarray(chunks, dtype=np.int64).reshape(-1, 3)
    return SegmentPairs(corpus, chunks, [int(e - s) + 3 for _, s, e in chunks], cls_id, sep_id)


class NextSentencePrediction(MaskedLM):
    """Masked LM plus next-sentence prediction over segment pairs (:class:`SegmentPairs`)."""

    name = "masked-lm+nsp"
    auto_class = "AutoModelForPreTraining"
    metrics = ("loss", "accuracy", "nsp_accuracy")
    inputs = ("input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label", "masked_index")

    def pair(self, data: SegmentPairs, i: int, epoch: int) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        """Example ``i`` in ``epoch``: ``(inputs, token_type_ids, labels, maskable, next_sentence_label)``."""
        generator = self.generator(epoch, i, stream=1)
        document, start, end = (int(v) for v in data.chunks[i])
        cut = start + int(torch.randint(1, end - start, (1,), generator=generator))
        tokens = data.corpus.tokens
        first = tokens[start:cut].tolist()
        random_next = bool(torch.rand((), generator=generator) < 0.5)
        if random_next:
            other = int(torch.randint(len(data.corpus) - 1, (1,), generator=generator))
            other += other >= document  # any document but this one
            o_begin, o_end = int(data.corpus.documents[other]), int(data.corpus.documents[other + 1])
            size = min(end - cut, o_end - o_begin)
            o_start = o_begin + int(torch.randint(o_end - o_begin - size + 1, (1,), generator=generator))
            second = tokens[o_start:o_start + size].tolist()
        else:
            second = tokens[cut:end].tolist()
        ids = torch.tensor([data.cls_id, *first, data.sep_id, *second, data.sep_id], dtype=torch.long)
        types = torch.tensor([0] * (len(first) + 2) + [1] * (len(second) + 1), dtype=torch.long)
        maskable = torch.ones(len(ids), dtype=torch.bool)
        maskable[[0, len(first) + 1, len(ids) - 1]] = False
        inputs, labels = mask_tokens(ids[None], maskable[None], self.mask_token_id, self.vocab_size,
                                     self.probability, generator)
        return inputs[0], types, labels[0], maskable, int(random_next)

    def collate_share(self, data, share, epoch, pad_id, batch=None) -> dict:
        pairs = [self.pair(data, i, epoch) for i in share]
        longest = max(len(p[0]) for p in pairs)
        out = {"input_ids": torch.full((len(share), longest), self.pad_id, dtype=torch.long),
               "token_type_ids": torch.zeros(len(share), longest, dtype=torch.long),
               "attention_mask": torch.zeros(len(share), longest, dtype=torch.long),
               "labels": torch.full((len(share), longest), IGNORED, dtype=torch.long),
               "next_sentence_label": torch.tensor([p[4] for p in pairs])}
        for row, (ids, types, labels, _, _) in enumerate(pairs):
            n = len(ids)
            out["input_ids"][row, :n], out["token_type_ids"][row, :n], out["labels"][row, :n] = ids, types, labels
            out["attention_mask"][row, :n] = 1
        return with_masked_index(out)

    def loss_sum(self, outputs, labels, attention_mask, totals=None):
        """BERT's mean masked-LM loss plus mean NSP loss, as a sum the loop divides by the global batch's
        masked tokens: each row's NSP loss weighted by the masked tokens per row (``totals``, in training)."""
        if totals is None:
            return outputs["mlm_sum"]  # evaluation scores both means itself
        return outputs["mlm_sum"] + outputs["nsp_sum"] * (totals["units"] / totals["examples"])

    def predict(self, outputs, batch) -> list:
        return list(zip(outputs["correct"].tolist(), outputs["masked"].tolist(), outputs["mlm_rows"].tolist(),
                        outputs["nsp_correct"].tolist(), outputs["nsp_rows"].tolist()))

    def score(self, data, predictions) -> dict:
        correct, masked, mlm, nsp_right, nsp = (sum(p[i] for p in predictions) for i in range(5))
        mlm, nsp = mlm / max(1, masked), nsp / max(1, len(predictions))
        return {"accuracy": correct / max(1, masked), "nsp_accuracy": nsp_right / max(1, len(predictions)),
                "loss": mlm + nsp, "mlm_loss": mlm, "nsp_loss": nsp, "perplexity": math.exp(min(mlm, 50.0))}

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "nsp": True}


class PreTrainingObjective(nn.Module):
    """``model`` (``BertForPreTraining``) with BERT's pretraining loss as its forward (see
    :class:`~fastbert.pretrain.task.MaskedLMObjective`): fastbert's runs the masked-LM head on the masked
    positions only, transformers' own (``reference=True``) its heads over every position."""

    def __init__(self, model: nn.Module, reference: bool = False):
        super().__init__()
        self.model, self.reference = model, reference

    @property
    def config(self):
        return self.model.config

    def save_pretrained(self, folder, **kwargs) -> None:
        self.model.save_pretrained(folder, **kwargs)

    def forward(self, input_ids, token_type_ids, attention_mask, labels, next_sentence_label, masked_index) -> dict:
        """The masked-LM terms of :func:`~fastbert.pretrain.task.masked_lm_terms`, and ``nsp_sum``, per row
        ``nsp_rows`` and ``nsp_correct``."""
        if self.reference:
            out = self.model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
            scores = out.prediction_logits.flatten(0, 1).index_select(0, masked_index)
            scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
            relationship = out.seq_relationship_logits
        else:
            sequence, pooled = self.model.bert(input_ids=input_ids, token_type_ids=token_type_ids,
                                               attention_mask=attention_mask)[:2]
            scores = masked_scores(self.model, sequence, masked_index)
            relationship = self.model.cls.seq_relationship(pooled)
        relationship = relationship.to(scores.dtype)
        nsp = F.cross_entropy(relationship, next_sentence_label, reduction="none")
        return {**masked_lm_terms(scores, labels, masked_index), "nsp_sum": nsp.sum(), "nsp_rows": nsp.detach(),
                "nsp_correct": (relationship.argmax(-1) == next_sentence_label).long()}
