"""RoBERTa, XLM-RoBERTa, ELECTRA and DistilBERT on fastbert's encoder core: every class against transformers'
on random odd configs (odd head counts, widths not a multiple of 64, XLM-R's 250k vocabulary at a small
width), with right, left and interior padding; low precision against float64; the Triton kernels; and the
behaviours a drop-in class keeps (signatures, checkpoints both ways, optimize, Trainer)."""

import copy
import inspect
import subprocess
import sys

import pytest
import torch
import transformers
from conftest import tiny_config
from test_modeling import ATOL, assert_close_on, assert_grads_close

import fastbert
from fastbert import families, modeling

families.load_all()

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def roberta_config(**overrides):
    return transformers.RobertaConfig(**{**dict(
        vocab_size=211, hidden_size=90, num_hidden_layers=2, num_attention_heads=5, intermediate_size=200,
        max_position_embeddings=40, type_vocab_size=1, pad_token_id=1, num_labels=3, **NO_DROPOUT), **overrides})


def xlm_roberta_config(**overrides):
    return transformers.XLMRobertaConfig(**{**dict(
        vocab_size=250_002, hidden_size=36, num_hidden_layers=2, num_attention_heads=3, intermediate_size=76,
        max_position_embeddings=40, type_vocab_size=1, pad_token_id=1, num_labels=3, **NO_DROPOUT), **overrides})


def camembert_config(**overrides):
    return transformers.CamembertConfig(**{**dict(
        vocab_size=123, hidden_size=42, num_hidden_layers=2, num_attention_heads=7, intermediate_size=88,
        max_position_embeddings=40, type_vocab_size=1, pad_token_id=1, num_labels=3, **NO_DROPOUT), **overrides})


def electra_config(**overrides):
    return transformers.ElectraConfig(**{**dict(
        vocab_size=211, embedding_size=42, hidden_size=45, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=100, max_position_embeddings=40, num_labels=3, summary_first_dropout=0.0,
        summary_last_dropout=0.0, **NO_DROPOUT), **overrides})


def distilbert_config(**overrides):
    return transformers.DistilBertConfig(**{**dict(
        vocab_size=211, dim=70, n_layers=2, n_heads=7, hidden_dim=150, max_position_embeddings=40, dropout=0.0,
        attention_dropout=0.0, seq_classif_dropout=0.0, qa_dropout=0.0, num_labels=3), **overrides})


CONFIGS = {"Roberta": roberta_config, "XLMRoberta": xlm_roberta_config, "Camembert": camembert_config,
           "Electra": electra_config,
           "DistilBert": distilbert_config}
# head suffix -> the targets its loss takes (see _inputs)
HEAD_TARGETS = {
    "Model": {},
    "ForSequenceClassification": {"labels": "class"},
    "ForTokenClassification": {"labels": "token"},
    "ForQuestionAnswering": {"start_positions": "pos", "end_positions": "pos"},
    "ForMaskedLM": {"labels": "mlm"},
    "ForMultipleChoice": {"labels": "choice"},
    "ForPreTraining": {"labels": "binary"},
}
# every class of issue 16: six a family (ELECTRA's pretraining head instead of a multiple-choice one is
# extra: it has both)
CLASSES = [(prefix, suffix) for prefix in CONFIGS for suffix in HEAD_TARGETS
           if suffix != "ForPreTraining" or prefix == "Electra"]
# outputs read at every token: padded positions differ by design (computed from zeros, not pad states)
TOKEN_OUTPUTS = {"last_hidden_state", "logits", "start_logits", "end_logits"}


def family_pair(name: str, config, seed: int = 0):
    """transformers' class ``name`` and fastbert's with the same random weights."""
    torch.manual_seed(seed)
    reference = getattr(transformers, name)(config)
    model = getattr(fastbert, name)(config)
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=True)
    assert not missing and not unexpected
    assert isinstance(model, getattr(transformers, name)) and type(model) is not getattr(transformers, name)
    return reference, model


