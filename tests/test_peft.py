"""PEFT LoRA adapters on transformers' module names attach to fastbert models and train."""

import pytest
import torch
import transformers
from conftest import random_batch, tiny_config

import fastbert

peft = pytest.importorskip("peft")


def lora(model):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "dense"], lora_dropout=0.0,
                             task_type="SEQ_CLS")
    return peft.get_peft_model(model, config)


def test_lora_matches_transformers_and_trains():
    config = tiny_config()
    torch.manual_seed(0)
    reference = transformers.BertForSequenceClassification(config)
    model = fastbert.BertForSequenceClassification(config)
    model.load_state_dict(reference.state_dict())
    torch.manual_seed(1)
    reference = lora(reference)
    torch.manual_seed(1)
    model = lora(model)
    with torch.no_grad():  # non-zero B so the adapters change the outputs
        for (_, a), (_, b) in zip(reference.named_parameters(), model.named_parameters()):
            if "lora_B" in _:
                a.normal_(0, 0.02)
                b.copy_(a)
    ids, types, mask = random_batch(config)
    labels = torch.tensor([0, 2, 1, 1])
    layer = model.base_model.model.bert.encoder.layer[0]
    assert isinstance(layer.attention.self.query, peft.tuners.lora.Linear)
    assert isinstance(layer.intermediate.dense, peft.tuners.lora.Linear)

    want = reference(input_ids=ids, attention_mask=mask, labels=labels)
    got = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert (want.logits - got.logits).abs().max() <= 2e-5

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    frozen = model.base_model.model.bert.embeddings.word_embeddings.weight.clone()
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert torch.equal(frozen, model.base_model.model.bert.embeddings.word_embeddings.weight)
    assert layer.attention.self.query.lora_A["default"].weight.grad is not None
