"""Evaluation metrics: the judge against human rankings (the paper's Table 2), length bias, head-to-head
summaries (Figure 3). Pure functions: lists in, flat dicts of numbers out; NaN means "not defined on this data"."""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from typing import Callable

import numpy as np
from scipy import stats

from .scores import is_top_score

NAN = float("nan")
OUTCOMES = ("win", "tie", "loss")
_OUTCOME_VALUE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def missing(*values) -> bool:
    """Whether any value is absent: None, or NaN (what a metric without data is)."""
    return any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values)


def round_half_up(score: float) -> int:
    return math.floor(score + 0.5)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def ratio(num: float, den: float) -> float:
    return num / den if den else NAN


def _set_correlations(ranks: list[int], scores: list) -> tuple[float, float]:
    """Spearman and Kendall tau-b between the scores and the negative human ranks, over the scored
    responses; NaN when fewer than 2 are scored or either side is constant."""
    kept = [(float(s), -r) for r, s in zip(ranks, scores) if not missing(s)]
    if len(kept) < 2:
        return NAN, NAN
    x, y = zip(*kept)
    if len(set(x)) < 2 or len(set(y)) < 2:
        return NAN, NAN
    from scipy import (
        stats,  # imported here: ~1 s that stages without rank statistics skip
    )

    return float(stats.spearmanr(x, y).statistic), float(stats.kendalltau(x, y, variant="b").statistic)


def _centered_ranks(values: list[float]) -> np.ndarray:
    from scipy.stats import rankdata

    r = rankdata(values)  # average ranks for ties
    return r - r.mean()


def _pooled_correlations(sets: list[tuple[list[int], list]]) -> tuple[float, float]:
    """Spearman and Kendall tau-b pooled over all sets, skipping none: a set the judge scored
    constant adds pairs it tied (Kendall) and zero rank deviations (Spearman), and so pulls the
    value towards 0 instead of leaving the average (as the per-set mean does).

    - kendall_pooled: tau-b over the within-set pairs of every set together:
      (concordant - discordant) / sqrt((pairs - judge ties) (pairs - human ties)).
    - spearman_pooled: Pearson correlation of the within-set centred average ranks of the scores
      and of the negative human ranks, over all sets' responses together."""
    conc = disc = n0 = tie_x = tie_y = 0
    rx, ry = [], []
    for ranks, scores in sets:
        kept = [(float(x), -r) for r, x in zip(ranks, scores) if not missing(x)]
        if len(kept) < 2:
            continue
        for (x1, y1), (x2, y2) in combinations(kept, 2):
            n0 += 1
            sx, sy = _sign(x1 - x2), _sign(y1 - y2)
            tie_x += sx == 0
            tie_y += sy == 0
            conc += sx * sy > 0
            disc += sx * sy < 0
        xs, ys = zip(*kept)
        rx.extend(_centered_ranks(list(xs)))
        ry.extend(_centered_ranks(list(ys)))
    den = math.sqrt((n0 - tie_x) * (n0 - tie_y))
    kendall = (conc - disc) / den if den else NAN
    rx_, ry_ = np.asarray(rx), np.asarray(ry)
    sden = math.sqrt(float((rx_**2).sum() * (ry_**2).sum())) if rx else 0.0
    spearman = float((rx_ * ry_).sum() / sden) if sden else NAN
    return spearman, kendall


