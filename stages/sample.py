"""sample@t: N candidate responses per prompt from M_t."""
from statistics import mean

from srlm import stage
from srlm.config import derive_seed
from srlm.generation import SamplingParams, sample_responses
from srlm.io import read_jsonl, write_jsonl
from srlm.tracking import stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = ["seed", "sample", "generation", "model.trust_remote_code"]


def run(params, key, it):
    cfg = params.sample
    d = stage.iteration_dir(key)
    with stage_run("sample", stage.tracked(params, PARAMS), iteration=key):
        prompts = read_jsonl(d / "prompts.jsonl", {"id": str, "prompt": str})
        generator = stage.generator(params, it["model"], f"sample@{key}")
        sampling = SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                                  max_new_tokens=cfg.max_new_tokens, seed=derive_seed(params.seed, "sample", key))
        rows = sample_responses(generator, prompts, sampling)
        write_jsonl(d / "candidates.jsonl", rows)
        write_metrics(d / "metrics" / "sample.json", {
            "prompts": len(prompts), "candidates": len(rows),
            "mean_response_chars": mean(len(r["response"]) for r in rows),
            "mean_response_tokens": mean(r["num_tokens"] for r in rows),
            "truncated_rate": sum(r["finish_reason"] == "length" for r in rows) / len(rows),
            "empty_responses": sum(not r["response"] for r in rows)})
        generator.clear()


if __name__ == "__main__":
    stage.main(run, needs_iteration=True)
