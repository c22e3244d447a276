"""Bad input and unsupported configs: a clear error naming the problem, before any compute."""

import pytest
import torch
from conftest import random_batch, tiny_config

import fastbert
from fastbert import ops


@pytest.fixture(scope="module")
def model():
    return fastbert.BertModel(tiny_config()).eval()


@pytest.fixture(autouse=True)
def no_compute(monkeypatch):
    """Any fused op reached means validation came too late."""
    def boom(*args, **kwargs):
        raise AssertionError("a fused op ran before the input was rejected")
    for name in ("attention", "residual_layernorm", "linear_gelu", "embeddings"):
        monkeypatch.setattr(ops, name, boom)


def call(model, **overrides):
    ids, types, mask = random_batch(model.config)
    kwargs = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    kwargs.update(overrides)
    return model(**{k: v for k, v in kwargs.items() if v is not None})


CASES = [
    ("ids above vocab", lambda c: {"input_ids": torch.full((4, 13), c.vocab_size)}, ValueError, "input_ids.*vocab_size"),
    ("negative ids", lambda c: {"input_ids": torch.full((4, 13), -1)}, ValueError, "input_ids"),
    ("too long", lambda c: {"input_ids": torch.ones(2, c.max_position_embeddings + 1, dtype=torch.long),
                            "token_type_ids": None, "attention_mask": None}, ValueError, "max_position_embeddings"),
    ("mask shape", lambda c: {"attention_mask": torch.ones(4, 12, dtype=torch.long)}, ValueError, "attention_mask"),
    ("types shape", lambda c: {"token_type_ids": torch.zeros(4, 12, dtype=torch.long)}, ValueError, "token_type_ids"),
    ("types range", lambda c: {"token_type_ids": torch.full((4, 13), c.type_vocab_size)}, ValueError,
     "token_type_ids.*type_vocab_size"),
    ("both ids and embeds", lambda c: {"inputs_embeds": torch.randn(4, 13, c.hidden_size)}, ValueError, "exactly one"),
    ("neither", lambda c: {"input_ids": None}, ValueError, "exactly one"),
    ("empty batch", lambda c: {"input_ids": torch.zeros(0, 13, dtype=torch.long), "token_type_ids": None,
                               "attention_mask": None}, ValueError, "empty batch"),
    ("float ids", lambda c: {"input_ids": torch.rand(4, 13)}, TypeError, "input_ids must be an integer"),
    ("1-D ids", lambda c: {"input_ids": torch.ones(13, dtype=torch.long), "token_type_ids": None,
                           "attention_mask": None}, ValueError, "2-D"),
    ("positions range", lambda c: {"position_ids": torch.full((4, 13), c.max_position_embeddings)}, ValueError,
     "position_ids"),
    ("cross-attention", lambda c: {"encoder_hidden_states": torch.randn(4, 5, c.hidden_size)}, ValueError,
     "cross-attention"),
]


@pytest.mark.parametrize("label, make, error, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_before_compute(model, label, make, error, match):
    with pytest.raises(error, match=match):
        call(model, **make(model.config))


@pytest.mark.parametrize("setting, match", [
    ({"is_decoder": True}, "is_decoder"),
    ({"is_decoder": True, "add_cross_attention": True}, "is_decoder|add_cross_attention"),
    ({"hidden_act": "relu"}, "hidden_act"),
    ({"hidden_act": "gelu_new"}, "hidden_act"),
])
def test_unsupported_config_is_refused(setting, match):
    with pytest.raises(ValueError, match=match):
        fastbert.BertModel(tiny_config(**setting))


def test_add_cross_attention_alone_is_refused():
    config = tiny_config()
    config.add_cross_attention = True
    with pytest.raises(ValueError, match="add_cross_attention"):
        fastbert.BertModel(config)



def test_index_ranges_are_read_in_one_host_copy(model, host_reads):
    from fastbert.validation import validate_inputs

    ids, types, mask = random_batch(model.config)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    assert validate_inputs(model.config, ids, None, mask, types, positions)[:2] == tuple(ids.shape)
    assert host_reads.count == 1
    with pytest.raises(ValueError, match=r"position_ids must lie in \[0, 64\)"):
        validate_inputs(model.config, ids, None, mask, types, positions + 60)
