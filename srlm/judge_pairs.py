"""Meta-Rewarding's judge pairs (Wu et al. 2024, §2.2): the model, as meta-judge, compares its own
judgments of one response per prompt; a Bradley–Terry fit over those comparisons names the best and
the worst judgment, and (judge prompt, better judgment, worse judgment) becomes a DPO pair that
trains the judge. Pure logic: the verdicts come from `srlm.judging.meta_verdicts`.

Choices where the paper's text is not known (docs/meta-rewarding.md, `meta.*` in params.yaml):
- A judgment is shown, and trained on, as written up to its `Score:`, followed by `Score: N` with
  N its readout's score (the expected score rounded under `judge.scoring: expected`). The paper's
  meta-judge saw the scores (its score bias implies it); NeMo-Aligner deletes them.
- The slot weights w1, w2 are counted over the whole iteration's verdicts.
- The Bradley–Terry fit carries a weak Gaussian prior (`PRIOR`), so that a judgment that wins every
  comparison gets a finite strength instead of an unbounded one.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from itertools import combinations
from statistics import mean, pvariance

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_expit

from .metrics import round_half_up, score_histogram
from .pairing import by_prompt
from .prompts import judge_prompt
from .scores import _before_score, calibrated_preference

PRIOR = 0.01  # λ in −Σ B_mn log σ(ε_m − ε_n) + λ/2 Σ ε²: a tie-breaker, not an opinion


def judgment_scores(row: dict, readout: str) -> list[float | None]:
    """Each judgment's own score under `readout` (sampled: parsed; expected: read after `Score:`)."""
    if readout == "sampled":
        return list(row["scores"])
    if readout == "expected":
        return [None if v != v else v for v in row["expected_scores"]]  # NaN: nothing read
    raise ValueError(f"judge pairs need written judgments; judge.scoring = {readout!r} writes none")


def uncertain_candidate(cands: list[dict], readout: str) -> tuple[dict | None, list[int]]:
    """The candidate whose judgments vary most (the paper's choice: the judge is least sure of it),
    among those not cut off by the token limit with at least two scored judgments that differ; ties
    go to the lower candidate id. Returns it and the indices of its scored judgments."""
    best, best_var, best_idx = None, 0.0, []
    for c in sorted(cands, key=lambda r: r["candidate_id"]):
        if c.get("finish_reason") == "length":
            continue
        scores = judgment_scores(c, readout)
        idx = [i for i, s in enumerate(scores) if s is not None]
        if len(idx) < 2:
            continue
        var = pvariance([scores[i] for i in idx])
        if var > best_var:
            best, best_var, best_idx = c, var, idx
    return best, best_idx


def shown_judgment(text: str, score: float) -> str:
    """The judgment as the meta-judge sees it and the judge is trained on: its reasoning up to its
    `Score:`, then `Score: N` with N its (rounded) score."""
    return f"{_before_score(text).rstrip()}\nScore: {round_half_up(score)}"


def comparisons(n: int) -> list[tuple[int, int]]:
    """Every ordered pair of n judgments: (m, n) shows m as Judgment A. Both orders of each pair."""
    return [o for m, k in combinations(range(n), 2) for o in ((m, k), (k, m))]


def position_weights(verdicts: list[str | None]) -> tuple[float, float]:
    """The paper's slot weights from verdicts "A" / "B" (None: no verdict): w1 = W2/(W1+W2) credits
    a win from slot A, w2 = W1/(W1+W2) one from slot B, so the favoured slot's wins count less."""
    w_a, w_b = verdicts.count("A"), verdicts.count("B")
    if w_a + w_b == 0:
        return 0.5, 0.5
    return w_b / (w_a + w_b), w_a / (w_a + w_b)


