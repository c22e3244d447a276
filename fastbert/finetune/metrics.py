"""Classification metrics over integer class ids."""

from __future__ import annotations

from typing import Sequence

METRICS = ("macro_f1", "accuracy", "loss")  # the best checkpoint's criterion (loss: lower is better)


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of ``predictions`` equal to ``labels`` (0.0 for none)."""
    _same_length(predictions, labels)
    if not labels:
        return 0.0
    return sum(p == y for p, y in zip(predictions, labels)) / len(labels)


def macro_f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Unweighted mean of the per-class F1 over every class that occurs in ``labels`` or ``predictions``
    (scikit-learn's ``f1_score(average="macro")``); a class with no true positive scores 0."""
    _same_length(predictions, labels)
    classes = sorted(set(labels) | set(predictions))
    if not classes:
        return 0.0
    scores = []
    for c in classes:
        tp = sum(p == c and y == c for p, y in zip(predictions, labels))
        predicted = sum(p == c for p in predictions)
        actual = sum(y == c for y in labels)
        scores.append(2 * tp / (predicted + actual) if tp else 0.0)
    return sum(scores) / len(scores)


def _same_length(predictions: Sequence[int], labels: Sequence[int]) -> None:
    if len(predictions) != len(labels):
        raise ValueError(f"predictions ({len(predictions)}) and labels ({len(labels)}) differ in length")
