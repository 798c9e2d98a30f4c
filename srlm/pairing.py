"""Building AI-feedback training data from judged candidates (paper §2.3), and CREAM's
consistency between two models' rankings of the same candidates."""
from __future__ import annotations

import math
from collections import Counter, defaultdict


def _by_prompt(judged: list[dict]) -> dict[str, list[dict]]:
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for row in judged:
        by_prompt[row["prompt_id"]].append(row)
    return {pid: sorted(rows, key=lambda r: r["candidate_id"]) for pid, rows in sorted(by_prompt.items())}


def select_pairs(judged: list[dict], min_valid: int = 2, tiebreak: str | None = None,
                 length_margin: float | None = None) -> tuple[list[dict], Counter]:
    """Highest vs lowest score per prompt (`score`: the mean of its k judgments).

    Ties, in this order:
    - among candidates with the best (worst) score, the one with the higher (lower) `tiebreak`
      score is chosen (rejected), e.g. the expected score when pairing on sampled scores; then the
      lowest candidate id, so the choice never depends on file order;
    - when every valid candidate of a prompt has the same score, the `tiebreak` scores decide if
      they differ (counted as `tie_broken`); otherwise the prompt is dropped (`dropped_tie`).
    Prompts with fewer than `min_valid` scored candidates are dropped (`dropped_too_few_valid`).

    `length_margin` (Meta-Rewarding's length control): `chosen` is the shortest candidate whose
    score is within the margin of the best and still above the rejected one (`length_controlled`
    counts the pairs where that changed the choice).
    Candidates are keyed by id, never by position."""
    def sec(c):
        v = c.get(tiebreak) if tiebreak else None
        return -math.inf if v is None else v

    pairs, counts = [], Counter()
    groups = _by_prompt(judged)
    for pid, cands in groups.items():
        valid = [c for c in cands if c["score"] is not None]
        if len(valid) < min_valid:
            counts["dropped_too_few_valid"] += 1
            continue
        best = max(valid, key=lambda c: (c["score"], sec(c)))  # max/min keep the first in id order
        worst = min(valid, key=lambda c: (c["score"], sec(c)))
        if best["score"] == worst["score"]:
            if sec(best) == sec(worst):
                counts["dropped_tie"] += 1
                continue
            counts["tie_broken"] += 1
        elif length_margin is not None:
            near = [c for c in valid if c["score"] >= best["score"] - length_margin and c["score"] > worst["score"]]
            short = min(near, key=lambda c: len(c["response"]))
            if short is not best:
                counts["length_controlled"] += 1
                best = short
        counts["pairs"] += 1
        pairs.append({
            "id": pid, "prompt": best["prompt"],
            "chosen": best["response"], "rejected": worst["response"],
            "chosen_id": best["candidate_id"], "rejected_id": worst["candidate_id"],
            "chosen_score": best["score"], "rejected_score": worst["score"],
        })
    counts["prompts"] = len(groups)
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


def consistency(current: dict[str, float], previous: dict[str, float], measure: str = "kendall",
                pair: tuple[str, str] | None = None) -> float | None:
    """CREAM's consistency C in [0, 1] between two models' scores of one prompt's candidates,
    aligned by candidate id (ids scored by only one model are left out).

    - kendall: (τ_b + 1) / 2 (scipy's tau-b, which accounts for tied scores);
    - spearman: (ρ + 1) / 2 over average ranks;
    - top_bottom: does the previous model also put the pair's chosen above its rejected
      candidate: 1, tie 0.5, reversed 0 (`pair` = (chosen id, rejected id)).
    When one model gives every aligned candidate the same score, the rankings carry no evidence
    either way: C = 0.5. None when fewer than two candidates are scored by both."""
    from scipy.stats import kendalltau, spearmanr

    if measure == "top_bottom":
        if pair is None or any(i not in previous for i in pair):
            return None
        a, b = previous[pair[0]], previous[pair[1]]
        return 1.0 if a > b else 0.5 if a == b else 0.0
    ids = sorted(set(current) & set(previous))
    if len(ids) < 2:
        return None
    x, y = [current[i] for i in ids], [previous[i] for i in ids]
    if len(set(x)) == 1 or len(set(y)) == 1:
        return 0.5
    stat = kendalltau(x, y).statistic if measure == "kendall" else spearmanr(x, y).statistic
    return (float(stat) + 1) / 2


def attach_consistency(pairs: list[dict], current: list[dict], previous: list[dict],
                       measure: str) -> tuple[list[dict], Counter]:
    """Give each pair the consistency of its prompt's two rankings (`current`, `previous`: judged
    rows with prompt_id, candidate_id, score). A pair whose C cannot be computed (the previous
    model scored fewer than two of its candidates) gets the mean C of the others."""
    def scores(rows):
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for r in rows:
            if r["score"] is not None:
                out[r["prompt_id"]][r["candidate_id"]] = r["score"]
        return out

    cur, prev = scores(current), scores(previous)
    values = [consistency(cur.get(p["id"], {}), prev.get(p["id"], {}), measure, (p["chosen_id"], p["rejected_id"]))
              for p in pairs]
    known = [v for v in values if v is not None]
    fill = sum(known) / len(known) if known else 0.5
    counts = Counter(consistency_missing=len(values) - len(known))
    return [p | {"consistency": round(fill if v is None else v, 6)} for p, v in zip(pairs, values)], counts
