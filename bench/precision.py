"""fp32 against bf16 on this machine, in one run, on the same inputs: what `precision: auto` and
`generation.dtype: auto` buy where the CPU has bf16 units (AMX, AVX512-BF16), and how far bf16 departs.

    python bench/precision.py [--model models/m0] [--prompts 16] [--max-new-tokens 64] [--seq 512]

Prints, for each precision: a 2048x2048 matmul's GFLOP/s; the pipeline's own SFT (12 IFT + 4 EFT
examples) and DPO (12 pairs) training calls, batch 4, LoRA r=16 as in params.yaml: seconds per step after
the first, tokens/s, GFLOP/s by the 6 x parameters x tokens convention and that as a share of the bf16
matmul rate; sample and judge new tokens/s; the expected-score readout's prompts/s. Then the departure of
bf16 from fp32: SFT's final loss, greedy agreement, the largest difference of an expected score. Uses
models/m0 when it exists, else prepares the embedded default (SmolLM2-135M).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from common import builtin_examples, matmul_gflops, model_or_default, n_tokens, train

from srlm.generation import TransformersGenerator, register_fast_attention
from srlm.modeling import fast_bf16, load_model, set_threads
from srlm.prompts import judge_prompt
from srlm.sampling import SamplingParams, chat_prompt
from srlm.scores import _before_score, expected_score, score_tokens
from srlm.seed import BUILTIN_DIR, load_ift, load_ranked

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/m0")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq", type=int, default=512, help="training max_length (sft/dpo.max_length)")
    args = ap.parse_args()
    set_threads()
    model_dir = model_or_default(args.model)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, fast bf16: {fast_bf16()}, model {model_dir}"
    )

    os.environ["SRLM_TRACKING"] = "off"
    sft, dpo = builtin_examples(n_ift=12, n_eft=4, n_pairs=12)
    ift, ranked = load_ift(BUILTIN_DIR / "ift.jsonl"), load_ranked(BUILTIN_DIR / "ranked.jsonl")
    judge_items = [(s["instruction"], s["responses"][0]["text"]) for s in ranked[: args.prompts // 2]]
    model, tok = load_model(model_dir)  # once, for the parameter count and the tokenizer
    n_params = sum(p.numel() for p in model.parameters())
    del model

    rows, outs = {}, {}
    attn = register_fast_attention()
    for name, dtype in PRECISIONS.items():
        r = rows[name] = {"matmul GFLOP/s": matmul_gflops(dtype)}
        with tempfile.TemporaryDirectory() as work:
            s_ = train("sft", model_dir, sft, name, args.seq, Path(work) / "sft")
            d_ = train("dpo", model_dir, dpo, name, args.seq, Path(work) / "dpo")
        sft_tok, dpo_tok = n_tokens(tok, sft, args.seq) / s_["steps"], n_tokens(tok, dpo, args.seq) / d_["steps"]
        r |= {
            "SFT step s": s_["step_s"],
            "SFT tok/s": sft_tok / s_["step_s"],
            "SFT GFLOP/s": 6 * n_params * sft_tok / s_["step_s"] / 1e9,
            f"SFT loss after {s_['steps']} steps": s_["final_loss"],
            "DPO step s": d_["step_s"],
            "DPO tok/s": dpo_tok / d_["step_s"],
            # policy fwd+bwd (6NT) plus the reference's forward (2NT)
            "DPO GFLOP/s": 8 * n_params * dpo_tok / d_["step_s"] / 1e9,
        }

        gm, gtok = load_model(model_dir, dtype=str(dtype).split(".")[1], attn_implementation=attn)
        gen = TransformersGenerator(gm, gtok, batch_size=args.batch_size, progress=False)
        prompts = [chat_prompt(gtok, x["instruction"]) for x in ift[: args.prompts]]
        sp = SamplingParams(n=4, temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens, seed=1)
        t = time.perf_counter()
        got = gen.generate(prompts, sp)
        r["sample new tok/s"] = sum(c.num_tokens for cs in got for c in cs) / (time.perf_counter() - t)
        jp = [chat_prompt(gtok, judge_prompt(a, b)) for a, b in judge_items]
        t = time.perf_counter()
        judged = gen.generate(jp, SamplingParams(n=3, temperature=0.7, top_p=0.9, max_new_tokens=96, seed=2))
        r["judge new tok/s"] = sum(c.num_tokens for cs in judged for c in cs) / (time.perf_counter() - t)
        greedy = gen.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens))
        if name == "fp32":  # both precisions read the same judgments
            anchor, targets = score_tokens(gtok)
            conts = [[_before_score(c.text) + anchor for c in cs] for cs in judged]
        t = time.perf_counter()
        probs = gen.next_token_probs(jp, conts, targets)
        r["readout prompts/s"] = len(jp) / (time.perf_counter() - t)
        outs[name] = {
            "greedy": [cs[0].text for cs in greedy],
            "expected": [expected_score(row.tolist()) for p in probs for row in p],
        }
        del gm, gen

    peak = rows["bf16"]["matmul GFLOP/s"]
    for r in rows.values():
        r["SFT share of bf16 matmul"] = r["SFT GFLOP/s"] / peak
        r["DPO share of bf16 matmul"] = r["DPO GFLOP/s"] / peak
    width = max(map(len, rows["fp32"]))
    print(f"\n{'':{width}}  {'fp32':>10}  {'bf16':>10}  {'bf16/fp32':>9}")
    for k in rows["fp32"]:
        a, b = rows["fp32"][k], rows["bf16"][k]
        ratio = f"{b / a:9.2f}" if a else ""
        fmt = ".1%" if "share" in k else ".3f" if abs(a) < 100 else ".0f"
        print(f"{k:{width}}  {a:>10{fmt}}  {b:>10{fmt}}  {ratio}")
    same = sum(x == y for x, y in zip(outs["fp32"]["greedy"], outs["bf16"]["greedy"]))
    diff = max(abs(x - y) for x, y in zip(outs["fp32"]["expected"], outs["bf16"]["expected"]))
    print(
        f"\nbf16 vs fp32: greedy responses identical {same}/{len(outs['fp32']['greedy'])}; "
        f"largest expected-score difference {diff:.3f} (of 1..5) over {len(outs['fp32']['expected'])} judgments"
    )


if __name__ == "__main__":
    main()
