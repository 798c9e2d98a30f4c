"""dpo@t: DPO from M_t on the iteration's pairs -> M_{t+1}, with M_t as the reference. With method=cream
the loss is CREAM's consistency-regularized DPO, weighted by each pair's C. With method=meta the pairs
are the actor pairs plus meta_judge@t's judge pairs (at most meta.max_judge_share of them). With pairs.mode=positive,
the paper's "positive examples only" variant instead: the responses scored 5 are added to the seed
IFT + EFT data and M0 is fine-tuned on them with the sft params, as M1 was."""

import random

from srlm import artifacts, seed, stage
from srlm.config import derive_seed
from srlm.judge_pairs import mix
from srlm.launch import distribute, is_main_process
from srlm.tracking import data_hashes, record_model, stage_run, write_metrics
from srlm.training import checkpoint_dir, dpo_examples, sft_examples, train_dpo, train_sft

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = [
    "seed",
    "dpo",
    "sft",
    "method",
    "cream.loss",
    "meta.max_judge_share",
    "distributed.num_processes",
    "distributed.num_machines",
    "distributed.config_file",
    "model.trust_remote_code",
]


def run(params, key, it):
    distribute(params.distributed, f"dpo@{key}")  # reruns this script under `accelerate launch` or as a Slurm step
    dst = artifacts.model_dir(it["next"])
    rows = artifacts.pairs(key).read()
    positive = rows[0]["kind"] == "positive"
    cfg = params.sft if positive else params.dpo
    tracked = stage.tracked(params, PARAMS)
    with stage_run("dpo", tracked, iteration=key):
        common = dict(seed=derive_seed(params.seed, "dpo", key), trust_remote_code=params.model.trust_remote_code)
        extra = {}
        if positive:
            src, train = artifacts.model_dir("m0"), train_sft
            pairs, extra = seed.sft_pairs(
                artifacts.IFT_TRAIN,
                artifacts.EFT_TRAIN,
                cfg.max_ift_examples,
                cfg.max_eft_examples,
                derive_seed(params.seed, "subset"),
            )
            pairs += [(r["prompt"], r["response"]) for r in rows]
            random.Random(derive_seed(params.seed, "dpo", key)).shuffle(pairs)
            examples, extra["positives"] = sft_examples(pairs), len(rows)
        else:
            if params.method == "meta":  # judge pairs (empty outside meta.judge_iterations) join the actor pairs
                judge = artifacts.judge_pairs(key).read(allow_empty=True)
                rows, extra = mix(rows, judge, params.meta.max_judge_share, derive_seed(params.seed, "mix", key))
            src, train, examples = artifacts.model_dir(it["model"]), train_dpo, dpo_examples(rows)
            common["consistency"] = params.cream.loss if params.method == "cream" else "none"
        work = checkpoint_dir(f"dpo@{key}", tracked, src, examples, params.distributed)
        metrics = train(src, dst, examples, cfg, work_dir=work, **common)
        if is_main_process():
            write_metrics(artifacts.iteration_metrics(key, "dpo"), metrics | extra | {"mode": rows[0]["kind"]})
            record_model(
                it["next"],
                dst,
                {
                    "iteration": int(key) + 1,
                    "parent": "m0" if positive else it["model"],
                    "data": data_hashes(artifacts.pairs(key)),
                },
            )


if __name__ == "__main__":
    stage.main(run, needs_iteration=True)
