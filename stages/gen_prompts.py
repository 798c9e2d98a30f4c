"""gen_prompts@t: few-shot prompting from seed IFT instructions makes new, deduplicated prompts, none
equal or nearly equal to a seed, an evaluation instruction or an earlier iteration's prompt."""

from srlm import artifacts, seed, stage
from srlm.config import derive_seed
from srlm.io import DataError
from srlm.prompts import generate_prompts
from srlm.sampling import SamplingParams
from srlm.tracking import log_artifact, stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = ["seed", "gen_prompts", "generation", "model.trust_remote_code"]


def run(params, key, it):
    cfg = params.gen_prompts
    with stage_run("gen_prompts", stage.tracked(params, PARAMS), iteration=key):
        seeds = [r["instruction"] for r in seed.load_ift(artifacts.IFT_TRAIN)]
        taken = artifacts.reserved(it["model"]).read(allow_empty=True)
        held_out = [r["source"].endswith("_eval") for r in taken]
        reserved = {
            "eval_leak": [r["instruction"] for r, h in zip(taken, held_out) if h],
            "earlier_iteration": [r["instruction"] for r, h in zip(taken, held_out) if not h],
        }
        generator = stage.generator(params, cfg.model, f"gen_prompts@{key}")
        sampling = SamplingParams.of(cfg)
        # few-shot prompts are plain text completions, not chat turns: works for base and chat models
        prompts, metrics = generate_prompts(
            generator,
            seeds,
            cfg.num_prompts,
            cfg.shots,
            cfg.max_attempts,
            cfg.min_words,
            cfg.max_words,
            sampling,
            seed=derive_seed(params.seed, "gen_prompts", key),
            reserved=reserved,
        )
        if not prompts:
            raise DataError(
                f"gen_prompts@{key}: no usable prompt in {metrics['generations']} generations "
                f"(dropped: { {k: v for k, v in metrics.items() if k.startswith('dropped_') and v} })"
            )
        out = artifacts.prompts(key)
        out.write([{"id": f"it{key}-p{i:04d}", "prompt": p} for i, p in enumerate(prompts)])
        taken += [{"instruction": p, "source": f"it{key}"} for p in prompts]
        artifacts.reserved(it["next"]).write(taken)
        log_artifact(out.path)
        write_metrics(artifacts.iteration_metrics(key, "gen_prompts"), metrics | {"dtype": generator.dtype})
        generator.clear()


if __name__ == "__main__":
    stage.main(run, needs_iteration=True)
