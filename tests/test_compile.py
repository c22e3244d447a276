"""torch.compile(fullgraph=True) runs fastbert on the CPU and matches eager."""

import torch
from conftest import random_batch, tiny_config

import fastbert


def test_compile_fullgraph_matches_eager():
    config = tiny_config()
    torch.manual_seed(0)
    model = fastbert.BertForSequenceClassification(config).eval()
    ids, types, mask = random_batch(config, padding="left")
    mask[2, 4] = 0  # a hole in the middle too
    labels = torch.tensor([0, 2, 1, 1])
    eager = model(ids, token_type_ids=types, attention_mask=mask, labels=labels)
    eager_hidden = model.bert(ids, token_type_ids=types, attention_mask=mask).last_hidden_state

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    got = compiled(ids, token_type_ids=types, attention_mask=mask, labels=labels)
    assert (got.logits - eager.logits).abs().max() <= 1e-5
    assert (got.loss - eager.loss).abs() <= 1e-5

    compiled_bert = torch.compile(model.bert, fullgraph=True)
    hidden = compiled_bert(ids, token_type_ids=types, attention_mask=mask).last_hidden_state
    assert (hidden - eager_hidden).abs().max() <= 1e-5
    assert (hidden[mask == 0] == 0).all()


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
