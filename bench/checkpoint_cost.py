"""What the per-step Trainer checkpoints cost (`save_steps: 1`, the default of sft and dpo), side by side in one run.

    python bench/checkpoint_cost.py [--model models/m0] [--sft 12] [--dpo 8] [--repeats 2]

The pipeline's own SFT and DPO calls (bench/common.py's `train`: LoRA r=16, one optimizer step per batch, the
stages' precision `auto`) on built-in examples, once with a checkpoint after every step and once with none,
interleaved over `--repeats` rounds. Prints each call's wall time, seconds per step and, from the faster round of
each, what one checkpoint adds (the wall-time difference over the number of checkpoints). A stage with
`save_steps: N` writes steps/N of them, and a resumed stage loses at most N - 1 steps.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from common import builtin_examples, model_or_default, train

from srlm.modeling import resolve_precision, set_threads


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/m0")
    ap.add_argument("--sft", type=int, default=12, help="SFT examples (2 IFT : 3 EFT), batch 4")
    ap.add_argument("--dpo", type=int, default=8, help="DPO pairs, batch 2")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    set_threads()
    os.environ["SRLM_TRACKING"] = "off"
    model_dir = model_or_default(args.model)
    precision = resolve_precision("auto")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, precision {precision}, model {model_dir}"
    )
    n_ift = args.sft * 2 // 5
    sft, dpo = builtin_examples(n_ift=n_ift, n_eft=args.sft - n_ift, n_pairs=args.dpo)
    best: dict = {}
    for r in range(args.repeats):
        for kind, rows, seq, batch in (("sft", sft, 640, 4), ("dpo", dpo, 512, 2)):
            for save in (0, 1):
                with tempfile.TemporaryDirectory() as work:
                    m = train(kind, model_dir, rows, precision, seq, Path(work), batch, save_steps=save)
                steps = len(m["step_times"])
                print(f"round {r + 1}, {kind}, save_steps {save}: {m['wall_s']:.1f} s, {steps} steps", flush=True)
                key = (kind, save)
                if key not in best or m["wall_s"] < best[key][0]:
                    best[key] = (m["wall_s"], steps)
    print("\n| call | steps | no checkpoints (s) | one per step (s) | per checkpoint (s) | share of the call |")
    print("|---|---|---|---|---|---|")
    for kind in ("sft", "dpo"):
        (plain, steps), (saved, _) = best[(kind, 0)], best[(kind, 1)]
        per = (saved - plain) / steps
        print(f"| {kind} | {steps} | {plain:.1f} | {saved:.1f} | {per:.2f} | {(saved - plain) / saved:.0%} |")


if __name__ == "__main__":
    main()
