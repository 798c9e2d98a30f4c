"""head_to_head@<a>_vs_<b>: the evaluation judge (evaluation.judge, any model directory) compares model a's
and model b's responses to the
held-out prompts in both orders; disagreement is a tie. Win/tie/loss from a's side, and the
win rate with the length difference regressed out."""

from pathlib import Path

from srlm import artifacts, stage
from srlm.config import derive_seed
from srlm.evaluation import head_to_head
from srlm.io import DataError
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
        generator.clear()


if __name__ == "__main__":
    stage.main(run, needs="matchup")
