"""The report after `dvc repro`: every number read from a stage's metrics file, laid out as the
paper does (Table 2 for rewarding, Figure 3 for instruction following), plus the per-iteration
view of what the loop did (prompts, parse rate, pairs, lengths, consistency)."""

from __future__ import annotations

import argparse
import functools
import json
import math
import subprocess
import sys
from pathlib import Path

from . import artifacts
from .config import derive_seed, judge_conflict, parse_params
from .io import DataError, atomic_write_text
from .metrics import (
    FOLLOW_INTERVALS,
    LENGTH_SPLIT,
    follow_metrics,
    items_for_five_points,
    missing,
    paired_difference,
    reward_model_metrics,
)
from .tracking import write_metrics


def file_loader(root: Path = Path(".")):
    """Read a metrics file of the workspace."""

    def load(path: str) -> dict:
        try:
            return json.loads((root / path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{root / path}: missing; run `dvc repro` so the stage that writes it runs first") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{root / path}: not valid JSON ({e})") from None

    return load


def git_text(rev: str, path: str, root: Path = Path(".")) -> str:
    """A file as committed in a git revision. Metrics are not DVC-cached, so every DVC
    experiment's commit holds its own."""
    p = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True)
    if p.returncode != 0:
        raise DataError(f"{rev}:{path}: not in that revision ({p.stderr.strip()})")
    return p.stdout


def git_loader(rev: str, root: Path = Path(".")):
    """Read a metrics file of a git revision (a DVC experiment's commit)."""
    return lambda path: json.loads(git_text(rev, path, root))


def _optional(load, path) -> dict:
    """A metrics file that runs before 2026-12-01 (evening) did not write: empty there, so old experiments
    still compare."""
    try:
        return load(str(path))
    except (DataError, json.JSONDecodeError):
        return {}


def collect(params, load=None) -> dict:
    """All metrics the report shows, keyed as the stages wrote them."""
    load = load or file_loader()
    its = {
        k: {
            name: load(artifacts.iteration_metrics(k, name))
            for name in ("gen_prompts", "sample", "judge", "judge_prev", "pairs", "dpo")
        }
        | {"meta_judge": _optional(load, artifacts.iteration_metrics(k, "meta_judge"))}
        for k in map(str, params.iterations)
    }
    models = {
        m: {name: load(artifacts.eval_metrics(m, name)) for name in ("judge", "answer")}
        | {"follow": _optional(load, artifacts.eval_metrics(m, "follow"))}
        for m in params.evaluation.models
    }
    h2h = {n: load(artifacts.matchup_metrics(n)) for n in params.evaluation.matchups}
    return {
        "iterations": its,
        "models": models,
        "head_to_head": h2h,
        "seed": load(artifacts.metrics("prepare_seed")),
        "eft": load(artifacts.metrics("build_eft")),
    }


def comparisons_of(params) -> list[tuple[str, str]]:
    """The paired comparisons the report makes: each model against its predecessor (the SFT baseline and M1
    against M0, M_{t+1} against M_t) and each self-rewarding model against the SFT baseline."""
    models = list(params.evaluation.models)
    before = {"sft_baseline": "m0", "m1": "m0"} | {it["next"]: it["model"] for it in params.iterations.values()}
    out = [(m, before[m]) for m in models if before.get(m) in models]
    out += [(m, "sft_baseline") for m in models if m not in ("m0", "sft_baseline") and "sft_baseline" in models]
    return list(dict.fromkeys(out))


def _mean_reference_logprob(rows: list[dict]) -> dict:
    return {"reference_logprob": sum(r["reference_logprob"] for r in rows) / len(rows) if rows else math.nan}


def _mean_response_tokens(rows: list[dict]) -> dict:
    return {"response_tokens": sum(r["num_tokens"] for r in rows) / len(rows) if rows else math.nan}


# Paired differences that are not rates: shown as they are (not in points), and not sized for ±5 points.
NOT_RATES = {"reference_logprob_diff": 3, "response_tokens_diff": 1}  # key -> decimals shown


def _diff_style(key: str) -> dict:
    """How a paired difference is shown: a rate in points, or as it is with its decimals (NOT_RATES)."""
    return {"pct": key not in NOT_RATES, "digits": NOT_RATES.get(key, 3)}


def paired_comparisons(params) -> dict:
    """Model a minus model b on the same held-out items, with 95 % paired-bootstrap intervals: Table 2's
    pairwise accuracy (resampling ranked sets), the IFEval accuracies, the mean log-probability of the
    held-out reference responses and the length in tokens of the answers to the held-out prompts (resampling
    prompts). Read from the per-item files of eval_judge, follow and answer."""
    readout = params.judge.scoring

    @functools.cache  # each model's files are read once, however many comparisons it is in
    def ranked(m):
        by_set: dict[str, dict] = {}
        for r in sorted(artifacts.ranked_judgments(m).read(), key=lambda r: r["response_index"]):
            s = by_set.setdefault(r["set_id"], {"id": r["set_id"], "ranks": [], "scores": []})
            s["ranks"].append(r["rank"])
            s["scores"].append(r[f"{readout}_score"])
        return by_set

    @functools.cache
    def scored(m):
        return {r["id"]: r for r in artifacts.reference_logprobs(m).read()}

    @functools.cache
    def answered(m):
        return {r["id"]: r for r in artifacts.responses(m).read()}

    @functools.cache
    def followed(m):
        return {r["id"]: r for r in artifacts.followed(m).read()}

    seed = derive_seed(params.seed, "paired")
    out = {}
    for a, b in comparisons_of(params):
        ra, rb = ranked(a), ranked(b)
        ids = sorted(set(ra) & set(rb))
        judge = paired_difference(
            [ra[i] for i in ids],
            [rb[i] for i in ids],
            lambda ss: reward_model_metrics(ss, readout, per_set=False),
            ["pairwise_accuracy"],
            seed,
        )
        la, lb = scored(a), scored(b)
        rids = sorted(set(la) & set(lb))
        logp = paired_difference(
            [la[i] for i in rids], [lb[i] for i in rids], _mean_reference_logprob, ["reference_logprob"], seed
        )
        aa, ab = answered(a), answered(b)
        aids = sorted(set(aa) & set(ab))
        length = paired_difference(
            [aa[i] for i in aids], [ab[i] for i in aids], _mean_response_tokens, ["response_tokens"], seed
        )
        fa, fb = followed(a), followed(b)
        pids = sorted(set(fa) & set(fb))
        follow = paired_difference([fa[i] for i in pids], [fb[i] for i in pids], follow_metrics, FOLLOW_INTERVALS, seed)
        counts = {
            "ranked_sets": judge.pop("n"),
            "verifiable_prompts": follow.pop("n"),
            "prompts": logp.pop("n"),
            "answered_prompts": length.pop("n"),
        }
        out[f"{a}_vs_{b}"] = {"a": a, "b": b} | counts | judge | follow | logp | length
    return out


