"""examples/make_corpus.py: --help only prints; the data it writes are the committed sample."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "make_corpus.py"
SAMPLE = SCRIPT.parent / "corpus"


def test_help_prints_and_writes_nothing():
    before = {p.name: p.stat().st_mtime_ns for p in SAMPLE.iterdir()}
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--out" in done.stdout and "wrote" not in done.stdout
    assert {p.name: p.stat().st_mtime_ns for p in SAMPLE.iterdir()} == before


def test_writes_the_committed_sample(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    for name in ("train.txt", "held-out.txt"):
        assert (tmp_path / name).read_bytes() == (SAMPLE / name).read_bytes()
    documents = (SAMPLE / "train.txt").read_text().strip().split("\n\n")
    assert len(documents) == 400 and all(d.strip() for d in documents)
