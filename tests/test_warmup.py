"""fastbert.warmup: one pass per tuning bucket, leaving the model as it was."""

import pytest
import torch

import fastbert
from conftest import tiny_config
from fastbert.warmup import warmup_shapes


def test_shapes_cover_every_length_and_token_bucket():
    shapes = warmup_shapes(max_tokens=256, max_seqlen=100)
    assert {length for _, length in shapes} == {16, 32, 64, 100}
    assert (16, 16) in shapes and (2, 100) in shapes and (4, 64) in shapes
    assert all(b * length <= 256 for b, length in shapes)
    assert warmup_shapes(8, 64)[-1] == (1, 64)  # a sequence longer than max_tokens still gets its bucket
    with pytest.raises(ValueError, match="max_tokens"):
        warmup_shapes(0, 64)


def test_runs_each_shape_and_restores_the_model(monkeypatch):
    torch.manual_seed(0)
    model = fastbert.BertForSequenceClassification(tiny_config(hidden_dropout_prob=0.1)).train()
    model.classifier.weight.grad = torch.ones_like(model.classifier.weight)
    seen = []
    original = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, **kw: seen.append(tuple(kw["input_ids"].shape))
                        or original(self, **kw))
    state = torch.random.get_rng_state()
    result = fastbert.warmup(model, max_tokens=64, max_seqlen=32)
    assert seen == result["shapes"] == warmup_shapes(64, 32)
    assert model.training and torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(model.classifier.weight.grad, torch.ones_like(model.classifier.weight))
    assert model.bert.embeddings.word_embeddings.weight.grad is None


def test_bad_arguments():
    model = fastbert.BertModel(tiny_config())
    with pytest.raises(ValueError, match="max_position_embeddings 64"):
        fastbert.warmup(model, max_seqlen=65)
    with pytest.raises(TypeError, match="must be or contain a transformers model"):
        fastbert.warmup(torch.nn.Linear(2, 2))
