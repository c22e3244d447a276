"""Packing and the masked-LM objective (fastbert/pretrain/rows.py, task.py): rows hold every piece once, in
order, within max_length; a packed row's loss is the sum of its documents' losses run alone, for every
family, and transformers' model (the --reference path) gives the same."""

import numpy as np
import pytest
import torch
import transformers
from conftest import tiny_config

import fastbert
from fastbert.pretrain.corpus import Corpus
from fastbert.pretrain.masking import IGNORED
from fastbert.pretrain.rows import pack_documents
from fastbert.pretrain.task import MaskedLM, MaskedLMObjective

CLS, SEP, MASK = 4, 5, 6  # clear of the pad ids (RoBERTa: 1, which its positions skip)


def corpus(lengths, vocab=90, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(10, vocab, sum(lengths)).astype(np.uint16)
    starts = (rng.random(sum(lengths)) < 0.6).astype(np.uint8)
    return Corpus(None, tokens, starts, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def test_rows_hold_every_piece_once_in_order_within_max_length():
    data = corpus([5, 30, 1, 12, 7, 70, 3])
    rows = pack_documents(data, 16, CLS, SEP)
    pieces = []
    for r in range(len(rows)):
        ids, docs, starts, maskable = rows.row(r)
        assert len(ids) == rows.lengths[r] <= 16
        for d in docs.unique().tolist():
            segment = ids[docs == d]
            assert segment[0] == CLS and segment[-1] == SEP and len(segment) <= 16
            assert not maskable[docs == d][[0, -1]].any() and maskable[docs == d][1:-1].all()
            pieces += segment[1:-1].tolist()
    assert pieces == data.tokens.tolist()  # nothing lost, nothing twice, in corpus order
    assert sum(rows.lengths) == data.num_tokens + 2 * len(rows.segments)
    assert len(rows) < len(rows.segments)  # several documents share rows
    with pytest.raises(ValueError, match="no room"):
        pack_documents(data, 2, CLS, SEP)


FAMILIES = {
    "BertForMaskedLM": lambda: tiny_config(vocab_size=90),
    "RobertaForMaskedLM": lambda: transformers.RobertaConfig(vocab_size=90, hidden_size=30, num_hidden_layers=2,
                                                             num_attention_heads=3, intermediate_size=50,
                                                             max_position_embeddings=40, hidden_dropout_prob=0.0,
                                                             attention_probs_dropout_prob=0.0),
    "ElectraForMaskedLM": lambda: transformers.ElectraConfig(vocab_size=90, embedding_size=20, hidden_size=30,
                                                             num_hidden_layers=2, num_attention_heads=3,
                                                             intermediate_size=50, hidden_dropout_prob=0.0,
                                                             attention_probs_dropout_prob=0.0),
    "DistilBertForMaskedLM": lambda: transformers.DistilBertConfig(vocab_size=90, dim=30, n_layers=2, n_heads=3,
                                                                   hidden_dim=50, dropout=0.0, attention_dropout=0.0),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_packed_rows_loss_is_its_documents_losses_run_alone(name):
    torch.manual_seed(0)
    config = FAMILIES[name]()
    reference = getattr(transformers, name)(config).eval()
    model = getattr(fastbert, name)(config).eval()
    model.load_state_dict(reference.state_dict())
    rows = pack_documents(corpus([5, 9, 2, 14, 6, 3, 11]), 24, CLS, SEP)
    task = MaskedLM(MASK, config.vocab_size, probability=0.3, seed=1)
    collated = task.collate_share(rows, list(range(len(rows))), epoch=0, pad_id=0)
    assert collated["units"] == (collated["labels"] != IGNORED).sum() == len(collated["masked_index"])
    batch = {key: collated[key] for key in task.inputs}
    with torch.no_grad():
        ours = MaskedLMObjective(model)(**batch)
        theirs = MaskedLMObjective(reference, reference=True)(**batch)
        alone = 0.0
        for r in range(len(rows)):
            for d in batch["document_ids"][r].unique().tolist():
                if d:
                    where = batch["document_ids"][r] == d
                    ids, labels = batch["input_ids"][r, where][None], batch["labels"][r, where][None]
                    logits = reference(input_ids=ids).logits[0]
                    alone += torch.nn.functional.cross_entropy(logits, labels[0], reduction="sum").item()
    torch.testing.assert_close(ours["mlm_sum"].item(), alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs["mlm_sum"], ours["mlm_sum"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["mlm_rows"].sum(), ours["mlm_sum"], rtol=1e-6, atol=1e-6)
    assert torch.equal(ours["masked"], (batch["labels"] != IGNORED).sum(1))


def test_masks_differ_by_epoch_and_repeat_for_the_same_epoch():
    rows = pack_documents(corpus([40, 40]), 24, CLS, SEP)
    task = MaskedLM(MASK, 90, seed=3)
    a, b, c = (task.collate_share(rows, [0, 1], epoch, 0)["labels"] for epoch in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_nsp_pairs_are_half_continuations_half_random_with_bert_token_types():
    from fastbert.pretrain.nsp import NextSentencePrediction, cut_into_chunks

    data = corpus([30, 25, 40, 18, 33, 27] * 4, seed=2)
    pairs = cut_into_chunks(data, 24, CLS, SEP)
    task = NextSentencePrediction(MASK, 90, probability=0.15, seed=5)
    labels_seen = []
    for i in range(len(pairs)):
        inputs, types, labels, maskable, random_next = task.pair(pairs, i, epoch=0)
        original = torch.where(labels != IGNORED, labels, inputs)
        seps = (original == SEP).nonzero().flatten().tolist()
        first, second = original[1:seps[0]], original[seps[0] + 1:-1]
        assert original[0] == CLS and original[-1] == SEP and len(original) <= 24
        assert types.tolist() == [0] * (seps[0] + 1) + [1] * (len(original) - seps[0] - 1)
        assert not (labels[~maskable] != IGNORED).any()
        document, start, end = pairs.chunks[i].tolist()
        assert first.tolist() == data.tokens[start:start + len(first)].tolist()
        if not random_next:
            assert second.tolist() == data.tokens[start + len(first):end].tolist()
        labels_seen.append(random_next)
    assert 0.35 < sum(labels_seen) / len(labels_seen) < 0.65
    again = task.collate_share(pairs, [0, 1, 2], 0, 0)
    assert torch.equal(again["labels"], task.collate_share(pairs, [0, 1, 2], 0, 0)["labels"])
    assert torch.equal(again["next_sentence_label"], torch.tensor([task.pair(pairs, i, 0)[4] for i in range(3)]))
