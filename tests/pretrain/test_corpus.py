"""The pretraining corpus cache (fastbert/pretrain/corpus.py): documents as the tokenizer gives them, read
back memory-mapped, built once per corpus and tokenizer, bad input with file:line."""

import json

import numpy as np
import pytest

from fastbert.finetune.data import DataError
from fastbert.pretrain import corpus as corpus_module
from fastbert.pretrain.corpus import Corpus, build_corpus, read_documents

TEXT = "The cat sat on the mat.\nIt was unbelievably happy.\n\n\nDogs bark.\n\nA third\ndocument here.\n"


def test_blank_lines_separate_documents_and_lines_join(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(TEXT)
    docs = list(read_documents(path))
    assert [d.text for d in docs] == ["The cat sat on the mat. It was unbelievably happy.", "Dogs bark.",
                                      "A third document here."]
    assert [d.line for d in docs] == [1, 5, 7]
    assert [d.text for d in read_documents(path, line_per_document=True)][:2] == ["The cat sat on the mat.",
                                                                                  "It was unbelievably happy."]


def test_the_cache_holds_each_documents_pieces_and_word_starts(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(corpus_module, "CHUNK_DOCUMENTS", 2)  # documents across chunk boundaries
    path = tmp_path / "c.txt"
    path.write_text(TEXT)
    built = build_corpus([path, path], tokenizer, tmp_path / "cache")
    assert len(built) == 6 and built.tokens.dtype == np.uint16  # MiniLM's 30,522 pieces fit 16 bits
    for i, doc in enumerate(list(read_documents(path)) * 2):
        encoded = tokenizer(doc.text, add_special_tokens=False)
        assert built.document(i).tolist() == encoded["input_ids"]
        words = encoded.word_ids()
        starts = built.word_starts[built.documents[i]:built.documents[i + 1]].tolist()
        assert starts == [1] + [int(words[t] != words[t - 1]) for t in range(1, len(words))]
    assert 0 in built.word_starts.tolist()  # "unbelievably" is several pieces of one word
    again = build_corpus([path, path], tokenizer, tmp_path / "cache")
    assert again.folder == built.folder and isinstance(again.tokens, np.memmap)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    path.write_text(TEXT + "\nOne more.\n")
    changed = build_corpus([path, path], tokenizer, tmp_path / "cache")
    assert changed.folder != built.folder and len(changed) == 8
    assert Corpus.open(changed.folder).num_tokens == changed.num_tokens


def test_jsonl_reads_its_text_field(tmp_path, tokenizer):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate(["one text", "two"])) + "\n")
    assert [d.text for d in read_documents(path, "body")] == ["one text", "two"]
    assert len(build_corpus([path], tokenizer, tmp_path / "cache", text_field="body")) == 2


@pytest.mark.parametrize("name, data, field, expected", [
    ("bad.txt", b"fine\ncaf\xe9 au lait\n", None, "bad.txt:2: not valid UTF-8: byte 0xe9 at column 4"),
    ("bad.jsonl", b'{"text": "a"}\n{"body": "b"}\n', None, "bad.jsonl:2: no key 'text' (--text-field)"),
    ("bad.jsonl", b'{"text": "a"}\n{"text": 3}\n', None, "bad.jsonl:2: 'text' must be a string, got int"),
    ("bad.jsonl", b'{"text": "a"}\nnot json\n', None, "bad.jsonl:2: not a JSON object"),
    ("empty.txt", b"\n\n  \n", None, "empty.txt:1: the corpus is empty"),
])
def test_bad_input_names_the_file_and_line(name, data, field, expected, tmp_path, tokenizer):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        build_corpus([path], tokenizer, tmp_path / "cache", text_field=field)
    assert str(err.value) == str(tmp_path / expected) or str(err.value).startswith(str(tmp_path / expected))
    assert not any(p.name.endswith("partial") for p in (tmp_path / "cache").glob("*"))
