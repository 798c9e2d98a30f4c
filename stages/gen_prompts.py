"""gen_prompts@t: few-shot prompting from seed IFT instructions makes new, deduplicated prompts, none
equal or nearly equal to a seed, an evaluation instruction or an earlier iteration's prompt."""
from srlm import seed, stage
from srlm.config import derive_seed
from srlm.generation import SamplingParams
from srlm.io import DataError, read_jsonl, write_jsonl
from srlm.prompts import generate_prompts
from srlm.tracking import log_artifact, stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = ["seed", "gen_prompts", "generation", "model.trust_remote_code"]

RESERVED = {"instruction": str, "source": str}


def run(params, key, it):
    cfg = params.gen_prompts
    with stage_run("gen_prompts", stage.tracked(params, PARAMS), iteration=key):
        seeds = [r["instruction"] for r in seed.load_ift("data/seed/ift_train.jsonl")]
        taken = read_jsonl(stage.reserved_path(it["model"]), RESERVED, allow_empty=True)
        held_out = [r["source"].endswith("_eval") for r in taken]
        reserved = {"eval_leak": [r["instruction"] for r, h in zip(taken, held_out) if h],
                    "earlier_iteration": [r["instruction"] for r, h in zip(taken, held_out) if not h]}
        generator = stage.generator(params, cfg.model, f"gen_prompts@{key}")
        sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
        # few-shot prompts are plain text completions, not chat turns: works for base and chat models
        prompts, metrics = generate_prompts(generator, seeds, cfg.num_prompts, cfg.shots, cfg.max_attempts,
                                            cfg.min_words, cfg.max_words, sampling,
                                            seed=derive_seed(params.seed, "gen_prompts", key), reserved=reserved)
        if not prompts:
            raise DataError(f"gen_prompts@{key}: no usable prompt in {metrics['generations']} generations "
                            f"(dropped: { {k: v for k, v in metrics.items() if k.startswith('dropped_') and v} })")
        out = stage.iteration_dir(key) / "prompts.jsonl"
        write_jsonl(out, [{"id": f"it{key}-p{i:04d}", "prompt": p} for i, p in enumerate(prompts)])
        taken += [{"instruction": p, "source": f"it{key}"} for p in prompts]
        write_jsonl(stage.reserved_path(it["next"]), taken)
        log_artifact(out)
        write_metrics(stage.iteration_dir(key) / "metrics" / "gen_prompts.json", metrics)
        generator.clear()


if __name__ == "__main__":
    stage.main(run, needs_iteration=True)
