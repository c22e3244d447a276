"""``document_ids``: rows packing several documents (pretraining). Every family's base model gives each
document the numbers it gets alone, and transformers gives the same with a block-diagonal 4-D mask and
per-document position ids (what ``fastbert pretrain --reference`` feeds it)."""

import pytest
import torch
import transformers
from conftest import tiny_config

import fastbert
from fastbert.padding import document_positions

CONFIGS = {
    "BertModel": lambda: tiny_config(),
    "RobertaModel": lambda: transformers.RobertaConfig(vocab_size=99, hidden_size=30, num_hidden_layers=2,
                                                       num_attention_heads=3, intermediate_size=50,
                                                       max_position_embeddings=40, hidden_dropout_prob=0.0,
                                                       attention_probs_dropout_prob=0.0),
    "ElectraModel": lambda: transformers.ElectraConfig(vocab_size=99, embedding_size=20, hidden_size=30,
                                                       num_hidden_layers=2, num_attention_heads=3,
                                                       intermediate_size=50, hidden_dropout_prob=0.0,
                                                       attention_probs_dropout_prob=0.0),
    "DistilBertModel": lambda: transformers.DistilBertConfig(vocab_size=99, dim=30, n_layers=2, n_heads=3,
                                                             hidden_dim=50, dropout=0.0, attention_dropout=0.0),
}
DOCS = torch.tensor([[1, 1, 1, 2, 2, 2, 2, 3, 0, 0, 0, 0, 0],
                     [1] * 13,
                     [5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 0]])


def block_diagonal(docs):
    """transformers' equivalent: tokens attend within their document (padding to itself, to stay finite)."""
    same = (docs[:, :, None] == docs[:, None, :]) & (docs[:, :, None] != 0)
    return (same | torch.eye(docs.shape[1], dtype=torch.bool))[:, None]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_document_gets_its_numbers_alone_and_transformers_its_with_a_4d_mask(name):
    torch.manual_seed(0)
    config = CONFIGS[name]()
    reference = getattr(transformers, name)(config).eval()
    model = getattr(fastbert, name)(config).eval()
    model.load_state_dict(reference.state_dict())
    ids = torch.randint(5, config.vocab_size, DOCS.shape)
    with torch.no_grad():
        packed = model(input_ids=ids, document_ids=DOCS).last_hidden_state
        for row in range(DOCS.shape[0]):
            for doc in DOCS[row].unique().tolist():
                if doc:
                    where = (DOCS[row] == doc).nonzero().flatten()
                    alone = reference(input_ids=ids[row:row + 1, where]).last_hidden_state[0]
                    torch.testing.assert_close(packed[row, where], alone, atol=2e-6, rtol=1e-5)
        assert packed[DOCS == 0].abs().max() == 0
        theirs = reference(input_ids=ids, attention_mask=block_diagonal(DOCS),
                           position_ids=document_positions(DOCS, model._position_offset())).last_hidden_state
    torch.testing.assert_close(packed[DOCS != 0], theirs[DOCS != 0], atol=2e-6, rtol=1e-5)


def test_document_ids_train_with_the_gradients_of_separate_documents():
    torch.manual_seed(0)
    model = fastbert.BertModel(tiny_config(), add_pooling_layer=False)
    ids = torch.randint(5, 200, DOCS.shape)
    weights = torch.randn(*DOCS.shape, model.config.hidden_size)
    (model(input_ids=ids, document_ids=DOCS).last_hidden_state * weights).sum().backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for row in range(DOCS.shape[0]):
        for doc in DOCS[row].unique().tolist():
            if doc:
                where = (DOCS[row] == doc).nonzero().flatten()
                (model(input_ids=ids[row:row + 1, where]).last_hidden_state[0] * weights[row, where]).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(packed[n], p.grad, atol=1e-5 * p.grad.abs().max().item() + 1e-7, rtol=0)


@pytest.mark.parametrize("extra, message", [
    ({"attention_mask": torch.ones(3, 13, dtype=torch.long)}, "without attention_mask"),
    ({"output_attentions": True}, "does not go with output_attentions"),
    ({"document_ids": torch.ones(3, 12, dtype=torch.long)}, "shaped like input_ids"),
])
def test_bad_document_ids_calls_are_refused(extra, message):
    model = fastbert.BertModel(tiny_config())
    kwargs = {"input_ids": torch.ones(3, 13, dtype=torch.long), "document_ids": DOCS, **extra}
    with pytest.raises(ValueError, match=message):
        model(**kwargs)
