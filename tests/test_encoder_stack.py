"""The encoder's layers in training as one autograd node (``ops.encoder_training``): transformers' losses and
gradients, the per-op module path's numbers with dropout, what it keeps for backward, and the calls that must
run module by module (a hook, a replaced linear, gradient checkpointing, autocast, recorded hidden states)."""

import pytest
import torch
import transformers
from conftest import random_batch, tiny_config
from test_modeling import ATOL, assert_close_on, assert_grads_close, pair
from test_modeling_host import MODULE_PATH_CASES, _masks, _pair_without_pooler

import fastbert
from fastbert import encoder_stack, ops


def _stack_calls(monkeypatch) -> list:
    """Records the token count of each ``ops.encoder_training`` call."""
    calls, real = [], ops.encoder_training

    def counting(hidden, *args, **kwargs):
        calls.append(hidden.shape[0])
        return real(hidden, *args, **kwargs)
    monkeypatch.setattr(ops, "encoder_training", counting)
    return calls


@pytest.mark.parametrize("padding", ["right", "left", "interior", "none", "an empty row"])
def test_training_runs_the_layers_in_one_call_with_transformers_losses_and_gradients(padding, monkeypatch):
    config = tiny_config(num_hidden_layers=3)
    reference, model = _pair_without_pooler(config)
    ids, types, masks = _masks(config)
    mask = masks[padding]
    calls = _stack_calls(monkeypatch)
    upstream = torch.randn(*mask.shape, config.hidden_size, generator=torch.Generator().manual_seed(1))
    outputs = []
    for m in (reference, model):
        out = m(ids, token_type_ids=types, attention_mask=mask).last_hidden_state
        (out * upstream * mask[..., None]).sum().backward()
        outputs.append(out)
    assert calls == [int(mask.sum())]
    assert_close_on(mask, *outputs)
    assert_grads_close(reference, model)


def _seeded_run(model, ids, types, mask, upstream, seed=7):
    torch.manual_seed(seed)
    out = model(ids, token_type_ids=types, attention_mask=mask).last_hidden_state
    params = [p for p in model.parameters() if p.requires_grad]
    return out, torch.autograd.grad((out * upstream).sum(), params, allow_unused=True)


@pytest.mark.parametrize("backend,dtype", [("torch", torch.float64), ("torch", torch.float32),
                                           ("triton", torch.float32)])
def test_with_dropout_the_one_call_path_gives_the_per_op_paths_numbers(backend, dtype, monkeypatch):
    """The same seeds drawn in the same order for the same implementations: the same masks, outputs and
    gradients as module by module (a no-op hook on a layer forces that path)."""
    monkeypatch.setenv("FASTBERT_BACKEND", backend)
    config = tiny_config(num_hidden_layers=2, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3)
    model = fastbert.BertModel(config, add_pooling_layer=False).to(dtype).train()
    ids, types, masks = _masks(config, batch=3, seqlen=9)
    mask = masks["interior"]
    upstream = torch.randn(*mask.shape, config.hidden_size, dtype=dtype)
    calls = _stack_calls(monkeypatch)
    one_call, one_call_grads = _seeded_run(model, ids, types, mask, upstream)
    handle = model.encoder.layer[0].register_forward_pre_hook(lambda *args: None)
    per_op, per_op_grads = _seeded_run(model, ids, types, mask, upstream)
    handle.remove()
    assert len(calls) == 1
    assert torch.equal(one_call, per_op)
    # The residual gradients join in other orders (inside the input-gradient GEMMs): rounding apart, on the
    # model's gradient scale (the key bias's gradient is zero in exact arithmetic, rounding noise on both).
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    scale = max(float(g.abs().max()) for g in per_op_grads)
    for got, want in zip(one_call_grads, per_op_grads):
        torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance * scale)
    # Dropout did act: another seed gives other outputs.
    assert not torch.equal(one_call, _seeded_run(model, ids, types, mask, upstream, seed=8)[0])


def _checkpointing(model, seen):
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _autocast(model, seen):
    seen.append("autocast")


TRAINING_MODULE_PATH_CASES = {
    "a hook": MODULE_PATH_CASES["a hook"],
    "a replaced linear": MODULE_PATH_CASES["a replaced linear"],
    "another eps": MODULE_PATH_CASES["another eps"],
    "gradient checkpointing": _checkpointing,
    "autocast": _autocast,
    "output_hidden_states": lambda model, seen: None,
    "output_attentions": lambda model, seen: None,
}


@pytest.mark.parametrize("case", list(TRAINING_MODULE_PATH_CASES))
def test_training_runs_module_by_module_where_a_call_must_be_seen(case, monkeypatch):
    config = tiny_config(num_hidden_layers=2)
    reference, model = pair(transformers.BertModel, fastbert.BertModel, config)
    seen = []
    TRAINING_MODULE_PATH_CASES[case](model, seen)
    ids, types, masks = _masks(config)
    calls = _stack_calls(monkeypatch)
    kwargs = {case: True} if case.startswith("output_") else {}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        out = model(ids, token_type_ids=types, attention_mask=masks["right"], **kwargs).last_hidden_state
    out.sum().backward()
    assert calls == []
    if case == "a hook":
        assert seen == [1]
    if case == "a replaced linear":
        assert seen[0].called and seen[0].weight.grad is not None
    if case in ("a hook", "a replaced linear", "gradient checkpointing"):
        want = reference(ids, token_type_ids=types, attention_mask=masks["right"]).last_hidden_state
        assert_close_on(masks["right"], want, out)


