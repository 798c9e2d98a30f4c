"""CREAM's consistency-regularized DPO loss: the formula, its wiring into TRL's DPOTrainer, and train_dpo."""

import math
import re

import pytest
import torch

from srlm import cream as cream_module
from srlm.config import DpoConfig, LoraConfig
from srlm.cream import CreamDPOTrainer, cream_loss
from srlm.training import dpo_examples, train_dpo

BETA = 0.1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained one-layer Llama with the test tokenizer: enough for exact loss checks, built in ~1 s."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny import build_tokenizer

    d = tmp_path_factory.mktemp("cream") / "model"
    tok = build_tokenizer(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


def _pairs(n: int, c=None) -> list[dict]:
    """Pair i: prompt 'item i', answers of very different lengths (so batches pad), C = c(i), by default
    (i + 1) / (n + 1): distinct, so a C tells which pair it belongs to."""
    c = c or (lambda i: (i + 1) / (n + 1))
    return [
        {
            "prompt": f"item {i}",
            "chosen": "yes " * (1 + 5 * i),
            "rejected": "no " * (1 + 3 * (n - i)),
            "consistency": c(i),
        }
        for i in range(n)
    ]


def _trainer(cls, model_dir, tmp_path, rows, lora=False, batch_size=4, precompute=False):
    """A trainer on the tiny model; without LoRA the reference is another random model, so the margin is not 0."""
    from datasets import Dataset
    from peft import LoraConfig as PeftLora
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    from srlm.modeling import load_model

    model, tok = load_model(model_dir)
    ref = None
    if not lora:
        torch.manual_seed(1)
        ref = AutoModelForCausalLM.from_config(model.config)
    args = DPOConfig(
        output_dir=str(tmp_path / cls.__name__),
        per_device_train_batch_size=batch_size,
        beta=BETA,
        loss_type=["sigmoid"],
        use_cpu=True,
        bf16=False,
        report_to=[],
        seed=0,
        data_seed=0,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        precompute_ref_log_probs=precompute,
    )
    peft = PeftLora(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM") if lora else None
    return cls(
        model=model,
        ref_model=ref,
        args=args,
        train_dataset=Dataset.from_list(dpo_examples(rows)),
        processing_class=tok,
        peft_config=peft,
    )


def _batch(trainer, n):
    return trainer.data_collator([trainer.train_dataset[i] for i in range(n)])


# --- the formula itself ---------------------------------------------------------------------------------------


def test_margin_gradient_is_zero_at_c_half_and_minus_half_beta_at_c_one():
    delta = torch.zeros(3, requires_grad=True)
    cream_loss(delta, torch.full((3,), 0.5), BETA).sum().backward()
    assert torch.equal(delta.grad, torch.zeros(3))

    delta = torch.zeros(3, requires_grad=True)
    cream_loss(delta, torch.ones(3), BETA).sum().backward()
    assert torch.allclose(delta.grad, torch.full((3,), -BETA / 2))


def test_c_half_pushes_the_margin_back_to_zero_and_gradient_matches_closed_form():
    delta = torch.tensor([-20.0, -3.0, 4.0, 30.0], requires_grad=True)
    cream_loss(delta, torch.full((4,), 0.5), BETA).sum().backward()
    # Gradient descent moves delta against the gradient: toward 0 from both sides.
    assert torch.equal(torch.sign(delta.grad), torch.sign(delta.detach()))

    # dL/dDelta = beta * (sigmoid(beta * Delta) - C): the optimum is where the model's preference equals C.
    c = torch.tensor([0.0, 0.3, 0.9, 1.0])
    delta = torch.tensor([-2.0, 0.0, 5.0, 7.0], requires_grad=True)
    cream_loss(delta, c, BETA).sum().backward()
    assert torch.allclose(delta.grad, BETA * (torch.sigmoid(BETA * delta.detach()) - c))


def test_c_one_is_sigmoid_dpo_and_c_zero_is_the_flipped_pair():
    delta = torch.tensor([-3.0, 0.5, 8.0])
    sigmoid_dpo = -torch.nn.functional.logsigmoid(BETA * delta)
    assert torch.allclose(cream_loss(delta, torch.ones(3), BETA), sigmoid_dpo)
    assert torch.allclose(cream_loss(delta, torch.zeros(3), BETA), -torch.nn.functional.logsigmoid(-BETA * delta))


# --- through TRL's DPOTrainer -----------------------------------------------------------------------------------


@pytest.mark.parametrize("lora", [False, True], ids=["ref-model", "lora"])
def test_c_one_equals_trl_sigmoid_loss_on_a_real_batch(model_dir, tmp_path, lora):
    from trl import DPOTrainer

    rows = _pairs(4, c=lambda i: 1.0)
    cream, plain = (_trainer(cls, model_dir, tmp_path, rows, lora=lora) for cls in (CreamDPOTrainer, DPOTrainer))
    for t in (cream, plain):
        t.model.train()  # as in Trainer.train; TRL has turned dropout off
        torch.manual_seed(2)
        for name, p in t.model.named_parameters():
            if "lora_B" in name:  # a trained adapter, so the policy differs from its adapter-off reference
                p.data.normal_(std=0.2)
    batch = _batch(cream, 4)
    assert torch.equal(batch["consistency"], torch.ones(4))
    plain_batch = {k: v for k, v in batch.items() if k != "consistency"}
    with torch.no_grad():
        ours, theirs = cream.compute_loss(cream.model, batch), plain.compute_loss(plain.model, plain_batch)
    assert abs(theirs.item() - math.log(2)) > 1e-3  # the reference differs from the policy: a real margin
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    # TRL's own metrics still come out, the same for both, and the batch's mean C is logged too.
    assert cream._metrics["train"]["rewards/margins"] == pytest.approx(plain._metrics["train"]["rewards/margins"])
    assert cream._metrics["train"]["cream/consistency"] == [1.0]


@pytest.mark.parametrize("lora", [False, True], ids=["ref-model", "lora"])
def test_precomputed_reference_log_probs_give_the_same_loss(model_dir, tmp_path, lora):
    """With precompute_ref_log_probs (dpo.precompute_ref_log_probs: true) the reference's log-probs come from the
    dataset, computed once before training, instead of from a reference forward in every step: the same CREAM loss."""
    rows = _pairs(4)
    each_step, once = (
        _trainer(CreamDPOTrainer, model_dir, tmp_path / str(p), rows, lora=lora, precompute=p) for p in (False, True)
    )
    assert "ref_chosen_logps" in once.train_dataset.column_names
    for t in (each_step, once):
        t.model.train()
        torch.manual_seed(2)
        for name, p in t.model.named_parameters():
            if "lora_B" in name or (not lora and "q_proj" in name):  # the policy moves away from the reference
                p.data.add_(torch.randn_like(p) * 0.2)
    batch = _batch(once, 4)
    assert set(batch) >= {"ref_chosen_logps", "ref_rejected_logps", "consistency"}
    with torch.no_grad():
        ours = once.compute_loss(once.model, batch)
        theirs = each_step.compute_loss(each_step.model, _batch(each_step, 4))
    assert abs(theirs.item() - math.log(2)) > 1e-3  # a real margin
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    # and the precomputed values are the reference's: moving them moves the loss
    batch["ref_chosen_logps"] = batch["ref_chosen_logps"] + 5.0
    with torch.no_grad():
        assert not torch.allclose(once.compute_loss(once.model, batch), ours, atol=1e-3)


def test_at_policy_equal_reference_c_half_gives_zero_gradient(model_dir, tmp_path):
    # With a fresh LoRA adapter (B = 0) the policy is exactly the reference, as at the start of every iteration.
    rows = _pairs(3)
    trainer = _trainer(CreamDPOTrainer, model_dir, tmp_path, rows, lora=True)
    grads = {}
    for c in (0.5, 1.0):
        batch = _batch(trainer, 3) | {"consistency": torch.full((3,), c)}
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
        grads[c] = max(p.grad.abs().max().item() for p in trainer.model.parameters() if p.requires_grad)
    assert grads[0.5] == 0.0
    assert grads[1.0] > 1e-6


def test_weights_follow_their_examples_through_the_shuffled_padded_dataloader(model_dir, tmp_path):
    n = 9
    rows = _pairs(n)
    trainer = _trainer(CreamDPOTrainer, model_dir, tmp_path, rows, batch_size=3)
    tok = trainer.processing_class
    seen = []
    for batch in trainer.get_train_dataloader():
        assert set(batch) >= {"input_ids", "completion_mask", "consistency"}
        assert (batch["attention_mask"] == 0).any()  # lengths differ within every batch: padding happened
        chosen = batch["input_ids"][: len(batch["consistency"])]  # rows are [chosen; rejected]
        ids = [int(re.search(r"item (\d+)", tok.decode(row)).group(1)) for row in chosen]
        assert batch["consistency"].tolist() == pytest.approx([rows[i]["consistency"] for i in ids])
        seen += ids
    assert sorted(seen) == list(range(n)) and seen != list(range(n))  # every example once, shuffled


def test_batch_loss_is_the_mean_of_per_pair_losses(model_dir, tmp_path):
    rows = _pairs(5)
    trainer = _trainer(CreamDPOTrainer, model_dir, tmp_path, rows)
    order = [3, 0, 4, 1, 2]
    examples = [trainer.train_dataset[i] for i in order]
    with torch.no_grad():
        batch_loss = trainer.compute_loss(trainer.model, trainer.data_collator(examples))
        singles = [trainer.compute_loss(trainer.model, trainer.data_collator([e])) for e in examples]
        # The same batch with its weights in another order must give another loss: the check has teeth.
        moved = trainer.data_collator(examples)
        moved["consistency"] = moved["consistency"].flip(0)
        moved_loss = trainer.compute_loss(trainer.model, moved)
    assert torch.allclose(batch_loss, torch.stack(singles).mean(), atol=1e-6)
    assert not torch.allclose(batch_loss, moved_loss, atol=1e-6)


# --- train_dpo --------------------------------------------------------------------------------------------------


def _cfg():
    return DpoConfig(
        epochs=1,
        batch_size=2,
        grad_accum=1,
        max_length=64,
        learning_rate=1e-3,
        lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0),
    )


@pytest.mark.parametrize("mode", ["dynamic", "average", "none"])
def test_train_dpo_end_to_end(model_dir, tmp_path, monkeypatch, mode):
    monkeypatch.setenv("SRLM_TRACKING", "off")
    seen = []  # the C values that reach the loss
    monkeypatch.setattr(cream_module, "cream_loss", lambda m, c, b: seen.append(c) or cream_loss(m, c, b))
    rows = _pairs(4, c=lambda i: [0.2, 0.4, 0.9, 1.0][i])
    metrics = train_dpo(
        model_dir, tmp_path / "out", dpo_examples(rows), _cfg(), seed=0, work_dir=tmp_path / "work", consistency=mode
    )
    assert (tmp_path / "out" / "adapter_config.json").is_file() and not (tmp_path / "work").exists()
    assert metrics["steps"] == 2 and math.isfinite(metrics["train_loss"])
    values = sorted(torch.cat(seen).tolist()) if seen else []
    if mode == "none":
        assert values == [] and "consistency_mean" not in metrics
    else:
        assert metrics["consistency_mean"] == pytest.approx(0.625)
        expected = [0.625] * 4 if mode == "average" else [0.2, 0.4, 0.9, 1.0]
        assert values == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["none", "dynamic"])
