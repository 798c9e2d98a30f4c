import random

from srlm.pairing import select_pairs, select_positives


def row(pid, j, score):
    return {"prompt_id": pid, "candidate_id": f"{pid}-c{j}", "prompt": f"prompt {pid}", "response": f"{pid} r{j}",
            "score": score}


def test_best_vs_worst_with_ties_and_too_few_dropped():
    judged = [row("a", 0, 2.0), row("a", 1, 4.5), row("a", 2, 1.0), row("a", 3, 4.5),
              row("b", 0, 3.0), row("b", 1, 3.0),                      # tie -> dropped
              row("c", 0, 5.0), row("c", 1, None), row("c", 2, None)]  # one valid -> dropped
    pairs, counts = select_pairs(judged, min_valid=2)
    assert [p["id"] for p in pairs] == ["a"]
    assert pairs[0]["chosen_id"] == "a-c1"        # first of the tied best, in id order
    assert pairs[0]["rejected_id"] == "a-c2"
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("a r1", "a r2")
    assert counts["dropped_tie"] == 1 and counts["dropped_too_few_valid"] == 1 and counts["pairs"] == 1


def test_pairs_do_not_depend_on_row_order():
    judged = [row(p, j, float((j * 7 + len(p)) % 5)) for p in ("x", "yy", "zzz") for j in range(4)]
    shuffled = judged[:]
    random.Random(0).shuffle(shuffled)
    assert select_pairs(judged)[0] == select_pairs(shuffled)[0]


def test_positive_only_variant():
    judged = [row("a", 0, 5.0), row("a", 1, 4.0), row("b", 0, None)]
    pos, counts = select_positives(judged, 5.0)
    assert [p["id"] for p in pos] == ["a-c0"] and counts["positives"] == 1
