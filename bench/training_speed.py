"""Training steps before and after the CPU speed-ups, side by side in one run, on the same examples.

    python bench/training_speed.py [--model models/m0] [--sft 20] [--dpo 12]

The pipeline's own SFT call (IFT and EFT judge examples in the default run's 2:3 mix, max_length 640, batch 4)
and DPO call (best vs worst of built-in ranked sets, max_length 512, batch 2), LoRA r=16, one optimizer step
per batch, under these settings:

- before, fp32: fp32, LoRA dropout 0.05, TRL's fused LM head over every position (what a CPU got before);
- before, bf16 autocast: the same in bf16 mixed precision over fp32 weights;
- now, fp32 / now, bf16: LoRA dropout 0, the LM head over labelled positions only, and in bf16 the frozen
  base weights held in bf16 (srlm.training._base_dtype);
- now, bf16, eager attention / grouped-KV SDPA: as above with transformers' eager attention, or with
  srlm.generation's SDPA that reads the grouped K/V heads in place, instead of transformers' SDPA.

Prints seconds per step (mean of the steps after the first), tokens/s, the 6 x parameters x tokens GFLOP/s
(8 x for DPO: the reference's forward) and that as a share of a bf16 2048^2 matmul measured in the same run,
the speed-up over "before, fp32", and the first and last loss (the settings change numerics, not the method).
With --repeats R the settings run R rounds, interleaved, and the faster round of each is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from functools import partial
from pathlib import Path
from unittest import mock

import torch
from common import builtin_examples, matmul_gflops, model_or_default, n_tokens, train

from srlm import training
from srlm.generation import register_fast_attention
from srlm.modeling import load_model, set_threads

SETTINGS = {  # name -> (precision, LoRA dropout, changes undone, attention)
    "before, fp32": ("fp32", 0.05, True, None),
    "before, bf16 autocast": ("bf16", 0.05, True, None),
    "now, fp32": ("fp32", 0.0, False, None),
    "now, bf16": ("bf16", 0.0, False, None),
    "now, bf16, eager attention": ("bf16", 0.0, False, "eager"),
    "now, bf16, grouped-KV SDPA": ("bf16", 0.0, False, "sdpa_gqa"),
}


@contextlib.contextmanager
def setting(undo: bool, attention: str | None):
    with contextlib.ExitStack() as stack:
        if undo:  # every position through the LM head; fp32 base weights under autocast
            stack.enter_context(mock.patch.object(training, "_labelled_positions_only", contextlib.nullcontext))
            stack.enter_context(mock.patch.object(training, "_base_dtype", lambda cfg: "float32"))
        if attention:
            stack.enter_context(
                mock.patch.object(training, "load_model", partial(load_model, attn_implementation=attention))
            )
        yield


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/m0")
    ap.add_argument("--sft", type=int, default=20, help="SFT examples (2 IFT : 3 EFT)")
    ap.add_argument("--dpo", type=int, default=12, help="DPO pairs")
    ap.add_argument("--only", nargs="*", default=list(SETTINGS)[:4], help="settings to run (names in SETTINGS)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over the settings; the fastest round is kept")
    args = ap.parse_args()
    set_threads()
    register_fast_attention()
    os.environ["SRLM_TRACKING"] = "off"
    model_dir = model_or_default(args.model)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, model {model_dir}"
    )
    n_ift = args.sft * 2 // 5
    sft, dpo = builtin_examples(n_ift=n_ift, n_eft=args.sft - n_ift, n_pairs=args.dpo)
    model, tok = load_model(model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    del model

    tokens = {"sft": n_tokens(tok, sft, 640), "dpo": n_tokens(tok, dpo, 512)}
    peak = matmul_gflops(torch.bfloat16)
    print(
        f"bf16 matmul {peak:.0f} GFLOP/s; SFT {len(sft)} examples, {tokens['sft']} tokens; "
        f"DPO {len(dpo)} pairs, {tokens['dpo']} tokens\n"
    )
    rows = {}
    for _ in range(args.repeats):  # interleaved, so that a slow spell of a shared machine hits every setting
        for name in args.only:
            precision, dropout, undo, attention = SETTINGS[name]
            r = {}
            with tempfile.TemporaryDirectory() as work, setting(undo, attention):
                for kind, rows_, seq, batch in (("sft", sft, 640, 4), ("dpo", dpo, 512, 2)):
                    m = train(kind, model_dir, rows_, precision, seq, Path(work) / kind, batch, dropout)
                    per_step = tokens[kind] / m["steps"]
                    flops = (6 if kind == "sft" else 8) * n_params * per_step / m["step_s"] / 1e9
                    r |= {
                        f"{kind} s/step": m["step_s"],
                        f"{kind} tok/s": per_step / m["step_s"],
                        f"{kind} share of bf16 matmul": flops / peak,
                        f"{kind} first loss": m["first_loss"],
                        f"{kind} last loss": m["final_loss"],
                    }
            print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
            best = rows.get(name)
            for kind in ("sft", "dpo"):  # the faster round of each
                if best is None or r[f"{kind} s/step"] < best[f"{kind} s/step"]:
                    rows.setdefault(name, {}).update({k: v for k, v in r.items() if k.startswith(kind)})

    base = rows.get("before, fp32")
    width = max(map(len, rows))
    keys = list(next(iter(rows.values())))
    print("\n| setting | " + " | ".join(keys) + (" | SFT speed-up | DPO speed-up |" if base else " |"))
    print("|---" * (len(keys) + 1 + 2 * bool(base)) + "|")
    for name, r in rows.items():
        cells = [
            f"{r[k]:.1%}"
            if "share" in k
            else f"{r[k]:.0f}"
            if "tok/s" in k
            else f"{r[k]:.2f}"
            if "s/step" in k
            else f"{r[k]:.4f}"
            for k in keys
        ]
        if base:
            cells += [f"{base['sft s/step'] / r['sft s/step']:.2f}x", f"{base['dpo s/step'] / r['dpo s/step']:.2f}x"]
        print(f"| {name:{width}} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
