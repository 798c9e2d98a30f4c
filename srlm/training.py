"""SFT and DPO with TRL's trainers (CREAM's loss: srlm.cream); LoRA through peft, the result stored as its adapter
on the full checkpoint it started from (srlm.modeling.stacked_adapter), full fine-tuning as a full checkpoint.

A training stage runs in its own process by default (CPU, one GPU), or on several (srlm.launch); only
the main process writes outputs, metrics and the MLflow run. Trainer checkpoints go to a work
directory keyed by everything the result depends on, so an interrupted stage resumes from its last
complete checkpoint and never from a stale one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import torch
import trl.trainer.utils as trl_utils
from transformers import TrainerCallback
from trl import DPOTrainer

from . import cream, progress
from .config import ConfigError, DistributedConfig, DpoConfig, TrainConfig
from .io import DataError, atomic_dir, file_sha256
from .launch import is_main_process
from .modeling import context_length, load_model, resolve_precision, save_adapter, stacked_adapter, weight_dirs
from .tracking import log_metrics

log = logging.getLogger(__name__)
SAVE_TOTAL_LIMIT = 2  # the newest checkpoint, and the one before in case the newest is damaged


# --- checkpoints -------------------------------------------------------------------------------------------------


def checkpoint_dir(
    stage: str, tracked: dict, model_dir: str | Path, examples: list[dict], dist: DistributedConfig
) -> Path:
    """A training stage's checkpoint folder (srlm.progress.work_dir), keyed by what its result depends on: the
    stage's tracked params, the exact training examples, the start model's files (an adapter's and its base's),
    this module's and srlm.cream's code and the process layout (a checkpoint of another layout does not load). A
    stale checkpoint is never resumed."""
    digest = hashlib.sha256(json.dumps(examples, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    key = tracked | {
        "examples": digest,
        "code": [file_sha256(__file__), file_sha256(cream.__file__)],
        "processes": [dist.num_processes, dist.num_machines],
    }
    start = weight_dirs(model_dir)  # an adapter and its base
    return progress.work_dir(stage, key, start + ([dist.config_file] if dist.num_processes > 1 else []))


def _step(ckpt: Path) -> int:
    suffix = ckpt.name.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def last_checkpoint(work_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `work_dir`. One that was half-written when the run was killed,
    or damaged since, is skipped with a warning (and removed by the main process), so the run falls back
    to the one before, or starts clean."""
    ckpts = sorted(Path(work_dir).glob("checkpoint-*"), key=_step, reverse=True)
    for ckpt in ckpts:
        problem = _checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        if is_main_process():
            log.warning("%s: %s; skipped", ckpt, problem)
            shutil.rmtree(ckpt, ignore_errors=True)
    return None


