"""fastbert.finetune.tasks.question_answering: reading SQuAD JSON / JSONL (lines, errors), doc-stride windows
and their start/end labels with the real tokenizer, n-best span search and no-answer scores, predict, the loss."""

import argparse
import json
import math
import types

import pytest
import torch
import torch.nn.functional as F

from fastbert.finetune.cli import TASK_OPTIONS
from fastbert.finetune.data import DataError
from fastbert.finetune.tasks.question_answering import QuestionAnswering, load_json_with_lines, read_questions

FOX = "The quick brown fox jumps over the lazy dog."
# about 130 word pieces: many windows at --max-length 48
LONG = ("The river flows through the old city, and seven bridges cross it between the hills. "
        "Merchants once sold wool, salt and silver on the bridges, while boats carried grain downstream. "
        "In the spring the water rises, floods the low meadows and leaves a dark, rich soil behind. "
        "The oldest bridge was built of oak in the twelfth century and rebuilt in stone two hundred years later. "
        "Today trains, cars and bicycles share the crossings, and tourists photograph the towers at sunset.")


def make_args(path="train.json", **overrides) -> argparse.Namespace:
    """The command's question-answering options at their defaults (``TASK_OPTIONS``), ``train`` = ``path``."""
    options = dict(TASK_OPTIONS["question-answering"], train=str(path), max_length=128)
    options.update(overrides)
    return argparse.Namespace(**options)


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(tmp_path, *records, name="data.jsonl"):
    """One record a line; a str record is written as it is (a blank or a broken line)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    return write(tmp_path, name, "\n".join(lines) + "\n")


def record(question="What jumps?", context=FOX, text="quick brown fox", start=4, **extra) -> dict:
    return dict(question=question, context=context, answers={"text": [text], "answer_start": [start]}, **extra)


def context_tokens(offsets) -> list[int]:
    return [t for t, o in enumerate(offsets) if o is not None]


# ----------------------------------------------------------------------------- reading

SQUAD_V1 = """\
{
  "version": "1.1",
  "data": [
    {
      "title": "Foxes",
      "paragraphs": [
        {
          "context": "The quick brown fox jumps over the lazy dog.",
          "qas": [
            {
              "id": "q1",
              "question": "What jumps?",
              "answers": [{"text": "The quick brown fox", "answer_start": 0}]
            },
            {
              "question": "  Over what?",
              "answers": [
                {"text": "the lazy dog", "answer_start": 31},
                {"text": "lazy dog", "answer_start": 35}
              ]
            }
          ]
        }
      ]
    },
    {
      "title": "Cities",
      "paragraphs": [
        {"context": "Paris is the capital of France.",
         "qas": [{"id": "q3", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}]}]}
      ]
    }
  ]
}
"""

SQUAD_V2 = """\
{
  "version": "v2.0",
  "data": [{"title": "Foxes", "paragraphs": [{
    "context": "The quick brown fox jumps over the lazy dog.",
    "qas": [
      {"id": "a", "question": "What jumps?", "is_impossible": false,
       "answers": [{"text": "fox", "answer_start": 16}]},
      {"id": "b", "question": "What flies?", "is_impossible": true, "answers": [],
       "plausible_answers": [{"text": "fox", "answer_start": 16}]},
      {"id": "c", "question": "What sleeps?", "is_impossible": true,
       "answers": [{"text": "dog", "answer_start": 40}]}
    ]
  }]}]
}
"""


def test_reads_squad_v1_with_the_line_each_qa_object_starts_on(tmp_path):
    """Lines counted by hand in SQUAD_V1: the qa objects' "{" are on lines 10, 15 and 30."""
    questions = read_questions(write(tmp_path, "train.json", SQUAD_V1), with_negative=False)
    assert [(q.id, q.line) for q in questions] == [("q1", 10), ("line-15", 15), ("q3", 30)]
    assert questions[0].question == "What jumps?" and questions[0].context == FOX
    assert questions[0].answers == [("The quick brown fox", 0)]
    assert questions[1].question == "  Over what?"  # kept as written; encode strips the left side
    assert questions[1].answers == [("the lazy dog", 31), ("lazy dog", 35)]
    assert (questions[2].context, questions[2].answers) == ("Paris is the capital of France.", [("Paris", 0)])


def test_reads_squad_v2_unanswerable_questions(tmp_path):
    """``is_impossible`` makes a question unanswerable even when it lists answers."""
    questions = read_questions(write(tmp_path, "dev.json", SQUAD_V2), with_negative=True)
    assert [(q.id, q.line, q.answers) for q in questions] == [
        ("a", 6, [("fox", 16)]), ("b", 8, []), ("c", 10, [])]


