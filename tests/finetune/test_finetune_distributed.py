"""Data-parallel fine-tuning under torchrun (gloo, 2 CPU processes) against one process."""

import json
import os
import subprocess
import sys

import torch

import fastbert


def _finetune(launcher, model, train, dev, output, batch_size):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [*launcher, "-m", "fastbert.finetune", "--model", model, "--train", train, "--eval", dev,
           "--output", str(output), "--epochs", "2", "--batch-size", str(batch_size), "--lr", "1e-3",
           "--max-length", "64", "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((output / "metrics.json").read_text())


def test_two_processes_match_one_process_with_the_combined_batch(tmp_path, tiny_checkpoint, sample_train,
                                                                 sample_dev):
    """481 examples: each epoch's last global batch has one example, so process 1 runs a weight-0 stand-in."""
    lines = open(sample_train).read().splitlines()
    train = tmp_path / "train.csv"
    train.write_text("\n".join(lines + lines[1:2]) + "\n")
    sample_train = str(train)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = _finetune(torchrun, tiny_checkpoint, sample_train, sample_dev, tmp_path / "two", batch_size=8)
    one = _finetune([sys.executable], tiny_checkpoint, sample_train, sample_dev, tmp_path / "one", batch_size=16)
    assert two["processes"] == 2 and one["processes"] == 1
    a, b = one["runs"]["fastbert"], two["runs"]["fastbert"]
    assert len(a["losses"]) == len(b["losses"]) == 62
    assert max(abs(x - y) for x, y in zip(a["losses"], b["losses"])) <= 1e-5
    for x, y in zip(a["evals"], b["evals"]):
        assert abs(x["loss"] - y["loss"]) <= 1e-5 and x["accuracy"] == y["accuracy"]
    weights = [fastbert.BertForSequenceClassification.from_pretrained(tmp_path / run / "best").state_dict()
               for run in ("one", "two")]
    for name, w in weights[0].items():
        assert torch.allclose(w, weights[1][name], atol=1e-5), name
    # only process 0 wrote: the two checkpoints and metrics, no temporary folder left
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["best", "last", "metrics.json"]