METHOD_NAMES = {"srlm": "SRLM", "cream": "CREAM", "meta": "Meta-Rewarding"}


def _f(v, pct: bool = False, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, str):
        return v
    if pct:
        return f"{100 * v:.1f}"
    return f"{v + 0.0:.{digits}f}".replace("-0.000", "0.000") if isinstance(v, float) else str(v)


def _interval(low, high, signed: bool = False, pct: bool = True, digits: int = 3) -> str:
    """A 95 % interval of a rate (or, signed, of a difference), in percent (points), or as is with `digits`."""
    if missing(low, high):
        return "–"
    fmt = ("{:+.1f}" if signed else "{:.1f}") if pct else f"{{:+.{digits}f}}"
    scale = 100 if pct else 1
    return f"[{fmt.format(scale * low)}, {fmt.format(scale * high)}]"


def _signed(v, pct: bool = True, digits: int = 3) -> str:
    return "–" if missing(v) else (f"{100 * v:+.1f}" if pct else f"{v:+.{digits}f}")


def _no_paired_difference(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    """Which paired differences the data cannot tell from zero, and how many items ±5 points would take."""
    undecided, spans = [], {}
    for r in rows:
        for k, label in cols:
            lo, hi = r.get(f"{k}_ci_low"), r.get(f"{k}_ci_high")
            if missing(lo, hi) or not lo <= 0 <= hi:
                continue
            undecided.append(f"{r['comparison']} ({label})")
            if k in NOT_RATES:
                continue  # no ±5 points to size for
            unit = "ranked sets" if k.startswith("pairwise") else "verifiable prompts"
            n = r["ranked_sets"] if unit == "ranked sets" else r["verifiable_prompts"]
            spans.setdefault(unit, []).append((lo, hi, n))
    if not undecided:
        return "Every paired difference above is away from zero by its 95 % interval."
    return (
        f"**No detectable difference at this size** for: {', '.join(undecided)} (the 95 % interval covers "
        "zero). " + " ".join(_sizing(v, unit) for unit, v in spans.items())
    )


def _sizing(intervals: list[tuple[float, float, int]], unit: str) -> str:
    """How many items a 95 % interval of ±5 points would take, from the widest of `intervals` (low, high, n):
    the bootstrap's own width scaled by 1/sqrt(n). An interval that is already that narrow, or has no
    width (every resample the same: the two sides never differ on an item), needs no more items."""
    wide = [(lo, hi, n) for lo, hi, n in intervals if n and hi - lo > 2 * 0.05]
    if wide:
        need = max(items_for_five_points(lo, hi, n) for lo, hi, n in wide)
        return f"An interval of ±5 points would take about {need} {unit}."
    return f"These intervals are already within ±5 points: any difference is smaller than that on these {unit}."


def _no_difference(what: str, unit: str, rows: list[tuple[str, float, float, int]]) -> str:
    """The sentence that says which rates the data cannot tell from chance (50 %), and how many items a 95 %
    interval of ±5 points would take."""
    undecided = [(name, lo, hi, n) for name, lo, hi, n in rows if n and not missing(lo, hi) and lo <= 0.5 <= hi]
    if not undecided:
        return f"Every {what} above is away from chance (50 %) by its 95 % interval."
    names = ", ".join(name for name, *_ in undecided)
    return (
        f"**No detectable difference from chance (50 %)** at this size for: {names} (the 95 % bootstrap "
        f"interval over the {unit} covers 50 %). " + _sizing([(lo, hi, n) for _, lo, hi, n in undecided], unit)
    )


def _length_only_row(models: list[dict]) -> list[list[str]]:
    """Table 2's row for the judge that scores each response by its length (the same sets for every model)."""
    if not models or missing(models[0].get("length_only_pairwise_accuracy")):
        return []
    r = models[0]
    low, high = r["length_only_pairwise_accuracy_ci_low"], r["length_only_pairwise_accuracy_ci_high"]
    return [["length only (no model)", _f(r["length_only_pairwise_accuracy"], True), _interval(low, high)] + ["–"] * 6]


def _beats_judge_free(models: list[dict], sc: str) -> str:
    """Which models' judges are shown to beat both chance and judging by length alone: the lower end of their 95 %
    interval above both; and which are below chance by theirs."""
    length = models[0].get("length_only_pairwise_accuracy") if models else None
    if missing(length):
        return ""
    bar = max(0.5, length)
    above = [
        r["model"]
        for r in models
        if not missing(r[f"{sc}_pairwise_accuracy_ci_low"]) and r[f"{sc}_pairwise_accuracy_ci_low"] > bar
    ]
    below = [
        r["model"]
        for r in models
        if not missing(r[f"{sc}_pairwise_accuracy_ci_high"]) and r[f"{sc}_pairwise_accuracy_ci_high"] < 0.5
    ]
    text = (
        f"A judge counts where it beats both chance and the length-only judge ({_f(length, True)} % on the same "
        "sets): "
        + (
            f"shown for {', '.join(above)} (the lower end of the 95 % interval above both)."
            if above
            else "**no model's judge is shown to beat them at this size** (docs/judge-curve.md measures why at 135M)."
        )
    )
    if below:
        text += f" Below chance by its 95 % interval (ranks responses against the human order): {', '.join(below)}."
    return text


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def tables(c: dict, scoring: str, lineage: dict) -> dict[str, list[dict]]:
    """The report's numbers as flat rows (also written as CSV for `dvc plots`); `lineage` (params'
    iterations) gives each model's lineage, to flag a head-to-head judge that is one of its matchup's sides or
    trained from one."""
    models = []
    for m, v in c["models"].items():
        j, a, f = v["judge"], v["answer"], v["follow"]
        row = {"model": m, "mean_chars": a.get("mean_chars"), "parse_rate": j.get("parse_rate")}
        row["reference_logprob"] = a.get("reference_logprob_mean")
        row["verifiable_prompts"] = f.get("prompts")
        for k in FOLLOW_INTERVALS:
            row[k] = f.get(k)
            row[f"{k}_ci_low"], row[f"{k}_ci_high"] = f.get(f"{k}_ci_low"), f.get(f"{k}_ci_high")
        for readout in ("sampled", "expected", "direct"):
            for k in (
                "sets",
                "pairwise_accuracy_ci_low",
                "pairwise_accuracy_ci_high",
                "pairwise_accuracy",
                "pairwise_tie_rate",
                "five_best",
                "exact_match",
                "spearman",
                "kendall",
                "score_length_spearman",
                "longer_wins_rate",
                *(f"{x}{end}" for x in LENGTH_SPLIT for end in ("", "_ci_low", "_ci_high")),
            ):
                row[f"{readout}_{k}"] = j.get(f"{readout}_{k}")
        for k in ("", "_ci_low", "_ci_high"):
            row[f"length_only_pairwise_accuracy{k}"] = j.get(f"length_only_pairwise_accuracy{k}")
        models.append(row)
    iterations = []
    for k, v in c["iterations"].items():
        g, s, j, p, d = v["gen_prompts"], v["sample"], v["judge"], v["pairs"], v["dpo"]
        mj = v.get("meta_judge", {})
        iterations.append(
            {
                "iteration": int(k),
                "prompts": g.get("prompts_kept", g.get("prompts")),
                "candidates": s.get("candidates"),
                "response_chars": s.get("mean_response_chars"),
                "parse_rate": j.get("parse_rate"),
                "scored_rate": p.get("scored_rate"),
                "pairs": p.get("pairs", 0),
                "dropped_tie": p.get("dropped_tie", 0),
                "tie_broken": p.get("tie_broken", 0),
                "chosen_chars": p.get("chosen_chars_mean"),
                "rejected_chars": p.get("rejected_chars_mean"),
                "longer_chosen_rate": p.get("longer_chosen_rate"),
                "score_length_spearman": j.get("score_length_spearman"),
                "consistency_mean": p.get("consistency_mean"),
                "digit_mass": j.get("digit_mass_mean"),
                "tie_rate": j.get("tie_rate"),
                "all_tied_rate": j.get("all_tied_rate"),
                "score_entropy": j.get("score_entropy"),
                "dpo_margin": d.get("rewards_margins_mean"),
                "dpo_loss": d.get("train_loss"),
                **{f"score_{n}": j.get(f"candidate_score_{n}", 0) for n in range(6)},
                "length_rho": p.get("length_rho"),
                "length_controlled": p.get("length_controlled", 0),
                "meta_compared": mj.get("candidates_compared"),
                "meta_comparisons": mj.get("comparisons"),
                "meta_failure_rate": mj.get("verdict_failure_rate"),
                "meta_position_a": mj.get("position_a_rate"),
                "meta_prefers_higher": mj.get("prefers_higher_score_rate"),
                "judge_pairs_made": mj.get("judge_pairs", 0),
                "judge_pairs_trained": d.get("judge_pairs", 0),
                "judgment_chars": mj.get("judgment_chars_mean"),
                "chosen_judgment_chars": mj.get("chosen_chars_mean"),
                **{f"judgment_score_{n}": mj.get(f"judgment_score_{n}") for n in range(6)},
            }
        )
    h2h = [
        {
            "matchup": n,
            "a": v["a"],
            "b": v["b"],
            "win": v["win_rate"],
            "tie": v["tie_rate"],
            "loss": v["loss_rate"],
            "win_rate": v["win_rate_ties_half"],
            "win_rate_ci_low": v.get("win_rate_ties_half_ci_low"),
            "win_rate_ci_high": v.get("win_rate_ties_half_ci_high"),
            "lc_win_rate": v["lc_win_rate"],
            "n": v["n"],
            "chars_a": v.get("mean_chars_x"),
            "chars_b": v.get("mean_chars_y"),
            "first_position": v.get("verdicts_first_position"),
            "position_consistency": v.get("position_consistency"),
            "self_preference": v.get("self_preference"),
            "self_preference_ci_low": v.get("self_preference_ci_low"),
            "self_preference_ci_high": v.get("self_preference_ci_high"),
            "judge": v.get("judge"),
            "judge_conflict": judge_conflict(v.get("judge", ""), v["a"], v["b"], lineage) or "",
        }
        for n, v in c["head_to_head"].items()
    ]
    paired = [
        {"comparison": f"{v['a']} − {v['b']}"}
        | {k: v.get(k) for k in v if k.endswith(("_diff", "_diff_ci_low", "_diff_ci_high"))}
        | {"ranked_sets": v.get("ranked_sets"), "verifiable_prompts": v.get("verifiable_prompts")}
        for v in c.get("paired", {}).values()
    ]
    return {"models": models, "iterations": iterations, "head_to_head": h2h, "paired": paired}


def render(c: dict, t: dict, params, figures: list[str]) -> str:
    sc = params.judge.scoring
    out = [
        f"# Self-rewarding run report ({METHOD_NAMES[params.method]})",
        "",
        f"Base model `{params.model.base}`; {len(params.iterations)} iteration(s); judge readout "
        f"`judge.scoring: {sc}`; seed data: {c['seed'].get('ift_train')} IFT train, "
        f"{c['seed'].get('ranked_eval')} held-out ranked sets; EFT examples: {c['eft'].get('eft_total')}.",
        "Every number below is read from a stage's metrics file (paths at the end).",
        "",
    ]
    out += [
        "## Reward modelling on the held-out ranked sets (the paper's Table 2)",
        "",
        f"Readout `{sc}`. Pairwise accuracy counts judge ties as wrong; 5-best is the share of responses "
        "scored 5 (≥ 4.5) that are the human's best; exact match: the whole order equals the human one; "
        "Spearman and Kendall τ-b are averaged over sets (constant scores skipped). The 95 % interval of "
        "pairwise accuracy is a bootstrap over the ranked sets (the metrics files also hold those of exact "
        "match and the pooled correlations).",
        "",
    ]
    out.append(
        _table(
            [
                "model",
                "pairwise acc %",
                "95 % CI",
                "tie %",
                "5-best %",
                "exact match %",
                "Spearman",
                "Kendall τ",
                "parse rate %",
            ],
            [
                [
                    r["model"],
                    _f(r[f"{sc}_pairwise_accuracy"], True),
                    _interval(r[f"{sc}_pairwise_accuracy_ci_low"], r[f"{sc}_pairwise_accuracy_ci_high"]),
                    _f(r[f"{sc}_pairwise_tie_rate"], True),
                    _f(r[f"{sc}_five_best"], True),
                    _f(r[f"{sc}_exact_match"], True),
                    _f(r[f"{sc}_spearman"]),
                    _f(r[f"{sc}_kendall"]),
                    _f(r["parse_rate"], True),
                ]
                for r in t["models"]
            ]
            + _length_only_row(t["models"]),
        )
    )
    out += [
        "",
        _no_difference(
            "pairwise accuracy",
            "ranked sets",
            [
                (r["model"], r[f"{sc}_pairwise_accuracy_ci_low"], r[f"{sc}_pairwise_accuracy_ci_high"], r[f"{sc}_sets"])
                for r in t["models"]
            ],
        ),
        "",
        _beats_judge_free(t["models"], sc),
    ]
    out += [
        "",
        "### Sampled vs expected score, and length bias",
        "",
        "The same judgments read two ways: the parsed `Score: N` (sampled, the paper) and Σ p(n)·n after "
        "`Score:` (expected). Length ρ: Spearman correlation between a response's score and its length "
        "(a judge that rewards length shows ρ > 0); longer wins: of two responses to the same instruction "
        "with different scores and lengths, how often the longer one scored higher.",
        "",
    ]
    out.append(
        _table(
            [
                "model",
                "sampled: pairwise acc %",
                "tie %",
                "length ρ",
                "longer wins %",
                "expected: pairwise acc %",
                "tie %",
                "length ρ",
                "longer wins %",
            ],
            [
                [r["model"]]
                + [
                    _f(r[f"{ro}_{k}"], pct)
                    for ro in ("sampled", "expected")
                    for k, pct in (
                        ("pairwise_accuracy", True),
                        ("pairwise_tie_rate", True),
                        ("score_length_spearman", False),
                        ("longer_wins_rate", True),
                    )
                ]
                for r in t["models"]
            ],
        )
    )
    out += [
        "",
        f"Readout `{sc}`, pairwise accuracy split by which response of a pair the human preferred: the shorter "
        "or the longer one. A judge that rewards length is near 0 % on one side and near 100 % on the other; "
        "one that reads content is about equal on both (95 % intervals over the ranked sets).",
        "",
        _table(
            ["model", "preferred shorter %", "95 % CI", "preferred longer %", "95 % CI"],
            [
                [r["model"]]
                + [
                    cell
                    for k in LENGTH_SPLIT
                    for cell in (
                        _f(r[f"{sc}_{k}"], True),
                        _interval(r[f"{sc}_{k}_ci_low"], r[f"{sc}_{k}_ci_high"]),
                    )
                ]
                for r in t["models"]
            ],
        ),
    ]
    out += [
        "",
        "## Instruction following, checked by program (no judge)",
        "",
        f"Each model answers {t['models'][0]['verifiable_prompts'] if t['models'] else 0} held-out prompts "
        "with instructions a program can check (word and sentence limits, required and forbidden words, JSON, "
        "bullets, paragraphs ...), checked by lm-evaluation-harness's IFEval checkers. Prompt-level: every "
        "instruction of the prompt followed; instruction-level: the share of all instructions; loose also "
        "accepts the response without its first or last line or markdown emphasis. Intervals: bootstrap over "
        "the prompts.",
        "",
    ]
    out.append(
        _table(
            [
                "model",
                "prompt strict %",
                "95 % CI",
                "instruction strict %",
                "95 % CI",
                "prompt loose %",
                "instruction loose %",
            ],
            [
                [
                    r["model"],
                    _f(r["prompt_strict"], True),
                    _interval(r["prompt_strict_ci_low"], r["prompt_strict_ci_high"]),
                    _f(r["instruction_strict"], True),
                    _interval(r["instruction_strict_ci_low"], r["instruction_strict_ci_high"]),
                    _f(r["prompt_loose"], True),
                    _f(r["instruction_loose"], True),
                ]
                for r in t["models"]
            ],
        )
    )
    if t["paired"]:
        out += [
            "",
            "## Did a model change? Paired differences",
            "",
            "Model a minus model b on the same items, in points, with a 95 % paired bootstrap interval "
            "(the same ranked sets or prompts resampled for both): judge pairwise accuracy on the held-out "
            "ranked sets, the program-checked instruction following above, and the mean log-probability per "
            "token (nats) of the held-out prompts' reference responses: M_{t+1} − M_t is how far DPO moved the "
            "policy from its reference on text it never trained on; and the mean length in tokens of the "
            "answers to the held-out prompts (the paper's length per iteration; capped by "
            "`evaluation.max_new_tokens`).",
            "",
        ]
        cols = [
            ("pairwise_accuracy_diff", "judge pairwise acc"),
            ("prompt_strict_diff", "prompt strict"),
            ("instruction_strict_diff", "instruction strict"),
            ("reference_logprob_diff", "log p of references"),
            ("response_tokens_diff", "answer tokens"),
        ]
        out.append(
            _table(
                ["a − b"] + [h for _, h in cols for h in (f"{h} Δ", "95 % CI")],
                [
                    [r["comparison"]]
                    + [
                        x
                        for k, _ in cols
                        for x in (
                            _signed(r.get(k), **_diff_style(k)),
                            _interval(r.get(f"{k}_ci_low"), r.get(f"{k}_ci_high"), signed=True, **_diff_style(k)),
                        )
                    ]
                    for r in t["paired"]
                ],
            )
        )
        out += ["", _no_paired_difference(t["paired"], cols)]
    out += [
        "",
        "## Instruction following, head to head (the paper's Figure 3)",
        "",
        f"Judge: `{params.evaluation.judge}`, verdict readout `{params.evaluation.verdict}`, each pair of "
        "responses judged in both orders; a verdict that flips with the order is a tie (with `calibrated`, "
        "p(A) is averaged over both orders instead). Win rate counts a tie as half. LC: the win rate at zero "
        "length difference, from a least-squares line of the outcome (win 1, tie ½, loss 0) on the length "
        "difference.",
        "",
    ]
    out.append(
        _table(
            [
                "a vs b",
                "win %",
                "tie %",
                "loss %",
                "win rate %",
                "95 % CI",
                "LC win rate %",
                "chars a",
                "chars b",
                "n",
                "verdicts for position A %",
                "same verdict both orders %",
                "self-preference of a (points)",
                "95 % CI",
            ],
            [
                [
                    f"{r['a']} vs {r['b']}",
                    _f(r["win"], True),
                    _f(r["tie"], True),
                    _f(r["loss"], True),
                    _f(r["win_rate"], True),
                    _interval(r["win_rate_ci_low"], r["win_rate_ci_high"]),
                    _f(r["lc_win_rate"], True),
                    _f(r["chars_a"], digits=0),
                    _f(r["chars_b"], digits=0),
                    str(r["n"]),
                    _f(r["first_position"], True),
                    _f(r["position_consistency"], True),
                    _signed(r["self_preference"]),
                    _interval(r["self_preference_ci_low"], r["self_preference_ci_high"], signed=True),
                ]
                for r in t["head_to_head"]
            ],
        )
    )
    out += [
        "",
        _no_difference(
            "win rate",
            "prompts",
            [(f"{r['a']} vs {r['b']}", r["win_rate_ci_low"], r["win_rate_ci_high"], r["n"]) for r in t["head_to_head"]],
        ),
    ]
    flagged = [r for r in t["head_to_head"] if r["judge_conflict"]]
    out += (
        [""]
        + [
            f"- **Not an impartial judgment:** {r['a']} vs {r['b']}: {r['judge_conflict']} (judge "
            f"`{r['judge']}`); a model that judges its own answers, or a descendant's, favours them."
            for r in flagged
        ]
        if flagged
        else [
            "",
            f"No matchup is judged by one of its sides or by a model "
            f"trained from one (judge `{params.evaluation.judge}`).",
        ]
    )
    out += [
        "",
        "Self-preference: model a judges the same pairs itself (`evaluation.self_preference`); its win rate "
        "by its own verdicts minus by the judge's, with a paired interval over the prompts. Above zero, a "
        "model favours its own answers more than the judge does; that is what a self-rewarding judge risks.",
    ]
    out += [
        "",
        "An unbiased judge gives position A about half of its verdicts; near 100 % (or 0 %) means the "
        "verdicts follow the position, and the two-order rule turns them into ties "
        "(`evaluation.verdict: calibrated` averages p(A) over both orders instead).",
    ]
    out += ["", "Mean response length on the held-out prompts (the paper: 1092 → 1552 → 2552 characters):", ""]
    out.append(
        _table(
            ["model"] + [r["model"] for r in t["models"]],
            [
                ["chars"] + [_f(r["mean_chars"], digits=0) for r in t["models"]],
                ["log p / token of the references"] + [_f(r["reference_logprob"]) for r in t["models"]],
            ],
        )
    )
    cream = params.method == "cream"
    out += ["", "## What each iteration did", ""]
    header = [
        "iteration",
        "prompts",
        "candidates",
        "response chars",
        "parse rate %",
        "scored %",
        "pairs",
        "ties dropped",
        "ties broken",
        "chosen chars",
        "rejected chars",
        "longer chosen %",
        "score–length ρ",
    ]
    header += ["consistency C"] if cream else []
    header += ["DPO margin", "DPO loss"]
    rows = []
    for r in t["iterations"]:
        row = [
            str(r["iteration"]),
            str(r["prompts"]),
            str(r["candidates"]),
            _f(r["response_chars"], digits=0),
            _f(r["parse_rate"], True),
            _f(r["scored_rate"], True),
            str(r["pairs"]),
            str(r["dropped_tie"]),
            str(r["tie_broken"]),
            _f(r["chosen_chars"], digits=0),
            _f(r["rejected_chars"], digits=0),
            _f(r["longer_chosen_rate"], True),
            _f(r["score_length_spearman"]),
        ]
        row += [_f(r["consistency_mean"])] if cream else []
        row += [_f(r["dpo_margin"], digits=4), _f(r["dpo_loss"])]
        rows.append(row)
    out.append(_table(header, rows))
    out += [
        "",
        "Judge health per iteration, on that iteration's candidates: digit mass, the expected readout's mean "
        "probability on the digits 0–5 after `Score:` (low: the model is not answering with a score); tie rate, "
        "the share of same-prompt candidate pairs scored equal; all tied, the share of prompts with no pair; "
        "entropy of the rounded scores in bits (0: one score for everything, 2.58: all six equally often). "
        "`judge.health` can stop an iteration below set thresholds.",
        "",
    ]
    out.append(
        _table(
            [
                "iteration",
                "parse rate %",
                "scored %",
                "digit mass",
                "tie rate %",
                "all tied %",
                "score entropy",
                "score–length ρ",
            ],
            [
                [
                    str(r["iteration"]),
                    _f(r["parse_rate"], True),
                    _f(r["scored_rate"], True),
                    _f(r["digit_mass"]),
                    _f(r["tie_rate"], True),
                    _f(r["all_tied_rate"], True),
                    _f(r["score_entropy"], digits=2),
                    _f(r["score_length_spearman"]),
                ]
                for r in t["iterations"]
            ],
        )
    )
    out += ["", "Candidate score distribution per iteration (scores rounded to 0–5):", ""]
    out.append(
        _table(
            ["iteration"] + [str(n) for n in range(6)],
            [[str(r["iteration"])] + [str(r[f"score_{n}"]) for n in range(6)] for r in t["iterations"]],
        )
    )
    if params.method == "meta":
        out += _meta_section(t["iterations"])
    if figures:
        out += ["", "## Figures", ""] + [f"![{Path(f).stem}](figures/{Path(f).name})" for f in figures]
    out += [
        "",
        "## Sources",
        "",
        "- reward modelling: `data/eval/<model>/metrics/judge.json`; responses and lengths: "
        "`data/eval/<model>/metrics/answer.json` (AlpacaEval export: `data/eval/<model>/alpaca_eval.json`)",
        "- head to head: `data/eval/head_to_head/<a>_vs_<b>/metrics.json` (verdicts in `verdicts.jsonl`)",
        "- iterations: `data/it<t>/metrics/{gen_prompts,sample,judge,judge_prev,pairs,dpo}.json`",
        "- compare runs: `dvc metrics diff`, `dvc exp show`, `dvc plots diff`",
        "",
    ]
    return "\n".join(out)


def _meta_section(iterations: list[dict]) -> list[str]:
    """What Meta-Rewarding watches (Wu et al. 2024, §4 and Table 5): the meta-judge's biases, the judgment
    pairs and their length, and the judges' score distribution (collapse towards 5)."""
    out = [
        "",
        "## Meta-judge per iteration (Meta-Rewarding)",
        "",
        "Per prompt, the candidate whose judgments varied most; every pair of its judgments compared in both "
        "orders. Position A: the share of verdicts for the judgment shown first (½ = no position bias); higher "
        "score: how often the verdict prefers the judgment giving the higher score (the paper saw 97.7 % by "
        "iteration 2). Judge pairs: made by meta_judge@t, and trained on by dpo@t (`meta.max_judge_share`). "
        "ρ: `pairs.length_rho`, with the actor pairs it changed.",
        "",
    ]
    out.append(
        _table(
            [
                "iteration",
                "ρ",
                "length-controlled pairs",
                "candidates compared",
                "comparisons",
                "verdict failures %",
                "position A %",
                "higher score %",
                "judge pairs made",
                "judge pairs trained",
                "judgment chars",
                "chosen judgment chars",
            ],
            [
                [
                    str(r["iteration"]),
                    _f(r["length_rho"], digits=2),
                    str(r["length_controlled"]),
                    _f(r["meta_compared"], digits=0),
                    _f(r["meta_comparisons"], digits=0),
                    _f(r["meta_failure_rate"], True),
                    _f(r["meta_position_a"], True),
                    _f(r["meta_prefers_higher"], True),
                    str(r["judge_pairs_made"]),
                    str(r["judge_pairs_trained"]),
                    _f(r["judgment_chars"], digits=0),
                    _f(r["chosen_judgment_chars"], digits=0),
                ]
                for r in iterations
            ],
        )
    )
    out += [
        "",
        "Every judgment's own score per iteration (rounded to 0–5; a judge collapsing towards 5 shows here):",
        "",
    ]
    out.append(
        _table(
            ["iteration"] + [str(n) for n in range(6)],
            [[str(r["iteration"])] + [_f(r[f"judgment_score_{n}"], digits=0) for n in range(6)] for r in iterations],
        )
    )
    return out


def figures(t: dict, out_dir: Path, scoring: str) -> list[str]:
    """PNG figures: win/tie/loss bars, reward-model quality and length per model, pairs and
    lengths per iteration, score distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        path = out_dir / f"{name}.png"
        tmp = out_dir / f".{name}.tmp.png"
        fig.tight_layout()
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        tmp.replace(path)
        written.append(str(path))

    def errors(rows, key, lo, hi):  # matplotlib's asymmetric error bars from interval bounds (NaN: none)
        centre = [r[key] if r[key] is not None else math.nan for r in rows]
        low = [c - r[lo] if not missing(c, r[lo]) else 0.0 for c, r in zip(centre, rows)]
        high = [r[hi] - c if not missing(c, r[hi]) else 0.0 for c, r in zip(centre, rows)]
        return centre, [low, high]

    if t["head_to_head"]:
        rows = t["head_to_head"]
        fig, ax = plt.subplots(figsize=(6, 0.7 + 0.45 * len(rows)))
        labels = [f"{r['a']} vs {r['b']}" for r in rows]
        left = [0.0] * len(labels)
        for key, color in (("win", "#2a9d8f"), ("tie", "#cccccc"), ("loss", "#e76f51")):
            vals = [100 * (r[key] or 0) for r in rows]
            ax.barh(labels, vals, left=left, color=color, label=key)
            left = [a + b for a, b in zip(left, vals)]
        centre, err = errors(rows, "win_rate", "win_rate_ci_low", "win_rate_ci_high")
        ax.errorbar(
            [100 * c for c in centre],
            labels,
            xerr=[[100 * e for e in side] for side in err],
            fmt="D",
            color="black",
            capsize=3,
            label="win rate (ties ½), 95 % CI",
        )
        ax.axvline(50, color="black", linestyle="--", linewidth=0.8, label="chance")
        ax.set_xlabel("% of held-out prompts")
        ax.set_xlim(0, 100)
        ax.invert_yaxis()
        ax.legend(loc="lower right", fontsize=7)
        save(fig, "head_to_head")
    if t["models"]:
        rows = t["models"]
        names = [r["model"] for r in rows]
        fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(12, 3.2))
        shown = [
            ro
            for ro in ("sampled", "expected", "direct")
            if any(r[f"{ro}_pairwise_accuracy"] is not None for r in rows)
        ]
        for i, readout in enumerate(shown):
            k = f"{readout}_pairwise_accuracy"
            centre, err = errors(rows, k, f"{k}_ci_low", f"{k}_ci_high")
            x = [j + (i - 0.5) * 0.15 for j in range(len(names))]
            a1.errorbar(x, centre, yerr=err, marker="o", capsize=3, label=readout)
        a1.axhline(0.5, color="black", linestyle="--", linewidth=0.8, label="chance")
        a1.set_xticks(range(len(names)), names)
        a1.set_ylabel("pairwise accuracy (95 % CI)")
        a1.set_title("judge vs human ranks", fontsize=10)
        a1.set_ylim(0, 1)
        a1.legend(fontsize=7)
        for i, level in enumerate(("prompt_strict", "instruction_strict")):
            centre, err = errors(rows, level, f"{level}_ci_low", f"{level}_ci_high")
            x = [j + (i - 0.5) * 0.15 for j in range(len(names))]
            a2.errorbar(x, centre, yerr=err, marker="o", capsize=3, label=level.replace("_", " "))
        a2.set_xticks(range(len(names)), names)
        a2.set_ylabel("share followed (95 % CI)")
        a2.set_title("checkable instructions (no judge)", fontsize=10)
        a2.set_ylim(0, 1)
        a2.legend(fontsize=7)
        a3.bar(names, [r["mean_chars"] or 0 for r in rows], color="#457b9d")
        a3.set_ylabel("mean response chars")
        a3.set_title("response length", fontsize=10)
        save(fig, "models")
    if t["iterations"]:
        its = [r["iteration"] for r in t["iterations"]]
        fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(11, 3))
        a1.bar(its, [r["pairs"] for r in t["iterations"]], color="#2a9d8f", label="pairs")
        a1.bar(
            its,
            [r["dropped_tie"] for r in t["iterations"]],
            bottom=[r["pairs"] for r in t["iterations"]],
            color="#cccccc",
            label="ties dropped",
        )
        a1.set_xlabel("iteration")
        a1.set_title("pairs per iteration", fontsize=10)
        a1.legend(fontsize=8)
        a2.plot(its, [r["chosen_chars"] for r in t["iterations"]], marker="o", label="chosen")
        a2.plot(its, [r["rejected_chars"] for r in t["iterations"]], marker="o", label="rejected")
        a2.set_xlabel("iteration")
        a2.set_ylabel("chars")
        a2.set_title("length of chosen vs rejected", fontsize=10)
        a2.legend(fontsize=8)
        width = 0.8 / len(its)
        for i, r in enumerate(t["iterations"]):
            a3.bar(
                [n + i * width for n in range(6)],
                [r[f"score_{n}"] for n in range(6)],
                width=width,
                label=f"it {r['iteration']}",
            )
        a3.set_xlabel(f"candidate score ({scoring})")
        a3.set_title("score distribution", fontsize=10)
        a3.legend(fontsize=8)
        for a in (a1, a2):
            a.set_xticks(its)
        save(fig, "iterations")
    return written


def interval_tables(t: dict, scoring: str) -> dict[str, list[dict]]:
    """One value and its 95 % interval per row (value, ci_low, ci_high), for `dvc plots` with the
    interval templates in .dvc/plots/ (error bars; the chance line where one applies)."""

    def rows(items, label, key, lo, hi):
        return [{label: r[label], "value": r[key], "ci_low": r[lo], "ci_high": r[hi]} for r in items]

    k = f"{scoring}_pairwise_accuracy"
    out = {
        "judge_accuracy": rows(t["models"], "model", k, f"{k}_ci_low", f"{k}_ci_high"),
        "instruction_following": rows(
            t["models"], "model", "prompt_strict", "prompt_strict_ci_low", "prompt_strict_ci_high"
        ),
        "win_rate": [
            {
                "matchup": f"{r['a']} vs {r['b']}",
                "value": r["win_rate"],
                "ci_low": r["win_rate_ci_low"],
                "ci_high": r["win_rate_ci_high"],
            }
            for r in t["head_to_head"]
        ],
    }
    return out


def write_report(params, out_dir: Path = artifacts.REPORTS) -> dict:
    """Collect, render and write the report (Markdown, PNG figures, CSV tables for `dvc plots`)."""
    import pandas as pd

    c = collect(params)
    c["paired"] = paired_comparisons(params)
    write_metrics(out_dir / artifacts.COMPARISONS.name, c["paired"])
    t = tables(c, params.judge.scoring, params.iterations)
    figs = figures(t, out_dir / "figures", params.judge.scoring)
    for name, rows in (t | interval_tables(t, params.judge.scoring)).items():
        path = out_dir / "plots" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))
    atomic_write_text(out_dir / "report.md", render(c, t, params, figs))
    return t


# --- Comparing runs (e.g. SRLM vs CREAM as two DVC experiments) --------------------------------


def _resolve(name: str, root: Path) -> str:
    """A DVC experiment name, or any git revision, to a commit."""
    from dvc.api import exp_show

    for row in exp_show(repo=str(root)):
        if name in (row.get("Experiment"), row.get("rev")) and row.get("rev") != "workspace":
            return row["rev"]
    return name


def _seed_groups(runs: dict) -> list[list[str]]:
    """Runs whose params are equal except for `seed`, in groups of two or more (the order given)."""
    import dataclasses

    groups: dict[str, list[str]] = {}
    for name, (params, _) in runs.items():
        key = json.dumps(dataclasses.asdict(params) | {"seed": None}, sort_keys=True, default=str)
        groups.setdefault(key, []).append(name)
    return [g for g in groups.values() if len(g) >= 2]


def compare(names: list[str], root: Path = Path(".")) -> str:
    """A Markdown table of the headline numbers of several runs side by side; where two or more runs differ
    only in `seed`, a column with their mean ± standard deviation (run-to-run spread), and the paired
    differences between models of each run (reports/comparisons.json) with their intervals."""
    import yaml

    runs = {}
    for name in names:
        if name == "workspace":
            params, load = parse_params(yaml.safe_load((root / "params.yaml").read_text())), file_loader(root)
        else:
            rev = _resolve(name, root)
            params, load = parse_params(yaml.safe_load(git_text(rev, "params.yaml", root))), git_loader(rev, root)
        paired = _optional(load, artifacts.COMPARISONS)  # stored with sorted keys: back in the report's order
        order = [f"{a}_vs_{b}" for a, b in comparisons_of(params)]
        paired = {k: paired[k] for k in sorted(paired, key=lambda k: order.index(k) if k in order else len(order))}
        c = collect(params, load) | {"paired": paired}
        runs[name] = (params, tables(c, params.judge.scoring, params.iterations))
    return compare_table(runs)


# The paired differences `compare` shows per run: the ones that can move at 135M (log p, length, IFEval).
COMPARED_DIFFS = {
    "reference_logprob_diff": "log p of references Δ",
    "response_tokens_diff": "answer tokens Δ",
    "instruction_strict_diff": "instruction strict Δ (points)",
}


def compare_table(runs: dict) -> str:
    """`compare`'s Markdown: `runs` maps a name to (params, tables(...)) of that run."""
    import statistics

    names = list(runs)
    rows: dict[str, dict[str, str]] = {}
    values: dict[str, dict[str, float]] = {}
    formats: dict[str, tuple[bool, int, bool]] = {}

    def put(label, name, value, pct: bool = False, digits: int = 3, signed: bool = False):
        if isinstance(value, str):
            rows.setdefault(label, {})[name] = value
            return
        rows.setdefault(label, {})[name] = _signed(value, pct, digits) if signed else _f(value, pct, digits)
        if isinstance(value, (int, float)) and not missing(value):
            values.setdefault(label, {})[name] = float(value)
            formats[label] = (pct, digits, signed)

    for name, (params, t) in runs.items():
        sc = params.judge.scoring
        put("method", name, params.method)
        put("judge.scoring", name, sc)
        put("seed", name, str(params.seed))
        for r in t["models"]:
            put(f"{r['model']}: pairwise accuracy % ({sc})", name, r[f"{sc}_pairwise_accuracy"], True)
            put(f"{r['model']}: Kendall τ ({sc})", name, r[f"{sc}_kendall"])
            put(f"{r['model']}: prompt strict % (checked instructions)", name, r.get("prompt_strict"), True)
        for r in t["head_to_head"]:
            put(
                f"{r['a']} vs {r['b']}: win / tie / loss %",
                name,
                f"{_f(r['win'], True)} / {_f(r['tie'], True)} / {_f(r['loss'], True)}",
            )
            put(f"{r['a']} vs {r['b']}: win rate % (ties ½)", name, r["win_rate"], True)
            put(f"{r['a']} vs {r['b']}: LC win rate %", name, r["lc_win_rate"], True)
        for r in t["iterations"]:
            put(f"iteration {r['iteration']}: pairs", name, r["pairs"], digits=0)
            put(f"iteration {r['iteration']}: consistency C", name, r["consistency_mean"])
            put(f"iteration {r['iteration']}: DPO margin", name, r["dpo_margin"], digits=4)
        for r in t["models"]:
            put(f"{r['model']}: response chars", name, r["mean_chars"], digits=0)
        for r in t.get("paired", []):
            for k, label in COMPARED_DIFFS.items():
                style = _diff_style(k)
                v, lo, hi = r.get(k), r.get(f"{k}_ci_low"), r.get(f"{k}_ci_high")
                put(f"{r['comparison']}: {label}", name, v, **style, signed=True)
                if not missing(v, lo, hi):  # the run's own interval, and whether it excludes zero
                    rows[f"{r['comparison']}: {label}"][name] += (
                        " " + _interval(lo, hi, signed=True, **style) + ("" if lo <= 0 <= hi else " *")
                    )
    header, columns = ["", *names], list(names)
    for g in _seed_groups(runs):
        col = f"mean ± sd over seeds ({', '.join(g)})"
        header.append(col)
        columns.append(col)
        for label, v in values.items():
            xs = [v[n] for n in g if n in v]
            if len(xs) >= 2:
                pct, digits, signed = formats[label]
                scale, d = (100, 1) if pct else (1, digits)
                mean = f"{scale * statistics.mean(xs):{'+' if signed else ''}.{d}f}"
                rows[label][col] = f"{mean} ± {scale * statistics.stdev(xs):.{max(d, 1)}f}"
    body = _table(header, [[label, *(v.get(c, "–") for c in columns)] for label, v in rows.items()])
    notes = []
    if any(t.get("paired") for _, t in runs.values()):
        notes.append(
            "A paired difference is model a minus model b on the same held-out items, with that run's 95 % "
            "paired-bootstrap interval; * marks an interval that excludes zero."
        )
    if len(header) > len(names) + 1:
        notes.append(
            "The spread is the sample standard deviation over runs that differ only in `seed`: how much a "
            "number moves from run to run with everything else fixed. A difference between methods smaller than "
            "it is not a finding."
        )
    return f"# Runs side by side\n\n{body}" + "".join(f"\n\n{n}" for n in notes) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m srlm.report", description="Compare runs: DVC experiment names, git revisions or 'workspace'."
    )
    parser.add_argument("command", choices=["compare"])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", default="reports/compare.md")
    args = parser.parse_args(argv)
    try:
        text = compare(args.runs)
    except DataError as e:
        sys.exit(f"error: {e}")
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
