"""The masked-LM head on the masked positions only (fastbert/pretrain/head.py) gives the full head's loss."""

import pytest
import torch
import transformers
from conftest import tiny_config

import fastbert
from fastbert.pretrain.head import masked_lm_loss_sum, sequence_output

FAMILIES = {
    "BertForMaskedLM": lambda: tiny_config(),
    "BertForPreTraining": lambda: tiny_config(),
    "RobertaForMaskedLM": lambda: transformers.RobertaConfig(vocab_size=99, hidden_size=30, num_hidden_layers=1,
                                                             num_attention_heads=3, intermediate_size=50,
                                                             max_position_embeddings=40, hidden_dropout_prob=0.0,
                                                             attention_probs_dropout_prob=0.0),
    "ElectraForMaskedLM": lambda: transformers.ElectraConfig(vocab_size=99, embedding_size=20, hidden_size=30,
                                                             num_hidden_layers=1, num_attention_heads=3,
                                                             intermediate_size=50, hidden_dropout_prob=0.0,
                                                             attention_probs_dropout_prob=0.0),
    "DistilBertForMaskedLM": lambda: transformers.DistilBertConfig(vocab_size=99, dim=30, n_layers=1, n_heads=3,
                                                                   hidden_dim=50, dropout=0.0, attention_dropout=0.0),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_masked_only_head_equals_the_full_heads_loss_in_float64(name):
    torch.manual_seed(0)
    config = FAMILIES[name]()
    model = getattr(fastbert, name)(config).double()
    ids = torch.randint(5, config.vocab_size, (3, 17))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    labels = torch.full_like(ids, -100)
    picked = (torch.rand(ids.shape) < 0.3) & mask.bool()
    labels[picked] = ids[picked]
    def full_loss():  # the head over every position, the loss at the masked ones (BertForPreTraining: by hand)
        out = model(input_ids=ids, attention_mask=mask)
        scores = out.logits if hasattr(out, "logits") else out.prediction_logits
        return torch.nn.functional.cross_entropy(scores.flatten(0, 1), labels.flatten()), scores

    full, scores = full_loss()
    loss_sum, correct = masked_lm_loss_sum(model, sequence_output(model, input_ids=ids, attention_mask=mask), labels)
    torch.testing.assert_close(loss_sum / picked.sum(), full, rtol=1e-12, atol=1e-13)
    assert correct.item() == (scores.argmax(-1)[picked] == ids[picked]).sum().item()
    # and the gradient the head and the encoder get is the full loss's
    model.zero_grad()
    (loss_sum / picked.sum()).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    full_loss()[0].backward()
    for n, p in model.named_parameters():  # relative to each parameter's largest gradient entry
        if p.grad is not None and p.grad.abs().max() > 0:
            torch.testing.assert_close(ours[n], p.grad, rtol=0, atol=1e-10 * p.grad.abs().max().item() + 1e-15)
