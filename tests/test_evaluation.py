import functools
import math

import pytest

from srlm.metrics import (
    accuracy_by_length,
    bootstrap_intervals,
    head_to_head_summary,
    length_bias,
    length_controlled_win_rate,
    longer_wins_rate,
    reward_model_metrics,
    score_histogram,
)
from srlm.scores import combine_orders, parse_verdict


def one(ranks, scores, i="s"):
    return {"id": i, "ranks": ranks, "scores": scores}


# ---------------------------------------------------------------- reward-model metrics (Table 2)


def test_mixed_sets_with_human_ties_model_ties_and_missing_scores():
    sets = [
        # Set 1: human tie between responses 1 and 2, response 3 unscored.
        # Pairs with different human ranks: (0,1) (0,2) (0,3) (1,3) (2,3) -> 5.
        # Correct: (0,1) 5>4, (0,2) 5>4 -> 2; (0,3) (1,3) (2,3) have a missing score -> wrong, not ties.
        # The model tie on (1,2) is not counted: the human tied that pair too.
        one([0, 1, 1, 2], [5, 4, 4, None], "s1"),
        # Set 2: pairs (0,1) (0,2) (1,2) -> 3. (0,1) model tie -> wrong, a tie; (0,2) and (1,2) correct.
        one([0, 1, 2], [4, 4, 2], "s2"),
    ]
    m = reward_model_metrics(sets)
    assert (m["sets"], m["responses"]) == (2, 7)
    assert m["scored_rate"] == pytest.approx(6 / 7)
    assert m["pairs"] == 8  # 5 + 3
    assert m["pairwise_accuracy"] == pytest.approx(4 / 8)  # (2 + 2) / 8
    assert m["pairwise_tie_rate"] == pytest.approx(1 / 8)
    # Only s1's first response scores 5 (rounded), and it is s1's best.
    assert (m["five_best_count"], m["five_best"]) == (1, 1.0)
    # s1 has a missing score; s2's model ties a pair the human did not -> no exact match.
    assert m["exact_match"] == 0.0
    # s1 scored part: scores (5,4,4) vs -ranks (0,-1,-1): same ordering, ties in the same place
    #   -> rho = 1, tau-b = 1.
    # s2: scores (4,4,2) -> average ranks (2.5,2.5,1); -ranks (0,-1,-2) -> ranks (3,2,1).
    #   rho = Pearson of the ranks: deviations (.5,.5,-1) and (1,0,-1): cov 1.5, var 1.5 and 2
    #   -> 1.5 / sqrt(1.5*2) = sqrt(3)/2 = 0.8660.
    #   tau-b: concordant (0,2) (1,2) = 2, discordant 0; pair (0,1) tied in x only.
    #   n0 = 3, ties x = 1, ties y = 0 -> 2 / sqrt((3-1)*(3-0)) = 2/sqrt(6) = 0.8165.
    assert m["correlation_sets"] == 2
    assert m["spearman"] == pytest.approx((1 + math.sqrt(3) / 2) / 2)
    assert m["kendall"] == pytest.approx((1 + 2 / math.sqrt(6)) / 2)


def test_perfect_judge_scores_one_everywhere():
    sets = [one([0, 1, 2, 3], [5, 4, 3, 2]), one([0, 1, 1], [5, 3, 3]), one([0, 1], [4.8, 1.2])]
    m = reward_model_metrics(sets)
    # pairs: 6 + 2 (the human tie (1,2) excluded) + 1 = 9, all correct, none tied
    assert m["pairs"] == 9
    assert m["pairwise_accuracy"] == 1.0 and m["pairwise_tie_rate"] == 0.0
    assert m["five_best"] == 1.0 and m["five_best_count"] == 2  # 4.8 is no "5 out of 5" when sampled
    assert m["exact_match"] == 1.0 and m["scored_rate"] == 1.0
    assert m["spearman"] == pytest.approx(1.0) and m["kendall"] == pytest.approx(1.0)
    assert m["correlation_sets"] == 3


def test_reversed_judge():
    m = reward_model_metrics([one([0, 1, 2], [1, 2, 3]), one([0, 1, 2, 3], [0, 1, 2, 5])])
    # pairs 3 + 6 = 9, all in the wrong order; the only 5 is the worst response of set 2
    assert m["pairs"] == 9 and m["pairwise_accuracy"] == 0.0 and m["pairwise_tie_rate"] == 0.0
    assert m["spearman"] == pytest.approx(-1.0) and m["kendall"] == pytest.approx(-1.0)
    assert m["exact_match"] == 0.0
    assert (m["five_best_count"], m["five_best"]) == (1, 0.0)


