"""fastbert.finetune.tasks.token_classification: reading CoNLL/JSONL, aligning tags to word pieces, windows, scores."""

import argparse
import json
import types

import pytest
import torch
import torch.nn.functional as F
import transformers

from fastbert.finetune.cli import TASK_OPTIONS
from fastbert.finetune.data import DataError
from fastbert.finetune.tasks import token_classification as tc
from fastbert.finetune.tasks.token_classification import (IGNORED, Sentence, TokenClassification, continuation_tags,
                                                          read_sentences, word_windows)

CONLL_2003 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O
"""


def write(tmp_path, name, text) -> str:
    """``text`` written byte for byte (no newline translation), UTF-8."""
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return str(path)


def make_args(train, **overrides) -> argparse.Namespace:
    """The options as ``fastbert finetune --task token-classification`` fills them (its defaults)."""
    values = dict(train=str(train), max_length=32, **TASK_OPTIONS["token-classification"])
    values.update(overrides)
    return argparse.Namespace(**values)


def prepared(path, tokenizer, **overrides):
    """``(task, sentences, encoded)`` of a training file, as the loop prepares them."""
    task = TokenClassification(make_args(path, **overrides))
    sentences = task.read(path)
    task.config_kwargs(sentences, None, False)
    return task, sentences, task.encode(sentences, tokenizer, path, None)


def gold_predictions(task, data, filler="B-MISC") -> list[list[int]]:
    """Predictions equal to the gold labels where they count; specials and later pieces get ``filler``'s id,
    which scoring must ignore."""
    fill = task.labels.names.index(filler) if filler in task.labels.names else 0
    return [[fill if label == IGNORED else label for label in row] for row in data.labels]


def first_piece(data, sentence, word) -> tuple[int, int]:
    """``(feature, position)`` of the first piece of word ``word`` of sentence ``sentence``."""
    for j, (k, first, word_ids) in enumerate(data.info):
        if k == sentence and word - first in word_ids:
            return j, word_ids.index(word - first)
    raise AssertionError(f"word {word} of sentence {sentence} is in no feature")


# ----------------------------------------------------------------------------- reading CoNLL

def test_conll_2003_four_columns(tmp_path):
    """-DOCSTART- and blank lines end sentences; the word is the first column, the tag the last."""
    sentences = read_sentences(write(tmp_path, "train.conll", CONLL_2003))
    assert sentences == [
        Sentence(["EU", "rejects", "German", "call", "."], ["B-ORG", "O", "B-MISC", "O", "O"], [3, 4, 5, 6, 7]),
        Sentence(["Peter", "Blackburn"], ["B-PER", "I-PER"], [9, 10]),
        Sentence(["BRUSSELS", "1996-08-22"], ["B-LOC", "O"], [14, 15]),
    ]


def test_docstart_right_after_a_token_line_ends_the_sentence(tmp_path):
    text = "John B-PER\n-DOCSTART- O\nParis B-LOC\n\n\n\nis O"
    assert read_sentences(write(tmp_path, "a.txt", text)) == [
        Sentence(["John"], ["B-PER"], [1]), Sentence(["Paris"], ["B-LOC"], [3]), Sentence(["is"], ["O"], [7])]


def test_two_columns_and_bioes_and_iob1_tags(tmp_path):
    text = "New S-LOC\nYork E-LOC\n\nthe O\nUN I-ORG\nB-I-PER B-I-PER\n"
    assert read_sentences(write(tmp_path, "a.conll", text)) == [
        Sentence(["New", "York"], ["S-LOC", "E-LOC"], [1, 2]),
        Sentence(["the", "UN", "B-I-PER"], ["O", "I-ORG", "B-I-PER"], [4, 5, 6]),
    ]


def test_tab_separated_columns(tmp_path):
    text = "John\tNNP\tB-PER\nSmith \t NNP\tI-PER\n\t\nruns\tVBZ\tO\n"
    assert read_sentences(write(tmp_path, "a.tsv", text)) == [
        Sentence(["John", "Smith"], ["B-PER", "I-PER"], [1, 2]), Sentence(["runs"], ["O"], [4])]


def test_crlf_line_ends_and_trailing_whitespace(tmp_path):
    """``text.split("\\n")`` leaves a "\\r" at each line's end; ``str.split()`` takes it for whitespace, so tags
    keep no "\\r" and a "\\r"-only line is blank."""
    text = "John NNP B-PER  \r\nSmith NNP I-PER\t\r\n\r\n   \r\nruns VBZ O \r\n"
    sentences = read_sentences(write(tmp_path, "a.conll", text))
    assert sentences == [Sentence(["John", "Smith"], ["B-PER", "I-PER"], [1, 2]), Sentence(["runs"], ["O"], [5])]


def test_utf8_bom_is_dropped(tmp_path):
    path = write(tmp_path, "a.conll", b"\xef\xbb\xbfJohn B-PER\nx O\n")
    assert read_sentences(path) == [Sentence(["John", "x"], ["B-PER", "O"], [1, 2])]


# ----------------------------------------------------------------------------- reading JSONL

def test_jsonl_default_keys_and_lines(tmp_path):
    """Each word's line is its object's line; blank lines count and are skipped."""
    lines = [json.dumps({"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"], "id": 7}), "",
             json.dumps({"tokens": ["Peter"], "tags": ["B-PER"]}) + "\r", "  "]
    sentences = read_sentences(write(tmp_path, "a.jsonl", "\n".join(lines) + "\n"))
    assert sentences == [Sentence(["EU", "rejects"], ["B-ORG", "O"], [1, 1]), Sentence(["Peter"], ["B-PER"], [3])]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".JSONL"])
def test_jsonl_custom_keys(tmp_path, suffix):
    """``--tokens-column words --tags-column ner``; ``.json`` is read as JSON lines too."""
    text = json.dumps({"words": ["Paris"], "ner": ["S-LOC"], "tokens": 3}) + "\n"
    path = write(tmp_path, "a" + suffix, text)
    assert read_sentences(path, "words", "ner") == [Sentence(["Paris"], ["S-LOC"], [1])]
    task = TokenClassification(make_args(path, tokens_column="words", tags_column="ner"))
    assert task.read(path) == [Sentence(["Paris"], ["S-LOC"], [1])]
    assert task.fingerprint() == {"task": "token-classification", "label_all_tokens": False,
                                  "tokens_column": "words", "tags_column": "ner"}


# ----------------------------------------------------------------------------- bad input

def _record(**fields) -> str:
    return json.dumps(fields)


GOOD = _record(tokens=["a"], tags=["O"])

BAD_FILES = [
    pytest.param("a.conll", "John B-PER\nSmith\n", 2, "one column ('Smith')", id="one-column"),
    pytest.param("a.conll", "-DOCSTART-\n\nJohn\n", 3, "one column ('John')", id="one-column-first"),
    pytest.param("a.conll", "John NNP B-PER\n\nSmith I-PER\n", 3,
                 "2 columns, where the file's first token line (1) has 3", id="fewer-columns"),
    pytest.param("a.conll", "\nJohn B-PER\nSmith NNP x I-PER\n", 3,
                 "4 columns, where the file's first token line (2) has 2", id="more-columns"),
    pytest.param("a.conll", "John O\nSmith PER\n", 2, "tag 'PER' is not O or B-, I-, E-, S- and a type", id="tag-PER"),
    pytest.param("a.conll", "John X-PER\n", 1, "tag 'X-PER' is not O", id="tag-X-PER"),
    pytest.param("a.conll", "John b-per\n", 1, "tag 'b-per'", id="tag-lowercase"),
    pytest.param("a.conll", "John B-\n", 1, "tag 'B-'", id="tag-no-type"),
    pytest.param("a.conll", "", 1, "the file is empty", id="empty"),
    pytest.param("a.conll", "\n \r\n\t\n", 1, "the file is empty", id="whitespace-only"),
    pytest.param("a.conll", "-DOCSTART- -X- -X- O\n\n-DOCSTART- -X- -X- O\n", 1, "no sentences", id="only-docstart"),
    pytest.param("a.conll", b"John B-PER\n\xff O\n", 2, "not valid UTF-8: byte 0xff at column 1", id="not-utf8"),
    pytest.param("a.jsonl", "", 1, "the file is empty", id="jsonl-empty"),
    pytest.param("a.jsonl", GOOD + "\n" + _record(words=["a"], tags=["O"]), 2,
                 "no key 'tokens' (--tokens-column); the object has ['tags', 'words']", id="jsonl-no-tokens"),
    pytest.param("a.jsonl", _record(tokens=["a"], ner=["O"]), 1, "no key 'tags' (--tags-column)", id="jsonl-no-tags"),
    pytest.param("a.jsonl", GOOD + "\n\n" + _record(tokens=["a", "b"], tags=["O"]), 3, "2 'tokens' but 1 'tags'",
                 id="jsonl-length-mismatch"),
    pytest.param("a.jsonl", _record(tokens="John Smith", tags=["B-PER", "I-PER"]), 1,
                 "'tokens' must be a list of strings", id="jsonl-tokens-string"),
    pytest.param("a.jsonl", _record(tokens=["John", 3], tags=["B-PER", "O"]), 1,
                 "'tokens' must be a list of strings", id="jsonl-tokens-non-string"),
    pytest.param("a.jsonl", _record(tokens=["John"], tags=[1]), 1, "'tags' must be a list of strings",
                 id="jsonl-tags-ints"),
    pytest.param("a.jsonl", _record(tokens=["John", " "], tags=["B-PER", "O"]), 1, "word 1 of 'tokens' is empty",
                 id="jsonl-blank-word"),
    pytest.param("a.jsonl", _record(tokens=["", "x"], tags=["O", "O"]), 1, "word 0 of 'tokens' is empty",
                 id="jsonl-empty-word"),
    pytest.param("a.jsonl", _record(tokens=[], tags=[]), 1, "no words in 'tokens'", id="jsonl-no-words"),
    pytest.param("a.jsonl", GOOD + "\n" + '{"tokens": ["a"], "tags": ["O"]', 2, "not a JSON object:",
                 id="jsonl-invalid-json"),
    pytest.param("a.jsonl", '["a", "O"]', 1, "expected a JSON object, got list", id="jsonl-array"),
    pytest.param("a.jsonl", GOOD + "\n" + _record(tokens=["a"], tags=["PER"]), 2, "tag 'PER' is not O",
                 id="jsonl-bad-tag"),
]


@pytest.mark.parametrize("name, text, line, problem", BAD_FILES)
def test_bad_input_is_a_data_error_at_its_line(tmp_path, name, text, line, problem):
    path = write(tmp_path, name, text)
    with pytest.raises(DataError) as caught:
        read_sentences(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert problem in message
    assert (caught.value.path, caught.value.line) == (path, line)


def test_jsonl_missing_custom_key_names_the_option(tmp_path):
    path = write(tmp_path, "a.jsonl", _record(tokens=["a"], tags=["O"]))
    task = TokenClassification(make_args(path, tokens_column="words", tags_column="ner"))
    with pytest.raises(DataError, match=r":1: no key 'words' \(--tokens-column\)"):
        task.read(path)
    path = write(tmp_path, "b.jsonl", _record(words=["a"], tags=["O"]))
    with pytest.raises(DataError, match=r":1: no key 'ner' \(--tags-column\)"):
        task.read(path)


def test_eval_tag_not_in_training_names_the_eval_file_and_line(tmp_path, tokenizer):
    train = write(tmp_path, "train.conll", "John B-PER\nSmith I-PER\nruns O\n")
    dev = write(tmp_path, "dev.conll", "Mary B-PER\n\nin O\nParis B-LOC\n")
    task, _, _ = prepared(train, tokenizer)
    with pytest.raises(DataError) as caught:
        task.encode(task.read(dev), tokenizer, dev, None)
    message = str(caught.value)
    assert message.startswith(f"{dev}:4: tag 'B-LOC' does not occur in the training file {train}")
    assert "['B-PER', 'I-PER', 'O']" in message


def test_eval_tag_not_in_training_jsonl_line(tmp_path, tokenizer):
    train = write(tmp_path, "train.jsonl", _record(tokens=["John", "runs"], tags=["B-PER", "O"]))
    dev = write(tmp_path, "dev.jsonl", GOOD + "\n\n" + _record(tokens=["in", "Paris"], tags=["O", "B-LOC"]))
    task, _, _ = prepared(train, tokenizer)
    with pytest.raises(DataError, match=r"^.*dev\.jsonl:3: tag 'B-LOC'"):
        task.encode(task.read(dev), tokenizer, dev, None)


# ----------------------------------------------------------------------------- labels

def test_config_kwargs_sorted_tags(tmp_path):
    path = write(tmp_path, "a.conll", CONLL_2003)
    task = TokenClassification(make_args(path))
    kwargs = task.config_kwargs(task.read(path), None, False)
    names = ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER", "O"]
    assert kwargs == {"num_labels": 6, "id2label": dict(enumerate(names)),
                      "label2id": {name: i for i, name in enumerate(names)}}
    assert task.labels.names == tuple(names)


def test_config_kwargs_needs_two_tags(tmp_path):
    path = write(tmp_path, "a.conll", "a O\nb O\n")
    task = TokenClassification(make_args(path))
    with pytest.raises(ValueError, match=r"needs at least 2 tags, found \['O'\]"):
        task.config_kwargs(task.read(path), None, False)


def test_config_kwargs_resuming_checks_the_checkpoint_tags(tmp_path):
    path = write(tmp_path, "a.conll", "John B-PER\nruns O\n")
    task = TokenClassification(make_args(path))
    sentences = task.read(path)
    same = types.SimpleNamespace(num_labels=2, id2label={0: "B-PER", 1: "O"})
    assert task.config_kwargs(sentences, same, True)["num_labels"] == 2
    other = types.SimpleNamespace(num_labels=2, id2label={0: "B-LOC", 1: "O"})
    with pytest.raises(ValueError, match="--resume: the labels of"):
        task.config_kwargs(sentences, other, True)


def test_continuation_tags():
    names = ("B-LOC", "B-PER", "E-LOC", "I-LOC", "O", "S-PER")
    # B-LOC -> I-LOC; B-PER stays (no I-PER); the others stay themselves
    assert continuation_tags(names) == [3, 1, 2, 3, 4, 5]
    assert continuation_tags(()) == []


# ----------------------------------------------------------------------------- alignment

ALIGN = "Johanneshov B-LOC\nIsstadion I-LOC\nis O\nunbelievably O\nsays O\nLjungqvist B-PER\n"
ALIGN_TOKENS = ["[CLS]", "johannes", "##ho", "##v", "iss", "##tad", "##ion", "is", "un", "##bel", "##ie", "##va",
                "##bly", "says", "l", "##jun", "##g", "##qvist", "[SEP]"]
X = IGNORED
# ids of the sorted tags: B-LOC 0, B-PER 1, I-LOC 2, O 3


def test_first_piece_carries_the_tag(tmp_path, tokenizer):
    task, sentences, data = prepared(write(tmp_path, "a.conll", ALIGN), tokenizer)
    assert task.labels.names == ("B-LOC", "B-PER", "I-LOC", "O")
    assert tokenizer.convert_ids_to_tokens(data.input_ids[0]) == ALIGN_TOKENS
    assert data.labels == [[X, 0, X, X, 2, X, X, 3, 3, X, X, X, X, 3, 1, X, X, X, X]]
    assert data.units == [6]
    assert data.token_type_ids == [[0] * len(ALIGN_TOKENS)]
    assert data.input_ids[0] == tokenizer(sentences[0].words, is_split_into_words=True)["input_ids"]
    assert data.info == [(0, 0, [None, 0, 0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 3, 4, 5, 5, 5, 5, None])]
    assert data.examples == sentences
    assert task.notes() == []


def test_label_all_tokens(tmp_path, tokenizer):
    """Later pieces take the tag, B-LOC turned I-LOC; B-PER stays B-PER, as training has no I-PER."""
    task, _, data = prepared(write(tmp_path, "a.conll", ALIGN), tokenizer, label_all_tokens=True)
    assert data.labels == [[X, 0, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, X]]
    assert data.units == [17]
    assert task.fingerprint()["label_all_tokens"] is True


def test_units_count_the_labelled_tokens(tmp_path, tokenizer):
    for label_all in (False, True):
        _, _, data = prepared(write(tmp_path, "a.conll", LONG + "\n" + ALIGN), tokenizer,
                              label_all_tokens=label_all)
        assert len(data) == 3
        assert data.units == [sum(label != IGNORED for label in row) for row in data.labels]
        assert data.lengths == [len(row) for row in data.labels]


def test_a_word_without_word_pieces_is_neither_trained_on_nor_scored(tmp_path, tokenizer):
    """A zero-width space (U+200B) is a word to CoNLL's ``str.split()`` but gives BERT's tokenizer no piece:
    as transformers' run_ner, it has no label and is left out of the scores on both sides (so gold
    predictions still score 1.0), and a note names it with its file:line."""
    path = write(tmp_path, "a.conll", "John B-PER\n\u200b I-PER\nSmith I-PER\nruns O\n")
    task = TokenClassification(make_args(path))
    sentences = task.read(path)
    assert sentences[0].words[1] == "\u200b"
    task.config_kwargs(sentences, None, False)
    data = task.encode(sentences, tokenizer, path, None)
    assert data.units == [3]
    assert task.score(data, gold_predictions(task, data))["f1"] == 1.0
    named = f"{path}:2 ({chr(0x200B)!r})"
    assert any(named in note and "neither trained on nor scored" in note for note in task.notes())


# ----------------------------------------------------------------------------- windows

@pytest.mark.parametrize("counts, budget, expected", [
    ([1, 1, 1], 2, [(0, 2), (2, 3)]),
    ([2, 2, 2], 4, [(0, 2), (2, 3)]),
    ([3, 3], 6, [(0, 2)]),  # an exact fit stays one window
    ([1, 1, 1], 9, [(0, 3)]),
    ([5], 3, [(0, 1)]),  # a word longer than the window alone in it
    ([1, 5, 1], 3, [(0, 1), (1, 2), (2, 3)]),
    ([5, 5], 3, [(0, 1), (1, 2)]),
    ([2, 1, 1, 3, 1], 4, [(0, 3), (3, 5)]),
    ([0, 0, 1, 0], 1, [(0, 4)]),  # words of no pieces take no room
    ([1, 1, 1, 1], 1, [(0, 1), (1, 2), (2, 3), (3, 4)]),
])
def test_word_windows(counts, budget, expected):
    assert word_windows(counts, budget) == expected


LONG = ("EU B-ORG\nrejects O\nGerman B-MISC\ncall O\nto O\nboycott O\nBritish B-MISC\nlamb O\n. O\n"
        "Johanneshov B-LOC\nunbelievably O\nBRUSSELS B-LOC\n1996-08-22 O\n\nPeter B-PER\nBlackburn I-PER\n")
# pieces per word: 1 x 9, Johanneshov 3, unbelievably 5, BRUSSELS 1, 1996-08-22 5; --max-length 8 leaves 6
LONG_WINDOWS = [(0, 0), (0, 6), (0, 10), (0, 12), (1, 0)]  # (sentence, first word) of each feature


def test_long_sentence_split_at_word_boundaries(tmp_path, tokenizer):
    task, sentences, data = prepared(write(tmp_path, "a.conll", LONG), tokenizer, max_length=8)
    assert [(k, first) for k, first, _ in data.info] == LONG_WINDOWS
    assert max(data.lengths) <= 8
    assert data.lengths == [8, 8, 8, 7, 4]
    labelled = []  # (sentence, word) of every labelled token, across the windows
    for (k, first, word_ids), row in zip(data.info, data.labels):
        assert word_ids[0] is None and word_ids[-1] is None
        for position, (w, label) in enumerate(zip(word_ids, row)):
            if label != IGNORED:
                assert w is not None and (position == 1 or word_ids[position - 1] != w)
                assert task.labels.names[label] == sentences[k].tags[first + w]
                labelled.append((k, first + w))
    assert labelled == [(k, w) for k, s in enumerate(sentences) for w in range(len(s.words))]
    assert data.units == [6, 4, 2, 1, 2]
    assert task.notes() == ["1 of 2 training sentences are longer than --max-length 8 tokens: split at word "
                            "boundaries into windows (5 windows in all)"]


def test_windows_text_is_the_sentence_pieces(tmp_path, tokenizer):
    """The windows' pieces, their specials dropped and put end to end, are the whole sentence's."""
    _, sentences, data = prepared(write(tmp_path, "a.conll", LONG), tokenizer, max_length=8)
    joined = [i for ids, (k, _, _) in zip(data.input_ids, data.info) if k == 0 for i in ids[1:-1]]
    assert joined == tokenizer(sentences[0].words, is_split_into_words=True, add_special_tokens=False)["input_ids"]


def test_word_longer_than_the_window_is_cut_and_keeps_its_first_piece(tmp_path, tokenizer):
    word = "supercalifragilisticexpialidocious"  # 11 pieces; --max-length 5 leaves 3
    path = write(tmp_path, "a.conll", f"Hi O\n{word} B-MISC\nthere O\n")
    task, _, data = prepared(path, tokenizer, max_length=5)
    assert [(k, first) for k, first, _ in data.info] == [(0, 0), (0, 1), (0, 2)]
    assert data.lengths == [3, 5, 3]
    assert tokenizer.convert_ids_to_tokens(data.input_ids[1]) == ["[CLS]", "super", "##cal", "##if", "[SEP]"]
    b_misc = task.labels.names.index("B-MISC")
    assert data.labels[1] == [X, b_misc, X, X, X]
    assert data.units == [1, 1, 1]
    assert task.notes() == [
        "1 of 1 training sentences are longer than --max-length 5 tokens: split at word boundaries into windows "
        "(3 windows in all)",
        "1 training words alone have more word pieces than a window holds: their later pieces are cut (their "
        "first, which carries the tag, is kept)"]
    scores = task.score(data, gold_predictions(task, data))
    assert (scores["f1"], scores["accuracy"]) == (1.0, 1.0)


def test_notes_come_from_the_training_file_only(tmp_path, tokenizer):
    train = write(tmp_path, "train.conll", "John B-PER\nruns O\n")
    dev = write(tmp_path, "dev.conll", LONG.replace("B-ORG", "O").replace("B-MISC", "O").replace("B-LOC", "O")
                .replace("I-PER", "O"))
    task, _, _ = prepared(train, tokenizer, max_length=8)
    assert len(task.encode(task.read(dev), tokenizer, dev, None)) == 5
    assert task.notes() == []


@pytest.mark.parametrize("max_length", [1, 2])
def test_max_length_leaves_no_room_for_words(tmp_path, tokenizer, max_length):
    path = write(tmp_path, "a.conll", "John B-PER\nruns O\n")
    task = TokenClassification(make_args(path, max_length=max_length))
    task.config_kwargs(task.read(path), None, False)
    with pytest.raises(ValueError, match=f"--max-length {max_length} leaves no room for words after the "
                                         "model's 2 special tokens"):
        task.encode(task.read(path), tokenizer, path, None)


def test_max_length_of_one_word_piece(tmp_path, tokenizer):
    _, _, data = prepared(write(tmp_path, "a.conll", "John B-PER\nruns O\n"), tokenizer, max_length=3)
    assert data.lengths == [3, 3]
    assert data.labels == [[X, 0, X], [X, 1, X]]


# ----------------------------------------------------------------------------- scores

def test_score_of_gold_predictions_is_one(tmp_path, tokenizer):
    for max_length in (8, 32):
        task, _, data = prepared(write(tmp_path, "a.conll", LONG), tokenizer, max_length=max_length)
        scores = task.score(data, gold_predictions(task, data))
        assert (scores["f1"], scores["precision"], scores["recall"], scores["accuracy"]) == (1.0, 1.0, 1.0, 1.0)
        assert set(scores["per_type"]) == {"LOC", "MISC", "ORG", "PER"}
        assert scores["per_type"]["MISC"]["support"] == 2


def test_score_ignores_specials_and_later_pieces(tmp_path, tokenizer):
    """Whatever a special token or a word's later piece is predicted, only first pieces count."""
    task, _, data = prepared(write(tmp_path, "a.conll", ALIGN), tokenizer, label_all_tokens=True)
    names = task.labels.names
    predictions = [[label if label != IGNORED else 0 for label in row] for row in data.labels]
    for j, (_, _, word_ids) in enumerate(data.info):
        for position, w in enumerate(word_ids):
            if w is not None and position > 0 and word_ids[position - 1] == w:
                predictions[j][position] = names.index("B-PER")
    assert task.score(data, predictions)["f1"] == 1.0


