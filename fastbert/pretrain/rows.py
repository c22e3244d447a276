"""Packing: the corpus's documents laid into rows of at most ``max_length`` tokens, several documents a row.

Each document (or piece of one longer than a row) is a segment ``[CLS] pieces [SEP]``; segments fill rows
in corpus order, so there is no padding but a row's short tail. The model runs a row with ``document_ids``,
so its documents never attend to each other and each counts positions from its own start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fastbert.pretrain.corpus import Corpus


@dataclass
class PackedRows:
    """The rows of a packed corpus, built lazily from its memory map (a corpus larger than memory works).

    segments: int64 ``(segments, 2)``: start and end of each segment's pieces in ``corpus.tokens``;
    row_starts: int64 ``(rows + 1,)``: row ``r`` is segments ``row_starts[r]:row_starts[r + 1]``;
    lengths: each row's tokens, special ones included.
    """

    corpus: Corpus
    segments: np.ndarray
    row_starts: np.ndarray
    lengths: list[int]
    cls_id: int
    sep_id: int

    def __len__(self) -> int:
        return len(self.lengths)

    def row(self, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row ``r``: ``(input_ids, document_ids, word_starts, maskable)``, each ``(lengths[r],)``; document
        ids count the row's segments from 1, specials are not maskable and start words of their own."""
        ids, documents, starts, maskable = [], [], [], []
        for number, (start, end) in enumerate(self.segments[self.row_starts[r]:self.row_starts[r + 1]], start=1):
            n = int(end - start)
            ids += [self.cls_id, *self.corpus.tokens[start:end].tolist(), self.sep_id]
            documents += [number] * (n + 2)
            starts += [1, *self.corpus.word_starts[start:end].tolist(), 1]
            maskable += [False] + [True] * n + [False]
        return (torch.tensor(ids, dtype=torch.long), torch.tensor(documents, dtype=torch.long),
                torch.tensor(starts, dtype=torch.bool), torch.tensor(maskable, dtype=torch.bool))


def pack_documents(corpus: Corpus, max_length: int, cls_id: int, sep_id: int) -> PackedRows:
    """Lays ``corpus`` into rows of at most ``max_length`` tokens (see the module docstring); a document
    longer than ``max_length - 2`` pieces is cut into segments of that many."""
    room = max_length - 2
    if room < 1:
        raise ValueError(f"--max-length {max_length} leaves no room for pieces beside [CLS] and [SEP]")
    segments, row_starts, lengths, used = [], [0], [], 0
    for d in range(len(corpus)):
        begin, end = int(corpus.documents[d]), int(corpus.documents[d + 1])
        for start in range(begin, end, room):
            size = min(room, end - start) + 2
            if used and used + size > max_length:
                row_starts.append(len(segments))
                lengths.append(used)
                used = 0
            segments.append((start, min(start + room, end)))
            used += size
    if used:
        row_starts.append(len(segments))
        lengths.append(used)
    return PackedRows(corpus, np.asarray(segments, dtype=np.int64).reshape(-1, 2), np.asarray(row_starts), lengths,
                      cls_id, sep_id)
