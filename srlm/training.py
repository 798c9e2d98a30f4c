"""SFT and DPO with TRL's trainers; LoRA through peft, merged into a plain checkpoint at the end."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import TrainerCallback
from trl import DPOTrainer

from .config import DpoConfig, TrainConfig
from .io import atomic_dir
from .modeling import load_model
from .tracking import log_metrics


class MlflowStepLogger(TrainerCallback):
    """Per-step trainer logs (loss, DPO reward margins, ...) into the stage's MLflow run."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def on_log(self, args, state, control, logs=None, **kwargs):
        if os.environ.get("SRLM_TRACKING", "on") == "off" or not logs:
            return
        log_metrics({f"{self.prefix}/{k}": v for k, v in logs.items()}, step=state.global_step)


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
    """Pairs -> TRL's conversational preference rows, with CREAM's `consistency` when the pairs have one."""
    return [{"prompt": [{"role": "user", "content": p["prompt"]}],
             "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]}
            | ({"consistency": float(p["consistency"])} if "consistency" in p else {}) for p in pairs]


def cream_loss(margin: torch.Tensor, consistency: torch.Tensor, beta: float) -> torch.Tensor:
    """CREAM's per-pair loss (Wang et al. 2024): DPO toward the chosen answer with weight C and toward the
    rejected one with 1 - C, i.e. label-smoothed DPO with eps = 1 - C. C = 1 is plain sigmoid DPO."""
    logits = beta * margin
    return -consistency * F.logsigmoid(logits) - (1 - consistency) * F.logsigmoid(-logits)


class _WithConsistency:
    """Wraps TRL's preference collator: adds the examples' C, in batch order, as a float tensor."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator(examples)  # TRL's collator reads only the *_ids keys and ignores the rest
        batch["consistency"] = torch.tensor([float(e["consistency"]) for e in examples])
        return batch


class CreamDPOTrainer(DPOTrainer):
    """DPOTrainer with CREAM's consistency-regularized loss; each pair's C comes from the column `consistency`.

    TRL 1.16 computes all its DPO losses inline in `_compute_loss` (there is no `dpo_loss` to override), so
    instead of copying those 300 lines we let it run as is (forwards, rewards/* and logps/* metrics), catch the
    policy's and the reference's log-probs with forward hooks, and return our loss in place of its sigmoid one.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        a = self.args
        # The hooks rebuild the plain DPO margin: anything that changes it or adds to the loss is refused.
        if (a.loss_type != ["sigmoid"] or a.f_divergence_type != "reverse_kl" or a.ld_alpha is not None
                or a.use_weighting or a.precompute_ref_log_probs or self.aux_loss_enabled):
            raise ValueError("CreamDPOTrainer supports loss_type=['sigmoid'] only, without f-divergences, ld_alpha, "
                             "use_weighting, precompute_ref_log_probs or MoE auxiliary losses")
        self.data_collator = _WithConsistency(self.data_collator)

    def _set_signature_columns_if_needed(self):
        # With remove_unused_columns, Trainer drops every dataset column not listed here before collating.
        if self._signature_columns is None:
            super()._set_signature_columns_if_needed()
            self._signature_columns.append("consistency")

    def _compute_loss(self, model, inputs, return_outputs):
        inputs = dict(inputs)
        consistency = inputs.pop("consistency")  # TRL would pass any extra key on to the model's forward
        outputs = []  # TRL runs the policy first, then the reference (the same module with LoRA: adapter off)
        modules = [self.accelerator.unwrap_model(model)] + ([self.ref_model] if self.ref_model is not None else [])
        hooks = [m.register_forward_hook(lambda _m, _args, out: outputs.append(out)) for m in modules]
        try:
            result = super()._compute_loss(model, inputs, return_outputs)
        finally:
            for h in hooks:
                h.remove()
        seq_len = inputs["completion_mask"].size(1) - 1  # as in TRL: drops prompt-tuning virtual tokens
        (chosen, rejected), (ref_chosen, ref_rejected) = (
            out.log_probs[:, -seq_len:].sum(dim=1).chunk(2) for out in outputs[:2])  # batch is [chosen; rejected]
        consistency = consistency.to(chosen.dtype)
        loss = cream_loss((chosen - ref_chosen) - (rejected - ref_rejected), consistency, self.beta).mean()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["cream/consistency"].append(self.accelerator.gather(consistency).mean().item())
        return (loss, result[1]) if return_outputs else loss


def train_dpo(model_dir: str | Path, out_dir: str | Path, examples: list[dict], cfg: DpoConfig,
              seed: int, work_dir: str | Path, trust_remote_code: bool = False, consistency: str = "none") -> dict:
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
            raise ValueError(f"consistency={consistency!r} needs a 'consistency' value on every pair; "
                             f"{sum(c is None for c in cs)} of {len(cs)} have none")
        bad = [c for c in cs if not 0.0 <= c <= 1.0]  # also catches NaN
        if bad:
            raise ValueError(f"consistency values must lie in [0, 1]; got e.g. {bad[:3]}")
        extra["consistency_mean"] = sum(cs) / len(cs)
        if consistency == "average":
            examples = [e | {"consistency": extra["consistency_mean"]} for e in examples]
    model, tok = load_model(model_dir, trust_remote_code=trust_remote_code)
    args = DPOConfig(**_common_args(cfg, Path(work_dir), seed), beta=cfg.beta,
                     loss_type=["sigmoid"])
    # With LoRA and no ref_model, TRL uses the model with its adapter disabled as the reference,
    # i.e. M_t itself: no second copy of the weights.
    ref = None if cfg.lora.enabled else load_model(model_dir, trust_remote_code=trust_remote_code)[0]
    trainer_cls = DPOTrainer if consistency == "none" else CreamDPOTrainer
    trainer = trainer_cls(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(examples),
                          processing_class=tok, peft_config=_peft_config(cfg),
                          callbacks=[MlflowStepLogger("dpo")])
    result = trainer.train()
    _save(trainer, tok, Path(out_dir))
    return _summary(trainer, result) | {"pairs": len(examples)} | extra
