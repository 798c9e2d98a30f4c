"""Building AI-feedback training data from judged candidates (paper §2.3)."""
from __future__ import annotations

from collections import Counter, defaultdict


def select_pairs(judged: list[dict], min_valid: int = 2) -> tuple[list[dict], Counter]:
    """Highest vs lowest average score per prompt; ties and prompts with too few scores dropped.

    `judged` rows: prompt_id, candidate_id, prompt, response, score (mean of valid judgments or None).
    Candidates are keyed by id, never by position. Among equal scores the lowest candidate id wins,
    so the choice does not depend on file order.
    """
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for row in judged:
        by_prompt[row["prompt_id"]].append(row)
    pairs, counts = [], Counter()
    for pid in sorted(by_prompt):
        cands = sorted(by_prompt[pid], key=lambda r: r["candidate_id"])
        valid = [c for c in cands if c["score"] is not None]
        if len(valid) < min_valid:
            counts["dropped_too_few_valid"] += 1
            continue
        best = max(valid, key=lambda c: c["score"])       # first max in id order
        worst = min(valid, key=lambda c: c["score"])
        if best["score"] == worst["score"]:
            counts["dropped_tie"] += 1
            continue
        counts["pairs"] += 1
        pairs.append({
            "id": pid, "prompt": best["prompt"],
            "chosen": best["response"], "rejected": worst["response"],
            "chosen_id": best["candidate_id"], "rejected_id": worst["candidate_id"],
            "chosen_score": best["score"], "rejected_score": worst["score"],
        })
    counts["prompts"] = len(by_prompt)
    return pairs, counts


def select_positives(judged: list[dict], min_score: float) -> tuple[list[dict], Counter]:
    """The paper's 'positive examples only' variant: responses scored at least `min_score`."""
    out, counts = [], Counter()
    for row in sorted(judged, key=lambda r: r["candidate_id"]):
        if row["score"] is not None and row["score"] >= min_score:
            out.append({"id": row["candidate_id"], "prompt": row["prompt"], "response": row["response"],
                        "score": row["score"]})
    counts["positives"] = len(out)
    counts["prompts"] = len({r["prompt_id"] for r in judged})
    return out, counts