def battle_matrix(n: int, verdicts: dict[tuple[int, int], str | None], position: str, weights=(0.5, 0.5), p_a=None):
    """B[m, k]: how much judgment m beat judgment k. `verdicts[(m, k)]` is the verdict with m as A.

    - position="weights": a win from slot A earns w1, from slot B w2 (`weights`).
    - position="agreement": m beats k (1) only when both orders prefer m; orders that disagree (or
      an explicit tie) credit ½ to each; a missing verdict credits nothing.
    - position="calibrated" (probability verdicts, `p_a[(m, k)]` = p(A) with m as A): m earns
      p = (p_a[(m, k)] + 1 − p_a[(k, m)]) / 2 and k earns 1 − p, which averages out a constant
      preference for one slot, as the head-to-head's `calibrated` readout does."""
    b = np.zeros((n, n))
    w1, w2 = weights
    for m, k in combinations(range(n), 2):
        first, second = verdicts.get((m, k)), verdicts.get((k, m))
        if position == "calibrated":
            if p_a is None or p_a.get((m, k)) is None or p_a.get((k, m)) is None:
                raise ValueError("position='calibrated' needs p(A) of both orders (meta.verdict: probability)")
            p = calibrated_preference(p_a[(m, k)], p_a[(k, m)])
            b[m, k] += p
            b[k, m] += 1 - p
        elif position == "weights":
            for a, z, v in ((m, k, first), (k, m, second)):  # a shown first, z second
                if v == "A":
                    b[a, z] += w1
                elif v == "B":
                    b[z, a] += w2
        elif position == "agreement":
            if first is None or second is None:
                continue
            if first == "A" and second == "B":
                b[m, k] += 1
            elif first == "B" and second == "A":
                b[k, m] += 1
            else:
                b[m, k] += 0.5
                b[k, m] += 0.5
        else:
            raise ValueError(f"unknown position handling {position!r}")
    return b


def bradley_terry(b: np.ndarray) -> np.ndarray:
    """Strengths ε maximising Σ B_mn log σ(ε_m − ε_n) (the paper's Elo), fitted by scipy's L-BFGS with
    the weak prior `PRIOR`; mean zero. Elo points: 1000 + 400·ε/ln 10."""
    n = len(b)

    def loss(eps):
        d = eps[:, None] - eps[None, :]
        value = -(b * log_expit(d)).sum() + PRIOR / 2 * (eps**2).sum()
        g = b * (1 - np.exp(log_expit(d)))  # B_mn σ(−d_mn)
        grad = -(g.sum(axis=1) - g.sum(axis=0)) + PRIOR * eps
        return value, grad

    fit = minimize(loss, np.zeros(n), jac=True, method="L-BFGS-B")
    return fit.x - fit.x.mean()


def elo(strength: float) -> float:
    return 1000 + 400 * strength / math.log(10)


def pick_judge_pair(
    cand: dict, idx: list[int], scores: list[float], strengths: np.ndarray, max_chosen_chars: int
) -> tuple[dict | None, str]:
    """chosen = the highest strength, rejected = the lowest, with the paper's filters. Returns the
    pair (or None) and what happened: pair | elo_tie | same_score | identical | too_long."""
    order = np.argsort(-strengths, kind="stable")
    top, bottom = int(order[0]), int(order[-1])
    eps = 1e-6
    if strengths[order[1]] > strengths[top] - eps or strengths[order[-2]] < strengths[bottom] + eps:
        return None, "elo_tie"
    ci, ri = idx[top], idx[bottom]
    chosen = shown_judgment(cand["judgments"][ci], scores[top])
    rejected = shown_judgment(cand["judgments"][ri], scores[bottom])
    if round_half_up(scores[top]) == round_half_up(scores[bottom]):
        return None, "same_score"
    if chosen == rejected:
        return None, "identical"
    if max_chosen_chars and len(chosen) > max_chosen_chars:
        return None, "too_long"
    pair = {
        "id": cand["prompt_id"],
        "kind": "judge",
        "prompt": judge_prompt(cand["prompt"], cand["response"]),
        "chosen": chosen,
        "rejected": rejected,
        "candidate_id": cand["candidate_id"],
        "chosen_score": round_half_up(scores[top]),
        "rejected_score": round_half_up(scores[bottom]),
        "chosen_elo": round(elo(strengths[top]), 2),
        "rejected_elo": round(elo(strengths[bottom]), 2),
    }
    return pair, "pair"


def cap_score_share(pairs: list[dict], max_share: float) -> tuple[list[dict], int]:
    """At most max(1, ⌊max_share·n⌋) of the n pairs may have the same chosen score (the meta-judge
    favours high scores, and a judge trained on 5s collapses towards 5); the pairs with the widest Elo
    gap are kept first. Returns the kept pairs (in their first order) and how many were dropped."""
    cap = max(1, math.floor(max_share * len(pairs)))
    ranked = sorted(range(len(pairs)), key=lambda i: (-(pairs[i]["chosen_elo"] - pairs[i]["rejected_elo"]), i))
    taken, keep = Counter(), set()
    for i in ranked:
        s = pairs[i]["chosen_score"]
        if taken[s] < cap:
            taken[s] += 1
            keep.add(i)
    return [p for i, p in enumerate(pairs) if i in keep], len(pairs) - len(keep)