def test_frozen_weights_get_no_gradient_and_the_rest_transformers_gradients():
    config = tiny_config(num_hidden_layers=2)
    reference, model = pair(transformers.BertModel, fastbert.BertModel, config)
    for m in (reference, model):
        for name, p in m.named_parameters():
            # The FFN and the q, k, v projections frozen in layer 0, everything else trained.
            frozen = name.startswith("encoder.layer.0.") and any(
                part in name for part in ("intermediate.dense", "output.dense", "query", "key", "value"))
            p.requires_grad_(not frozen or "attention.output" in name)
    ids, types, mask = random_batch(config)
    for m in (reference, model):
        m(ids, token_type_ids=types, attention_mask=mask).pooler_output.square().sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is None) == (not p.requires_grad), name
    assert_grads_close(reference, model)


def test_a_retained_graph_runs_backward_twice():
    config = tiny_config(num_hidden_layers=2, hidden_dropout_prob=0.1)
    model = fastbert.BertModel(config).train()
    ids, types, mask = random_batch(config)
    loss = model(ids, attention_mask=mask).pooler_output.sum()
    loss.backward(retain_graph=True)
    first = {n: p.grad.clone() for n, p in model.named_parameters()}
    loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * first[n], rtol=1e-6, atol=1e-7)


def test_each_layers_gradients_are_ready_before_the_layer_below_runs_its_backward(monkeypatch):
    """One autograd node a layer, not one for the stack: DDP's bucketed all-reduce of the top layers' gradients
    overlaps the lower layers' backward, and each layer's saved tensors are freed as its backward ends."""
    config = tiny_config(num_hidden_layers=3)
    model = fastbert.BertModel(config).train()
    ids, types, mask = random_batch(config)
    calls = _stack_calls(monkeypatch)
    backwards, real = [], encoder_stack.layer_backward
    monkeypatch.setattr(encoder_stack, "layer_backward", lambda *a: backwards.append(1) or real(*a))
    seen = []  # how many layers had run their backward when the top layer's gradient was accumulated
    model.encoder.layer[-1].output.dense.weight.register_post_accumulate_grad_hook(
        lambda p: seen.append(len(backwards)))
    model(ids, attention_mask=mask).pooler_output.sum().backward()
    assert len(calls) == 1 and seen == [1] and len(backwards) == config.num_hidden_layers


def _bytes_kept_for_backward(model, ids, mask) -> int:
    """The bytes of the distinct storages autograd keeps for ``model``'s backward."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, attention_mask=mask).last_hidden_state.sum().backward()
    return sum(n for ptr, n in storages.items() if ptr not in params)


def test_it_keeps_no_more_for_backward_than_the_per_op_path():
    config = tiny_config(num_hidden_layers=2, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = fastbert.BertModel(config, add_pooling_layer=False).train()
    ids, types, mask = random_batch(config)
    one_call = _bytes_kept_for_backward(model, ids, mask)
    model.encoder.layer[0].register_forward_pre_hook(lambda *args: None)
    assert 0 < one_call <= _bytes_kept_for_backward(model, ids, mask)


def test_encoder_training_refuses_bad_arguments():
    hidden, cu = torch.zeros(5, 12), torch.tensor([0, 5], dtype=torch.int32)
    weights = [torch.zeros(1)] * ops.ENCODER_LAYER_TENSORS
    with pytest.raises(ValueError, match="16 tensors a layer, got 15"):
        ops.encoder_training(hidden, cu, 5, weights[:-1], 3, 1e-12, [0.0] * 3, [None] * 3)
    with pytest.raises(ValueError, match="3 entries"):
        ops.encoder_training(hidden, cu, 5, weights, 3, 1e-12, [0.0] * 2, [None] * 2)
    with pytest.raises(ValueError, match="needs a seed"):
        ops.encoder_training(hidden, cu, 5, weights, 3, 1e-12, [0.1, 0.0, 0.0], [None] * 3)


def test_a_parametrized_layernorm_runs_module_by_module(monkeypatch):
    """A parametrization keeps the weight out of ``_parameters``: the stack steps aside, the module path reads
    the parametrized weight."""
    from torch.nn.utils import parametrize

    config = tiny_config(num_hidden_layers=2)
    reference, model = pair(transformers.BertModel, fastbert.BertModel, config)
    for m in (reference, model):
        parametrize.register_parametrization(m.encoder.layer[1].output.LayerNorm, "weight", _Halved())
    ids, types, mask = random_batch(config)
    calls, inference_calls = _stack_calls(monkeypatch), []
    monkeypatch.setattr(ops, "encoder_inference", lambda *a: inference_calls.append(1))
    for train in (False, True):
        reference.train(train), model.train(train)
        with torch.set_grad_enabled(train):
            want = reference(ids, token_type_ids=types, attention_mask=mask).last_hidden_state
            got = model(ids, token_type_ids=types, attention_mask=mask).last_hidden_state
        assert_close_on(mask, want, got)
    assert calls == [] and inference_calls == []


class _Halved(torch.nn.Module):
    def forward(self, weight):
        return weight * 0.5


def test_a_forward_replaced_on_an_instance_is_called():
    config = tiny_config(num_hidden_layers=2)
    model = fastbert.BertModel(config)
    linear = model.encoder.layer[0].intermediate.dense
    seen, original = [], linear.forward
    linear.forward = lambda x: seen.append(1) or original(x)
    ids, types, mask = random_batch(config)
    model(ids, attention_mask=mask).pooler_output.sum().backward()
    with torch.no_grad():
        model.eval()(ids, attention_mask=mask)
    assert seen == [1, 1]
