"""judge@t: M_t scores each candidate with the paper's rubric, judge.samples judgments averaged."""
from srlm import stage
from srlm.config import derive_seed
from srlm.generation import SamplingParams
from srlm.io import read_jsonl, write_jsonl
from srlm.judging import CANDIDATE, judge_candidates
from srlm.tracking import stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = ["seed", "judge", "generation", "model.trust_remote_code"]

def run(params, key, it):
    cfg = params.judge
    d = stage.iteration_dir(key)
    with stage_run("judge", stage.tracked(params, PARAMS), iteration=key):
        cands = read_jsonl(d / "candidates.jsonl", CANDIDATE)
        generator = stage.generator(params, it["model"], f"judge@{key}")
        sampling = SamplingParams(n=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p,
                                  max_new_tokens=cfg.max_new_tokens, seed=derive_seed(params.seed, "judge", key))
        rows, metrics = judge_candidates(generator, cands, sampling, cfg.scoring)
        write_jsonl(d / "judgments.jsonl", rows)
        write_metrics(d / "metrics" / "judge.json", metrics)
        generator.clear()


if __name__ == "__main__":
    stage.main(run, needs_iteration=True)
