"""examples/make_squad.py: --help only prints; the data it writes are the committed sample, well-formed SQuAD v2.0."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "make_squad.py"
SAMPLE = SCRIPT.parent / "squad"


def questions(path: Path) -> list[tuple[str, dict]]:
    """(context, qa) for every question of the file; checks the SQuAD v2.0 layout."""
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["version"] == "v2.0"
    out = []
    for article in data["data"]:
        assert isinstance(article["title"], str) and article["paragraphs"]
        for paragraph in article["paragraphs"]:
            assert 3 <= len(paragraph["qas"]) <= 5
            out += [(paragraph["context"], qa) for qa in paragraph["qas"]]
    return out


def test_help_prints_and_writes_nothing():
    before = {p.name: p.stat().st_mtime_ns for p in SAMPLE.iterdir()}
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--out" in done.stdout and "wrote" not in done.stdout
    assert {p.name: p.stat().st_mtime_ns for p in SAMPLE.iterdir()} == before


def test_writes_the_committed_sample(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    for name in ("train.json", "dev.json"):
        assert (tmp_path / name).read_bytes() == (SAMPLE / name).read_bytes()


@pytest.mark.parametrize("name, size", [("train.json", 400), ("dev.json", 100)])
def test_the_sample_is_well_formed(name, size):
    path = SAMPLE / name
    assert path.stat().st_size < 1_000_000
    found = questions(path)
    assert len(found) == size
    ids = [qa["id"] for _, qa in found]
    assert all(isinstance(i, str) for i in ids) and len(set(ids)) == len(ids)
    for context, qa in found:
        assert qa["question"].endswith("?")
        if qa["is_impossible"]:
            assert qa["answers"] == []
            continue
        assert len(qa["answers"]) == 1
        for answer in qa["answers"]:
            start, text = answer["answer_start"], answer["text"]
            assert text and context[start:start + len(text)] == text, (qa["id"], text)
    share = sum(qa["is_impossible"] is True for _, qa in found) / len(found)
    assert 0.10 <= share <= 0.20
    words = [len(context.split()) for context in {context for context, _ in found}]
    assert min(words) >= 40 and max(words) <= 410


def test_long_contexts_and_unique_ids_across_splits():
    train, dev = questions(SAMPLE / "train.json"), questions(SAMPLE / "dev.json")
    assert sum(len(context.split()) > 300 for context in {context for context, _ in train}) >= 5
    assert not {qa["id"] for _, qa in train} & {qa["id"] for _, qa in dev}
