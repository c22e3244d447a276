"""What a task plugs into the training loop (:class:`~fastbert.finetune.loop.FineTuner`)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastbert.finetune.data import Encoded


class Task:
    """One fine-tuning task: reading, tokenizing and aligning, collating, the loss and the scores.

    ``args`` are the command's options (the task reads its own: ``--max-length``, ``--doc-stride``, ...).
    Subclasses set the class attributes and implement the methods; the loop calls only these.
    """

    name = ""
    auto_class = ""  # the Auto class (fastbert's and transformers') that builds its model
    metrics: tuple = ()  # the scores --metric may choose from (see fastbert.finetune.tasks.METRICS)

    def __init__(self, args):
        self.args = args

    # ------------------------------------------------------------------ before training (no model yet)
    def read(self, path) -> list:
        """The examples of one file; a DataError with file:line for bad input."""
        raise NotImplementedError

    def config_kwargs(self, train: list, config, resuming: bool) -> dict:
        """What the model's config takes from the training examples (labels); a ValueError where a resumed
        run's ``config`` (its checkpoint's) does not match them."""
        return {}

    # why the task needs a fast tokenizer (word ids, offsets), or None when any tokenizer does
    needs_fast_tokenizer: Optional[str] = None

    def tokenizer(self, source: str, **kwargs):
        """The tokenizer saved with the model at ``source``; a ValueError where the task needs a fast one
        and it is not."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        if self.needs_fast_tokenizer and not tokenizer.is_fast:
            raise ValueError(f"{source}: {self.name} needs a fast tokenizer ({self.needs_fast_tokenizer}), and "
                             f"{type(tokenizer).__name__} is not one")
        return tokenizer

    def encode(self, examples: list, tokenizer, path, config) -> Encoded:
        """The features of ``examples`` (read from ``path``), aligned for this task."""
        raise NotImplementedError

    def notes(self) -> list[str]:
        """Lines to print once before training (what encoding found: truncations, windows, lowered options)."""
        return []

    def fingerprint(self) -> dict:
        """The task's options that shape a run (a resumed run must have the same)."""
        return {"task": self.name}

    # ------------------------------------------------------------------ in the loop
    inputs = ("input_ids", "token_type_ids", "attention_mask")  # the batch entries the model takes

    def collate_share(self, data: Encoded, share: list[int], epoch: int, pad_id: int,
                      batch: Optional[list[int]] = None) -> dict:
        """A process's share of a batch (of the global ``batch``): the tensors of :attr:`inputs` and
        ``labels``."""
        from fastbert.finetune.batching import pad_share

        return pad_share(data, share, pad_id, self.collate)

    def global_units(self, data: Encoded, batch: list[int], epoch: int) -> Optional[int]:
        """The loss's denominator for a global batch (of every process): its features' units; None where
        only collating tells (the loop then sums the shares' ``units`` over the processes)."""
        return sum(data.units[j] for j in batch)

    def collate(self, labels: list, longest: int) -> Tensor:
        """A process's share of targets (``labels`` of its features) as a tensor, rows padded to ``longest``."""
        return torch.tensor(labels)

    def loss_sum(self, outputs, labels: Tensor, attention_mask: Tensor, totals: Optional[dict] = None) -> Tensor:
        """The loss summed over the share's units (its examples or labelled tokens), fp32. ``totals`` (in
        training): the global batch's ``units`` and ``examples``, for a loss of two means (BERT's NSP)."""
        raise NotImplementedError

    def bar_stats(self, outputs) -> Optional[Tensor]:
        """Optional ``(correct, total)`` counts of a training step for the progress bar's accuracy."""
        return None

    def predict(self, outputs, batch: dict) -> list:
        """Host-side predictions, one per feature of the share, for :meth:`score`."""
        raise NotImplementedError

    def with_loss(self, scores: dict, loss: float) -> dict:
        """The evaluation's scores with its mean ``loss`` per unit (masked-LM adds the perplexity)."""
        return {**scores, "loss": loss}

    def score(self, data: Encoded, predictions: list) -> dict:
        """Evaluation scores from ``predictions[i]`` of feature ``i`` of ``data``: the names of
        :attr:`metrics` (but "loss", which the loop adds), floats in [0, 1], and anything else for
        metrics.json (per-type scores)."""
        raise NotImplementedError
