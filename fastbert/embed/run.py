"""Embedding or scoring a corpus in chunks: sorted by length, batched by a token budget, tokenized ahead in a
background thread, each chunk's results written to its own file, so an interrupted run resumes from its
finished chunks and ``torchrun`` processes share the chunks; the results are merged in input order.

The plan depends only on the texts and ``chunk_texts``: texts are sorted by length in characters (longest
first, as ``SentenceTransformer.encode`` sorts), cut into chunks of ``chunk_texts``; process ``rank`` of
``world`` takes chunks ``rank, rank + world, ...``. Within a chunk the texts are tokenized at once and cut
into batches of at most ``max_tokens`` padded tokens (rows x longest), so batches hold many short texts or a
few long ones; the model runs them padding-free.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from fastbert.embed.inputs import Texts


def plan_chunks(texts: Texts, chunk_texts: int) -> list[np.ndarray]:
    """Text indices, longest first, cut into chunks of ``chunk_texts``."""
    def length(i: int) -> int:
        return len(texts.texts[i]) + (len(texts.pairs[i]) if texts.pairs is not None else 0)

    order = sorted(range(len(texts)), key=lambda i: (-length(i), i))
    return [np.asarray(order[i:i + chunk_texts], dtype=np.int64) for i in range(0, len(order), chunk_texts)]


def token_batches(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Positions of a chunk's texts (by their token ``lengths``), longest first, in batches of at most
    ``max_tokens`` padded tokens (a text longer than the budget alone in its batch)."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, min(len(order) - start, max_tokens // max(1, longest)))
        batches.append(order[start:start + size])
        start += size
    return batches


def _tokenized(encoder, texts: Texts, chunks: list[np.ndarray]):
    """Yields ``(chunk number, features)`` for ``chunks``, tokenized one ahead in a background thread."""
    ahead: queue.Queue = queue.Queue(maxsize=2)

    def work():
        try:
            for k, chunk in chunks:
                pairs = [texts.pairs[i] for i in chunk] if texts.pairs is not None else None
                ahead.put((k, encoder.tokenize([texts.texts[i] for i in chunk], pairs)))
        except BaseException as err:  # handed to the consumer, which raises it
            ahead.put(err)
        ahead.put(None)

    thread = threading.Thread(target=work, daemon=True, name="fastbert-embed-tokenize")
    thread.start()
    while (item := ahead.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


def run_chunks(encoder, texts: Texts, chunks: list[np.ndarray], parts: Path, mine: list[int], max_tokens: int,
               on_batch: Optional[Callable[[int, int], None]] = None) -> None:
    """Runs ``encoder`` on chunks ``mine`` of ``chunks`` whose part file in ``parts`` is missing, writing each
    as ``chunk-NNNNN.npy`` (results in the chunk's order) atomically; ``on_batch(texts, tokens)`` after each
    batch, for the progress bar."""
    todo = [(k, chunks[k]) for k in mine if not (parts / f"chunk-{k:05d}.npy").exists()]
    for k, out in encode_chunks(encoder, texts, todo, max_tokens, on_batch):
        temporary = parts / f".chunk-{k:05d}.npy"
        np.save(temporary, out)
        temporary.rename(parts / f"chunk-{k:05d}.npy")


def encode_texts(encoder, texts: Texts, max_tokens: int = 4096, chunk_texts: int = 4096) -> np.ndarray:
    """Every text's result in input order, in memory (no part files): ``(len(texts), ...)`` float32."""
    chunks = plan_chunks(texts, chunk_texts)
    out = None
    for k, result in encode_chunks(encoder, texts, list(enumerate(chunks)), max_tokens):
        if out is None:
            out = np.empty((len(texts), *result.shape[1:]), dtype=np.float32)
        out[chunks[k]] = result
    return out


def encode_chunks(encoder, texts: Texts, todo: list, max_tokens: int,
                  on_batch: Optional[Callable[[int, int], None]] = None):
    """Yields ``(chunk number, results in the chunk's order)`` for the ``(number, indices)`` of ``todo``."""
    for k, features in _tokenized(encoder, texts, todo):
        mask = features["attention_mask"]
        lengths = mask.sum(1).numpy()
        out = None
        for positions in token_batches(lengths, max_tokens):
            rows = torch.from_numpy(positions)
            longest = int(lengths[positions].max())
            batch = {name: value.index_select(0, rows)[:, :longest] if isinstance(value, torch.Tensor) else value
                     for name, value in features.items()}  # others (sentence-transformers' "modality") as they are
            result = encoder.run(batch)
            if out is None:
                out = np.empty((len(lengths), *result.shape[1:]), dtype=np.float32)
            out[positions] = result
            if on_batch is not None:
                on_batch(len(positions), int(lengths[positions].sum()))
        yield k, out


def merge(chunks: list[np.ndarray], parts: Path, total: int, dtype) -> np.ndarray:
    """Every chunk's results put back in input order: ``(total, ...)`` of ``dtype``."""
    first = np.load(parts / "chunk-00000.npy", mmap_mode="r")
    out = np.empty((total, *first.shape[1:]), dtype=dtype)
    for k, chunk in enumerate(chunks):
        out[chunk] = np.load(parts / f"chunk-{k:05d}.npy")
    return out


def write_output(path: Path, results: np.ndarray, ids: list, labels: Optional[list[str]]) -> None:
    """Writes ``results`` to ``path``: ``.npy`` as they are; ``.jsonl`` one object a text with its id and
    its ``embedding``, or for a classifier its ``label`` and ``score`` (and every label's ``scores``);
    ``.parquet`` the same columns (pyarrow)."""
    suffix = path.suffix.lower()
    temporary = path.with_name(f".{path.name}.partial{suffix}")
    if suffix == ".npy":
        np.save(temporary, results)
    else:
        rows = [_row(i, r, labels) for i, r in zip(ids, results)]
        if suffix == ".jsonl":
            temporary.write_text("".join(json.dumps(row) + "\n" for row in rows))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), temporary)
    temporary.rename(path)


def _row(identifier, result: np.ndarray, labels: Optional[list[str]]) -> dict:
    if labels is None:
        return {"id": identifier, "embedding": result.astype(np.float64).tolist()}
    best = int(result.argmax())
    return {"id": identifier, "label": labels[best], "score": float(result[best]),
            "scores": {label: float(s) for label, s in zip(labels, result)}}


class Progress:
    """Texts/s and real tokens/s on a tqdm bar (or nothing)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.tokens, self.started = 0, time.perf_counter()
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="text", dynamic_ncols=True, desc="embed")

    def __call__(self, texts: int, tokens: int) -> None:
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(texts)
            self.bar.set_postfix(tok_s=f"{self.tokens / max(time.perf_counter() - self.started, 1e-9):.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