def test_micro_batch_split_leaves_the_optimizer_step_unchanged(model_dir, tmp_path, monkeypatch, mode):
    """4 pairs per optimizer step as 1 x 4, 2 x 2 or 4 x 1 micro-batches: each pair weighs 1/4 in every split,
    so the trained adapter is the same up to float sums; only the padding differs (bench/dpo_batching.py)."""
    from safetensors.torch import load_file

    monkeypatch.setenv("SRLM_TRACKING", "off")
    rows = _pairs(8)  # answers of very different lengths: each split pads differently
    adapters, losses = [], []
    for batch, accum in ((1, 4), (2, 2), (4, 1)):
        cfg = DpoConfig(
            epochs=1, batch_size=batch, grad_accum=accum, max_length=64, learning_rate=1e-3, precision="fp32",
            lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0),
        )  # fmt: skip
        out = tmp_path / f"out{batch}"
        work = tmp_path / f"w{batch}"
        m = train_dpo(model_dir, out, dpo_examples(rows), cfg, seed=0, work_dir=work, consistency=mode)
        assert m["steps"] == 2
        adapters.append(load_file(out / "adapter_model.safetensors"))
        losses.append(m["train_loss"])
    assert losses[1] == pytest.approx(losses[0], abs=1e-6) and losses[2] == pytest.approx(losses[0], abs=1e-6)
    lora_b = [k for k in adapters[0] if "lora_B" in k]
    assert lora_b and max(adapters[0][k].abs().max().item() for k in lora_b) > 1e-4  # training moved the adapter
    for other in adapters[1:]:
        assert max((adapters[0][k] - other[k]).abs().max().item() for k in adapters[0]) < 1e-6