def test_constant_judge_ties_everything_and_has_no_correlation():
    m = reward_model_metrics([one([0, 1, 2], [3, 3, 3]), one([0, 1], [3, 3])])
    assert m["pairs"] == 4 and m["pairwise_accuracy"] == 0.0 and m["pairwise_tie_rate"] == 1.0
    assert m["correlation_sets"] == 0
    assert math.isnan(m["spearman"]) and math.isnan(m["kendall"])
    assert m["five_best_count"] == 0 and math.isnan(m["five_best"])
    assert m["exact_match"] == 0.0


def test_five_best_with_continuous_scores():
    sets = [
        one([0, 1], [4.6, 2.0]),  # 4.6 rounds to 5 and is the best -> counts, best
        one([0, 1], [3.0, 4.4]),  # 4.4 rounds to 4 -> not counted
        one([0, 1], [4.0, 4.5]),  # 4.5 rounds half up to 5 but is not the best -> counts, not best
        one([1, 0, 0], [2.0, 1.0, 5.0]),  # tie for first: a 5 on either rank-0 response is "best"
    ]
    m = reward_model_metrics(sets, "expected")
    # counted: 4.6 (best), 4.5 (not), 5.0 (best) -> 2 / 3
    assert m["five_best_count"] == 3
    assert m["five_best"] == pytest.approx(2 / 3)


def test_five_best_under_the_sampled_readout_needs_every_judgment_to_say_5():
    # judgments 5, 5, 4 average 4.67: no "perfect 5 out of 5" for the parsed readout
    sets = [one([1, 0], [14 / 3, 3.0]), one([0, 1], [5.0, 2.0])]
    m = reward_model_metrics(sets, "sampled")
    assert (m["five_best_count"], m["five_best"]) == (1, 1.0)
    m = reward_model_metrics(sets, "expected")  # 4.67 rounds to 5 for the expected readout
    assert (m["five_best_count"], m["five_best"]) == (2, 0.5)


def test_pooled_correlations_keep_the_sets_a_per_set_mean_skips():
    # a perfect set and a set the judge scored constant: the per-set mean sees only the first
    m = reward_model_metrics([one([0, 1, 2], [5, 4, 3]), one([0, 1, 2], [3, 3, 3])])
    assert m["correlation_sets"] == 1 and m["correlation_sets_skipped"] == 1
    assert m["spearman"] == pytest.approx(1.0) and m["kendall"] == pytest.approx(1.0)
    # Kendall: 3 concordant pairs + 3 judge-tied pairs: 3 / sqrt((6 - 3) * 6)
    assert m["kendall_pooled"] == pytest.approx(3 / math.sqrt(18))
    # Spearman: centred ranks (1, 0, -1) and (0, 0, 0) vs (1, 0, -1) twice: 2 / sqrt(2 * 4)
    assert m["spearman_pooled"] == pytest.approx(2 / math.sqrt(8))
    # a perfect judge is perfect pooled too; a reversed one is -1
    assert reward_model_metrics([one([0, 1, 2], [5, 4, 3]), one([0, 1], [4, 1])])["kendall_pooled"] == 1.0
    rev = reward_model_metrics([one([0, 1, 2], [1, 2, 3]), one([0, 1], [1, 4])])
    assert rev["kendall_pooled"] == -1.0 and rev["spearman_pooled"] == pytest.approx(-1.0)


def test_exact_match_requires_matching_ties():
    assert reward_model_metrics([one([0, 1, 1], [5, 3, 3])])["exact_match"] == 1.0
    # Breaking a human tie keeps pairwise accuracy at 1 (the tied pair is not a pair) but is no exact match.
    m = reward_model_metrics([one([0, 1, 1], [5, 4, 3])])
    assert m["pairwise_accuracy"] == 1.0 and m["exact_match"] == 0.0
    # A missing score on a response tied by the human still spoils the exact match.
    assert reward_model_metrics([one([0, 1, 1], [5, 3, None])])["exact_match"] == 0.0
    # Two sets, one matching -> 1/2.
    m = reward_model_metrics([one([0, 1, 1], [5, 3, 3]), one([0, 1], [2, 2])])
    assert m["exact_match"] == 0.5


def test_sets_with_fewer_than_two_scores_are_skipped_for_correlations():
    m = reward_model_metrics([one([0, 1], [3, None]), one([0, 1, 2], [5, 3, 1])])
    assert m["correlation_sets"] == 1 and m["spearman"] == pytest.approx(1.0)
    # pair (0,1) of set 1 has a missing score: wrong, and not a tie -> 3 correct of 4
    assert m["pairs"] == 4 and m["pairwise_accuracy"] == 0.75 and m["pairwise_tie_rate"] == 0.0
    assert m["scored_rate"] == pytest.approx(4 / 5)


