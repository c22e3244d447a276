"""Reading the texts to embed or score: text files (one a line), JSONL, CSV and Parquet.

Every problem is a :class:`~fastbert.finetune.data.DataError` naming the file and the line (the row for
Parquet), raised before any model loads: a blank line or empty text, undecodable bytes, a missing column.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from fastbert.finetune.data import DataError, decode_file

FORMATS = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


@dataclass
class Texts:
    """The texts of all inputs in input order: ``ids`` (the id column's values, else the running row
    number), ``texts``, and ``pairs`` (the pair column's, or None)."""

    ids: list = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    pairs: Optional[list[str]] = None

    def __len__(self) -> int:
        return len(self.texts)


def read_texts(paths: Sequence, text_column: str = "text", pair_column: Optional[str] = None,
               id_column: Optional[str] = None) -> Texts:
    """Every text of ``paths`` (``.txt`` one a line; ``.jsonl``, ``.csv``/``.tsv`` and ``.parquet`` with
    ``text_column``, ``pair_column`` for a second text, ``id_column`` for ids).

    Raises:
        DataError: a blank line or empty text, undecodable bytes, a missing column or key, a non-string
            text; each names the file and the line.
        ValueError: an unknown extension, a pair or id column for text files, Parquet without pyarrow.
    """
    out = Texts(pairs=[] if pair_column else None)
    for path in map(Path, paths):
        kind = FORMATS.get(path.suffix.lower())
        if kind is None:
            raise ValueError(f"{path}: unknown format {path.suffix!r}; use .txt, .jsonl, .csv, .tsv or .parquet")
        if kind == "text" and (pair_column or id_column):
            raise ValueError(f"{path}: a text file holds one text a line: --pair-column and --id-column need "
                             "JSONL, CSV or Parquet")
        rows = {"text": _text_rows, "jsonl": _jsonl_rows, "csv": _table_rows, "tsv": _table_rows,
                "parquet": _parquet_rows}[kind](path, kind, [c for c in (text_column, pair_column, id_column) if c])
        before = len(out)
        for line, values in rows:
            text = values[0] if kind == "text" else values[text_column]
            _check_text(path, line, text, text_column if kind != "text" else None)
            out.texts.append(text)
            if pair_column:
                _check_text(path, line, values[pair_column], pair_column)
                out.pairs.append(values[pair_column])
            out.ids.append(values[id_column] if id_column else len(out.ids))
        if len(out) == before:
            raise DataError(path, 1, "no texts in the file")
    return out


def _check_text(path: Path, line: int, text, column: Optional[str]) -> None:
    where = f" in {column!r}" if column else ""
    if not isinstance(text, str):
        raise DataError(path, line, f"the text{where} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise DataError(path, line, f"an empty text{where}")


def _text_rows(path: Path, kind: str, columns: list):
    text = decode_file(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline
    for number, line in enumerate(lines, start=1):
        yield number, [line.rstrip("\r")]


def _jsonl_rows(path: Path, kind: str, columns: list):
    for number, raw in enumerate(decode_file(path).split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DataError(path, number, f"not a JSON object: {err.msg} at column {err.colno}") from None
        if not isinstance(record, dict):
            raise DataError(path, number, f"expected a JSON object, got {type(record).__name__}")
        for column in columns:
            if column not in record:
                raise DataError(path, number, f"no key {column!r}; the object has {sorted(record)}")
        yield number, record


def _table_rows(path: Path, kind: str, columns: list):
    reader = csv.reader(io.StringIO(decode_file(path), newline=""), delimiter="\t" if kind == "tsv" else ",")
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        raise DataError(path, 1, "no header row") from None
    for column in columns:
        if column not in header:
            raise DataError(path, 1, f"no column {column!r}; the header has {header}")
    index = {c: header.index(c) for c in columns}
    line = reader.line_num
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(path, start, f"malformed {kind.upper()} row: {err}") from None
        line = reader.line_num
        if not row:
            raise DataError(path, start, "an empty row")
        if len(row) != len(header):
            raise DataError(path, start, f"the row has {len(row)} fields, the header {len(header)}")
        yield start, {c: row[i] for c, i in index.items()}


def _parquet_rows(path: Path, kind: str, columns: list):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    table = pq.read_table(path)
    for column in columns:
        if column not in table.column_names:
            raise DataError(path, 1, f"no column {column!r}; the table has {table.column_names}")
    data = {c: table.column(c).to_pylist() for c in columns}
    for row in range(table.num_rows):
        yield row + 1, {c: data[c][row] for c in columns}
