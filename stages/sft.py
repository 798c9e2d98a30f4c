"""sft: M0 fine-tuned on seed IFT + EFT data -> M1."""
import random

from srlm import seed, stage
from srlm.config import section_dict
from srlm.io import read_jsonl
from srlm.prompts import judge_prompt
from srlm.tracking import data_hashes, record_model, stage_run, write_metrics
from srlm.training import checkpoint_dir, distribute, is_main_process, sft_examples, train_sft

IFT, EFT = "data/seed/ift_train.jsonl", "data/eft/train.jsonl"


def run(params):
    distribute(params.distributed)  # with num_processes > 1: reruns this script under `accelerate launch`
    cfg = params.sft
    tracked = {"sft": section_dict(cfg), "seed": params.seed}
    with stage_run("sft", tracked):
        ift = seed.limit(seed.load_ift(IFT), cfg.max_ift_examples, params.seed)
        eft = seed.limit(read_jsonl(EFT, {"instruction": str, "response": str, "judgment": str}, allow_empty=True),
                         cfg.max_eft_examples, params.seed)
        pairs = [(r["instruction"], r["response"]) for r in ift]
        pairs += [(judge_prompt(r["instruction"], r["response"]), r["judgment"]) for r in eft]
        random.Random(params.seed).shuffle(pairs)
        examples, m0 = sft_examples(pairs), stage.model_path("m0")
        metrics = train_sft(m0, stage.model_path("m1"), examples, cfg, params.seed,
                            work_dir=checkpoint_dir("sft", tracked, m0, examples, params.distributed),
                            trust_remote_code=params.model.trust_remote_code)
        if is_main_process():
            write_metrics("metrics/sft.json", metrics | {"ift_examples": len(ift), "eft_examples": len(eft)})
            record_model("m1", stage.model_path("m1"), {"iteration": 1, "parent": "m0", "data": data_hashes(IFT, EFT)})


if __name__ == "__main__":
    stage.main(run)
