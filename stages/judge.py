"""judge@t: M_t scores each candidate with the paper's rubric, judge.samples judgments averaged."""
from srlm import stage
from srlm.config import section_dict
from srlm.generation import SamplingParams, make_generator
from srlm.io import read_jsonl, write_jsonl
from srlm.judging import candidate_score, judge_metrics, judge_responses
from srlm.tracking import stage_run, write_metrics



def run(params, key, it):
    cfg, gen = params.judge, params.generation
    d = stage.iteration_dir(key)
    with stage_run("judge", {"judge": section_dict(cfg), "generation": section_dict(gen), "seed": params.seed},
                   iteration=key):
        cands = read_jsonl(d / "candidates.jsonl", {"prompt_id": str, "candidate_id": str, "prompt": str})
        generator = make_generator(gen.backend, stage.model_path(it["model"]), gen.batch_size, gen.dtype,
                                   params.model.trust_remote_code)
        sampling = SamplingParams(n=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p,
                                  max_new_tokens=cfg.max_new_tokens, seed=params.seed + 31 * int(key))
        judged = judge_responses(generator, [(c["prompt"], c["response"]) for c in cands], sampling, cfg.scoring)
        rows = [{"prompt_id": c["prompt_id"], "candidate_id": c["candidate_id"], "prompt": c["prompt"],
                 "response": c["response"], **j, "score": candidate_score(j, cfg.scoring)}
                for c, j in zip(cands, judged)]
        write_jsonl(d / "judgments.jsonl", rows)
        metrics = judge_metrics([s for r in rows for s in r["statuses"]], [s for r in rows for s in r["scores"]])
        metrics["candidates_scored"] = sum(r["score"] is not None for r in rows)
        metrics["candidates"] = len(rows)
        metrics["scoring"] = cfg.scoring
        if cfg.scoring == "expected":
            exp = [r["score"] for r in rows if r["score"] is not None]
            metrics["expected_score_mean"] = sum(exp) / len(exp) if exp else 0.0
        write_metrics(d / "metrics" / "judge.json", metrics)


if __name__ == "__main__":
    stage.main(run, needs_iteration=True)
