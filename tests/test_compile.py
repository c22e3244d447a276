"""torch.compile(fullgraph=True) runs fastbert on the CPU and matches eager."""

import pytest
import torch
import transformers
from conftest import random_batch, tiny_config

import fastbert


def test_compile_fullgraph_matches_eager():
    config = tiny_config()
    torch.manual_seed(0)
    model = fastbert.BertForSequenceClassification(config).eval()
    ids, types, mask = random_batch(config)
    mask[2, 4] = 0  # a hole in the middle too
    labels = torch.tensor([0, 2, 1, 1])
    eager = model(ids, token_type_ids=types, attention_mask=mask, labels=labels)
    left = mask.flip(1)  # left padding: the pooler reads a pad token, but here only the hidden states are read
    eager_hidden = model.bert(ids, token_type_ids=types, attention_mask=left, padding_free=True).last_hidden_state

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    got = compiled(ids, token_type_ids=types, attention_mask=mask, labels=labels)
    assert (got.logits - eager.logits).abs().max() <= 1e-5
    assert (got.loss - eager.loss).abs() <= 1e-5

    compiled_bert = torch.compile(model.bert, fullgraph=True)
    hidden = compiled_bert(ids, token_type_ids=types, attention_mask=left, padding_free=True).last_hidden_state
    assert (hidden - eager_hidden).abs().max() <= 1e-5
    assert (hidden[left == 0] == 0).all()


def test_compiled_call_reading_a_padded_position_fails_loudly_or_runs_exact():
    """Under torch.compile the exact path cannot be chosen from the labels' values: an input with a label at
    a padded position fails an assertion naming the way out, and padding_free=False gives transformers' loss."""
    config = tiny_config()
    torch.manual_seed(0)
    reference = transformers.BertForTokenClassification(config).eval()
    model = fastbert.BertForTokenClassification(config).eval()
    model.load_state_dict(reference.state_dict())
    ids, types, mask = random_batch(config)
    labels = torch.randint(0, config.num_labels, ids.shape)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with pytest.raises(RuntimeError, match="padding_free=False"):
        compiled(ids, attention_mask=mask, labels=labels)
    got = compiled(ids, attention_mask=mask, labels=labels, padding_free=False)
    assert (got.loss - reference(ids, attention_mask=mask, labels=labels).loss).abs() <= 1e-5


def test_compile_fullgraph_backward_matches_eager():
    config = tiny_config()
    torch.manual_seed(0)
    model = fastbert.BertForSequenceClassification(config).train()
    ids, types, mask = random_batch(config)
    labels = torch.tensor([0, 2, 1, 1])
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    eager = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    torch._dynamo.reset()
    torch.compile(model, fullgraph=True)(ids, attention_mask=mask, labels=labels).loss.backward()
    for key, grad in eager.items():
        torch.testing.assert_close(model.get_parameter(key).grad, grad, rtol=1e-4, atol=1e-6, msg=key)
