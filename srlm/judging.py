"""Judging with a model: the paper's judge prompt over (instruction, response) items with both readouts,
the candidates of an iteration, the pairwise verdicts of the head-to-head, Meta-Rewarding's meta-judge
verdicts, and the EFT construction."""

from __future__ import annotations

from .metrics import length_bias, score_histogram, score_spread
from .prompts import judge_prompt, meta_judge_prompt, pairwise_prompt
from .sampling import chat_prompt
from .scores import (
    _before_score,
    agrees_with_ranking,
    candidate_scores,
    expected_score,
    judge_metrics,
    label_tokens,
    parse_meta_verdict,
    parse_score,
    parse_verdict,
    score_tokens,
)


def judge_responses(
    generator, items: list[tuple[str, str]], sampling, expected: bool = True, desc: str = "judge", scoring: str = ""
):
    """Judge (instruction, response) items with the Figure 2 prompt, `sampling.n` samples each.

    Returns, per item, the judgment texts, their parsed scores (None when unparsable) with the
    parse status, and (expected=True) the expected score read after `Score:` at the end of each
    judgment. Both readouts are kept so that pairs can break ties and reports can compare them.
    With scoring="direct", nothing is sampled: the digits are read right after the prompt with
    `Score:` as the answer's start (`direct_scores`, one per item, and its digit mass)."""

    tok = generator.tokenizer
    prompts = [chat_prompt(tok, judge_prompt(ins, resp)) for ins, resp in items]
    if scoring == "direct":
        anchor, targets = score_tokens(tok)
        probs = generator.next_token_probs(prompts, [[anchor]] * len(prompts), targets, desc=f"{desc} (direct)")
        return [
            {
                "judgments": [],
                "scores": [],
                "statuses": [],
                "direct_scores": [round(expected_score(p[0].tolist()), 4)],
                "digit_mass": [round(float(p[0].sum()), 4)],
            }
            for p in probs
        ]
    outs = generator.generate(prompts, sampling, desc=desc)
    results = []
    for comps in outs:
        parsed = [parse_score(c.text) for c in comps]
        results.append(
            {
                "judgments": [c.text for c in comps],
                "scores": [p.score for p in parsed],
                "statuses": [p.status for p in parsed],
            }
        )
    if expected:
        anchor, targets = score_tokens(tok)
        conts = [[_before_score(j) + anchor for j in r["judgments"]] for r in results]
        probs = generator.next_token_probs(prompts, conts, targets, desc=f"{desc} (expected score)")
        for r, p in zip(results, probs):
            r["expected_scores"] = [round(expected_score(row.tolist()), 4) for row in p]
            # How much probability the digits had before renormalising: near 0, the expected score is noise.
            r["digit_mass"] = [round(float(row.sum()), 4) for row in p]
    return results


def judge_candidates(generator, cands: list[dict], sampling, scoring: str, desc: str = "judge"):
    """Judge candidate rows ({prompt_id, candidate_id, prompt, response}) with both readouts.
    Returns the rows with their judgments and scores, and the judge's metrics, bias monitor
    included (how the score follows the response's length)."""
    judged = judge_responses(
        generator, [(c["prompt"], c["response"]) for c in cands], sampling, desc=desc, scoring=scoring
    )
    rows = [
        {
            "prompt_id": c["prompt_id"],
            "candidate_id": c["candidate_id"],
            "prompt": c["prompt"],
            "response": c["response"],
            "finish_reason": c.get("finish_reason"),
            **j,
            **candidate_scores(j, scoring),
        }
        for c, j in zip(cands, judged)
    ]
    scores = [r["score"] for r in rows]
    metrics = judge_metrics(
        [s for r in rows for s in r["statuses"]],
        [s for r in rows for s in r["scores"]],
        [x for r in rows for x in r.get("digit_mass", [])],
    )
    metrics |= {"scoring": scoring, "candidates": len(rows), "candidates_scored": sum(s is not None for s in scores)}
    if scoring == "direct":  # no judgment written: nothing to parse
        metrics["parse_rate"] = None
    for key in ("sampled_score", "expected_score", "direct_score"):
        vals = [r[key] for r in rows if r[key] is not None]
        metrics[f"{key}_mean"] = sum(vals) / len(vals) if vals else float("nan")
    metrics |= length_bias(scores, [len(r["response"]) for r in rows], [r["prompt_id"] for r in rows])
    metrics |= score_spread(scores, [r["prompt_id"] for r in rows])
    metrics |= {f"candidate_{k}": v for k, v in score_histogram(scores).items()}
    return rows, metrics


