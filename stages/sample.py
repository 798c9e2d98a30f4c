"""sample@t: N candidate responses per prompt from M_t."""

from statistics import mean

from srlm import artifacts, stage
from srlm.config import derive_seed
from srlm.sampling import SamplingParams, sample_responses
from srlm.tracking import stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = ["seed", "sample", "generation", "model.trust_remote_code"]


def run(params, key, it):
    cfg = params.sample
    with stage_run("sample", stage.tracked(params, PARAMS), iteration=key):
        prompts = artifacts.prompts(key).read()
        generator = stage.generator(params, it["model"], f"sample@{key}")
        sampling = SamplingParams.of(cfg, n=cfg.n, seed=derive_seed(params.seed, "sample", key))
        rows = sample_responses(generator, prompts, sampling)
        artifacts.candidates(key).write(rows)
        write_metrics(
            artifacts.iteration_metrics(key, "sample"),
            {
                "prompts": len(prompts),
                "candidates": len(rows),
                "mean_response_chars": mean(len(r["response"]) for r in rows),
                "mean_response_tokens": mean(r["num_tokens"] for r in rows),
                "truncated_rate": sum(r["finish_reason"] == "length" for r in rows) / len(rows),
                "empty_responses": sum(not r["response"] for r in rows),
                "dtype": generator.dtype,
            },
        )
        generator.clear()


if __name__ == "__main__":
    stage.main(run, needs_iteration=True)
