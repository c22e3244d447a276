"""``fastbert finetune`` end to end (tiny checkpoint, CPU): outputs, --reference, and bad input."""

import json

import pytest
import torch
import transformers

import fastbert
from fastbert.cli import main as fastbert_main


def finetune(capsys, *args):
    code = fastbert_main(["finetune", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def common(model, output):
    return ["--model", model, "--output", output, "--max-length", 64, "--no-progress"]


def test_reference_runs_the_identical_loop_and_compares(tmp_path, capsys, tiny_checkpoint, sample_train,
                                                        sample_dev):
    out = tmp_path / "out"
    code, stdout, _ = finetune(capsys, *common(tiny_checkpoint, out), "--train", sample_train, "--eval", sample_dev,
                               "--epochs", 1, "--batch-size", 32, "--lr", 2e-3, "--reference")
    assert code == 0
    assert "time per step" in stdout and "| fastbert | transformers |" in stdout
    record = json.loads((out / "metrics.json").read_text())
    ours, theirs = record["runs"]["fastbert"], record["runs"]["transformers"]
    assert len(ours["losses"]) == len(theirs["losses"]) == 15  # 480 examples / 32
    assert max(abs(a - b) for a, b in zip(ours["losses"], theirs["losses"])) <= 1e-4
    assert ours["speed"]["steps"] == 14 and ours["speed"]["seconds_per_step"] > 0  # the first step is untimed
    assert ours["evals"][0]["accuracy"] == pytest.approx(theirs["evals"][0]["accuracy"])
    assert record["labels"] == ["negative", "neutral", "positive"]
    for folder in (out / "best", out / "last", out / "reference" / "best"):
        assert (folder / "model.safetensors").exists(), folder
    config = transformers.AutoConfig.from_pretrained(out / "best")
    assert config.label2id == {"negative": 0, "neutral": 1, "positive": 2}


def test_text_pairs_from_jsonl_with_integer_labels(tmp_path, capsys, tiny_checkpoint):
    rows = [{"premise": f"a man plays the {thing}", "hypothesis": f"someone {verb} music", "label": label}
            for thing in ("guitar", "piano", "drums", "violin") for verb, label in (("makes", 0), ("hates", 10))]
    train = tmp_path / "pairs.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows * 2) + "\n")
    out = tmp_path / "out"
    code, _, _ = finetune(capsys, *common(tiny_checkpoint, out), "--train", train, "--eval", train,
                          "--text-column", "premise", "--text-pair-column", "hypothesis", "--epochs", 1,
                          "--batch-size", 4)
    assert code == 0
    model = fastbert.BertForSequenceClassification.from_pretrained(out / "best")
    assert model.config.id2label == {0: "0", 1: "10"}
    record = json.loads((out / "metrics.json").read_text())
    assert len(record["runs"]["fastbert"]["losses"]) == 4 and "transformers" not in record["runs"]


def test_fp16_and_bf16_autocast_run(tmp_path, capsys, tiny_checkpoint, sample_train):
    for flag in ("--bf16", "--fp16"):
        out = tmp_path / flag
        code, _, err = finetune(capsys, *common(tiny_checkpoint, out), "--train", sample_train, "--epochs", 1,
                                "--batch-size", 64, flag)
        assert code == 0, err
        losses = json.loads((out / "metrics.json").read_text())["runs"]["fastbert"]["losses"]
        assert all(torch.isfinite(torch.tensor(losses)))


def _write(path, text):
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


BAD_INPUTS = {
    # name: (train file, dev file or None, extra args, the expected message with {train}/{dev})
    "missing column": ("sentence,label\nhello,a\nbye,b\n", None, [], "{train}:1: no column 'text' (--text-column)"),
    "empty file": ("", None, [], "{train}:1: the file is empty"),
    "duplicate column": ("text,label,text\nhello,a,x\nbye,b,y\n", None, [],
                         "{train}:1: column 'text' (--text-column) appears 2 times"),
    "header only": ("text,label\n", None, [], "{train}:2: no examples after the header"),
    "unseen eval label": ("text,label\nhello,a\nbye,b\n", "text,label\nhi,a\nhm,c\n", [],
                          "{dev}:3: label 'c' does not occur in the training file {train}"),
    "undecodable text": (b"text,label\nhello,a\nbye,b\ncaf\xe9,a\n", None, [], "{train}:4: not valid UTF-8"),
    "max length": ("text,label\nhello,a\nbye,b\n", None, ["--max-length", 65],
                   "--max-length 65 is beyond the model's 64 positions"),
    "one label": ("text,label\nhello,a\nbye,a\n", None, [], "needs at least 2 labels"),
    "resume without checkpoint": ("text,label\nhello,a\nbye,b\n", None, ["--resume"], "--resume: no checkpoint"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_a_clear_error_before_training(case, tmp_path, capsys, tiny_checkpoint):
    train_text, dev_text, extra, expected = BAD_INPUTS[case]
    train = _write(tmp_path / "train.csv", train_text)
    dev = _write(tmp_path / "dev.csv", dev_text) if dev_text is not None else None
    out = tmp_path / "out"
    args = common(tiny_checkpoint, out) + ["--train", train] + (["--eval", dev] if dev else []) + extra
    code, _, err = finetune(capsys, *args)
    assert code == 2
    assert err.startswith("fastbert finetune: error: ")
    assert expected.format(train=train, dev=dev) in err, err
    assert not out.exists()  # nothing trained, nothing written


def test_resume_and_reference_do_not_combine(tmp_path, capsys, tiny_checkpoint, sample_train):
    code, _, err = finetune(capsys, *common(tiny_checkpoint, tmp_path), "--train", sample_train, "--resume",
                            "--reference")
    assert code == 2 and "--resume and --reference" in err


def test_resume_of_a_finished_run_trains_nothing_more(tmp_path, capsys, tiny_checkpoint, sample_train):
    args = [*common(tiny_checkpoint, tmp_path), "--train", sample_train, "--epochs", 1, "--batch-size", 64]
    assert finetune(capsys, *args)[0] == 0
    first = json.loads((tmp_path / "metrics.json").read_text())["runs"]["fastbert"]
    assert finetune(capsys, *args, "--resume")[0] == 0
    again = json.loads((tmp_path / "metrics.json").read_text())["runs"]["fastbert"]
    assert again["losses"] == first["losses"] and again["steps"] == first["steps"] == 8
    code, _, err = finetune(capsys, *args, "--resume", "--lr", 1e-3)
    assert code == 2 and "cannot resume" in err and "lr" in err