def bootstrap_intervals(
    items: list,
    statistic: Callable[[list], dict],
    keys: list[str],
    seed: int,
    n_resamples: int = 1000,
    level: float = 0.95,
) -> dict:
    """Percentile-bootstrap intervals (scipy.stats.bootstrap) of `statistic(items)[key]` for each of `keys`,
    resampling whole items with replacement, seeded: the ranked sets for Table 2 (a set's pairs are not
    independent of each other), the prompts for a head-to-head. Returns {key_ci_low, key_ci_high}; NaN with
    fewer than 2 items, or where the statistic is undefined (NaN) on some resample."""
    out = {f"{k}_ci_{side}": NAN for k in keys for side in ("low", "high")}
    if len(items) < 2:
        return out

    def values(idx):
        m = statistic([items[int(i)] for i in idx])
        return np.array([m[k] for k in keys], dtype=float)

    with warnings.catch_warnings():  # degenerate resamples (all equal, NaN) are reported as NaN, not warned
        warnings.simplefilter("ignore")
        ci = stats.bootstrap(
            (np.arange(len(items)),),
            values,
            vectorized=False,
            n_resamples=n_resamples,
            confidence_level=level,
            method="percentile",
            rng=np.random.default_rng(seed),
        ).confidence_interval
    for k, lo, hi in zip(keys, np.atleast_1d(ci.low), np.atleast_1d(ci.high)):
        out[f"{k}_ci_low"], out[f"{k}_ci_high"] = float(lo), float(hi)
    return out


def paired_difference(
    items_a: list, items_b: list, statistic: Callable[[list], dict], keys: list[str], seed: int
) -> dict:
    """statistic(items_a)[k] - statistic(items_b)[k] for each of `keys`, with a 95 % bootstrap interval from
    resampling the same items for both (items_a[i] and items_b[i] are two models' results on item i): a
    paired comparison, much tighter than two separate intervals when the models err on the same items.
    Returns {key_diff, key_diff_ci_low, key_diff_ci_high}, and n."""
    if len(items_a) != len(items_b):
        raise ValueError(f"paired items differ in number: {len(items_a)} vs {len(items_b)}")

    def diff(pairs):
        a, b = statistic([p[0] for p in pairs]), statistic([p[1] for p in pairs])
        return {f"{k}_diff": a[k] - b[k] for k in keys}

    pairs = list(zip(items_a, items_b))
    out = {"n": len(pairs)} | (diff(pairs) if pairs else {f"{k}_diff": NAN for k in keys})
    return out | bootstrap_intervals(pairs, diff, [f"{k}_diff" for k in keys], seed)


def items_for_five_points(low: float, high: float, n: int, points: float = 0.05) -> int:
    """How many items a 95 % interval of ±`points` would take, from an interval of [low, high] on n items
    (its half-width scales as 1/sqrt(n))."""
    return math.ceil(n * ((high - low) / 2 / points) ** 2)


TABLE2_INTERVALS = ["pairwise_accuracy", "exact_match", "spearman_pooled", "kendall_pooled"]


