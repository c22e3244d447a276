"""``fastbert embed`` end to end (CPU): sentence-transformers' ``encode`` numbers for mean and CLS pooling with
and without normalization, pooled plain encoders, classifiers equal to transformers' pipeline, 2 processes
equal to 1, resume after an interruption, and bad input refused in one line before any work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from fastbert.cli import main as fastbert_main
from fastbert.embed import run as embed_run

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sentiment" / "dev.csv"


def embed(capsys, *args):
    code = fastbert_main(["embed", *map(str, args), "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def texts():
    rows = SAMPLE.read_text().splitlines()[1:]
    return [row.rsplit(",", 1)[0].strip('"') for row in rows][:90]


@pytest.fixture
def text_file(tmp_path, texts):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(texts) + "\n")
    return path


def st_folder(tmp_path, tiny_checkpoint, pooling: str, normalize: bool) -> Path:
    """A sentence-transformers folder on the tiny checkpoint with ``pooling`` (and Normalize)."""
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(tiny_checkpoint, max_seq_length=48)
    modules = [transformer, models.Pooling(transformer.get_embedding_dimension() if hasattr(transformer, "get_embedding_dimension") else transformer.get_word_embedding_dimension(), pooling_mode=pooling)]
    if normalize:
        modules.append(models.Normalize())
    folder = tmp_path / f"st-{pooling}-{normalize}"
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


def st_encode(folder, texts) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(texts, batch_size=16, convert_to_numpy=True)


def test_the_real_checkpoint_gives_sentence_transformers_embeddings(tmp_path, capsys, minilm_path, text_file,
                                                                    texts):
    """all-MiniLM-L6-v2's own modules: mean pooling, then Normalize."""
    out = tmp_path / "e.npy"
    code, _, err = embed(capsys, "--model", minilm_path, "--input", text_file, "--output", out, "--chunk-texts", 32,
                         "--max-tokens-per-batch", 256)
    assert code == 0, err
    ours = np.load(out)
    assert ours.dtype == np.float32 and ours.shape == (len(texts), 384)
    np.testing.assert_allclose(ours, st_encode(minilm_path, texts), atol=1e-5, rtol=0)
    assert not out.with_name(out.name + ".parts").exists()


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
@pytest.mark.parametrize("normalize", [False, True])
def test_sentence_transformers_folders_with_each_pooling(pooling, normalize, tmp_path, capsys, tiny_checkpoint,
                                                         text_file, texts):
    folder = st_folder(tmp_path, tiny_checkpoint, pooling, normalize)
    out = tmp_path / "e.npy"
    assert embed(capsys, "--model", folder, "--input", text_file, "--output", out, "--chunk-texts", 40)[0] == 0
    np.testing.assert_allclose(np.load(out), st_encode(folder, texts), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_a_plain_encoder_with_pooling_and_normalize_equals_sentence_transformers(pooling, tmp_path, capsys,
                                                                                 tiny_checkpoint, text_file, texts):
    out = tmp_path / "e.jsonl"
    code, _, err = embed(capsys, "--model", tiny_checkpoint, "--input", text_file, "--output", out, "--pooling",
                         pooling, "--normalize", "--max-length", 48)
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(len(texts)))
    expected = st_encode(st_folder(tmp_path, tiny_checkpoint, pooling, True), texts)
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), expected, atol=1e-5, rtol=0)


def test_a_classifier_gives_the_text_classification_pipelines_labels_and_scores(tmp_path, capsys, tokenizer):
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                     num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"},
                                     label2id={"neg": 0, "neu": 1, "pos": 2})
    torch.manual_seed(0)
    folder = tmp_path / "clf"
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rows = [{"review": f"the {w} was {v}", "key": f"r{i}"} for i, (w, v) in
            enumerate((w, v) for w in ("film", "phone", "meal") for v in ("great", "awful", "fine", "long"))]
    source = tmp_path / "rows.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "scores.jsonl"
    capsys.readouterr()
    code, _, err = embed(capsys, "--model", folder, "--task", "classify", "--input", source, "--text-column",
                         "review", "--id-column", "key", "--output", out)
    assert code == 0, err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    pipe = transformers.pipeline("text-classification", model=str(folder), top_k=None)
    for row, result in zip(rows, got):
        expected = {d["label"]: d["score"] for d in pipe([row["review"]])[0]}
        assert result["id"] == row["key"]
        assert result["label"] == max(expected, key=expected.get)
        assert result["scores"] == pytest.approx(expected, abs=1e-5)
        assert result["score"] == pytest.approx(expected[result["label"]], abs=1e-5)