def pairwise_verdicts(generator, items: list[tuple[str, str, str]], mode: str, sampling) -> list[dict]:
    """For each (instruction, x, y), the judge's verdict with x shown as A (`ab`) and with the
    order swapped (`ba`). mode="sampled": the judge writes its reasoning and `Winner: A|B`.
    mode="probability" (or "calibrated"): p(A) vs p(B) as the next token after `Winner:`, read by
    teacher forcing; `p_a_ab` and `p_a_ba` keep p(A) / (p(A) + p(B)) of both orders."""

    tok = generator.tokenizer
    prompts = [chat_prompt(tok, pairwise_prompt(ins, x, y)) for ins, x, y in items] + [
        chat_prompt(tok, pairwise_prompt(ins, y, x)) for ins, x, y in items
    ]
    n = len(items)
    if mode == "sampled":
        outs = generator.generate(prompts, sampling, desc="head-to-head")
        texts = [o[0].text for o in outs]
        return [
            {
                "ab": parse_verdict(texts[i]),
                "ba": parse_verdict(texts[n + i]),
                "text_ab": texts[i],
                "text_ba": texts[n + i],
            }
            for i in range(n)
        ]
    pa = _p_first(generator, prompts, "Winner:", "head-to-head")
    verdict = ["A" if v > 0.5 else "B" if v < 0.5 else "tie" for v in pa]
    return [
        {"ab": verdict[i], "ba": verdict[n + i], "p_a_ab": round(pa[i], 4), "p_a_ba": round(pa[n + i], 4)}
        for i in range(n)
    ]


def _p_first(generator, prompts: list[str], anchor: str, desc: str) -> list[float]:
    """p(A) / (p(A) + p(B)) as the next token after `anchor` at the start of each answer (teacher forcing)."""
    text, targets = label_tokens(generator.tokenizer, anchor, ["A", "B"])
    probs = generator.next_token_probs(prompts, [[text]] * len(prompts), targets, desc=desc)
    return [float(p[0, 0] / (p[0, 0] + p[0, 1])) for p in probs]


def meta_verdicts(generator, items: list[tuple[str, str, str, str]], mode: str, sampling) -> list[dict]:
    """The meta-judge's verdict on each (instruction, response, judgment A, judgment B): {"verdict": "A",
    "B" or None (an unparsable written verdict; p(A) exactly ½), "p_a": p(A) / (p(A) + p(B)) or None}.
    mode="sampled": the model writes its reasoning and `Winner: Judgement A|B` (the paper);
    mode="probability": p(A) vs p(B) after `Winner: Judgement`."""
    prompts = [chat_prompt(generator.tokenizer, meta_judge_prompt(*it)) for it in items]
    if mode == "sampled":
        outs = generator.generate(prompts, sampling, desc="meta-judge")
        return [{"verdict": parse_meta_verdict(o[0].text), "p_a": None} for o in outs]
    return [
        {"verdict": "A" if v > 0.5 else "B" if v < 0.5 else None, "p_a": round(v, 6)}
        for v in _p_first(generator, prompts, "Winner: Judgement", "meta-judge")
    ]


def build_eft(generator, ranked_sets: list[dict], sampling) -> tuple[list[dict], dict]:
    """The paper's EFT construction: the SFT baseline judges every response of a ranked set;
    `sampling.n` attempts per response; the set's judgments are kept from the first attempt whose
    scores order the responses as the human ranks do."""
    items = [(s["instruction"], r["text"]) for s in ranked_sets for r in s["responses"]]
    judged = judge_responses(generator, items, sampling, expected=False, desc="build_eft")
    examples, kept_sets, pos = [], 0, 0
    statuses, scores = [], []
    for s in ranked_sets:
        rows = judged[pos : pos + len(s["responses"])]
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
                    examples.append(
                        {
                            "id": f"{s['id']}-r{resp['rank']}",
                            "instruction": s["instruction"],
                            "response": resp["text"],
                            "judgment": r["judgments"][a],
                            "score": r["scores"][a],
                            "source": "sft_baseline",
                        }
                    )
                break
    metrics = {
        "ranked_sets": len(ranked_sets),
        "sets_agreeing": kept_sets,
        "agreement_rate": kept_sets / len(ranked_sets) if ranked_sets else 0.0,
        **judge_metrics(statuses, scores),
    }
    return examples, metrics
