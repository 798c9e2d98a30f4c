"""Judge health: how well a judge tells candidates apart, and the optional stop when it cannot."""

import math

import pytest

from srlm.config import JudgeHealthConfig
from srlm.metrics import score_spread
from srlm.scores import health_problems


def test_score_spread_counts_ties_within_a_prompt_only():
    # p1: 3, 3, 5 (one tie of 3 pairs); p2: 4, 4 (all tied); p3: one scored candidate (no pair)
    m = score_spread([3, 3, 5, 4, 4, 2, None], ["p1", "p1", "p1", "p2", "p2", "p3", "p3"])
    assert m["tie_rate"] == pytest.approx(2 / 4)
    assert m["all_tied_rate"] == pytest.approx(1 / 2)
    counts = [1, 2, 1, 2]  # scores 2, 3, 4, 5
    assert m["score_entropy"] == pytest.approx(-sum(c / 6 * math.log2(c / 6) for c in counts))
    assert score_spread([4.0, 4.0, 4.0], ["a", "a", "b"])["score_entropy"] == 0
    assert math.isnan(score_spread([None], ["a"])["tie_rate"])


def metrics(**kw):
    return {
        "candidates": 10,
        "candidates_scored": 10,
        "tie_rate": 0.2,
        "score_entropy": 1.5,
        "digit_mass_mean": 0.9,
    } | kw


def test_health_problems_name_each_threshold_crossed():
    h = JudgeHealthConfig(enabled=True)
    assert health_problems(metrics(), h, "expected") == []
    bad = health_problems(metrics(tie_rate=0.95, digit_mass_mean=0.1, candidates_scored=2), h, "expected")
    assert bad == ["scored rate 0.2, needs >= 0.5", "tie rate 0.95, needs <= 0.9", "digit mass 0.1, needs >= 0.5"]
    # the digit mass is the expected readout's; a parsed-score judge is not held to it
    assert health_problems(metrics(digit_mass_mean=0.1), h, "sampled") == []
    assert health_problems(metrics(tie_rate=float("nan")), h, "sampled") == ["tie rate undefined (needs <= 0.9)"]
