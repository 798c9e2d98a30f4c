"""follow@<model>: the model answers the held-out prompts with checkable instructions (word limits,
formats, required words ...); lm-eval's IFEval checkers say which it followed. No judge involved."""

from srlm import artifacts, seed, stage, verifiable
from srlm.config import derive_seed
from srlm.evaluation import follow_instructions
from srlm.sampling import SamplingParams
from srlm.tracking import stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = [
    "seed",
    "generation",
    "evaluation.verifiable_prompts",
    "evaluation.temperature",
    "evaluation.top_p",
    "evaluation.follow_max_new_tokens",
    "model.trust_remote_code",
]


def run(params, model):
    ev = params.evaluation
    with stage_run("follow", stage.tracked(params, PARAMS) | {"model": model}, instance=model):
        records = seed.limit(
            artifacts.VERIFIABLE_EVAL.read(), ev.verifiable_prompts, derive_seed(params.seed, "subset")
        )
        generator = stage.generator(params, model, f"follow@{model}")
        # The same seed for every model (and, for the intervals, the same resampled prompts).
        sampling = SamplingParams.of(
            ev, seed=derive_seed(params.seed, "follow"), max_new_tokens=ev.follow_max_new_tokens
        )
        rows, metrics = follow_instructions(generator, records, sampling, model, verifiable.check)
        artifacts.followed(model).write(rows)
        write_metrics(artifacts.eval_metrics(model, "follow"), metrics | {"model": model, "dtype": generator.dtype})
        generator.clear()


if __name__ == "__main__":
    stage.main(run, needs="model")
