"""The tasks ``fastbert finetune`` trains, each a small module plugged into the one training loop.

A task reads its files (every problem a :class:`~fastbert.finetune.data.DataError` with file:line),
tokenizes and aligns them into :class:`~fastbert.finetune.data.Encoded` features, collates a batch's
targets, computes the loss from the model's outputs, and scores the evaluation predictions:

- ``sequence-classification`` (:mod:`.classification`): CSV/TSV/JSONL texts or pairs, one label each;
- ``token-classification`` (:mod:`.token_classification`): CoNLL or JSONL tagged words, entity-level F1;
- ``question-answering`` (:mod:`.question_answering`): SQuAD v1.1/v2.0 JSON or JSONL, exact match and F1.

Nothing here imports torch: the command's option checks read :data:`TASKS` before any work.
"""

from __future__ import annotations

import importlib

# --task -> the module holding its Task
TASKS = {
    "sequence-classification": "fastbert.finetune.tasks.classification",
    "token-classification": "fastbert.finetune.tasks.token_classification",
    "question-answering": "fastbert.finetune.tasks.question_answering",
}

# --task -> the evaluation scores --metric may pick the best checkpoint by (the first is the default;
# "loss" is lower-better, every other score higher-better)
METRICS = {
    "sequence-classification": ("macro_f1", "accuracy", "loss"),
    "token-classification": ("f1", "precision", "recall", "accuracy", "loss"),
    "question-answering": ("f1", "exact_match", "loss"),
}


def load(name: str):
    """The :class:`Task` class of ``--task name``."""
    return importlib.import_module(TASKS[name]).TASK
