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


def test_lora_in_bf16_trains_a_bf16_base_and_loads_as_an_fp32_merge(runs, tiny_model_dir, tmp_path):
    """The frozen base is held in bf16 while training (no per-step casts), but the fp32 adapter is stored and merged
    into the fp32 start weights when loaded: weights LoRA does not touch come out bit-identical, not rounded to
    bf16."""
    import torch
    from safetensors.torch import load_file

    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    rows = [json.loads(line) for line in (ROOT / "data/builtin/ift.jsonl").read_text().splitlines()[:8]]
    cfg = SftConfig(
        batch_size=4,
        grad_accum=1,
        max_length=96,
        learning_rate=1e-3,
        precision="bf16",
        save_steps=0,
        lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0),
    )
    from srlm import training

    assert training._base_dtype(cfg) == "bfloat16"
    assert training._base_dtype(SftConfig(precision="fp32")) == "float32"
    assert training._base_dtype(SftConfig(precision="bf16", lora=LoraConfig(enabled=False))) == "float32"
    train_sft(
        tiny_model_dir,
        tmp_path / "m",
        sft_examples([(r["instruction"], r["response"]) for r in rows]),
        cfg,
        seed=3,
        work_dir=tmp_path / "w",
    )
    from srlm.modeling import load_model

    assert not (tmp_path / "m" / "model.safetensors").exists()  # the adapter alone is stored
    assert all(t.dtype == torch.float32 for t in load_file(tmp_path / "m" / "adapter_model.safetensors").values())
    saved = load_model(tmp_path / "m")[0].state_dict()
    norm = next(k for k in start if k.endswith("norm.weight"))
    assert saved[norm].dtype == torch.float32 and torch.equal(saved[norm], start[norm])
    assert not torch.equal(start[norm], start[norm].bfloat16().float())  # the test could tell a bf16 round trip
    q = next(k for k in start if k.endswith("q_proj.weight"))
    assert saved[q].dtype == torch.float32 and not torch.equal(saved[q], start[q])  # the adapter was merged in


def test_the_fused_lm_head_projects_only_labelled_positions(tiny_model_dir, tmp_path):
    """TRL's fused head projects every position on devices without Triton; srlm.training switches it to the
    labelled ones (the completion), for the same loss. A TRL upgrade that moves the switch fails here."""
    import contextlib
    from unittest import mock

    import torch
    import trl.trainer.utils as trl_utils

    from srlm import training

    rows = [json.loads(line) for line in (ROOT / "data/builtin/ift.jsonl").read_text().splitlines()[:4]]
    examples = sft_examples([(r["instruction"], r["response"]) for r in rows])
    cfg = SftConfig(
        batch_size=4,
        grad_accum=1,
        max_length=96,
        precision="fp32",
        save_steps=0,
        lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0),
    )
    real = trl_utils._ChunkedLogProbFunction.apply
    runs = {}
    for name, switch in (
        ("every position", contextlib.nullcontext),
        ("labelled only", training._labelled_positions_only),
    ):
        projected = []

        def spy(hidden, *rest):
            projected.append(hidden.shape[0])
            return real(hidden, *rest)

        with (
            mock.patch.object(trl_utils._ChunkedLogProbFunction, "apply", spy),
            mock.patch.object(training, "_labelled_positions_only", switch),
        ):
            m = train_sft(tiny_model_dir, tmp_path / name, examples, cfg, seed=3, work_dir=tmp_path / f"w{name}")
        runs[name] = (projected[0], m["first_loss"])
    (full, full_loss), (compact, compact_loss) = runs["every position"], runs["labelled only"]
    assert compact < full / 2  # the prompts (and padding) are no longer projected
    assert compact_loss == pytest.approx(full_loss, rel=1e-5)
    assert not trl_utils._use_triton(torch.device("cpu"))  # the switch is undone after training


def test_a_stage_process_claims_amx_where_the_cpu_has_it():
    """set_threads (every stage's start) asks for the AMX tile state before any library thread exists; the
    kernel then lists it among the process's permitted features. Without AMX the request fails, and says so."""
    import subprocess
    import sys

    import torch

    show = (
        "import ctypes; from srlm.modeling import SYS_ARCH_PRCTL, ARCH_GET_XCOMP_PERM, XFEATURE_XTILEDATA, set_threads;"
        "set_threads(); perm = ctypes.c_uint64();"
        "ctypes.CDLL(None).syscall(SYS_ARCH_PRCTL, ARCH_GET_XCOMP_PERM, ctypes.byref(perm));"
        "print(perm.value >> XFEATURE_XTILEDATA & 1)"
    )
    out = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ("1" if torch.cpu._is_amx_tile_supported() else "0")