def family_batch(config, padding: str, batch: int = 4, seqlen: int = 11, seed: int = 0):
    """``(input_ids, attention_mask)``: pad ids at padded positions (random ids at interior ones, whose
    RoBERTa positions count them as transformers does), and one pad id among the real tokens."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, config.vocab_size, (batch, seqlen), generator=gen)
    lengths = torch.tensor([seqlen, 6, 1, 9])[:batch]
    pos = torch.arange(seqlen)[None, :]
    if padding == "right":
        mask = pos < lengths[:, None]
    elif padding == "left":
        mask = pos >= seqlen - lengths[:, None]
    else:  # interior: a hole in the middle of each row but the first
        mask = torch.ones(batch, seqlen, dtype=torch.bool)
        mask[1:, 3:6] = False
    pad = config.pad_token_id
    if padding != "interior":
        ids = ids.masked_fill(~mask, pad)
    ids[0, 4] = pad  # a pad id that is attended: its word and position rows get no gradient
    return ids, mask.long()


def _inputs(suffix: str, config, padding: str, seed: int = 0):
    ids, mask = family_batch(config, padding, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    batch, seqlen = ids.shape
    inputs = {"input_ids": ids, "attention_mask": mask}
    if suffix == "ForMultipleChoice":
        inputs = {k: v.view(2, 2, seqlen) for k, v in inputs.items()}
    make = {
        "class": lambda: torch.randint(0, config.num_labels, (batch,), generator=gen),
        "token": lambda: torch.randint(0, config.num_labels, (batch, seqlen), generator=gen).masked_fill(mask == 0,
                                                                                                         -100),
        "pos": lambda: torch.randint(0, seqlen, (batch,), generator=gen),
        "choice": lambda: torch.randint(0, 2, (2,), generator=gen),
        "mlm": lambda: torch.randint(0, config.vocab_size, (batch, seqlen), generator=gen).masked_fill(mask == 0,
                                                                                                       -100),
        "binary": lambda: torch.randint(0, 2, (batch, seqlen), generator=gen),
    }
    inputs.update({key: make[kind]() for key, kind in HEAD_TARGETS[suffix].items()})
    return inputs, mask


def _config(prefix: str, suffix: str, **overrides):
    return CONFIGS[prefix](**({"num_labels": 2} if suffix == "ForQuestionAnswering" else {}), **overrides)


@pytest.mark.parametrize("padding", ["right", "left", "interior"])
@pytest.mark.parametrize("prefix, suffix", CLASSES, ids=[p + s for p, s in CLASSES])
def test_every_class_gives_transformers_outputs_losses_and_gradients(prefix, suffix, padding):
    config = _config(prefix, suffix)
    name = prefix + suffix
    reference, model = family_pair(name, config)
    reference.train(), model.train()  # no dropout in these configs: the training path, deterministic
    inputs, mask = _inputs(suffix, config, padding)
    want, got = reference(**inputs), model(**inputs)
    keys = {k for k, v in want.items() if isinstance(v, torch.Tensor)}
    assert keys == {k for k, v in got.items() if isinstance(v, torch.Tensor)}
    for key in keys:
        w, g = want[key], got[key]
        if key in TOKEN_OUTPUTS and w.shape[:2] == mask.shape and suffix not in ("ForQuestionAnswering",):
            assert_close_on(mask, w, g)
        else:  # span logits: read at every position by the span loss, so that call ran exact
            assert (w - g).abs().max() <= ATOL, key
    if suffix == "Model":
        real = mask.bool()
        upstream = torch.randn_like(want.last_hidden_state)
        losses = [(out.last_hidden_state[real] * upstream[real]).sum() for out in (want, got)]
        if getattr(want, "pooler_output", None) is not None:
            losses = [loss + out.pooler_output.square().sum() for loss, out in zip(losses, (want, got))]
    else:
        losses = [want.loss, got.loss]
        assert (want.loss - got.loss).abs() <= ATOL
    for loss in losses:
        loss.backward()
    # The span bias's gradient (question answering) and the one-output choice scorer's (multiple choice) sum
    # softmax - one-hot over positions or choices: zero in exact arithmetic, rounding noise on both sides.
    # Ours must be that small; then it is left out of the relative comparison.
    softmax_bias = {"ForQuestionAnswering": "qa_outputs", "ForMultipleChoice": "classifier"}.get(suffix)
    if softmax_bias is not None:
        scale = max(p.grad.abs().max() for p in reference.parameters() if p.grad is not None)
        assert getattr(model, softmax_bias).bias.grad.abs().max() <= 1e-6 * scale
        getattr(reference, softmax_bias).bias.grad = getattr(model, softmax_bias).bias.grad = None
    assert_grads_close(reference, model)


FAMILY_BASES = [(prefix, "ForSequenceClassification") for prefix in CONFIGS]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("prefix, suffix", FAMILY_BASES, ids=[p for p, _ in FAMILY_BASES])
def test_low_precision_error_at_most_twice_transformers(prefix, suffix, dtype):
    """Against float64, fastbert in fp16/bf16 errs at most 2x what transformers does in that dtype."""
    config = _config(prefix, suffix)
    name = prefix + suffix
    reference, model = family_pair(name, config)
    exact = getattr(transformers, name)(config).double()
    exact.load_state_dict(reference.state_dict())
    inputs, _ = _inputs(suffix, config, "left", seed=2)
    with torch.no_grad():
        want = exact.eval()(**inputs).logits
        theirs = reference.to(dtype).eval()(**inputs).logits
        ours = model.to(dtype).eval()(**inputs).logits
    assert ours.dtype == dtype
    err_theirs, err_ours = ((x.double() - want).abs().max().item() for x in (theirs, ours))
    assert err_ours <= 2 * err_theirs + 1e-6, (err_ours, err_theirs)


@pytest.mark.parametrize("prefix", list(CONFIGS))
def test_triton_backend_training_step_matches_transformers(prefix, monkeypatch):
    """Forward and every gradient with the Triton kernels (the interpreter here) against transformers."""
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    overrides = {"vocab_size": 300} if prefix == "XLMRoberta" else {}
    config = _config(prefix, "ForTokenClassification", **overrides)
    reference, model = family_pair(prefix + "ForTokenClassification", config)
    inputs, mask = _inputs("ForTokenClassification", config, "left", seed=4)
    want, got = reference(**inputs), model(**inputs)
    assert_close_on(mask, want.logits, got.logits)
    assert (want.loss - got.loss).abs() <= ATOL
    want.loss.backward()
    got.loss.backward()
    assert_grads_close(reference, model)


@pytest.mark.parametrize("prefix", list(CONFIGS))
def test_hidden_states_and_attentions_match(prefix):
    config = _config(prefix, "Model")
    reference, model = family_pair(prefix + "Model", config)
    inputs, mask = _inputs("Model", config, "right")
    want = reference.eval()(**inputs, output_hidden_states=True, output_attentions=True)
    got = model.eval()(**inputs, output_hidden_states=True, output_attentions=True)
    assert len(got.hidden_states) == config.num_hidden_layers + 1 == len(want.hidden_states)
    for w, g in zip(want.hidden_states, got.hidden_states):
        assert_close_on(mask, w, g)
    for w, g in zip(want.attentions, got.attentions):
        assert (w - g).abs().max() <= ATOL
    as_tuple = model(**inputs, return_dict=False)
    assert torch.equal(as_tuple[0], model(**inputs).last_hidden_state)


@pytest.mark.parametrize("prefix", list(CONFIGS))
def test_inputs_embeds_match(prefix):
    """RoBERTa counts default positions from its padding index without ids; ELECTRA's embeddings are
    ``embedding_size`` wide."""
    config = _config(prefix, "Model")
    reference, model = family_pair(prefix + "Model", config)
    ids, mask = family_batch(config, "right")
    embeds = reference.get_input_embeddings()(ids)
    want = reference.eval()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    got = model.eval()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    assert_close_on(mask, want, got)


@pytest.mark.parametrize("prefix", ["Roberta", "XLMRoberta", "Camembert"])
def test_roberta_positions_beyond_the_table_are_refused_and_padding_does_not_count(prefix):
    """Default positions run from padding_idx + 1 and count real tokens only: 38 real tokens fit 40
    positions and 39 do not, while a 40-token row with 2 pads is transformers' input as any other."""
    config = _config(prefix, "Model")
    reference, model = family_pair(prefix + "Model", config)
    model(torch.full((1, 38), 5))
    with pytest.raises(ValueError, match=r"position ids computed from input_ids .* must lie in \[0, 40\).*\[2, 40\]"):
        model(torch.full((1, 39), 5))
    with pytest.raises(ValueError, match="max_position_embeddings=40 less the 2"):
        model(inputs_embeds=torch.randn(1, 39, config.hidden_size))
    ids = torch.full((2, 40), 5)
    ids[:, -2:] = config.pad_token_id
    ids[1, :3] = config.pad_token_id  # the second row: 35 real tokens
    mask = ids.ne(config.pad_token_id).long()
    want = reference.eval()(ids, attention_mask=mask).last_hidden_state
    assert_close_on(mask, want, model.eval()(ids, attention_mask=mask).last_hidden_state)


