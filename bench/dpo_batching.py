"""A DPO optimizer step of 4 pairs split into micro-batches of 2 pairs (x 2 accumulated, the pipeline's
default) and of 1 pair (x 4), side by side in one run on the same pairs: the same optimizer steps (the same
pairs, each weighted 1/4: tests/test_cream_loss.py), but TRL pads the chosen and rejected sequences of a
micro-batch to its longest, so smaller micro-batches pad less, with smaller matrix products.

    python bench/dpo_batching.py [--model models/m0] [--pairs-file data/it1/pairs.jsonl] [--pairs 16]
                                 [--epochs 1] [--repeats 1]

The pipeline's own DPO call (LoRA r=16, max_length 512, bf16 where the CPU has fast bf16 units, the reference
at every step). Pairs: a pairs.jsonl of a run (`data/it<t>/pairs.jsonl`, the default run's real lengths), else
best vs worst of the built-in ranked sets. Prints, per split, the tokens the micro-batches hold with their
padding (against the real tokens), the call's wall time, seconds per optimizer step and the first and last
loss (equal up to rounding: the same method).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from common import builtin_examples, model_or_default, sequence_lengths, train
from transformers import AutoTokenizer

from srlm import training
from srlm.modeling import resolve_precision, set_threads

MAX_LENGTH = 512  # dpo.max_length
SPLITS = ((2, 2), (1, 4))  # (micro-batch pairs, accumulated micro-batches): 4 pairs per optimizer step


def padded_tokens(lens: list[tuple[int, int]], batch: int, seed: int, epochs: int) -> tuple[int, int]:
    """(real, padded) tokens over `epochs` random orders of pairs of these (chosen, rejected) lengths: TRL's DPO
    collator pads the 2 x batch sequences (prompt + chosen, prompt + rejected) of a micro-batch to the longest."""
    rng, real, padded = random.Random(seed), 0, 0
    for _ in range(epochs):
        order = list(range(len(lens)))
        rng.shuffle(order)
        for i in range(0, len(order), batch):
            chunk = order[i : i + batch]
            real += sum(sum(lens[j]) for j in chunk)
            padded += 2 * len(chunk) * max(max(lens[j]) for j in chunk)
    return real, padded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/m0")
    ap.add_argument("--pairs-file", help="a run's data/it<t>/pairs.jsonl; default: built-in ranked sets")
    ap.add_argument("--pairs", type=int, default=16, help="pairs used (a multiple of 4: whole optimizer steps)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1, help="rounds, interleaved; the faster of each is printed")
    args = ap.parse_args()
    set_threads()
    model_dir = model_or_default(args.model)
    if args.pairs_file:
        rows = [json.loads(line) for line in Path(args.pairs_file).read_text().splitlines() if line.strip()]
        pairs = training.dpo_examples(rows[: args.pairs])
    else:
        _, pairs = builtin_examples(n_ift=0, n_eft=0, n_pairs=args.pairs)
    tok = AutoTokenizer.from_pretrained(model_dir)
    precision = resolve_precision("auto")
    source = args.pairs_file or "built-in ranked sets"
    print(f"{len(pairs)} pairs ({source}), {args.epochs} epoch(s), 4 pairs per step, {precision}")
    best: dict[tuple, dict] = {}
    for _ in range(args.repeats):
        for split in SPLITS:
            with tempfile.TemporaryDirectory() as work:
                r = train(
                    "dpo", model_dir, pairs, precision, MAX_LENGTH, Path(work),
                    batch_size=split[0], grad_accum=split[1], epochs=args.epochs,
                )  # fmt: skip
            if split not in best or r["wall_s"] < best[split]["wall_s"]:
                best[split] = r
    print(
        "| micro-batch x accumulated | real tokens | padded tokens (padding) | wall s | s/step | speed-up | steps "
        "| first loss | last loss |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    lens = sequence_lengths(tok, pairs, MAX_LENGTH)
    for split in SPLITS:
        r = best[split]
        # Expected padding over random orders (the trainer's own order is one draw of these).
        real, padded = padded_tokens(lens, split[0], seed=0, epochs=200)
        print(
            f"| {split[0]} x {split[1]} | {real / 200:.0f} | {padded / 200:.0f} ({1 - real / padded:.0%}) "
            f"| {r['wall_s']:.1f} | {r['step_s']:.2f} | {best[SPLITS[0]]['wall_s'] / r['wall_s']:.2f}x | {r['steps']} "
            f"| {r['first_loss']:.4f} | {r['final_loss']:.4f} |"
        )


if __name__ == "__main__":
    main()
