"""BERT's masked-language-model corruption: each token (or each whole word) is picked with probability p;
a picked token becomes the mask token 80% of the time, a random token 10%, and stays 10%; special tokens and
padding are never picked. Drawn from a caller's generator, so a seed gives the same masks on every run."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

IGNORED = -100


def mask_tokens(input_ids: Tensor, maskable: Tensor, mask_token_id: int, vocab_size: int, probability: float,
                generator: torch.Generator, word_starts: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Corrupts ``input_ids`` for the masked-LM loss; returns ``(inputs, labels)``.

    Args:
        input_ids: int64 ``(batch, seqlen)``.
        maskable: bool ``(batch, seqlen)``, False at special tokens and padding.
        probability: the share of maskable tokens (or words) picked, e.g. 0.15.
        generator: a CPU generator; ``input_ids`` are expected on the CPU (a collate step).
        word_starts: bool ``(batch, seqlen)``, True where a piece starts a word: whole words are picked,
            each with ``probability`` (every piece of a picked word is corrupted the same way).
    Returns:
        ``inputs`` int64 like ``input_ids``; ``labels`` int64, the original id where picked, -100 elsewhere.
    """
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    shape = input_ids.shape
    if word_starts is None:
        picked = (torch.rand(shape, generator=generator) < probability) & maskable
        draw = torch.rand(shape, generator=generator)
    else:
        # word number of each piece (specials start their own words), one draw per word
        starts = word_starts | ~maskable
        words = torch.cumsum(starts.long(), dim=1) - 1  # 0-based within the row
        per_word = torch.rand(shape, generator=generator)
        picked = (torch.gather(per_word, 1, words) < probability) & maskable
        draw = torch.gather(torch.rand(shape, generator=generator), 1, words)
    labels = torch.where(picked, input_ids, torch.full_like(input_ids, IGNORED))
    random_ids = torch.randint(vocab_size, shape, generator=generator)
    inputs = torch.where(picked & (draw < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    inputs = torch.where(picked & (draw >= 0.8) & (draw < 0.9), random_ids, inputs)
    return inputs, labels
