"""gen_prompts@t: few-shot prompting from seed IFT instructions makes new, deduplicated prompts."""
from srlm import seed, stage
from srlm.config import section_dict
from srlm.generation import SamplingParams
from srlm.io import DataError, write_jsonl
from srlm.prompts import generate_prompts
from srlm.tracking import log_artifact, stage_run, write_metrics


def run(params, key, it):
    cfg, gen = params.gen_prompts, params.generation
    with stage_run("gen_prompts", {"gen_prompts": section_dict(cfg), "generation": section_dict(gen),
                                   "seed": params.seed}, iteration=key):
        seeds = [r["instruction"] for r in seed.load_ift("data/seed/ift_train.jsonl")]
        generator = stage.generator(params, cfg.model, f"gen_prompts@{key}")
        sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
        # few-shot prompts are plain text completions, not chat turns: works for base and chat models
        prompts, metrics = generate_prompts(generator, seeds, cfg.num_prompts, cfg.shots, cfg.max_attempts,
                                            cfg.min_words, cfg.max_words, sampling, seed=params.seed + 7919 * int(key))
        if not prompts:
            raise DataError(f"gen_prompts@{key}: no usable prompt in {metrics['generations']} generations "
                            f"(dropped: { {k: v for k, v in metrics.items() if k.startswith('dropped_') and v} })")
        out = stage.iteration_dir(key) / "prompts.jsonl"
        write_jsonl(out, [{"id": f"it{key}-p{i:04d}", "prompt": p} for i, p in enumerate(prompts)])
        log_artifact(out)
        write_metrics(stage.iteration_dir(key) / "metrics" / "gen_prompts.json", metrics)
        generator.clear()


if __name__ == "__main__":
    stage.main(run, needs_iteration=True)
