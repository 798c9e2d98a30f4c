"""Building AI-feedback training data from judged candidates (paper §2.3), and CREAM's
consistency between two models' rankings of the same candidates."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from .scores import is_top_score


def by_prompt(judged: list[dict]) -> dict[str, list[dict]]:
    """Judged rows grouped by prompt id (sorted), each group in candidate-id order."""
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for row in judged:
        by_prompt[row["prompt_id"]].append(row)
    return {pid: sorted(rows, key=lambda r: r["candidate_id"]) for pid, rows in sorted(by_prompt.items())}


def select_pairs(
    judged: list[dict],
    min_valid: int = 2,
    tiebreak: str | None = None,
    length_rho: float = 0.0,
    truncated_chosen: bool = False,
) -> tuple[list[dict], Counter]:
    """Highest vs lowest score per prompt (`score`: the mean of its k judgments); as in the paper,
    a prompt whose candidates all have the same score is discarded (`dropped_tie`).

    - `tiebreak` (opt-in, `pairs.tie_break: other_readout`): the key of a second score, e.g. the
      expected score when pairing on sampled scores. Among candidates with the best (worst) score,
      the one with the higher (lower) second score is chosen (rejected), and a prompt whose
      candidates all tie is kept when their second scores differ (`tie_broken`). Without it, ties
      go to the lowest candidate id, so the choice never depends on file order.
    - Prompts with fewer than `min_valid` scored candidates are dropped (`dropped_too_few_valid`).
    - A candidate cut off by the token limit (`finish_reason: length`) is never `chosen` unless
      `truncated_chosen`: training towards it teaches the model to stop mid-sentence. It can still
      be `rejected`. `truncated_not_chosen` counts the prompts where that changed the choice,
      `dropped_truncated` those left without an eligible chosen candidate.
    - `length_rho` = ρ, Meta-Rewarding's length control (Wu et al. 2024, §2.1): with S_max and
      S_min the prompt's highest and lowest scores, `chosen` is the *shortest* eligible candidate
      scoring in [(1−ρ)S_max + ρS_min, S_max] and `rejected` the *longest* scoring in
      [S_min, (1−ρ)S_min + ρS_max] (length in characters, as the paper reports lengths; ties go to
      the higher / lower score, then the lower id). ρ = 0 is the rule above. A pair whose chosen
      candidate does not score above its rejected one (the tiers overlap from ρ = 0.5) is dropped
      (`dropped_overlap`); `length_controlled` counts the pairs where ρ changed a side.
    Candidates are keyed by id, never by position."""

    def sec(c):
        v = c.get(tiebreak) if tiebreak else None
        return -math.inf if v is None else v

    def key(c):
        return c["score"], sec(c)

    pairs, counts = [], Counter()
    groups = by_prompt(judged)
    for pid, cands in groups.items():
        valid = [c for c in cands if c["score"] is not None]
        if len(valid) < min_valid:
            counts["dropped_too_few_valid"] += 1
            continue
        top, worst = max(valid, key=key), min(valid, key=key)  # max/min keep the first in id order
        if key(top) == key(worst):
            counts["dropped_tie"] += 1
            continue
        eligible = [c for c in valid if truncated_chosen or c.get("finish_reason") != "length"]
        best = max(eligible, key=key) if eligible else None
        if best is None or key(best) <= key(worst):
            counts["dropped_truncated"] += 1
            continue
        if best is not top:
            counts["truncated_not_chosen"] += 1
        if best["score"] == worst["score"]:
            counts["tie_broken"] += 1
        elif length_rho > 0:
            chosen, rejected = length_controlled(eligible, valid, top["score"], worst["score"], length_rho)
            if chosen is None or chosen["score"] <= rejected["score"]:
                counts["dropped_overlap"] += 1
                continue
            if chosen is not best or rejected is not worst:
                counts["length_controlled"] += 1
            best, worst = chosen, rejected
        counts["pairs"] += 1
        pairs.append(
            {
                "id": pid,
                "prompt": best["prompt"],
                "chosen": best["response"],
                "rejected": worst["response"],
                "chosen_id": best["candidate_id"],
                "rejected_id": worst["candidate_id"],
                "chosen_score": best["score"],
                "rejected_score": worst["score"],
            }
        )
    counts["prompts"] = len(groups)
    return pairs, counts


_TIER_EPS = 1e-9  # averaged scores are rounded to 4 decimals; a tier bound must not miss one by float error


def length_controlled(eligible: list[dict], valid: list[dict], s_max: float, s_min: float, rho: float):
    """Meta-Rewarding's tiers: the shortest `eligible` candidate in the top tier and the longest
    `valid` one in the bottom tier (None for `chosen` when no eligible candidate is in the top tier)."""
    top_bound, bottom_bound = (1 - rho) * s_max + rho * s_min, (1 - rho) * s_min + rho * s_max
    upper = [c for c in eligible if c["score"] >= top_bound - _TIER_EPS]
    lower = [c for c in valid if c["score"] <= bottom_bound + _TIER_EPS]
    chosen = min(upper, key=lambda c: (len(c["response"]), -c["score"], c["candidate_id"])) if upper else None
    rejected = min(lower, key=lambda c: (-len(c["response"]), c["score"], c["candidate_id"]))
    return chosen, rejected


def rho_for(length_rho, iteration: str | int) -> float:
    """`pairs.length_rho` for iteration t: one number for every iteration, or a list whose t-th
    entry is iteration t's (its last entry for later iterations), as the paper varies ρ."""
    if isinstance(length_rho, list):
        return float(length_rho[min(int(iteration), len(length_rho)) - 1])
    return float(length_rho)


