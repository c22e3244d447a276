"""fastbert.finetune.data: reading CSV/TSV/JSONL examples, the error messages (``path:line:``), the
label map and tokenizing."""

import contextlib
import json
import random

import pytest
import transformers

from fastbert.finetune.data import Columns, DataError, Example, LabelMap, encode, read_examples

# (text, pair, label): commas, quotes, tabs, newlines and non-ASCII inside fields.
ROWS = [
    ("A plain sentence.", "Its partner.", "pos"),
    ('Commas, "quotes" and\na newline', "second, with a comma", "neg"),
    ("Ünïcödé ✓ text", "tab\tinside", "pos"),
    ("Two\nnewlines\nhere", "short", "neutral"),
    ("The last one", "ends\nhere", "neg"),
]


def _field(value: str, delimiter: str) -> str:
    if any(c in value for c in (delimiter, '"', "\n")):
        return '"' + value.replace('"', '""') + '"'
    return value


def write_examples(tmp_path, fmt, rows, pair=True, blank_every=2, name="data"):
    """Writes ``rows`` by hand; returns the path and the line each row starts on."""
    path = tmp_path / f"{name}.{fmt}"
    keys = ["label", "text"] + (["pair"] if pair else [])  # label first: column order is free
    lines, starts = [], []
    if fmt != "jsonl":
        lines.append(("," if fmt == "csv" else "\t").join(keys))
    for n, (text, second, label) in enumerate(rows):
        if blank_every and n and n % blank_every == 0:
            lines.append("")
        starts.append(sum(line.count("\n") + 1 for line in lines) + 1)
        values = dict(text=text, pair=second, label=label)
        if fmt == "jsonl":
            lines.append(json.dumps({k: values[k] for k in keys} | {"extra": [1, 2]}))
        else:
            delimiter = "," if fmt == "csv" else "\t"
            lines.append(delimiter.join(_field(values[k], delimiter) for k in keys))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, starts


@contextlib.contextmanager
def raises_at(path, line, *words):
    """Expects a DataError (a ValueError) at ``path:line:`` whose message contains ``words``."""
    with pytest.raises(DataError) as info:
        yield info
    err = info.value
    assert isinstance(err, ValueError)
    assert str(err).startswith(f"{path}:{line}: "), str(err)
    assert (err.path, err.line) == (str(path), line)
    for word in words:
        assert word in str(err), (word, str(err))


# ---------------------------------------------------------------------------------------------- reading

@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
@pytest.mark.parametrize("pair", [True, False])
def test_reads_every_format(tmp_path, fmt, pair):
    path, starts = write_examples(tmp_path, fmt, ROWS, pair=pair)
    columns = Columns(pair="pair" if pair else None)
    examples = read_examples(path, columns)
    assert [(e.text, e.pair, e.label, e.line) for e in examples] == [
        (text, second if pair else None, label, line) for (text, second, label), line in zip(ROWS, starts)]


def test_formats_agree(tmp_path):
    columns = Columns(pair="pair")
    read = [read_examples(write_examples(tmp_path, fmt, ROWS, blank_every=0)[0], columns)
            for fmt in ("csv", "tsv", "jsonl")]
    content = [[(e.text, e.pair, e.label) for e in examples] for examples in read]
    assert content[0] == content[1] == content[2] == ROWS


