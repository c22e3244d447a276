"""``fastbert pretrain`` end to end (tiny checkpoint, CPU): transformers' losses on the same batches and masks,
a saved model transformers, fill-mask and finetune load, held-out loss going down, exact --resume, gradient
accumulation and torchrun equal to one big batch, bad input refused before training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from fastbert.cli import main as fastbert_main
from fastbert.finetune.loop import FineTuner

CORPUS = Path(__file__).resolve().parents[2] / "examples" / "corpus"
TRAIN, HELD_OUT = CORPUS / "train.txt", CORPUS / "held-out.txt"


def pretrain(capsys, *args):
    code = fastbert_main(["pretrain", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def runs(output: Path) -> dict:
    return json.loads((output / "metrics.json").read_text())["runs"]


def test_reference_gives_the_same_losses_and_the_model_loads_everywhere(tmp_path, capsys, tiny_checkpoint):
    out = tmp_path / "out"
    code, stdout, err = pretrain(capsys, "--model", tiny_checkpoint, "--train", TRAIN, "--eval", HELD_OUT,
                                 "--output", out, "--max-length", 64, "--max-steps", 8, "--eval-steps", 4,
                                 "--batch-size", 16, "--lr", 2e-3, "--reference", "--whole-word-mask")
    assert code == 0, err
    assert "corpus: 400 documents" in err and "step 4: accuracy=" in stdout and "perplexity=" in stdout
    ours, theirs = (runs(out)[name] for name in ("fastbert", "transformers"))
    assert len(ours["losses"]) == 8
    assert max(abs(a - b) for a, b in zip(ours["losses"], theirs["losses"])) <= 1e-4
    assert [e["step"] for e in ours["evals"]] == [4, 8]
    assert abs(ours["evals"][-1]["loss"] - theirs["evals"][-1]["loss"]) <= 1e-4
    assert "| tokens/s |" in stdout

    model, info = transformers.BertForMaskedLM.from_pretrained(out / "best", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    fill = transformers.pipeline("fill-mask", model=str(out / "best"))
    assert len(fill("Anna was born in [MASK].")) == 5
    train = tmp_path / "t.csv"
    train.write_text("text,label\nhello there,a\nbye now,b\n" * 4)
    code = fastbert_main(["finetune", "--model", str(out / "best"), "--train", str(train), "--output",
                          str(tmp_path / "ft"), "--epochs", "1", "--max-length", "32", "--no-progress"])
    assert code == 0


def test_continued_pretraining_lowers_the_held_out_loss(tmp_path, capsys, tiny_checkpoint):
    out = tmp_path / "out"
    code, _, err = pretrain(capsys, "--model", tiny_checkpoint, "--train", TRAIN, "--eval", HELD_OUT, "--output",
                            out, "--max-length", 64, "--max-steps", 30, "--eval-steps", 3, "--batch-size", 32,
                            "--lr", 5e-3, "--schedule", "cosine", "--no-progress")
    assert code == 0, err
    evals = runs(out)["fastbert"]["evals"]
    first, last = evals[0]["loss"], evals[-1]["loss"]
    assert last < first - 1.5, (first, last)  # nats per masked token, from a fresh head over 30k pieces


class Interrupted(Exception):
    pass


def test_resume_continues_bit_exactly(tmp_path, capsys, tiny_dropout_checkpoint, monkeypatch):
    args = ["--model", tiny_dropout_checkpoint, "--train", TRAIN, "--eval", HELD_OUT, "--max-length", 64,
            "--epochs", 2, "--batch-size", 32, "--lr", 2e-3, "--save-steps", 4, "--no-progress"]
    assert pretrain(capsys, *args, "--output", tmp_path / "whole")[0] == 0
    real_step = FineTuner._train_step

    def stopping(self, batch):
        if self.position.step == 10:  # after the step-8 checkpoint and two more steps (lost)
            raise Interrupted
        return real_step(self, batch)

    monkeypatch.setattr(FineTuner, "_train_step", stopping)
    with pytest.raises(Interrupted):
        pretrain(capsys, *args, "--output", tmp_path / "cut")
    monkeypatch.setattr(FineTuner, "_train_step", real_step)
    assert pretrain(capsys, *args, "--output", tmp_path / "cut", "--resume")[0] == 0
    whole, cut = runs(tmp_path / "whole")["fastbert"], runs(tmp_path / "cut")["fastbert"]
    assert cut["losses"] == whole["losses"] and cut["evals"] == whole["evals"]
    a, b = (transformers.BertForMaskedLM.from_pretrained(tmp_path / run / "last").state_dict()
            for run in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    code, _, err = pretrain(capsys, *args, "--output", tmp_path / "cut", "--resume", "--mlm-probability", 0.2)
    assert code == 2 and "mlm_probability was 0.15 there and is 0.2 now" in err


def test_gradient_accumulation_trains_like_the_whole_batch(tmp_path, capsys, tiny_checkpoint):
    common = ["--model", tiny_checkpoint, "--train", TRAIN, "--max-length", 64, "--max-steps", 5, "--lr", 2e-3,
              "--no-progress"]
    assert pretrain(capsys, *common, "--batch-size", 16, "--output", tmp_path / "whole")[0] == 0
    assert pretrain(capsys, *common, "--batch-size", 4, "--grad-accum", 4, "--output", tmp_path / "acc")[0] == 0
    a, b = runs(tmp_path / "whole")["fastbert"]["losses"], runs(tmp_path / "acc")["fastbert"]["losses"]
    assert len(a) == len(b) == 5 and max(abs(x - y) for x, y in zip(a, b)) <= 1e-5


@pytest.mark.parametrize("nsp", [False, True], ids=["mlm", "nsp"])
def test_two_processes_train_like_one_with_the_combined_batch(nsp, tmp_path, tiny_checkpoint):
    """Every process draws the same masks and pairs (no per-process hash salt) and the loss's denominator, the
    global batch's masked tokens, is summed over them."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    common = ["--model", tiny_checkpoint, "--train", str(TRAIN), "--eval", str(HELD_OUT), "--max-length", "64",
              "--max-steps", "4", "--lr", "2e-3", "--optimizer", "lamb", "--no-progress"] + (["--nsp"] if nsp else [])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for launcher, batch, name in ((torchrun, "8", "two"), ([sys.executable], "16", "one")):
        done = subprocess.run([*launcher, "-m", "fastbert.pretrain", *common, "--batch-size", batch, "--output",
                               str(tmp_path / name)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = runs(tmp_path / "one")["fastbert"], runs(tmp_path / "two")["fastbert"]
    assert max(abs(x - y) for x, y in zip(one["losses"], two["losses"])) <= 1e-5
    assert abs(one["evals"][-1]["loss"] - two["evals"][-1]["loss"]) <= 1e-5


def _tokenizer_without_mask(tmp_path, tiny_checkpoint) -> Path:
    folder = tmp_path / "nomask"
    model = transformers.BertModel.from_pretrained(tiny_checkpoint)
    model.save_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    tokenizer.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["mask_token"] = None
    config_path.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("case", ["empty", "undecodable", "max length", "no mask token", "config alone",
                                  "probability"])
def test_bad_input_is_one_line_before_training(case, tmp_path, capsys, tiny_checkpoint):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(b"\n\n" if case == "empty" else b"fine text\n\ncaf\xe9\n" if case == "undecodable"
                       else b"some text\n")
    model = _tokenizer_without_mask(tmp_path, tiny_checkpoint) if case == "no mask token" else tiny_checkpoint
    capsys.readouterr()  # what saving that model printed
    args = ["--model", model, "--train", corpus, "--output", tmp_path / "out", "--no-progress", "--max-length",
            65 if case == "max length" else 64]
    if case == "config alone":
        args = ["--config", Path(tiny_checkpoint) / "config.json", "--train", corpus, "--output", tmp_path / "out"]
    if case == "probability":
        args += ["--mlm-probability", 0]
    expected = {"empty": f"{corpus}:1: the corpus is empty",
                "undecodable": f"{corpus}:3: not valid UTF-8: byte 0xe9 at column 4",
                "max length": "--max-length 65 is beyond the 64 tokens",
                "no mask token": "has no mask token",
                "config alone": "--config builds a new model: --tokenizer names its tokenizer",
                "probability": "argument --mlm-probability: '0' is not strictly between 0 and 1"}[case]
    try:
        code, _, err = pretrain(capsys, *args)
    except SystemExit as exit:  # an option's value refused by the parser itself
        code, err = exit.code, capsys.readouterr().err
    assert code == 2 and err.startswith("fastbert pretrain: error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "best").exists() and not (tmp_path / "out" / "metrics.json").exists()


def test_from_scratch_with_a_config_and_a_tokenizer(tmp_path, capsys, tiny_checkpoint):
    out = tmp_path / "out"
    code, _, err = pretrain(capsys, "--config", Path(tiny_checkpoint) / "config.json", "--tokenizer",
                            tiny_checkpoint, "--train", HELD_OUT, "--output", out, "--max-length", 64, "--max-steps",
                            2, "--no-progress")
    assert code == 0, err
    assert type(transformers.AutoModelForMaskedLM.from_pretrained(out / "best")).__name__ == "BertForMaskedLM"


def test_nsp_trains_bert_for_pretraining_with_transformers_losses(tmp_path, capsys, tiny_checkpoint, tokenizer):
    out = tmp_path / "out"
    code, stdout, err = pretrain(capsys, "--model", tiny_checkpoint, "--train", TRAIN, "--eval", HELD_OUT,
                                 "--output", out, "--max-length", 64, "--max-steps", 6, "--batch-size", 16, "--lr",
                                 2e-3, "--nsp", "--reference")
    assert code == 0, err
    assert "segment pairs of at most 64" in err and "nsp_accuracy=" in stdout
    ours, theirs = (runs(out)[name] for name in ("fastbert", "transformers"))
    assert max(abs(a - b) for a, b in zip(ours["losses"], theirs["losses"])) <= 1e-4
    assert ours["evals"][-1]["nsp_accuracy"] == theirs["evals"][-1]["nsp_accuracy"]
    model, info = transformers.BertForPreTraining.from_pretrained(out / "best", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]

    roberta = tmp_path / "roberta"
    transformers.RobertaModel(transformers.RobertaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=40, max_position_embeddings=80, pad_token_id=0)).save_pretrained(roberta)
    tokenizer.save_pretrained(roberta)
    capsys.readouterr()
    code, _, err = pretrain(capsys, "--model", roberta, "--train", TRAIN, "--output", tmp_path / "r", "--max-length",
                            64, "--nsp")
    assert code == 2 and "--nsp needs a BERT model" in err, err


def test_command_mistakes_are_one_line_before_any_work(tmp_path, capsys, tiny_checkpoint):
    base = ["--model", tiny_checkpoint, "--output", tmp_path / "out", "--max-length", 64]
    code, _, err = pretrain(capsys, *base, "--train", TRAIN, tmp_path / "missing.txt")
    assert code == 2 and f"--train {tmp_path / 'missing.txt'}: no such file" in err
    assert pretrain(capsys, *base, "--train", HELD_OUT, "--max-steps", 1, "--no-progress")[0] == 0
    code, _, err = pretrain(capsys, *base, "--train", HELD_OUT)
    assert code == 2 and "holds an earlier run" in err and "--resume continues it" in err
    code, _, err = pretrain(capsys, *base, "--train", HELD_OUT, "--resume", "--reference")
    assert code == 2 and "--resume and --reference do not go together" in err


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_other_families_pretrain_with_transformers_losses(family, tmp_path, capsys, tokenizer):
    """RoBERTa (positions from its padding index, per document) and DistilBERT (no token types) on the BERT
    tokenizer's vocabulary: the same loop, transformers' losses step for step."""
    sizes = dict(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id, max_position_embeddings=80)
    if family == "roberta":
        config = transformers.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=72, hidden_dropout_prob=0.0,
                                            attention_probs_dropout_prob=0.0, **sizes)
    else:
        config = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=72, dropout=0.0,
                                               attention_dropout=0.0, **sizes)
    torch.manual_seed(0)
    transformers.AutoModelForMaskedLM.from_config(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    code, _, err = pretrain(capsys, "--model", tmp_path / "model", "--train", HELD_OUT, "--eval", HELD_OUT,
                            "--output", out, "--max-length", 64, "--max-steps", 4, "--batch-size", 16, "--lr", 2e-3,
                            "--reference", "--no-progress")
    assert code == 0, err
    ours, theirs = (runs(out)[name] for name in ("fastbert", "transformers"))
    assert max(abs(a - b) for a, b in zip(ours["losses"], theirs["losses"])) <= 1e-4
    assert abs(ours["evals"][-1]["loss"] - theirs["evals"][-1]["loss"]) <= 1e-4
    saved = transformers.AutoModelForMaskedLM.from_pretrained(out / "best")
    assert type(saved).__name__ == ("RobertaForMaskedLM" if family == "roberta" else "DistilBertForMaskedLM")
