"""meta_judge@t (Meta-Rewarding): per prompt, M_t compares its own judgments of the candidate it
was least sure of (both orders of every pair), a Bradley–Terry fit ranks the judgments, and the best
vs the worst becomes a judge pair for dpo@t. An empty file, and no work, unless method=meta and t is
one of meta.judge_iterations."""

from srlm import artifacts, stage
from srlm.config import derive_seed
from srlm.judge_pairs import select_judge_pairs
from srlm.judging import meta_verdicts
from srlm.sampling import SamplingParams
from srlm.tracking import log_artifact, stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = ["seed", "method", "meta", "judge.scoring", "generation", "model.trust_remote_code"]


def run(params, key, it):
    cfg, out = params.meta, artifacts.judge_pairs(key)
    with stage_run("meta_judge", stage.tracked(params, PARAMS), iteration=key):
        if params.method != "meta" or int(key) not in cfg.judge_iterations:
            out.write([])
            write_metrics(artifacts.iteration_metrics(key, "meta_judge"), {"method": params.method, "judge_pairs": 0})
            return
        judged = artifacts.judgments(key).read()
        generator = stage.generator(params, it["model"], f"meta_judge@{key}")
        sampling = SamplingParams.of(cfg, n=1, seed=derive_seed(params.seed, "meta_judge", key))
        pairs, metrics = select_judge_pairs(
            judged,
            params.judge.scoring,
            lambda items: meta_verdicts(generator, items, cfg.verdict, sampling),
            cfg.position,
            cfg,
        )
        generator.clear()
        out.write(pairs)
        log_artifact(out.path)
        write_metrics(
            artifacts.iteration_metrics(key, "meta_judge"),
            metrics | {"method": params.method, "model": it["model"], "verdict": cfg.verdict, "position": cfg.position},
        )


if __name__ == "__main__":
    stage.main(run, needs_iteration=True)