def test_two_processes_write_what_one_writes(tmp_path, tiny_checkpoint, text_file):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    common = ["--model", tiny_checkpoint, "--input", str(text_file), "--chunk-texts", "16", "--pooling", "mean",
              "--max-length", "48", "--no-progress"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for launcher, name in ((torchrun, "two.npy"), ([sys.executable], "one.npy")):
        done = subprocess.run([*launcher, "-m", "fastbert.embed", *common, "--output", str(tmp_path / name)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy"))


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_finished_chunks(tmp_path, capsys, tiny_checkpoint, text_file,
                                                             monkeypatch):
    args = ["--model", tiny_checkpoint, "--input", text_file, "--chunk-texts", 20, "--pooling", "cls",
            "--max-length", 48, "--dtype", "float16"]
    assert embed(capsys, *args, "--output", tmp_path / "whole.npy")[0] == 0
    real_save, saved = np.save, []

    def save_twice_then_stop(path, array, *a, **kw):
        if len(saved) == 2:
            raise Interrupted
        saved.append(path)
        return real_save(path, array, *a, **kw)

    monkeypatch.setattr(embed_run.np, "save", save_twice_then_stop)
    with pytest.raises(Interrupted):
        embed(capsys, *args, "--output", tmp_path / "cut.npy")
    monkeypatch.setattr(embed_run.np, "save", real_save)
    parts = tmp_path / "cut.npy.parts"
    assert len(list(parts.glob("chunk-*.npy"))) == 2 and not (tmp_path / "cut.npy").exists()
    code, _, err = embed(capsys, *args, "--output", tmp_path / "cut.npy")
    assert code == 0 and "resuming: 2 of 5 chunks of this process are done" in err, err
    whole, cut = np.load(tmp_path / "whole.npy"), np.load(tmp_path / "cut.npy")
    assert whole.dtype == cut.dtype == np.float16 and np.array_equal(whole, cut)
    code, _, err = embed(capsys, *args[:-2], "--output", tmp_path / "again.npy", "--chunk-texts", 20)
    assert code == 0


@pytest.mark.parametrize("case", ["blank line", "undecodable", "missing column", "empty text in csv",
                                  "output exists", "other settings", "parquet", "bad suffix"])
def test_bad_input_is_one_line_before_any_work(case, tmp_path, capsys, tiny_checkpoint):
    source, extra = tmp_path / "in.txt", []
    source.write_text("first text\nsecond text\n")
    out = tmp_path / "out.npy"
    expected = None
    if case == "blank line":
        source.write_text("first text\n\nthird text\n")
        expected = f"{source}:2: an empty text"
    elif case == "undecodable":
        source.write_bytes(b"ok\ncaf\xe9\n")
        expected = f"{source}:2: not valid UTF-8"
    elif case == "missing column":
        source = tmp_path / "in.csv"
        source.write_text("body,label\nhello,a\n")
        expected = f"{source}:1: no column 'text'"
    elif case == "empty text in csv":
        source = tmp_path / "in.csv"
        source.write_text("text,label\nhello,a\n ,b\n")
        expected = f"{source}:3: an empty text in 'text'"
    elif case == "output exists":
        out.write_bytes(b"")
        expected = f"--output {out}: exists; --overwrite replaces it"
    elif case == "other settings":
        parts = tmp_path / "out.npy.parts"
        parts.mkdir()
        (parts / "meta.json").write_text(json.dumps({"something": "else"}))
        expected = "holds an unfinished run with other inputs or options"
    elif case == "parquet":
        out = tmp_path / "out.parquet"
        expected = "pyarrow is not installed (writing Parquet)"
    elif case == "bad suffix":
        out = tmp_path / "out.csv"
        expected = "write .npy, .jsonl or .parquet, not '.csv'"
    code, _, err = embed(capsys, "--model", tiny_checkpoint, "--input", source, "--output", out, "--pooling", "mean",
                         *extra)
    if case == "parquet" and code == 0:  # pyarrow installed here: then it writes Parquet
        import pyarrow.parquet as pq

        assert pq.read_table(out).num_rows == 2
        return
    assert code == 2 and err.startswith("fastbert embed: error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1
