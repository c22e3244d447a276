"""``fastbert finetune`` end to end (tiny checkpoint, CPU): outputs, --reference, and bad input."""

import json

import _cli_run as cli_run
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


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_other_families_fine_tune_with_transformers_losses(family, tmp_path, capsys, tokenizer, sample_train):
    """A RoBERTa or DistilBERT checkpoint (here on the BERT tokenizer's vocabulary) trains through the same
    loop, with transformers' losses step for step."""
    sizes = dict(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id, max_position_embeddings=80)
    if family == "roberta":
        config = transformers.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=72, type_vocab_size=2, hidden_dropout_prob=0.0,
                                            attention_probs_dropout_prob=0.0, **sizes)
    else:  # no dropout: runs comparable step by step
        config = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=72, dropout=0.0,
                                               attention_dropout=0.0, seq_classif_dropout=0.0, **sizes)
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    longest = 80 - (tokenizer.pad_token_id + 1 if family == "roberta" else 0)  # RoBERTa's start past the pad
    code, _, err = finetune(capsys, *common(tmp_path / "model", out), "--train", sample_train,
                            "--max-length", longest + 1)
    assert code == 2 and f"--max-length {longest + 1} is beyond the {longest} tokens" in err, err
    code, stdout, _ = finetune(capsys, *common(tmp_path / "model", out), "--train", sample_train, "--epochs", 1,
                               "--batch-size", 64, "--lr", 2e-3, "--reference", "--max-length", longest)
    assert code == 0
    runs = json.loads((out / "metrics.json").read_text())["runs"]
    assert max(abs(a - b) for a, b in zip(runs["fastbert"]["losses"], runs["transformers"]["losses"])) <= 1e-4
    saved = transformers.AutoModelForSequenceClassification.from_pretrained(out / "best")
    assert type(saved).__name__ == f"{'Roberta' if family == 'roberta' else 'DistilBert'}ForSequenceClassification"


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
                   "--max-length 65 is beyond the 64 tokens the model's positions take"),
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


# ----------------------------------------------------------------------------- refused before any work
# Each case is one line on stderr naming the option and its value, a non-zero exit, no traceback, nothing
# written; those found without torch run in a fresh process that must not even import it.
TRAIN_ROWS = "text,label\nhello,a\nbye,b\n"


@pytest.fixture
def paths(tmp_path):
    """A small training file, a folder with a saved model's config, and an output folder not yet made."""
    train = _write(tmp_path / "train.csv", TRAIN_ROWS)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return {"train": train, "model": model, "out": tmp_path / "out", "tmp": tmp_path}


def _args(paths, **override):
    options = {"--model": paths["model"], "--train": paths["train"], "--output": paths["out"], **override}
    return ["finetune", *[str(v) for pair in options.items() for v in pair]]


def _refused_in_a_fresh_process(paths, *words, extra=(), env=None, unset=(), **override):
    done = cli_run.fastbert(*_args(paths, **override), *extra, env=env, unset=unset)
    cli_run.assert_refused(done, *words)
    assert done.err.startswith("fastbert finetune: error: "), done.err
    assert not paths["out"].exists()


def test_a_missing_training_file(paths):
    missing = paths["tmp"] / "tarin.csv"
    _refused_in_a_fresh_process(paths, f"--train {missing}: no such file", **{"--train": missing})


def test_a_folder_as_the_training_file(paths):
    _refused_in_a_fresh_process(paths, f"--train {paths['tmp']}: is a folder", **{"--train": paths["tmp"]})


def test_a_missing_evaluation_file(paths):
    missing = paths["tmp"] / "dev.csv"
    _refused_in_a_fresh_process(paths, f"--eval {missing}: no such file", **{"--eval": missing})


def test_a_model_folder_that_does_not_exist(paths):
    missing = paths["tmp"] / "no-such-model"
    _refused_in_a_fresh_process(paths, f"--model {missing}: no such folder", **{"--model": missing})


def test_a_folder_that_is_not_a_saved_model(paths):
    _refused_in_a_fresh_process(paths, f"--model {paths['tmp']}: no config.json", **{"--model": paths["tmp"]})


