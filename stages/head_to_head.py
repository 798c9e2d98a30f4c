"""head_to_head@<a>_vs_<b>: the evaluation judge (evaluation.judge, any model directory) compares model a's
and model b's responses to the held-out prompts in both orders; disagreement is a tie. Win/tie/loss from
a's side, and the win rate with the length difference regressed out. With evaluation.self_preference,
model a also judges the same pairs: how much more it favours its own answers than the judge does."""

from pathlib import Path

from srlm import artifacts, stage
from srlm.config import derive_seed
from srlm.evaluation import head_to_head
from srlm.io import DataError
from srlm.metrics import head_to_head_summary, paired_difference
from srlm.sampling import SamplingParams
from srlm.tracking import stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = [
    "seed",
    "generation",
    "evaluation.judge",
    "evaluation.verdict",
    "evaluation.temperature",
    "evaluation.top_p",
    "evaluation.verdict_max_new_tokens",
    "evaluation.self_preference",
    "model.trust_remote_code",
]


def run(params, name, matchup):
    ev = params.evaluation
    with stage_run("head_to_head", stage.tracked(params, PARAMS) | {"matchup": matchup}, instance=name):
        x, y = artifacts.responses(matchup["a"]).read(), artifacts.responses(matchup["b"]).read()
        generator = stage.generator(params, Path(ev.judge), f"head_to_head@{name}")
        sampling = SamplingParams.of(
            ev, max_new_tokens=ev.verdict_max_new_tokens, seed=derive_seed(params.seed, "head_to_head")
        )
        try:
            rows, metrics = head_to_head(generator, x, y, ev.verdict, sampling)
        except ValueError as e:
            raise DataError(f"head_to_head@{name}: {e}") from None
        generator.clear()
        if ev.self_preference:
            own = stage.generator(params, matchup["a"], f"head_to_head@{name}.self")
            self_rows, self_metrics = head_to_head(own, x, y, ev.verdict, sampling)
            own.clear()
            for r, s in zip(rows, self_rows):
                r["self_outcome"] = s["outcome"]
            diff = paired_difference(
                [s["outcome"] for s in self_rows],
                [r["outcome"] for r in rows],
                head_to_head_summary,
                ["win_rate_ties_half"],
                sampling.seed,
            )
            metrics |= {
                "self_judged_win_rate": self_metrics["win_rate_ties_half"],
                "self_preference": diff["win_rate_ties_half_diff"],
                "self_preference_ci_low": diff["win_rate_ties_half_diff_ci_low"],
                "self_preference_ci_high": diff["win_rate_ties_half_diff_ci_high"],
            }
        artifacts.verdicts(name).write(rows)
        write_metrics(
            artifacts.matchup_metrics(name),
            metrics
            | {
                "a": matchup["a"],
                "b": matchup["b"],
                "judge": ev.judge,
                "verdict": ev.verdict,
                "dtype": generator.dtype,
            },
        )


if __name__ == "__main__":
    stage.main(run, needs="matchup")
