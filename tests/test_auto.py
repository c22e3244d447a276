"""``fastbert.AutoModel*``: the fastbert class of a checkpoint's or config's model type, transformers'
loading arguments, and a clear error for a type or task fastbert does not have."""

import pytest
import torch
import transformers
from conftest import tiny_config

import fastbert
from fastbert import auto

CONFIGS = {
    "bert": lambda: tiny_config(),
    "roberta": lambda: transformers.RobertaConfig(vocab_size=99, hidden_size=30, num_hidden_layers=1,
                                                  num_attention_heads=3, intermediate_size=50,
                                                  max_position_embeddings=40),
    "xlm-roberta": lambda: transformers.XLMRobertaConfig(vocab_size=99, hidden_size=30, num_hidden_layers=1,
                                                         num_attention_heads=3, intermediate_size=50,
                                                         max_position_embeddings=40),
    "camembert": lambda: transformers.CamembertConfig(vocab_size=99, hidden_size=30, num_hidden_layers=1,
                                                      num_attention_heads=3, intermediate_size=50,
                                                      max_position_embeddings=40),
    "electra": lambda: transformers.ElectraConfig(vocab_size=99, embedding_size=20, hidden_size=30,
                                                  num_hidden_layers=1, num_attention_heads=3, intermediate_size=50),
    "distilbert": lambda: transformers.DistilBertConfig(vocab_size=99, dim=30, n_layers=1, n_heads=3, hidden_dim=50),
}
AUTO_CLASSES = [name for name in auto.TASKS]


@pytest.mark.parametrize("model_type", list(CONFIGS))
@pytest.mark.parametrize("auto_name", AUTO_CLASSES)
def test_from_config_picks_the_familys_class_for_the_task(auto_name, model_type):
    """The class transformers' Auto class would build, in fastbert's version."""
    config = CONFIGS[model_type]()
    ours = getattr(fastbert, auto_name)
    if model_type not in auto.TASKS[auto_name]:
        with pytest.raises(ValueError, match=f"does not take model_type={model_type!r}"):
            ours.from_config(config)
        return
    model = ours.from_config(config)
    theirs = type(getattr(transformers, auto_name).from_config(config))
    assert type(model).__name__ == theirs.__name__ and isinstance(model, theirs)
    assert type(model).__module__.startswith("fastbert")


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_from_pretrained_loads_the_checkpoint_with_config_overrides(model_type, tmp_path):
    torch.manual_seed(0)
    saved = transformers.AutoModel.from_config(CONFIGS[model_type]())
    saved.save_pretrained(tmp_path)
    model, info = fastbert.AutoModelForSequenceClassification.from_pretrained(
        tmp_path, num_labels=5, output_loading_info=True)
    assert type(model).__name__.endswith("ForSequenceClassification") and model.config.num_labels == 5
    # RoBERTa's classifier reads <s> with its own head: the base model's pooler is left out, as in transformers
    assert all(key.startswith("pooler.") for key in info["unexpected_keys"])
    base = model.base_model.state_dict()
    for key, value in saved.state_dict().items():
        assert key.startswith("pooler.") or torch.equal(base[key], value), key
    again = fastbert.AutoModel.from_pretrained(tmp_path, config=saved.config)
    assert type(again).__name__ == type(saved).__name__


def test_a_type_fastbert_does_not_take_is_named(tmp_path):
    transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"fastbert.AutoModel does not take model_type='gpt2'; it takes 'bert', 'roberta'"):
        fastbert.AutoModel.from_pretrained(tmp_path)
    with pytest.raises(EnvironmentError, match="from_pretrained"):
        fastbert.AutoModel()


@pytest.mark.parametrize("argument", ["dtype", "torch_dtype"])
def test_from_pretrained_takes_dtype_auto_and_a_given_dtype(argument, tmp_path):
    """dtype="auto" keeps the checkpoint's dtype, a torch dtype converts, as transformers' Auto classes do."""
    saved = transformers.AutoModel.from_config(CONFIGS["roberta"]()).to(torch.bfloat16)
    saved.save_pretrained(tmp_path)
    for value, expected in (("auto", torch.bfloat16), (torch.float64, torch.float64)):
        ours = fastbert.AutoModel.from_pretrained(tmp_path, **{argument: value})
        theirs = transformers.AutoModel.from_pretrained(tmp_path, **{argument: value})
        assert ours.dtype == theirs.dtype == expected and ours.config.dtype == theirs.config.dtype


def test_from_pretrained_hands_quantization_config_to_the_model_not_the_config(tmp_path, monkeypatch):
    """A quantization_config goes to the model's from_pretrained as given (a quantizer would act on it there),
    and is not written into the checkpoint's config."""
    transformers.AutoModel.from_config(CONFIGS["bert"]()).save_pretrained(tmp_path)
    seen = {}
    monkeypatch.setattr(fastbert.BertModel, "from_pretrained",
                        classmethod(lambda cls, path, *a, **kw: seen.update(kw, path=path)))
    quantization = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    fastbert.AutoModel.from_pretrained(tmp_path, quantization_config=quantization, dtype="auto")
    assert seen["quantization_config"] is quantization and seen["dtype"] == "auto"
    assert not hasattr(seen["config"], "quantization_config")


def test_from_config_takes_transformers_arguments():
    model = fastbert.AutoModelForMaskedLM.from_config(CONFIGS["electra"](), dtype=torch.float64,
                                                      attn_implementation="eager")
    assert type(model) is fastbert.ElectraForMaskedLM and model.dtype == torch.float64
    assert model.config._attn_implementation == "eager"
