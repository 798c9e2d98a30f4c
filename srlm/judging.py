"""Reading scores out of judgments, averaging them, and checking them against human ranks."""
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
    tail = judgment[last.end():]
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
        if ids[:len(base)] != base:
            raise ValueError(f"tokenizer splits {anchor!r} differently before {label!r}; cannot read it")
        conts.append(ids[len(base):])
    common = 0
    while all(len(c) > common + 1 for c in conts) and len({c[common] for c in conts}) == 1:
        common += 1
    if any(len(c) != common + 1 for c in conts):
        # e.g. " 1".." 5" are one token each but " 0" is " " + "0": the first token after the anchor
        # would be the bare space for 0, and p(" ") is not p(0). One next token cannot read such labels.
        shapes = {label: [tokenizer.decode([t]) for t in c] for label, c in zip(labels, conts)}
        raise ValueError(f"the tokenizer writes the labels after {anchor!r} with different numbers of tokens "
                         f"({shapes}); their probabilities cannot be read as one next token")
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
        return judgment[:matches[-1].start()]
    return judgment.rstrip() + "\n"


def judge_responses(generator, items: list[tuple[str, str]], sampling, expected: bool = True,
                    desc: str = "judge"):
    """Judge (instruction, response) items with the Figure 2 prompt, `sampling.n` samples each.

    Returns, per item, the judgment texts, their parsed scores (None when unparsable) with the
    parse status, and (expected=True) the expected score read after `Score:` at the end of each
    judgment. Both readouts are kept so that pairs can break ties and reports can compare them."""
    from .generation import chat_prompt
    from .prompts import judge_prompt

    tok = generator.tokenizer
    prompts = [chat_prompt(tok, judge_prompt(ins, resp)) for ins, resp in items]
    outs = generator.generate(prompts, sampling, desc=desc)
    results = []
    for comps in outs:
        parsed = [parse_score(c.text) for c in comps]
        results.append({"judgments": [c.text for c in comps], "scores": [p.score for p in parsed],
                        "statuses": [p.status for p in parsed]})
    if expected:
        anchor, targets = score_tokens(tok)
        conts = [[_before_score(j) + anchor for j in r["judgments"]] for r in results]
        probs = generator.next_token_probs(prompts, conts, targets, desc=f"{desc} (expected score)")
        for r, p in zip(results, probs):
            r["expected_scores"] = [round(expected_score(row.tolist()), 4) for row in p]
            # How much probability the digits had before renormalising: near 0, the expected score is noise.
            r["digit_mass"] = [round(float(row.sum()), 4) for row in p]
    return results


def candidate_scores(result: dict, scoring: str) -> dict:
    """A candidate's scores from its k judgments: `sampled_score` (mean of the valid parsed
    scores), `expected_score` (mean of the expected scores, when read) and `score`, the one
    `scoring` selects. None where no judgment gave a value."""
    sampled = average(result["scores"])
    exp = [v for v in result.get("expected_scores", []) if v == v]  # drop NaN
    expected = round(sum(exp) / len(exp), 4) if exp else None
    if scoring == "expected" and "expected_scores" not in result:
        raise ValueError("scoring='expected' needs judgments read with expected=True")
    return {"sampled_score": sampled, "expected_score": expected,
            "score": expected if scoring == "expected" else sampled}


CANDIDATE = {"prompt_id": str, "candidate_id": str, "prompt": str, "response": str}  # candidates.jsonl


