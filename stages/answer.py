"""answer@<model>: the model's response to each held-out prompt (greedy unless
evaluation.temperature > 0), also exported in AlpacaEval's model_outputs format."""
import json

from srlm import seed, stage
from srlm.config import derive_seed
from srlm.evaluation import answer_prompts
from srlm.generation import SamplingParams
from srlm.io import atomic_write_text, write_jsonl
from srlm.tracking import stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = ["seed", "generation", "evaluation.prompts", "evaluation.temperature", "evaluation.top_p",
          "evaluation.max_new_tokens", "model.trust_remote_code"]

PROMPTS = "data/seed/ift_eval.jsonl"


def run(params, model):
    ev = params.evaluation
    out = stage.eval_dir(model)
    with stage_run("answer", stage.tracked(params, PARAMS) | {"model": model}, instance=model):
        prompts = seed.limit(seed.load_ift(PROMPTS), ev.prompts, derive_seed(params.seed, "subset"))
        generator = stage.generator(params, model, f"answer@{model}")
        sampling = SamplingParams(n=1, temperature=ev.temperature, top_p=ev.top_p, max_new_tokens=ev.max_new_tokens,
                                  seed=derive_seed(params.seed, "answer"))
        rows, metrics = answer_prompts(generator, prompts, sampling, model)
        write_jsonl(out / "responses.jsonl", rows)
        alpaca = [{"instruction": r["instruction"], "output": r["output"], "generator": model} for r in rows]
        atomic_write_text(out / "alpaca_eval.json", json.dumps(alpaca, ensure_ascii=False, indent=1) + "\n")
        write_metrics(out / "metrics" / "answer.json", metrics | {"model": model})
        generator.clear()


if __name__ == "__main__":
    stage.main(run, needs="model")
