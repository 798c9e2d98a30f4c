"""SFT and DPO with TRL's trainers; LoRA through peft, merged into a plain checkpoint at the end."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .config import DpoConfig, TrainConfig
from .io import atomic_dir
from .modeling import load_model
from .tracking import MlflowStepLogger

def _peft_config(cfg: TrainConfig):
    if not cfg.lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def _common_args(cfg: TrainConfig, work_dir: Path, seed: int) -> dict:
    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(work_dir), num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        lr_scheduler_type="linear", warmup_steps=cfg.warmup_ratio, max_length=cfg.max_length,
        logging_steps=1, save_strategy="no", report_to=[], seed=seed, data_seed=seed,
        use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0, disable_tqdm=False, log_level="warning",
        logging_first_step=True, gradient_checkpointing=cfg.gradient_checkpointing,
    )


def _save(trainer, tokenizer, out_dir: Path) -> None:
    """Write the trained model atomically, then drop the trainer's scratch directory."""
    model = trainer.model
    if hasattr(model, "merge_and_unload"):  # LoRA: fold the adapter into the weights
        model = model.merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)


def _summary(trainer, result) -> dict:
    logs = [l for l in trainer.state.log_history if "loss" in l]
    out = {"train_loss": float(result.training_loss), "steps": int(trainer.state.global_step),
           "train_runtime_s": float(result.metrics.get("train_runtime", 0.0))}
    if logs:
        out["final_loss"] = float(logs[-1]["loss"])
        out["first_loss"] = float(logs[0]["loss"])
    for key in ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"):
        vals = [l[key] for l in logs if key in l]
        if vals:
            out[key.replace("/", "_") + "_mean"] = float(sum(vals) / len(vals))
            out[key.replace("/", "_") + "_last"] = float(vals[-1])
    return out


def sft_examples(pairs: list[tuple[str, str]]) -> list[dict]:
    """(prompt, target) -> TRL's conversational prompt/completion rows: loss on the target only."""
    return [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]}
            for p, c in pairs]


def train_sft(model_dir: str | Path, out_dir: str | Path, examples: list[dict], cfg: TrainConfig,
              seed: int, work_dir: str | Path, trust_remote_code: bool = False) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not examples:
        raise ValueError("no SFT examples to train on")
    model, tok = load_model(model_dir, trust_remote_code=trust_remote_code)
    # Judge examples are ~4x longer than IFT ones: batching by length avoids padding IFT to them.
    args = SFTConfig(**_common_args(cfg, Path(work_dir), seed), completion_only_loss=True,
                     train_sampling_strategy="group_by_length")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                         processing_class=tok, peft_config=_peft_config(cfg),
                         callbacks=[MlflowStepLogger("sft")])
    result = trainer.train()
    _save(trainer, tok, Path(out_dir))
    return _summary(trainer, result) | {"examples": len(examples)}


def dpo_examples(pairs: list[dict]) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": p["prompt"]}],
             "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]


def train_dpo(model_dir: str | Path, out_dir: str | Path, examples: list[dict], cfg: DpoConfig,
              seed: int, work_dir: str | Path, trust_remote_code: bool = False) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if not examples:
        raise ValueError("no preference pairs to train on")
    model, tok = load_model(model_dir, trust_remote_code=trust_remote_code)
    args = DPOConfig(**_common_args(cfg, Path(work_dir), seed), beta=cfg.beta,
                     loss_type=["sigmoid"])
    # With LoRA and no ref_model, TRL uses the model with its adapter disabled as the reference,
    # i.e. M_t itself: no second copy of the weights.
    ref = None if cfg.lora.enabled else load_model(model_dir, trust_remote_code=trust_remote_code)[0]
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(examples),
                         processing_class=tok, peft_config=_peft_config(cfg),
                         callbacks=[MlflowStepLogger("dpo")])
    result = trainer.train()
    _save(trainer, tok, Path(out_dir))
    return _summary(trainer, result) | {"pairs": len(examples)}
