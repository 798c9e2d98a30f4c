import math
import random

import pytest

from srlm.pairing import select_pairs, select_positives


def row(pid, j, score):
    return {
        "prompt_id": pid,
        "candidate_id": f"{pid}-c{j}",
        "prompt": f"prompt {pid}",
        "response": f"{pid} r{j}",
        "score": score,
    }


def test_best_vs_worst_with_ties_and_too_few_dropped():
    judged = [
        row("a", 0, 2.0),
        row("a", 1, 4.5),
        row("a", 2, 1.0),
        row("a", 3, 4.5),
        row("b", 0, 3.0),
        row("b", 1, 3.0),  # tie -> dropped
        row("c", 0, 5.0),
        row("c", 1, None),
        row("c", 2, None),
    ]  # one valid -> dropped
    pairs, counts = select_pairs(judged, min_valid=2)
    assert [p["id"] for p in pairs] == ["a"]
    assert pairs[0]["chosen_id"] == "a-c1"  # first of the tied best, in id order
    assert pairs[0]["rejected_id"] == "a-c2"
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("a r1", "a r2")
    assert counts["dropped_tie"] == 1 and counts["dropped_too_few_valid"] == 1 and counts["pairs"] == 1


def test_pairs_do_not_depend_on_row_order():
    judged = [row(p, j, float((j * 7 + len(p)) % 5)) for p in ("x", "yy", "zzz") for j in range(4)]
    shuffled = judged[:]
    random.Random(0).shuffle(shuffled)
    assert select_pairs(judged)[0] == select_pairs(shuffled)[0]


def test_positive_only_variant_keeps_what_scored_5_under_each_readout():
    judged = [
        row("a", 0, 5.0),
        row("a", 1, 14 / 3),
        row("a", 2, 4.5),
        row("b", 0, None),
        row("b", 1, 5.0) | {"finish_reason": "length"},
    ]
    pos, counts = select_positives(judged, "sampled")
    assert [p["id"] for p in pos] == ["a-c0"] and counts["positives"] == 1  # 5, 5, 4 is no 5
    assert counts["truncated_not_chosen"] == 1  # b-c1 was cut off
    pos, _ = select_positives(judged, "expected")  # the expected score rounds to 5
    assert [p["id"] for p in pos] == ["a-c0", "a-c1", "a-c2"]
    assert [p["id"] for p in select_positives(judged, "sampled", truncated=True)[0]] == ["a-c0", "b-c1"]


def test_truncated_candidates_are_never_chosen_by_default():
    judged = [
        row("a", 0, 5.0) | {"finish_reason": "length"},
        row("a", 1, 4.0) | {"finish_reason": "stop"},
        row("a", 2, 1.0) | {"finish_reason": "length"},  # may still be rejected
        row("b", 0, 5.0) | {"finish_reason": "length"},
        row("b", 1, 2.0) | {"finish_reason": "stop"},
        row("c", 0, 3.0) | {"finish_reason": "length"},
        row("c", 1, 1.0) | {"finish_reason": "length"},
    ]
    pairs, counts = select_pairs(judged)
    by_id = {p["id"]: p for p in pairs}
    assert (by_id["a"]["chosen_id"], by_id["a"]["rejected_id"]) == ("a-c1", "a-c2")
    assert "b" not in by_id and "c" not in by_id  # b: only the worst is complete; c: none is
    assert counts["truncated_not_chosen"] == 1 and counts["dropped_truncated"] == 2
    pairs, counts = select_pairs(judged, truncated_chosen=True)
    assert [p["chosen_id"] for p in pairs] == ["a-c0", "b-c0", "c-c0"] and not counts["dropped_truncated"]


def scored(pid, j, score, expected=None, response=None):
    return row(pid, j, score) | {"expected_score": expected, "response": response or f"{pid} r{j}"}


def test_all_tied_prompts_are_dropped_unless_the_other_readout_is_asked_to_break_them():
    judged = [
        scored("a", 0, 3.0, 2.9),
        scored("a", 1, 3.0, 3.4),
        scored("a", 2, 3.0, 3.1),  # all tied
        scored("b", 0, 4.0, 1.0),
        scored("b", 1, 4.0, 4.2),
        scored("b", 2, 2.0, 2.0),  # tied best
        scored("c", 0, 3.0, 3.0),
        scored("c", 1, 3.0, 3.0),  # tied both ways
        scored("d", 0, 3.0, None),
        scored("d", 1, 3.0, None),
    ]  # no second score
    # the paper (the default): every prompt whose candidates all tie is discarded
    pairs, counts = select_pairs(judged)
    assert [(p["id"], p["chosen_id"], p["rejected_id"]) for p in pairs] == [("b", "b-c0", "b-c2")]
    assert counts["dropped_tie"] == 3 and not counts["tie_broken"]
    # opt-in: the other readout decides
    pairs, counts = select_pairs(judged, tiebreak="expected_score")
    by_id = {p["id"]: p for p in pairs}
    assert (by_id["a"]["chosen_id"], by_id["a"]["rejected_id"]) == ("a-c1", "a-c0")
    assert (by_id["b"]["chosen_id"], by_id["b"]["rejected_id"]) == ("b-c1", "b-c2")
    assert set(by_id) == {"a", "b"}
    assert counts["tie_broken"] == 1 and counts["dropped_tie"] == 2 and counts["pairs"] == 2


