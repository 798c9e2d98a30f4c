"""The reference log-probability readout (`TransformersGenerator.continuation_logprobs`, the `answer` stages'
held-out references) of this checkout against an earlier commit's, in one run on the same model and texts:
seconds per call, alternating rounds, and the largest difference between the two results.

    python bench/logprob_readout.py --against 2bc6e1c [--model models/m0] [--rounds 2] [--texts 0]

The earlier commit's srlm/generation.py is read with `git show` and imported beside this one (the rest of
srlm is this checkout's). Texts: the held-out IFT prompts and their reference responses (data/eval/ after
`dvc repro prepare_seed`), with the chat template, in the model's generation dtype (`auto`).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import model_or_default

from srlm import artifacts, seed
from srlm.generation import TransformersGenerator
from srlm.modeling import load_model, resolve_dtype, set_threads
from srlm.sampling import chat_prompt


def earlier_generation(rev: str):
    """srlm/generation.py at `rev`, imported as a module of the srlm package (its relative imports resolve)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:srlm/generation.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "generation_earlier.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("srlm.generation_earlier", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", required=True, help="the earlier commit")
    ap.add_argument("--model", default="models/m0")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--texts", type=int, default=0, help="0: all held-out references")
    args = ap.parse_args()
    set_threads()
    old_module = earlier_generation(args.against)
    dtype = resolve_dtype("auto")
    model, tok = load_model(model_or_default(args.model), dtype=dtype)
    refs = seed.load_ift(artifacts.IFT_EVAL)[: args.texts or None]
    prompts, conts = [chat_prompt(tok, r["instruction"]) for r in refs], [r["response"] for r in refs]
    gens = {
        f"earlier ({args.against})": old_module.TransformersGenerator(model, tok, batch_size=64, progress=False),
        "this checkout": TransformersGenerator(model, tok, batch_size=64, progress=False),
    }
    times: dict[str, list[float]] = {name: [] for name in gens}
    results = {}
    for _ in range(args.rounds):
        for name, gen in gens.items():
            start = time.perf_counter()
            results[name] = gen.continuation_logprobs(prompts, conts)
            times[name].append(time.perf_counter() - start)
    a, b = results.values()
    diff = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    tokens = sum(map(len, a))
    print(f"{len(prompts)} texts, {tokens} continuation tokens, {dtype}, rounds {args.rounds}")
    print("| readout | seconds per call (each round) | fastest | speed-up |\n|---|---|---|---|")
    base = min(next(iter(times.values())))
    for name, ts in times.items():
        print(f"| {name} | {', '.join(f'{t:.1f}' for t in ts)} | {min(ts):.1f} | {base / min(ts):.2f}x |")
    print(f"largest |difference| between the two readouts: {diff:.3g} nats")


if __name__ == "__main__":
    main()
