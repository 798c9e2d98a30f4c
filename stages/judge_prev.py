"""judge_prev@t (CREAM): the previous model M_{t-1} scores the same candidates M_t judged, so
that pairs@t can measure how consistent the two rankings are. With method=srlm it writes an
empty file and does no work."""

from srlm import artifacts, stage
from srlm.config import derive_seed
from srlm.judging import judge_candidates
from srlm.sampling import SamplingParams
from srlm.tracking import stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = [
    "seed",
    "method",
    "judge.scoring",
    "judge.samples",
    "judge.temperature",
    "judge.top_p",
    "judge.max_new_tokens",
    "generation",
    "model.trust_remote_code",
]  # judge.health only stops judge@t


def run(params, key, it):
    cfg = params.judge
    with stage_run("judge_prev", stage.tracked(params, PARAMS), iteration=key):
        if params.method != "cream":
            artifacts.judgments_prev(key).write([])
            write_metrics(artifacts.iteration_metrics(key, "judge_prev"), {"method": params.method, "candidates": 0})
            return
        cands = artifacts.candidates(key).read()
        generator = stage.generator(params, it["prev"], f"judge_prev@{key}")
        sampling = SamplingParams.of(cfg, n=cfg.samples, seed=derive_seed(params.seed, "judge", key))
        rows, metrics = judge_candidates(generator, cands, sampling, cfg.scoring, desc=f"judge by {it['prev']}")
        artifacts.judgments_prev(key).write(rows)
        write_metrics(
            artifacts.iteration_metrics(key, "judge_prev"),
            metrics | {"method": params.method, "model": it["prev"], "dtype": generator.dtype},
        )
        generator.clear()


if __name__ == "__main__":
    stage.main(run, needs_iteration=True)
