"""Reading text-classification files (CSV, TSV, JSONL), the label map, and tokenizing.

Every problem in a file is a :class:`DataError` naming the file and the line, raised before training.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


class DataError(ValueError):
    """A problem in an input file, at ``path:line``."""

    def __init__(self, path, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line = str(path), line


@dataclass(frozen=True)
class Columns:
    """Which column (CSV/TSV header) or key (JSONL) holds what."""

    text: str = "text"
    pair: Optional[str] = None
    label: str = "label"


@dataclass
class Example:
    text: str
    pair: Optional[str]
    label: str  # integer labels are kept as their decimal spelling
    line: int


def read_examples(path, columns: Columns) -> list[Example]:
    """Reads every example of a ``.csv``, ``.tsv`` or ``.jsonl`` file (UTF-8, header row for CSV/TSV).

    Raises:
        DataError: undecodable bytes, an empty file, a missing column, a malformed row, an empty text or
            label; each names the file and the line.
        ValueError: an unknown file extension.
    """
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unknown format {path.suffix!r}; use .csv, .tsv or .jsonl")
    text = decode_file(path)
    if not text.strip():
        raise DataError(path, 1, "the file is empty")
    examples = _read_jsonl(path, text, columns) if kind == "jsonl" else _read_table(path, text, columns, kind)
    if not examples:
        raise DataError(path, 2, "no examples after the header")
    return examples


def decode_file(path: Path) -> str:
    """The UTF-8 text of ``path`` (a BOM dropped); a DataError at the line and column of the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(path, line, f"not valid UTF-8: byte 0x{data[err.start]:02x} at column {column}") from None


def _read_table(path: Path, text: str, columns: Columns, kind: str) -> list[Example]:
    # TSV quoted as pandas/csv write it (a field with a tab, newline or quote is quoted), as pandas reads it.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if kind == "tsv" else ",")
    try:
        header = next(reader)
    except csv.Error as err:
        raise DataError(path, reader.line_num, f"malformed {kind.upper()} header: {err}") from None
    wanted = {"--text-column": columns.text, "--label-column": columns.label}
    if columns.pair is not None:
        wanted["--text-pair-column"] = columns.pair
    for option, name in wanted.items():
        if name not in header:
            raise DataError(path, 1, f"no column {name!r} ({option}); the header has {header}")
        if header.count(name) > 1:
            raise DataError(path, 1, f"column {name!r} ({option}) appears {header.count(name)} times in the header")
    index = {name: header.index(name) for name in wanted.values()}
    examples, line = [], reader.line_num
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise DataError(path, start, f"malformed {kind.upper()} row: {err}") from None
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(header):
            raise DataError(path, start, f"the row has {len(row)} fields, the header {len(header)}")
        values = {name: row[i] for name, i in index.items()}
        examples.append(_example(path, start, values, columns))
    return examples


def _read_jsonl(path: Path, text: str, columns: Columns) -> list[Example]:
    examples = []
    # Lines end at "\n" only: str.splitlines would also split at U+2028 and friends, which JSON strings may hold.
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DataError(path, number, f"not a JSON object: {err.msg} at column {err.colno}") from None
        if not isinstance(record, dict):
            raise DataError(path, number, f"expected a JSON object, got {type(record).__name__}")
        keys = [columns.text, columns.label] + ([columns.pair] if columns.pair is not None else [])
        for key in keys:
            if key not in record:
                raise DataError(path, number, f"no key {key!r}; the object has {sorted(record)}")
        label = record[columns.label]
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise DataError(path, number, f"label {label!r} must be a string or an integer")
        values = {key: record[key] for key in keys}
        for key in keys[:1] + keys[2:]:
            if not isinstance(values[key], str):
                raise DataError(path, number, f"{key!r} must be a string, got {type(values[key]).__name__}")
        values[columns.label] = str(label)
        examples.append(_example(path, number, values, columns))
    return examples


def _example(path: Path, line: int, values: dict, columns: Columns) -> Example:
    for name in (columns.text, columns.pair, columns.label):
        if name is not None and not values[name].strip():
            raise DataError(path, line, f"empty {name!r}")
    pair = values[columns.pair] if columns.pair is not None else None
    return Example(values[columns.text], pair, values[columns.label].strip(), line)


_INTEGER = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class LabelMap:
    """Class id -> label name. Integer labels sort by value, others alphabetically."""

    names: tuple[str, ...]

    @classmethod
    def from_examples(cls, examples: Sequence[Example]) -> "LabelMap":
        labels = {e.label for e in examples}
        if all(_INTEGER.match(label) for label in labels):  # "01" and "1" stay two labels: sort by value, then text
            return cls(tuple(sorted(labels, key=lambda label: (int(label), label))))
        return cls(tuple(sorted(labels)))

    @classmethod
    def from_config(cls, config) -> "LabelMap":
        return cls(tuple(config.id2label[i] for i in range(config.num_labels)))

    def config_kwargs(self) -> dict:
        """``num_labels``, ``id2label`` and ``label2id`` for a transformers config."""
        return dict(num_labels=len(self.names), id2label=dict(enumerate(self.names)),
                    label2id={name: i for i, name in enumerate(self.names)})

    def check_resumed(self, config, train_path) -> None:
        """A ValueError when a resumed run's checkpoint (``config``) has other labels than ``train_path``'s."""
        saved = LabelMap.from_config(config)
        if saved != self:
            raise ValueError(f"--resume: the labels of {train_path} {list(self.names)} differ from the checkpoint's "
                             f"{list(saved.names)}")

    def ids(self, examples: Sequence[Example], path, train_path) -> list[int]:
        """Class ids of ``examples`` (read from ``path``); a label training never saw is a DataError."""
        index = {name: i for i, name in enumerate(self.names)}
        ids = []
        for e in examples:
            if e.label not in index:
                raise DataError(path, e.line, f"label {e.label!r} does not occur in the training file "
                                f"{train_path} (its labels: {list(self.names)})")
            ids.append(index[e.label])
        return ids


@dataclass
class Encoded:
    """Tokenized features (an example each, or a window of one): unpadded ``input_ids``/``token_type_ids``
    lists and each feature's target in ``labels`` (a class id; for other tasks a list of token labels or a
    ``(start, end)`` pair). ``units``: what each feature adds to the loss's denominator (its examples or
    labelled tokens; default 1 each); ``info``: what the task's scoring needs per feature (which example,
    word ids, offsets); ``examples``: the examples the features came from."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list
    units: Optional[list[int]] = None
    info: Optional[list] = None
    examples: Optional[list] = None

    def __post_init__(self):
        if self.units is None:
            self.units = [1] * len(self.labels)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def __len__(self) -> int:
        return len(self.labels)


def encode(examples: Sequence[Example], labels: list[int], tokenizer, max_length: int) -> tuple[Encoded, int]:
    """Tokenizes (truncating to ``max_length`` tokens, special tokens included); returns the encoding and
    how many examples filled ``max_length`` (and so may have been cut)."""
    texts = [e.text for e in examples]
    pairs = [e.pair for e in examples] if examples and examples[0].pair is not None else None
    out = tokenizer(texts, pairs, truncation=True, max_length=max_length, return_token_type_ids=True)
    encoded = Encoded(out["input_ids"], out["token_type_ids"], list(labels))
    return encoded, sum(length >= max_length for length in encoded.lengths)
