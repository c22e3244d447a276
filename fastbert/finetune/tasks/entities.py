"""Entity-level precision, recall and F1 for token tagging, equal to seqeval 1.2.2 in its default mode.

seqeval's default (``mode=None``) reads chunks the way CoNLL's ``conlleval`` does, with one rule set for BIO/IOB2,
IOB1 and BIOES (``S-``/``E-``) tags alike. A tag is split into a marker, its first character, and a type, the text
after the first ``-`` that follows the marker (the rest of the tag when there is no ``-``; ``"_"`` when that is
empty), so ``"O"`` is marker ``O`` of type ``_`` and a bare ``"PER"`` is marker ``P`` of type ``ER``. Between two
neighbouring tokens an open chunk closes, and a new one opens, by the rules of ``_closes`` and ``_opens``; a chunk
still open at the end of a sentence closes there.

Sentences are scored as seqeval scores them: joined into one sequence with an ``"O"`` after each. For tags of the
B/I/E/S/O schemes that is the same as matching entities sentence by sentence; only with tags off every scheme
(such as a bare ``"Z"``, or ``".X"``) can a chunk close without having opened in its own sentence, and then, as in
seqeval, it is taken to begin where the last chunk began, in an earlier sentence.

Pure Python: seqeval (and numpy) are needed only by the tests that compare against it.
"""

from __future__ import annotations

from itertools import chain
from typing import Sequence

OUTSIDE = "O"  # the tag that is in no entity; also closes any chunk still open at the end of a sentence
UNTYPED = "_"  # the type of a tag that names none, such as "O" or "B"


def _split_tag(tag: str) -> tuple[str, str]:
    """``(marker, type)`` of one tag: ``"B-PER"`` -> ``("B", "PER")``, ``"O"`` -> ``("O", "_")``."""
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"a tag must be a non-empty string, got {tag!r}")
    marker, rest = tag[0], tag[1:]
    _, dash, after_dash = rest.partition("-")
    return marker, (after_dash if dash else rest) or UNTYPED


def _closes(prev_marker: str, prev_type: str, marker: str, entity_type: str) -> bool:
    """Whether a chunk ends on the previous token, judged from it and the current token."""
    if prev_marker in ("E", "S"):  # an end or a single-token entity closes whatever follows
        return True
    if prev_marker in ("B", "I") and marker in ("B", "S", "O"):
        return True
    return prev_marker not in ("O", ".") and prev_type != entity_type


def _opens(prev_marker: str, prev_type: str, marker: str, entity_type: str) -> bool:
    """Whether a chunk begins on the current token, judged from it and the previous token."""
    if marker in ("B", "S"):
        return True
    if marker in ("I", "E") and prev_marker in ("E", "S", "O"):  # a continuation with nothing to continue
        return True
    return marker not in ("O", ".") and prev_type != entity_type


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of one sentence, as seqeval's ``get_entities`` finds them.

    Args:
        tags: the sentence's tags (``str``), one per token, e.g. ``["B-PER", "I-PER", "O", "S-LOC"]``.

    Returns:
        ``[(type, start, end), ...]`` with ``start`` and ``end`` inclusive token indices, in order of ``end``
        (seqeval's order), e.g. ``[("PER", 0, 1), ("LOC", 3, 3)]``.

    Raises:
        ValueError: a tag is not a non-empty string (pass one sentence, not a list of sentences).
    """
    entities = []
    prev_marker, prev_type, begin = OUTSIDE, "", 0  # before the first token: outside, of no type at all
    for position, tag in enumerate(chain(tags, [OUTSIDE])):
        marker, entity_type = _split_tag(tag)
        if _closes(prev_marker, prev_type, marker, entity_type):
            entities.append((prev_type, begin, position - 1))
        if _opens(prev_marker, prev_type, marker, entity_type):
            begin = position
        prev_marker, prev_type = marker, entity_type
    return entities


def _check_shapes(true: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    if len(true) != len(pred):
        missing = min(len(true), len(pred))
        raise ValueError(f"true has {len(true)} sentences but pred has {len(pred)}: sentence {missing} is missing")
    for index, (true_tags, pred_tags) in enumerate(zip(true, pred)):
        if len(true_tags) != len(pred_tags):
            raise ValueError(f"sentence {index} has {len(true_tags)} true tags but {len(pred_tags)} predicted ones")


def _entities_by_type(sentences: Sequence[Sequence[str]]) -> dict[str, set[tuple[int, int]]]:
    """``{type: {(start, end), ...}}`` over all sentences, read as seqeval reads them: one sequence, with an
    ``"O"`` after each sentence, so that start and end are offsets into that sequence."""
    joined = [tag for tags in sentences for tag in chain(tags, [OUTSIDE])]
    by_type: dict[str, set[tuple[int, int]]] = {}
    for entity_type, start, end in get_entities(joined):
        by_type.setdefault(entity_type, set()).add((start, end))
    return by_type


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _scores(found: int, predicted: int, actual: int) -> dict:
    precision, recall = _ratio(found, predicted), _ratio(found, actual)
    return {"precision": precision, "recall": recall, "f1": _f1(precision, recall)}


def entity_scores(true: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """Entity-level scores of predicted tags against true ones, as seqeval 1.2.2 computes them by default.

    An entity counts as found when the prediction has one of the same type, start and end in the same sentence
    (for tags off every scheme, see the module docstring).
    Where a denominator is 0 the score is 0.0 (seqeval's ``zero_division`` default, less its warning).

    Args:
        true: the true tags (``str``), one sequence per sentence.
        pred: the predicted tags, of the same shape as ``true``.

    Returns:
        ``{"precision": float, "recall": float, "f1": float, "accuracy": float, "per_type": {type: {"precision":
        float, "recall": float, "f1": float, "support": int}}}``: precision, recall and f1 micro-averaged over all
        entities (seqeval's ``precision_score``, ``recall_score``, ``f1_score``); accuracy the fraction of tokens
        whose tags are equal (seqeval's ``accuracy_score``; 0.0 for no tokens); ``per_type`` for every type that
        has an entity in ``true`` or ``pred``, sorted by type (the rows of seqeval's ``classification_report``),
        where support is the number of true entities of the type.

    Raises:
        ValueError: ``true`` and ``pred`` differ in their number of sentences or in a sentence's length (the
            message names the sentence), or a tag is not a non-empty string.
    """
    _check_shapes(true, pred)
    true_entities, pred_entities = _entities_by_type(true), _entities_by_type(pred)
    per_type = {}
    for entity_type in sorted(true_entities.keys() | pred_entities.keys()):
        true_spans, pred_spans = true_entities.get(entity_type, set()), pred_entities.get(entity_type, set())
        per_type[entity_type] = {**_scores(len(true_spans & pred_spans), len(pred_spans), len(true_spans)),
                                 "support": len(true_spans)}
    found = sum(len(spans & pred_entities.get(entity_type, set())) for entity_type, spans in true_entities.items())
    predicted = sum(len(spans) for spans in pred_entities.values())
    actual = sum(len(spans) for spans in true_entities.values())
    tokens = sum(len(tags) for tags in true)
    equal = sum(t == p for true_tags, pred_tags in zip(true, pred) for t, p in zip(true_tags, pred_tags))
    return {**_scores(found, predicted, actual), "accuracy": _ratio(equal, tokens), "per_type": per_type}
