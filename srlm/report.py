"""The report after `dvc repro`: every number read from a stage's metrics file, laid out as the
paper does (Table 2 for rewarding, Figure 3 for instruction following), plus the per-iteration
view of what the loop did (prompts, parse rate, pairs, lengths, consistency)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from . import artifacts
from .config import judge_conflict, parse_params
from .io import DataError, atomic_write_text


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


def collect(params, load=None) -> dict:
    """All metrics the report shows, keyed as the stages wrote them."""
    load = load or file_loader()
    its = {
        k: {
            name: load(artifacts.iteration_metrics(k, name))
            for name in ("gen_prompts", "sample", "judge", "judge_prev", "pairs", "dpo")
        }
        for k in map(str, params.iterations)
    }
    models = {
        m: {name: load(artifacts.eval_metrics(m, name)) for name in ("judge", "answer")}
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


def _f(v, pct: bool = False, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, str):
        return v
    if pct:
        return f"{100 * v:.1f}"
    return f"{v + 0.0:.{digits}f}".replace("-0.000", "0.000") if isinstance(v, float) else str(v)


def _interval(low, high) -> str:
    """A 95 % interval of a rate, in percent."""
    if low is None or high is None or any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return "–"
    return f"[{100 * low:.1f}, {100 * high:.1f}]"


def _no_difference(what: str, unit: str, rows: list[tuple[str, float, float, int]]) -> str:
    """The sentence that says which rates the data cannot tell from chance (50 %), and how many items a 95 %
    interval of ±5 points would take (the bootstrap's own width, scaled by 1/sqrt(n))."""
    undecided = [
        (name, lo, hi, n)
        for name, lo, hi, n in rows
        if n and lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)) and lo <= 0.5 <= hi
    ]
    if not undecided:
        return f"Every {what} above is away from chance (50 %) by its 95 % interval."
    need = max(math.ceil(n * ((hi - lo) / 2 / 0.05) ** 2) for _, lo, hi, n in undecided)
    names = ", ".join(name for name, *_ in undecided)
    return (
        f"**No detectable difference from chance (50 %)** at this size for: {names} (the 95 % bootstrap "
        f"interval over the {unit} covers 50 %). An interval of ±5 points would take about {need} {unit}."
    )


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
        j, a = v["judge"], v["answer"]
        row = {"model": m, "mean_chars": a.get("mean_chars"), "parse_rate": j.get("parse_rate")}
        for readout in ("sampled", "expected"):
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
            ):
                row[f"{readout}_{k}"] = j.get(f"{readout}_{k}")
        models.append(row)
    iterations = []
    for k, v in c["iterations"].items():
        g, s, j, p, d = v["gen_prompts"], v["sample"], v["judge"], v["pairs"], v["dpo"]
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
                "dpo_margin": d.get("rewards_margins_mean"),
                "dpo_loss": d.get("train_loss"),
                **{f"score_{n}": j.get(f"candidate_score_{n}", 0) for n in range(6)},
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
            "judge": v.get("judge"),
            "judge_conflict": judge_conflict(v.get("judge", ""), v["a"], v["b"], lineage) or "",
        }
        for n, v in c["head_to_head"].items()
    ]
    return {"models": models, "iterations": iterations, "head_to_head": h2h}


