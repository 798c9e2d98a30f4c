"""eval_judge@<model>: the model judges every response of the held-out ranked sets; agreement with
the human ranks (pairwise accuracy, 5-best, exact match, Spearman, Kendall) for both readouts."""

from srlm import artifacts, seed, stage
from srlm.config import derive_seed
from srlm.evaluation import judge_ranked_sets
from srlm.sampling import SamplingParams
from srlm.tracking import stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = [
    "seed",
    "judge.scoring",
    "judge.samples",
    "judge.temperature",
    "judge.top_p",
    "judge.max_new_tokens",
    "generation",
    "evaluation.ranked_sets",
    "model.trust_remote_code",
]  # judge.health only stops judge@t


def run(params, model):
    cfg, ev = params.judge, params.evaluation
    with stage_run("eval_judge", stage.tracked(params, PARAMS) | {"model": model}, instance=model):
        sets = seed.limit(seed.load_ranked(artifacts.RANKED_EVAL), ev.ranked_sets, derive_seed(params.seed, "subset"))
        generator = stage.generator(params, model, f"eval_judge@{model}")
        # The same seed for every model: differences come from the models, not the draws.
        sampling = SamplingParams.of(cfg, n=cfg.samples, seed=derive_seed(params.seed, "eval_judge"))
        rows, metrics = judge_ranked_sets(generator, sets, sampling, cfg.scoring)
        artifacts.ranked_judgments(model).write(rows)
        write_metrics(artifacts.eval_metrics(model, "judge"), metrics | {"model": model, "dtype": generator.dtype})
        generator.clear()


if __name__ == "__main__":
    stage.main(run, needs="model")
