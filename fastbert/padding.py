"""Unpad once, run packed, pad once: the token layout of the padding-free encoder.

A padded batch ``(batch, seqlen)`` with a 0/1 ``attention_mask`` becomes ``total_tokens`` packed rows
plus ``cu_seqlens`` (int32, sequence ``i`` is rows ``[cu[i], cu[i+1])``) and ``max_seqlen``. Any 0/1
mask works, not only right padding: the real tokens of each row keep their order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass
class PackedLayout:
    """Where the packed rows came from in the padded ``(batch, seqlen)`` grid.

    indices: int64 ``(rows,)`` flat grid positions of the packed rows, or None when every position is
        a real token (the packed rows are then the grid itself, in order).
    cu_seqlens: int32 ``(sequences + 1,)`` sequence boundaries over the packed rows.
    max_seqlen: an upper bound of the longest sequence.
    keep: bool ``(batch * seqlen,)`` mask of real positions, set when the packed rows include padding
        (the static layout); those rows are zeroed when scattered back.
    """

    batch: int
    seqlen: int
    indices: Optional[Tensor]
    cu_seqlens: Tensor
    max_seqlen: int
    keep: Optional[Tensor] = None


def full_layout(batch: int, seqlen: int, device: torch.device) -> PackedLayout:
    """Every position is a real token: no gather at all."""
    cu = torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device=device)
    return PackedLayout(batch, seqlen, None, cu, seqlen)


def unpad_layout(mask: Tensor, reads: Optional[Tensor] = None) -> Optional[PackedLayout]:
    """Packs only the real tokens of a 0/1 ``mask`` ``(batch, seqlen)``: the padding-free layout.

    reads: None or bool ``(batch, seqlen)``, the positions the caller's result reads; if one of them is
    padded there is no packed layout that gives its value, and None is returned.
    One host read in all: the token count, the longest length and whether a read position is padded.
    """
    batch, seqlen = mask.shape
    real = mask.bool()
    lengths = real.sum(1, dtype=torch.int32)
    padded_read = (reads & ~real).any() if reads is not None else real.new_zeros(())
    facts = torch.stack([lengths.sum(dtype=torch.int64), lengths.max().long() if batch else lengths.sum(),
                         padded_read.long()])
    total, longest, must_stay_padded = facts.tolist()
    if must_stay_padded:
        return None
    if total == batch * seqlen:
        return full_layout(batch, seqlen, mask.device)
    indices = torch.nonzero_static(real.flatten(), size=total).flatten()
    cu = torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
    return PackedLayout(batch, seqlen, indices, cu, longest)


def document_layout(document_ids: Tensor) -> PackedLayout:
    """Packs rows that hold several documents each: ``document_ids`` int ``(batch, seqlen)``, 0 at padding;
    each run of one nonzero id within a row is a sequence of its own, so documents sharing a row never
    attend to each other. Two host reads (the token and sequence counts, then the longest sequence)."""
    batch, seqlen = document_ids.shape
    flat = document_ids.flatten()
    real = flat != 0
    previous = torch.nn.functional.pad(flat[:-1], (1, 0))
    row_start = torch.arange(batch * seqlen, device=flat.device) % seqlen == 0
    starts = real & ((flat != previous) | row_start)
    total, sequences = torch.stack([real.sum(), starts.sum()]).tolist()
    indices = torch.nonzero_static(real, size=total).flatten()
    first = torch.nonzero_static(starts[indices], size=sequences).flatten()
    cu = torch.cat([first, first.new_full((1,), total)]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max()) if sequences else 0
    if total == batch * seqlen and sequences == batch:
        return full_layout(batch, seqlen, flat.device)
    return PackedLayout(batch, seqlen, indices, cu, longest)


def document_positions(document_ids: Tensor, offset: int = 0) -> Tensor:
    """Each token's position within its document (the run of one id in its row, see
    :func:`document_layout`), plus ``offset``: int64 ``(batch, seqlen)``, ``offset`` at padding."""
    batch, seqlen = document_ids.shape
    index = torch.arange(seqlen, device=document_ids.device).expand(batch, seqlen)
    previous = torch.nn.functional.pad(document_ids[:, :-1], (1, 0), value=-1)
    starts = torch.where(document_ids != previous, index, torch.zeros_like(index))
    first = torch.cummax(starts, dim=1).values  # where each token's run began
    return torch.where(document_ids != 0, index - first, torch.zeros_like(index)) + offset


def static_layout(mask: Tensor) -> PackedLayout:
    """A layout with static shapes for ``torch.compile``: no host read, no data-dependent size.

    Every row keeps all ``seqlen`` slots, real tokens first (stable order), and its padding tail becomes
    a sequence of its own, so real tokens attend only to real tokens while the token count stays
    ``batch * seqlen``. Padding rows are computed and zeroed when scattered back.
    """
    batch, seqlen = mask.shape
    real = mask.bool()
    order = torch.sort((~real).to(torch.int8), dim=1, stable=True).indices
    rows = torch.arange(batch, device=mask.device)[:, None] * seqlen
    indices = (rows + order).flatten()
    lengths = real.sum(1, dtype=torch.int32)
    starts = torch.arange(batch, dtype=torch.int32, device=mask.device) * seqlen
    bounds = torch.stack([starts, starts + lengths], dim=1).flatten()
    cu = torch.cat([bounds, bounds.new_full((1,), batch * seqlen)])
    return PackedLayout(batch, seqlen, indices, cu, seqlen, keep=real.flatten())


def gather(x: Tensor, layout: PackedLayout) -> Tensor:
    """``(batch, seqlen, ...)`` -> packed ``(rows, ...)``."""
    flat = x.reshape(layout.batch * layout.seqlen, *x.shape[2:])
    return flat if layout.indices is None else flat.index_select(0, layout.indices)


def scatter(x: Tensor, layout: PackedLayout) -> Tensor:
    """Packed ``(rows, ...)`` -> ``(batch, seqlen, ...)`` with zeros at padded positions."""
    tail = x.shape[1:]
    if layout.indices is None:
        return x.reshape(layout.batch, layout.seqlen, *tail)
    grid = x.new_zeros(layout.batch * layout.seqlen, *tail).index_copy(0, layout.indices, x)
    if layout.keep is not None:
        grid = torch.where(layout.keep.view(-1, *([1] * len(tail))), grid, 0)  # zeros even for inf/NaN
    return grid.view(layout.batch, layout.seqlen, *tail)