def test_distilbert_dropout_in_one_call_gives_the_per_op_paths_numbers(monkeypatch):
    """DistilBERT has no dropout after its attention's output projection: the one-call stack draws no seed
    for it, as the module path does, so both give the same masks (a no-op hook forces the module path)."""
    calls, real = [], fastbert.ops.encoder_training
    monkeypatch.setattr(fastbert.ops, "encoder_training", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = distilbert_config(dropout=0.2, attention_dropout=0.3)
    model = fastbert.DistilBertModel(config).train()
    ids, mask = family_batch(config, "interior")

    def run():
        torch.manual_seed(3)
        out = model(ids, attention_mask=mask).last_hidden_state
        return out, torch.autograd.grad(out.square().sum(), list(model.parameters()), allow_unused=True)

    one_call, grads = run()
    handle = model.transformer.layer[0].register_forward_pre_hook(lambda *args: None)
    per_op, per_op_grads = run()
    handle.remove()
    assert calls == [1]
    assert torch.equal(one_call, per_op)
    scale = max(float(g.abs().max()) for g in per_op_grads if g is not None)
    for got, want in zip(grads, per_op_grads):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)


# ----------------------------------------------------------------------------- drop-in behaviours
FASTBERT_MODELS = sorted((c for c in set(modeling.FASTBERT_CLASSES.values())
                          if issubclass(c, modeling.PreTrainedCore) and not c.__name__.startswith("Bert")),
                         key=lambda c: c.__name__)


