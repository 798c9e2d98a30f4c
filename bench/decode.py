"""The sample and judge stages' generation along the decode paths TransformersGenerator has had, fp32 and bf16,
side by side in one run, on the same prompts and seeds.

    python bench/decode.py [--model models/m0] [--prompts 32] [--repeats 2] [--only "bf16, pool" ...]

Rows, for fp32 and bf16, all through TransformersGenerator with its prefix sharing and NucleusSampler:
- "batches, concatenating": fixed batches through model.generate, with transformers' DynamicCache (to 2026-12-01);
- "batches": the same with srlm.generation.GrowingLayer, which appends in place (to 2026-12-07);
- "pool, enable_gqa": continuous batching (srlm.generation.DecodePool): an ended row leaves at once and a
  waiting prompt takes its place, with decode attention through SDPA's `enable_gqa` (2026-12-07);
- "pool, folded heads": the same with each KV head's query heads on SDPA's query axis in a decode step, every
  row holding its own copy of the prompts' shared prefix;
- "pool": the same with the shared prefix held once, read once per step for all rows (cascade attention; now).
Cases: sample (IFT prompts, N=4, 128 new tokens, T=0.7, top_p=0.9: the default `sample` stage) and judge
(judge prompts, k=3, 48 new tokens: the default `judge` stage's generation), 32 prompts each: one shard.
Prints new tokens/s (the faster of --repeats interleaved rounds), the speed-up over the first setting run (fp32
"batches, concatenating" unless --only leaves it out), and how many samples each path drew exactly as the first
path of its dtype: all of them in fp32 (every sample has its own random stream); in bf16 the matrix products
round differently at other batch shapes and kernels, so some samples fork.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from unittest import mock

import torch
from common import model_or_default
from transformers import AttentionInterface, DynamicCache

from srlm import generation
from srlm.generation import TransformersGenerator, register_fast_attention
from srlm.modeling import load_model, set_threads
from srlm.prompts import judge_prompt
from srlm.sampling import SamplingParams, chat_prompt
from srlm.seed import BUILTIN_DIR, load_ift, load_ranked

PATHS = {
    "batches, concatenating": (False, True, True, False),
    "batches": (False, False, True, False),
    "pool, enable_gqa": (True, False, True, False),
    "pool, folded heads": (True, False, False, False),
    "pool": (True, False, False, True),
}
SETTINGS = {
    f"{short}, {path}": (dtype, *flags)
    for short, dtype in (("fp32", "float32"), ("bf16", "bfloat16"))
    for path, flags in PATHS.items()
}  # name -> (dtype, pooled, concatenate, enable_gqa, cascade)


def _sdpa_enable_gqa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kw):
    """srlm.generation._sdpa_gqa as it was to 2026-12-07: every step through SDPA's enable_gqa."""
    causal = query.shape[2] > 1 and attention_mask is None and is_causal is not False
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling, is_causal=causal, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def attention(fn):
    AttentionInterface.register("sdpa_gqa", fn)
    try:
        yield
    finally:
        register_fast_attention()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/m0")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--only", nargs="+", choices=list(SETTINGS), help="run these settings only")
    args = ap.parse_args()
    settings = {k: v for k, v in SETTINGS.items() if not args.only or k in args.only}
    set_threads()
    model_dir = model_or_default(args.model)
    attn = register_fast_attention()
    models = {dtype: load_model(model_dir, dtype=dtype, attn_implementation=attn) for dtype in ("float32", "bfloat16")}
    tok = models["float32"][1]
    ift = load_ift(BUILTIN_DIR / "ift.jsonl")[: args.prompts]
    ranked = load_ranked(BUILTIN_DIR / "ranked.jsonl")[: args.prompts]
    cases = {
        "sample": (
            [chat_prompt(tok, r["instruction"]) for r in ift],
            SamplingParams(n=4, temperature=0.7, top_p=0.9, max_new_tokens=128, seed=1),
        ),
        "judge": (
            [chat_prompt(tok, judge_prompt(s["instruction"], s["responses"][0]["text"])) for s in ranked],
            SamplingParams(n=3, temperature=0.7, top_p=0.9, max_new_tokens=48, seed=2),
        ),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {model_dir}, {args.prompts} prompts")
    best, texts = {}, {}
    for _ in range(args.repeats):
        for name, (dtype, pooled, concatenate, enable_gqa, cascade) in settings.items():
            model, _ = models[dtype]
            gen = TransformersGenerator(model, tok, batch_size=64, progress=False, pooled=pooled)
            stock = mock.patch.object(generation, "_new_cache", lambda m, room=0: DynamicCache(config=m.config))
            with (
                stock if concatenate else contextlib.nullcontext(),
                attention(_sdpa_enable_gqa) if enable_gqa else contextlib.nullcontext(),
                mock.patch.object(generation, "cascades", lambda m, on=cascade: on),
            ):
                for case, (prompts, sp) in cases.items():
                    t = time.perf_counter()
                    out = gen.generate(prompts, sp)
                    rate = sum(c.num_tokens for cs in out for c in cs) / (time.perf_counter() - t)
                    best[name, case] = max(rate, best.get((name, case), 0.0))
                    texts[name, case] = [c.text for cs in out for c in cs]
    base = {case: best[next(iter(settings)), case] for case in cases}
    print(f"\n| setting | {' | '.join(f'{c} tok/s | {c} speed-up' for c in cases)} |")
    print("|---" * (1 + 2 * len(cases)) + "|")
    for name in settings:
        cells = [f"{best[name, c]:.0f} | {best[name, c] / base[c]:.2f}x" for c in cases]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for dtype in ("fp32", "bf16"):
        paths = [p for p in PATHS if f"{dtype}, {p}" in settings]
        for path in paths[1:]:
            same = sum(
                a == b for c in cases for a, b in zip(texts[f"{dtype}, {path}", c], texts[f"{dtype}, {paths[0]}", c])
            )
            total = sum(len(texts[f"{dtype}, {path}", c]) for c in cases)
            print(f"{dtype}: {path!r} drew the same text as {paths[0]!r} in {same} of {total} samples")


if __name__ == "__main__":
    main()
