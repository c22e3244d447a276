"""fastbert's models against transformers' on the same weights: outputs, losses, gradients (fp32, CPU)."""

import pytest
import torch
import transformers
from conftest import SENTENCES, random_batch, tiny_config

import fastbert

ATOL = 2e-5


def pair(hf_class, fb_class, config, seed=0):
    """The same random weights in a transformers model and a fastbert model."""
    torch.manual_seed(seed)
    reference = hf_class(config)
    model = fb_class(config)
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=True)
    assert not missing and not unexpected
    return reference, model


def assert_close_on(mask, a, b, atol=ATOL):
    """Max abs difference over the real positions of ``(batch, seqlen, ...)`` tensors."""
    real = mask.bool()
    err = (a[real] - b[real]).abs().max().item()
    assert err <= atol, f"max abs error {err:.3g} > {atol}"
    return err


# ----------------------------------------------------------------------------- real checkpoint
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_real_checkpoint_matches_transformers(minilm_path, tokenizer, padding_side):
    reference = transformers.BertModel.from_pretrained(minilm_path).eval()
    model, info = fastbert.BertModel.from_pretrained(minilm_path, output_loading_info=True)
    model.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tokenizer.padding_side = padding_side
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    tokenizer.padding_side = "right"
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        want = reference(**batch)
        got = model(**batch)
    assert (want.pooler_output - got.pooler_output).abs().max() <= ATOL
    if padding_side == "left":
        # The pooler reads position 0, padded here: that call ran exact, padded positions included.
        assert (want.last_hidden_state - got.last_hidden_state).abs().max() <= ATOL
        model.pooler = None  # nothing reads a padded position now: packed
        with torch.no_grad():
            got = model(**batch)
    assert_close_on(batch["attention_mask"], want.last_hidden_state, got.last_hidden_state)
    assert (got.last_hidden_state[batch["attention_mask"] == 0] == 0).all(), "padded positions must be zeros"


# ----------------------------------------------------------------------------- every head
HEADS = [
    ("BertModel", {}),
    ("BertForSequenceClassification", {"labels": "class"}),
    ("BertForTokenClassification", {"labels": "token"}),
    ("BertForQuestionAnswering", {"start_positions": "pos", "end_positions": "pos"}),
    ("BertForMultipleChoice", {"labels": "choice"}),
    ("BertForMaskedLM", {"labels": "mlm"}),
    ("BertForNextSentencePrediction", {"labels": "nsp"}),
    ("BertForPreTraining", {"labels": "mlm", "next_sentence_label": "nsp"}),
]