def test_task_read_uses_version_2_with_negative(tmp_path):
    path = write(tmp_path, "dev.json", SQUAD_V2)
    assert len(QuestionAnswering(make_args(version_2_with_negative=True)).read(path)) == 3
    with pytest.raises(DataError, match="--version-2-with-negative"):
        QuestionAnswering(make_args()).read(path)


def test_reads_jsonl_both_answer_shapes_and_missing_ids(tmp_path):
    path = jsonl(tmp_path,
                 record(id="first"),
                 "",
                 dict(question="Over what?", context=FOX, answers=[{"text": "the lazy dog", "answer_start": 31},
                                                                    {"text": "dog", "answer_start": 40}]),
                 record(question="What?", text="jumps", start=20, id=7),
                 dict(question="Who flies?", context=FOX, answers={"text": [], "answer_start": []}))
    questions = read_questions(path, with_negative=True)
    assert [(q.id, q.line) for q in questions] == [("first", 1), ("line-3", 3), ("7", 4), ("line-5", 5)]
    assert [q.answers for q in questions] == [[("quick brown fox", 4)], [("the lazy dog", 31), ("dog", 40)],
                                              [("jumps", 20)], []]


def test_load_json_with_lines_equals_json_loads_and_knows_lines():
    """Every object holds its own line in "at" (counted by hand), nested in objects and arrays, several on a
    line, braces and escapes inside strings."""
    text = """\
{"at": 1,
 "numbers": [1, -2.5, 3e2, true, false, null, "x { y } \\n \\u00e9"],
 "empty": {"at": 3},
 "list": [
   {"at": 5}, {"at": 5, "inner": {"at": 5}},
   [[{"at": 6}]],
   {
     "at": 7,
     "deep": {"at": 9,
              "deeper": [{"at": 10}]}
   }
 ],
 "repeat": 1, "repeat": 2
}"""
    parsed = load_json_with_lines(text)
    assert parsed == json.loads(text)
    seen = []

    def walk(value):
        if isinstance(value, dict):
            seen.append((value.line, value["at"]))
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(parsed)
    assert len(seen) == 9
    assert all(line == at for line, at in seen), seen


def test_load_json_with_lines_on_other_roots():
    assert load_json_with_lines('[\n{}, \n {"a": {}}]') == [{}, {"a": {}}]
    assert [o.line for o in load_json_with_lines('[\n{}, \n {"a": {}}]')] == [2, 3]
    assert load_json_with_lines("\n\n  3.5 ") == 3.5
    with pytest.raises(json.JSONDecodeError) as err:
        load_json_with_lines('{\n"a": 1,\n"b": }')
    assert err.value.lineno == 3


# ----------------------------------------------------------------------------- bad input


def assert_data_error(path, line, *fragments, with_negative=False):
    with pytest.raises(DataError) as err:
        read_questions(path, with_negative)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert (err.value.path, err.value.line) == (str(path), line)
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("bad, line, fragments", [
    pytest.param(record(start=5), 2, ["answer_start 5 does not match its text 'quick brown fox'",
                                      "the context has 'uick brown fox ' there"], id="answer-start-off-by-one"),
    pytest.param(record(text="quick brown cat"), 2, ["the context has 'quick brown fox' there"], id="wrong-text"),
    pytest.param(record(start=40), 2, ["answer_start 40 with its text 'quick brown fox' is outside the context (44 characters)"], id="runs-past-the-context"),
    pytest.param({k: v for k, v in record().items() if k != "context"}, 2, ["without a context"], id="no-context"),
    pytest.param(record(context=""), 2, ["without a context"], id="empty-context"),
    pytest.param(record(context=" \t "), 2, ["without a context"], id="blank-context"),
    pytest.param(record(context=5), 2, ["without a context"], id="context-not-a-string"),
    pytest.param(record(question=""), 2, ["no question text"], id="empty-question"),
    pytest.param(record(question="   "), 2, ["no question text"], id="blank-question"),
    pytest.param({k: v for k, v in record().items() if k != "question"}, 2, ["no question text"], id="no-question"),
    pytest.param(dict(record(), answers={"text": [], "answer_start": []}), 2,
                 ["without an answer", "--version-2-with-negative"], id="unanswerable-v1"),
    pytest.param(dict(record(), answers=[]), 2, ["--version-2-with-negative"], id="unanswerable-empty-list"),
    pytest.param(record(start="4"), 2, ["integer answer_start", "'4'"], id="start-a-string"),
    pytest.param(record(start=4.0), 2, ["integer answer_start", "4.0"], id="start-a-float"),
    pytest.param(record(start=True), 2, ["integer answer_start", "True"], id="start-a-bool"),
    pytest.param(record(start=None), 2, ["integer answer_start", "None"], id="start-null"),
    pytest.param(record(text=""), 2, ["needs a text"], id="empty-answer-text"),
    pytest.param(dict(record(), answers=[{"answer_start": 4}]), 2, ["needs a text", "None"], id="no-answer-text"),
    pytest.param(dict(record(), answers="fox"), 2, ['list of {"text", "answer_start"} objects'],
                 id="answers-a-string"),
    pytest.param(dict(record(), answers=["fox"]), 2, ['list of {"text", "answer_start"} objects'],
                 id="answers-not-objects"),
    pytest.param(dict(record(), answers={"text": ["fox"]}), 2, ['"text" and "answer_start" lists of one length'],
                 id="answers-without-starts"),
    pytest.param(dict(record(), answers={"text": ["fox", "dog"], "answer_start": [16]}), 2,
                 ["lists of one length"], id="answers-lengths-differ"),
    pytest.param(dict(record(), answers={"text": "fox", "answer_start": 16}), 2, ["lists of one length"],
                 id="answers-dict-of-scalars"),
    pytest.param({k: v for k, v in record().items() if k != "answers"}, 2, ["no key 'answers'", "'context'"],
                 id="no-answers-key"),
    pytest.param('{"question": "q", ', 2, ["not a JSON object", "column"], id="invalid-json"),
    pytest.param("[1, 2]", 2, ["expected a JSON object, got list"], id="not-an-object"),
])
def test_jsonl_errors_name_the_line(tmp_path, bad, line, fragments):
    """The bad record is on line 2, after a good one."""
    path = jsonl(tmp_path, record(id="ok"), bad)
    assert_data_error(path, line, *fragments)


