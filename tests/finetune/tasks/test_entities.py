"""fastbert.finetune.tasks.entities: hand-worked entities, and scores against seqeval's default mode."""

import random
import warnings

import pytest
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

from fastbert.finetune.tasks.entities import entity_scores, get_entities

TYPES = ("PER", "LOC", "ORG")
TAGS = ("O",) + tuple(f"{marker}-{kind}" for marker in "BIES" for kind in TYPES)
# tags off every scheme: no prefix, no type, seqeval's "." marker, an "O" with a type, a one-letter non-marker
ODD_TAGS = TAGS + ("PER", "B", "I", "E", "S", ".", ".PER", "O-PER", "Z", "Z-LOC", "B-", "B-I-PER")
AVERAGES = ("micro avg", "macro avg", "weighted avg")


@pytest.mark.parametrize("tags, expected", [
    pytest.param(["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)], id="bio"),
    pytest.param(["B-PER", "B-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 2)], id="bio-b-after-b"),
    pytest.param(["O", "I-PER", "I-PER", "O", "I-LOC"], [("PER", 1, 2), ("LOC", 4, 4)], id="i-after-o-starts"),
    pytest.param(["B-PER", "I-PER", "I-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 2, 3)], id="type-change-in-run"),
    pytest.param(["B-PER", "I-LOC", "B-LOC"], [("PER", 0, 0), ("LOC", 1, 1), ("LOC", 2, 2)], id="type-change-b-i"),
    pytest.param(["S-PER", "B-LOC", "I-LOC", "E-LOC", "E-LOC", "S-ORG", "O", "E-PER"],
                 [("PER", 0, 0), ("LOC", 1, 3), ("LOC", 4, 4), ("ORG", 5, 5), ("PER", 7, 7)], id="bioes"),
    pytest.param(["B-ORG", "E-ORG", "I-ORG", "S-ORG", "I-ORG"],
                 [("ORG", 0, 1), ("ORG", 2, 2), ("ORG", 3, 3), ("ORG", 4, 4)], id="bioes-i-after-e-and-s"),
    pytest.param(["I-PER", "I-PER", "B-PER", "I-PER", "O", "I-LOC"],
                 [("PER", 0, 1), ("PER", 2, 3), ("LOC", 5, 5)], id="iob1"),
    pytest.param(["O", "B-LOC", "I-LOC"], [("LOC", 1, 2)], id="ends-inside-entity"),
    pytest.param(["B", "I", "O", "PER", "PER"], [("_", 0, 1), ("ER", 3, 4)], id="untyped-and-unprefixed"),
    pytest.param(["O", "O"], [], id="all-outside"),
    pytest.param([], [], id="empty"),
])
def test_get_entities_by_hand(tags, expected):
    assert get_entities(tags) == expected


def test_get_entities_takes_any_sequence():
    assert get_entities(("B-PER", "E-PER")) == [("PER", 0, 1)]


def test_entity_scores_by_hand():
    true = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    assert entity_scores(true, pred) == {
        "precision": 0.5, "recall": 0.5, "f1": 0.5, "accuracy": 0.8,
        "per_type": {"MISC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
                     "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}},
    }


def test_entities_do_not_run_across_sentences():
    # the first sentence ends inside an entity; the I- opening the second starts a new one
    true = [["B-PER", "I-PER"], ["I-PER", "O"]]
    pred = [["B-PER", "I-PER"], ["B-PER", "O"]]
    scores = entity_scores(true, pred)
    assert (scores["precision"], scores["recall"], scores["f1"]) == (1.0, 1.0, 1.0)
    assert scores["per_type"]["PER"]["support"] == 2
    assert scores["accuracy"] == 0.75


def test_no_entities_scores_zero():
    scores = entity_scores([["O", "O"], []], [["O", "B-LOC"], []])
    assert scores == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.5,
                      "per_type": {"LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}}}
    assert entity_scores([], []) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0, "per_type": {}}


def test_shape_mismatch_names_the_sentence():
    with pytest.raises(ValueError, match="sentence 1 has 3 true tags but 2"):
        entity_scores([["O"], ["B-PER", "I-PER", "O"]], [["O"], ["B-PER", "O"]])
    with pytest.raises(ValueError, match="true has 2 sentences but pred has 1: sentence 1"):
        entity_scores([["O"], ["O"]], [["O"]])


def test_bad_tag():
    with pytest.raises(ValueError, match="non-empty string"):
        get_entities(["O", ""])
    with pytest.raises(ValueError, match="non-empty string"):
        get_entities([["O"]])


def random_corpus(rng, tags):
    true = [[rng.choice(tags) for _ in range(rng.randrange(9))] for _ in range(rng.randrange(1, 5))]
    pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in sentence] for sentence in true]
    return true, pred


def check_against_seqeval(true, pred):
    ours = entity_scores(true, pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on zero divisions and on tags off every scheme
        theirs = classification_report(true, pred, output_dict=True)
        for key, score in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
            assert ours[key] == pytest.approx(score(true, pred), abs=1e-12), key
        if any(true):  # seqeval's accuracy divides by the number of tokens
            assert ours["accuracy"] == pytest.approx(accuracy_score(true, pred), abs=1e-12)
    assert set(ours["per_type"]) == set(theirs) - set(AVERAGES)
    for kind, row in ours["per_type"].items():
        expected = theirs[kind]
        assert row["support"] == expected["support"]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (expected["precision"], expected["recall"], expected["f1-score"]), abs=1e-12)
    micro = theirs["micro avg"]
    assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx(
        (micro["precision"], micro["recall"], micro["f1-score"]), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_random_tags_match_seqeval(seed):
    rng = random.Random(seed)
    for _ in range(75):
        check_against_seqeval(*random_corpus(rng, TAGS))


def test_odd_tags_match_seqeval():
    rng = random.Random(1234)
    for _ in range(100):
        check_against_seqeval(*random_corpus(rng, ODD_TAGS))


def test_chunk_begun_in_an_earlier_sentence_matches_seqeval():
    # "Z" neither opens a chunk after seqeval's sentence separator "O" nor is outside one, so the chunk that
    # "B-LOC" closes begins where the last one did, in the sentence before: seqeval, and so entity_scores,
    # then count the untyped entities of true and pred as different (per sentence they would be equal)
    true, pred = [["O", "S-PER"], ["Z", "B-LOC"]], [["S-PER", "O"], ["Z", "B-LOC"]]
    check_against_seqeval(true, pred)
    assert entity_scores(true, pred)["per_type"]["_"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
