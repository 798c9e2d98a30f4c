"""sft_baseline: M0 fine-tuned on seed IFT only (the paper's SFT baseline)."""
from srlm import seed, stage
from srlm.config import section_dict
from srlm.tracking import data_hashes, record_model, stage_run, write_metrics
from srlm.training import sft_examples, train_sft

IFT = "data/seed/ift_train.jsonl"


def run(params):
    cfg = params.sft
    with stage_run("sft_baseline", {"sft": section_dict(cfg), "seed": params.seed}):
        ift = seed.limit(seed.load_ift(IFT), cfg.max_ift_examples, params.seed)
        examples = sft_examples([(r["instruction"], r["response"]) for r in ift])
        metrics = train_sft(stage.model_path("m0"), stage.model_path("sft_baseline"), examples, cfg, params.seed,
                            work_dir="models/.work/sft_baseline", trust_remote_code=params.model.trust_remote_code)
        write_metrics("metrics/sft_baseline.json", metrics)
        record_model("sft_baseline", stage.model_path("sft_baseline"),
                     {"iteration": "baseline", "parent": "m0", "data": data_hashes(IFT)})


if __name__ == "__main__":
    stage.main(run)
