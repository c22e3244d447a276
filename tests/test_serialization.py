"""Checkpoints move both ways between fastbert and transformers with identical outputs."""

import pytest
import torch
import transformers
from conftest import random_batch, tiny_config

import fastbert


@pytest.mark.parametrize("name", ["BertModel", "BertForMaskedLM", "BertForPreTraining"])
def test_fastbert_checkpoint_loads_in_transformers_and_back(tmp_path, name):
    config = tiny_config()
    torch.manual_seed(0)
    model = getattr(fastbert, name)(config).eval()
    ids, types, mask = random_batch(config)
    model.save_pretrained(tmp_path / "fb")
    assert (tmp_path / "fb" / "model.safetensors").exists()

    reference, info = getattr(transformers, name).from_pretrained(tmp_path / "fb", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    reference.eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key

    reference.save_pretrained(tmp_path / "hf")
    back, info = getattr(fastbert, name).from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    back.eval()
    out = model(ids, token_type_ids=types, attention_mask=mask)
    again = back(ids, token_type_ids=types, attention_mask=mask)
    first = out.last_hidden_state if name == "BertModel" else out[0]
    assert torch.equal(first, again.last_hidden_state if name == "BertModel" else again[0])
    theirs = reference(ids, token_type_ids=types, attention_mask=mask)
    real = mask.bool()
    if name == "BertModel":
        assert (theirs.last_hidden_state[real] - first[real]).abs().max() <= 2e-5
    else:
        assert (theirs.logits if name == "BertForMaskedLM" else theirs.prediction_logits)[real].sub(
            first[real]).abs().max() <= 2e-5


def test_head_from_base_checkpoint_initialises_only_the_head(tmp_path, minilm_path):
    model, info = fastbert.BertForSequenceClassification.from_pretrained(
        minilm_path, num_labels=2, output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}
    assert not info["unexpected_keys"]
    assert torch.isfinite(model.classifier.weight).all()


def test_reexports():
    assert fastbert.BertConfig is transformers.BertConfig
    assert fastbert.BertTokenizer is transformers.BertTokenizer
    assert fastbert.BertTokenizerFast is transformers.BertTokenizerFast
    assert fastbert.AutoTokenizer is transformers.AutoTokenizer


class _Payload:
    """A pickled object that would run code on load if unpickling were unrestricted."""

    def __reduce__(self):
        return (print, ("payload ran",))


def test_pickle_checkpoints_load_with_weights_only(tmp_path):
    config = tiny_config()
    torch.manual_seed(0)
    model = fastbert.BertModel(config)
    model.config.save_pretrained(tmp_path / "plain")
    torch.save(model.state_dict(), tmp_path / "plain" / "pytorch_model.bin")
    loaded = fastbert.BertModel.from_pretrained(tmp_path / "plain")
    assert torch.equal(loaded.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)

    state = dict(model.state_dict(), evil=_Payload())
    model.config.save_pretrained(tmp_path / "evil")
    torch.save(state, tmp_path / "evil" / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|unsupported"):
        fastbert.BertModel.from_pretrained(tmp_path / "evil")
    with pytest.raises(ValueError, match="weights_only"):
        fastbert.BertModel.from_pretrained(tmp_path / "evil", weights_only=False)


def test_a_checkpoint_of_another_model_type_is_refused(tmp_path):
    """A RoBERTa folder would load into BERT's modules with a warning and wrong numbers."""
    config = transformers.RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32)
    transformers.RobertaModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a 'roberta' checkpoint; fastbert's BertModel takes 'bert'"):
        fastbert.BertModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'roberta'"):
        fastbert.BertForSequenceClassification.from_pretrained(str(tmp_path))
