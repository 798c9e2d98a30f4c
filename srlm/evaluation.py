"""Running the evaluations with models: every model judges the held-out ranked sets (Table 2), answers the
held-out prompts, and the judge compares two models' answers in both orders (Figure 3)."""

from __future__ import annotations

from .judging import judge_responses, pairwise_verdicts
from .metrics import (
    LENGTH_SPLIT,
    TABLE2_INTERVALS,
    accuracy_by_length,
    bootstrap_intervals,
    follow_metrics,
    head_to_head_summary,
    length_bias,
    length_controlled_win_rate,
    ratio,
    reward_model_metrics,
    score_histogram,
)
from .sampling import chat_prompt
from .scores import calibrated_outcome, candidate_scores, combine_orders, judge_metrics


def judge_ranked_sets(generator, sets: list[dict], sampling, scoring: str) -> tuple[list[dict], dict]:
    """Judge every response of the held-out ranked sets (the paper's Table 2) and compare both
    readouts, the parsed `Score: N` (sampled) and the expected score, with the human ranks (with
    scoring="direct", the one readout that needs no judgment written)."""
    items = [(s["instruction"], r["text"]) for s in sets for r in s["responses"]]
    judged = iter(judge_responses(generator, items, sampling, desc="judge ranked sets", scoring=scoring))
    rows = []
    for s in sets:
        for j, r in enumerate(s["responses"]):
            res = next(judged)
            rows.append(
                {
                    "set_id": s["id"],
                    "response_index": j,
                    "rank": r["rank"],
                    "instruction": s["instruction"],
                    "response": r["text"],
                    **res,
                    **candidate_scores(res, scoring),
                }
            )
    metrics = {"scoring": scoring} | judge_metrics(
        [x for r in rows for x in r["statuses"]],
        [x for r in rows for x in r["scores"]],
        [x for r in rows for x in r.get("digit_mass", [])],
    )
    set_rows = [[r for r in rows if r["set_id"] == s["id"]] for s in sets]
    lengths, set_ids = [len(r["response"]) for r in rows], [r["set_id"] for r in rows]
    if scoring == "direct":
        metrics["parse_rate"] = None  # no judgment written
    for readout in ("direct",) if scoring == "direct" else ("sampled", "expected"):
        key = f"{readout}_score"
        by_set = [
            {
                "id": s["id"],
                "ranks": [r["rank"] for r in rs],
                "scores": [r[key] for r in rs],
                "lengths": [len(r["response"]) for r in rs],
            }
            for s, rs in zip(sets, set_rows)
        ]
        scores = [r[key] for r in rows]
        parts = (
            ranked_set_metrics(by_set, readout, sampling.seed),
            length_bias(scores, lengths, set_ids),
            score_histogram(scores),
        )
        for part in parts:
            metrics |= {f"{readout}_{k}": v for k, v in part.items()}
    return rows, metrics | length_only_baseline(sets, sampling.seed)


def ranked_set_metrics(by_set: list[dict], readout: str, seed: int) -> dict:
    """Table 2's numbers for one readout (reward_model_metrics' sets, plus each response's "lengths"), the
    accuracy split by the preferred response's length, and their 95 % intervals over the ranked sets, seeded (the
    stage's seed: the same resamples for every model)."""
    return (
        reward_model_metrics(by_set, readout)
        | bootstrap_intervals(
            by_set, lambda ss: reward_model_metrics(ss, readout, per_set=False), TABLE2_INTERVALS, seed
        )
        | accuracy_by_length(by_set)
        | bootstrap_intervals(by_set, accuracy_by_length, LENGTH_SPLIT, seed)
    )


def length_only_baseline(sets: list[dict], seed: int) -> dict:
    """A judge that scores each response by its length, on the same sets and resamples: a model's judge must
    beat it (and chance) to count. The built-in ranked sets are written so that length does not predict rank."""
    by_set = [
        {"ranks": [r["rank"] for r in s["responses"]], "scores": [len(r["text"]) for r in s["responses"]]} for s in sets
    ]
    m = reward_model_metrics(by_set, per_set=False) | bootstrap_intervals(
        by_set, lambda ss: reward_model_metrics(ss, per_set=False), ["pairwise_accuracy"], seed
    )
    return {
        f"length_only_{k}": m[k] for k in ("pairwise_accuracy", "pairwise_accuracy_ci_low", "pairwise_accuracy_ci_high")
    }


def answer_prompts(generator, prompts: list[dict], sampling, name: str) -> tuple[list[dict], dict]:
    """One response per held-out prompt ({id, instruction, response}), with AlpacaEval's fields
    (instruction, output, generator) so the file can be scored by an external evaluator."""
    rendered = [chat_prompt(generator.tokenizer, p["instruction"]) for p in prompts]
    outs = generator.generate(rendered, sampling, desc=f"answer ({name})")
    rows = [
        {
            "id": p["id"],
            "instruction": p["instruction"],
            "output": o[0].text,
            "generator": name,
            "num_tokens": o[0].num_tokens,
            "finish_reason": o[0].finish_reason,
        }
        for p, o in zip(prompts, outs)
    ]
    n = len(rows)
    metrics = {
        "responses": n,
        "mean_chars": ratio(sum(len(r["output"]) for r in rows), n),
        "mean_tokens": ratio(sum(r["num_tokens"] for r in rows), n),
        "truncated_rate": ratio(sum(r["finish_reason"] == "length" for r in rows), n),
        "empty_responses": sum(not r["output"] for r in rows),
    }
    return rows, metrics


