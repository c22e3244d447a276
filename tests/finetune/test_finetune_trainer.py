"""fastbert models train under transformers' ``Trainer`` exactly as transformers' own do."""

import pytest
import torch
import transformers

import fastbert
from fastbert.finetune.data import Columns, LabelMap, read_examples

pytest.importorskip("accelerate")  # Trainer needs it


def test_trainer_steps_match_transformers(tmp_path, tiny_checkpoint, tokenizer, sample_train):
    examples = read_examples(sample_train, Columns())[:48]
    labels = LabelMap.from_examples(examples)
    ids = labels.ids(examples, sample_train, sample_train)
    features = [dict(tokenizer(e.text, truncation=True, max_length=64), labels=y) for e, y in zip(examples, ids)]
    torch.manual_seed(0)
    ours = fastbert.BertForSequenceClassification.from_pretrained(tiny_checkpoint, **labels.config_kwargs())
    theirs = transformers.BertForSequenceClassification(ours.config)
    theirs.load_state_dict(ours.state_dict())
    initial = {k: v.clone() for k, v in ours.state_dict().items()}
    losses = []
    for model in (ours, theirs):
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / type(model).__module__), per_device_train_batch_size=8, max_steps=6,
            learning_rate=2e-3, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0,
            dataloader_num_workers=0, disable_tqdm=True)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=features,
                                       data_collator=transformers.DataCollatorWithPadding(tokenizer))
        trainer.train()
        losses.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert len(losses[0]) == len(losses[1]) == 6
    assert max(abs(a - b) for a, b in zip(*losses)) <= 1e-3  # Trainer logs rounded losses
    assert (ours.classifier.weight - initial["classifier.weight"]).abs().max() > 1e-3  # it did train
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
    assert isinstance(ours.bert.encoder.layer[0], fastbert.modeling.BertLayer)


def _parameters(forward):
    import inspect

    return [(p.name, p.kind, p.default) for p in inspect.signature(forward).parameters.values()]


def test_question_answering_forward_keeps_transformers_signature(tmp_path):
    """Trainer keeps the dataset columns the forward signature names: a ``*args`` signature made it drop
    input_ids, attention_mask and token_type_ids."""
    assert _parameters(fastbert.BertForQuestionAnswering.forward) == _parameters(
        transformers.BertForQuestionAnswering.forward)
    model = fastbert.BertForQuestionAnswering(transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = transformers.Trainer(model=model, args=args)
    trainer._set_signature_columns_if_needed()
    assert {"input_ids", "attention_mask", "token_type_ids", "start_positions"} <= set(trainer._signature_columns)
