"""A whole DPO call with the reference's log-probs computed at every step, and computed once before training
(`dpo.precompute_ref_log_probs: true`; the pipeline's default is false), side by side in one run on the same
pairs.

    python bench/dpo_reference.py [--model models/m0] [--pairs 12] [--epochs 8] [--repeats 1]

The pipeline's own DPO call (best vs worst of built-in ranked sets, max_length 512, batch 2, LoRA r=16, bf16
where the CPU has fast bf16 units): with LoRA the reference is the model with its adapter off, one forward per
pair per epoch when computed at every step, one per pair in all when precomputed. Prints the call's wall time,
seconds per optimizer step, the speed-up, and the first and last loss (the same method: the losses differ only
by rounding, the reference's batches being padded differently).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import builtin_examples, model_or_default, train

from srlm.modeling import resolve_precision, set_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/m0")
    ap.add_argument("--pairs", type=int, default=12, help="DPO pairs")
    ap.add_argument("--epochs", type=float, default=8, help="dpo.epochs (the default run's)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds, interleaved; the faster of each is printed")
    args = ap.parse_args()
    set_threads()
    model_dir = model_or_default(args.model)
    _, pairs = builtin_examples(n_ift=0, n_eft=0, n_pairs=args.pairs)
    precision = resolve_precision("auto")
    print(f"{len(pairs)} pairs, {args.epochs:g} epochs, batch 2, max_length 512, {precision}")
    best: dict[bool, dict] = {}
    for _ in range(args.repeats):
        for precompute in (False, True):
            with tempfile.TemporaryDirectory() as work:
                r = train(
                    "dpo", model_dir, pairs, precision, 512, Path(work), batch_size=2, epochs=args.epochs,
                    precompute_ref_log_probs=precompute,
                )  # fmt: skip
            if precompute not in best or r["wall_s"] < best[precompute]["wall_s"]:
                best[precompute] = r
    print("| reference log-probs | wall s | s/step | speed-up | steps | first loss | last loss | margin, last step |")
    print("|---|---|---|---|---|---|---|---|")
    for precompute, name in ((False, "at every step"), (True, "precomputed once")):
        r = best[precompute]
        speedup = best[False]["wall_s"] / r["wall_s"]
        print(
            f"| {name} | {r['wall_s']:.1f} | {r['step_s']:.2f} | {speedup:.2f}x | {r['steps']} "
            f"| {r['first_loss']:.4f} | {r['final_loss']:.4f} | {r['rewards_margins_last']:.3f} |"
        )


if __name__ == "__main__":
    main()
