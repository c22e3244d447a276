"""fastbert.finetune.metrics against scikit-learn."""

import random

import pytest

from fastbert.finetune.metrics import accuracy, macro_f1

metrics = pytest.importorskip("sklearn.metrics")


def reference(predictions, labels):
    return (metrics.accuracy_score(labels, predictions),
            metrics.f1_score(labels, predictions, average="macro", zero_division=0))


def check(predictions, labels):
    expected = reference(predictions, labels)
    assert accuracy(predictions, labels) == pytest.approx(expected[0], abs=1e-12)
    assert macro_f1(predictions, labels) == pytest.approx(expected[1], abs=1e-12)


@pytest.mark.parametrize("classes", [1, 2, 3, 7, 20])
@pytest.mark.parametrize("n", [1, 13, 200])
def test_random_predictions(classes, n):
    rng = random.Random(classes * 1000 + n)
    labels = [rng.randrange(classes) for _ in range(n)]
    # mostly right, so that true positives, false positives and misses all occur
    predictions = [y if rng.random() < 0.6 else rng.randrange(classes) for y in labels]
    check(predictions, labels)


def test_class_only_in_predictions():
    rng = random.Random(1)
    labels = [rng.randrange(3) for _ in range(50)]
    predictions = [rng.randrange(3) for _ in labels]
    predictions[7] = 5
    assert 5 not in labels
    check(predictions, labels)
    assert macro_f1(predictions, labels) < macro_f1(predictions[:7] + [labels[7]] + predictions[8:], labels)


def test_class_only_in_labels():
    rng = random.Random(2)
    labels = [rng.randrange(4) for _ in range(50)] + [9, 9]
    predictions = [y if rng.random() < 0.5 else rng.randrange(4) for y in labels[:-2]] + [0, 1]
    assert 9 not in predictions
    check(predictions, labels)


def test_extremes():
    rng = random.Random(3)
    labels = [rng.randrange(5) for _ in range(40)]
    assert accuracy(labels, labels) == 1.0 and macro_f1(labels, labels) == 1.0
    wrong = [(y + 1) % 5 for y in labels]
    assert accuracy(wrong, labels) == 0.0 and macro_f1(wrong, labels) == 0.0
    check(wrong, labels)


def test_empty():
    assert accuracy([], []) == 0.0
    assert macro_f1([], []) == 0.0
