"""What the paper specifies beyond the main loop: the positive-only variant's training data and start
model, the learning-rate schedule's final values, and the report's flag on a partial judge."""

import json
import sys
from pathlib import Path

import pytest

from srlm.config import parse_params

ROOT = Path(__file__).resolve().parent.parent


def stage_module(name):
    sys.path.insert(0, str(ROOT / "stages"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def write(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_positive_only_adds_the_curated_responses_to_m1s_seed_data_and_trains_m0(tmp_path, monkeypatch):
    """The paper: 'we add additional examples of (instruction prompt, response) curated by the model to
    the seed set for supervised fine-tuning' -- from the base model, with the SFT hyperparameters."""
    dpo = stage_module("dpo")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SRLM_TRACKING", "off")
    write(
        tmp_path / "data/seed/ift_train.jsonl",
        [{"id": f"i{k}", "instruction": f"seed instruction {k}", "response": f"seed answer {k}"} for k in range(3)],
    )
    write(
        tmp_path / "data/eft/train.jsonl",
        [{"id": "e0", "instruction": "judged question", "response": "judged answer", "judgment": "Fine.\nScore: 4"}],
    )
    write(
        tmp_path / "data/it1/pairs.jsonl",
        [
            {
                "id": f"it1-p{k}-c0",
                "prompt": f"new prompt {k}",
                "response": f"curated {k}",
                "score": 5.0,
                "kind": "positive",
            }
            for k in range(2)
        ],
    )
    (tmp_path / "models/m0").mkdir(parents=True)
    seen = {}

    def fake_train_sft(src, dst, examples, cfg, **kw):
        seen.update(src=Path(src), examples=examples, cfg=cfg)
        return {"steps": 1}

    monkeypatch.setattr(dpo, "train_sft", fake_train_sft)
    monkeypatch.setattr(dpo, "train_dpo", lambda *a, **k: pytest.fail("the positive variant trains no DPO"))
    monkeypatch.setattr(dpo, "record_model", lambda *a, **k: None)
    params = parse_params({"pairs": {"mode": "positive"}, "sft": {"max_ift_examples": 0, "max_eft_examples": 0}})
    dpo.run(params, "1", params.iterations["1"])
    assert seen["src"] == Path("models/m0") and seen["cfg"] is params.sft
    prompts = sorted(e["prompt"][0]["content"] for e in seen["examples"])
    assert [p for p in prompts if p.startswith(("seed", "new"))] == [
        "new prompt 0",
        "new prompt 1",
        "seed instruction 0",
        "seed instruction 1",
        "seed instruction 2",
    ]
    assert sum("judged question" in p for p in prompts) == 1  # the EFT example, in the judge prompt
    metrics = json.loads((tmp_path / "data/it1/metrics/dpo.json").read_text())
    assert metrics["positives"] == 2 and metrics["ift_examples"] == 3 and metrics["eft_examples"] == 1


@pytest.mark.parametrize("final", [0.0, 1.1e-6])
def test_the_learning_rate_decays_linearly_to_final_learning_rate(final):
    import torch
    from transformers import get_scheduler

    from srlm.config import SftConfig
    from srlm.training import _schedule

    cfg = SftConfig(learning_rate=5.5e-6, final_learning_rate=final)
    s = _schedule(cfg)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
    sched = get_scheduler(
        s["lr_scheduler_type"],
        opt,
        num_warmup_steps=0,
        num_training_steps=10,
        scheduler_specific_kwargs=s.get("lr_scheduler_kwargs", {}),
    )
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(5.5e-6) and lrs[-1] == pytest.approx(final, abs=1e-12)
    assert lrs[5] == pytest.approx((5.5e-6 + final) / 2)  # a straight line in between


def test_the_report_flags_a_judge_that_is_a_side_or_descends_from_one():
    from srlm.report import render, tables

    params = parse_params(
        {
            "evaluation": {
                "judge": "models/m3",
                "models": ["sft_baseline", "m1", "m2", "m3"],
                "matchups": {
                    "m3_vs_m2": {"a": "m3", "b": "m2"},
                    "m1_vs_sft_baseline": {"a": "m1", "b": "sft_baseline"},
                },
            },
            "iterations": {
                "1": {"prev": "m0", "model": "m1", "next": "m2"},
                "2": {"prev": "m1", "model": "m2", "next": "m3"},
            },
        }
    )
    h2h = {
        "n": 4,
        "win_rate": 0.5,
        "tie_rate": 0.25,
        "loss_rate": 0.25,
        "win_rate_ties_half": 0.6,
        "lc_win_rate": 0.6,
        "judge": "models/m3",
    }
    c = {
        "models": {},
        "iterations": {},
        "seed": {},
        "eft": {},
        "head_to_head": {
            "m3_vs_m2": h2h | {"a": "m3", "b": "m2"},
            "m1_vs_sft_baseline": h2h | {"a": "m1", "b": "sft_baseline"},
        },
    }
    t = tables(c, "expected", params.iterations)
    text = render(c, t, params, [])
    assert "m3 vs m2: the judge is m3 itself" in text
    assert "m1 vs sft_baseline: the judge (m3) is trained from m1" in text
    params.evaluation.judge = "models/m0"
    for v in c["head_to_head"].values():
        v["judge"] = "models/m0"
    t = tables(c, "expected", params.iterations)
    assert "Not an impartial judgment" not in render(c, t, params, []) and "No matchup is judged" in render(
        c, t, params, []
    )