def test_repeated_id_names_both_lines(tmp_path):
    path = jsonl(tmp_path, record(id="x"), record(id="y"), "", record(id="x"))
    assert_data_error(path, 4, "id 'x' repeats the question of line 1")


def test_repeated_id_in_squad_json_names_both_lines(tmp_path):
    path = write(tmp_path, "train.json", SQUAD_V1.replace('"q3"', '"q1"'))
    assert_data_error(path, 30, "id 'q1' repeats the question of line 10")


def test_generated_id_can_repeat_a_given_one(tmp_path):
    """A missing id becomes "line-N", which a given id may already be."""
    path = jsonl(tmp_path, record(id="line-2"), record())
    assert_data_error(path, 2, "id 'line-2' repeats the question of line 1")


def test_squad_answer_error_is_at_the_qa_line(tmp_path):
    path = write(tmp_path, "train.json", SQUAD_V1.replace('"answer_start": 31', '"answer_start": 30'))
    assert_data_error(path, 15, "answer_start 30 does not match its text 'the lazy dog'",
                      "the context has ' the lazy do' there")


def test_squad_unanswerable_without_the_option(tmp_path):
    assert_data_error(write(tmp_path, "dev.json", SQUAD_V2), 8, "--version-2-with-negative")


def test_squad_paragraph_without_context_is_at_the_qa_line(tmp_path):
    text = SQUAD_V1.replace('"context": "Paris is the capital of France.",', '"context": "",')
    assert_data_error(write(tmp_path, "train.json", text), 30, "without a context")
    text = SQUAD_V1.replace('"context": "Paris is the capital of France.",', "")
    assert_data_error(write(tmp_path, "train.json", text), 30, "without a context")


def test_squad_empty_question(tmp_path):
    text = SQUAD_V1.replace('"question": "What jumps?"', '"question": " "')
    assert_data_error(write(tmp_path, "train.json", text), 10, "no question text")


def test_squad_non_integer_answer_start(tmp_path):
    text = SQUAD_V1.replace('"answer_start": 0}]}]}', '"answer_start": "0"}]}]}')
    assert_data_error(write(tmp_path, "train.json", text), 30, "integer answer_start")


def test_invalid_json_names_the_line_of_the_error(tmp_path):
    text = SQUAD_V1.replace('"title": "Cities",', '"title": "Cities"')  # line 27: a missing comma
    assert_data_error(write(tmp_path, "train.json", text), 28, "not valid JSON", "Expecting ',' delimiter",
                      "column 7")


