"""fastbert.warmup (fastbert/tuning.py): one pass per tuning bucket, leaving the model as it was."""

import pytest
import torch

import fastbert
from conftest import tiny_config
from fastbert.tuning import warmup_shapes


def test_shapes_cover_every_length_and_token_bucket():
    shapes = warmup_shapes(max_tokens=256, max_seqlen=100)
    assert shapes[:4] == [(1, 1), (1, 2), (1, 4), (1, 8)]  # the feed-forward's smallest token buckets
    assert {length for _, length in shapes} == {1, 2, 4, 8, 16, 32, 64, 100}
    assert (16, 16) in shapes and (2, 100) in shapes and (4, 64) in shapes
    assert all(b * length <= 256 for b, length in shapes)
    assert warmup_shapes(8, 64)[-1] == (1, 64)  # a sequence longer than max_tokens still gets its bucket
    with pytest.raises(ValueError, match="max_tokens"):
        warmup_shapes(0, 64)


@pytest.mark.parametrize("head", ["BertForSequenceClassification", "BertForMultipleChoice", "BertForMaskedLM"])
def test_runs_the_encoder_on_each_shape_and_restores_the_model(monkeypatch, head):
    """The encoder runs (not the head: multiple choice wants 3-D inputs); mode, gradients and RNG come back."""
    torch.manual_seed(0)
    model = getattr(fastbert, head)(tiny_config(hidden_dropout_prob=0.1)).eval()
    model.bert.encoder.layer[0].output.dense.weight.grad = torch.ones_like(model.bert.encoder.layer[0].output.dense.weight)
    seen = []
    original = type(model.bert).forward
    monkeypatch.setattr(type(model.bert), "forward", lambda self, **kw: seen.append(
        (tuple(kw["input_ids"].shape), self.training)) or original(self, **kw))
    state = torch.random.get_rng_state()
    result = fastbert.warmup(model, max_tokens=64, max_seqlen=32, train=True)
    assert [shape for shape, _ in seen] == result["shapes"] == warmup_shapes(64, 32)
    assert all(training for _, training in seen)  # dropout on while warming up for training
    assert not any(m.training for m in model.modules()) and torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(model.bert.encoder.layer[0].output.dense.weight.grad, torch.ones_like(model.bert.encoder.layer[0].output.dense.weight))
    assert model.bert.embeddings.word_embeddings.weight.grad is None


def test_bad_arguments():
    model = fastbert.BertModel(tiny_config())
    with pytest.raises(ValueError, match="max_seqlen 65 exceeds the 64 tokens the model.s max_position_embeddings=64 take"):
        fastbert.warmup(model, max_seqlen=65)
    with pytest.raises(TypeError, match="must be or contain a transformers model"):
        fastbert.warmup(torch.nn.Linear(2, 2))


def test_roberta_default_length_leaves_out_the_positions_before_the_first_token():
    """RoBERTa's positions start at pad_token_id + 1: 20 positions take 18 tokens, the default longest warmup."""
    import transformers

    config = transformers.RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=40, max_position_embeddings=20, pad_token_id=1)
    model = fastbert.RobertaModel(config).eval()
    assert max(length for _, length in fastbert.warmup(model, max_tokens=40)["shapes"]) == 18
    with pytest.raises(ValueError, match="max_seqlen 19 exceeds the 18 tokens"):
        fastbert.warmup(model, max_seqlen=19)
