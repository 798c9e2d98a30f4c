"""bf16 mixed precision: `auto` picks it where the CPU has bf16 units (tests/test_distributed.py mocks the
capability), and training in it lands close to fp32 on the same steps."""

import json
from pathlib import Path

import pytest

from srlm.config import LoraConfig, SftConfig, derive_seed
from srlm.training import sft_examples, train_sft

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    rows = [json.loads(line) for line in (ROOT / "data/builtin/ift.jsonl").read_text().splitlines()[:16]]
    examples = sft_examples([(r["instruction"], r["response"]) for r in rows])
    out = {}
    for precision in ("fp32", "bf16"):
        d = tmp_path_factory.mktemp(precision)
        cfg = SftConfig(
            batch_size=4,
            grad_accum=1,
            max_length=96,
            learning_rate=1e-3,
            precision=precision,
            lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0),
            save_steps=0,
        )
        out[precision] = train_sft(
            tiny_model_dir, d / "model", examples, cfg, seed=derive_seed(7, "sft"), work_dir=d / "work"
        )
    return out


def test_bf16_training_ends_within_two_percent_of_fp32s_loss(runs):
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16") and fp32["steps"] == bf16["steps"] == 4
    assert bf16["first_loss"] != fp32["first_loss"]  # the forward did run in bf16
    assert bf16["first_loss"] == pytest.approx(fp32["first_loss"], rel=0.02)
    assert bf16["final_loss"] == pytest.approx(fp32["final_loss"], rel=0.02)
    assert fp32["final_loss"] < fp32["first_loss"] and bf16["final_loss"] < bf16["first_loss"]  # both learn