def test_length_control_takes_the_shortest_of_the_top_tier_and_the_longest_of_the_bottom():
    # S_max = 5, S_min = 1; ρ = 0.25: chosen from [4, 5], rejected from [1, 2]
    judged = [
        scored("a", 0, 5.0, response="x" * 300),
        scored("a", 1, 4.0, response="x" * 40),
        scored("a", 2, 3.0, response="x" * 10),  # shortest of all, but below the top tier
        scored("a", 3, 1.0, response="x" * 20),
        scored("a", 4, 2.0, response="x" * 90),  # the longest of the bottom tier
        scored("a", 5, 2.5, response="x" * 500),  # longer still, but above the bottom tier
    ]
    pairs, counts = select_pairs(judged, length_rho=0.25)
    assert (pairs[0]["chosen_id"], pairs[0]["rejected_id"]) == ("a-c1", "a-c4")
    assert counts["length_controlled"] == 1
    # ρ = 0 is the plain rule: highest vs lowest, lengths ignored
    plain = select_pairs(judged)
    assert select_pairs(judged, length_rho=0.0) == plain
    assert (plain[0][0]["chosen_id"], plain[0][0]["rejected_id"]) == ("a-c0", "a-c3")
    # ρ = 1: every candidate is in both tiers; the shortest vs the longest, which the scores contradict here
    both = [scored("b", 0, 4.0, response="x" * 90), scored("b", 1, 1.0, response="x")]
    pairs, counts = select_pairs(both, length_rho=1.0)
    assert pairs == [] and counts["dropped_overlap"] == 1


@pytest.mark.parametrize("seed", range(20))
def test_length_control_at_rho_zero_is_todays_rule_and_never_pairs_a_candidate_with_itself(seed):
    rng = random.Random(seed)
    judged = [
        scored(p, j, rng.choice([None, 1.0, 2.0, 2.5, 4.0, 5.0]), response="x" * rng.randint(1, 50))
        for p in "abcdef"
        for j in range(4)
    ]
    assert select_pairs(judged, length_rho=0.0) == select_pairs(judged)
    for rho in (0.1, 0.4, 0.6, 1.0):
        for pair in select_pairs(judged, length_rho=rho)[0]:
            assert pair["chosen_id"] != pair["rejected_id"] and pair["chosen_score"] > pair["rejected_score"]


def test_length_rho_per_iteration():
    from srlm.pairing import rho_for

    assert rho_for(0.3, "2") == 0.3
    assert [rho_for([0.0, 0.32, 0.4], t) for t in ("1", "2", "3", "4")] == [0.0, 0.32, 0.4, 0.4]


def test_consistency_measures():
    from srlm.pairing import consistency

    cur = {"c0": 4.0, "c1": 3.0, "c2": 2.0, "c3": 1.0}
    assert consistency(cur, dict(cur)) == 1.0
    assert consistency(cur, {k: -v for k, v in cur.items()}) == 0.0
    # one discordant pair of 6: tau = (5 - 1) / 6, C = (tau + 1) / 2 = 5/6
    swapped = cur | {"c2": 0.5, "c3": 1.5}
    assert abs(consistency(cur, swapped) - 5 / 6) < 1e-9
    # spearman: d^2 sum = 2 -> rho = 1 - 6*2/(4*15) = 0.8 -> C = 0.9
    assert abs(consistency(cur, swapped, "spearman") - 0.9) < 1e-9
    assert consistency(cur, {k: 1.0 for k in cur}) == 0.5  # previous model ties everything
    assert consistency(cur, {"c0": 1.0}) is None  # fewer than two aligned
    with pytest.raises(ValueError, match="unknown consistency"):
        consistency(cur, swapped, "top_bottom")


def test_consistency_keeps_tied_scores_tied():
    """CREAM's code ranks ordinally, so a tie's order would decide C; tau-b counts a tie as neither."""
    from srlm.pairing import consistency

    cur = {"c0": 3.0, "c1": 2.0, "c2": 1.0}
    # the previous model ties c0 and c1: 2 concordant pairs, 1 tied -> tau_b = 2 / sqrt(3 * 2)
    c = consistency(cur, {"c0": 2.0, "c1": 2.0, "c2": 1.0})
    assert c == pytest.approx((2 / math.sqrt(6) + 1) / 2)
    # and the ids' order does not matter
    assert consistency(cur, {"c1": 2.0, "c0": 2.0, "c2": 1.0}) == c


def test_consistency_is_aligned_by_candidate_id_not_position():
    from srlm.pairing import attach_consistency

    cur = [scored("a", j, s) for j, s in enumerate([4.0, 3.0, 2.0])] + [
        scored("b", j, s) for j, s in enumerate([1.0, 2.0, 3.0])
    ]
    # the previous model skipped prompt "a" entirely and its file is in another order
    prev = [scored("b", 2, 3.0), scored("b", 0, 1.0), scored("b", 1, 2.0)]
    pairs, _ = select_pairs(cur)
    out, counts = attach_consistency(pairs, cur, prev, "kendall")
    by_id = {p["id"]: p["consistency"] for p in out}
    assert by_id["b"] == 1.0  # b's own ranking agrees perfectly
    assert by_id["a"] == 1.0  # a has no previous scores: the mean of the others
    assert counts["consistency_missing"] == 1
    # the fill is the mean of the known values, not a constant: make b's value 0.5 and a follows it
    half = [scored("b", 2, 1.0), scored("b", 0, 1.0), scored("b", 1, 1.0)]
    assert {p["id"]: p["consistency"] for p in attach_consistency(pairs, cur, half, "kendall")[0]} == {
        "a": 0.5,
        "b": 0.5,
    }
    prev_reversed = [scored("b", 2, 1.0), scored("b", 0, 3.0), scored("b", 1, 2.0)]
    out, _ = attach_consistency(pairs, cur, prev_reversed + [scored("a", 0, 4.0), scored("a", 2, 2.0)], "kendall")
    assert {p["id"]: p["consistency"] for p in out} == {"a": 1.0, "b": 0.0}
