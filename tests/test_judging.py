import pytest

from srlm.judging import agrees_with_ranking, average, judge_metrics, parse_score


@pytest.mark.parametrize("text,score,status", [
    ("Relevant and complete.\nScore: 4", 4, "ok"),
    ("Good answer. Score: 5.", 5, "ok"),
    ("**Score:** 3", 3, "ok"),
    ("score : 2/5", 2, "ok"),
    ("It starts at Score: 2 but then ... Score: 2", 2, "ok"),        # same value repeated
    ("No verdict at all.", None, "no_score"),
    ("", None, "no_score"),
    ("Score: 4.5", None, "non_integer"),
    ("Score: five", None, "not_a_number"),
    ("Score: 7", None, "out_of_range"),
    ("Score: -1", None, "out_of_range"),
    ("Score: 3 because the answer is fine", None, "not_at_end"),
    ("First I thought Score: 2. Final Score: 4", None, "conflicting_scores"),
    ("blah " * 2000, None, "no_score"),                            # runaway repetition
])
def test_parse_score_cases(text, score, status):
    parsed = parse_score(text)
    assert (parsed.score, parsed.status) == (score, status)


def test_average_ignores_invalid_and_never_invents_a_score():
    assert average([4, None, 2]) == 3
    assert average([None, None]) is None


def test_judge_metrics_counts_and_histogram():
    m = judge_metrics(["ok", "ok", "no_score", "non_integer"], [5, 0, None, None])
    assert m["judgments"] == 4 and m["parse_rate"] == 0.5
    assert m["status_no_score"] == 1 and m["status_non_integer"] == 1
    assert m["score_5"] == 1 and m["score_0"] == 1 and m["score_3"] == 0


def test_agreement_with_human_ranking():
    assert agrees_with_ranking([5, 3, 1], [0, 1, 2])
    assert agrees_with_ranking([1, 5, 3], [2, 0, 1])
    assert not agrees_with_ranking([5, 5, 1], [0, 1, 2])   # tie between different ranks
    assert not agrees_with_ranking([1, 3, 5], [0, 1, 2])
    assert not agrees_with_ranking([5, None, 1], [0, 1, 2])