def _checkpoint_problem(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be resumed from, or None. The Trainer writes trainer_state.json last, so a checkpoint
    without it was interrupted; the weight and state files are checked for truncation without loading them."""
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if int(state["global_step"]) != _step(ckpt):
            return "trainer_state.json is of another step"
    except (OSError, ValueError, KeyError, TypeError):
        return "no readable trainer_state.json (interrupted while saving)"
    files = [f for f in ckpt.rglob("*") if f.is_file()]
    if not any(f.suffix in (".safetensors", ".bin") or f.name.endswith(".distcp") for f in files):
        return "no weights"
    for f in files:
        if f.suffix == ".safetensors" and not _safetensors_complete(f):
            return f"{f.name} is truncated or damaged"
        if f.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(f):  # torch.save writes a zip archive
            return f"{f.name} is truncated or damaged"
    return None


def _safetensors_complete(path: Path) -> bool:
    """The header parses and the file is exactly as long as the tensors it lists."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size == 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def _train(trainer):
    """trainer.train(), resumed from the newest complete checkpoint of its output_dir if there is one."""
    acc = trainer.accelerator
    if acc.num_processes > 1 and acc.is_main_process:
        asked = [k for k in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{k}") == "true"]
        log.info("training on %d processes: %s", acc.num_processes, acc.distributed_type.value)
        if asked and acc.distributed_type.value == "MULTI_CPU":
            log.warning("%s needs CUDA GPUs: on this CPU the processes train as plain DDP over gloo", asked[0])
    ckpt = last_checkpoint(trainer.args.output_dir)
    if ckpt is not None and is_main_process():
        log.info("resumed from step %d (%s): the steps before it are not redone", _step(ckpt), ckpt)
    with _labelled_positions_only():
        return trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)


# --- shared by SFT and DPO ----------------------------------------------------------------------------------------


def fit_to_max_length(
    examples: list[dict], tokenizer, model_config, max_length: int, section: str
) -> tuple[list[dict], dict]:
    """Check the examples against `<section>.max_length` before any training step.

    - max_length beyond the model's context: an error (the model cannot attend that far).
    - An example whose prompt alone fills max_length has no response token left to learn from; TRL would drop
      it silently (or crash when it drops them all). It is dropped here, with a warning and a count, and an
      error when nothing is left. An example whose response is cut short is kept, counted and warned about.
    """
    context = context_length(model_config)
    if context and max_length > context:
        raise ConfigError(
            f"params.yaml: {section}.max_length = {max_length} is longer than the model's context "
            f"of {context} tokens; set {section}.max_length to {context} or less"
        )

    def length(messages, generation_prompt=False):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    kept, truncated, prompt_lengths = [], 0, []
    for e in examples:
        prompt = length(e["prompt"], generation_prompt=True)
        prompt_lengths.append(prompt)
        if prompt >= max_length:
            continue
        full = max(length(e["prompt"] + e[k]) for k in ("completion", "chosen", "rejected") if k in e)
        truncated += full > max_length
        kept.append(e)
    dropped = len(examples) - len(kept)
    fix = f"raise {section}.max_length" + (f" (the model's context is {context} tokens)" if context else "")
    if not kept:
        raise DataError(
            f"every one of the {len(examples)} training examples has a prompt of at least "
            f"{section}.max_length = {max_length} tokens (the longest is {max(prompt_lengths)}), so "
            f"nothing is left to learn from; {fix}"
        )
    if dropped and is_main_process():
        log.warning(
            "%d of %d examples dropped: their prompt alone fills %s.max_length = %d tokens; %s",
            dropped,
            len(examples),
            section,
            max_length,
            fix,
        )
    if truncated and is_main_process():
        log.warning(
            "%d of %d examples are longer than %s.max_length = %d tokens and lose the end of their response; %s",
            truncated,
            len(examples),
            section,
            max_length,
            fix,
        )
    return kept, {"dropped_too_long": dropped, "truncated": truncated}


class MlflowStepLogger(TrainerCallback):
    """Per-step trainer logs (loss, DPO reward margins, ...): a log line, and the stage's MLflow run."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        if "loss" in logs:
            log.info("%s step %d/%d: loss %.4f", self.prefix, state.global_step, state.max_steps, logs["loss"])
        if os.environ.get("SRLM_TRACKING", "on") != "off":
            log_metrics({f"{self.prefix}/{k}": v for k, v in logs.items()}, step=state.global_step)


class HoldAfterSave(TrainerCallback):
    """Tests only (srlm.progress.hold_point): holds the run right after its N-th checkpoint. on_save comes after
    the Trainer wrote the whole checkpoint, trainer_state.json last, and rotated the old ones."""

    def __init__(self):
        self.saves = 0

    def on_save(self, args, state, control, **kwargs):
        self.saves += 1
        progress.hold_point(self.saves)


def _peft_config(cfg: TrainConfig):
    if not cfg.lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def _section(cfg: TrainConfig) -> str:
    """The params.yaml section a training config comes from, for messages."""
    return "dpo" if isinstance(cfg, DpoConfig) else "sft"


def _precision(choice: str) -> dict:
    """TrainingArguments' bf16/fp16 for `precision` (srlm.modeling.resolve_precision): the trained weights stay
    fp32 and the forward/backward run in the low precision (mixed precision, torch.autocast on a CPU)."""
    choice = resolve_precision(choice)
    return {"bf16": choice == "bf16", "fp16": choice == "fp16"}


def _base_dtype(cfg: TrainConfig) -> str:
    """The dtype the start model is loaded in for training. LoRA in bf16 holds the frozen base weights in bf16
    (the adapter stays fp32, for the optimizer): autocast would otherwise cast every fp32 weight to bf16 at every
    step, for the same bf16 products. Full fine-tuning keeps fp32 master weights. The trained adapter is stored
    in fp32 and merged into the fp32 base when the model is loaded, so a small update is not rounded away."""
    return "bfloat16" if cfg.lora.enabled and resolve_precision(cfg.precision) == "bf16" else "float32"


@contextlib.contextmanager
def _labelled_positions_only():
    """While training, have TRL's fused LM head (trl.trainer.utils.add_fused_lm_head, SFT and DPO) project only the
    positions that have a label, as it does on Triton devices. Elsewhere it projects every position, to keep tile
    shapes fixed for compilers (Neuron); on a CPU that is the 49k-word projection of every prompt token too (most
    of a judge example), about a third of a training step. The loss and its gradient are the same.
    tests/test_precision.py fails if a TRL upgrade moves the switch."""
    before = trl_utils._use_triton
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = before


def _schedule(cfg: TrainConfig) -> dict:
    """Linear decay from learning_rate to final_learning_rate (the paper's SFT 5.5e-6 -> 1.1e-6 and
    DPO 1e-6 -> 1e-7): transformers' polynomial schedule with power 1 is exactly that line."""
    if not cfg.final_learning_rate:
        return {"lr_scheduler_type": "linear"}
    return {"lr_scheduler_type": "polynomial", "lr_scheduler_kwargs": {"lr_end": cfg.final_learning_rate, "power": 1.0}}


def _common_args(cfg: TrainConfig, work_dir: Path, seed: int) -> dict:
    return dict(
        output_dir=str(work_dir),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        warmup_steps=cfg.warmup_ratio,
        max_length=cfg.max_length,
        **_schedule(cfg),
        logging_steps=1,
        report_to=[],
        seed=seed,
        data_seed=seed,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=max(cfg.save_steps, 1),
        save_total_limit=SAVE_TOTAL_LIMIT,
        use_cpu=not torch.cuda.is_available(),
        **_precision(cfg.precision),
        dataloader_num_workers=0,
        disable_tqdm=False,
        log_level="warning",
        logging_first_step=True,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )


def _save(trainer, tokenizer, out_dir: Path, model_dir: Path, cfg: TrainConfig, trust_remote_code: bool) -> None:
    """Write the trained model atomically (main process only), then drop the checkpoint folder."""
    acc = trainer.accelerator
    # Every process takes part: FSDP and ZeRO-3 gather the full weights from their shards here. A single
    # process fully fine-tuned saves its model as it is.
    gather = cfg.lora.enabled or acc.num_processes > 1
    state = acc.get_state_dict(trainer.model_wrapped) if gather else None
    if not acc.is_main_process:
        return
    if cfg.lora.enabled:
        # The adapter alone, in fp32, stacked on the start model's own adapter (srlm.modeling.stacked_adapter): the
        # model is its base plus every update since, merged in fp32 when loaded, so a DPO step's update, often
        # below bf16's resolution of a weight, is not rounded away.
        trained = getattr(acc.unwrap_model(trainer.model), "peft_config", {}).get("default") or _peft_config(cfg)
        adapter = {k: v for k, v in state.items() if "lora_" in k}
        if not adapter or any(".modules_to_save." in k for k in state):
            raise RuntimeError(f"the trained model holds no plain LoRA adapter to store (keys: {list(state)[:3]})")
        tensors, fields = stacked_adapter(model_dir, adapter, trained.lora_alpha / trained.r)
        with atomic_dir(out_dir) as tmp:
            save_adapter(tmp, tensors, fields)
            tokenizer.save_pretrained(tmp)
        progress.clear(trainer.args.output_dir)
        return
    if acc.num_processes == 1:
        model = trainer.model
    else:  # rebuild a plain copy of the trained model on rank 0 from the gathered weights
        model = load_model(model_dir, trust_remote_code=trust_remote_code)[0]
        model.load_state_dict(state)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    progress.clear(trainer.args.output_dir)


def _summary(trainer, result) -> dict:
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    # The mean of the per-step losses: unlike result.training_loss, the same after a resume.
    train_loss = sum(e["loss"] for e in logs) / len(logs) if logs else float(result.training_loss)
    out = {
        "train_loss": float(train_loss),
        "steps": int(trainer.state.global_step),
        "train_runtime_s": float(result.metrics.get("train_runtime", 0.0)),
        "precision": "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32",
    }
    if logs:
        out["final_loss"] = float(logs[-1]["loss"])
        out["first_loss"] = float(logs[0]["loss"])
    for key in ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"):
        vals = [e[key] for e in logs if key in e]
        if vals:
            out[key.replace("/", "_") + "_mean"] = float(sum(vals) / len(vals))
            out[key.replace("/", "_") + "_last"] = float(vals[-1])
    return out


def sft_examples(pairs: list[tuple[str, str]]) -> list[dict]:
    """(prompt, target) -> TRL's conversational prompt/completion rows: loss on the target only."""
    return [
        {"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]}
        for p, c in pairs
    ]


def train_sft(
    model_dir: str | Path,
    out_dir: str | Path,
    examples: list[dict],
    cfg: TrainConfig,
    seed: int,
    work_dir: str | Path,
    trust_remote_code: bool = False,
) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not examples:
        raise ValueError("no SFT examples to train on")
    model, tok = load_model(model_dir, dtype=_base_dtype(cfg), trust_remote_code=trust_remote_code)
    examples, fit = fit_to_max_length(examples, tok, model.config, cfg.max_length, _section(cfg))
    # Judge examples are ~4x longer than IFT ones: batching by length avoids padding IFT to them.
    args = SFTConfig(
        **_common_args(cfg, Path(work_dir), seed), completion_only_loss=True, train_sampling_strategy="group_by_length"
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tok,
        peft_config=_peft_config(cfg),
        callbacks=[MlflowStepLogger("sft"), HoldAfterSave()],
    )
    result = _train(trainer)
    _save(trainer, tok, Path(out_dir), Path(model_dir), cfg, trust_remote_code)
    return _summary(trainer, result) | {"examples": len(examples)} | fit


def dpo_examples(pairs: list[dict]) -> list[dict]:
    """Pairs -> TRL's conversational preference rows, with CREAM's `consistency` when the pairs have one."""
    return [
        {
            "prompt": [{"role": "user", "content": p["prompt"]}],
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        | ({"consistency": float(p["consistency"])} if "consistency" in p else {})
        for p in pairs
    ]


def train_dpo(
    model_dir: str | Path,
    out_dir: str | Path,
    examples: list[dict],
    cfg: DpoConfig,
    seed: int,
    work_dir: str | Path,
    trust_remote_code: bool = False,
    consistency: str = "none",
) -> dict:
    """DPO from `model_dir`. consistency: "none" = plain sigmoid DPO; "dynamic" = CREAM with each pair's own C;
    "average" = CREAM with the dataset's mean C on every pair."""
    from datasets import Dataset
    from trl import DPOConfig

    if consistency not in ("none", "dynamic", "average"):
        raise ValueError(f"consistency must be 'none', 'dynamic' or 'average', got {consistency!r}")
    if not examples:
        raise ValueError("no preference pairs to train on")
    extra = {}
    if consistency != "none":
        cs = [e.get("consistency") for e in examples]
        if any(c is None for c in cs):
            raise ValueError(
                f"consistency={consistency!r} needs a 'consistency' value on every pair; "
                f"{sum(c is None for c in cs)} of {len(cs)} have none"
            )
        bad = [c for c in cs if not 0.0 <= c <= 1.0]  # also catches NaN
        if bad:
            raise ValueError(f"consistency values must lie in [0, 1]; got e.g. {bad[:3]}")
    model, tok = load_model(model_dir, dtype=_base_dtype(cfg), trust_remote_code=trust_remote_code)
    examples, fit = fit_to_max_length(examples, tok, model.config, cfg.max_length, _section(cfg))
    if consistency != "none":  # the mean over the pairs that are trained on
        extra["consistency_mean"] = sum(e["consistency"] for e in examples) / len(examples)
        if consistency == "average":
            examples = [e | {"consistency": extra["consistency_mean"]} for e in examples]
    args = DPOConfig(
        **_common_args(cfg, Path(work_dir), seed),
        beta=cfg.beta,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
    )
    # With LoRA and no ref_model, TRL uses the model with its adapter disabled as the reference,
    # i.e. M_t itself: no second copy of the weights.
    # A separate reference is frozen: held in the low precision when training runs in it.
    ref_dtype = "bfloat16" if resolve_precision(cfg.precision) == "bf16" else "float32"
    ref = None if cfg.lora.enabled else load_model(model_dir, dtype=ref_dtype, trust_remote_code=trust_remote_code)[0]
    trainer_cls = DPOTrainer if consistency == "none" else cream.CreamDPOTrainer
    trainer = trainer_cls(
        model=model,
        ref_model=ref,
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tok,
        peft_config=_peft_config(cfg),
        callbacks=[MlflowStepLogger("dpo"), HoldAfterSave()],
    )
    result = _train(trainer)
    _save(trainer, tok, Path(out_dir), Path(model_dir), cfg, trust_remote_code)
    return _summary(trainer, result) | {"pairs": len(examples)} | extra | fit
