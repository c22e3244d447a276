"""SQuAD exact match and F1, as the official ``evaluate-v1.1.py`` / ``evaluate-v2.0.py`` scripts compute them.

Answers are compared after :func:`normalize_answer`; F1 is over bags of whitespace tokens. Empty token lists follow
v2.0 (both empty: 1.0, one empty: 0.0), so an unanswerable question (no gold answers) is right when the prediction
is empty. Scores are fractions in [0, 1], not the scripts' percentages. Pure Python, no torch or numpy.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Mapping, Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lower case, drop every ``string.punctuation`` character, replace the whole words a/an/the by a space and
    collapse whitespace to single spaces (stripped), in that order, as the official scripts do."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when ``prediction`` and ``gold`` are equal after :func:`normalize_answer`, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall, tokens counted with multiplicity (a ``Counter`` intersection)
    over the normalized, whitespace-split texts. If either side has no tokens: 1.0 when both have none, else 0.0
    (v2.0's rule; v1.1 gave 0.0 for two empty texts)."""
    pred, ref = _tokens(prediction), _tokens(gold)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], answers: Mapping[str, Sequence[str]]) -> dict:
    """Mean exact match and F1 over every question id in ``answers``, each question scoring its best gold answer.

    ``answers`` maps a question id to its gold answer texts; an empty sequence marks an unanswerable question
    (v2.0). As in v2.0, gold texts that normalize to nothing are dropped and a question left with none is scored
    against ``[""]``. A question missing from ``predictions`` is scored as the empty prediction ``""`` and stays in
    the total (v2.0's script skips it and shrinks the total; v1.1's counts it in the total with a score of 0, which
    is the same result for an answerable question). A prediction for an id not in ``answers`` is a ``ValueError``.

    Returns ``{"exact_match", "f1", "total"}``, fractions in [0, 1] (0.0 when there are no questions); when any
    question is unanswerable, also the v2.0 HasAns/NoAns splits: ``has_answer_exact_match``, ``has_answer_f1``,
    ``has_answer_total``, ``no_answer_exact_match``, ``no_answer_f1``, ``no_answer_total``.
    """
    unknown = sorted(set(predictions) - set(answers))
    if unknown:
        raise ValueError(f"predictions for question ids not in answers: {', '.join(map(repr, unknown))}")
    em: dict[str, float] = {}
    f1: dict[str, float] = {}
    has_answer: dict[str, bool] = {}
    for qid, golds in answers.items():
        if isinstance(golds, str):
            raise TypeError(f"answers[{qid!r}] is a str; give a sequence of gold answer texts")
        has_answer[qid] = bool(golds)
        golds = [g for g in golds if normalize_answer(g)] or [""]
        prediction = predictions.get(qid, "")
        em[qid] = max(exact_match(prediction, g) for g in golds)
        f1[qid] = max(token_f1(prediction, g) for g in golds)

    def summary(qids: list[str], prefix: str = "") -> dict:
        n = len(qids)
        return {f"{prefix}exact_match": sum(em[q] for q in qids) / n if n else 0.0,
                f"{prefix}f1": sum(f1[q] for q in qids) / n if n else 0.0,
                f"{prefix}total": n}

    scores = summary(list(answers))
    if not all(has_answer.values()):
        scores.update(summary([q for q in answers if has_answer[q]], "has_answer_"))
        scores.update(summary([q for q in answers if not has_answer[q]], "no_answer_"))
    return scores