def test_line_numbers_after_multiline_fields(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"one\ntwo\nthree",a\n\n  \nplain,b\n"x,\n""y""",c\n\nlast,d\n')
    examples = read_examples(path, Columns())
    assert [(e.text, e.label, e.line) for e in examples] == [
        ("one\ntwo\nthree", "a", 2), ("plain", "b", 7), ('x,\n"y"', "c", 8), ("last", "d", 11)]


def test_integer_labels(tmp_path):
    rng = random.Random(1)
    values = [rng.randint(-5, 30) for _ in range(12)]
    rows = [(f"text {i}", "p", str(v)) for i, v in enumerate(values)]
    csv_path, _ = write_examples(tmp_path, "csv", rows, pair=False)
    jsonl_path = tmp_path / "ints.jsonl"
    # JSON integers and decimal strings mean the same label
    jsonl_path.write_text("".join(json.dumps({"text": t, "label": int(v) if i % 2 else v}) + "\n"
                                  for i, (t, _, v) in enumerate(rows)))
    for path in (csv_path, jsonl_path):
        examples = read_examples(path, Columns())
        assert [e.label for e in examples] == [str(v) for v in values]
        assert LabelMap.from_examples(examples).names == tuple(str(v) for v in sorted(set(values)))


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_utf8_bom(tmp_path, fmt):
    path, _ = write_examples(tmp_path, fmt, ROWS)
    plain = read_examples(path, Columns(pair="pair"))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_examples(path, Columns(pair="pair")) == plain


def test_crlf_line_endings(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\r\nfirst,a\r\n\r\nsecond,b\r\n")
    assert [(e.text, e.line) for e in read_examples(path, Columns())] == [("first", 2), ("second", 4)]


def test_unknown_extension(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("text,label\na,b\n")
    with pytest.raises(ValueError) as info:
        read_examples(path, Columns())
    assert not isinstance(info.value, DataError)
    assert ".txt" in str(info.value)


# ----------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("columns, option, name", [
    (Columns(text="sentence"), "--text-column", "sentence"),
    (Columns(label="y"), "--label-column", "y"),
    (Columns(pair="hypothesis"), "--text-pair-column", "hypothesis"),
])
@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_missing_column(tmp_path, fmt, columns, option, name):
    path, _ = write_examples(tmp_path, fmt, ROWS)
    with raises_at(path, 1, option, repr(name), "'label'", "'text'", "'pair'"):
        read_examples(path, columns)


@pytest.mark.parametrize("content", [b"", b"\n \n\t\n", b"\xef\xbb\xbf"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_empty_file(tmp_path, fmt, content):
    path = tmp_path / f"d.{fmt}"
    path.write_bytes(content)
    with raises_at(path, 1, "empty"):
        read_examples(path, Columns())


@pytest.mark.parametrize("content", ["text,label\n", "text,label\n\n\n"])
def test_header_only(tmp_path, content):
    path = tmp_path / "d.csv"
    path.write_text(content)
    with raises_at(path, 2, "no examples"):
        read_examples(path, Columns())


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("line", [1, 3, 6])
def test_undecodable_bytes(tmp_path, fmt, line):
    path, _ = write_examples(tmp_path, fmt, [(f"row {i}", "p", "a") for i in range(8)], blank_every=0)
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1][:2] + b"\xff" + lines[line - 1][2:]
    path.write_bytes(b"\n".join(lines))
    with raises_at(path, line, "UTF-8", "0xff", "column 3"):
        read_examples(path, Columns())


@pytest.mark.parametrize("bad_row", ["too,many,fields", "single"])
def test_wrong_number_of_fields(tmp_path, bad_row):
    path = tmp_path / "d.csv"
    path.write_text(f'text,label\n"multi\nline",a\n\nok,b\n{bad_row}\nafter,c\n')
    with raises_at(path, 6, "fields"):
        read_examples(path, Columns())


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
@pytest.mark.parametrize("empty", ["text", "pair", "label"])
def test_empty_value(tmp_path, fmt, empty):
    rows = [(f"row {i}", "p", "a") for i in range(4)]
    rows[2] = tuple("  " if name == empty else value for name, value in zip(("text", "pair", "label"), rows[2]))
    path, starts = write_examples(tmp_path, fmt, rows)
    with raises_at(path, starts[2], "empty", repr(empty)):
        read_examples(path, Columns(pair="pair"))


GOOD = json.dumps({"text": "fine", "label": 1})


@pytest.mark.parametrize("bad, words", [
    ("[1, 2]", ["JSON object", "list"]),
    ('"just a string"', ["JSON object", "str"]),
    ('{"text": "a", "label": ', ["not a JSON object"]),
    ("{'text': 'a', 'label': 1}", ["not a JSON object"]),
    ('{"label": 1}', ["'text'", "['label']"]),
    ('{"text": "a"}', ["'label'"]),
    ('{"text": 5, "label": 1}', ["'text'", "string", "int"]),
    ('{"text": null, "label": 1}', ["'text'", "string", "NoneType"]),
    ('{"text": "a", "label": true}', ["True", "string or an integer"]),
    ('{"text": "a", "label": 1.0}', ["1.0", "string or an integer"]),
    ('{"text": "a", "label": null}', ["None", "string or an integer"]),
    ('{"text": "a", "label": [1]}', ["string or an integer"]),
])
def test_jsonl_errors(tmp_path, bad, words):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([GOOD, "", GOOD, bad, GOOD]) + "\n")
    with raises_at(path, 4, *words):
        read_examples(path, Columns())


def test_jsonl_pair_must_be_string(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "pair": "b", "label": 1}\n{"text": "a", "pair": 2, "label": 1}\n')
    with raises_at(path, 2, "'pair'", "string"):
        read_examples(path, Columns(pair="pair"))


# -------------------------------------------------------------------------------------------- label map

def _examples(labels):
    return [Example(f"t{i}", None, label, i + 2) for i, label in enumerate(labels)]


def test_label_map_integers_sort_by_value():
    rng = random.Random(2)
    values = rng.sample(range(-20, 200), 15) + [2, 10]
    labels = [str(v) for v in values] * 2
    rng.shuffle(labels)
    names = LabelMap.from_examples(_examples(labels)).names
    assert names == tuple(str(v) for v in sorted(set(values)))
    assert names.index("2") < names.index("10")


def test_label_map_strings_sort_alphabetically():
    labels = ["neg", "2", "pos", "10", "neutral", "pos", "2"]
    assert LabelMap.from_examples(_examples(labels)).names == ("10", "2", "neg", "neutral", "pos")


def test_label_map_config_round_trip(tmp_path):
    for names in (("neg", "neutral", "pos"), ("-1", "0", "7", "12")):
        labels = LabelMap(names)
        config = transformers.BertConfig(**labels.config_kwargs())
        assert config.num_labels == len(names)
        assert [config.id2label[i] for i in range(len(names))] == list(names)
        assert {config.label2id[n] for n in names} == set(range(len(names)))
        assert LabelMap.from_config(config) == labels
        config.save_pretrained(tmp_path)  # JSON turns the id2label keys into strings
        assert LabelMap.from_config(transformers.BertConfig.from_pretrained(tmp_path)) == labels


def test_label_ids(tmp_path):
    train, _ = write_examples(tmp_path, "csv", ROWS, name="train")
    labels = LabelMap.from_examples(read_examples(train, Columns()))
    rows = [(f"e{i}", "p", label) for i, label in enumerate(["pos", "neutral", "neg", "pos"])]
    evaluation, _ = write_examples(tmp_path, "jsonl", rows, name="eval")
    examples = read_examples(evaluation, Columns())
    assert labels.ids(examples, evaluation, train) == [labels.names.index(e.label) for e in examples]


def test_label_ids_unseen_label(tmp_path):
    train, _ = write_examples(tmp_path, "csv", ROWS, name="train")
    labels = LabelMap.from_examples(read_examples(train, Columns()))
    rows = [("a", "p", "pos"), ("b", "p", "neg"), ("c", "p", "angry"), ("d", "p", "worse")]
    evaluation, starts = write_examples(tmp_path, "tsv", rows, name="eval")
    with raises_at(evaluation, starts[2], "'angry'", str(train)):
        labels.ids(read_examples(evaluation, Columns()), evaluation, train)


def test_label_map_distinct_spellings_of_one_integer():
    examples = _examples(["1", "01", "2"])
    labels = LabelMap.from_examples(examples)
    labels.ids(examples, "train.csv", "train.csv")  # the training file's own labels must all map


def test_jsonl_unicode_line_separator_in_string(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a\u2028b", "label": 1}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_examples(path, Columns())[0].text == "a\u2028b"


# --------------------------------------------------------------------------------------------- encoding

SENTENCES = [
    "Hi!",
    "A sentence of moderate length, with some punctuation.",
    "Tokenization splits unfamiliar words such as antidisestablishmentarianism into pieces.",
    "Short.",
    "This one is long enough that a small maximum length will certainly cut it somewhere in the middle.",
    "Exactly how many tokens? Let the tokenizer decide.",
]


def test_encode_truncates_and_counts(tokenizer):
    examples = [Example(s, None, "a", i + 2) for i, s in enumerate(SENTENCES)]
    labels = list(range(len(examples)))[::-1]
    full = [tokenizer(s)["input_ids"] for s in SENTENCES]
    for max_length in (8, 12, 1000):
        encoded, cut = encode(examples, labels, tokenizer, max_length)
        assert len(encoded) == len(examples) and encoded.labels == labels
        assert encoded.lengths == [min(len(ids), max_length) for ids in full]
        assert cut == sum(len(ids) >= max_length for ids in full)
        for ids, whole in zip(encoded.input_ids, full):
            expected = whole if len(whole) <= max_length else whole[:max_length - 1] + [tokenizer.sep_token_id]
            assert ids == expected
        assert all(set(types) == {0} for types in encoded.token_type_ids)
    assert 0 < encode(examples, labels, tokenizer, 12)[1] < len(examples)


def test_encode_pairs(tokenizer):
    examples = [Example(a, b, "a", i + 2) for i, (a, b) in enumerate(zip(SENTENCES, SENTENCES[::-1]))]
    encoded, cut = encode(examples, [0] * len(examples), tokenizer, 512)
    assert cut == 0
    for e, ids, types in zip(examples, encoded.input_ids, encoded.token_type_ids):
        first, second = tokenizer(e.text)["input_ids"], tokenizer(e.pair)["input_ids"][1:]  # drop [CLS]
        assert ids == first + second
        assert types == [0] * len(first) + [1] * len(second)
    assert encoded.lengths == [len(ids) for ids in encoded.input_ids]

    encoded, cut = encode(examples, [0] * len(examples), tokenizer, 16)
    assert cut == sum(len(ids) >= 16 for ids in encode(examples, [0] * len(examples), tokenizer, 512)[0].input_ids)
    assert max(encoded.lengths) == 16
    for ids, types in zip(encoded.input_ids, encoded.token_type_ids):
        assert len(ids) == len(types) and ids.count(tokenizer.sep_token_id) == 2
        assert types[0] == 0 and types[-1] == 1  # the second segment is never cut away entirely