@pytest.mark.parametrize("text, line, fragment", [
    pytest.param("[]", 1, 'expected SQuAD JSON: an object with a "data" list', id="array-root"),
    pytest.param('{"version": "1.1"}', 1, 'expected SQuAD JSON', id="no-data"),
    pytest.param('{"data": {"paragraphs": []}}', 1, 'expected SQuAD JSON', id="data-not-a-list"),
    pytest.param('{"data": [\n {"title": "t"}]}', 2, "expected a 'paragraphs' list", id="no-paragraphs"),
    pytest.param('{"data": [\n "article"]}', 1, "expected a 'paragraphs' list", id="article-not-an-object"),
    pytest.param('{"data": [{"paragraphs": [\n {"context": "c", "qas": {}}]}]}', 2, "expected a 'qas' list",
                 id="qas-not-a-list"),
    pytest.param('{"data": [{"paragraphs": [\n {"context": "c", "qas": [1]}]}]}', 2,
                 "each of qas must be an object", id="qa-not-an-object"),
    pytest.param('{"data": [{"paragraphs": [\n {"context": "c", "qas": [\n{"question": "q", "answers": 3}]}]}]}',
                 3, 'answers must be a list', id="answers-a-number"),
    pytest.param('{"data": []}', 1, "no questions", id="no-articles"),
    pytest.param('{"data": [{"paragraphs": [{"context": "c", "qas": []}]}]}', 1, "no questions", id="no-qas"),
])
def test_not_squad_shaped(tmp_path, text, line, fragment):
    assert_data_error(write(tmp_path, "train.json", text), line, fragment)


@pytest.mark.parametrize("name", ["train.json", "train.jsonl"])
@pytest.mark.parametrize("text", ["", "\n  \n\t", "\ufeff"])
def test_empty_file(tmp_path, name, text):
    assert_data_error(write(tmp_path, name, text), 1, "the file is empty")


def test_jsonl_of_blank_lines_only_after_a_bom_and_spaces(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(record()).encode() + b"\r\n\r\n")
    assert [q.line for q in read_questions(path, False)] == [1]


