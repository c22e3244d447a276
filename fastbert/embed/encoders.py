"""What ``fastbert embed`` runs: a sentence-transformers folder (its own modules: pooling, Dense, Normalize),
a plain transformers encoder with a pooling, or a classifier; each on fastbert's kernels
(``fastbert.optimize``), padding-free.

Each encoder tokenizes a list of texts (and pairs) into padded tensors on the host without running the
model, and runs the model on one batch of them on its ``device``; the result is a float32 row per text (an
embedding, or a classifier's class scores), left on the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

import fastbert
from fastbert.families import longest_sequence

POOLINGS = ("mean", "cls", "max")


def load_encoder(model: str, task: str, pooling: Optional[str], normalize: bool, device: torch.device,
                 max_length: Optional[int]):
    """The encoder of ``model`` (a folder or Hub id) for ``task`` ("embed" or "classify")."""
    if task == "classify":
        return Classifier(model, device, max_length)
    if (Path(model) / "modules.json").is_file() and pooling is None:
        return SentenceTransformerEncoder(model, device, max_length, normalize)
    return PooledEncoder(model, device, max_length, pooling or "mean", normalize)


class SentenceTransformerEncoder:
    """A sentence-transformers folder: its tokenization and modules as ``SentenceTransformer.encode`` runs
    them (``normalize`` adds a normalization the folder does not declare)."""

    def __init__(self, folder: str, device: torch.device, max_length: Optional[int], normalize: bool):
        from sentence_transformers import SentenceTransformer

        self.model = fastbert.optimize(SentenceTransformer(folder, device=str(device)))
        self.model.eval()
        if max_length is not None:
            self.model.max_seq_length = max_length
        self.max_length, self.normalize, self.device = self.model.max_seq_length, normalize, device
        self.pad_id = self.model.tokenizer.pad_token_id

    def tokenize(self, texts: list[str], pairs: Optional[list[str]] = None) -> dict:
        if pairs is not None:
            raise ValueError("a sentence-transformers embedding model takes single texts: --pair-column is for "
                             "classifiers")
        preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize  # tokenize before 6.3
        return dict(preprocess(texts))

    @torch.inference_mode()
    def run(self, features: dict) -> Tensor:
        """``(batch, dim)`` float32 embeddings of tokenized ``features`` on the device."""
        embeddings = self.model(features)["sentence_embedding"]
        if self.normalize:
            embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
        return embeddings.float()


class PooledEncoder:
    """A transformers encoder (``fastbert.AutoModel``) with ``pooling`` over the real tokens: "mean", "cls"
    (the first token) or "max", L2-normalized with ``normalize``."""

    def __init__(self, model: str, device: torch.device, max_length: Optional[int], pooling: str, normalize: bool):
        from transformers import AutoTokenizer

        if pooling not in POOLINGS:
            raise ValueError(f"--pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.model = fastbert.AutoModel.from_pretrained(model).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.max_length = max_length or min(self.tokenizer.model_max_length,
                                            longest_sequence(self.model.config))
        self.pooling, self.normalize, self.device = pooling, normalize, device
        self.pad_id = self.tokenizer.pad_token_id

    def tokenize(self, texts: list[str], pairs: Optional[list[str]] = None) -> dict:
        return dict(self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, padding=True,
                                   return_tensors="pt"))

    @torch.inference_mode()
    def run(self, features: dict) -> Tensor:
        """``(batch, hidden)`` float32 pooled embeddings of tokenized ``features`` on the device."""
        hidden = self.model(**features).last_hidden_state
        embeddings = pool(hidden, features["attention_mask"], self.pooling)
        if self.normalize:
            embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
        return embeddings.float()


def pool(hidden: Tensor, mask: Tensor, pooling: str) -> Tensor:
    """``hidden (batch, seqlen, dim)`` pooled over the real tokens of ``mask (batch, seqlen)``, as
    sentence-transformers' Pooling computes mean, CLS and max pooling: ``(batch, dim)``."""
    if pooling == "cls":
        return hidden[:, 0]
    real = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "max":
        return hidden.masked_fill(real == 0, torch.finfo(hidden.dtype).min).max(1).values
    return (hidden * real).sum(1) / real.sum(1).clamp(min=1e-9)


class Classifier:
    """A sequence classifier: each text's class scores as transformers' text-classification pipeline gives
    them (softmax over the classes; sigmoid for a single label or ``multi_label_classification``)."""

    def __init__(self, model: str, device: torch.device, max_length: Optional[int]):
        from transformers import AutoTokenizer

        self.model = fastbert.AutoModelForSequenceClassification.from_pretrained(model).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.max_length = max_length or min(self.tokenizer.model_max_length,
                                            longest_sequence(self.model.config))
        self.device, self.pad_id = device, self.tokenizer.pad_token_id
        config = self.model.config
        self.sigmoid = config.num_labels == 1 or config.problem_type == "multi_label_classification"
        self.labels = [config.id2label[i] for i in range(config.num_labels)]

    def tokenize(self, texts: list[str], pairs: Optional[list[str]] = None) -> dict:
        return dict(self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, padding=True,
                                   return_tensors="pt"))

    @torch.inference_mode()
    def run(self, features: dict) -> Tensor:
        """``(batch, labels)`` float32 class scores of tokenized ``features`` on the device."""
        logits = self.model(**features).logits.float()
        return logits.sigmoid() if self.sigmoid else logits.softmax(-1)
