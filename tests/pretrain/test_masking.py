"""BERT's masked-LM corruption (fastbert/pretrain/masking.py): rate, 80/10/10, never a special token,
whole words all or nothing, and the same masks from the same seed."""

import pytest
import torch

from fastbert.pretrain.masking import IGNORED, mask_tokens

MASK, VOCAB = 3, 1000


def batch(rows=64, seqlen=513, seed=0):
    """Random ids in [10, VOCAB); column 0 and each row's last real token are specials; rows padded at the end."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, VOCAB, (rows, seqlen), generator=gen)
    lengths = torch.randint(seqlen // 2, seqlen + 1, (rows,), generator=gen)
    real = torch.arange(seqlen)[None] < lengths[:, None]
    maskable = real.clone()
    maskable[:, 0] = False
    maskable[torch.arange(rows), lengths - 1] = False
    return ids, maskable


def test_rate_and_80_10_10_and_never_a_special_token():
    ids, maskable = batch()
    inputs, labels = mask_tokens(ids, maskable, MASK, VOCAB, 0.15, torch.Generator().manual_seed(1))
    picked = labels != IGNORED
    assert not (picked & ~maskable).any()
    assert torch.equal(labels[picked], ids[picked]) and torch.equal(inputs[~picked], ids[~picked])
    n = maskable.sum().item()
    rate = picked.sum().item() / n
    assert abs(rate - 0.15) < 4 * (0.15 * 0.85 / n) ** 0.5  # within 4 standard deviations
    k = picked.sum().item()
    masked = (inputs[picked] == MASK).sum().item() / k
    kept = (inputs[picked] == ids[picked]).sum().item() / k
    replaced = 1 - masked - kept
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1 - 0.1 / VOCAB) < 0.015 and abs(replaced - 0.1) < 0.015


def test_whole_words_are_picked_all_or_nothing_at_the_word_rate():
    ids, maskable = batch(rows=32)
    gen = torch.Generator().manual_seed(2)
    starts = torch.rand(ids.shape, generator=gen) < 0.4  # words of 2.5 pieces on average
    starts[:, 1] = True
    inputs, labels = mask_tokens(ids, maskable, MASK, VOCAB, 0.15, torch.Generator().manual_seed(3), starts)
    picked = labels != IGNORED
    words = torch.cumsum((starts | ~maskable).long(), 1)
    decided = {}
    for row in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            if not maskable[row, t]:
                continue
            key = (row, words[row, t].item())
            state = (picked[row, t].item(), inputs[row, t].item() == MASK if picked[row, t] else None)
            assert decided.setdefault(key, state)[0] == state[0], key  # one decision per word
    rate = sum(p for p, _ in decided.values()) / len(decided)
    assert abs(rate - 0.15) < 4 * (0.15 * 0.85 / len(decided)) ** 0.5
    masked_words = [m for p, m in decided.values() if p]
    assert abs(sum(masked_words) / len(masked_words) - 0.8) < 0.05


def test_the_same_seed_gives_the_same_masks_and_another_seed_others():
    ids, maskable = batch(rows=4, seqlen=65)
    a = mask_tokens(ids, maskable, MASK, VOCAB, 0.15, torch.Generator().manual_seed(7))
    b = mask_tokens(ids, maskable, MASK, VOCAB, 0.15, torch.Generator().manual_seed(7))
    c = mask_tokens(ids, maskable, MASK, VOCAB, 0.15, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1])
def test_a_probability_outside_0_1_is_refused(p):
    ids, maskable = batch(rows=1, seqlen=7)
    with pytest.raises(ValueError, match="probability must be in"):
        mask_tokens(ids, maskable, MASK, VOCAB, p, torch.Generator())