def test_undecodable_bytes(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(json.dumps(record()).encode() + b"\n{\"question\": \"\xff\"}\n")
    assert_data_error(path, 2, "not valid UTF-8")


def test_negative_answer_start_is_an_error(tmp_path):
    """BUG: a negative answer_start passes the check, which slices ``context[start:start + len(text)]`` (Python
    counts a negative index from the end: ``"abc abc"[-3:-1] == "ab"``). The question is then read with answer
    start -3, and every window labels it (0, 0): the answer is silently trained as "no answer"."""
    path = jsonl(tmp_path, record(context="abc abc", text="ab", start=-3))
    assert_data_error(path, 1, "answer_start -3")


def test_whitespace_only_answer_is_an_error(tmp_path, tokenizer):
    """BUG: an empty answer text is rejected but a blank one is not (questions and contexts are checked with
    ``strip``); its window then gets the label (6, 5), an end before its start."""
    path = jsonl(tmp_path, record(context="abc abc", text=" ", start=3))
    try:
        questions = read_questions(path, False)
    except DataError as err:
        assert str(err).startswith(f"{path}:1: ")
        return
    encoded = QuestionAnswering(make_args(path)).encode(questions, tokenizer, path, None)
    start, end = encoded.labels[0]
    assert start <= end, f"blank answer accepted and labelled {encoded.labels[0]}"


# ----------------------------------------------------------------------------- features


def full_context_tokens(tokenizer, context):
    out = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    return out["input_ids"], [tuple(o) for o in out["offset_mapping"]]


def long_questions(tokenizer, question="Where is it?"):
    """Questions on LONG whose answers are spans of its tokens, one straddling the first window's end."""
    _, full = full_context_tokens(tokenizer, LONG)
    room = 48 - 3 - len(tokenizer(question, add_special_tokens=False)["input_ids"])
    spans = [(0, 2), (room - 2, room + 1), (room + 5, room + 5), (50, 58), (len(full) - 4, len(full) - 1)]
    records = []
    for i, j in spans:
        begin, end = full[i][0], full[j][1]
        records.append(record(question=question, context=LONG, text=LONG[begin:end], start=begin,
                              id=f"span-{i}-{j}"))
    return records


def encode_records(tmp_path, tokenizer, records, with_negative=False, **overrides):
    path = jsonl(tmp_path, *records)
    args = make_args(path, version_2_with_negative=with_negative, **overrides)
    task = QuestionAnswering(args)
    questions = task.read(path)
    return task, questions, task.encode(questions, tokenizer, path, None), path


def test_windows_overlap_by_doc_stride(tmp_path, tokenizer):
    task, questions, encoded, _ = encode_records(tmp_path, tokenizer, long_questions(tokenizer)[:1],
                                                 max_length=48, doc_stride=16)
    ids, full = full_context_tokens(tokenizer, LONG)
    assert len(encoded) >= 4 and task.doc_stride == 16
    assert all(length <= 48 for length in encoded.lengths)
    slices = []
    for window, (k, offsets) in enumerate(encoded.info):
        assert k == 0
        context = context_tokens(offsets)
        first = full.index(offsets[context[0]])
        assert [offsets[t] for t in context] == full[first:first + len(context)]
        assert [encoded.input_ids[window][t] for t in context] == ids[first:first + len(context)]
        # [CLS] question [SEP] context [SEP], the context of type 1
        assert encoded.input_ids[window][0] == tokenizer.cls_token_id
        assert encoded.input_ids[window][context[0] - 1] == encoded.input_ids[window][-1] == tokenizer.sep_token_id
        assert context[-1] == len(offsets) - 2 and context == list(range(context[0], context[-1] + 1))
        assert encoded.token_type_ids[window] == [0] * context[0] + [1] * (len(offsets) - context[0])
        slices.append((first, first + len(context)))
    assert slices[0][0] == 0 and slices[-1][1] == len(full)
    for (_, end), (begin, _) in zip(slices, slices[1:]):
        assert end - begin == 16
    assert all(length == 48 for length in encoded.lengths[:-1])


def test_answer_labels_decode_to_the_answer(tmp_path, tokenizer):
    """In a window holding the answer whole its labels' offsets give back the answer text; every other window
    (one holding only part of it, too) is labelled (0, 0)."""
    task, questions, encoded, _ = encode_records(tmp_path, tokenizer, long_questions(tokenizer),
                                                 max_length=48, doc_stride=16)
    held, partly = {q.id: 0 for q in questions}, 0
    for (k, offsets), label in zip(encoded.info, encoded.labels):
        text, begin = questions[k].answers[0]
        context = context_tokens(offsets)
        window = (offsets[context[0]][0], offsets[context[-1]][1])
        if window[0] <= begin and begin + len(text) <= window[1]:
            start, end = label
            assert start in context and end in context and start <= end
            assert LONG[offsets[start][0]:offsets[end][1]] == text
            held[questions[k].id] += 1
        else:
            assert label == (0, 0)
            partly += window[0] < begin + len(text) and begin < window[1]
    assert all(held.values()), held
    assert partly >= 1  # the straddling answer
    assert sorted({k for k, _ in encoded.info}) == list(range(len(questions)))
    assert encoded.examples == questions


def test_answer_inside_a_word_piece(tmp_path, tokenizer):
    """An answer starting or ending inside a token is labelled with the tokens that hold it."""
    _, _, encoded, _ = encode_records(tmp_path, tokenizer, [record(text="uick brown fo", start=5)])
    (_, offsets), (start, end) = encoded.info[0], encoded.labels[0]
    assert FOX[offsets[start][0]:offsets[end][1]] == "quick brown fox"


def test_unanswerable_is_labelled_cls_in_every_window(tmp_path, tokenizer):
    records = [dict(question="Who sings?", context=LONG, answers=[]), record(id="fox")]
    _, questions, encoded, _ = encode_records(tmp_path, tokenizer, records, with_negative=True, max_length=48,
                                              doc_stride=16)
    windows = [label for (k, _), label in zip(encoded.info, encoded.labels) if k == 0]
    assert len(windows) >= 3 and set(windows) == {(0, 0)}
    (_, offsets), label = encoded.info[-1], encoded.labels[-1]
    assert FOX[offsets[label[0]][0]:offsets[label[1]][1]] == "quick brown fox"


def test_doc_stride_lowered_beside_the_longest_question(tmp_path, tokenizer):
    """The longest question (14 tokens, line 3) leaves 48 - 3 - 14 = 31 context tokens: --doc-stride 31 is
    lowered to 15, with a note naming its line."""
    long_question = "What does the long question about the river and its many bridges ask?"
    records = [record(), "", long_questions(tokenizer, long_question)[0]]
    task, _, encoded, path = encode_records(tmp_path, tokenizer, records, max_length=48, doc_stride=31)
    assert task.doc_stride == 15 and task.fingerprint()["doc_stride"] == 15
    notes = task.notes()
    assert any("--doc-stride 31 lowered to 15" in n and "leaves 31 context tokens" in n and f"({path}:3)" in n
               for n in notes), notes
    assert any("2 training questions make" in n and "--doc-stride 15" in n for n in notes), notes
    ids, _ = full_context_tokens(tokenizer, LONG)
    lengths = [len(context_tokens(offsets)) for k, offsets in encoded.info if k == 1]
    # windows of 31 context tokens stepping by 31 - 15 = 16
    assert lengths[:-1] == [31] * (len(lengths) - 1) and len(lengths) == 1 + math.ceil((len(ids) - 31) / 16)


def test_doc_stride_just_below_the_room_is_kept(tmp_path, tokenizer):
    task, _, encoded, _ = encode_records(tmp_path, tokenizer, long_questions(tokenizer)[:1], max_length=48,
                                         doc_stride=40)
    assert task.doc_stride == 40 and not any("lowered" in n for n in task.notes())
    ids, _ = full_context_tokens(tokenizer, LONG)
    assert len(encoded) == len(ids) - 41 + 1  # a step of one token


def test_no_window_note_for_an_eval_file(tmp_path, tokenizer):
    path = jsonl(tmp_path, *long_questions(tokenizer)[:1], name="dev.jsonl")
    task = QuestionAnswering(make_args("train.jsonl", max_length=48, doc_stride=16))
    task.encode(task.read(path), tokenizer, path, None)
    assert task.notes() == []


def test_question_too_long_for_max_length(tmp_path, tokenizer):
    """14 question tokens + 3 special ones leave one context token of --max-length 18."""
    long_question = "What does the long question about the river and its many bridges ask?"
    path = jsonl(tmp_path, record(), record(question=long_question))
    task = QuestionAnswering(make_args(path, max_length=18, doc_stride=4))
    with pytest.raises(DataError) as err:
        task.encode(task.read(path), tokenizer, path, None)
    assert str(err.value) == f"{path}:2: the question has 14 tokens: --max-length 18 leaves 1 for its context"
    task = QuestionAnswering(make_args(path, max_length=19, doc_stride=4))
    assert len(task.encode(task.read(path), tokenizer, path, None)) >= 2  # two context tokens are enough


def test_tokenizer_is_fast(minilm_path):
    assert QuestionAnswering(make_args()).tokenizer(minilm_path).is_fast


# ----------------------------------------------------------------------------- answers and scores


@pytest.fixture
def two_windows(tmp_path, tokenizer):
    """One question on LONG in two windows (``max_length`` 80, stride 16)."""
    task, questions, encoded, _ = encode_records(tmp_path, tokenizer, long_questions(tokenizer)[3:4],
                                                 max_length=80, doc_stride=16, max_answer_length=5)
    assert len(encoded) == 2
    return task, encoded


def span_text(encoded, window, start, end):
    offsets = encoded.info[window][1]
    return LONG[offsets[start][0]:offsets[end][1]]


def prediction(starts=(), ends=(), null=0.0):
    """A window's prediction from ``[(index, logit), ...]`` lists of starts and ends."""
    return ([i for i, _ in starts], [x for _, x in starts], [i for i, _ in ends], [x for _, x in ends], null)


def first_context(encoded, window):
    return context_tokens(encoded.info[window][1])[0]


@pytest.mark.parametrize("better", [0, 1])
def test_best_span_over_the_windows_wins(two_windows, better):
    task, encoded = two_windows
    c0, c1 = first_context(encoded, 0), first_context(encoded, 1)
    spans = {0: (c0 + 3, c0 + 4), 1: (c1 + 10, c1 + 12)}
    high, low = (4.0, 3.5), (1.0, 2.0)
    predictions = [prediction([(spans[w][0], (high if w == better else low)[0])],
                              [(spans[w][1], (high if w == better else low)[1])]) for w in (0, 1)]
    answers = task.answers(encoded, predictions)
    assert answers == {encoded.examples[0].id: span_text(encoded, better, *spans[better])}


def test_best_pair_of_the_n_best_starts_and_ends(two_windows):
    """Starts and ends pair freely; the highest sum of a valid pair wins."""
    task, encoded = two_windows
    c = first_context(encoded, 0)
    predictions = [prediction([(c + 8, 5.0), (c + 2, 3.0), (c + 1, 1.0)], [(c + 3, 4.0), (c + 4, 2.5)]),
                   prediction([(0, 9.0)], [(0, 9.0)])]
    # (c+8, *) ends before it starts; (c+2, c+3) = 7.0 beats (c+2, c+4) = 5.5 and (c+1, c+3) = 5.0
    assert list(task.answers(encoded, predictions).values()) == [span_text(encoded, 0, c + 2, c + 3)]


def bad_pairs(encoded, max_answer_length):
    c, n = first_context(encoded, 0), len(encoded.info[0][1])
    return {"end-before-start": (c + 5, c + 2), "too-long": (c, c + max_answer_length),
            "start-on-cls": (0, c + 2), "start-on-question": (1, c + 2), "end-on-first-sep": (1, c - 1),
            "end-on-last-sep": (c + 2, n - 1), "end-on-padding": (c + 2, n + 3),
            "start-on-padding": (n + 1, n + 2)}


@pytest.mark.parametrize("kind", ["end-before-start", "too-long", "start-on-cls", "start-on-question",
                                  "end-on-first-sep", "end-on-last-sep", "end-on-padding", "start-on-padding"])
def test_invalid_spans_are_never_chosen(two_windows, kind):
    """Window 0 holds only the invalid pair, with high logits; window 1's weak valid span wins."""
    task, encoded = two_windows
    start, end = bad_pairs(encoded, task.args.max_answer_length)[kind]
    c1 = first_context(encoded, 1)
    predictions = [prediction([(start, 50.0)], [(end, 50.0)]), prediction([(c1 + 1, -3.0)], [(c1 + 2, -3.0)])]
    assert list(task.answers(encoded, predictions).values()) == [span_text(encoded, 1, c1 + 1, c1 + 2)]


def test_span_of_max_answer_length_is_allowed(two_windows):
    task, encoded = two_windows
    c = first_context(encoded, 0)
    predictions = [prediction([(c, 1.0)], [(c + 4, 1.0)]), prediction()]
    assert list(task.answers(encoded, predictions).values()) == [span_text(encoded, 0, c, c + 4)]


def test_no_valid_span_answers_empty(two_windows):
    task, encoded = two_windows
    predictions = [prediction([(0, 9.0)], [(0, 9.0)], null=18.0), prediction([(1, 1.0)], [(2, 1.0)])]
    assert list(task.answers(encoded, predictions).values()) == [""]


@pytest.mark.parametrize("null, threshold, empty", [
    (5.0, 0.0, True), (4.0, 0.0, False), (4.5, 0.0, True), (5.0, 1.0, False), (5.0, 0.5, True),
    (3.0, -1.5, True), (3.0, -0.5, False), (-20.0, 0.0, False),
])
def test_v2_null_score_against_the_best_span(two_windows, null, threshold, empty):
    """The best span scores 4.0: "" when the null score beats it by more than the threshold."""
    task, encoded = two_windows
    task.args.version_2_with_negative, task.args.null_score_diff_threshold = True, threshold
    c = first_context(encoded, 1)
    predictions = [prediction([(c + 1, 1.0)], [(c + 2, 0.5)], null), prediction([(c + 1, 2.5)], [(c + 2, 1.5)], null)]
    expected = "" if empty else span_text(encoded, 1, c + 1, c + 2)
    assert list(task.answers(encoded, predictions).values()) == [expected]


def test_v2_compares_the_lowest_null_score_of_the_windows(two_windows):
    """As transformers' example post-processing: the smallest of the windows' null scores."""
    task, encoded = two_windows
    task.args.version_2_with_negative = True
    c = first_context(encoded, 1)
    predictions = [prediction(null=100.0), prediction([(c + 1, 2.0)], [(c + 2, 2.0)], null=3.0)]
    assert list(task.answers(encoded, predictions).values()) == [span_text(encoded, 1, c + 1, c + 2)]
    predictions[1] = prediction([(c + 1, 2.0)], [(c + 2, 2.0)], null=4.5)
    assert list(task.answers(encoded, predictions).values()) == [""]


def test_v1_ignores_the_null_score(two_windows):
    task, encoded = two_windows
    c = first_context(encoded, 0)
    predictions = [prediction([(c, -5.0)], [(c, -5.0)], null=100.0), prediction(null=100.0)]
    assert list(task.answers(encoded, predictions).values()) == [span_text(encoded, 0, c, c)]


def char_token(offsets, char):
    return next(t for t, o in enumerate(offsets) if o is not None and o[0] <= char < o[1])


def test_score_is_squad_f1_and_exact_match(tmp_path, tokenizer):
    """An exact answer and "lazy dog." against "over the lazy dog" (after normalizing: precision 1, recall 2/3,
    F1 0.8): F1 0.9, exact match 0.5, F1 first."""
    records = [record(id="a"), dict(question="Over what?", context=FOX, id="b",
                                    answers=[{"text": "over the lazy dog", "answer_start": 26}])]
    task, _, encoded, _ = encode_records(tmp_path, tokenizer, records)
    (_, fox), (_, dog) = encoded.info
    predictions = [prediction([(char_token(fox, 4), 1.0)], [(char_token(fox, 16), 1.0)]),
                   prediction([(char_token(dog, 35), 1.0)], [(char_token(dog, 43), 1.0)])]
    assert task.answers(encoded, predictions) == {"a": "quick brown fox", "b": "lazy dog."}
    scores = task.score(encoded, predictions)
    assert list(scores)[:2] == ["f1", "exact_match"]
    assert scores["f1"] == pytest.approx(0.9) and scores["exact_match"] == 0.5 and scores["total"] == 2


def test_score_v2_counts_an_empty_prediction_right_for_unanswerable(tmp_path, tokenizer):
    records = [record(id="a"), dict(question="Who flies?", context=FOX, id="b", answers=[])]
    task, _, encoded, _ = encode_records(tmp_path, tokenizer, records, with_negative=True)
    fox = encoded.info[0][1]
    predictions = [prediction([(char_token(fox, 4), 3.0)], [(char_token(fox, 16), 3.0)], null=0.0),
                   prediction([(char_token(fox, 4), 1.0)], [(char_token(fox, 16), 1.0)], null=5.0)]
    scores = task.score(encoded, predictions)
    assert list(scores)[:2] == ["f1", "exact_match"]
    assert (scores["f1"], scores["exact_match"]) == (1.0, 1.0)
    assert scores["no_answer_total"] == 1 and scores["has_answer_total"] == 1


# ----------------------------------------------------------------------------- predict and the loss


def outputs_and_mask(seed=0):
    """Two rows of 7 positions, the second with 4 real tokens; padding gets the largest logits."""
    gen = torch.Generator().manual_seed(seed)
    start, end = torch.randn(2, 7, generator=gen), torch.randn(2, 7, generator=gen)
    mask = torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0]])
    start[1, 4:], end[1, 4:] = 100.0, 50.0
    return types.SimpleNamespace(start_logits=start, end_logits=end), mask


