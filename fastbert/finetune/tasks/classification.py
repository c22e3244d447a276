"""Text classification, single texts or pairs, from CSV, TSV or JSONL (``--task sequence-classification``)."""

from __future__ import annotations

import torch.nn.functional as F

from fastbert.finetune.data import Columns, Encoded, LabelMap, encode, read_examples
from fastbert.finetune.metrics import accuracy, macro_f1
from fastbert.finetune.tasks import METRICS
from fastbert.finetune.tasks.base import Task


class SequenceClassification(Task):
    """One label per text (or pair): cross-entropy, accuracy and macro-F1."""

    name = "sequence-classification"
    auto_class = "AutoModelForSequenceClassification"
    metrics = METRICS[name]

    def __init__(self, args=None):
        super().__init__(args)
        self.labels, self._cut = None, (0, 0)

    def read(self, path) -> list:
        args = self.args
        return read_examples(path, Columns(args.text_column, args.text_pair_column, args.label_column))

    def config_kwargs(self, train, config, resuming) -> dict:
        self.labels = LabelMap.from_examples(train)
        if resuming:
            self.labels.check_resumed(config, self.args.train)
        if len(self.labels.names) < 2:
            raise ValueError(f"{self.args.train}: classification needs at least 2 labels, found "
                             f"{list(self.labels.names)}")
        return self.labels.config_kwargs()

    def encode(self, examples, tokenizer, path, config) -> Encoded:
        ids = self.labels.ids(examples, path, self.args.train)
        encoded, cut = encode(examples, ids, tokenizer, self.args.max_length)
        if str(path) == str(self.args.train):
            self._cut = (cut, len(examples))
        return encoded

    def notes(self) -> list[str]:
        cut, total = self._cut
        if not cut:
            return []
        return [f"{cut} of {total} training examples reach --max-length {self.args.max_length} tokens and may be "
                "truncated"]

    def loss_sum(self, outputs, labels, attention_mask, totals=None):
        return F.cross_entropy(outputs.logits.float(), labels, reduction="sum")

    def predict(self, outputs, batch) -> list:
        return outputs.logits.argmax(-1).tolist()

    def score(self, data, predictions) -> dict:
        return {"accuracy": accuracy(predictions, data.labels), "macro_f1": macro_f1(predictions, data.labels)}


TASK = SequenceClassification
