"""fastbert.optimize on models users already have: transformers and sentence-transformers."""

import pytest
import torch
import transformers
from conftest import SENTENCES, random_batch, tiny_config
from torch import nn

import fastbert
from fastbert import modeling


def test_optimize_transformers_model_in_place():
    config = tiny_config()
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    params_before = {k: p for k, p in model.named_parameters()}
    ids, types, mask = random_batch(config)
    want = model(ids, token_type_ids=types, attention_mask=mask).logits

    assert fastbert.optimize(model) is model
    assert type(model) is fastbert.BertForSequenceClassification
    assert type(model.bert.encoder.layer[0].attention.self) is modeling.BertSelfAttention
    assert not model.training
    for key, param in model.named_parameters():  # the same objects: optimizers keep working
        assert param is params_before[key]
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad
    got = model(ids, token_type_ids=types, attention_mask=mask).logits
    assert (want - got).abs().max() <= 2e-5

    assert modeling.convert_modules(model) == 0  # idempotent
    assert fastbert.optimize(model) is model
    assert torch.equal(model(ids, token_type_ids=types, attention_mask=mask).logits, got)


def test_optimize_keeps_dtype_and_training_mode():
    model = transformers.BertModel(tiny_config()).to(torch.float64).train()
    fastbert.optimize(model)
    assert model.training and all(p.dtype == torch.float64 for p in model.parameters())
    ids, types, mask = random_batch(model.config)
    assert model(ids, attention_mask=mask).last_hidden_state.dtype == torch.float64


def test_optimize_sentence_transformer(minilm_path):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(minilm_path, device="cpu")
    want = model.encode(SENTENCES, convert_to_tensor=True)
    assert fastbert.optimize(model) is model
    inner = [m for m in model.modules() if isinstance(m, transformers.BertModel)]
    assert inner and all(type(m) is fastbert.BertModel for m in inner)
    got = model.encode(SENTENCES, convert_to_tensor=True)
    assert (want - got).abs().max() <= 2e-5


@pytest.mark.parametrize("thing", [nn.Sequential(nn.Linear(4, 4)), "bert", None])
def test_optimize_rejects_non_bert(thing):
    with pytest.raises(TypeError, match="BERT-family model|nn.Module"):
        fastbert.optimize(thing)


def test_optimize_rejects_decoder_before_touching_anything():
    model = transformers.BertLMHeadModel(tiny_config(is_decoder=True))
    with pytest.raises(ValueError, match="is_decoder"):
        fastbert.optimize(model)
    assert type(model.bert) is transformers.BertModel  # nothing was converted