def _parameters(function):
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_every_family_class_is_exported():
    assert len(FASTBERT_MODELS) == 31  # six a family, and ELECTRA's multiple-choice head too
    for cls in FASTBERT_MODELS:
        assert getattr(fastbert, cls.__name__) is cls


@pytest.mark.parametrize("cls", FASTBERT_MODELS, ids=lambda c: c.__name__)
def test_forward_keeps_transformers_signature(cls):
    """Names, order, kinds and defaults: ``Trainer`` picks dataset columns from them."""
    assert _parameters(cls.forward) == _parameters(getattr(transformers, cls.__name__).forward)


@pytest.mark.parametrize("prefix, suffix", [(p, s) for p in CONFIGS for s in ("Model", "ForMaskedLM")])
def test_checkpoints_move_both_ways(prefix, suffix, tmp_path):
    config = _config(prefix, suffix, **({"vocab_size": 300} if prefix == "XLMRoberta" else {}))
    name = prefix + suffix
    torch.manual_seed(0)
    model = getattr(fastbert, name)(config).eval()
    model.save_pretrained(tmp_path / "fb")
    reference, info = getattr(transformers, name).from_pretrained(tmp_path / "fb", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(reference) is getattr(transformers, name)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key
    reference.save_pretrained(tmp_path / "hf")
    back, info = getattr(fastbert, name).from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    inputs, mask = _inputs("Model", config, "right")
    with torch.no_grad():
        ours, again, theirs = (m.eval()(**inputs)[0] for m in (model, back, reference))
    assert torch.equal(ours, again)
    assert_close_on(mask, theirs, ours)


def test_a_checkpoint_of_another_family_is_refused(tmp_path):
    transformers.RobertaModel(roberta_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'roberta' checkpoint.*ElectraModel takes 'electra'"):
        fastbert.ElectraModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("saved_as, loaded_as", [("XLMRoberta", "Roberta"), ("Roberta", "Camembert"),
                                                 ("Camembert", "XLMRoberta")])
def test_robertas_three_names_load_each_others_checkpoints(saved_as, loaded_as, tmp_path):
    """One architecture under three model types: transformers loads each into the others' classes (with
    a warning), and so does fastbert, with transformers' numbers."""
    config = _config(saved_as, "Model")
    torch.manual_seed(0)
    getattr(transformers, saved_as + "Model")(config).save_pretrained(tmp_path)
    theirs = getattr(transformers, loaded_as + "Model").from_pretrained(tmp_path).eval()
    ours = getattr(fastbert, loaded_as + "Model").from_pretrained(tmp_path).eval()
    inputs, mask = _inputs("Model", config, "left")
    with torch.no_grad():
        assert_close_on(mask, theirs(**inputs)[0], ours(**inputs)[0])


@pytest.mark.parametrize("prefix, suffix", [(p, s) for p in CONFIGS for s in ("Model", "ForSequenceClassification")])
def test_optimize_converts_in_place_and_is_idempotent(prefix, suffix):
    config = _config(prefix, suffix)
    name = prefix + suffix
    torch.manual_seed(0)
    model = getattr(transformers, name)(config).eval()
    inputs, mask = _inputs(suffix, config, "left")
    with torch.no_grad():
        want = model(**inputs)[0 if suffix == "Model" else "logits"]
    params = list(model.parameters())
    assert fastbert.optimize(model) is model
    assert type(model) is getattr(fastbert, name)
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert all(type(m).__module__.startswith("fastbert") for m in model.modules()
               if type(m) in modeling.FASTBERT_CLASSES.values() or type(m) in modeling.FASTBERT_CLASSES)
    assert modeling.convert_modules(model) == 0  # nothing left to convert
    fastbert.optimize(model)
    with torch.no_grad():
        got = model(**inputs)[0 if suffix == "Model" else "logits"]
    if suffix == "Model":
        assert_close_on(mask, want, got)
    else:
        assert (want - got).abs().max() <= ATOL


def test_optimize_converts_a_sentence_transformer_on_roberta(tmp_path, tokenizer):
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    config = roberta_config(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id,
                            max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.RobertaModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    encoder = Transformer(str(tmp_path), max_seq_length=32)
    model = st.SentenceTransformer(modules=[encoder, Pooling(config.hidden_size)],
                                   device="cpu")
    sentences = ["A short one.", "A somewhat longer sentence, for padding's sake."]
    want = model.encode(sentences, convert_to_tensor=True)
    fastbert.optimize(model)
    assert any(type(m) is fastbert.RobertaModel for m in model.modules())
    assert (model.encode(sentences, convert_to_tensor=True) - want).abs().max() <= 2e-5


@pytest.mark.parametrize("prefix", list(CONFIGS))
def test_trainer_steps_match_transformers(prefix, tmp_path):
    pytest.importorskip("accelerate")
    config = _config(prefix, "ForSequenceClassification")
    name = prefix + "ForSequenceClassification"
    reference, model = family_pair(name, config)
    features = []
    for seed in range(4):
        inputs, _ = _inputs("ForSequenceClassification", config, ("right", "left")[seed % 2], seed=seed)
        features += [{k: v[i] for k, v in inputs.items()} for i in range(4)]
    losses, initial = [], {k: v.clone() for k, v in model.state_dict().items()}
    for net in (reference, model):
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / type(net).__module__), per_device_train_batch_size=4, max_steps=4,
            learning_rate=2e-3, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0,
            dataloader_num_workers=0, disable_tqdm=True)
        trainer = transformers.Trainer(model=net, args=args, train_dataset=features)
        trainer.train()
        losses.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert len(losses[0]) == len(losses[1]) == 4
    assert max(abs(a - b) for a, b in zip(*losses)) <= 1e-3  # Trainer logs rounded losses
    moved = max((v - initial[k]).abs().max() for k, v in model.state_dict().items() if v.is_floating_point())
    assert moved > 1e-3  # it did train
    for (key, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        # A key bias's gradient is zero in exact arithmetic (softmax ignores a per-row constant): AdamW
        # steps on rounding noise there, on both sides.
        atol = 1e-4 if key.endswith(("key.bias", "k_lin.bias")) else 1e-5
        assert torch.allclose(a, b, atol=atol), key
    encoder = model.base_model._modules["transformer" if prefix == "DistilBert" else "encoder"]
    assert type(encoder.layer[0]).__module__.startswith("fastbert")


@pytest.mark.parametrize("prefix", list(CONFIGS))
def test_cuda_graph_buckets_give_transformers_numbers(prefix):
    """The bucketed static-buffer path (without a graph on the CPU): RoBERTa's positions come from the ids
    before packing, ELECTRA's projection runs inside the bucket."""
    from fastbert import cuda_graphs

    config = _config(prefix, "Model", **({"vocab_size": 300} if prefix == "XLMRoberta" else {}))
    reference, model = family_pair(prefix + "Model", config)
    reference.eval(), model.eval()
    if hasattr(model, "pooler"):  # left padding would make the pooler's call exact
        model.pooler = reference.pooler = None
    fastbert.optimize(model, cuda_graphs=True)
    with torch.no_grad():
        for padding, seed in (("right", 0), ("left", 1), ("interior", 2)):
            inputs, mask = _inputs("Model", config, padding, seed=seed)
            assert_close_on(mask, reference(**inputs).last_hidden_state, model(**inputs).last_hidden_state)
    assert model in cuda_graphs._ENCODERS


class _OwnTokenHead(transformers.BertPreTrainedModel):
    """A head of one's own on transformers' base class: it reads every position, padded ones included."""

    def __init__(self, config):
        super().__init__(config)
        self.bert = transformers.BertModel(config, add_pooling_layer=False)
        self.score = torch.nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids, attention_mask):
        return self.score(self.bert(input_ids, attention_mask=attention_mask).last_hidden_state)


HEADS_FASTBERT_LACKS = {"RobertaForCausalLM": roberta_config, "XLMRobertaForCausalLM": xlm_roberta_config,
                        "ElectraForCausalLM": electra_config, "BertLMHeadModel": tiny_config,
                        "_OwnTokenHead": tiny_config}


@pytest.mark.parametrize("name", list(HEADS_FASTBERT_LACKS))
def test_a_base_model_under_a_head_fastbert_lacks_keeps_transformers_numbers(name):
    """Such a head may read padded positions (a causal-LM loss over every label): after optimize its base
    model runs on the fused ops unpacked, with transformers' loss, logits and gradients, and a warning says so."""
    config = HEADS_FASTBERT_LACKS[name]()
    cls = _OwnTokenHead if name == "_OwnTokenHead" else getattr(transformers, name)
    torch.manual_seed(0)
    model = cls(config)
    reference = copy.deepcopy(model)
    ids, mask = family_batch(config, "left")
    labels = ids.masked_fill(mask == 0, 3)  # labels at padded positions too: the loss reads them

    def loss(m):
        out = m(ids, attention_mask=mask) if name == "_OwnTokenHead" else m(ids, attention_mask=mask, labels=labels)
        return (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() if name == "_OwnTokenHead" else out.loss

    want = loss(reference)
    with pytest.warns(UserWarning, match=f"{cls.__name__} is not a head fastbert has"):
        fastbert.optimize(model)
    assert isinstance(model.base_model, modeling.EncoderModelCore)
    got = loss(model)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)
    want.backward()
    got.backward()
    assert_grads_close(reference, model)


@pytest.mark.parametrize("summary_type", ["first", "last", "mean", "cls_index"])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_electra_multiple_choice_summaries_give_transformers_numbers(summary_type, padding):
    """The summary pools as its own summary_type says (set here on the module, the config left at "first"):
    "first" reads position 0, the others read padded positions too, so those calls run exact."""
    config = _config("Electra", "ForMultipleChoice")
    reference, model = family_pair("ElectraForMultipleChoice", config)
    for m in (reference, model):
        m.sequence_summary.summary_type = summary_type
    inputs, mask = _inputs("ForMultipleChoice", config, padding)
    want, got = reference(**inputs), model(**inputs)
    torch.testing.assert_close(got.logits, want.logits, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(got.loss, want.loss, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("name", ["RobertaForTokenClassification", "ElectraForMultipleChoice",
                                  "DistilBertForQuestionAnswering", "BertForTokenClassification"])
def test_an_argument_given_twice_is_a_type_error_as_in_transformers(name):
    prefix = next((p for p in CONFIGS if name.startswith(p)), None)
    config = _config(prefix, name[len(prefix):]) if prefix else tiny_config()
    reference, model = family_pair(name, config)
    ids = torch.ones(2, 5, dtype=torch.long)
    for m in (reference, model):
        with pytest.raises(TypeError, match="multiple values for argument 'input_ids'"):
            m(ids, input_ids=ids)


FRESH_PROCESS_CONVERT = """
import sys, transformers
from fastbert.modeling import convert_modules
assert not [m for m in sys.modules if m.startswith("fastbert.families.")]
config = transformers.RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=40)
model = transformers.RobertaModel(config)
print(convert_modules(model), type(model).__module__)
"""


def test_convert_modules_loads_the_families_first():
    """In a fresh process no family module is imported yet: convert_modules still knows every family."""
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS_CONVERT], capture_output=True, text=True,
                         check=True).stdout.split()
    assert int(out[0]) > 0 and out[1] == "fastbert.families.roberta"
