"""The bench's correctness section for every family: a model without a pooler (ELECTRA, DistilBERT) has no
pooled error, and the rest is measured as for BERT."""

import pytest
import torch
import transformers

from benchmarks import correctness

TINY = {
    "roberta": lambda: transformers.RobertaModel(transformers.RobertaConfig(
        vocab_size=99, hidden_size=30, num_hidden_layers=1, num_attention_heads=3, intermediate_size=50,
        max_position_embeddings=40)),
    "distilbert": lambda: transformers.DistilBertModel(transformers.DistilBertConfig(
        vocab_size=99, dim=30, n_layers=1, n_heads=3, hidden_dim=50)),
}


@pytest.mark.parametrize("family", list(TINY))
def test_compare_measures_every_family(family):
    torch.manual_seed(0)
    model = TINY[family]()
    ids = torch.randint(3, 99, (3, 9))
    mask = (torch.arange(9)[None, :] < torch.tensor([[9], [4], [6]])).long()
    result = correctness.compare(model, ids, mask, torch.float32, "torch")
    for impl in ("fastbert", "transformers"):
        assert result[impl]["hidden"] <= 1e-5 and result[impl]["grad"] <= 1e-4
        assert (result[impl]["pooled"] is None) == (family == "distilbert")