def head_inputs(name, config, targets, seed=0):
    ids, types, mask = random_batch(config, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    batch, seqlen = ids.shape
    inputs = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    if name == "BertForMultipleChoice":  # (batch, choices, seqlen)
        inputs = {k: v.view(2, 2, seqlen) for k, v in inputs.items()}
    make = {
        "class": lambda: torch.randint(0, config.num_labels, (batch,), generator=gen),
        "token": lambda: torch.randint(0, config.num_labels, (batch, seqlen), generator=gen).masked_fill(mask == 0, -100),
        "pos": lambda: torch.randint(0, seqlen, (batch,), generator=gen),
        "choice": lambda: torch.randint(0, 2, (2,), generator=gen),
        "mlm": lambda: torch.randint(0, config.vocab_size, (batch, seqlen), generator=gen).masked_fill(mask == 0, -100),
        "nsp": lambda: torch.randint(0, 2, (batch,), generator=gen),
    }
    inputs.update({key: make[kind]() for key, kind in targets.items()})
    return inputs, mask


def outputs_to_compare(name, out):
    if name == "BertModel":
        return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("name, targets", HEADS, ids=[h[0] for h in HEADS])
def test_head_matches_transformers_outputs_and_gradients(name, targets):
    config = tiny_config(num_labels=2 if name == "BertForQuestionAnswering" else 3)
    reference, model = pair(getattr(transformers, name), getattr(fastbert, name), config)
    assert isinstance(model, getattr(transformers, name)) and isinstance(model, fastbert.BertPreTrainedModel)
    reference.train()
    model.train()  # dropout probabilities are 0 in tiny_config: training mode, deterministic
    inputs, mask = head_inputs(name, config, targets)
    want, got = reference(**inputs), model(**inputs)
    want_t, got_t = outputs_to_compare(name, want), outputs_to_compare(name, got)
    assert want_t.keys() == got_t.keys()
    for key in want_t:
        w, g = want_t[key], got_t[key]
        if name in ("BertForTokenClassification", "BertForMaskedLM", "BertForPreTraining") and key in (
                "logits", "prediction_logits"):
            assert_close_on(mask, w, g)  # padded positions differ by design (zeros in, not pad states)
        elif key == "last_hidden_state":
            assert_close_on(mask, w, g)
        else:
            assert (w - g).abs().max() <= ATOL, key

    if name == "BertModel":
        real = mask.bool()
        upstream = torch.randn_like(want.last_hidden_state)
        loss_w = (want.last_hidden_state[real] * upstream[real]).sum() + want.pooler_output.square().sum()
        loss_g = (got.last_hidden_state[real] * upstream[real]).sum() + got.pooler_output.square().sum()
    else:
        loss_w, loss_g = want.loss, got.loss
    loss_w.backward()
    loss_g.backward()
    assert_grads_close(reference, model)


def assert_grads_close(reference, model, rtol=1e-4):
    """Every parameter's gradient within ``rtol`` of transformers', relative to its largest entry.

    Gradients that are zero in exact arithmetic (the key bias: softmax ignores a per-row constant) are
    rounding noise on both sides, so the scale is floored at 1e-3 of the largest gradient in the model.
    """
    params = dict(model.named_parameters())
    grads = {k: p.grad for k, p in reference.named_parameters() if p.grad is not None}
    floor = 1e-3 * max(g.abs().max() for g in grads.values())
    for key, ref_param in reference.named_parameters():
        g_ref, g = ref_param.grad, params[key].grad
        if g_ref is None:
            assert g is None or g.abs().max() == 0, key
            continue
        err = ((g - g_ref).abs().max() / torch.maximum(g_ref.abs().max(), floor)).item()
        assert err <= rtol, f"{key}: relative gradient error {err:.3g}"
    assert len(grads) > 10


def test_regression_and_multilabel_losses_match():
    for num_labels, labels in [(1, torch.randn(4)), (3, torch.randint(0, 2, (4, 3)).float())]:
        config = tiny_config(num_labels=num_labels)
        reference, model = pair(transformers.BertForSequenceClassification, fastbert.BertForSequenceClassification,
                                config)
        ids, types, mask = random_batch(config)
        want = reference(ids, attention_mask=mask, labels=labels)
        got = model(ids, attention_mask=mask, labels=labels)
        assert (want.loss - got.loss).abs() <= ATOL and (want.logits - got.logits).abs().max() <= ATOL


def test_masked_lm_ties_decoder_to_word_embeddings():
    model = fastbert.BertForPreTraining(tiny_config())
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


# ----------------------------------------------------------------------------- paths and arguments
def test_hidden_states_attentions_and_tuple_output():
    config = tiny_config()
    reference, model = pair(transformers.BertModel, fastbert.BertModel, config)
    reference.eval(), model.eval()
    reference.config._attn_implementation = "eager"  # transformers returns attentions only in eager mode
    ids, types, mask = random_batch(config, padding="left")
    want = reference(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    for path_kwargs in ({"output_hidden_states": True}, {"output_hidden_states": True, "output_attentions": True}):
        got = model(ids, attention_mask=mask, **path_kwargs)
        assert len(got.hidden_states) == len(want.hidden_states) == config.num_hidden_layers + 1
        for w, g in zip(want.hidden_states, got.hidden_states):
            assert_close_on(mask, w, g)
    assert len(got.attentions) == config.num_hidden_layers
    key_real = mask.bool()[:, None, None, :].expand_as(want.attentions[0])
    query_real = mask.bool()[:, None, :, None].expand_as(want.attentions[0])
    for w, g in zip(want.attentions, got.attentions):
        real = key_real & query_real
        assert (w[real] - g[real]).abs().max() <= ATOL
        assert g[~key_real].abs().max() == 0  # no probability on padded keys
    tup = model(ids, attention_mask=mask, return_dict=False)
    assert isinstance(tup, tuple) and torch.equal(tup[0], model(ids, attention_mask=mask).last_hidden_state)


def test_inputs_embeds_position_and_token_type_ids():
    config = tiny_config()
    reference, model = pair(transformers.BertModel, fastbert.BertModel, config)
    reference.eval(), model.eval()
    ids, types, mask = random_batch(config)
    embeds = torch.randn(ids.shape[0], ids.shape[1], config.hidden_size)
    positions = torch.randint(0, config.max_position_embeddings, ids.shape)
    want = reference(inputs_embeds=embeds, token_type_ids=types, position_ids=positions, attention_mask=mask)
    got = model(inputs_embeds=embeds, token_type_ids=types, position_ids=positions, attention_mask=mask)
    assert_close_on(mask, want.last_hidden_state, got.last_hidden_state)


@pytest.mark.parametrize("kind", ["float2d", "bool4d", "float4d", "int3d"])
def test_unfused_masks_match_transformers(kind):
    config = tiny_config()
    reference, model = pair(transformers.BertModel, fastbert.BertModel, config)
    reference.eval(), model.eval()
    reference.config._attn_implementation = "eager"
    ids, types, mask = random_batch(config)
    batch, seqlen = ids.shape
    pair_mask = mask[:, None, :].bool() & mask[:, :, None].bool()  # (batch, q, k)
    pair_mask |= torch.eye(seqlen, dtype=torch.bool)  # every query sees at least itself
    if kind == "float2d":
        theirs = ours = mask.float()
    elif kind == "bool4d":
        ours = pair_mask[:, None]
        theirs = torch.zeros(batch, 1, seqlen, seqlen).masked_fill(~ours, torch.finfo(torch.float32).min)
    elif kind == "float4d":
        theirs = ours = torch.zeros(batch, 1, seqlen, seqlen).masked_fill(~pair_mask[:, None], -1e9)
    else:
        ours = pair_mask.long()
        theirs = torch.zeros(batch, 1, seqlen, seqlen).masked_fill(~pair_mask[:, None], torch.finfo(torch.float32).min)
    want = reference(ids, attention_mask=theirs)
    got = model(ids, attention_mask=ours)
    real = mask if kind == "float2d" else torch.ones_like(mask)
    assert_close_on(real, want.last_hidden_state, got.last_hidden_state)


@pytest.mark.parametrize("shape", ["batch,1,1,seq", "1,1,1,seq", "batch,heads,1,seq"])
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_key_padding_4d_masks_broadcast_over_queries_as_in_transformers(shape, kind):
    """A 4-D mask with one query row (the "extended" key-padding mask) is used as is, broadcast over the
    queries, as transformers-sdpa does: True (bool) or the added value (float) per key."""
    config = tiny_config()
    reference, model = pair(transformers.BertModel, fastbert.BertModel, config)
    reference.eval(), model.eval()
    ids, types, mask = random_batch(config)
    keys = mask.bool()[:, None, None, :]  # (batch, 1, 1, seq)
    keys = {"batch,1,1,seq": keys, "1,1,1,seq": keys[-1:],
            "batch,heads,1,seq": keys.expand(-1, config.num_attention_heads, -1, -1)}[shape]
    extended = keys if kind == "bool" else torch.zeros(keys.shape).masked_fill(~keys, -1e9)
    want = reference(ids, attention_mask=extended).last_hidden_state
    for grad in (False, True):  # the one-call inference path and the training one
        with torch.set_grad_enabled(grad):
            got = model(ids, attention_mask=extended).last_hidden_state
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_all_zero_mask_row_is_finite_and_transformers_where_read():
    config = tiny_config()
    reference, model = pair(transformers.BertForSequenceClassification, fastbert.BertForSequenceClassification,
                            config)
    reference.eval(), model.eval()
    reference.config._attn_implementation = "eager"  # sdpa and eager disagree on a row with no real token
    ids, types, mask = random_batch(config)
    mask[1] = 0
    model.bert.pooler, pooler = None, model.bert.pooler
    out = model.bert(ids, attention_mask=mask)  # packed: nothing reads the empty row
    assert torch.isfinite(out.last_hidden_state).all() and (out.last_hidden_state[1] == 0).all()
    model.bert.pooler = pooler
    got, want = model(ids, attention_mask=mask).logits, reference(ids, attention_mask=mask).logits
    assert torch.isfinite(got).all() and (got - want).abs().max() <= ATOL  # the pooler reads it: exact


def test_dropout_training_is_reproducible_and_active():
    config = tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = fastbert.BertModel(config).train()
    ids, types, mask = random_batch(config)

    def run(seed):
        torch.manual_seed(seed)
        out = model(ids, attention_mask=mask).last_hidden_state
        out.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad()
        return out.detach(), grads

    out_a, grads_a = run(0)
    out_b, grads_b = run(0)
    out_c, _ = run(1)
    assert torch.equal(out_a, out_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert not torch.equal(out_a, out_c)
    model.eval()
    assert torch.equal(model(ids, attention_mask=mask).last_hidden_state,
                       model(ids, attention_mask=mask).last_hidden_state)


def test_gradient_checkpointing_gives_the_same_gradients():
    config = tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = fastbert.BertForSequenceClassification(config).train()
    ids, types, mask = random_batch(config)
    labels = torch.tensor([0, 1, 2, 1])

    def grads():
        torch.manual_seed(3)
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        out = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        return out

    plain = grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.bert.encoder.layer[0].gradient_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-5, atol=1e-6, msg=key)


def test_padding_free_false_matches_transformers_everywhere():
    config = tiny_config()
    reference, model = pair(transformers.BertForTokenClassification, fastbert.BertForTokenClassification, config)
    reference.eval(), model.eval()
    ids, types, mask = random_batch(config, padding="left")
    want = reference(ids, token_type_ids=types, attention_mask=mask).logits
    got = model(ids, token_type_ids=types, attention_mask=mask, padding_free=False).logits
    assert (want - got).abs().max() <= ATOL  # padded positions included
    packed = model(ids, token_type_ids=types, attention_mask=mask).logits
    assert_close_on(mask, want, packed)


def test_triton_backend_without_kernels_falls_back_with_a_warning(monkeypatch):
    from fastbert import ops

    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    ops._load_kernels()  # registered now, into the real table, not into the stand-in below
    monkeypatch.setattr(ops, "_TRITON_IMPLS", {})
    monkeypatch.setattr(ops, "_warned_missing", set())
    config = tiny_config()
    reference, model = pair(transformers.BertModel, fastbert.BertModel, config)
    ids, types, mask = random_batch(config)
    with pytest.warns(UserWarning, match="no Triton kernel"):
        got = model.eval()(ids, attention_mask=mask).last_hidden_state
    assert_close_on(mask, reference.eval()(ids, attention_mask=mask).last_hidden_state, got)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_at_most_twice_transformers(dtype):
    """Against a float64 reference, fastbert in fp16/bf16 errs at most 2x what transformers does."""
    config = tiny_config()
    reference, model = pair(transformers.BertForSequenceClassification, fastbert.BertForSequenceClassification,
                            config)
    exact = transformers.BertForSequenceClassification(config).double()
    exact.load_state_dict(reference.state_dict())
    ids, types, mask = random_batch(config)
    labels = torch.tensor([0, 1, 2, 1])
    want = exact(ids, token_type_ids=types, attention_mask=mask, labels=labels)
    theirs = reference.to(dtype)(ids, token_type_ids=types, attention_mask=mask, labels=labels)
    ours = model.to(dtype)(ids, token_type_ids=types, attention_mask=mask, labels=labels)
    assert ours.logits.dtype == dtype
    err_theirs = (theirs.logits.double() - want.logits).abs().max().item()
    err_ours = (ours.logits.double() - want.logits).abs().max().item()
    assert err_ours <= 2 * err_theirs + 1e-6, (err_ours, err_theirs)
    ours.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("path", ["one call", "module by module"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_float64_matches_transformers_to_float64_precision(path, train):
    """A float64 model is float64-accurate: the loss and every parameter gradient equal transformers' in
    float64 to 1e-12 of the largest (statistics, log-sum-exp and bias sums are kept in float64), on the
    layers' one-call paths and module by module (recorded hidden states)."""
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    reference, model = pair(transformers.BertForSequenceClassification, fastbert.BertForSequenceClassification,
                            config)
    reference, model = reference.double().train(train), model.double().train(train)
    ids, types, mask = random_batch(config)
    labels = torch.tensor([0, 1, 2, 1])
    kwargs = dict(token_type_ids=types, attention_mask=mask, labels=labels,
                  output_hidden_states=path == "module by module")
    want, got = reference(ids, **kwargs), model(ids, **kwargs)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-12)
    want.loss.backward()
    got.loss.backward()
    grads = dict(model.named_parameters())
    scale = max(p.grad.abs().max().item() for p in reference.parameters() if p.grad is not None)
    for name, p in reference.named_parameters():
        if p.grad is not None:
            assert (grads[name].grad - p.grad).abs().max().item() <= 1e-12 * scale, name


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_autocast_bf16_training_step_errs_at_most_twice_transformers(backend, monkeypatch):
    """fp32 weights under bf16 autocast (the fine-tuning setup): the loss and every parameter gradient
    against a float64 reference err at most 2x what transformers does under the same autocast."""
    monkeypatch.setenv("FASTBERT_BACKEND", backend)
    config = tiny_config()
    reference, model = pair(transformers.BertForSequenceClassification, fastbert.BertForSequenceClassification,
                            config)
    exact = transformers.BertForSequenceClassification(config).double()
    exact.load_state_dict(reference.state_dict())
    ids, types, mask = random_batch(config, seed=3)
    labels = torch.tensor([2, 0, 1, 1])
    exact(ids, token_type_ids=types, attention_mask=mask, labels=labels).loss.backward()
    errors = {}
    for name, net in (("transformers", reference), ("fastbert", model)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(ids, token_type_ids=types, attention_mask=mask, labels=labels)
        out.loss.backward()
        grads = dict(net.named_parameters())
        # relative to each gradient's norm; rows no token touched have exact zero gradients
        errors[name] = max((grads[n].grad.double() - p.grad).norm().item() / p.grad.norm().item()
                           for n, p in exact.named_parameters() if p.grad is not None and p.grad.norm() > 1e-8)
        assert all(p.grad.dtype == torch.float32 for p in net.parameters() if p.grad is not None)
    assert errors["fastbert"] <= 2 * errors["transformers"], errors


# ----------------------------------------------------------------------------- the Triton backend, whole model
def test_triton_backend_matches_torch_backend_on_real_checkpoint(minilm_path, tokenizer, monkeypatch):
    """Every op with a Triton kernel runs it (in the interpreter on the CPU); fp32 within 5e-5."""
    from fastbert import ops
    from fastbert.kernels import attention

    model = fastbert.BertModel.from_pretrained(minilm_path).eval()
    batch = tokenizer(SENTENCES[:3], padding=True, return_tensors="pt")
    outputs = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("FASTBERT_BACKEND", backend)
        with torch.no_grad():
            outputs[backend] = model(**batch)
    assert ops._impl("attention", "fwd", torch.device("cpu")) is attention._qkv_forward
    assert_close_on(batch["attention_mask"], outputs["torch"].last_hidden_state,
                    outputs["triton"].last_hidden_state, atol=5e-5)
    assert (outputs["torch"].pooler_output - outputs["triton"].pooler_output).abs().max() <= 5e-5


def test_triton_backend_training_step_matches_transformers(monkeypatch):
    """Forward and every parameter gradient with the Triton kernels against transformers."""
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    config = tiny_config(max_position_embeddings=160)
    reference, model = pair(transformers.BertForSequenceClassification, fastbert.BertForSequenceClassification,
                            config)
    ids, types, mask = random_batch(config, batch=3, seqlen=140, seed=2)  # lengths past one 128-key tile
    labels = torch.tensor([0, 2, 1])
    want = reference(ids, token_type_ids=types, attention_mask=mask, labels=labels)
    got = model(ids, token_type_ids=types, attention_mask=mask, labels=labels)
    assert (want.logits - got.logits).abs().max() <= ATOL
    want.loss.backward()
    got.loss.backward()
    assert_grads_close(reference, model)


def _intermediate_tensors_saved(model, config, ids, mask) -> int:
    """Distinct non-parameter tensors of width ``intermediate_size`` kept for backward by one training forward."""
    params = {p.data_ptr() for p in model.parameters()}
    kept = set()

    def pack(t):
        if t.dim() >= 2 and t.shape[-1] == config.intermediate_size and t.data_ptr() not in params:
            kept.add((t.data_ptr(), tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()(ids, attention_mask=mask).last_hidden_state.sum()
    return len(kept)


def test_feed_forward_keeps_one_intermediate_tensor_per_layer():
    """fastbert keeps only the GELU's input per layer (its output is recomputed in backward);
    transformers keeps both."""
    config = tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    reference, model = pair(transformers.BertModel, fastbert.BertModel, config)
    ids, _, mask = random_batch(config)
    layers = config.num_hidden_layers
    assert _intermediate_tensors_saved(model, config, ids, mask) == layers
    assert _intermediate_tensors_saved(reference, config, ids, mask) == 2 * layers


def test_hooks_on_feed_forward_modules_still_fire():
    """A hook on the intermediate or output module (or its dense) sees its call: the block then runs
    module by module, with the same numbers."""
    config = tiny_config()
    _, model = pair(transformers.BertModel, fastbert.BertModel, config)
    ids, _, mask = random_batch(config)
    fused = model.eval()(ids, attention_mask=mask).last_hidden_state
    layer = model.encoder.layer[0]
    seen = []
    handles = [m.register_forward_hook(lambda mod, args, out, name=name: seen.append(name))
               for name, m in (("intermediate", layer.intermediate), ("output.dense", layer.output.dense))]
    hooked = model(ids, attention_mask=mask).last_hidden_state
    for h in handles:
        h.remove()
    assert seen == ["intermediate", "output.dense"]
    torch.testing.assert_close(hooked, fused)


@pytest.mark.parametrize("position_type", ["relative_key", "relative_key_query"])
def test_position_embedding_type_is_refused_only_where_transformers_would_use_it(position_type, monkeypatch):
    """transformers 5's BERT ignores position_embedding_type: such a config computes absolute positions
    there, and fastbert gives the same numbers. A transformers that computed relative positions would
    see it refused."""
    from fastbert import validation

    config = tiny_config(position_embedding_type=position_type)
    if validation.transformers_reads_position_type(position_type):
        with pytest.raises(ValueError, match="position_embedding_type"):
            fastbert.BertModel(config)
        return
    torch.manual_seed(0)
    theirs = transformers.BertModel(config).eval()
    ours = fastbert.BertModel(config).eval()
    ours.load_state_dict(theirs.state_dict())
    ids, types, mask = random_batch(config)
    want = theirs(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
    got = ours(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(validation, "transformers_reads_position_type", lambda position_type: True)
    with pytest.raises(ValueError, match=f"position_embedding_type='{position_type}'"):
        fastbert.BertModel(config)
