"""examples/make_ner.py: --help only prints; the data it writes are the committed sample, well-formed CoNLL-2003."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "make_ner.py"
SAMPLE = SCRIPT.parent / "ner"
TAGS = {"O"} | {f"{bio}-{kind}" for bio in "BI" for kind in ("PER", "LOC", "ORG", "MISC")}
DOCSTART = "-DOCSTART- -X- -X- O"


def sentences(path: Path) -> list[list[list[str]]]:
    """The file's sentences (lists of 4-column token lines); checks the blank lines and the DOCSTART lines."""
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == DOCSTART and lines[-1] == "" and lines[-2] == ""
    out, current = [], []
    for i, line in enumerate(lines):
        if line == DOCSTART:
            assert not current and lines[i + 1] == "", f"line {i + 1}: DOCSTART not between sentences"
        elif line:
            current.append(line.split(" "))
        elif current:
            out.append(current)
            current = []
    assert not current
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
    for name in ("train.conll", "dev.conll"):
        assert (tmp_path / name).read_bytes() == (SAMPLE / name).read_bytes()


@pytest.mark.parametrize("name, size", [("train.conll", 600), ("dev.conll", 150)])
def test_the_sample_is_well_formed(name, size):
    path = SAMPLE / name
    assert path.stat().st_size < 1_000_000
    found = sentences(path)
    assert len(found) == size
    kinds = set()
    for sentence in found:
        assert 3 <= len(sentence) <= 90
        previous = "O"
        for columns in sentence:
            assert len(columns) == 4 and all(columns), columns
            tag = columns[3]
            assert tag in TAGS, columns
            if tag.startswith("I-"):
                assert previous[2:] == tag[2:], f"{tag} after {previous} in {' '.join(c[0] for c in sentence)}"
            if tag.startswith("B-"):
                kinds.add(tag[2:])
            previous = tag
    assert kinds == {"PER", "LOC", "ORG", "MISC"}
    docs = path.read_text(encoding="utf-8").count(DOCSTART)
    assert size / 30 <= docs <= size / 12  # a document every ~20 sentences


def test_long_sentences_and_multiword_entities():
    train = sentences(SAMPLE / "train.conll")
    assert sum(len(s) > 60 for s in train) >= 3
    assert any(c[3].startswith("I-") for s in train for c in s)
    # a word of more than one type, told apart by its context
    types = {}
    for sentence in train:
        for word, _, _, tag in sentence:
            types.setdefault(word, set()).add(tag[2:] or "O")
    assert {"PER", "ORG"} <= types["Ford"] and {"PER", "LOC"} <= types["Jordan"]
