"""The pipeline's model work on a CUDA GPU, checked and timed: part of bench/gpu_check.sh.

    python bench/gpu_steps.py [--cpu]

--cpu: a dry run of this script on the CPU at small sizes (its GPU checks then fail).

1. Training: one SFT call, one DPO call and one CREAM call on the tiny test model (tests/tiny.py) with
   `precision: auto`, which must resolve to bf16 and put the model on the GPU.
2. The transformers backend on the GPU against the same model on the CPU (fp32): greedy continuations, the
   judge's digit probabilities and the reference log-probabilities of the answer stage.
3. Speed on a model of SmolLM2-135M's shape (random weights, the tiny tokenizer): an SFT and a DPO step in
   fp32 and bf16 (seconds, tokens/s), and sampling (N=4, T=0.7, top_p=0.9) in bf16 (new tokens/s), with a
   bf16 matmul measured in the same run.

The embedded model (a 98 MB GGUF) is not used: a GPU machine may receive the project over a small link.
Exits non-zero when a check fails; prints every figure either way.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import builtin_examples, n_tokens, train  # noqa: E402

from srlm.config import DpoConfig, LoraConfig, SftConfig  # noqa: E402
from srlm.generation import TransformersGenerator, make_generator, register_fast_attention  # noqa: E402
from srlm.modeling import load_model, load_tokenizer  # noqa: E402
from srlm.sampling import SamplingParams, chat_prompt  # noqa: E402
from srlm.training import dpo_examples, sft_examples, train_dpo, train_sft  # noqa: E402
from tiny import build_tiny_model, build_tokenizer  # noqa: E402

failed: list[str] = []
DEV = "cuda"
SMALL = False  # --cpu: a dry run at small sizes


def peak_mib() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if DEV == "cuda" else 0.0


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def check(ok: bool, what: str) -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failed.append(what)


def training_calls(tiny: Path, work: Path) -> None:
    print("1. training on the GPU, precision auto (tiny model)")
    lora = LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0)
    sft = sft_examples([(f"Say {i}.", f"{i}.") for i in range(8)])
    pairs = dpo_examples([{"prompt": f"Say {i}.", "chosen": f"{i}.", "rejected": "No."} for i in range(8)])
    common = dict(epochs=1, batch_size=4, grad_accum=1, max_length=64, precision="auto", save_steps=0, lora=lora)
    for name, call in (
        ("SFT", lambda: train_sft(tiny, work / "sft", sft, SftConfig(**common), seed=0, work_dir=work / "w1")),
        ("DPO", lambda: train_dpo(tiny, work / "dpo", pairs, DpoConfig(**common), seed=0, work_dir=work / "w2")),
        (
            "CREAM",
            lambda: train_dpo(
                tiny,
                work / "cream",
                [p | {"consistency": 0.75} for p in pairs],
                DpoConfig(**common),
                seed=0,
                work_dir=work / "w3",
                consistency="dynamic",
            ),
        ),
    ):
        if DEV == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        m = call()
        peak = peak_mib()
        print(
            f"  {name}: precision {m['precision']}, {m['steps']} steps, loss {m['train_loss']:.4f}, "
            f"{time.perf_counter() - t:.1f} s, peak GPU memory {peak:.0f} MiB"
        )
        check(m["precision"] == "bf16" and peak > 0, f"{name} trained in bf16 on the GPU")
        check(m["train_loss"] == m["train_loss"], f"{name} loss is a number")


def backend_on_gpu(tiny: Path) -> None:
    print("2. the transformers backend on the GPU vs the CPU (tiny model, fp32)")
    gpu = make_generator("transformers", str(tiny), batch_size=16, dtype="float32")
    check(gpu.device.type == "cuda", f"make_generator put the model on {gpu.device}")
    model, tok = load_model(tiny, attn_implementation=register_fast_attention())
    cpu = TransformersGenerator(model, tok, batch_size=16, progress=False)
    gpu.progress = False
    prompts = [chat_prompt(tok, f"Name {w} things.") for w in ("two", "three", "four", "five")]
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=12, seed=0)
    a, b = (g.generate(prompts, greedy) for g in (cpu, gpu))
    same = sum(x[0].text == y[0].text for x, y in zip(a, b))
    check(same == len(prompts), f"greedy continuations equal on CPU and GPU: {same} of {len(prompts)}")
    digits = [tok(f" {d}", add_special_tokens=False)["input_ids"][0] for d in range(6)]
    conts = [["Fine.\nScore:", "Poor.\nScore:"]] * len(prompts)
    pa, pb = (g.next_token_probs(prompts, conts, digits) for g in (cpu, gpu))
    diff = max((x - y).abs().max().item() for x, y in zip(pa, pb))
    check(diff < 1e-4 and pb[0].device.type == "cpu", f"digit probabilities, largest difference {diff:.2e}")
    la, lb = (g.continuation_logprobs(prompts, ["The answer is short."] * len(prompts)) for g in (cpu, gpu))
    diff = max(abs(x - y) for u, v in zip(la, lb) for x, y in zip(u, v))
    check(diff < 1e-3, f"reference log-probabilities, largest difference {diff:.2e}")


def smollm2_shaped(out: Path) -> Path:
    """SmolLM2-135M's architecture with random weights and the tiny tokenizer (ids it lacks decode to nothing)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(out)
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def speed(work: Path) -> None:
    print("3. speed, SmolLM2-135M's shape, random weights")
    n = 1024 if SMALL else 8192
    a = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    a @ a
    sync()
    t = time.perf_counter()
    for _ in range(10):
        a @ a
    sync()
    print(f"  bf16 {n}^3 matmul: {2 * n**3 * 10 / (time.perf_counter() - t) / 1e12:.1f} TFLOP/s")
    model_dir = smollm2_shaped(work / "smol")
    tok = load_tokenizer(model_dir)
    sft, dpo = builtin_examples(n_ift=32, n_eft=48, n_pairs=48) if not SMALL else builtin_examples(4, 4, 8)
    for kind, rows, seq in (("sft", sft, 640), ("dpo", dpo, 512)):
        tokens = n_tokens(tok, rows, seq)
        for precision in ("fp32", "bf16"):
            m = train(kind, model_dir, rows, precision, seq, work / f"{kind}-{precision}", batch_size=8)
            steps = len(m["step_times"])
            print(
                f"  {kind.upper()} {precision}: {steps} steps of 8, {m['step_s']:.3f} s/step after the first, "
                f"{tokens / steps * (steps - 1) / max(1e-9, sum(m['step_times'][1:])):.0f} tokens/s"
            )
    gen = make_generator("transformers", str(model_dir), batch_size=256, dtype="bfloat16")
    gen.progress = False
    n_prompts, new_tokens = (8, 8) if SMALL else (64, 128)
    prompts = [chat_prompt(tok, f"Write about topic number {i}.") for i in range(n_prompts)]
    sp = SamplingParams(n=4, temperature=0.7, top_p=0.9, max_new_tokens=new_tokens, seed=0)
    gen.generate(prompts[:4], sp)  # warm-up
    sync()
    t = time.perf_counter()
    new = sum(c.num_tokens for comps in gen.generate(prompts, sp) for c in comps)
    sync()
    s = time.perf_counter() - t
    print(
        f"  sampling bf16, transformers backend on {gen.device}: {n_prompts} prompts x N=4, {new} new tokens "
        f"in {s:.1f} s, {new / s:.0f} tok/s"
    )


def main() -> None:
    global DEV, SMALL
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="a dry run on the CPU at small sizes")
    ap.add_argument("--parts", type=int, nargs="*", default=[1, 2, 3], help="which parts to run")
    args = ap.parse_args()
    DEV, SMALL = ("cpu", True) if args.cpu else ("cuda", False)
    os.environ["SRLM_TRACKING"] = "off"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {gpu}")
    if DEV == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu_steps.py: no CUDA device (--cpu for a dry run)")
    work = Path(tempfile.mkdtemp(prefix="gpu-steps-"))
    t = time.perf_counter()
    tiny = build_tiny_model(work / "tiny", train_steps=30 if SMALL else 300)
    print(f"tiny model built in {time.perf_counter() - t:.1f} s")
    parts = {1: lambda: training_calls(tiny, work), 2: lambda: backend_on_gpu(tiny), 3: lambda: speed(work)}
    for part in (parts[p] for p in args.parts):
        try:
            part()
        except Exception as e:  # the other parts still run and print
            traceback.print_exc()
            failed.append(f"{type(e).__name__}: {e}")
    print(f"gpu_steps: {len(failed)} failed" + "".join(f"\n  - {f}" for f in failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
