"""fp32 against bf16 on this machine, in one run, on the same inputs: what `precision: auto` and
`generation.dtype: auto` buy where the CPU has bf16 units (AMX, AVX512-BF16), and how far bf16 departs.

    python bench/precision.py [--model models/m0] [--prompts 16] [--max-new-tokens 64] [--steps 4]

Prints, for each precision: a 2048x2048 matmul's GFLOP/s; an SFT step and a DPO step (LoRA r=16 as in
params.yaml; seconds, tokens/s, GFLOP/s by the 6 x parameters x tokens convention and that as a share of
the bf16 matmul rate); sample and judge new tokens/s; the expected-score readout's prompts/s. Then the
departure of bf16 from fp32: the loss after --steps SFT steps, greedy agreement, the largest difference of
an expected score. Uses models/m0 when it exists, else prepares the embedded default (SmolLM2-135M).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from common import model_or_default
from peft import LoraConfig, get_peft_model

from srlm.generation import TransformersGenerator, register_fast_attention
from srlm.modeling import fast_bf16, load_model, set_threads
from srlm.prompts import judge_prompt
from srlm.sampling import SamplingParams, chat_prompt
from srlm.scores import _before_score, expected_score, score_tokens
from srlm.seed import BUILTIN_DIR, load_ift, load_ranked

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_gflops(dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def autocast(precision: str):
    # Training keeps fp32 weights and runs the matmuls in bf16 (what the Trainer's bf16=True does on a CPU).
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lora_model(model_dir, seed: int = 0):
    torch.manual_seed(seed)
    model = load_model(model_dir)[0]
    cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg).train()


def batch(tok, texts: list[str], length: int) -> dict:
    enc = tok(texts, return_tensors="pt", padding="max_length", truncation=True, max_length=length)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def sft_steps(model, tok, texts, precision: str, steps: int, length: int) -> tuple[float, float]:
    """Seconds per optimizer step (after one warm-up step) and the last loss."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    b = batch(tok, texts, length)
    times, loss = [], None
    for i in range(steps + 1):
        t = time.perf_counter()
        with autocast(precision):
            loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i:
            times.append(time.perf_counter() - t)
    return sum(times) / len(times), float(loss.detach())


def dpo_step(model, ref, tok, chosen, rejected, precision: str, length: int) -> float:
    """One DPO step's work: policy forward/backward on chosen + rejected, reference forward without grad."""
    b = batch(tok, chosen + rejected, length)

    def logps(m):
        logits = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, b["input_ids"][:, 1:, None])[..., 0]
        return (lp * b["attention_mask"][:, 1:]).sum(-1)

    def once():
        with autocast(precision):
            with torch.no_grad():
                r = logps(ref)
            p = logps(model)
        n = len(chosen)
        loss = -torch.nn.functional.logsigmoid(0.1 * ((p[:n] - r[:n]) - (p[n:] - r[n:]))).mean()
        loss.backward()
        model.zero_grad()

    once()  # warm-up
    t = time.perf_counter()
    once()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/m0")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256, help="training tokens per sequence")
    args = ap.parse_args()
    set_threads()
    model_dir = model_or_default(args.model)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, fast bf16: {fast_bf16()}, model {model_dir}"
    )

    ift = load_ift(BUILTIN_DIR / "ift.jsonl")
    ranked = load_ranked(BUILTIN_DIR / "ranked.jsonl")
    texts = [r["instruction"] + "\n" + r["response"] for r in ift[:8]]
    chosen = [s["instruction"] + "\n" + s["responses"][0]["text"] for s in ranked[:4]]
    rejected = [s["instruction"] + "\n" + s["responses"][-1]["text"] for s in ranked[:4]]
    judge_items = [(s["instruction"], s["responses"][0]["text"]) for s in ranked[: args.prompts // 2]]

    rows, outs = {}, {}
    attn = register_fast_attention()
    for name, dtype in PRECISIONS.items():
        r = rows[name] = {"matmul GFLOP/s": matmul_gflops(dtype)}
        model = lora_model(model_dir)
        n_params = sum(p.numel() for p in model.parameters())
        tok = load_model(model_dir)[1]
        tok.padding_side = "right"
        step_s, loss = sft_steps(model, tok, texts, name, args.steps, args.seq)
        tokens = len(texts) * args.seq
        r |= {
            "SFT step s": step_s,
            "SFT tok/s": tokens / step_s,
            "SFT GFLOP/s": 6 * n_params * tokens / step_s / 1e9,
            f"SFT loss after {args.steps} steps": loss,
        }
        ref = load_model(model_dir)[0].eval()
        dpo_s = dpo_step(model, ref, tok, chosen, rejected, name, args.seq)
        dpo_tokens = 2 * len(chosen) * args.seq
        r |= {
            "DPO step s": dpo_s,
            "DPO tok/s": dpo_tokens / dpo_s,
            # policy fwd+bwd (6NT) plus the reference's forward (2NT)
            "DPO GFLOP/s": 8 * n_params * dpo_tokens / dpo_s / 1e9,
        }
        del model, ref

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
