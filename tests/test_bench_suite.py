"""``fastbert bench`` (benchmarks/suite.py): one tiny run writes the three outputs with every section."""

import json

import pytest
import torch

from benchmarks import plots, speed, suite
from fastbert import cli

TINY = suite.Plan(batches=(2,), lengths=(16,), repeats=1, compile_models=False, train_layers=1, train_batch=2,
                  train_len=16, correctness_layers=1, memory_batch=16, memory_len=64, dtypes=(torch.float32,))


@pytest.fixture(scope="module")
def record_and_folder(tmp_path_factory, minilm_path):
    folder = tmp_path_factory.mktemp("bench")
    return suite.run(torch.device("cpu"), True, minilm_path, str(folder), TINY), folder


def test_writes_json_markdown_and_plots(record_and_folder):
    record, folder = record_and_folder
    assert json.loads((folder / "results.json").read_text()) == json.loads(json.dumps(record))
    markdown = (folder / "results.md").read_text()
    for heading in ("## Correctness", "## Inference", "## Training step", "## Memory"):
        assert heading in markdown
    for png in ("speedup.png", "correctness.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_record_says_where_it_ran(record_and_folder):
    env = record_and_folder[0]["environment"]
    for key in ("device_name", "torch", "triton", "transformers", "fastbert", "git_commit", "date"):
        assert key in env
    assert env["git_commit"] is None or len(env["git_commit"]) == 40


def test_correctness_rows_pair_fastbert_with_transformers(record_and_folder):
    rows = record_and_folder[0]["correctness"]
    assert {r["case"] for r in rows} == {"real checkpoint", "BERT-base random"}
    for r in rows:  # fp32: both near float64, and every figure finite
        assert 0 <= r["hidden"] < 1e-4 and 0 <= r["pooled"] < 1e-4 and 0 <= r["grad"] < 1e-4


def test_every_speed_row_has_a_ratio_against_sdpa(record_and_folder):
    record = record_and_folder[0]
    for rows in (record["inference"], record["training"]):
        assert {r["impl"] for r in rows} >= {"transformers-sdpa", "fastbert"}
        for r in rows:
            assert r["ms"] > 0 and r["speedup"] > 0
            if r["impl"] == "transformers-sdpa":
                assert r["speedup"] == pytest.approx(1.0)


def test_fastbert_keeps_less_for_backward(record_and_folder):
    """At 1024 tokens; with very few tokens the concatenated QKV weight fastbert keeps per layer dominates."""
    memory = record_and_folder[0]["memory"]
    assert 0 < memory["fastbert_bytes"] < memory["transformers_bytes"]


def test_variable_lengths_are_padded_right_within_a_quarter_to_full():
    ids, mask = speed.make_batch("variable", 64, 40, 5000)
    lengths = mask.sum(1)
    assert lengths.min() >= 10 and lengths.max() == 40
    assert torch.equal(mask, (torch.arange(40)[None] < lengths[:, None]).long())
    assert (ids[mask == 0] == 0).all()


def test_quick_plan_is_smaller_and_leaves_compile_out_on_the_cpu():
    quick, full = suite.Plan.for_run(torch.device("cpu"), True), suite.Plan.for_run(torch.device("cpu"), False)
    assert len(quick.batches) * len(quick.lengths) < len(full.batches) * len(full.lengths)
    assert full.compile_models and not quick.compile_models


def test_cli_passes_options_to_the_suite(monkeypatch):
    from fastbert.benchmarks import suite as installed  # the package the console script imports

    seen = {}
    monkeypatch.setattr(installed, "run", lambda device, quick, model, out: seen.update(
        device=device.type, quick=quick, model=model, out=out) or _fake_record())
    assert cli.main(["bench", "--device", "cpu", "--quick", "--model", "m", "--out", "o"]) == 0
    assert seen == {"device": "cpu", "quick": True, "model": "m", "out": "o"}


def _fake_record():
    row = {"ms": 1.0, "speedup": 1.0, "impl": "transformers-sdpa", "batch": 1, "max_len": 8, "lengths": "full",
           "layers": 1}
    return {"environment": {"device_name": "x", "device": "cpu", "torch": "t", "transformers": "t", "date": "d"},
            "quick": True, "correctness": [], "inference": [row], "training": [row],
            "memory": {"transformers_bytes": 2.0, "fastbert_bytes": 1.0, "ratio": 0.5}}


def test_markdown_of_a_record():
    text = plots.markdown(_fake_record())
    assert "| 1 | 8 | full | 1.0 ms (1.00x) |" in text and "| 2 | 1 | 0.50 |" in text


def test_markdown_shows_peak_memory_and_kernel_tables_when_present():
    record = _fake_record()
    record["training"][0]["peak_bytes"] = 3 * 2**20
    record["kernels"] = {"bench_ffn": {"device": "GPU", "results": [{"tokens": 4096, "block_speedup": 1.25}]}}
    text = plots.markdown(record)
    assert "transformers-sdpa full 3 MiB" in text
    assert "## Kernel: bench_ffn (GPU)" in text and "| 4096 | 1.25 |" in text
