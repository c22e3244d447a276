"""The fine-tuning loop: convergence against transformers, resume, checkpoints (fp32, CPU)."""

from pathlib import Path

import pytest
import torch
import transformers

import fastbert
from fastbert.finetune import checkpoint
from fastbert.finetune.data import Columns, LabelMap, encode, read_examples
from fastbert.finetune.distributed import Context
from fastbert.finetune.loop import FineTuner, Settings, parameter_groups, warmup_then_linear_decay

CPU = Context(0, 1, torch.device("cpu"))


def encoded(path, tokenizer, labels=None, max_length=64):
    examples = read_examples(path, Columns())
    labels = labels or LabelMap.from_examples(examples)
    return encode(examples, labels.ids(examples, path, path), tokenizer, max_length)[0], labels


def pair_from_pretrained(path, labels, **config):
    """fastbert's model (classifier drawn from seed 0) and transformers' with the same weights."""
    torch.manual_seed(0)
    ours = fastbert.BertForSequenceClassification.from_pretrained(path, **labels.config_kwargs(), **config)
    theirs = transformers.BertForSequenceClassification(ours.config)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def test_fastbert_and_transformers_losses_agree_step_by_step_without_dropout(minilm_path, tokenizer, sample_train):
    """The real checkpoint, the same initial weights, 60 AdamW steps: per-step losses within 1e-4."""
    train, labels = encoded(sample_train, tokenizer)
    models = pair_from_pretrained(minilm_path, labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    settings = Settings(epochs=2, batch_size=16, lr=5e-5, progress=False)
    losses = [FineTuner(model, tokenizer, train, None, settings, CPU).run().history.losses for model in models]
    assert len(losses[0]) == len(losses[1]) >= 50
    worst = max(abs(a - b) for a, b in zip(*losses))
    assert worst <= 1e-4, worst
    assert sum(losses[0][-5:]) < 0.7 * sum(losses[0][:5])  # and it learns


def test_both_reach_95_percent_training_accuracy_with_dropout(minilm_path, tokenizer, sample_train):
    train, labels = encoded(sample_train, tokenizer)
    settings = Settings(epochs=3, batch_size=32, lr=1e-4, progress=False)
    for model in pair_from_pretrained(minilm_path, labels):
        assert model.config.hidden_dropout_prob == 0.1
        tuner = FineTuner(model, tokenizer, train, None, settings, CPU)
        tuner.run()
        assert tuner.evaluate(train)["accuracy"] >= 0.95, type(model)


def _run(checkpoint_path, tokenizer, train, dev, labels, output, settings, resume=None, on_step=None):
    torch.manual_seed(settings.seed)
    model = fastbert.BertForSequenceClassification.from_pretrained(checkpoint_path, **labels.config_kwargs())
    tuner = FineTuner(model, tokenizer, train, dev, settings, CPU, output, fingerprint={"test": 1})
    return tuner.run(resume, on_step), model


class Interrupted(Exception):
    pass


def test_resume_continues_exactly_where_it_stopped(tmp_path, tiny_dropout_checkpoint, tokenizer, sample_train,
                                                   sample_dev):
    """Stopped mid-epoch after a checkpoint, then resumed: the same per-step losses (dropout on: the RNG
    state is restored), evaluations and final weights as a run that never stopped."""
    train, labels = encoded(sample_train, tokenizer)
    dev, _ = encoded(sample_dev, tokenizer, labels)
    settings = Settings(epochs=2, batch_size=16, lr=2e-3, save_steps=7, progress=False)
    whole, whole_model = _run(tiny_dropout_checkpoint, tokenizer, train, dev, labels, tmp_path / "whole", settings)

    def stop(step):
        if step == 37:  # epoch 2, right after the step-35 checkpoint plus two more steps that are lost
            raise Interrupted

    with pytest.raises(Interrupted):
        _run(tiny_dropout_checkpoint, tokenizer, train, dev, labels, tmp_path / "cut", settings, on_step=stop)
    last = checkpoint.find(tmp_path / "cut" / "last")
    state = torch.load(last / checkpoint.STATE_FILE, weights_only=True)
    assert state["position"] == {"epoch": 1, "batch": 5, "step": 35}
    resumed, resumed_model = _run(last, tokenizer, train, dev, labels, tmp_path / "cut", settings, resume=last)
    assert resumed.history.losses == whole.history.losses
    assert resumed.history.evals == whole.history.evals
    for (name, a), b in zip(whole_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_refuses_other_settings(tmp_path, tiny_checkpoint, tokenizer, sample_train):
    train, labels = encoded(sample_train, tokenizer)
    settings = Settings(epochs=1, batch_size=64, progress=False)
    _run(tiny_checkpoint, tokenizer, train, None, labels, tmp_path, settings)
    model = fastbert.BertForSequenceClassification.from_pretrained(tmp_path / "last")
    tuner = FineTuner(model, tokenizer, train, None, settings, CPU, tmp_path, fingerprint={"test": 2})
    with pytest.raises(ValueError, match="cannot resume .* test was 1 there and is 2 now"):
        tuner.run(resume=tmp_path / "last")


def test_best_checkpoint_loads_in_transformers_sentence_transformers_and_fastbert(tmp_path, tiny_checkpoint,
                                                                                  tokenizer, sample_train,
                                                                                  sample_dev):
    train, labels = encoded(sample_train, tokenizer)
    dev, _ = encoded(sample_dev, tokenizer, labels)
    settings = Settings(epochs=2, batch_size=32, lr=2e-3, progress=False, metric="accuracy")
    result, model = _run(tiny_checkpoint, tokenizer, train, dev, labels, tmp_path, settings)
    best_epoch = max(result.history.evals, key=lambda e: e["accuracy"])
    assert result.history.best == best_epoch["accuracy"]
    best = tmp_path / "best"
    batch = tokenizer(["The concert was awful.", "Honestly, this phone works beautifully!"], padding=True,
                      return_tensors="pt")
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(best).eval()
    ours = fastbert.BertForSequenceClassification.from_pretrained(best).eval()
    assert theirs.config.id2label == dict(enumerate(labels.names))
    with torch.no_grad():
        assert (theirs(**batch).logits - ours(**batch).logits).abs().max() <= 1e-5
    # the checkpoint scores what the loop said it scored
    dev_scores = FineTuner(ours, tokenizer, train, None, settings, CPU).evaluate(dev)
    assert dev_scores["accuracy"] == pytest.approx(best_epoch["accuracy"])
    st = pytest.importorskip("sentence_transformers")
    embeddings = st.SentenceTransformer(str(best), device="cpu").encode(["one sentence", "and another"])
    assert embeddings.shape == (2, 32)
    assert (best / "tokenizer.json").exists() and not (best / checkpoint.STATE_FILE).exists()


def test_without_evaluation_the_last_epoch_is_best(tmp_path, tiny_checkpoint, tokenizer, sample_train):
    train, labels = encoded(sample_train, tokenizer)
    _, model = _run(tiny_checkpoint, tokenizer, train, None, labels, tmp_path,
                    Settings(epochs=2, batch_size=64, progress=False))
    saved = fastbert.BertForSequenceClassification.from_pretrained(tmp_path / "best")
    for a, b in zip(model.state_dict().values(), saved.state_dict().values()):
        assert torch.equal(a, b)


def test_write_atomically_keeps_the_old_folder_when_writing_fails(tmp_path):
    target = tmp_path / "last"
    checkpoint.write_atomically(target, lambda d: (d / "a.txt").write_text("one"))

    def fails(folder: Path):
        (folder / "a.txt").write_text("two")
        raise OSError("disk full")

    with pytest.raises(OSError):
        checkpoint.write_atomically(target, fails)
    assert (target / "a.txt").read_text() == "one"
    checkpoint.write_atomically(target, lambda d: (d / "a.txt").write_text("three"))
    assert (target / "a.txt").read_text() == "three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no temporary folder left behind
    target.rename(tmp_path / ".last.old")  # a crash between the two renames
    assert checkpoint.find(target) == tmp_path / ".last.old"


def test_weight_decay_skips_biases_and_layernorm(tiny_checkpoint):
    model = fastbert.BertForSequenceClassification.from_pretrained(tiny_checkpoint, num_labels=2)
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert {names[id(p)] for p in decay["params"]} >= {"classifier.weight", "bert.embeddings.word_embeddings.weight"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_learning_rate_warms_up_then_decays_to_zero():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    scheduler = warmup_then_linear_decay(optimizer, warmup_steps=4, total_steps=12)
    rates = []
    for _ in range(12):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    rates.append(scheduler.get_last_lr()[0])
    assert rates[:5] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert rates[4:] == pytest.approx([2.0 * (12 - s) / 8 for s in range(4, 13)])


def test_cosine_schedule_warms_up_then_follows_a_half_cosine_to_zero():
    from fastbert.finetune.loop import warmup_then_cosine_decay

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = warmup_then_cosine_decay(optimizer, warmup_steps=2, total_steps=10)
    rates = []
    for _ in range(11):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[:3] == [0.0, 0.5, 1.0]
    assert rates[6] == pytest.approx(0.5) and rates[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(rates[2:], rates[3:]))


def test_lamb_takes_adams_update_scaled_by_the_trust_ratio():
    from fastbert.finetune.lamb import Lamb

    torch.manual_seed(0)
    w = torch.randn(4, 3, requires_grad=True)
    optimizer = Lamb([{"params": [w], "weight_decay": 0.1}], lr=0.01, betas=(0.9, 0.99), eps=1e-6)
    m = v = torch.zeros(4, 3)
    expected = w.detach().clone()
    for step in range(1, 4):
        grad = torch.randn(4, 3)
        w.grad = grad.clone()
        m, v = 0.9 * m + 0.1 * grad, 0.99 * v + 0.01 * grad ** 2
        update = (m / (1 - 0.9 ** step)) / ((v / (1 - 0.99 ** step)).sqrt() + 1e-6) + 0.1 * expected
        expected = expected - 0.01 * (expected.norm() / update.norm()) * update
        optimizer.step()
        torch.testing.assert_close(w.detach(), expected, rtol=1e-6, atol=1e-7)

    fresh = torch.zeros(5, requires_grad=True)
    fresh.grad = torch.ones(5)
    Lamb([fresh], lr=0.01).step()  # zero weights: the ratio falls back to 1, Adam's first step of lr each
    torch.testing.assert_close(fresh.detach(), torch.full((5,), -0.01))


def test_max_steps_stops_mid_epoch_with_an_evaluation_and_eval_steps_add_some(tmp_path, tiny_checkpoint, tokenizer,
                                                                               sample_train, sample_dev):
    train, labels = encoded(sample_train, tokenizer)
    dev, _ = encoded(sample_dev, tokenizer, labels)
    settings = Settings(epochs=3, batch_size=64, lr=1e-3, max_steps=10, eval_steps=4, progress=False)
    result, _ = _run(tiny_checkpoint, tokenizer, train, dev, labels, tmp_path, settings)
    assert result.position.step == 10 and len(result.history.losses) == 10
    # step 4 (eval_steps), 8 (the end of epoch 1: 8 steps of 64 over 480, once), and 10 (max_steps)
    assert [e["step"] for e in result.history.evals] == [4, 8, 10]
    state = torch.load(checkpoint.find(tmp_path / "last") / checkpoint.STATE_FILE, weights_only=True)
    assert state["position"] == {"epoch": 1, "batch": 2, "step": 10}


def test_weight_decay_skips_every_familys_layernorm_weights():
    """DistilBERT names its LayerNorms sa_layer_norm, output_layer_norm, vocab_layer_norm."""
    config = transformers.DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    model = fastbert.DistilBertForMaskedLM(config)
    decay, no_decay = (set(map(id, group["params"])) for group in parameter_groups(model, 0.01))
    for name, param in model.named_parameters():
        assert (id(param) in no_decay) == (param.dim() == 1), name
    assert id(model.distilbert.transformer.layer[0].sa_layer_norm.weight) in no_decay