def test_predict_keeps_padding_out_of_the_n_best():
    outputs, mask = outputs_and_mask()
    task = QuestionAnswering(make_args(n_best_size=3))
    predictions = task.predict(outputs, {"attention_mask": mask})
    assert len(predictions) == 2
    for row, (starts, start_logits, ends, end_logits, null) in enumerate(predictions):
        real = int(mask[row].sum())
        for indices, values, logits in ((starts, start_logits, outputs.start_logits[row]),
                                        (ends, end_logits, outputs.end_logits[row])):
            assert len(indices) == 3 and all(i < real for i in indices)
            assert indices == logits[:real].topk(3).indices.tolist()
            assert values == pytest.approx(logits[:real].topk(3).values.tolist())
        assert null == pytest.approx(float(outputs.start_logits[row, 0] + outputs.end_logits[row, 0]))


def test_predict_with_more_n_best_than_tokens():
    """n_best_size above a row's real tokens: padded positions come last at -inf, and the span search skips them."""
    outputs, mask = outputs_and_mask()
    task = QuestionAnswering(make_args(n_best_size=20))
    starts, start_logits, ends, end_logits, _ = task.predict(outputs, {"attention_mask": mask})[1]
    assert len(starts) == 7
    assert sorted(starts[:4]) == [0, 1, 2, 3] and start_logits[4:] == [float("-inf")] * 3
    assert sorted(ends[:4]) == [0, 1, 2, 3] and end_logits[4:] == [float("-inf")] * 3


