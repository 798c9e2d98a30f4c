"""build_eft: the SFT baseline judges the ranked train responses; judgments whose scores agree
with the human ranking become EFT data (plus the gold judgments when eft.include_gold)."""

from srlm import artifacts, seed, stage
from srlm.config import derive_seed
from srlm.judging import build_eft
from srlm.sampling import SamplingParams
from srlm.tracking import stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = ["seed", "eft", "generation", "model.trust_remote_code"]


def run(params):
    cfg = params.eft
    with stage_run("build_eft", stage.tracked(params, PARAMS)):
        ranked = seed.limit(seed.load_ranked(artifacts.RANKED_TRAIN), cfg.max_sets, derive_seed(params.seed, "subset"))
        examples, metrics = [], {"ranked_sets": 0, "sets_agreeing": 0}
        if cfg.attempts and ranked:
            generator = stage.generator(params, "sft_baseline", "build_eft")
            sampling = SamplingParams.of(cfg, n=cfg.attempts, seed=derive_seed(params.seed, "build_eft"))
            examples, metrics = build_eft(generator, ranked, sampling)
        gold = []
        if cfg.include_gold:
            gold = [
                {
                    "id": g["id"],
                    "instruction": g["instruction"],
                    "response": g["response"],
                    "judgment": g["judgment"],
                    "score": g["score"],
                    "source": "gold",
                }
                for g in seed.load_gold(artifacts.GOLD_TRAIN, allow_empty=True)
            ]
        artifacts.EFT_TRAIN.write(examples + gold)
        write_metrics(
            artifacts.metrics("build_eft"),
            metrics
            | {"eft_from_baseline": len(examples), "eft_gold": len(gold), "eft_total": len(examples) + len(gold)},
        )
        if cfg.attempts and ranked:
            generator.clear()


if __name__ == "__main__":
    stage.main(run)
