"""fastbert.finetune.tasks.squad_metric on hand-worked SQuAD v1.1/v2.0 cases."""

import pytest

from fastbert.finetune.tasks.squad_metric import exact_match, normalize_answer, squad_scores, token_f1


def test_normalize_answer():
    # lower -> "the eiffel tower!"; punctuation -> "the eiffel tower"; articles -> " eiffel tower"; whitespace
    assert normalize_answer("The Eiffel  Tower!") == "eiffel tower"
    # articles only as whole words: "theatre", "an" inside "answer" and "a" inside "banana" stay
    assert normalize_answer("A theatre, an answer: a banana") == "theatre answer banana"
    # punctuation goes before articles, so "the-end" -> "theend" (kept), "(the)" -> "the" (dropped)
    assert normalize_answer("the-end (the)") == "theend"
    assert normalize_answer("  a An THE \t\n") == ""


def test_exact_match():
    assert exact_match("the Eiffel Tower!", "Eiffel tower") == 1.0  # both normalize to "eiffel tower"
    assert exact_match("Eiffel Towers", "Eiffel tower") == 0.0


def test_token_f1_partial_overlap():
    # pred tokens [in, paris, france], gold [paris]: common 1; precision 1/3, recall 1/1
    # F1 = 2 * (1/3) * 1 / (1/3 + 1) = (2/3) / (4/3) = 0.5
    assert token_f1("in Paris, France", "Paris") == pytest.approx(0.5)
    assert token_f1("Paris", "Paris") == 1.0
    assert token_f1("London", "Paris") == 0.0  # no common token


def test_token_f1_counts_duplicates():
    # pred [new, york, new], gold [new, york]: Counter intersection {new: 1, york: 1} -> common 2
    # precision 2/3, recall 2/2; F1 = 2 * (2/3) * 1 / (2/3 + 1) = (4/3) / (5/3) = 0.8
    assert token_f1("New York new", "New York") == pytest.approx(0.8)
    # pred [x, x, x], gold [x, y]: common min(3, 1) = 1; precision 1/3, recall 1/2
    # F1 = 2 * (1/6) / (1/3 + 1/2) = (1/3) / (5/6) = 0.4
    assert token_f1("x x x", "x y") == pytest.approx(0.4)


def test_token_f1_empty_sides():
    # "the a" normalizes to no tokens; v2.0: both empty -> 1, one empty -> 0
    assert token_f1("the a", "") == 1.0
    assert exact_match("the a", "") == 1.0
    assert token_f1("", "Paris") == 0.0
    assert token_f1("Paris", "an") == 0.0


def test_squad_scores_max_over_golds():
    answers = {"q1": ["Paris", "in Paris, France", "Paris France"],  # pred "Paris, France"
               "q2": ["Denver Broncos", "the Broncos"]}  # pred "Broncos"
    predictions = {"q1": "Paris, France", "q2": "Broncos"}
    # q1: EM vs "Paris France" = 1; F1 max: vs "Paris" 2*(1/2)*1/(3/2) = 2/3, vs the third 1 -> 1
    # q2: EM vs "the Broncos" ("broncos") = 1; F1 1 -> both means 1
    assert squad_scores(predictions, answers) == {"exact_match": 1.0, "f1": 1.0, "total": 2}
    predictions["q2"] = "Denver"
    # q2: EM 0; F1 vs "Denver Broncos": precision 1, recall 1/2 -> 2/3; vs "broncos": 0 -> 2/3
    # exact_match (1 + 0) / 2 = 0.5; f1 (1 + 2/3) / 2 = 5/6
    scores = squad_scores(predictions, answers)
    assert scores == {"exact_match": 0.5, "f1": pytest.approx(5 / 6), "total": 2}


def test_squad_scores_missing_prediction_counts_as_empty():
    answers = {"q1": ["Paris"], "q2": ["Rome"], "q3": []}
    # q1 right (1, 1); q2 missing -> "" vs "Rome" (0, 0); q3 missing -> "" vs [""] (1, 1)
    scores = squad_scores({"q1": "paris"}, answers)
    assert scores["exact_match"] == pytest.approx(2 / 3) and scores["f1"] == pytest.approx(2 / 3)
    assert scores["total"] == 3


def test_squad_scores_unanswerable_and_splits():
    answers = {"a1": ["Eiffel Tower"], "a2": ["Paris"], "n1": [], "n2": [], "n3": []}
    predictions = {"a1": "the Eiffel Tower!",  # EM 1, F1 1
                   "a2": "in Paris, France",  # EM 0, F1 0.5 (worked above)
                   "n1": "",  # unanswerable, abstained: EM 1, F1 1
                   "n2": "the",  # normalizes to "", so also EM 1, F1 1
                   "n3": "Paris"}  # unanswerable, answered: EM 0, F1 0
    scores = squad_scores(predictions, answers)
    # HasAns: EM (1 + 0) / 2 = 0.5, F1 (1 + 0.5) / 2 = 0.75; NoAns: EM = F1 = (1 + 1 + 0) / 3 = 2/3
    # all: EM (1 + 0 + 1 + 1 + 0) / 5 = 0.6, F1 (1 + 0.5 + 1 + 1 + 0) / 5 = 0.7
    assert scores == {"exact_match": pytest.approx(0.6), "f1": pytest.approx(0.7), "total": 5,
                      "has_answer_exact_match": 0.5, "has_answer_f1": 0.75, "has_answer_total": 2,
                      "no_answer_exact_match": pytest.approx(2 / 3), "no_answer_f1": pytest.approx(2 / 3),
                      "no_answer_total": 3}


def test_squad_scores_golds_that_normalize_to_nothing_are_dropped():
    # v2.0: gold "the" is dropped, leaving ["Paris"], so the empty prediction no longer matches it; the question
    # still counts as answerable (it has gold texts), so no HasAns/NoAns split is reported
    assert squad_scores({"q": ""}, {"q": ["the", "Paris"]}) == {"exact_match": 0.0, "f1": 0.0, "total": 1}
    # with only such golds it is scored against [""]
    assert squad_scores({"q": ""}, {"q": ["the"]}) == {"exact_match": 1.0, "f1": 1.0, "total": 1}


def test_squad_scores_all_unanswerable_has_empty_has_answer_split():
    scores = squad_scores({"n": ""}, {"n": []})
    assert scores["has_answer_total"] == 0 and scores["has_answer_exact_match"] == scores["has_answer_f1"] == 0.0
    assert scores["no_answer_total"] == 1 and scores["exact_match"] == 1.0


def test_squad_scores_empty_answers():
    assert squad_scores({}, {}) == {"exact_match": 0.0, "f1": 0.0, "total": 0}


def test_squad_scores_unknown_prediction_id():
    with pytest.raises(ValueError, match="'stray'"):
        squad_scores({"q1": "Paris", "stray": "Rome"}, {"q1": ["Paris"]})


def test_squad_scores_rejects_a_bare_string_of_golds():
    with pytest.raises(TypeError, match="'q1'"):
        squad_scores({"q1": "Paris"}, {"q1": "Paris"})
