"""Judgments as text: reading a score or a verdict out of what a judge wrote, the labels' tokens for the
probability readouts, and how the k judgments of a candidate become its scores. Pure: no model, no torch."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

MAX_SCORE = 5
# "Score: 4", "**Score:** 4", "score : 4/5", "Score: 4.5", "Score: five"
_SCORE = re.compile(r"score\s*\**\s*:\s*\**\s*([^\s*]+)", re.IGNORECASE)
_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}


@dataclass(frozen=True)
class ParsedScore:
    score: int | None
    status: str  # ok | no_score | not_a_number | non_integer | out_of_range | not_at_end | conflicting_scores


def parse_score(judgment: str) -> ParsedScore:
    """The judge must conclude with `Score: N`, N an integer 0..5. Anything else is not a score.

    - no `Score:` at all (also a judgment cut off by the token limit): no_score
    - `Score: five`: not_a_number; `Score: 4.5`: non_integer; `Score: 7`: out_of_range
    - the last `Score:` followed by more text: not_at_end
    - several `Score:` with different values: conflicting_scores (the same value repeated is fine)
    """
    matches = list(_SCORE.finditer(judgment))
    if not matches:
        return ParsedScore(None, "no_score")
    last = matches[-1]
    raw = last.group(1).rstrip(".,;)!")
    raw = raw.split("/")[0]  # "4/5"
    if raw.lower() in _WORDS:
        return ParsedScore(None, "not_a_number")
    try:
        value = float(raw)
    except ValueError:
        return ParsedScore(None, "not_a_number")
    if value != int(value):
        return ParsedScore(None, "non_integer")
    value = int(value)
    if not 0 <= value <= MAX_SCORE:
        return ParsedScore(None, "out_of_range")
    tail = judgment[last.end() :]
    if re.search(r"[A-Za-z0-9]", tail):
        return ParsedScore(None, "not_at_end")
    others = {m.group(1).rstrip(".,;)!").split("/")[0] for m in matches[:-1]}
    if any(o != str(value) for o in others):
        return ParsedScore(None, "conflicting_scores")
    return ParsedScore(value, "ok")


def average(scores: list[int | None]) -> float | None:
    valid = [s for s in scores if s is not None]
    return sum(valid) / len(valid) if valid else None


def judge_metrics(statuses: list[str], scores: list[int | None], digit_mass: list[float] | None = None) -> dict:
    """Parse rate, why judgments failed, and the histogram of valid scores; with `digit_mass` (the
    expected readout's probability on the digits 0..5, per judgment) its mean and how many judgments
    had less than LOW_DIGIT_MASS."""
    n = len(statuses)
    status_counts = Counter(statuses)
    hist = Counter(s for s in scores if s is not None)
    m = {"judgments": n, "parse_rate": status_counts.get("ok", 0) / n if n else 0.0}
    for k, v in sorted(status_counts.items()):
        m[f"status_{k}"] = v
    for s in range(MAX_SCORE + 1):
        m[f"score_{s}"] = hist.get(s, 0)
    if digit_mass:
        m["digit_mass_mean"] = sum(digit_mass) / len(digit_mass)
        m["digit_mass_min"] = min(digit_mass)
        m["low_digit_mass_judgments"] = sum(x < LOW_DIGIT_MASS for x in digit_mass)
    return m


def agrees_with_ranking(scores: list[int | None], ranks: list[int]) -> bool:
    """True when every pair with different human ranks gets strictly ordered scores the same way
    (rank 0 is best). This is the paper's acceptance test for EFT judgments."""
    if any(s is None for s in scores):
        return False
    for i in range(len(ranks)):
        for j in range(len(ranks)):
            if ranks[i] < ranks[j] and not scores[i] > scores[j]:
                return False
    return True


def label_tokens(tokenizer, anchor: str, labels: list[str]) -> tuple[str, list[int]]:
    """The text that ends a judgment right before its label, and the token id of each label
    that follows it. Tokenizers differ: some merge the space into the label (" 4"), others emit
    a space token and then "4"; the shared part goes into the returned text."""
    base = tokenizer(anchor, add_special_tokens=False)["input_ids"]
    conts = []
    for label in labels:
        ids = tokenizer(f"{anchor} {label}", add_special_tokens=False)["input_ids"]
        if ids[: len(base)] != base:
            raise ValueError(f"tokenizer splits {anchor!r} differently before {label!r}; cannot read it")
        conts.append(ids[len(base) :])
    common = 0
    while all(len(c) > common + 1 for c in conts) and len({c[common] for c in conts}) == 1:
        common += 1
    if any(len(c) != common + 1 for c in conts):
        # e.g. " 1".." 5" are one token each but " 0" is " " + "0": the first token after the anchor
        # would be the bare space for 0, and p(" ") is not p(0). One next token cannot read such labels.
        shapes = {label: [tokenizer.decode([t]) for t in c] for label, c in zip(labels, conts)}
        raise ValueError(
            f"the tokenizer writes the labels after {anchor!r} with different numbers of tokens "
            f"({shapes}); their probabilities cannot be read as one next token"
        )
    targets = [c[common] for c in conts]
    if len(set(targets)) != len(targets):
        raise ValueError(f"the labels {labels} do not map to distinct tokens after {anchor!r}")
    return anchor + tokenizer.decode(conts[0][:common]), targets


def score_tokens(tokenizer, anchor: str = "Score:") -> tuple[str, list[int]]:
    """`label_tokens` for the digits 0..5 after `Score:`."""
    return label_tokens(tokenizer, anchor, [str(d) for d in range(MAX_SCORE + 1)])


def is_top_score(score: float | None, readout: str) -> bool:
    """Whether a candidate "scored 5 out of 5" (the paper's 5-best metric and its positive-only
    variant) under each readout: `sampled`, every valid judgment said `Score: 5` (their mean is
    exactly 5; 5, 5, 4 is not a 5); `expected`, a continuous score that never reaches 5.0, the
    expected score rounds half up to 5 (at least 4.5)."""
    if score is None or score != score:
        return False
    return score >= MAX_SCORE if readout == "sampled" else score >= MAX_SCORE - 0.5


LOW_DIGIT_MASS = 0.5  # below this, most of the next-token probability is on no digit: a score read from noise


def expected_score(probs) -> float:
    """Σ p(n)·n over n = 0..5, renormalised over those six tokens."""
    total = float(sum(probs))
    if total <= 0:
        return float("nan")
    return float(sum(p * n for n, p in enumerate(probs)) / total)


_SCORE_ANCHOR = re.compile(r"score\s*\**\s*:", re.IGNORECASE)  # `Score:` with or without a value after it


def _before_score(judgment: str) -> str:
    """The judgment up to its last `Score:` (exclusive; also a trailing one with nothing after it, as a
    judgment cut off right there ends), or all of it plus a line break."""
    matches = list(_SCORE_ANCHOR.finditer(judgment))
    if matches:
        return judgment[: matches[-1].start()]
    return judgment.rstrip() + "\n"


def candidate_scores(result: dict, scoring: str) -> dict:
    """A candidate's scores from its judgments: `sampled_score` (mean of the valid parsed scores),
    `expected_score` (mean of the expected scores, when read), `direct_score` (the digits read right
    after the prompt, when read) and `score`, the one `scoring` selects. None where nothing gave a value."""
    sampled = average(result["scores"])
    exp = [v for v in result.get("expected_scores", []) if v == v]  # drop NaN
    expected = round(sum(exp) / len(exp), 4) if exp else None
    direct = [v for v in result.get("direct_scores", []) if v == v]
    direct_score = round(sum(direct) / len(direct), 4) if direct else None
    needs = {"expected": "expected_scores", "direct": "direct_scores"}.get(scoring)
    if needs and needs not in result:
        raise ValueError(f"scoring={scoring!r} needs judgments read with that readout ({needs})")
    return {
        "sampled_score": sampled,
        "expected_score": expected,
        "direct_score": direct_score,
        "score": {"expected": expected, "direct": direct_score, "sampled": sampled}[scoring],
    }


# "Winner: A", "**Winner:** B", "winner : tie", "Winner: **A**."
_WINNER = re.compile(r"winner\s*\**\s*:", re.IGNORECASE)
_VERDICT = re.compile(r"[\s*_\[(\"'`]*(a|b|tie)(?![a-z0-9])([^\n]*)", re.IGNORECASE)


def parse_verdict(text: str) -> str | None:
    """The judge ends with `Winner: A`, `Winner: B` or `Winner: Tie` (any case). Returns "A", "B",
    "tie", or None when there is no `Winner:` or the last one is not followed by one of those.

    Only the last `Winner:` counts (earlier, even conflicting, verdicts are ignored). Markdown and
    brackets around it are tolerated (`**Winner:** A`, `Winner: **B**.`, `Winner: [A]`), as is
    trailing punctuation; any other word on the rest of that line (`Winner: A and B`) makes it None."""
    anchors = list(_WINNER.finditer(text))
    if not anchors:
        return None
    m = _VERDICT.match(text, anchors[-1].end())
    if not m or re.search(r"[A-Za-z0-9]", m.group(2)):
        return None
    v = m.group(1).lower()
    return "tie" if v == "tie" else v.upper()


_META_WINNER = re.compile(r"winner\s*\**\s*:\s*[*\[(\"'`\s]*judge?ments?\s*\**\s*(a|b)(?![a-z0-9])", re.IGNORECASE)


def parse_meta_verdict(text: str) -> str | None:
    """The meta-judge ends with `Winner: Judgement A` or `Winner: Judgment B` (any case, brackets and
    markdown tolerated). Returns "A", "B", or None when the last `Winner:` names neither."""
    anchors = list(_WINNER.finditer(text))
    if not anchors:
        return None
    m = _META_WINNER.match(text, anchors[-1].start())
    return m.group(1).upper() if m else None


def combine_orders(first: str | None, second: str | None) -> str:
    """X's outcome from two verdicts: `first` with X shown as A and Y as B, `second` with Y as A and
    X as B. "win" only when both prefer X ("A" then "B"), "loss" only when both prefer Y ("B" then
    "A"); anything else (the orders disagree, an explicit tie, an unparsable verdict) is "tie"."""
    if first == "A" and second == "B":
        return "win"
    if first == "B" and second == "A":
        return "loss"
    return "tie"


def calibrated_preference(p_a_ab: float, p_a_ba: float) -> float:
    """p(X better) from p(A) with X shown first (`p_a_ab`) and with Y shown first (`p_a_ba`):
    (p_a_ab + 1 - p_a_ba) / 2 averages out a constant preference for a position (balanced position
    calibration)."""
    return (p_a_ab + 1 - p_a_ba) / 2


def calibrated_outcome(p_a_ab: float, p_a_ba: float) -> str:
    """X's outcome from `calibrated_preference`: X wins above ½, loses below, ties at exactly ½."""
    p = calibrated_preference(p_a_ab, p_a_ba)
    return "win" if p > 0.5 else "loss" if p < 0.5 else "tie"


def health_problems(metrics: dict, health, scoring: str) -> list[str]:
    """What makes a judge unfit by the `judge.health` thresholds, as readable reasons (empty: healthy)."""
    nan = float("nan")
    checks = [
        ("scored rate", metrics["candidates_scored"] / max(1, metrics["candidates"]), health.min_scored_rate, ">="),
        ("tie rate", metrics.get("tie_rate", nan), health.max_tie_rate, "<="),
        ("score entropy (bits)", metrics.get("score_entropy", nan), health.min_score_entropy, ">="),
    ]
    if scoring in ("expected", "direct"):
        checks.append(("digit mass", metrics.get("digit_mass_mean", nan), health.min_digit_mass, ">="))
    out = []
    for name, value, bound, op in checks:
        if value is None or value != value:  # undefined (e.g. no pair of scored candidates): not a pass
            out.append(f"{name} undefined (needs {op} {bound})")
        elif not (value >= bound if op == ">=" else value <= bound):
            out.append(f"{name} {value:.3g}, needs {op} {bound}")
    return out
