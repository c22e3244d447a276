"""``fastbert finetune --task token-classification|question-answering`` end to end (tiny checkpoint, CPU):
the same loop as text classification, transformers' losses with --reference, checkpoints transformers and
its pipelines load, exact --resume, bad input refused before training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import fastbert
from fastbert.cli import main as fastbert_main
from fastbert.finetune.loop import FineTuner
from fastbert.finetune.tasks.question_answering import extract_answers, read_questions
from fastbert.finetune.tasks.squad_metric import squad_scores

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NER_TRAIN, NER_DEV = EXAMPLES / "ner" / "train.conll", EXAMPLES / "ner" / "dev.conll"
SQUAD_TRAIN, SQUAD_DEV = EXAMPLES / "squad" / "train.json", EXAMPLES / "squad" / "dev.json"
TYPES = {"PER", "LOC", "ORG", "MISC"}


def finetune(capsys, *args):
    code = fastbert_main(["finetune", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def squad_subset(path: Path, articles: int, out: Path) -> Path:
    """The first ``articles`` articles of a SQuAD file (a smaller run)."""
    data = json.loads(path.read_text())
    out.write_text(json.dumps({**data, "data": data["data"][:articles]}, indent=1))
    return out


def conll_subset(path: Path, sentences: int, out: Path) -> Path:
    blocks = [b for b in path.read_text().split("\n\n") if b.strip() and not b.startswith("-DOCSTART-")]
    out.write_text("\n\n".join(blocks[:sentences]) + "\n")
    return out


def test_ner_trains_with_transformers_losses_and_its_checkpoint_runs_in_the_pipeline(tmp_path, capsys,
                                                                                    tiny_checkpoint):
    out = tmp_path / "out"
    code, stdout, err = finetune(capsys, "--task", "token-classification", "--model", tiny_checkpoint,
                                 "--train", NER_TRAIN, "--eval", NER_DEV, "--output", out, "--max-length", 64,
                                 "--epochs", 3, "--batch-size", 32, "--lr", 3e-3, "--reference")
    assert code == 0, err
    assert "training sentences are longer than --max-length 64 tokens: split at word boundaries" in err
    assert "epoch 3: f1=" in stdout and " precision=" in stdout and " accuracy=" in stdout
    record = json.loads((out / "metrics.json").read_text())
    ours, theirs = record["runs"]["fastbert"], record["runs"]["transformers"]
    assert max(abs(a - b) for a, b in zip(ours["losses"], theirs["losses"])) <= 1e-4
    assert abs(ours["evals"][-1]["f1"] - theirs["evals"][-1]["f1"]) <= 0.02
    assert ours["evals"][-1]["f1"] > 0.3  # from 0 at random initialization
    assert set(ours["evals"][-1]["per_type"]) <= TYPES and record["task"] == "token-classification"

    best = out / "best"
    config = transformers.AutoConfig.from_pretrained(best)
    assert set(config.label2id) == {"O"} | {f"{p}-{t}" for p in "BI" for t in TYPES}
    tagger = transformers.pipeline("token-classification", model=str(best), aggregation_strategy="simple")
    found = tagger("Maria de Souza was born in New York and works for Acme Corp in Berlin.")
    assert found and all(e["entity_group"] in TYPES for e in found)
    ids = tagger.tokenizer(["Maria lives in Lisbon ."], return_tensors="pt")
    ours_model = fastbert.AutoModelForTokenClassification.from_pretrained(best).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours_model(**ids).logits, tagger.model(**ids).logits, atol=1e-5, rtol=1e-5)


def test_question_answering_trains_with_transformers_losses_and_loads_in_transformers(tmp_path, capsys,
                                                                                      tiny_checkpoint):
    train = squad_subset(SQUAD_TRAIN, 30, tmp_path / "train.json")
    dev = squad_subset(SQUAD_DEV, 10, tmp_path / "dev.json")
    out = tmp_path / "out"
    code, stdout, err = finetune(capsys, "--task", "question-answering", "--model", tiny_checkpoint, "--train",
                                 train, "--eval", dev, "--output", out, "--max-length", 64, "--doc-stride", 24,
                                 "--epochs", 2, "--batch-size", 32, "--lr", 3e-3, "--version-2-with-negative",
                                 "--reference")
    assert code == 0, err
    assert "--doc-stride 24 lowered" not in err and "windows (contexts longer than --max-length 64" in err
    assert "epoch 2: f1=" in stdout and " exact_match=" in stdout
    record = json.loads((out / "metrics.json").read_text())
    ours, theirs = record["runs"]["fastbert"], record["runs"]["transformers"]
    assert max(abs(a - b) for a, b in zip(ours["losses"], theirs["losses"])) <= 1e-4
    assert sum(ours["losses"][-5:]) < sum(ours["losses"][:5])  # it learns
    last = ours["evals"][-1]
    assert 0 <= last["exact_match"] <= last["f1"] <= 1 and last["no_answer_total"] > 0

    best = out / "best"
    theirs_model = transformers.AutoModelForQuestionAnswering.from_pretrained(best).eval()
    ours_model = fastbert.AutoModelForQuestionAnswering.from_pretrained(best).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(best)
    batch = tokenizer(["Where was Maria born?"], ["Maria was born in Lisbon in 1950."], return_tensors="pt")
    with torch.no_grad():
        a, b = ours_model(**batch), theirs_model(**batch)
    torch.testing.assert_close(a.start_logits, b.start_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.end_logits, b.end_logits, atol=1e-5, rtol=1e-5)
    # transformers 5.8 and later have no question-answering pipeline: extract_answers is the documented way,
    # the same answers from either model, and the evaluation's of the best epoch
    questions = read_questions(dev, with_negative=True)
    texts, contexts = [q.question for q in questions], [q.context for q in questions]
    settings = dict(max_length=64, doc_stride=24, with_negative=True)
    answers = extract_answers(ours_model, tokenizer, texts, contexts, **settings)
    assert answers == extract_answers(theirs_model, tokenizer, texts, contexts, **settings)
    scores = squad_scores({q.id: a for q, a in zip(questions, answers)},
                          {q.id: [t for t, _ in q.answers] for q in questions})
    best_eval = max(ours["evals"], key=lambda e: e["f1"])
    assert scores["f1"] == pytest.approx(best_eval["f1"]) and scores["exact_match"] == best_eval["exact_match"]
    if "question-answering" in transformers.pipelines.SUPPORTED_TASKS:  # transformers before 5.8 only
        answer = transformers.pipeline("question-answering", model=str(best))(
            question="Where was Maria born?", context="Maria was born in Lisbon in 1950.")
        assert isinstance(answer["answer"], str)


# ----------------------------------------------------------------------------- bad input, before training
BAD_INPUTS = {
    # name: (task, file name, text, extra args, expected message after "path:")
    "missing tag column": ("token-classification", "train.jsonl", '{"tokens": ["a", "b"], "ner": ["O", "O"]}\n',
                           [], "1: no key 'tags' (--tags-column)"),
    "one-column conll line": ("token-classification", "train.conll", "John B-PER\nsmiles\n\n", [],
                              "2: one column ('smiles')"),
    "bad tag": ("token-classification", "train.conll", "John PER\n", [], "1: tag 'PER' is not O or B-"),
    "answer_start off": ("question-answering", "train.jsonl",
                         '{"question": "Who?", "context": "Ann met Bob.", "answers": {"text": ["Bob"], '
                         '"answer_start": [4]}}\n', [], "1: answer_start 4 does not match its text 'Bob'"),
    "no context": ("question-answering", "train.jsonl",
                   '{"question": "Who?", "context": "Ann met Bob.", "answers": {"text": ["Bob"], '
                   '"answer_start": [8]}}\n{"question": "Who?", "answers": []}\n',
                   ["--version-2-with-negative"], "2: a question without a context"),
    "unanswerable in v1": ("question-answering", "train.jsonl",
                           '{"question": "Who?", "context": "Ann met Bob.", "answers": []}\n', [],
                           "1: a question without an answer: unanswerable questions (SQuAD v2.0) need "
                           "--version-2-with-negative"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_with_file_and_line_before_training(case, tmp_path, capsys, tiny_checkpoint):
    task, name, text, extra, expected = BAD_INPUTS[case]
    train = tmp_path / name
    train.write_text(text)
    out = tmp_path / "out"
    code, _, err = finetune(capsys, "--task", task, "--model", tiny_checkpoint, "--train", train, "--output", out,
                            "--no-progress", *extra)
    assert code == 2 and err.startswith("fastbert finetune: error: ") and len(err.strip().splitlines()) == 1
    assert f"{train}:{expected}" in err, err
    assert not out.exists()


@pytest.mark.parametrize("task, option, message", [
    ("token-classification", ["--doc-stride", 64], "--doc-stride is an option of --task question-answering"),
    ("question-answering", ["--label-all-tokens"], "--label-all-tokens is an option of --task token-classification"),
    ("token-classification", ["--text-column", "x"], "--text-column is an option of --task sequence-classification"),
    ("sequence-classification", ["--tags-column", "x"], "--tags-column is an option of --task token-classification"),
    ("token-classification", ["--metric", "macro_f1"], "--metric macro_f1: --task token-classification scores f1, "),
    ("question-answering", ["--metric", "precision"], "--metric precision: --task question-answering scores f1, "),
])
def test_an_option_of_another_task_is_refused(task, option, message, tmp_path, capsys, tiny_checkpoint):
    code, _, err = finetune(capsys, "--task", task, "--model", tiny_checkpoint, "--train", NER_TRAIN, "--output",
                            tmp_path / "out", *option)
    assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- resume and torchrun
class Interrupted(Exception):
    pass


def test_ner_resume_continues_exactly_where_it_stopped(tmp_path, capsys, tiny_dropout_checkpoint, monkeypatch):
    """Dropout on, the loss divided by each global batch's labelled tokens: stopped after a mid-epoch
    checkpoint, resumed, the same per-step losses and evaluations as a run that never stopped."""
    train = conll_subset(NER_TRAIN, 200, tmp_path / "train.conll")
    args = ["--task", "token-classification", "--model", tiny_dropout_checkpoint, "--train", train, "--eval",
            NER_DEV, "--max-length", 32, "--epochs", 2, "--batch-size", 16, "--lr", 2e-3, "--save-steps", 5,
            "--no-progress"]
    assert finetune(capsys, *args, "--output", tmp_path / "whole")[0] == 0
    real_step = FineTuner._train_step

    def stopping(self, batch):
        if self.position.step == 19:  # epoch 2: after the step-15 checkpoint and three more steps (lost)
            raise Interrupted
        return real_step(self, batch)

    monkeypatch.setattr(FineTuner, "_train_step", stopping)
    with pytest.raises(Interrupted):
        finetune(capsys, *args, "--output", tmp_path / "cut")
    monkeypatch.setattr(FineTuner, "_train_step", real_step)
    assert finetune(capsys, *args, "--output", tmp_path / "cut", "--resume")[0] == 0
    whole, cut = (json.loads((tmp_path / run / "metrics.json").read_text())["runs"]["fastbert"]
                  for run in ("whole", "cut"))
    assert cut["losses"] == whole["losses"] and cut["evals"] == whole["evals"]
    code, _, err = finetune(capsys, *args, "--output", tmp_path / "cut", "--resume", "--label-all-tokens")
    assert code == 2 and "label_all_tokens was False there and is True now" in err


def _torchrun(processes: int, args: list, output: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    cmd = [*(launcher if processes > 1 else [sys.executable]), "-m", "fastbert.finetune", *map(str, args),
           "--output", str(output), "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((output / "metrics.json").read_text())


@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_two_processes_match_one_with_the_combined_batch(task, tmp_path, tiny_checkpoint):
    """For NER the loss's denominator is the global batch's labelled tokens, summed over both processes."""
    if task == "token-classification":
        files = [conll_subset(NER_TRAIN, 101, tmp_path / "train.conll"), conll_subset(NER_DEV, 30, tmp_path / "d.conll")]
    else:
        files = [squad_subset(SQUAD_TRAIN, 8, tmp_path / "train.json"), squad_subset(SQUAD_DEV, 3, tmp_path / "d.json")]
    args = ["--task", task, "--model", tiny_checkpoint, "--train", files[0], "--eval", files[1], "--max-length", 48,
            "--epochs", 1, "--lr", 1e-3] + (["--version-2-with-negative"] if task == "question-answering" else [])
    two = _torchrun(2, args + ["--batch-size", 8], tmp_path / "two")
    one = _torchrun(1, args + ["--batch-size", 16], tmp_path / "one")
    a, b = one["runs"]["fastbert"], two["runs"]["fastbert"]
    assert len(a["losses"]) == len(b["losses"]) > 3
    assert max(abs(x - y) for x, y in zip(a["losses"], b["losses"])) <= 1e-5
    for x, y in zip(a["evals"], b["evals"]):
        assert abs(x["loss"] - y["loss"]) <= 1e-5 and x["f1"] == y["f1"]