def test_loss_sum_by_hand():
    """Per row, the mean of the start and end cross-entropies over its real positions; summed over the rows."""
    outputs, mask = outputs_and_mask(seed=1)
    labels = torch.tensor([[2, 5], [1, 3]])
    task = QuestionAnswering(make_args())
    loss = task.loss_sum(outputs, labels, mask)
    expected = 0.0
    for row in range(2):
        real = int(mask[row].sum())
        start = -torch.log_softmax(outputs.start_logits[row, :real].double(), -1)[labels[row, 0]]
        end = -torch.log_softmax(outputs.end_logits[row, :real].double(), -1)[labels[row, 1]]
        expected += float(start + end) / 2
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    row = types.SimpleNamespace(start_logits=outputs.start_logits[1:], end_logits=outputs.end_logits[1:])
    unpadded = (F.cross_entropy(outputs.start_logits[1:, :4], labels[1:, 0], reduction="sum")
                + F.cross_entropy(outputs.end_logits[1:, :4], labels[1:, 1], reduction="sum")) / 2
    assert torch.allclose(task.loss_sum(row, labels[1:], mask[1:]), unpadded)


@pytest.mark.parametrize("padding", [-1e4, 0.0, 1e4, float("inf"), float("nan")])
def test_loss_sum_ignores_padded_logits(padding):
    outputs, mask = outputs_and_mask(seed=2)
    labels = torch.tensor([[0, 6], [3, 0]])
    task = QuestionAnswering(make_args())
    before = task.loss_sum(outputs, labels, mask)
    outputs.start_logits[1, 4:], outputs.end_logits[1, 4:] = padding, padding
    assert torch.equal(task.loss_sum(outputs, labels, mask), before)


def test_loss_sum_takes_half_precision_logits():
    outputs, mask = outputs_and_mask(seed=3)
    labels = torch.tensor([[1, 1], [2, 3]])
    task = QuestionAnswering(make_args())
    half = types.SimpleNamespace(start_logits=outputs.start_logits.bfloat16(), end_logits=outputs.end_logits.bfloat16())
    loss = task.loss_sum(half, labels, mask)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    exact = task.loss_sum(types.SimpleNamespace(start_logits=half.start_logits.float(),
                                                end_logits=half.end_logits.float()), labels, mask)
    assert torch.equal(loss, exact)