def reward_model_metrics(sets: list[dict], readout: str = "sampled", per_set: bool = True) -> dict:
    """How well a judge's scores reproduce human rankings (the paper's Table 2).

    Each set is {"id", "ranks", "scores"}: human ranks (0 = best, equal values = a human tie) and the
    judge's scores for the same responses in the same order (None = no valid score).

    Ties and missing scores:
    - pairwise_accuracy: over every pair of responses in a set whose human ranks differ (pairs the
      human tied are left out). A pair is correct only when the judge scores it strictly in the
      human's order; a pair the judge tied, or with a missing score, is counted as wrong (it stays
      in the denominator `pairs`). pairwise_tie_rate: the fraction of those pairs the judge scored
      equal (pairs with a missing score are not ties).
    - five_best: among responses the judge scored 5 out of 5 (`srlm.scores.is_top_score` for
      `readout`: sampled, every judgment said 5; expected, the expected score rounds to 5), the
      fraction that are a human-best response of their set (rank equal to the set's minimum rank,
      so every response in a tie for first counts as best); NaN when no response scores 5.
    - exact_match: the fraction of sets where every response is scored and the judge's order equals
      the human's on every pair, ties included: the judge must tie exactly the responses the human
      tied, and no others.
    - spearman / kendall: per set, scipy's Spearman rho and Kendall tau-b (both use average ranks for
      ties, and tau-b corrects for ties on either side) between the scores and the negative human
      ranks, over the responses with a score, so +1 is perfect agreement. A set is skipped when
      fewer than 2 of its responses are scored or either side is constant (e.g. the judge gave every
      response the same score); the metric is the mean over the remaining `correlation_sets` sets,
      NaN if none remain. Skipping the sets a judge cannot tell apart flatters it, so
      `correlation_sets_skipped` counts them and spearman_pooled / kendall_pooled
      (`_pooled_correlations`) keep them. per_set=False leaves the per-set means out (NaN): the
      bootstrap of TABLE2_INTERVALS does not need them, and they are most of the cost.
    """
    n_resp = n_scored = pairs = correct = ties = exact = 0
    top_count = top_best = 0
    rhos, taus = [], []
    for s in sets:
        ranks, scores = list(s["ranks"]), list(s["scores"])
        if len(ranks) != len(scores):
            raise ValueError(f"set {s.get('id')!r}: {len(ranks)} ranks but {len(scores)} scores")
        n_resp += len(ranks)
        n_scored += sum(not missing(x) for x in scores)
        best = min(ranks) if ranks else None
        for r, x in zip(ranks, scores):
            if is_top_score(None if missing(x) else x, readout):
                top_count += 1
                top_best += r == best
        matches = not any(missing(x) for x in scores)
        for i, j in combinations(range(len(ranks)), 2):
            human = _sign(ranks[j] - ranks[i])  # +1: i is better
            present = not (missing(scores[i]) or missing(scores[j]))
            judge = _sign(scores[i] - scores[j]) if present else None
            matches = matches and judge == human
            if human == 0:
                continue
            pairs += 1
            correct += judge == human
            ties += judge == 0
        exact += matches
        rho, tau = _set_correlations(ranks, scores) if per_set else (NAN, NAN)
        if not math.isnan(rho) and not math.isnan(tau):
            rhos.append(rho)
            taus.append(tau)
    spearman_pooled, kendall_pooled = _pooled_correlations([(s["ranks"], s["scores"]) for s in sets])
    return {
        "sets": len(sets),
        "responses": n_resp,
        "scored_rate": ratio(n_scored, n_resp),
        "pairs": pairs,
        "pairwise_accuracy": ratio(correct, pairs),
        "pairwise_tie_rate": ratio(ties, pairs),
        "five_best": ratio(top_best, top_count),
        "five_best_count": top_count,
        "exact_match": ratio(exact, len(sets)),
        "spearman": float(np.mean(rhos)) if rhos else NAN,
        "kendall": float(np.mean(taus)) if taus else NAN,
        "correlation_sets": len(rhos),
        "correlation_sets_skipped": len(sets) - len(rhos),
        "spearman_pooled": spearman_pooled,
        "kendall_pooled": kendall_pooled,
    }


def score_histogram(scores: list[float | None]) -> dict:
    """Counts of scores rounded half up to the integers 0..5 (4.5 -> 5, 4.49 -> 4), as score_0..score_5,
    plus `unscored` for None (or NaN). A score that rounds outside 0..5 is an error."""
    hist = {f"score_{k}": 0 for k in range(6)}
    unscored = 0
    for s in scores:
        if missing(s):
            unscored += 1
            continue
        k = round_half_up(s)
        if not 0 <= k <= 5:
            raise ValueError(f"score {s} is outside 0..5")
        hist[f"score_{k}"] += 1
    return {**hist, "unscored": unscored}


def score_spread(scores: list[float | None], groups: list[str]) -> dict:
    """How much a judge tells candidates apart: `tie_rate`, the share of same-prompt candidate pairs (both
    scored) whose scores are equal; `all_tied_rate`, the share of prompts (with >= 2 scored candidates) whose
    candidates all tie (no pair); `score_entropy`, the entropy in bits of the scores rounded to 0..5 (0: one
    score for everything; log2 6 = 2.58: all six equally often)."""
    by_group: dict[str, list[float]] = {}
    for s, g in zip(scores, groups):
        if not missing(s):
            by_group.setdefault(g, []).append(s)
    pairs = [(a, b) for v in by_group.values() for a, b in combinations(v, 2)]
    multi = [v for v in by_group.values() if len(v) >= 2]
    hist = score_histogram(scores)
    counts = np.array([hist[f"score_{k}"] for k in range(6)], dtype=float)
    return {
        "tie_rate": ratio(sum(a == b for a, b in pairs), len(pairs)),
        "all_tied_rate": ratio(sum(len(set(v)) == 1 for v in multi), len(multi)),
        "score_entropy": float(stats.entropy(counts, base=2)) if counts.sum() else NAN,
    }


