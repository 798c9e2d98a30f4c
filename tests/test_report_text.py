"""The report's plain statements about what the data can and cannot show."""

from srlm.report import _no_difference, _no_paired_difference

COLS = [("pairwise_accuracy_diff", "judge pairwise acc"), ("prompt_strict_diff", "prompt strict")]


def row(name, **ci):
    out = {"comparison": name, "ranked_sets": 40, "verifiable_prompts": 100}
    for k, (lo, hi) in ci.items():
        out[f"{k}_ci_low"], out[f"{k}_ci_high"] = lo, hi
    return out


def test_a_difference_whose_interval_covers_zero_is_called_undetectable_and_sized():
    text = _no_paired_difference(
        [row("m2 − m1", pairwise_accuracy_diff=(-0.2, 0.2), prompt_strict_diff=(0.02, 0.1))], COLS
    )
    assert "No detectable difference at this size** for: m2 − m1 (judge pairwise acc)" in text
    assert "prompt strict" not in text  # its interval excludes zero
    # ±20 points on 40 sets: (0.2 / 0.05)² · 40 = 640 sets for ±5
    assert "about 640 ranked sets" in text


def test_no_items_are_asked_for_when_the_interval_is_already_narrow_or_empty():
    text = _no_paired_difference(
        [row("m3 − m2", pairwise_accuracy_diff=(0.0, 0.0), prompt_strict_diff=(-0.03, 0.04))], COLS
    )
    assert "(judge pairwise acc), m3 − m2 (prompt strict)" in text
    assert "about" not in text and "already within ±5 points" in text
    assert _no_paired_difference([row("a − b", pairwise_accuracy_diff=(0.1, 0.3))], COLS[:1]).startswith("Every")


def test_chance_statement_for_rates():
    assert "about 64 prompts" in _no_difference("win rate", "prompts", [("m1 vs m0", 0.4, 0.6, 16)])
    assert _no_difference("win rate", "prompts", [("m1 vs m0", 0.6, 0.8, 16)]).startswith("Every win rate")


def test_runs_that_differ_only_in_seed_are_grouped_for_their_spread():
    from srlm.config import parse_params
    from srlm.report import _seed_groups

    runs = {
        "s1": (parse_params({"seed": 1}), None),
        "s2": (parse_params({"seed": 2}), None),
        "cream": (parse_params({"seed": 1, "method": "cream"}), None),
        "s3": (parse_params({"seed": 3}), None),
    }
    assert _seed_groups(runs) == [["s1", "s2", "s3"]]


def test_a_judge_counts_only_above_chance_and_the_length_only_judge():
    from srlm.report import _beats_judge_free, _length_only_row

    def model(name, lo, hi, length=0.58):
        return {
            "model": name,
            "direct_pairwise_accuracy_ci_low": lo,
            "direct_pairwise_accuracy_ci_high": hi,
            "length_only_pairwise_accuracy": length,
            "length_only_pairwise_accuracy_ci_low": length - 0.04,
            "length_only_pairwise_accuracy_ci_high": length + 0.04,
        }

    # m1 is above chance but not above length alone (58 %); m2 clears both; m0 is below chance
    models = [model("m0", 0.38, 0.48), model("m1", 0.52, 0.66), model("m2", 0.6, 0.7)]
    text = _beats_judge_free(models, "direct")
    assert "shown for m2 (" in text and "m1" not in text.split("Below")[0]
    assert "Below chance by its 95 % interval" in text and text.endswith(": m0.")
    none = _beats_judge_free(models[:2], "direct")
    assert "no model's judge is shown to beat them at this size" in none
    assert _length_only_row(models)[0][:3] == ["length only (no model)", "58.0", "[54.0, 62.0]"]
    # metrics from before the baseline existed: no row, no sentence
    assert _length_only_row([{"model": "m0"}]) == [] and _beats_judge_free([{"model": "m0"}], "direct") == ""


def test_compare_shows_each_runs_paired_differences_and_their_spread_over_seeds():
    from srlm.config import parse_params
    from srlm.report import compare_table

    def run(seed, logp, lo, hi, tokens):
        paired = {
            "comparison": "m3 − m2",
            "reference_logprob_diff": logp,
            "reference_logprob_diff_ci_low": lo,
            "reference_logprob_diff_ci_high": hi,
            "response_tokens_diff": tokens,
        }
        return parse_params({"seed": seed}), {"models": [], "head_to_head": [], "iterations": [], "paired": [paired]}

    text = compare_table({"s1": run(1, -0.018, -0.021, -0.015, -7.8), "s2": run(2, -0.010, -0.013, 0.004, 0.6)})
    line = next(x for x in text.splitlines() if x.startswith("| m3 − m2: log p of references Δ"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # each run's difference with its own interval (* where it excludes zero), then mean ± sd over the seeds
    assert cells[1:] == ["-0.018 [-0.021, -0.015] *", "-0.010 [-0.013, +0.004]", "-0.014 ± 0.006"]
    tokens = next(x for x in text.splitlines() if x.startswith("| m3 − m2: answer tokens Δ"))
    assert tokens.rstrip(" |").endswith("-3.6 ± 5.9")  # no interval given: the value alone
    assert "* marks an interval that excludes zero" in text and "differ only in `seed`" in text
    # a run from before the report wrote its paired differences: no such rows, no note
    old = compare_table({"old": (parse_params({}), {"models": [], "head_to_head": [], "iterations": []})})
    assert "log p" not in old and "paired" not in old
