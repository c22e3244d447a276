"""A pretraining corpus, tokenized once into a memory-mapped cache on disk and read from there.

Input: plain text (documents separated by blank lines, or one a line with ``line_per_document``) or JSONL
with a text field. The files are read line by line and tokenized a chunk of documents at a time, so a corpus
larger than memory works; the cache holds every document's word pieces back to back (no special tokens),
where each document starts, and which pieces start a word (for whole-word masking):

    tokens.bin        uint16 (a vocabulary under 65,536) or uint32, all documents' pieces
    word_starts.bin   uint8, 1 where a piece starts a word
    documents.npy     int64 (documents + 1,), document i is tokens[documents[i]:documents[i + 1]]
    meta.json         what it was built from (files, sizes, times, tokenizer, options) and counts

The folder's name is a hash of what it was built from, so a changed file or tokenizer builds a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from fastbert.finetune.data import DataError

CHUNK_DOCUMENTS = 1000  # documents tokenized per call


@dataclass
class Document:
    text: str
    line: int  # where it starts in its file


def read_documents(path, text_field: Optional[str] = None, line_per_document: bool = False) -> Iterator[Document]:
    """The documents of one file, streamed: JSONL (``.jsonl``; ``text_field`` of each object, default
    "text") or plain text (blank lines between documents, or one a line).

    Raises:
        DataError: undecodable bytes, an invalid JSON line, an object without the field or with a
            non-string one; each names the file and the line.
    """
    path = Path(path)
    jsonl = path.suffix.lower() == ".jsonl"
    field = text_field or "text"
    lines: list[str] = []
    start = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(path, number, f"not valid UTF-8: byte 0x{raw[err.start]:02x} at column "
                                f"{err.start + 1}") from None
            line = line.rstrip("\r\n")
            if jsonl:
                if line.strip():
                    yield Document(_json_text(path, number, line, field), number)
            elif line_per_document:
                if line.strip():
                    yield Document(line.strip(), number)
            elif line.strip():
                start = start or number
                lines.append(line.strip())
            elif lines:
                yield Document(" ".join(lines), start)
                lines, start = [], 0
    if lines:
        yield Document(" ".join(lines), start)


def _json_text(path: Path, number: int, line: str, field: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(path, number, f"not a JSON object: {err.msg} at column {err.colno}") from None
    if not isinstance(record, dict):
        raise DataError(path, number, f"expected a JSON object, got {type(record).__name__}")
    if field not in record:
        raise DataError(path, number, f"no key {field!r} (--text-field); the object has {sorted(record)}")
    if not isinstance(record[field], str):
        raise DataError(path, number, f"{field!r} must be a string, got {type(record[field]).__name__}")
    return record[field]


@dataclass
class Corpus:
    """A tokenized corpus (memory-mapped): see the module docstring."""

    folder: Path
    tokens: np.ndarray
    word_starts: np.ndarray
    documents: np.ndarray

    def __len__(self) -> int:
        return len(self.documents) - 1

    def document(self, i: int) -> np.ndarray:
        return self.tokens[self.documents[i]:self.documents[i + 1]]

    @property
    def num_tokens(self) -> int:
        return int(self.documents[-1])

    @classmethod
    def open(cls, folder) -> "Corpus":
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        tokens = np.memmap(folder / "tokens.bin", dtype=dtype, mode="r") if meta["tokens"] else np.zeros(0, dtype)
        starts = (np.memmap(folder / "word_starts.bin", dtype=np.uint8, mode="r") if meta["tokens"]
                  else np.zeros(0, np.uint8))
        return cls(folder, tokens, starts, np.load(folder / "documents.npy"))


def cache_key(paths: Sequence, tokenizer, text_field: Optional[str], line_per_document: bool) -> str:
    """A hash of what a cache is built from: each file's path, size and modification time, the tokenizer's
    vocabulary and rules, and the reading options."""
    digest = hashlib.sha256()
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    rules = json.loads(tokenizer.backend_tokenizer.to_str())
    rules.pop("truncation", None), rules.pop("padding", None)  # call settings, not how text becomes pieces
    digest.update(json.dumps(rules, sort_keys=True).encode())
    digest.update(f"{text_field}|{line_per_document}".encode())
    return digest.hexdigest()[:20]


def build_corpus(paths: Sequence, tokenizer, cache_root, text_field: Optional[str] = None,
                 line_per_document: bool = False) -> Corpus:
    """The corpus of ``paths`` tokenized by ``tokenizer`` (a fast one), from its cache under ``cache_root``
    when there is one, else built there first (written to a temporary folder, then renamed into place).

    Raises:
        DataError: bad input in a file (see :func:`read_documents`), or no document in any of them.
    """
    folder = Path(cache_root) / cache_key(paths, tokenizer, text_field, line_per_document)
    if (folder / "meta.json").is_file():
        return Corpus.open(folder)
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.uint32
    offsets, total = [0], 0
    with open(partial / "tokens.bin", "wb") as tokens, open(partial / "word_starts.bin", "wb") as starts:
        for path in paths:
            chunk: list[Document] = []
            for document in read_documents(path, text_field, line_per_document):
                chunk.append(document)
                if len(chunk) == CHUNK_DOCUMENTS:
                    total = _write_chunk(chunk, tokenizer, dtype, tokens, starts, offsets, total)
                    chunk = []
            if chunk:
                total = _write_chunk(chunk, tokenizer, dtype, tokens, starts, offsets, total)
    if len(offsets) == 1:
        shutil.rmtree(partial)
        raise DataError(paths[0], 1, "the corpus is empty: no document in " + ", ".join(map(str, paths)))
    np.save(partial / "documents.npy", np.asarray(offsets, dtype=np.int64))
    meta = {"files": [str(p) for p in paths], "tokenizer": type(tokenizer).__name__, "vocab_size": len(tokenizer),
            "text_field": text_field, "line_per_document": line_per_document, "dtype": np.dtype(dtype).name,
            "documents": len(offsets) - 1, "tokens": total}
    (partial / "meta.json").write_text(json.dumps(meta, indent=2))
    try:
        partial.rename(folder)
    except OSError:  # another process built it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    return Corpus.open(folder)


def _write_chunk(chunk: list[Document], tokenizer, dtype, tokens, starts, offsets: list[int], total: int) -> int:
    encoded = tokenizer([d.text for d in chunk], add_special_tokens=False)
    for i, ids in enumerate(encoded["input_ids"]):
        if not ids:
            continue  # nothing the tokenizer keeps (only whitespace or dropped characters)
        words = encoded.word_ids(i)
        first = [1] + [int(words[t] != words[t - 1]) for t in range(1, len(ids))]
        tokens.write(np.asarray(ids, dtype=dtype).tobytes())
        starts.write(np.asarray(first, dtype=np.uint8).tobytes())
        total += len(ids)
        offsets.append(total)
    return total
