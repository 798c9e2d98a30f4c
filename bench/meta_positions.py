"""The three `meta.position` handlings on the same meta-judge verdicts: after a `method: meta` run (its
data/it<t>/judgments.jsonl and models/ in the workspace), M_t's meta-judge reads the verdicts of each
iteration once (probability readout) and each handling weighs them. Prints the judge pairs each would make.

python bench/meta_positions.py [--iterations 1:m1 2:m2] [--dtype bfloat16]
"""

import argparse
import time
from types import SimpleNamespace

from srlm import artifacts
from srlm.generation import make_generator
from srlm.judge_pairs import select_judge_pairs
from srlm.judging import meta_verdicts
from srlm.sampling import SamplingParams


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", nargs="+", default=["1:m1", "2:m2"], help="t:model pairs")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--scoring", default="expected", help="the run's judge.scoring")
    ap.add_argument("--max-chosen-chars", type=int, default=1100)
    ap.add_argument("--max-score-share", type=float, default=0.4)
    args = ap.parse_args()
    cfg = SimpleNamespace(max_chosen_chars=args.max_chosen_chars, max_score_share=args.max_score_share)
    print("| iteration | position | judge pairs | compared | Elo ties | equal scores | score cap | chosen > rejected |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.iterations:
        t, model = spec.split(":")
        judged = artifacts.judgments(t).read()
        gen = make_generator("transformers", str(artifacts.model_dir(model)), 64, dtype=args.dtype)
        read = {}

        def verdict_of(items):
            if not read:
                start = time.time()
                read["v"] = meta_verdicts(gen, items, "probability", SamplingParams(n=1))
                read["s"] = time.time() - start
            return read["v"]

        for position in ("weights", "agreement", "calibrated"):
            pairs, m = select_judge_pairs(judged, args.scoring, verdict_of, position, cfg)
            higher = sum(p["chosen_score"] > p["rejected_score"] for p in pairs)
            print(
                f"| {t} ({model}) | {position} | {m['judge_pairs']} | {m['candidates_compared']} | "
                f"{m.get('dropped_elo_tie', 0)} | {m.get('dropped_same_score', 0)} | {m['dropped_score_cap']} | "
                f"{higher} of {len(pairs)} |"
            )
        ps = [v["p_a"] for v in read.get("v", [])]
        if ps:
            print(
                f"\niteration {t}: {len(ps)} verdicts in {read['s']:.0f} s; p(A) from {min(ps):.3f} to {max(ps):.3f}\n"
            )


if __name__ == "__main__":
    main()