@pytest.mark.parametrize("max_length", [5, 32])
def test_score_of_one_changed_entity(tmp_path, tokenizer, max_length):
    """CONLL_2003 has ORG, MISC, PER and LOC entities, one each, in 9 words."""
    task, _, data = prepared(write(tmp_path, "a.conll", CONLL_2003), tokenizer, max_length=max_length)
    names = task.labels.names

    predictions = gold_predictions(task, data)
    j, position = first_piece(data, 0, 2)  # German: B-MISC -> O, one entity missed
    predictions[j][position] = names.index("O")
    scores = task.score(data, predictions)
    assert scores["precision"] == 1.0 and scores["recall"] == 3 / 4
    assert scores["f1"] == pytest.approx(2 * 1.0 * 0.75 / 1.75)
    assert scores["accuracy"] == pytest.approx(8 / 9)
    assert scores["per_type"]["MISC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}

    predictions[j][position] = names.index("B-ORG")  # German: B-MISC -> B-ORG, a wrong entity instead
    scores = task.score(data, predictions)
    assert scores["precision"] == 3 / 4 and scores["recall"] == 3 / 4 and scores["f1"] == pytest.approx(3 / 4)
    assert scores["per_type"]["ORG"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}

    predictions = gold_predictions(task, data)
    j, position = first_piece(data, 1, 1)  # Blackburn: I-PER -> B-PER, Peter Blackburn split in two
    predictions[j][position] = names.index("B-PER")
    scores = task.score(data, predictions)
    assert scores["precision"] == 3 / 5 and scores["recall"] == 3 / 4
    assert scores["per_type"]["PER"]["precision"] == 0.0


def test_score_puts_windows_back_in_their_sentence_positions(tmp_path, tokenizer, monkeypatch):
    """The tags entity_scores gets are each word's first-piece prediction at the word's place in its sentence."""
    task, sentences, data = prepared(write(tmp_path, "a.conll", LONG), tokenizer, max_length=8)
    names = task.labels.names
    seen = {}

    def spy(true, pred):
        seen["true"], seen["pred"] = true, pred
        return {"f1": 0.0, "precision": 0.0, "recall": 0.0, "accuracy": 0.0, "per_type": {}}

    monkeypatch.setattr(tc, "entity_scores", spy)
    predictions = gold_predictions(task, data)
    changes = {(0, 7): "B-PER", (0, 10): "B-LOC", (0, 12): "I-PER", (1, 0): "O"}
    for (k, w), tag in changes.items():
        j, position = first_piece(data, k, w)
        predictions[j][position] = names.index(tag)
    task.score(data, predictions)
    expected = [list(s.tags) for s in sentences]
    for (k, w), tag in changes.items():
        expected[k][w] = tag
    assert seen == {"true": [s.tags for s in sentences], "pred": expected}


def test_score_takes_predictions_cut_to_the_attention_length(tmp_path, tokenizer):
    """predict() gives each feature its unpadded length; score reads no further."""
    task, _, data = prepared(write(tmp_path, "a.conll", CONLL_2003), tokenizer)
    longest = max(data.lengths)
    logits = torch.full((len(data), longest, len(task.labels.names)), -1.0)
    mask = torch.zeros(len(data), longest, dtype=torch.long)
    for j, row in enumerate(data.labels):
        mask[j, :len(row)] = 1
        for position, label in enumerate(row):
            logits[j, position, label if label != IGNORED else 0] = 1.0
    predictions = task.predict(types.SimpleNamespace(logits=logits), {"attention_mask": mask})
    assert [len(p) for p in predictions] == data.lengths
    assert task.score(data, predictions)["f1"] == 1.0


# ----------------------------------------------------------------------------- in the loop

def test_collate_pads_with_ignored(tmp_path):
    task = TokenClassification(make_args(tmp_path / "a.conll"))
    out = task.collate([[X, 1, X], [X, 2, 0, 1, X], [X, X]], 6)
    assert out.dtype == torch.long
    assert out.tolist() == [[X, 1, X, X, X, X], [X, 2, 0, 1, X, X], [X, X, X, X, X, X]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_sum_is_cross_entropy_summed_over_labelled_tokens(tmp_path, dtype):
    task = TokenClassification(make_args(tmp_path / "a.conll"))
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 5, generator=gen).to(dtype)
    labels = task.collate([[X, 1, X, 4, 0, X], [X, 2, X], [X, 3, 3, 1, 0, 2, X]], 7)
    mask = (labels != X).long()
    loss = task.loss_sum(types.SimpleNamespace(logits=logits), labels, mask)
    assert loss.dtype == torch.float32
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    by_hand = -sum(log_probs[b, t, labels[b, t]] for b in range(3) for t in range(7) if labels[b, t] != X)
    torch.testing.assert_close(loss, by_hand)
    reference = F.cross_entropy(logits.float().reshape(-1, 5), labels.reshape(-1), ignore_index=-100, reduction="sum")
    torch.testing.assert_close(loss, reference)


# ----------------------------------------------------------------------------- the tokenizer

def test_tokenizer_of_a_bert_checkpoint(minilm_path, tokenizer):
    loaded = TokenClassification(None).tokenizer(minilm_path)
    assert loaded.is_fast
    words = ["Johanneshov", "unbelievably", "EU"]
    assert loaded(words, is_split_into_words=True).tokens() == tokenizer(words, is_split_into_words=True).tokens()


def test_tokenizer_byte_level_bpe_gets_add_prefix_space(tmp_path):
    """A RoBERTa-style tokenizer saved without add_prefix_space is loaded with it, so each word of a
    pre-split sentence is encoded as after a space."""
    vocab = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {token: i for i, token in enumerate(vocab + ["\u0120", "\u0120h", "\u0120he"])}
    saved = transformers.RobertaTokenizerFast(vocab=vocab, merges=[("\u0120", "h"), ("\u0120h", "e")])
    assert saved.add_prefix_space is False
    saved.save_pretrained(tmp_path / "roberta")
    loaded = TokenClassification(None).tokenizer(str(tmp_path / "roberta"))
    assert loaded.is_fast and loaded.add_prefix_space is True
    assert loaded(["he", "hello"], is_split_into_words=True).tokens() == [
        "<s>", "\u0120he", "\u0120he", "l", "l", "o", "</s>"]


def test_tokenizer_slow_is_refused(tmp_path, minilm_path):
    slow_class = getattr(transformers, "BertTokenizerLegacy", None)  # transformers 5: BertTokenizer is fast
    if slow_class is None:
        slow_class = transformers.BertTokenizer
    slow = slow_class(vocab_file=f"{minilm_path}/vocab.txt")
    if slow.is_fast:
        pytest.skip("no slow BERT tokenizer class in this transformers version")
    slow.save_pretrained(tmp_path / "slow")
    with pytest.raises(ValueError, match=f"needs a fast tokenizer .* and {type(slow).__name__} is not one"):
        TokenClassification(None).tokenizer(str(tmp_path / "slow"))