def reference_logprobs(generator, prompts: list[dict], name: str) -> tuple[list[dict], dict]:
    """The model's mean per-token log-probability of each held-out prompt's reference response: how far
    training moved the model on text it never saw (the report compares M_{t+1} with its DPO reference M_t, item
    by item). One forward pass per prompt, far cheaper than answering, so it runs on more prompts: the paired
    interval of a shift narrows with their square root."""
    rendered = [chat_prompt(generator.tokenizer, p["instruction"]) for p in prompts]
    logps = generator.continuation_logprobs(rendered, [p["response"] for p in prompts], desc=f"log p ({name})")
    rows = [
        {"id": p["id"], "reference_logprob": sum(lp) / len(lp), "reference_tokens": len(lp)}
        for p, lp in zip(prompts, logps)
    ]
    n = len(rows)
    return rows, {"reference_prompts": n, "reference_logprob_mean": ratio(sum(r["reference_logprob"] for r in rows), n)}


def follow_instructions(generator, records: list[dict], sampling, name: str, check) -> tuple[list[dict], dict]:
    """The model's response to each verifiable prompt and, per instruction, whether it was followed,
    `check(record, response) -> (strict, loose)` (srlm.verifiable.check, passed in so that the other
    evaluation stages need not import lm-eval); IFEval's accuracies with intervals over the prompts."""
    outs = generator.generate(
        [chat_prompt(generator.tokenizer, r["instruction"]) for r in records], sampling, desc=f"follow ({name})"
    )
    rows = []
    for r, o in zip(records, outs):
        strict, loose = check(r, o[0].text)
        rows.append(
            {
                "id": r["id"],
                "instruction": r["instruction"],
                "instruction_id_list": r["instruction_id_list"],
                "output": o[0].text,
                "strict": strict,
                "loose": loose,
                "num_tokens": o[0].num_tokens,
                "finish_reason": o[0].finish_reason,
            }
        )
    metrics = follow_metrics(rows, seed=sampling.seed) | {
        "mean_tokens": ratio(sum(r["num_tokens"] for r in rows), len(rows)),
        "truncated_rate": ratio(sum(r["finish_reason"] == "length" for r in rows), len(rows)),
    }
    return rows, metrics


def head_to_head(generator, rows_x: list[dict], rows_y: list[dict], mode: str, sampling) -> tuple[list[dict], dict]:
    """Model X's and Y's responses to the same prompts, aligned by id, compared by the judge in
    both orders; a verdict that changes with the order is a tie (the paper's Figure 3)."""
    by_id = {r["id"]: r for r in rows_y}
    missing = [r["id"] for r in rows_x if r["id"] not in by_id]
    if missing or len(rows_x) != len(rows_y):
        raise ValueError(
            f"the two response files cover different prompts (e.g. {missing[:3]}); "
            "rerun both answer stages with the same evaluation.prompts"
        )
    pairs = [(x, by_id[x["id"]]) for x in rows_x]
    verdicts = pairwise_verdicts(
        generator, [(x["instruction"], x["output"], y["output"]) for x, y in pairs], mode, sampling
    )
    out = []
    for (x, y), v in zip(pairs, verdicts):
        out.append(
            {
                "id": x["id"],
                "instruction": x["instruction"],
                "output_x": x["output"],
                "output_y": y["output"],
                **v,
                "outcome": calibrated_outcome(v["p_a_ab"], v["p_a_ba"])
                if mode == "calibrated"
                else combine_orders(v["ab"], v["ba"]),
            }
        )
    outcomes = [r["outcome"] for r in out]
    len_x = [len(r["output_x"]) for r in out]
    len_y = [len(r["output_y"]) for r in out]
    metrics = head_to_head_summary(outcomes, seed=sampling.seed) | length_controlled_win_rate(outcomes, len_x, len_y)
    order = [v["ab"] for v in verdicts] + [v["ba"] for v in verdicts]
    # the same response preferred in both orders (A then B, or B then A): a judge reading content, not position
    same = sum((v["ab"], v["ba"]) in (("A", "B"), ("B", "A")) for v in verdicts)
    metrics |= {
        "position_consistency": ratio(same, len(verdicts)),
        "verdicts_first_position": ratio(sum(o == "A" for o in order), len(order)),
        "verdicts_unparsed": sum(o is None for o in order),
        "mean_chars_x": ratio(sum(len_x), len(len_x)),
        "mean_chars_y": ratio(sum(len_y), len(len_y)),
    }
    return out, metrics