def test_no_sets():
    m = reward_model_metrics([])
    assert m["sets"] == 0 and m["pairs"] == 0
    assert all(math.isnan(m[k]) for k in ("pairwise_accuracy", "exact_match", "spearman", "five_best"))


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        reward_model_metrics([one([0, 1], [3])])


def test_score_histogram_rounds_half_up():
    h = score_histogram([0, 0.49, 0.5, 2, 4.4, 4.5, 5, None, float("nan")])
    assert h == {"score_0": 2, "score_1": 1, "score_2": 1, "score_3": 0, "score_4": 1, "score_5": 2, "unscored": 2}
    with pytest.raises(ValueError):
        score_histogram([6])


# ---------------------------------------------------------------- length bias


def test_length_bias():
    assert length_bias([1, 2, 3, None], [10, 20, 30, 5])["score_length_spearman"] == pytest.approx(1.0)
    assert length_bias([3, 2, 1], [10, 20, 30])["score_length_spearman"] == pytest.approx(-1.0)
    assert math.isnan(length_bias([1, 2, None], [1, 2, 3])["score_length_spearman"])  # 2 scored
    assert math.isnan(length_bias([4, 4, 4], [1, 2, 3])["score_length_spearman"])  # constant


def test_longer_wins_rate():
    pairs = [
        (5, 3, 200, 100),  # higher is longer
        (2, 4, 100, 300),  # higher (b) is longer
        (5, 3, 100, 200),  # higher is shorter
        (4, 4, 100, 200),  # score tie: skipped
        (5, 3, 100, 100),  # length tie: skipped
    ]
    assert longer_wins_rate(pairs) == pytest.approx(2 / 3)
    assert math.isnan(longer_wins_rate([(4, 4, 1, 2)]))
    assert math.isnan(longer_wins_rate([]))


def test_accuracy_by_length_splits_pairs_by_the_preferred_responses_length():
    # ranks 0 (best) .. ; lengths; scores: correct on the pair where the best is shorter, wrong (tie) where it is
    # longer, a missing score counts as wrong, a human tie and an equal length are left out
    sets = [
        {"ranks": [0, 1], "lengths": [10, 50], "scores": [4, 2]},  # preferred shorter, right
        {"ranks": [0, 1], "lengths": [90, 20], "scores": [3, 3]},  # preferred longer, judge tie: wrong
        {"ranks": [1, 0], "lengths": [30, 80], "scores": [1, None]},  # preferred longer, missing: wrong
        {"ranks": [0, 0, 1], "lengths": [5, 40, 40], "scores": [5, 1, 2]},  # (0,1) human tie; (1,2) equal length
    ]
    m = accuracy_by_length(sets)
    # set 4 leaves (0,2): best 5 chars vs 40, scores 5 > 2: preferred shorter, right
    assert (m["pairs_preferred_shorter"], m["accuracy_preferred_shorter"]) == (2, 1.0)
    assert (m["pairs_preferred_longer"], m["accuracy_preferred_longer"]) == (2, 0.0)
    # a length-only judge is right on every "preferred longer" pair and wrong on every other
    by_len = [dict(s, scores=s["lengths"]) for s in sets]
    assert accuracy_by_length(by_len)["accuracy_preferred_shorter"] == 0.0
    assert accuracy_by_length(by_len)["accuracy_preferred_longer"] == 1.0
    assert math.isnan(accuracy_by_length([])["accuracy_preferred_longer"])


# ---------------------------------------------------------------- head-to-head (Figure 3)


