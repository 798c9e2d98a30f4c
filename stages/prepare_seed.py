"""prepare_seed: write the seed IFT, ranked and gold-judgment sets, split into train and eval so that
no evaluation instruction is equal or nearly equal to a training one, and the list of instructions
that generated prompts must stay away from (data/reserved/m1.jsonl: every evaluation instruction)."""

import dataclasses

from srlm import artifacts, seed, stage, verifiable
from srlm.config import ConfigError, derive_seed
from srlm.tracking import stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = ["seed", "seed_data"]


def run(params):
    cfg = params.seed_data
    with stage_run("prepare_seed", stage.tracked(params, PARAMS)):
        gold = []
        if cfg.source == "builtin":
            ift = seed.load_ift(seed.BUILTIN_DIR / "ift.jsonl")
            ranked = seed.load_ranked(seed.BUILTIN_DIR / "ranked.jsonl")
            gold = seed.load_gold(seed.BUILTIN_DIR / "gold_judgments.jsonl")
        elif cfg.source == "oasst1":
            if not cfg.max_ift:
                raise ConfigError(
                    "params.yaml: seed_data.source=oasst1 needs seed_data.max_ift > 0: the number of "
                    "prompts with a rank-0 reply that become IFT data (the paper: 3200 for training, "
                    "so 4000 with eval_fraction 0.2); the other prompts become the ranked sets"
                )
            ift, ranked = seed.oasst1_split(
                *seed.load_oasst1(cfg.oasst_dataset), cfg.max_ift, derive_seed(params.seed, "subset")
            )
        else:
            if not cfg.ift_path or not cfg.ranked_path:
                raise ConfigError(
                    "params.yaml: seed_data.source=jsonl needs seed_data.ift_path and seed_data.ranked_path"
                )
            ift, ranked = seed.load_ift(cfg.ift_path), seed.load_ranked(cfg.ranked_path)
        if cfg.gold_path:
            gold = seed.load_gold(cfg.gold_path)
        if cfg.source != "oasst1":
            ift = seed.limit(ift, cfg.max_ift, derive_seed(params.seed, "subset"))
        ranked = seed.limit(ranked, cfg.max_ranked, derive_seed(params.seed, "subset"))
        checkable_path = cfg.verifiable_path or seed.BUILTIN_DIR / "verifiable.jsonl"
        checkable = verifiable.validate(seed.load_verifiable(checkable_path), checkable_path)
        # Evaluation only (share 1): a training instruction near one of them is held out with it.
        shares = dataclasses.asdict(cfg.eval_fraction) | {"verifiable": 1.0}
        parts = seed.split(
            {"ift": ift, "ranked": ranked, "gold": gold, "verifiable": checkable},
            shares,
            derive_seed(params.seed, "split"),
        )
        counts = {}
        for name, (train, held_out) in parts.items():
            if name == "verifiable":
                artifacts.VERIFIABLE_EVAL.write(held_out)
                counts["verifiable_eval"] = len(held_out)
                continue
            for split, recs in (("train", train), ("eval", held_out)):
                artifacts.seed_set(name, split).write(recs)
                counts[f"{name}_{split}"] = len(recs)
        reserved = [
            {"instruction": r["instruction"], "source": f"{name}_eval"}
            for name, (_, held_out) in parts.items()
            for r in held_out
        ]
        artifacts.reserved("m1").write(reserved)
        write_metrics(artifacts.metrics("prepare_seed"), counts)


if __name__ == "__main__":
    stage.main(run)