def render(c: dict, t: dict, params, figures: list[str]) -> str:
    sc = params.judge.scoring
    out = [
        f"# Self-rewarding run report ({params.method.upper()})",
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
            ],
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
        "An unbiased judge gives position A about half of its verdicts; near 100 % (or 0 %) means the "
        "verdicts follow the position, and the two-order rule turns them into ties "
        "(`evaluation.verdict: calibrated` averages p(A) over both orders instead).",
    ]
    out += ["", "Mean response length on the held-out prompts (the paper: 1092 → 1552 → 2552 characters):", ""]
    out.append(
        _table(
            ["model"] + [r["model"] for r in t["models"]],
            [["chars"] + [_f(r["mean_chars"], digits=0) for r in t["models"]]],
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
    out += ["", "Candidate score distribution per iteration (scores rounded to 0–5):", ""]
    out.append(
        _table(
            ["iteration"] + [str(n) for n in range(6)],
            [[str(r["iteration"])] + [str(r[f"score_{n}"]) for n in range(6)] for r in t["iterations"]],
        )
    )
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

    if t["head_to_head"]:
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(t["head_to_head"])))
        labels = [f"{r['a']} vs {r['b']}" for r in t["head_to_head"]]
        left = [0.0] * len(labels)
        for key, color in (("win", "#2a9d8f"), ("tie", "#cccccc"), ("loss", "#e76f51")):
            vals = [100 * (r[key] or 0) for r in t["head_to_head"]]
            ax.barh(labels, vals, left=left, color=color, label=key)
            left = [a + b for a, b in zip(left, vals)]
        ax.set_xlabel("% of held-out prompts")
        ax.invert_yaxis()
        ax.legend(loc="lower right", fontsize=8)
        save(fig, "head_to_head")
    if t["models"]:
        names = [r["model"] for r in t["models"]]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3))
        for readout in ("sampled", "expected"):
            a1.plot(names, [r[f"{readout}_pairwise_accuracy"] for r in t["models"]], marker="o", label=readout)
        a1.set_ylabel("pairwise accuracy")
        a1.set_title("judge vs human ranks", fontsize=10)
        a1.set_ylim(0, 1)
        a1.legend(fontsize=8)
        a2.bar(names, [r["mean_chars"] or 0 for r in t["models"]], color="#457b9d")
        a2.set_ylabel("mean response chars")
        a2.set_title("response length", fontsize=10)
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


def write_report(params, out_dir: Path = artifacts.REPORTS) -> dict:
    """Collect, render and write the report (Markdown, PNG figures, CSV tables for `dvc plots`)."""
    import pandas as pd

    c = collect(params)
    t = tables(c, params.judge.scoring, params.iterations)
    figs = figures(t, out_dir / "figures", params.judge.scoring)
    for name, rows in t.items():
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


def compare(names: list[str], root: Path = Path(".")) -> str:
    """A Markdown table of the headline numbers of several runs side by side."""
    import yaml

    runs = {}
    for name in names:
        if name == "workspace":
            params, load = parse_params(yaml.safe_load((root / "params.yaml").read_text())), file_loader(root)
        else:
            rev = _resolve(name, root)
            params, load = parse_params(yaml.safe_load(git_text(rev, "params.yaml", root))), git_loader(rev, root)
        runs[name] = (params, tables(collect(params, load), params.judge.scoring, params.iterations))
    rows: dict[str, dict[str, str]] = {}

    def put(label, name, value):
        rows.setdefault(label, {})[name] = value

    for name, (params, t) in runs.items():
        sc = params.judge.scoring
        put("method", name, params.method)
        put("judge.scoring", name, sc)
        for r in t["models"]:
            put(f"{r['model']}: pairwise accuracy % ({sc})", name, _f(r[f"{sc}_pairwise_accuracy"], True))
            put(f"{r['model']}: Kendall τ ({sc})", name, _f(r[f"{sc}_kendall"]))
        for r in t["head_to_head"]:
            put(
                f"{r['a']} vs {r['b']}: win / tie / loss %",
                name,
                f"{_f(r['win'], True)} / {_f(r['tie'], True)} / {_f(r['loss'], True)}",
            )
            put(f"{r['a']} vs {r['b']}: LC win rate %", name, _f(r["lc_win_rate"], True))
        for r in t["iterations"]:
            put(f"iteration {r['iteration']}: pairs", name, str(r["pairs"]))
            put(f"iteration {r['iteration']}: consistency C", name, _f(r["consistency_mean"]))
            put(f"iteration {r['iteration']}: DPO margin", name, _f(r["dpo_margin"], digits=4))
        for r in t["models"]:
            put(f"{r['model']}: response chars", name, _f(r["mean_chars"], digits=0))
    body = _table(["", *names], [[label, *(v.get(n, "–") for n in names)] for label, v in rows.items()])
    return f"# Runs side by side\n\n{body}\n"


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
