"""judge_prev@t (CREAM): the previous model M_{t-1} scores the same candidates M_t judged, so
that pairs@t can measure how consistent the two rankings are. With method=srlm it writes an
empty file and does no work."""
from srlm import stage
from srlm.config import derive_seed
from srlm.io import read_jsonl, write_jsonl
from srlm.tracking import stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = ["seed", "method", "judge", "generation", "model.trust_remote_code"]


def run(params, key, it):
    cfg = params.judge
    d = stage.iteration_dir(key)
    with stage_run("judge_prev", stage.tracked(params, PARAMS), iteration=key):
        if params.method != "cream":
            write_jsonl(d / "judgments_prev.jsonl", [])
            write_metrics(d / "metrics" / "judge_prev.json", {"method": params.method, "candidates": 0})
            return
        # Imported only here: under method=srlm this stage should not pay for loading torch.
        from srlm.generation import SamplingParams
        from srlm.judging import CANDIDATE, judge_candidates

        cands = read_jsonl(d / "candidates.jsonl", CANDIDATE)
        generator = stage.generator(params, it["prev"], f"judge_prev@{key}")
        sampling = SamplingParams(n=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p,
                                  max_new_tokens=cfg.max_new_tokens, seed=derive_seed(params.seed, "judge", key))
        rows, metrics = judge_candidates(generator, cands, sampling, cfg.scoring, desc=f"judge by {it['prev']}")
        write_jsonl(d / "judgments_prev.jsonl", rows)
        write_metrics(d / "metrics" / "judge_prev.json", metrics | {"method": params.method, "model": it["prev"]})
        generator.clear()


if __name__ == "__main__":
    stage.main(run, needs_iteration=True)