def length_bias(scores: list[float | None], lengths: list[int], groups: list[str] | None = None) -> dict:
    """Spearman correlation between score and response length over the scored items; NaN with fewer
    than 3 scored items or when scores or lengths are constant. With `groups` (each item's group:
    the prompt of a candidate, the ranked set of a response), also `longer_wins_rate` over the
    pairs of items within a group."""
    if len(scores) != len(lengths):
        raise ValueError(f"{len(scores)} scores but {len(lengths)} lengths")
    kept = [(float(s), n) for s, n in zip(scores, lengths) if not missing(s)]
    rho = NAN
    if len(kept) >= 3:
        x, y = zip(*kept)
        if len(set(x)) > 1 and len(set(y)) > 1:
            from scipy import stats

            rho = float(stats.spearmanr(x, y).statistic)
    out = {"score_length_spearman": rho}
    if groups is not None:
        by_group: dict[str, list] = {}
        for g, s, n in zip(groups, scores, lengths):
            by_group.setdefault(g, []).append((s, n))
        out["longer_wins_rate"] = longer_wins_within_groups(list(by_group.values()))
    return out


def longer_wins_rate(pairs: list[tuple[float, float, int, int]]) -> float:
    """Among (score_a, score_b, len_a, len_b) items whose scores differ and whose lengths differ, the
    fraction where the higher-scored response is the longer one; NaN if there are none."""
    decided = [(sa > sb) == (la > lb) for sa, sb, la, lb in pairs if sa != sb and la != lb]
    return ratio(sum(decided), len(decided))


def head_to_head_summary(outcomes: list[str], seed: int | None = None) -> dict:
    """Counts and rates of win/tie/loss, plus win_rate_ties_half = (win + tie/2) / n (NaN when n = 0); with a
    `seed`, 95 % bootstrap intervals of the rates over the prompts."""
    bad = set(outcomes) - set(OUTCOMES)
    if bad:
        raise ValueError(f"unknown outcomes: {sorted(bad)}")
    n = len(outcomes)
    counts = {k: outcomes.count(k) for k in OUTCOMES}
    out = {
        "n": n,
        **counts,
        **{f"{k}_rate": ratio(counts[k], n) for k in OUTCOMES},
        "win_rate_ties_half": ratio(counts["win"] + 0.5 * counts["tie"], n),
    }
    if seed is not None:
        keys = ["win_rate_ties_half", "win_rate", "loss_rate"]
        out |= bootstrap_intervals(outcomes, head_to_head_summary, keys, seed)
    return out


