"""Extractive question answering from SQuAD JSON or JSONL (``--task question-answering``).

SQuAD v1.1/v2.0 JSON (``data[].paragraphs[].qas[]``; questions without an answer with
``--version-2-with-negative``) or JSONL with ``question``, ``context``, ``answers`` (``{"text": [...],
"answer_start": [...]}`` as in Hugging Face datasets, or a list of ``{"text", "answer_start"}``) and an
optional ``id``. Features are question + context windows over long contexts, overlapping by
``--doc-stride`` tokens, with offset mappings; an answer maps to its start and end tokens, and a window
without it (or an unanswerable question) is labelled at the first token (CLS). The loss is transformers'
(the mean of the start and end cross-entropies) over the real tokens only, so padding never competes.
Evaluation takes the best span over an example's windows from each window's n best starts and ends (at
most ``--max-answer-length`` tokens, inside the context), against the no-answer score for v2.0, and scores
exact match and F1 as the official SQuAD evaluation does (:mod:`.squad_metric`).
"""

from __future__ import annotations

import bisect
import json
import json.decoder
import json.scanner
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from fastbert.finetune.data import DataError, Encoded, decode_file
from fastbert.finetune.tasks import METRICS
from fastbert.finetune.tasks.base import Task
from fastbert.finetune.tasks.squad_metric import squad_scores


@dataclass
class Question:
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]]  # (text, character start); empty: no answer (v2.0)
    line: int


class _Located(dict):
    """A JSON object that knows the line it starts on."""

    line = 1


def load_json_with_lines(text: str):
    """``json.loads(text)`` whose objects are dicts with a ``line`` attribute (the pure-Python scanner,
    which lets an object's start position be kept)."""
    newlines = [i for i, c in enumerate(text) if c == "\n"]

    def line_of(position: int) -> int:
        return bisect.bisect_left(newlines, position) + 1

    def parse_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None, _w=None):
        start = s_and_end[1] - 1  # the scanner has passed the "{"
        pairs, end = json.decoder.JSONObject(s_and_end, strict, scan_once, object_hook, list, memo)
        located = _Located(pairs)
        located.line = line_of(start)
        return located, end

    decoder = json.JSONDecoder()
    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    return decoder.decode(text)


def read_questions(path, with_negative: bool) -> list[Question]:
    """Every question of a SQuAD JSON file (``.json``) or a JSONL file (``.jsonl``).

    Raises:
        DataError: undecodable bytes, an empty file, a question without a context or without text, an
            ``answer_start`` that does not match its answer's text, a question without an answer but
            ``with_negative`` off, a repeated id; each names the file and the line.
    """
    path = Path(path)
    text = decode_file(path)
    if not text.strip():
        raise DataError(path, 1, "the file is empty")
    if path.suffix.lower() == ".jsonl":
        questions = _read_jsonl(path, text, with_negative)
    else:
        questions = _read_squad(path, text, with_negative)
    if not questions:
        raise DataError(path, 1, "no questions")
    seen = {}
    for q in questions:
        if q.id in seen:
            raise DataError(path, q.line, f"id {q.id!r} repeats the question of line {seen[q.id]}")
        seen[q.id] = q.line
    return questions