@pytest.mark.parametrize(
    "text,verdict",
    [
        ("A is more complete.\nWinner: A", "A"),
        ("Winner: B", "B"),
        ("winner: b.", "B"),
        ("**Winner:** A", "A"),
        ("Winner: **B**!", "B"),
        ("Winner: [A]", "A"),
        ("Both are equally good. Winner: Tie", "tie"),
        ("WINNER: TIE.", "tie"),
        ("At first, Winner: A. On reflection, Winner: B", "B"),  # the last one counts
        ("Winner: B ... no wait. Winner: tie", "tie"),
        ("Winner: A\nWinner: neither", None),  # last one unparsable
        ("Winner: A and B", None),
        ("Winner: Alice", None),
        ("Winner:", None),
        ("A is better.", None),
        ("", None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


# (first, second) -> X's outcome. first: X shown as A; second: X shown as B.
COMBOS = {
    ("A", "A"): "tie",
    ("A", "B"): "win",
    ("A", "tie"): "tie",
    ("A", None): "tie",
    ("B", "A"): "loss",
    ("B", "B"): "tie",
    ("B", "tie"): "tie",
    ("B", None): "tie",
    ("tie", "A"): "tie",
    ("tie", "B"): "tie",
    ("tie", "tie"): "tie",
    ("tie", None): "tie",
    (None, "A"): "tie",
    (None, "B"): "tie",
    (None, "tie"): "tie",
    (None, None): "tie",
}


@pytest.mark.parametrize("first,second", list(COMBOS))
def test_combine_orders(first, second):
    assert combine_orders(first, second) == COMBOS[(first, second)]


def test_combine_orders_table_is_complete():
    assert len(COMBOS) == 16


def test_head_to_head_summary():
    s = head_to_head_summary(["win", "win", "tie", "loss", "win"])
    assert (s["n"], s["win"], s["tie"], s["loss"]) == (5, 3, 1, 1)
    assert s["win_rate"] == pytest.approx(0.6) and s["tie_rate"] == pytest.approx(0.2)
    assert s["loss_rate"] == pytest.approx(0.2)
    assert s["win_rate_ties_half"] == pytest.approx(0.7)  # (3 + 0.5) / 5
    empty = head_to_head_summary([])
    assert empty["n"] == 0 and math.isnan(empty["win_rate"]) and math.isnan(empty["win_rate_ties_half"])
    with pytest.raises(ValueError):
        head_to_head_summary(["draw"])


def test_length_controlled_win_rate_removes_a_pure_length_effect():
    # The longer answer always wins; differences symmetric around zero: -30,-20,-10,10,20,30.
    len_y = [100] * 6
    len_x = [70, 80, 90, 110, 120, 130]
    outcomes = ["loss", "loss", "loss", "win", "win", "win"]
    r = length_controlled_win_rate(outcomes, len_x, len_y)
    # mean d = 0, so a = mean(y) = 0.5 exactly; b > 0.
    assert r["n"] == 6 and r["length_slope"] > 0
    assert r["lc_win_rate"] == pytest.approx(0.5)


def test_length_controlled_win_rate_discounts_a_length_advantage():
    # X is mostly longer and wins when longer: d (in raw units) = -1, 1, 2, 3; y = 0, 1, 1, 1.
    # mean d = 1.25, mean y = 0.75; Sxy = 2.25, Sxx = 8.75 -> b_raw = 0.2571;
    # a = 0.75 - 0.2571 * 1.25 = 0.4286 (= 3/7; a does not depend on the scaling of d).
    r = length_controlled_win_rate(["loss", "win", "win", "win"], [9, 11, 12, 13], [10, 10, 10, 10])
    assert head_to_head_summary(["loss", "win", "win", "win"])["win_rate_ties_half"] == 0.75
    assert r["lc_win_rate"] == pytest.approx(3 / 7)
    assert r["length_slope"] > 0


def test_length_controlled_win_rate_without_length_effect_equals_plain():
    # y = 1,1,1,0 (mean 0.75), d = 1,2,-3,0: Σ d·(y - ȳ) = .25 + .5 - .75 + 0 = 0 -> b = 0, a = 0.75.
    outcomes = ["win", "win", "win", "loss"]
    r = length_controlled_win_rate(outcomes, [11, 12, 7, 10], [10, 10, 10, 10])
    assert r["length_slope"] == pytest.approx(0.0, abs=1e-12)
    assert r["lc_win_rate"] == pytest.approx(0.75)


def test_length_controlled_win_rate_fallbacks():
    # equal lengths everywhere: d has no variance (and s = 0 -> 1) -> plain rate, NaN slope
    r = length_controlled_win_rate(["win", "tie", "loss", "win"], [5] * 4, [5] * 4)
    assert r["lc_win_rate"] == pytest.approx(0.625) and math.isnan(r["length_slope"])
    # constant non-zero difference: no variance in d either
    r = length_controlled_win_rate(["win", "win", "loss"], [20, 30, 40], [10, 20, 30])
    assert r["lc_win_rate"] == pytest.approx(2 / 3) and math.isnan(r["length_slope"])
    # fewer than 3 outcomes
    r = length_controlled_win_rate(["win", "tie"], [10, 50], [20, 5])
    assert r == {"lc_win_rate": pytest.approx(0.75), "length_slope": pytest.approx(math.nan, nan_ok=True), "n": 2}
    with pytest.raises(ValueError):
        length_controlled_win_rate(["win"], [1, 2], [1])


def test_length_controlled_win_rate_is_clipped():
    # y rises steeply with d and d is all positive: the intercept falls below 0 -> clipped to 0.
    r = length_controlled_win_rate(["loss", "tie", "win"], [110, 120, 130], [100, 100, 100])
    assert r["lc_win_rate"] == 0.0 and r["length_slope"] > 0


def test_longer_wins_within_groups_never_pairs_across_groups():
    from srlm.metrics import longer_wins_within_groups

    # group 1: the longer one scores higher (1 of 1); group 2: the shorter wins twice, a tie and a
    # missing score are skipped -> 1 / 3. Across groups (5.0 vs 1.0) would have counted otherwise.
    groups = [[(5.0, 100), (1.0, 10)], [(4.0, 10), (2.0, 50), (2.0, 60), (None, 999)]]
    # group 2 pairs: (4,10)-(2,50): shorter wins; (4,10)-(2,60): shorter wins; (2,50)-(2,60): tie, skipped
    assert longer_wins_within_groups(groups) == pytest.approx(1 / 3)
    assert math.isnan(longer_wins_within_groups([[(3.0, 10)], [(1.0, 20)]]))


# --- 95 % bootstrap intervals ------------------------------------------------------------------------------------


def test_head_to_head_intervals_bracket_the_rate_and_narrow_with_more_prompts():
    even = ["win", "loss"] * 10
    m = head_to_head_summary(even, seed=3)
    assert m["win_rate_ties_half_ci_low"] < 0.5 < m["win_rate_ties_half_ci_high"]
    assert m == head_to_head_summary(even, seed=3)  # seeded
    wider = m["win_rate_ties_half_ci_high"] - m["win_rate_ties_half_ci_low"]
    big = head_to_head_summary(even * 16, seed=3)
    assert big["win_rate_ties_half_ci_high"] - big["win_rate_ties_half_ci_low"] < wider / 2  # ~1/sqrt(16)
    sure = head_to_head_summary(["win"] * 12, seed=3)
    assert sure["win_rate_ties_half_ci_low"] == sure["win_rate_ties_half_ci_high"] == 1.0
    assert "win_rate_ties_half_ci_low" not in head_to_head_summary(even)  # no seed, no interval


def test_table2_intervals_resample_whole_sets():
    TABLE2 = functools.partial(reward_model_metrics, per_set=False)  # as srlm.evaluation bootstraps it
    perfect = [{"id": str(i), "ranks": [0, 1, 2], "scores": [5, 3, 1]} for i in range(8)]
    m = bootstrap_intervals(perfect, TABLE2, ["pairwise_accuracy", "exact_match"], seed=0)
    assert m == {
        "pairwise_accuracy_ci_low": 1.0,
        "pairwise_accuracy_ci_high": 1.0,
        "exact_match_ci_low": 1.0,
        "exact_match_ci_high": 1.0,
    }
    half = perfect[:4] + [{"id": str(i), "ranks": [0, 1, 2], "scores": [1, 3, 5]} for i in range(4)]
    m = bootstrap_intervals(half, TABLE2, ["pairwise_accuracy"], seed=0)
    assert 0.1 < m["pairwise_accuracy_ci_low"] < 0.5 < m["pairwise_accuracy_ci_high"] < 0.9
    # a set's three pairs move together: resampling sets gives a wider interval than resampling pairs would
    pairs = [{"id": str(i), "ranks": [0, 1], "scores": [1, 0] if i < 12 else [0, 1]} for i in range(24)]
    by_pair = bootstrap_intervals(pairs, TABLE2, ["pairwise_accuracy"], seed=0)
    assert (by_pair["pairwise_accuracy_ci_high"] - by_pair["pairwise_accuracy_ci_low"]) < (
        m["pairwise_accuracy_ci_high"] - m["pairwise_accuracy_ci_low"]
    )
    assert math.isnan(bootstrap_intervals(perfect[:1], TABLE2, ["pairwise_accuracy"], 0)["pairwise_accuracy_ci_low"])


def test_the_report_says_which_rates_it_cannot_tell_from_chance():
    from srlm.report import _no_difference

    text = _no_difference("win rate", "prompts", [("m1 vs m0", 0.40, 0.70, 16), ("m2 vs m0", 0.55, 0.80, 16)])
    assert "No detectable difference" in text and "m1 vs m0" in text and "m2 vs m0" not in text
    assert "about 144 prompts" in text  # 16 x (0.15 / 0.05)^2
    assert "away from chance" in _no_difference("win rate", "prompts", [("m2 vs m0", 0.55, 0.80, 16)])
