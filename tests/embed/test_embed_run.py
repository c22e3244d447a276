"""The embedding plan (fastbert/embed/run.py): chunks longest first, token-budget batches, in-memory results
in input order."""

import numpy as np
import torch

from fastbert.embed.inputs import Texts
from fastbert.embed.run import (SMALL_BATCH_PADDING, SMALL_BATCH_TOKENS, encode_texts, plan_chunks,
                               token_batches)


def test_chunks_run_longest_first_and_cover_every_text_once():
    texts = Texts(texts=["a" * n for n in (3, 9, 1, 7, 7, 2)])
    chunks = plan_chunks(texts, 4)
    assert [c.tolist() for c in chunks] == [[1, 3, 4, 0], [5, 2]]


def test_batches_keep_rows_times_longest_within_the_budget():
    lengths = np.array([5, 40, 3, 12, 12, 80, 2])
    batches = token_batches(lengths, 48)
    assert sorted(np.concatenate(batches).tolist()) == list(range(7))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 48
    assert batches[0].tolist() == [5]  # longer than the budget: alone


def test_batches_on_a_cpu_keep_their_padding_small():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 300, size=700)
    batches = token_batches(lengths, 4096, max_padding=1 / 16)
    assert sorted(np.concatenate(batches).tolist()) == list(range(700))
    for batch in batches:
        padded = len(batch) * lengths[batch].max()
        allowed = 1 / 16 if padded > SMALL_BATCH_TOKENS else SMALL_BATCH_PADDING
        assert padded <= 4096 or len(batch) == 1
        assert padded - lengths[batch].sum() <= allowed * padded
    unbounded = token_batches(lengths, 4096)
    padding = sum(len(b) * lengths[b].max() - lengths[b].sum() for b in unbounded)
    assert padding > sum(len(b) * lengths[b].max() - lengths[b].sum() for b in batches)  # the bound took effect
    assert len(batches) < 3 * len(unbounded)


class Lengths:
    """A stand-in encoder: each text's result is its token count and its first id."""

    device = torch.device("cpu")

    def tokenize(self, texts, pairs=None):
        ids = torch.zeros(len(texts), max(len(t) for t in texts), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, text in enumerate(texts):
            ids[row, :len(text)] = torch.tensor([ord(c) for c in text])
            mask[row, :len(text)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def run(self, features):
        return torch.stack([features["attention_mask"].sum(1), features["input_ids"][:, 0]], 1).float()


def test_results_come_back_in_input_order():
    words = ["b" * n for n in (4, 1, 9, 3, 3, 6, 2, 8)]
    out = encode_texts(Lengths(), Texts(texts=words), max_tokens=10, chunk_texts=3)
    assert out.tolist() == [[len(w), ord("b")] for w in words]