def _read_squad(path: Path, text: str, with_negative: bool) -> list[Question]:
    try:
        root = load_json_with_lines(text)
    except json.JSONDecodeError as err:
        raise DataError(path, err.lineno, f"not valid JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(root, dict) or not isinstance(root.get("data"), list):
        raise DataError(path, 1, 'expected SQuAD JSON: an object with a "data" list of articles')
    questions = []
    for article in root["data"]:
        for paragraph in _list(path, article, "paragraphs"):
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            for qa in _list(path, paragraph, "qas"):
                if not isinstance(qa, dict):
                    raise DataError(path, getattr(paragraph, "line", 1), "each of qas must be an object")
                answers = qa.get("answers", [])
                if qa.get("is_impossible", False):
                    answers = []
                questions.append(_question(path, qa.line, qa.get("id", f"line-{qa.line}"), qa.get("question"),
                                           context, _answer_list(path, qa.line, answers), with_negative))
    return questions


def _list(path: Path, parent, key: str) -> list:
    value = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(value, list):
        raise DataError(path, getattr(parent, "line", 1), f"expected a {key!r} list")
    return value


def _answer_list(path: Path, line: int, answers) -> list[tuple]:
    """``[(text, answer_start), ...]`` from SQuAD's list of objects or datasets' object of lists."""
    if isinstance(answers, dict):
        texts, starts = answers.get("text"), answers.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise DataError(path, line, 'answers must hold "text" and "answer_start" lists of one length')
        return list(zip(texts, starts))
    if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
        raise DataError(path, line, 'answers must be a list of {"text", "answer_start"} objects')
    return [(a.get("text"), a.get("answer_start")) for a in answers]


def _question(path: Path, line: int, qid, question, context, answers: list, with_negative: bool) -> Question:
    if not isinstance(context, str) or not context.strip():
        raise DataError(path, line, "a question without a context")
    if not isinstance(question, str) or not question.strip():
        raise DataError(path, line, "no question text")
    for text, start in answers:
        if not isinstance(text, str) or not text.strip() or isinstance(start, bool) or not isinstance(start, int):
            raise DataError(path, line, f"an answer needs a text and an integer answer_start, got {text!r} "
                            f"and {start!r}")
        if not 0 <= start <= len(context) - len(text):
            raise DataError(path, line, f"answer_start {start} with its text {text!r} is outside the context "
                            f"({len(context)} characters)")
        if context[start:start + len(text)] != text:
            raise DataError(path, line, f"answer_start {start} does not match its text {text!r}: the context "
                            f"has {context[start:start + len(text)]!r} there")
    if not answers and not with_negative:
        raise DataError(path, line, "a question without an answer: unanswerable questions (SQuAD v2.0) need "
                        "--version-2-with-negative")
    return Question(str(qid), question, context, list(answers), line)


def _read_jsonl(path: Path, text: str, with_negative: bool) -> list[Question]:
    questions = []
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DataError(path, number, f"not a JSON object: {err.msg} at column {err.colno}") from None
        if not isinstance(record, dict):
            raise DataError(path, number, f"expected a JSON object, got {type(record).__name__}")
        if "answers" not in record:
            raise DataError(path, number, f"no key 'answers'; the object has {sorted(record)}")
        answers = _answer_list(path, number, record["answers"])
        questions.append(_question(path, number, record.get("id", f"line-{number}"), record.get("question"),
                                   record.get("context"), answers, with_negative))
    return questions


class QuestionAnswering(Task):
    """A span of the context per question (or none, v2.0): start and end cross-entropy, SQuAD EM and F1."""

    name = "question-answering"
    auto_class = "AutoModelForQuestionAnswering"
    metrics = METRICS[name]
    needs_fast_tokenizer = "its offset mappings place the answers"

    def __init__(self, args=None):
        super().__init__(args)
        self.doc_stride = args.doc_stride if args is not None else 128
        self._notes: list[str] = []
        self._windows = (0, 0)

    def read(self, path) -> list:
        return read_questions(path, self.args.version_2_with_negative)

    def encode(self, examples, tokenizer, path, config) -> Encoded:
        args = self.args
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        question_lengths = [len(ids) for ids in tokenizer([q.question.lstrip() for q in examples],
                                                          add_special_tokens=False)["input_ids"]]
        longest = max(range(len(examples)), key=question_lengths.__getitem__)
        room = args.max_length - specials - question_lengths[longest]  # context tokens beside it
        if room < 2:
            raise DataError(path, examples[longest].line, f"the question has {question_lengths[longest]} tokens: "
                            f"--max-length {args.max_length} leaves {max(room, 0)} for its context")
        if self.doc_stride >= room:
            lowered = room // 2
            self._notes.append(f"--doc-stride {self.doc_stride} lowered to {lowered}: --max-length "
                               f"{args.max_length} leaves {room} context tokens beside the longest question "
                               f"({path}:{examples[longest].line})")
            self.doc_stride = lowered
        encoded = tokenizer([q.question.lstrip() for q in examples], [q.context for q in examples],
                            truncation="only_second", max_length=args.max_length, stride=self.doc_stride,
                            return_overflowing_tokens=True, return_offsets_mapping=True,
                            return_token_type_ids=True)
        labels, info = [], []
        for j, k in enumerate(encoded["overflow_to_sample_mapping"]):
            ids, sequence = encoded["input_ids"][j], encoded.sequence_ids(j)
            if ids[0] != tokenizer.cls_token_id:
                raise ValueError(f"{type(tokenizer).__name__} does not put its CLS token first: the no-answer "
                                 "label has no place")
            offsets = [tuple(o) if s == 1 else None for o, s in zip(encoded["offset_mapping"][j], sequence)]
            labels.append(_answer_tokens(offsets, examples[k].answers))
            info.append((k, offsets))
        if str(path) == str(args.train):
            self._windows = (len(examples), len(labels))
        return Encoded(encoded["input_ids"], encoded["token_type_ids"], labels, info=info, examples=list(examples))

    def notes(self) -> list[str]:
        questions, windows = self._windows
        notes = list(self._notes)
        if windows > questions:
            notes.append(f"{questions} training questions make {windows} windows (contexts longer than "
                         f"--max-length {self.args.max_length} overlap by --doc-stride {self.doc_stride} tokens)")
        return notes

    def fingerprint(self) -> dict:
        return {"task": self.name, "doc_stride": self.doc_stride,
                "version_2_with_negative": self.args.version_2_with_negative}

    def loss_sum(self, outputs, labels, attention_mask, totals=None):
        padded = attention_mask == 0
        start = outputs.start_logits.float().masked_fill(padded, torch.finfo(torch.float32).min)
        end = outputs.end_logits.float().masked_fill(padded, torch.finfo(torch.float32).min)
        return (F.cross_entropy(start, labels[:, 0], reduction="sum")
                + F.cross_entropy(end, labels[:, 1], reduction="sum")) / 2

    def predict(self, outputs, batch) -> list:
        """Per window: its n best start and end tokens with their logits, and the no-answer score."""
        padded = batch["attention_mask"].to(outputs.start_logits.device) == 0
        start = outputs.start_logits.float().masked_fill(padded, float("-inf"))
        end = outputs.end_logits.float().masked_fill(padded, float("-inf"))
        k = min(self.args.n_best_size, start.shape[1])
        top_start, top_end = start.topk(k, dim=-1), end.topk(k, dim=-1)
        null = (start[:, 0] + end[:, 0]).tolist()
        return list(zip(top_start.indices.tolist(), top_start.values.tolist(), top_end.indices.tolist(),
                        top_end.values.tolist(), null))

    def score(self, data, predictions) -> dict:
        answers = self.answers(data, predictions)
        golds = {q.id: [text for text, _ in q.answers] for q in data.examples}
        scores = squad_scores(answers, golds)
        return {"f1": scores.pop("f1"), "exact_match": scores.pop("exact_match"), **scores}

    def answers(self, data, predictions) -> dict:
        """Question id -> the predicted answer text ("" for no answer) from the windows' predictions."""
        best: dict[int, tuple[float, str]] = {}
        null: dict[int, float] = {}
        for (k, offsets), (starts, start_logits, ends, end_logits, null_score) in zip(data.info, predictions):
            null[k] = min(null.get(k, float("inf")), null_score)
            context = data.examples[k].context
            for s, s_logit in zip(starts, start_logits):
                for e, e_logit in zip(ends, end_logits):
                    if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                        continue
                    if e < s or e - s + 1 > self.args.max_answer_length:
                        continue
                    value = s_logit + e_logit
                    if k not in best or value > best[k][0]:
                        best[k] = (value, context[offsets[s][0]:offsets[e][1]])
        answers = {}
        for k, question in enumerate(data.examples):
            score, text = best.get(k, (float("-inf"), ""))
            if self.args.version_2_with_negative and null.get(k, float("-inf")) > score + \
                    self.args.null_score_diff_threshold:
                text = ""
            answers[question.id] = text
        return answers


def _answer_tokens(offsets: list[Optional[tuple]], answers: list) -> tuple[int, int]:
    """The first answer's start and end tokens in a window (``offsets``: character spans of the context's
    tokens, None elsewhere), or ``(0, 0)`` (CLS) when the window does not hold it whole or there is none."""
    if not answers:
        return 0, 0
    text, start_char = answers[0]
    end_char = start_char + len(text)
    context = [t for t, o in enumerate(offsets) if o is not None]
    first, last = context[0], context[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return 0, 0
    start = next(t for t in context if offsets[t][1] > start_char)
    end = next(t for t in reversed(context) if offsets[t][0] < end_char)
    return start, end


TASK = QuestionAnswering


def extract_answers(model, tokenizer, questions: list[str], contexts: list[str], max_length: int = 384,
                    doc_stride: int = 128, n_best_size: int = 20, max_answer_length: int = 30,
                    with_negative: bool = False, null_score_diff_threshold: float = 0.0,
                    batch_size: int = 32) -> list[str]:
    """The answer span of each question in its context ("" for none, with ``with_negative``), as
    ``fastbert finetune --task question-answering`` evaluates: windows over long contexts, the best span
    of the windows' n best starts and ends. ``model``: any transformers ``*ForQuestionAnswering`` (fastbert's
    or transformers' own; transformers 5.8 and later have no question-answering pipeline), on any device;
    ``tokenizer``: its fast tokenizer."""
    import argparse

    from fastbert.finetune.batching import PlannedBatches, eval_plan

    if len(questions) != len(contexts):
        raise ValueError(f"questions ({len(questions)}) and contexts ({len(contexts)}) differ in length")
    args = argparse.Namespace(train=None, max_length=max_length, doc_stride=doc_stride, n_best_size=n_best_size,
                              max_answer_length=max_answer_length, version_2_with_negative=with_negative,
                              null_score_diff_threshold=null_score_diff_threshold)
    task = QuestionAnswering(args)
    examples = [Question(str(i), q, c, [], i + 1) for i, (q, c) in enumerate(zip(questions, contexts))]
    for q in examples:
        if not q.context.strip() or not q.question.strip():
            raise ValueError(f"question {q.line - 1}: an empty question or context")
    data = task.encode(examples, tokenizer, "<questions>", None)
    device = next(model.parameters()).device
    batches = PlannedBatches(data, eval_plan(data.lengths, batch_size), 0, 1, tokenizer.pad_token_id,
                             collate_labels=task.collate)
    predictions = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in batches:
            inputs = {k: batch[k].to(device) for k in ("input_ids", "token_type_ids", "attention_mask")}
            predictions.update(zip(batch["index"].tolist(), task.predict(model(**inputs), batch)))
    model.train(was_training)
    answers = task.answers(data, [predictions[i] for i in range(len(data))])
    return [answers[q.id] for q in examples]
