"""answer@<model>: the model's response to each held-out prompt (greedy unless
evaluation.temperature > 0), also exported in AlpacaEval's model_outputs format; and its log-probability of
the held-out prompts' reference responses."""

import json

from srlm import artifacts, seed, stage
from srlm.config import derive_seed
from srlm.evaluation import answer_prompts, reference_logprobs
from srlm.io import atomic_write_text
from srlm.sampling import SamplingParams
from srlm.tracking import stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = [
    "seed",
    "generation",
    "evaluation.prompts",
    "evaluation.reference_prompts",
    "evaluation.temperature",
    "evaluation.top_p",
    "evaluation.max_new_tokens",
    "model.trust_remote_code",
]


def run(params, model):
    ev = params.evaluation
    with stage_run("answer", stage.tracked(params, PARAMS) | {"model": model}, instance=model):
        held_out = seed.load_ift(artifacts.IFT_EVAL)
        prompts = seed.limit(held_out, ev.prompts, derive_seed(params.seed, "subset"))
        references = seed.limit(held_out, ev.reference_prompts, derive_seed(params.seed, "subset"))
        generator = stage.generator(params, model, f"answer@{model}")
        sampling = SamplingParams.of(ev, seed=derive_seed(params.seed, "answer"))
        rows, metrics = answer_prompts(generator, prompts, sampling, model)
        logps, logp_metrics = reference_logprobs(generator, references, model)
        metrics |= logp_metrics
        artifacts.responses(model).write(rows)
        artifacts.reference_logprobs(model).write(logps)
        alpaca = [{"instruction": r["instruction"], "output": r["output"], "generator": model} for r in rows]
        atomic_write_text(artifacts.alpaca_eval(model), json.dumps(alpaca, ensure_ascii=False, indent=1) + "\n")
        write_metrics(artifacts.eval_metrics(model, "answer"), metrics | {"model": model, "dtype": generator.dtype})
        generator.clear()


if __name__ == "__main__":
    stage.main(run, needs="model")
