"""Token classification (named-entity recognition) from CoNLL or JSONL files (``--task token-classification``).

CoNLL: one token a line, whitespace-separated columns with the tag last (CoNLL-2003's four columns read as
they are), blank lines between sentences, ``-DOCSTART-`` lines skipped. JSONL: one sentence an object,
``{"tokens": [...], "tags": [...]}`` (``--tokens-column``, ``--tags-column``). Tags are BIO/IOB2, IOB1 or
BIOES. Words are aligned to word pieces through the fast tokenizer's word ids: the first piece of a word
carries its tag, the others -100 (``--label-all-tokens``: the tag too, B- made I-). A sentence longer than
``--max-length`` is split into windows at word boundaries, so every word is trained on and predicted once.
Scores: entity-level precision, recall and F1 as seqeval computes them (:mod:`.entities`), micro and per
type, and the tag accuracy over words.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from fastbert.finetune.data import DataError, Encoded, LabelMap, decode_file
from fastbert.finetune.tasks import METRICS
from fastbert.finetune.tasks.base import Task
from fastbert.finetune.tasks.entities import entity_scores

TAG = re.compile(r"O|[BIES]-\S+")
IGNORED = -100  # the label cross-entropy skips


@dataclass
class Sentence:
    words: list[str]
    tags: list[str]
    lines: list[int]  # the line of each word (CoNLL), or the object's line for each (JSONL)


def read_sentences(path, tokens_column: str = "tokens", tags_column: str = "tags") -> list[Sentence]:
    """Every sentence of a CoNLL file (any extension but ``.jsonl``/``.json``) or a JSONL file.

    Raises:
        DataError: undecodable bytes, an empty file, a line with one column or with another column count
            than the file's first, a tag that is not O or B-/I-/E-/S- plus a type, a JSONL object without its
            keys or with words and tags of different lengths; each names the file and the line.
    """
    path = Path(path)
    text = decode_file(path)
    if not text.strip():
        raise DataError(path, 1, "the file is empty")
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    sentences = _read_jsonl(path, text, tokens_column, tags_column) if jsonl else _read_conll(path, text)
    if not sentences:
        raise DataError(path, 1, "no sentences (only -DOCSTART- and blank lines)")
    return sentences


def _check_tag(path, line: int, tag: str) -> None:
    if not TAG.fullmatch(tag):
        raise DataError(path, line, f"tag {tag!r} is not O or B-, I-, E-, S- and a type (BIO, IOB1 or BIOES)")


def _read_conll(path: Path, text: str) -> list[Sentence]:
    sentences, current, columns = [], Sentence([], [], []), None
    for number, raw in enumerate(text.split("\n"), start=1):
        fields = raw.split()
        if not fields or fields[0] == "-DOCSTART-":
            if current.words:
                sentences.append(current)
            current = Sentence([], [], [])
            continue
        if len(fields) < 2:
            raise DataError(path, number, f"one column ({raw.strip()!r}): a CoNLL line is the word, any other "
                            "columns, and the tag last, separated by whitespace")
        if columns is None:
            columns = (len(fields), number)
        elif len(fields) != columns[0]:
            raise DataError(path, number, f"{len(fields)} columns, where the file's first token line "
                            f"({columns[1]}) has {columns[0]}")
        _check_tag(path, number, fields[-1])
        current.words.append(fields[0])
        current.tags.append(fields[-1])
        current.lines.append(number)
    if current.words:
        sentences.append(current)
    return sentences


def _read_jsonl(path: Path, text: str, tokens_column: str, tags_column: str) -> list[Sentence]:
    sentences = []
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DataError(path, number, f"not a JSON object: {err.msg} at column {err.colno}") from None
        if not isinstance(record, dict):
            raise DataError(path, number, f"expected a JSON object, got {type(record).__name__}")
        for key, option in ((tokens_column, "--tokens-column"), (tags_column, "--tags-column")):
            if key not in record:
                raise DataError(path, number, f"no key {key!r} ({option}); the object has {sorted(record)}")
            value = record[key]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DataError(path, number, f"{key!r} must be a list of strings")
        words, tags = record[tokens_column], record[tags_column]
        if len(words) != len(tags):
            raise DataError(path, number, f"{len(words)} {tokens_column!r} but {len(tags)} {tags_column!r}")
        if not words:
            raise DataError(path, number, f"no words in {tokens_column!r}")
        for i, word in enumerate(words):
            if not word.strip():
                raise DataError(path, number, f"word {i} of {tokens_column!r} is empty")
        for tag in tags:
            _check_tag(path, number, tag)
        sentences.append(Sentence(list(words), list(tags), [number] * len(words)))
    return sentences


def continuation_tags(names: tuple[str, ...]) -> list[int]:
    """For each tag id, the id a word's later pieces take under ``--label-all-tokens``: I-X for B-X where
    I-X is a tag, the same tag otherwise."""
    index = {name: i for i, name in enumerate(names)}
    return [index.get("I-" + name[2:], i) if name.startswith("B-") else i for i, name in enumerate(names)]


def word_windows(piece_counts: list[int], budget: int) -> list[tuple[int, int]]:
    """``(first, end)`` word ranges of one sentence whose pieces fit ``budget`` each, cut at word
    boundaries (a word longer than ``budget`` alone in its window)."""
    windows, first, used = [], 0, 0
    for i, count in enumerate(piece_counts):
        if used + count > budget and i > first:
            windows.append((first, i))
            first, used = i, 0
        used += count
    windows.append((first, len(piece_counts)))
    return windows


class TokenClassification(Task):
    """A tag per word: cross-entropy over the labelled pieces, entity-level scores over words."""

    name = "token-classification"
    auto_class = "AutoModelForTokenClassification"
    metrics = METRICS[name]
    needs_fast_tokenizer = "its word ids align the tags"

    def __init__(self, args=None):
        super().__init__(args)
        self.labels: Optional[LabelMap] = None
        self._windows = {"sentences": 0, "split": 0, "windows": 0, "cut words": 0}
        self._pieceless: list[str] = []  # "file:line ('word')" of words without a word piece

    def read(self, path) -> list:
        return read_sentences(path, self.args.tokens_column, self.args.tags_column)

    def config_kwargs(self, train, config, resuming) -> dict:
        self.labels = LabelMap(tuple(sorted({tag for sentence in train for tag in sentence.tags})))
        if resuming:
            self.labels.check_resumed(config, self.args.train)
        if len(self.labels.names) < 2:
            raise ValueError(f"{self.args.train}: token classification needs at least 2 tags, found "
                             f"{list(self.labels.names)}")
        return self.labels.config_kwargs()

    def tokenizer(self, source: str, **kwargs):
        tokenizer = super().tokenizer(source, **kwargs)
        if getattr(tokenizer, "add_prefix_space", None) is False:  # byte-level BPE (RoBERTa) on words
            tokenizer = super().tokenizer(source, add_prefix_space=True, **kwargs)
        return tokenizer

    def encode(self, examples, tokenizer, path, config) -> Encoded:
        args, names = self.args, self.labels.names
        index = {name: i for i, name in enumerate(names)}
        for sentence in examples:
            for tag, line in zip(sentence.tags, sentence.lines):
                if tag not in index:
                    raise DataError(path, line, f"tag {tag!r} does not occur in the training file {args.train} "
                                    f"(its tags: {list(names)})")
        budget = args.max_length - tokenizer.num_special_tokens_to_add(pair=False)
        if budget < 1:
            raise ValueError(f"--max-length {args.max_length} leaves no room for words after the model's "
                             f"{args.max_length - budget} special tokens")
        pieces = tokenizer([s.words for s in examples], is_split_into_words=True, add_special_tokens=False)
        spans = []  # (sentence, first word, end word) of every window
        split = cut = 0
        for k, sentence in enumerate(examples):
            counts = [0] * len(sentence.words)
            for w in pieces.word_ids(k):
                counts[w] += 1
            windows = word_windows(counts, budget)
            split += len(windows) > 1
            cut += sum(c > budget for c in counts)
            spans += [(k, first, end) for first, end in windows]
            for i, count in enumerate(counts):
                if count == 0 and len(self._pieceless) < 1000:
                    self._pieceless.append(f"{path}:{sentence.lines[i]} ({sentence.words[i]!r})")
        encoded = tokenizer([examples[k].words[a:b] for k, a, b in spans], is_split_into_words=True,
                            truncation=True, max_length=args.max_length, return_token_type_ids=True)
        later = continuation_tags(names)
        labels, info = [], []
        for j, (k, first, _) in enumerate(spans):
            word_ids, tags, previous = encoded.word_ids(j), examples[k].tags, None
            row = []
            for w in word_ids:
                if w is None:
                    row.append(IGNORED)
                elif w != previous:
                    row.append(index[tags[first + w]])
                else:
                    row.append(later[index[tags[first + w]]] if args.label_all_tokens else IGNORED)
                previous = w
            labels.append(row)
            info.append((k, first, word_ids))
        if str(path) == str(args.train):
            self._windows = {"sentences": len(examples), "split": split, "windows": len(spans), "cut words": cut}
        return Encoded(encoded["input_ids"], encoded["token_type_ids"], labels,
                       units=[sum(label != IGNORED for label in row) for row in labels], info=info,
                       examples=list(examples))

    def notes(self) -> list[str]:
        w, notes = self._windows, []
        if w["split"]:
            notes.append(f"{w['split']} of {w['sentences']} training sentences are longer than --max-length "
                         f"{self.args.max_length} tokens: split at word boundaries into windows "
                         f"({w['windows']} windows in all)")
        if self._pieceless:
            notes.append(f"{len(self._pieceless)} words give the tokenizer no word piece, so they are neither "
                         f"trained on nor scored (as transformers' run_ner leaves them): "
                         f"{', '.join(self._pieceless[:3])}{', ...' if len(self._pieceless) > 3 else ''}")
        if w["cut words"]:
            notes.append(f"{w['cut words']} training words alone have more word pieces than a window holds: "
                         "their later pieces are cut (their first, which carries the tag, is kept)")
        return notes

    def fingerprint(self) -> dict:
        args = self.args
        return {"task": self.name, "label_all_tokens": args.label_all_tokens, "tokens_column": args.tokens_column,
                "tags_column": args.tags_column}

    def collate(self, labels, longest):
        out = torch.full((len(labels), longest), IGNORED, dtype=torch.long)
        for row, values in enumerate(labels):
            out[row, :len(values)] = torch.tensor(values)
        return out

    def loss_sum(self, outputs, labels, attention_mask, totals=None):
        logits = outputs.logits.float()
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORED, reduction="sum")

    def predict(self, outputs, batch) -> list:
        lengths = batch["attention_mask"].sum(-1).tolist()
        return [row[:n] for row, n in zip(outputs.logits.argmax(-1).tolist(), lengths)]

    def score(self, data, predictions) -> dict:
        """Each word's tag from its first piece's prediction, the sentences' windows put back together (a
        word without a word piece is left out of both sides)."""
        names = self.labels.names
        predicted = [{} for _ in data.examples]  # sentence -> word -> tag, in word order
        for (k, first, word_ids), tokens in zip(data.info, predictions):
            previous = None
            for w, tag in zip(word_ids, tokens):
                if w is not None and w != previous:
                    predicted[k][first + w] = names[tag]
                previous = w
        true = [[s.tags[i] for i in sorted(words)] for s, words in zip(data.examples, predicted)]
        scores = entity_scores(true, [[words[i] for i in sorted(words)] for words in predicted])
        return {"f1": scores["f1"], "precision": scores["precision"], "recall": scores["recall"],
                "accuracy": scores["accuracy"], "per_type": scores["per_type"]}


TASK = TokenClassification
