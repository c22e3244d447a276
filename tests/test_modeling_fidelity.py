"""transformers' own behaviours kept by fastbert's models: forward signatures, exact losses for labels
at padded positions, hidden states that are part of the graph, and transformers 5's hidden-state selection."""

import inspect

import pytest
import torch
import transformers
from conftest import random_batch, tiny_config
from test_modeling import ATOL, assert_close_on, assert_grads_close, pair

import fastbert
from fastbert import modeling

MODEL_CLASSES = sorted((c for c in set(modeling.FASTBERT_CLASSES.values()) if issubclass(c, fastbert.BertPreTrainedModel)),
                       key=lambda c: c.__name__)


def _parameters(function):
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_forward_keeps_transformers_signature(cls):
    """Names, order, kinds and defaults: ``Trainer`` picks dataset columns from them."""
    theirs = getattr(transformers, cls.__name__).forward
    assert _parameters(cls.forward) == _parameters(theirs)


def test_a_cache_is_refused_with_a_clear_error():
    model = fastbert.BertModel(tiny_config()).eval()
    ids, _, mask = random_batch(model.config)
    with pytest.raises(ValueError, match="cache"):
        model(ids, attention_mask=mask, cache=transformers.DynamicCache(config=model.config))
    model(ids, attention_mask=mask, use_cache=True)  # accepted and ignored by an encoder, as transformers


# ----------------------------------------------------------------------------- labels at padded positions
TOKEN_LABEL_HEADS = ["BertForTokenClassification", "BertForMaskedLM", "BertForPreTraining"]


def _labels_everywhere(name, config, ids):
    gen = torch.Generator().manual_seed(7)
    high = config.vocab_size if name != "BertForTokenClassification" else config.num_labels
    labels = {"labels": torch.randint(0, high, ids.shape, generator=gen)}
    if name == "BertForPreTraining":
        labels["next_sentence_label"] = torch.randint(0, 2, (ids.shape[0],), generator=gen)
    return labels


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("name", TOKEN_LABEL_HEADS)
def test_labels_at_padded_positions_give_transformers_loss_and_gradients(name, padding):
    config = tiny_config()
    reference, model = pair(getattr(transformers, name), getattr(fastbert, name), config)
    reference.train(), model.train()
    ids, types, mask = random_batch(config, padding=padding)
    inputs = dict(input_ids=ids, token_type_ids=types, attention_mask=mask, **_labels_everywhere(name, config, ids))
    want, got = reference(**inputs), model(**inputs)
    assert (want.loss - got.loss).abs() <= ATOL
    want.loss.backward()
    got.loss.backward()
    assert_grads_close(reference, model)


@pytest.mark.parametrize("name", ["BertForSequenceClassification", "BertForNextSentencePrediction",
                                  "BertForMultipleChoice"])
def test_pooler_heads_with_left_padding_give_transformers_logits(name):
    """The pooler reads position 0, a pad token under left padding."""
    config = tiny_config()
    reference, model = pair(getattr(transformers, name), getattr(fastbert, name), config)
    reference.train(), model.train()
    ids, types, mask = random_batch(config, padding="left")
    inputs = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    if name == "BertForMultipleChoice":
        inputs = {k: v.view(2, 2, -1) for k, v in inputs.items()}
    inputs["labels"] = torch.tensor([0, 1]) if name == "BertForMultipleChoice" else torch.tensor([0, 1, 1, 0])
    want, got = reference(**inputs), model(**inputs)
    assert (want.logits - got.logits).abs().max() <= ATOL and (want.loss - got.loss).abs() <= ATOL
    want.loss.backward()
    got.loss.backward()
    assert_grads_close(reference, model)


@pytest.mark.parametrize("name", TOKEN_LABEL_HEADS)
def test_unlabelled_padding_stays_packed_without_an_extra_host_read(name, host_reads):
    config = tiny_config()
    model = getattr(fastbert, name)(config).eval()
    ids, types, mask = random_batch(config)
    labels = _labels_everywhere(name, config, ids)
    labels["labels"] = labels["labels"].masked_fill(mask == 0, -100)  # what the collators give
    reads = host_reads
    with torch.no_grad():
        model(ids, token_type_ids=types, attention_mask=mask)
        without_labels, reads.count = reads.count, 0
        model(ids, token_type_ids=types, attention_mask=mask, **labels)
        assert reads.count == without_labels
        states = model(ids, attention_mask=mask, output_hidden_states=True, **labels).hidden_states[-1]
    assert (states[mask == 0] == 0).all(), "the usual path must stay padding-free"


# ----------------------------------------------------------------------------- hidden states
@pytest.mark.parametrize("padding", ["right", "interior"])
def test_hidden_states_are_part_of_the_graph(padding):
    """Attribution tools call retain_grad() on hidden states (or differentiate with respect to them)."""
    config = tiny_config()
    reference, model = pair(transformers.BertForSequenceClassification, fastbert.BertForSequenceClassification,
                            config)
    reference.train(), model.train()
    ids, types, mask = random_batch(config)
    if padding == "interior":
        mask[2, 3:5] = 0
    labels = torch.tensor([0, 2, 1, 1])
    grads = []
    for m in (reference, model):
        out = m(ids, attention_mask=mask, labels=labels, output_hidden_states=True)
        for h in out.hidden_states:
            h.retain_grad()
        out.loss.backward()
        grads.append([h.grad for h in out.hidden_states])
    for want, got in zip(*grads):
        assert got is not None
        assert_close_on(mask, want, got, atol=1e-5)


SELECTIONS = [[0, 2, -1], [1], 1, -1, 0, [], [5], [-2, 0], True, False]


@pytest.mark.parametrize("selection", SELECTIONS, ids=str)
def test_output_hidden_states_selects_layers_as_transformers(selection):
    config = tiny_config(num_hidden_layers=3)
    reference, model = pair(transformers.BertModel, fastbert.BertModel, config)
    reference.eval(), model.eval()
    ids, types, mask = random_batch(config)
    want = reference(ids, attention_mask=mask, output_hidden_states=selection)
    got = model(ids, attention_mask=mask, output_hidden_states=selection)
    if want.hidden_states is None:
        assert got.hidden_states is None
        return
    assert [h is None for h in got.hidden_states] == [h is None for h in want.hidden_states]
    for w, g in zip(want.hidden_states, got.hidden_states):
        if w is not None:
            assert_close_on(mask, w, g)
    assert (got.hidden_states[-1] is got.last_hidden_state) == (want.hidden_states[-1] is want.last_hidden_state)
    assert len(model(ids, attention_mask=mask, output_hidden_states=selection, return_dict=False)) == len(
        reference(ids, attention_mask=mask, output_hidden_states=selection, return_dict=False))


def test_hidden_state_selection_reaches_through_heads_and_config():
    config = tiny_config(num_hidden_layers=3)
    reference, model = pair(transformers.BertForTokenClassification, fastbert.BertForTokenClassification, config)
    ids, types, mask = random_batch(config)
    got = model(ids, attention_mask=mask, output_hidden_states=[1])
    assert [h is None for h in got.hidden_states] == [True, False, True, True]
    model.config.output_hidden_states = True
    assert len(model(ids, attention_mask=mask).hidden_states) == 4