@pytest.mark.parametrize(
    "value, match",
    [(1.5, r"\[0, 1\]"), (-0.1, r"\[0, 1\]"), (float("nan"), r"\[0, 1\]"), (None, "needs a 'consistency'")],
)
def test_train_dpo_refuses_bad_consistency(tmp_path, value, match):
    examples = dpo_examples(_pairs(2))
    examples[1]["consistency"] = value
    if value is None:
        del examples[1]["consistency"]
    with pytest.raises(ValueError, match=match):
        train_dpo(
            tmp_path / "no-model",
            tmp_path / "out",
            examples,
            _cfg(),
            seed=0,
            work_dir=tmp_path / "w",
            consistency="dynamic",
        )
    with pytest.raises(ValueError, match="'none', 'dynamic' or 'average'"):
        train_dpo(
            tmp_path / "no-model",
            tmp_path / "out",
            examples,
            _cfg(),
            seed=0,
            work_dir=tmp_path / "w",
            consistency="cream",
        )


def test_dpo_examples_carry_consistency_only_when_the_pairs_do():
    pair = {"prompt": "p", "chosen": "a", "rejected": "b"}
    plain = dpo_examples([pair])[0]
    assert set(plain) == {"prompt", "chosen", "rejected"}
    assert dpo_examples([pair | {"consistency": 1}])[0] == plain | {"consistency": 1.0}
