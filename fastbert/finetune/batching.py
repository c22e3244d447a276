"""Length-grouped batches: little padding to begin with, and the model packs the rest away.

A *global batch* is what one optimizer step sees across all processes; each process takes the
interleaved share ``batch[rank::world]`` of it (the batch is sorted by length, so every share has about
the same number of tokens). The plan depends only on the lengths, the seed, the epoch and the global
batch size: one process with batch ``2B`` and two with ``B`` each see the same examples per step (a
process left without an example in a short last batch runs a stand-in with weight 0), and a resumed run
sees the same order as an uninterrupted one.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils.data import Dataset

from fastbert.finetune.data import Encoded

MEGA_BATCHES = 50  # sort by length within windows of this many batches, so batches stay random


def train_plan(lengths: list[int], global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's global batches of example indices, grouped by length; every example once.

    The examples are shuffled, sorted by length (longest first) within windows of ``MEGA_BATCHES``
    batches and cut into batches; the batches are shuffled, and the one with the most padded tokens goes
    first, so an out-of-memory error shows at the first step.
    """
    gen = torch.Generator().manual_seed(hash((seed, epoch)) & (2**63 - 1))  # ints hash the same in every run
    order = torch.randperm(len(lengths), generator=gen).tolist()
    window = global_batch * MEGA_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: -lengths[i])
        batches += [chunk[i:i + global_batch] for i in range(0, len(chunk), global_batch)]
    batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
    if batches:
        largest = max(range(len(batches)), key=lambda b: len(batches[b]) * lengths[batches[b][0]])
        batches.insert(0, batches.pop(largest))
    return batches


def eval_plan(lengths: list[int], global_batch: int) -> list[list[int]]:
    """Every example once, longest first, in global batches (a process's share may be empty)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + global_batch] for i in range(0, len(order), global_batch)]


def pad_share(data: Encoded, share: list[int], pad_id: int, collate_labels: Callable[[list, int], torch.Tensor]) -> dict:
    """Features ``share`` of ``data`` padded to the longest: ``input_ids``, ``token_type_ids``,
    ``attention_mask`` int64 ``(len(share), longest)`` and ``labels`` (``collate_labels(labels, longest)``)."""
    lengths = [len(data.input_ids[j]) for j in share]
    longest = max(lengths)
    ids = torch.full((len(share), longest), pad_id, dtype=torch.long)
    types = torch.zeros(len(share), longest, dtype=torch.long)
    mask = torch.zeros(len(share), longest, dtype=torch.long)
    for row, (j, n) in enumerate(zip(share, lengths)):
        ids[row, :n] = torch.tensor(data.input_ids[j])
        types[row, :n] = torch.tensor(data.token_type_ids[j])
        mask[row, :n] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
            "labels": collate_labels([data.labels[j] for j in share], longest)}


class PlannedBatches(Dataset):
    """Item ``i`` is this process's padded share of global batch ``i`` of a plan.

    Items: ``input_ids``, ``token_type_ids``, ``attention_mask`` int64 ``(share, longest)``, ``labels``
    (``collate_labels(labels, longest)``; by default int64 ``(share,)``), ``index`` int64 ``(share,)``
    (feature numbers), ``weight`` (1.0, or 0.0 for a stand-in), and the global batch's ``global_examples``,
    ``global_units`` (the loss's denominator: the features' ``units``) and ``global_tokens`` (ints). A process whose
    share is empty (a last batch smaller than the process count) gets None, or with ``stand_in`` the
    batch's first example with weight 0, so that it still joins the gradient all-reduce. Use with
    ``DataLoader(batch_size=None)``.

    ``task``: a task whose ``collate_share`` and ``global_units`` replace the padding above and the
    features' units (masked-LM pretraining masks its rows here, per ``epoch``); ``units`` is the share's
    (the task's count where it gives one), and ``global_units`` None means the loop sums the processes'
    ``units`` itself (a count only known after collating, such as masked tokens). ``micro_batches`` > 1
    (gradient accumulation): the share is cut into that many parts, each padded on its own, in ``micro``
    (a list of the items above without the global counts, which stay on the outer item).
    """

    def __init__(self, data: Encoded, plan: list[list[int]], rank: int, world: int, pad_id: int,
                 stand_in: bool = False, collate_labels: Optional[Callable[[list, int], torch.Tensor]] = None,
                 task=None, epoch: int = 0, micro_batches: int = 1):
        self.data, self.plan, self.rank, self.world, self.pad_id = data, plan, rank, world, pad_id
        self.stand_in, self.task, self.epoch, self.micro_batches = stand_in, task, epoch, micro_batches
        self.lengths = list(data.lengths)  # once: Encoded.lengths builds the whole list at every call
        labels = collate_labels or (task.collate if task is not None else None)
        self.collate_labels = labels or (lambda labels, longest: torch.tensor(labels))

    def __len__(self) -> int:
        return len(self.plan)

    def _collate(self, share: list[int], batch: list[int]) -> dict:
        """The share's tensors and its ``units`` (for the task's own counts, e.g. masked tokens)."""
        if self.task is not None:
            out = self.task.collate_share(self.data, share, self.epoch, self.pad_id, batch)
        else:
            out = pad_share(self.data, share, self.pad_id, self.collate_labels)
        if "units" not in out:
            out["units"] = sum(self.data.units[j] for j in share)
        return out

    def __getitem__(self, i: int) -> Optional[dict]:
        batch = self.plan[i]
        share, weight = batch[self.rank::self.world], 1.0
        if not share:
            if not self.stand_in:
                return None
            share, weight = batch[:1], 0.0
        units = (self.task.global_units(self.data, batch, self.epoch) if self.task is not None
                 else sum(self.data.units[j] for j in batch))
        totals = {"weight": weight, "global_examples": len(batch), "global_units": units,
                  "global_tokens": sum(self.lengths[j] for j in batch)}
        if self.micro_batches > 1:
            parts = [share[k::self.micro_batches] for k in range(self.micro_batches)]
            return {"micro": [{**self._collate(part, batch), "index": torch.tensor(part)} for part in parts if part],
                    "index": torch.tensor(share), **totals}
        return {**self._collate(share, batch), "index": torch.tensor(share), **totals}
