"""prepare_seed: write the seed IFT, ranked and gold-judgment sets, split into train and eval."""
from pathlib import Path

from srlm import seed, stage
from srlm.config import ConfigError, section_dict
from srlm.io import write_jsonl
from srlm.tracking import stage_run, write_metrics

OUT = Path("data/seed")


def run(params):
    cfg = params.seed_data
    with stage_run("prepare_seed", {"seed_data": section_dict(cfg), "seed": params.seed}):
        gold = []
        if cfg.source == "builtin":
            ift = seed.load_ift(seed.BUILTIN_DIR / "ift.jsonl")
            ranked = seed.load_ranked(seed.BUILTIN_DIR / "ranked.jsonl")
            gold = seed.load_gold(seed.BUILTIN_DIR / "gold_judgments.jsonl")
        elif cfg.source == "oasst1":
            ift, ranked = seed.load_oasst1(cfg.oasst_dataset)
        else:
            if not cfg.ift_path or not cfg.ranked_path:
                raise ConfigError("params.yaml: seed_data.source=jsonl needs seed_data.ift_path and seed_data.ranked_path")
            ift, ranked = seed.load_ift(cfg.ift_path), seed.load_ranked(cfg.ranked_path)
        if cfg.gold_path:
            gold = seed.load_gold(cfg.gold_path)
        ift = seed.limit(ift, cfg.max_ift, params.seed)
        ranked = seed.limit(ranked, cfg.max_ranked, params.seed)
        ift_train, ift_eval = seed.split(ift, cfg.eval_fraction, params.seed)
        ranked_train, ranked_eval = seed.split(ranked, cfg.eval_fraction, params.seed)
        for name, recs in [("ift_train", ift_train), ("ift_eval", ift_eval), ("ranked_train", ranked_train),
                           ("ranked_eval", ranked_eval), ("gold_judgments", gold)]:
            write_jsonl(OUT / f"{name}.jsonl", recs)
        write_metrics("metrics/prepare_seed.json", {
            "ift_train": len(ift_train), "ift_eval": len(ift_eval), "ranked_train": len(ranked_train),
            "ranked_eval": len(ranked_eval), "gold_judgments": len(gold)})


if __name__ == "__main__":
    stage.main(run)
