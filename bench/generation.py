"""Tokens per second of the sample and judge stages' generation, batched backend vs a
one-prompt-at-a-time `model.generate` loop, on the same prompts, in the same run.

    python bench/generation.py [--model models/m0] [--prompts 16] [--max-new-tokens 64] [--batch-size 64]

Uses models/m0 when it exists, else prepares the embedded default into a temp directory.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import model_or_default

from srlm.generation import TransformersGenerator, register_fast_attention
from srlm.modeling import load_model, set_threads
from srlm.prompts import judge_prompt
from srlm.sampling import SamplingParams, chat_prompt
from srlm.seed import BUILTIN_DIR, load_ift, load_ranked


def one_at_a_time(model, tok, prompts, sp: SamplingParams) -> int:
    """The naive loop: one prompt per `generate` call (its n samples via num_return_sequences)."""
    new = 0
    for i, p in enumerate(prompts):
        torch.manual_seed(sp.seed + i)
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=sp.temperature,
                top_p=sp.top_p,
                top_k=None,
                max_new_tokens=sp.max_new_tokens,
                num_return_sequences=sp.n,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        gen = out[:, enc.input_ids.shape[1] :]
        for row in gen.tolist():
            new += next((j for j, t in enumerate(row) if t == tok.eos_token_id), len(row))
    return new


def batched(gen: TransformersGenerator, prompts, sp: SamplingParams) -> int:
    return sum(c.num_tokens for comps in gen.generate(prompts, sp, desc="batched") for c in comps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/m0")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    set_threads()
    model_dir = model_or_default(args.model)
    stock, tok = load_model(model_dir)
    fast, _ = load_model(model_dir, attn_implementation=register_fast_attention())
    gen = TransformersGenerator(fast, tok, batch_size=args.batch_size, progress=False)

    ift = load_ift(BUILTIN_DIR / "ift.jsonl")[: args.prompts]
    ranked = load_ranked(BUILTIN_DIR / "ranked.jsonl")
    cases = {
        "sample (N=4)": ([chat_prompt(tok, r["instruction"]) for r in ift], SamplingParams(n=4)),
        "judge (k=3)": (
            [
                chat_prompt(tok, judge_prompt(s["instruction"], s["responses"][0]["text"]))
                for s in ranked[: args.prompts]
            ],
            SamplingParams(n=3),
        ),
    }
    print(
        f"model {model_dir}, {torch.get_num_threads()} threads, {args.prompts} prompts, "
        f"max {args.max_new_tokens} new tokens, T=0.7 top_p=0.9"
    )
    print(f"{'stage':<14}{'loop tok/s':>12}{'batched tok/s':>15}{'speed-up':>10}")
    for name, (prompts, sp) in cases.items():
        sp = SamplingParams(n=sp.n, temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens, seed=0)
        t = time.perf_counter()
        n_loop = one_at_a_time(stock, tok, prompts, sp)
        loop = n_loop / (time.perf_counter() - t)
        t = time.perf_counter()
        n_b = batched(gen, prompts, sp)
        fastr = n_b / (time.perf_counter() - t)
        print(f"{name:<14}{loop:>12.1f}{fastr:>15.1f}{fastr / loop:>9.1f}x")


if __name__ == "__main__":
    main()
