"""judge@t: M_t scores each candidate with the paper's rubric, judge.samples judgments averaged."""

from srlm import artifacts, stage
from srlm.config import derive_seed
from srlm.io import DataError
from srlm.judging import judge_candidates
from srlm.sampling import SamplingParams
from srlm.scores import health_problems
from srlm.tracking import stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = ["seed", "judge", "generation", "model.trust_remote_code"]


def run(params, key, it):
    cfg = params.judge
    with stage_run("judge", stage.tracked(params, PARAMS), iteration=key):
        cands = artifacts.candidates(key).read()
        generator = stage.generator(params, it["model"], f"judge@{key}")
        sampling = SamplingParams.of(cfg, n=cfg.samples, seed=derive_seed(params.seed, "judge", key))
        rows, metrics = judge_candidates(generator, cands, sampling, cfg.scoring)
        artifacts.judgments(key).write(rows)
        write_metrics(artifacts.iteration_metrics(key, "judge"), metrics | {"dtype": generator.dtype})
        generator.clear()
        problems = health_problems(metrics, cfg.health, cfg.scoring) if cfg.health.enabled else []
        if problems:
            raise DataError(
                f"judge@{key}: the judge M_{key} is below judge.health on {metrics['candidates']} candidates: "
                f"{'; '.join(problems)}. The iteration stops here (metrics in "
                f"{artifacts.iteration_metrics(key, 'judge')}); lower the thresholds or set "
                "judge.health.enabled: false to train on these scores anyway"
            )


if __name__ == "__main__":
    stage.main(run, needs_iteration=True)