def test_a_hub_name_offline_and_not_in_the_cache(paths):
    empty_cache = paths["tmp"] / "hub-cache"
    empty_cache.mkdir()
    offline = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(empty_cache)}
    _refused_in_a_fresh_process(paths, "--model someone/no-such-bert: no such folder, and not in the Hugging Face "
                                "cache (HF_HUB_OFFLINE=1", env=offline, **{"--model": "someone/no-such-bert"})


def test_an_output_that_is_a_file(paths):
    taken = _write(paths["tmp"] / "out.txt", "notes")
    _refused_in_a_fresh_process(paths, f"--output {taken}: is a file, not a folder", **{"--output": taken})
    assert taken.read_text() == "notes"


def test_an_output_below_a_file(paths):
    taken = _write(paths["tmp"] / "out.txt", "notes")
    _refused_in_a_fresh_process(paths, f"--output {taken / 'run'}: {taken} is a file",
                                **{"--output": taken / "run"})


@pytest.mark.parametrize("left", ["last", ".last.old", "best", "metrics.json"])
def test_an_output_holding_an_earlier_run(paths, left):
    """``.last.old`` is what checkpoint.find resumes from after a swap cut short: an earlier run too."""
    out = paths["out"]
    out.mkdir()
    earlier = out / left
    if left.endswith(".json"):
        earlier.write_text("{}")
    else:
        earlier.mkdir()
        (earlier / "model.safetensors").write_bytes(b"weights")
    done = cli_run.fastbert(*_args(paths))
    name = left if left.endswith(".json") else f"{left}/"
    cli_run.assert_refused(done, f"--output {out}: holds an earlier run ({name})", "--resume", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == [left]  # untouched
    assert earlier.is_file() or (earlier / "model.safetensors").read_bytes() == b"weights"


def test_resume_and_overwrite_do_not_combine(paths):
    _refused_in_a_fresh_process(paths, "--overwrite", "--resume", extra=["--resume", "--overwrite"])


def test_an_unknown_backend(paths):
    _refused_in_a_fresh_process(paths, "FASTBERT_BACKEND='cuda'", extra=["--device", "cpu"],
                                env={"FASTBERT_BACKEND": "cuda"})


def test_the_triton_backend_on_the_cpu_without_its_interpreter(paths):
    _refused_in_a_fresh_process(paths, "FASTBERT_BACKEND=triton on the CPU", "TRITON_INTERPRET=1",
                                extra=["--device", "cpu"], env={"FASTBERT_BACKEND": "triton"},
                                unset=["TRITON_INTERPRET"])


@pytest.fixture
def no_work(monkeypatch):
    """Reading the data or loading the model fails the test."""
    from fastbert.finetune import cli as finetune_cli

    monkeypatch.setattr(finetune_cli, "prepare", lambda *a, **k: pytest.fail("read the data and loaded the model"))


def _refused_in_process(capsys, paths, *words, extra=()):
    code, _, err = finetune(capsys, *_args(paths)[1:], *extra)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert not paths["out"].exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
def test_cuda_without_a_gpu(paths, capsys, no_work):
    _refused_in_process(capsys, paths, "fastbert finetune: error: --device cuda: no CUDA device is available",
                        extra=["--device", "cuda"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
def test_the_triton_backend_on_the_default_device_of_a_cpu_machine(paths, capsys, no_work, monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _refused_in_process(capsys, paths, "FASTBERT_BACKEND=triton on the CPU needs Triton's interpreter")


def test_overwrite_replaces_the_earlier_run(tmp_path, capsys, tiny_checkpoint, sample_train):
    out = tmp_path / "out"
    (out / "reference" / "best").mkdir(parents=True)
    (out / ".best.old").mkdir()
    (out / "metrics.json").write_text("{}")
    (out / "notes.txt").write_text("mine")  # not the run's: kept
    code, _, err = finetune(capsys, *common(tiny_checkpoint, out), "--train", sample_train, "--epochs", 1,
                            "--batch-size", 64, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["best", "last", "metrics.json", "notes.txt"]
    assert json.loads((out / "metrics.json").read_text())["runs"]["fastbert"]["steps"] == 8
