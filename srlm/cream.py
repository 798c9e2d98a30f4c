"""CREAM (Wang et al. 2024): consistency-regularized DPO. Each pair's consistency C between M_t's and M_{t-1}'s
rankings of its prompt's candidates weights the loss towards the chosen answer (C) and the rejected one (1 - C);
one trainer for the method, as TRL keeps one per algorithm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl import DPOTrainer


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
        if (
            a.loss_type != ["sigmoid"]
            or a.f_divergence_type != "reverse_kl"
            or a.ld_alpha is not None
            or a.use_weighting
            or self.aux_loss_enabled
        ):
            raise ValueError(
                "CreamDPOTrainer supports loss_type=['sigmoid'] only, without f-divergences, ld_alpha, "
                "use_weighting or MoE auxiliary losses"
            )
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
        modules = [self.accelerator.unwrap_model(model)]
        if self.ref_model is not None and not self.precompute_ref_logps:
            modules.append(self.ref_model)
        hooks = [m.register_forward_hook(lambda _m, _args, out: outputs.append(out)) for m in modules]
        try:
            result = super()._compute_loss(model, inputs, return_outputs)
        finally:
            for h in hooks:
                h.remove()
        seq_len = inputs["completion_mask"].size(1) - 1  # as in TRL: drops prompt-tuning virtual tokens
        # batch is [chosen; rejected]
        chosen, rejected = outputs[0].log_probs[:, -seq_len:].sum(dim=1).chunk(2)
        if self.precompute_ref_logps:  # the reference's log-probs, computed once before training
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = outputs[1].log_probs[:, -seq_len:].sum(dim=1).chunk(2)
        consistency = consistency.to(chosen.dtype)
        loss = cream_loss((chosen - ref_chosen) - (rejected - ref_rejected), consistency, self.beta).mean()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["cream/consistency"].append(self.accelerator.gather(consistency).mean().item())
        return (loss, result[1]) if return_outputs else loss
