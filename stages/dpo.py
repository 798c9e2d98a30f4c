"""dpo@t: DPO from M_t on the iteration's pairs -> M_{t+1} (SFT on positives in pairs.mode=positive).
With method=cream the loss is CREAM's consistency-regularized DPO, weighted by each pair's C."""
from srlm import stage
from srlm.config import section_dict
from srlm.io import read_jsonl
from srlm.tracking import data_hashes, record_model, stage_run, write_metrics
from srlm.training import (checkpoint_dir, distribute, dpo_examples, is_main_process, sft_examples, train_dpo,
                           train_sft)


def run(params, key, it):
    distribute(params.distributed)  # with num_processes > 1: reruns this script under `accelerate launch`
    cfg = params.dpo
    d = stage.iteration_dir(key)
    src, dst = stage.model_path(it["model"]), stage.model_path(it["next"])
    tracked = {"dpo": section_dict(cfg), "seed": params.seed, "method": params.method, "cream.loss": params.cream.loss}
    with stage_run("dpo", tracked, iteration=key):
        rows = read_jsonl(d / "pairs.jsonl", {"id": str, "prompt": str, "kind": str})
        common = dict(seed=params.seed + int(key), trust_remote_code=params.model.trust_remote_code)
        if rows[0]["kind"] == "positive":
            train, examples = train_sft, sft_examples([(r["prompt"], r["response"]) for r in rows])
        else:
            train, examples = train_dpo, dpo_examples(rows)
            common["consistency"] = params.cream.loss if params.method == "cream" else "none"
        work = checkpoint_dir(f"dpo@{key}", tracked, src, examples, params.distributed)
        metrics = train(src, dst, examples, cfg, work_dir=work, **common)
        if is_main_process():
            write_metrics(d / "metrics" / "dpo.json", metrics)
            record_model(it["next"], dst, {"iteration": int(key) + 1, "parent": it["model"],
                                           "data": data_hashes(d / "pairs.jsonl")})


if __name__ == "__main__":
    stage.main(run, needs_iteration=True)
