"""What the benchmarks share."""

import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from transformers import TrainerCallback

from srlm import training
from srlm.config import DpoConfig, LoraConfig, SftConfig, derive_seed
from srlm.modeling import prepare_base_model
from srlm.prompts import judge_prompt
from srlm.seed import BUILTIN_DIR, load_gold, load_ift, load_ranked


def model_or_default(path: str) -> Path:
    """`path` if it holds a checkpoint (models/m0 after `dvc repro prepare_model`), else the
    embedded default prepared into a temporary directory."""
    model_dir = Path(path)
    if not (model_dir / "config.json").is_file():
        model_dir = Path(tempfile.mkdtemp()) / "m0"
        print(f"{path} not found: preparing the embedded default in {model_dir}")
        prepare_base_model("smollm2-135m-instruct", model_dir)
    return model_dir


def builtin_examples(n_ift: int, n_eft: int, n_pairs: int) -> tuple[list[dict], list[dict]]:
    """Training examples from the built-in seed data: SFT as M1's (IFT examples, then EFT judge examples:
    the long rubric prompt -> a gold judgment) and DPO pairs (best vs worst of a ranked set)."""
    ift = load_ift(BUILTIN_DIR / "ift.jsonl")
    gold = load_gold(BUILTIN_DIR / "gold_judgments.jsonl")
    ranked = load_ranked(BUILTIN_DIR / "ranked.jsonl")
    sft = training.sft_examples(
        [(r["instruction"], r["response"]) for r in ift[:n_ift]]
        + [(judge_prompt(g["instruction"], g["response"]), g["judgment"]) for g in gold[:n_eft]]
    )
    dpo = training.dpo_examples(
        [
            {"prompt": s["instruction"], "chosen": s["responses"][0]["text"], "rejected": s["responses"][-1]["text"]}
            for s in ranked[:n_pairs]
        ]
    )
    return sft, dpo


def sequence_lengths(tok, rows: list[dict], seq: int) -> list[tuple[int, ...]]:
    """Per example, the tokens of each sequence it trains on, cut at `seq`: (completion,) for SFT, (chosen,
    rejected) for a DPO pair, each with its prompt."""
    return [
        tuple(
            min(seq, len(tok(tok.apply_chat_template(r["prompt"] + r[k], tokenize=False))["input_ids"]))
            for k in (("completion",) if "completion" in r else ("chosen", "rejected"))
        )
        for r in rows
    ]


def n_tokens(tok, rows: list[dict], seq: int) -> int:
    """Tokens the examples train on, each sequence cut at `seq` (both sequences of a DPO pair)."""
    return sum(map(sum, sequence_lengths(tok, rows, seq)))


def matmul_gflops(dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def train(
    kind: str,
    model_dir,
    examples,
    precision: str,
    seq: int,
    work: Path,
    batch_size: int = 4,
    dropout: float = 0.0,
    epochs: float = 1,
    save_steps: int = 0,
    grad_accum: int = 1,
    **dpo_options,
) -> dict:
    """The pipeline's own training call (TRL's SFTTrainer or DPOTrainer, LoRA r=16 as in params.yaml), one
    optimizer step per `grad_accum` batches (1 by default); returns its summary plus the seconds of each step
    (`step_times`), their mean after the first (`step_s`) and the whole call's (`wall_s`). `save_steps`: a
    Trainer checkpoint every so many steps, as the stages write (0: none, the default here). `dpo_options`:
    DpoConfig fields; by default a DPO step includes the reference's forward, as in the pipeline
    (precompute_ref_log_probs off)."""
    lora = LoraConfig(enabled=True, r=16, alpha=32, dropout=dropout)
    common = dict(
        epochs=epochs,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=seq,
        learning_rate=2e-4,
        precision=precision,
        save_steps=save_steps,
    )
    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    fn, cfg = (
        (training.train_sft, SftConfig(**common, lora=lora))
        if kind == "sft"
        else (training.train_dpo, DpoConfig(**common, lora=lora, **dpo_options))
    )
    start = time.perf_counter()
    with mock.patch.object(training, "HoldAfterSave", Clock):  # the trainers' per-step hook, timing here
        m = fn(model_dir, work / "out", examples, cfg, seed=derive_seed(0, kind), work_dir=work / "ckpt")
    wall = time.perf_counter() - start
    return m | {"step_times": times, "step_s": sum(times[1:]) / max(1, len(times) - 1), "wall_s": wall}