def select_positives(judged: list[dict], readout: str, truncated: bool = False) -> tuple[list[dict], Counter]:
    """The positive-only variant's curated examples: responses that scored 5 out of 5 under
    `readout` (`srlm.scores.is_top_score`), never one cut off by the token limit (unless `truncated`)."""
    out, counts = [], Counter()
    for row in sorted(judged, key=lambda r: r["candidate_id"]):
        if not is_top_score(row["score"], readout):
            continue
        if row.get("finish_reason") == "length" and not truncated:
            counts["truncated_not_chosen"] += 1
            continue
        out.append(
            {"id": row["candidate_id"], "prompt": row["prompt"], "response": row["response"], "score": row["score"]}
        )
    counts["positives"] = len(out)
    counts["prompts"] = len({r["prompt_id"] for r in judged})
    return out, counts


def consistency(current: dict[str, float], previous: dict[str, float], measure: str = "kendall") -> float | None:
    """CREAM's consistency C in [0, 1] between two models' scores of one prompt's candidates,
    aligned by candidate id (ids scored by only one model are left out).

    - kendall: (τ_b + 1) / 2; spearman: (ρ + 1) / 2 over average ranks.

    Tied scores: CREAM's code turns each model's rewards into ordinal ranks (argsort), so tied
    candidates get distinct ranks in whatever order they came, and C then depends on that order.
    Here tied scores stay tied: scipy's τ_b and Spearman's average ranks give a tie neither
    agreement nor disagreement, and when one model gives every aligned candidate the same score
    the rankings carry no evidence either way: C = 0.5. With judge scores (k judgments of 0..5
    averaged) ties are common, so this is the difference that matters. None when fewer than two
    candidates are scored by both."""
    from scipy.stats import kendalltau, spearmanr

    if measure not in ("kendall", "spearman"):
        raise ValueError(f"unknown consistency measure {measure!r}")
    ids = sorted(set(current) & set(previous))
    if len(ids) < 2:
        return None
    x, y = [current[i] for i in ids], [previous[i] for i in ids]
    if len(set(x)) == 1 or len(set(y)) == 1:
        return 0.5
    stat = kendalltau(x, y).statistic if measure == "kendall" else spearmanr(x, y).statistic
    return (float(stat) + 1) / 2


def attach_consistency(
    pairs: list[dict], current: list[dict], previous: list[dict], measure: str
) -> tuple[list[dict], Counter]:
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
    values = [consistency(cur.get(p["id"], {}), prev.get(p["id"], {}), measure) for p in pairs]
    known = [v for v in values if v is not None]
    fill = sum(known) / len(known) if known else 0.5
    counts = Counter(consistency_missing=len(values) - len(known))
    return [p | {"consistency": round(fill if v is None else v, 6)} for p, v in zip(pairs, values)], counts