def judge_candidates(generator, cands: list[dict], sampling, scoring: str, desc: str = "judge"):
    """Judge candidate rows ({prompt_id, candidate_id, prompt, response}) with both readouts.
    Returns the rows with their judgments and scores, and the judge's metrics, bias monitor
    included (how the score follows the response's length)."""
    from .evaluation import length_bias, score_histogram

    judged = judge_responses(generator, [(c["prompt"], c["response"]) for c in cands], sampling, desc=desc)
    rows = [{"prompt_id": c["prompt_id"], "candidate_id": c["candidate_id"], "prompt": c["prompt"],
             "response": c["response"], "finish_reason": c.get("finish_reason"), **j, **candidate_scores(j, scoring)}
            for c, j in zip(cands, judged)]
    scores = [r["score"] for r in rows]
    metrics = judge_metrics([s for r in rows for s in r["statuses"]], [s for r in rows for s in r["scores"]],
                            [x for r in rows for x in r.get("digit_mass", [])])
    metrics |= {"scoring": scoring, "candidates": len(rows),
                "candidates_scored": sum(s is not None for s in scores)}
    for key in ("sampled_score", "expected_score"):
        vals = [r[key] for r in rows if r[key] is not None]
        metrics[f"{key}_mean"] = sum(vals) / len(vals) if vals else float("nan")
    metrics |= length_bias(scores, [len(r["response"]) for r in rows], [r["prompt_id"] for r in rows])
    metrics |= {f"candidate_{k}": v for k, v in score_histogram(scores).items()}
    return rows, metrics


def pairwise_verdicts(generator, items: list[tuple[str, str, str]], mode: str, sampling) -> list[dict]:
    """For each (instruction, x, y), the judge's verdict with x shown as A (`ab`) and with the
    order swapped (`ba`). mode="sampled": the judge writes its reasoning and `Winner: A|B`.
    mode="probability" (or "calibrated"): p(A) vs p(B) as the next token after `Winner:`, read by
    teacher forcing; `p_a_ab` and `p_a_ba` keep p(A) / (p(A) + p(B)) of both orders."""
    from .evaluation import parse_verdict
    from .generation import chat_prompt
    from .prompts import pairwise_prompt

    tok = generator.tokenizer
    prompts = [chat_prompt(tok, pairwise_prompt(ins, x, y)) for ins, x, y in items] + \
              [chat_prompt(tok, pairwise_prompt(ins, y, x)) for ins, x, y in items]
    n = len(items)
    if mode == "sampled":
        outs = generator.generate(prompts, sampling, desc="head-to-head")
        texts = [o[0].text for o in outs]
        return [{"ab": parse_verdict(texts[i]), "ba": parse_verdict(texts[n + i]),
                 "text_ab": texts[i], "text_ba": texts[n + i]} for i in range(n)]
    anchor, targets = label_tokens(tok, "Winner:", ["A", "B"])
    probs = generator.next_token_probs(prompts, [[anchor]] * len(prompts), targets, desc="head-to-head")
    pa = [float(p[0, 0] / (p[0, 0] + p[0, 1])) for p in probs]
    verdict = ["A" if v > 0.5 else "B" if v < 0.5 else "tie" for v in pa]
    return [{"ab": verdict[i], "ba": verdict[n + i], "p_a_ab": round(pa[i], 4), "p_a_ba": round(pa[n + i], 4)}
            for i in range(n)]


def build_eft(generator, ranked_sets: list[dict], sampling) -> tuple[list[dict], dict]:
    """The paper's EFT construction: the SFT baseline judges every response of a ranked set;
    `sampling.n` attempts per response; the set's judgments are kept from the first attempt whose
    scores order the responses as the human ranks do."""
    items = [(s["instruction"], r["text"]) for s in ranked_sets for r in s["responses"]]
    judged = judge_responses(generator, items, sampling, expected=False, desc="build_eft")
    examples, kept_sets, pos = [], 0, 0
    statuses, scores = [], []
    for s in ranked_sets:
        rows = judged[pos:pos + len(s["responses"])]
        pos += len(s["responses"])
        for r in rows:
            statuses += r["statuses"]
            scores += r["scores"]
        ranks = [r["rank"] for r in s["responses"]]
        for a in range(sampling.n):
            attempt = [r["scores"][a] for r in rows]
            if agrees_with_ranking(attempt, ranks):
                kept_sets += 1
                for resp, r in zip(s["responses"], rows):
                    examples.append({"id": f"{s['id']}-r{resp['rank']}", "instruction": s["instruction"],
                                     "response": resp["text"], "judgment": r["judgments"][a],
                                     "score": r["scores"][a], "source": "sft_baseline"})
                break
    metrics = {"ranked_sets": len(ranked_sets), "sets_agreeing": kept_sets,
               "agreement_rate": kept_sets / len(ranked_sets) if ranked_sets else 0.0,
               **judge_metrics(statuses, scores)}
    return examples, metrics
