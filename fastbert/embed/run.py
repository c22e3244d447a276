"""Embedding or scoring a corpus in chunks: sorted by length, batched by a token budget, tokenized ahead in a
background thread, each chunk's results written to its own file, so an interrupted run resumes from its
finished chunks and ``torchrun`` processes share the chunks; the results are merged in input order.

The plan depends only on the texts and ``chunk_texts``: texts are sorted by length in characters (longest
first, as ``SentenceTransformer.encode`` sorts), cut into chunks of ``chunk_texts``; process ``rank`` of
``world`` takes chunks ``rank, rank + world, ...``. Within a chunk the texts are tokenized at once and cut
into batches of at most ``max_tokens`` padded tokens (rows x longest), so batches hold many short texts or a
few long ones; the model runs them padding-free (on a CPU, whose backend pads, batches also keep their
padding small: :data:`CPU_BATCH_PADDING`).
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


def default_batch_tokens(device: torch.device) -> int:
    """``--max-tokens-per-batch``'s default on ``device``: :data:`DEFAULT_BATCH_TOKENS`."""
    return DEFAULT_BATCH_TOKENS["cuda" if device.type == "cuda" else "cpu"]


def plan_chunks(texts: Texts, chunk_texts: int) -> list[np.ndarray]:
    """Text indices, longest first, cut into chunks of ``chunk_texts``."""
    def length(i: int) -> int:
        return len(texts.texts[i]) + (len(texts.pairs[i]) if texts.pairs is not None else 0)

    order = sorted(range(len(texts)), key=lambda i: (-length(i), i))
    return [np.asarray(order[i:i + chunk_texts], dtype=np.int64) for i in range(0, len(order), chunk_texts)]


# A CPU runs fastbert's PyTorch backend on a padded grid: there a batch also stops before padding passes this
# fraction of its padded tokens, unless it is still under SMALL_BATCH_TOKENS, where the GEMMs run at about 0.6x
# their speed (MKL on one thread, measured on a 2-core EPYC) and up to SMALL_BATCH_PADDING of padding costs less.
CPU_BATCH_PADDING = 1 / 16
# Padded tokens a model call by default: on a CPU larger batches run no faster (measured, all-MiniLM-L6-v2).
DEFAULT_BATCH_TOKENS = {"cpu": 4096, "cuda": 32768}
SMALL_BATCH_TOKENS, SMALL_BATCH_PADDING = 512, 1 / 3


def token_batches(lengths: np.ndarray, max_tokens: int, max_padding: Optional[float] = None) -> list[np.ndarray]:
    """Positions of a chunk's texts (by their token ``lengths``), longest first, in batches of at most
    ``max_tokens`` padded tokens (rows x longest; a text longer than the budget alone in its batch). With
    ``max_padding``, a batch also holds at most that fraction of padding (:data:`SMALL_BATCH_PADDING` while
    under :data:`SMALL_BATCH_TOKENS` padded tokens)."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        end, real = start + 1, longest
        while end < len(order) and (end - start + 1) * longest <= max_tokens:
            padded, grown = (end - start + 1) * longest, real + int(lengths[order[end]])
            if max_padding is not None:
                allowed = max_padding if padded > SMALL_BATCH_TOKENS else max(max_padding, SMALL_BATCH_PADDING)
                if padded - grown > allowed * padded:
                    break
            end, real = end + 1, grown
        batches.append(order[start:end])
        start = end
    return batches


def _tokenized(encoder, texts: Texts, chunks: list[np.ndarray], pin: bool):
    """Yields ``(chunk number, features)`` for ``chunks``, tokenized one ahead in a background thread (and with
    ``pin`` copied into page-locked memory there, so the copy to the device runs asynchronously)."""
    ahead: queue.Queue = queue.Queue(maxsize=2)

    def work():
        try:
            for k, chunk in chunks:
                pairs = [texts.pairs[i] for i in chunk] if texts.pairs is not None else None
                features = encoder.tokenize([texts.texts[i] for i in chunk], pairs)
                if pin:
                    features = {name: value.pin_memory() if isinstance(value, torch.Tensor) else value
                                for name, value in features.items()}
                ahead.put((k, features))
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
    """Yields ``(chunk number, results in the chunk's order)`` for the ``(number, indices)`` of ``todo``.

    A chunk's tokens go to the device once; its batches are cut there. On a GPU nothing waits for a batch's
    results: each is copied back asynchronously into page-locked memory, read once the chunk's last batch
    is queued (one synchronization a chunk)."""
    device = encoder.device
    on_gpu = device.type == "cuda"
    max_padding = None if on_gpu else CPU_BATCH_PADDING
    for k, features in _tokenized(encoder, texts, todo, pin=on_gpu):
        lengths = features["attention_mask"].sum(1).numpy()
        features = {name: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
                    for name, value in features.items()}
        copies = []
        for positions in token_batches(lengths, max_tokens, max_padding):
            rows = torch.from_numpy(positions).to(device, non_blocking=True)
            longest = int(lengths[positions].max())
            batch = {name: value.index_select(0, rows)[:, :longest] if isinstance(value, torch.Tensor) else value
                     for name, value in features.items()}  # others (sentence-transformers' "modality") as they are
            copies.append((positions, encoder.run(batch).to("cpu", torch.float32, non_blocking=True)))
            if on_batch is not None:
                on_batch(len(positions), int(lengths[positions].sum()))
        if on_gpu:
            torch.cuda.current_stream(device).synchronize()
        out = np.empty((len(lengths), *copies[0][1].shape[1:]), dtype=np.float32)
        for positions, result in copies:
            out[positions] = result.numpy()
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