def length_controlled_win_rate(outcomes: list[str], len_x: list[int], len_y: list[int]) -> dict:
    """X's win rate with the length difference regressed out.

    A simple linear model, not AlpacaEval's length-controlled GLM: ordinary least squares of the
    outcome y (win 1, tie 0.5, loss 0) on d = (len_x - len_y) / s, s the (population) standard
    deviation of the lengths of all responses of both models (1 if that is 0): y = a + b·d.
    lc_win_rate = a, the predicted outcome at equal lengths, clipped to [0, 1]; length_slope = b,
    the change in outcome per standard deviation of length. With fewer than 3 outcomes or no
    variation in d, lc_win_rate is the plain win_rate_ties_half and length_slope is NaN."""
    if not len(outcomes) == len(len_x) == len(len_y):
        raise ValueError(f"{len(outcomes)} outcomes, {len(len_x)} lengths of X, {len(len_y)} of Y")
    plain = head_to_head_summary(outcomes)["win_rate_ties_half"]
    n = len(outcomes)
    if n < 3:
        return {"lc_win_rate": plain, "length_slope": NAN, "n": n}
    y = np.array([_OUTCOME_VALUE[o] for o in outcomes])
    lx, ly = np.asarray(len_x, dtype=float), np.asarray(len_y, dtype=float)
    s = float(np.std(np.concatenate([lx, ly]))) or 1.0
    d = (lx - ly) / s
    if np.ptp(d) == 0:
        return {"lc_win_rate": plain, "length_slope": NAN, "n": n}
    (a, b), *_ = np.linalg.lstsq(np.column_stack([np.ones(n), d]), y, rcond=None)
    return {"lc_win_rate": float(np.clip(a, 0.0, 1.0)), "length_slope": float(b), "n": n}


LENGTH_SPLIT = ["accuracy_preferred_shorter", "accuracy_preferred_longer"]


def accuracy_by_length(sets: list[dict]) -> dict:
    """Pairwise accuracy split by whether the human-preferred response of a pair is the shorter or the longer
    one; each set is reward_model_metrics' {"ranks", "scores"} plus each response's "lengths". Pairs the human
    tied or of equal length are left out; a judge tie or a missing score counts as wrong, as in
    reward_model_metrics. A judge that only rewards length scores ~0 % on one side and ~100 % on the other; one
    that reads content is about equal on both."""
    hits = {"shorter": [0, 0], "longer": [0, 0]}
    for s in sets:
        ranks, scores, lengths = s["ranks"], s["scores"], s["lengths"]
        for i, j in combinations(range(len(ranks)), 2):
            if ranks[i] == ranks[j] or lengths[i] == lengths[j]:
                continue
            best, other = (i, j) if ranks[i] < ranks[j] else (j, i)
            side = hits["shorter" if lengths[best] < lengths[other] else "longer"]
            side[0] += not missing(scores[best], scores[other]) and scores[best] > scores[other]
            side[1] += 1
    return {f"accuracy_preferred_{k}": ratio(c, n) for k, (c, n) in hits.items()} | {
        f"pairs_preferred_{k}": n for k, (_, n) in hits.items()
    }


def longer_wins_within_groups(groups: list[list[tuple[float | None, int]]]) -> float:
    """`longer_wins_rate` over every pair of (score, length) items within the same group
    (the candidates of one prompt, the responses of one ranked set)."""
    pairs = [
        (a[0], b[0], a[1], b[1])
        for g in groups
        for a, b in combinations(g, 2)
        if not missing(a[0]) and not missing(b[0])
    ]
    return longer_wins_rate(pairs)


FOLLOW_INTERVALS = ["prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"]


def follow_metrics(rows: list[dict], seed: int | None = None) -> dict:
    """IFEval's four accuracies over rows {strict: [bool], loose: [bool], instruction_id_list}, with 95 %
    bootstrap intervals over the prompts when seeded (a prompt's instructions are not independent), and
    the strict rate per instruction id."""
    out = {"prompts": len(rows), "instructions": sum(len(r["strict"]) for r in rows)}
    for mode in ("strict", "loose"):
        out[f"prompt_{mode}"] = ratio(sum(all(r[mode]) for r in rows), len(rows))
        out[f"instruction_{mode}"] = ratio(sum(sum(r[mode]) for r in rows), out["instructions"])
    if seed is not None:
        out |= bootstrap_intervals(rows, follow_metrics, FOLLOW_INTERVALS, seed)
        by_id: dict[str, list[bool]] = {}
        for r in rows:
            for iid, ok in zip(r["instruction_id_list"], r["strict"]):
                by_id.setdefault(iid, []).append(ok)
        out["strict_by_instruction"] = {k: ratio(sum(v), len(v)) for k, v in sorted(by_id.items())}
    return out