def select_judge_pairs(judged: list[dict], readout: str, verdict_of, position: str, cfg) -> tuple[list[dict], dict]:
    """The iteration's judge pairs from its judged candidates. `verdict_of(items)` takes
    (instruction, response, judgment A, judgment B) tuples and returns, for each, {"verdict": "A" / "B" /
    None, "p_a": p(A) or None} (`srlm.judging.meta_verdicts`).
    `cfg`: max_chosen_chars, max_score_share. Returns the pairs and their metrics."""
    groups = by_prompt(judged)
    picked = []
    counts = Counter(prompts=len(groups))
    for cands in groups.values():
        cand, idx = uncertain_candidate(cands, readout)
        if cand is None:
            counts["dropped_no_spread"] += 1
            continue
        all_scores = judgment_scores(cand, readout)
        picked.append((cand, idx, [all_scores[i] for i in idx]))
    items, where = [], []
    for p, (cand, idx, scores) in enumerate(picked):
        shown = [shown_judgment(cand["judgments"][i], s) for i, s in zip(idx, scores)]
        for m, k in comparisons(len(idx)):
            items.append((cand["prompt"], cand["response"], shown[m], shown[k]))
            where.append((p, m, k))
    read = verdict_of(items) if items else []
    verdicts = [r["verdict"] for r in read]
    weights = position_weights(verdicts)
    per_prompt: dict[int, dict] = defaultdict(dict)
    p_first: dict[int, dict] = defaultdict(dict)
    higher, differing = 0, 0
    for (p, m, k), v, r in zip(where, verdicts, read):
        per_prompt[p][(m, k)] = v
        p_first[p][(m, k)] = r.get("p_a")
        sm, sk = picked[p][2][m], picked[p][2][k]
        if v is not None and round_half_up(sm) != round_half_up(sk):
            differing += 1
            higher += (v == "A") == (sm > sk)
    pairs = []
    for p, (cand, idx, scores) in enumerate(picked):
        strengths = bradley_terry(battle_matrix(len(idx), per_prompt[p], position, weights, p_first[p]))
        pair, outcome = pick_judge_pair(cand, idx, scores, strengths, cfg.max_chosen_chars)
        counts[outcome if outcome == "pair" else f"dropped_{outcome}"] += 1
        if pair:
            pairs.append(pair)
    pairs, capped = cap_score_share(pairs, cfg.max_score_share)
    counts["dropped_score_cap"] = capped
    valid = [v for v in verdicts if v is not None]
    all_scores = [s for r in judged for s in judgment_scores(r, readout)]
    metrics = dict(counts) | {
        "judge_pairs": len(pairs),
        "candidates_compared": len(picked),
        "comparisons": len(verdicts),
        "verdict_failures": len(verdicts) - len(valid),
        "verdict_failure_rate": (len(verdicts) - len(valid)) / len(verdicts) if verdicts else None,
        "position_a_rate": valid.count("A") / len(valid) if valid else None,
        "slot_weight_a": weights[0],
        "slot_weight_b": weights[1],
        # the paper's Table 5: how often the meta-judge prefers the judgment that gives the higher score
        "prefers_higher_score_rate": higher / differing if differing else None,
        "judgment_chars_mean": mean(len(j) for r in judged for j in r["judgments"]) if judged else None,
        "chosen_chars_mean": mean(len(p["chosen"]) for p in pairs) if pairs else None,
        "rejected_chars_mean": mean(len(p["rejected"]) for p in pairs) if pairs else None,
    }
    # the judges' score distribution (the paper's Fig. 5: scores crowd towards 5 after judge training)
    metrics |= {f"judgment_{k}": v for k, v in score_histogram(all_scores).items()}
    return pairs, metrics


def mix(actor: list[dict], judge: list[dict], max_share: float, seed: int) -> tuple[list[dict], dict]:
    """dpo@t's training pairs: every actor pair plus judge pairs, at most `max_share` of the total
    (a seeded draw when there are more). The trainer shuffles them."""
    if max_share >= 1:
        room = len(judge)
    else:
        room = min(len(judge), math.floor(max_share / (1 - max_share) * len(actor) + 1e-9))
    kept = sorted(random.Random(seed).sample(range(len(judge)), room)) if room < len(judge) else range(len(judge))
    chosen = [judge[i] for i in kept]
    return actor + chosen, {
        "actor_pairs": len(actor),
        "judge_pairs": len(chosen),
        "judge_pairs_left_out": len(judge) - len(chosen),
    }
