"""Faults injected into a real training stage (sft_baseline on a tiny model, LoRA, a checkpoint every step):
killed by SIGKILL or SIGTERM after its first checkpoint, or crashed with its newest checkpoint damaged. The
previous output stays intact, nothing half-written is left, and the rerun resumes from the last complete
checkpoint without redoing its steps and writes the same weights as an uninterrupted run."""
import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from e2e_project import make_project
from e2e_project import start_and_kill as kill_when
from srlm import training
from srlm.config import load_params

OUT = Path("models/sft_baseline")
WORK = Path(".srlm/progress/sft_baseline")
CMD = [sys.executable, "stages/sft_baseline.py"]
STEPS = 10  # 10 IFT examples, batch 1


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from tiny import build_tiny_model

    model = build_tiny_model(tmp_path_factory.mktemp("model") / "m0", train_steps=0)
    d = make_project(tmp_path_factory.mktemp("train_faults"), model, {"sft": {
        "max_ift_examples": STEPS, "batch_size": 1, "grad_accum": 1, "max_length": 96, "learning_rate": 1e-3,
        "save_steps": 1, "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}}})
    shutil.copytree(model, d / "models/m0")
    (d / "data/seed").mkdir(parents=True)
    lines = (d / "data/builtin/ift.jsonl").read_text().splitlines()[:STEPS]
    (d / "data/seed/ift_train.jsonl").write_text("\n".join(lines) + "\n")
    reference = run_in_process(d)
    assert not any((d / WORK).glob("*")), "the checkpoints are removed once the model is written"
    return d, reference


def stage_module(d: Path):
    spec = importlib.util.spec_from_file_location("sft_baseline_stage", d / "stages/sft_baseline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_in_process(d: Path) -> dict:
    """The stage's run() in this process (the rerun after a fault; cheaper than a new interpreter)."""
    cwd, tracking, threads = os.getcwd(), os.environ.get("SRLM_TRACKING"), torch.get_num_threads()
    os.environ["SRLM_TRACKING"] = "off"
    torch.set_num_threads(1)  # as the killed process had: the same float sums, so the same weights
    try:
        os.chdir(d)
        stage_module(d).run(load_params("params.yaml"))
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
        if tracking is None:
            del os.environ["SRLM_TRACKING"]
        else:
            os.environ["SRLM_TRACKING"] = tracking
    return load_file(d / OUT / "model.safetensors")


def checkpoints(d: Path) -> list[Path]:
    return sorted((d / WORK).glob("*/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def start_and_kill(d: Path, sig: int) -> subprocess.Popen:
    """Start the stage as its own process; send `sig` once its first complete checkpoint is on disk."""
    return kill_when(CMD, d, sig, lambda: any((c / "trainer_state.json").is_file() for c in checkpoints(d)),
                     "checkpoint", PYTHONPATH=str(d), SRLM_TRACKING="off", SRLM_THREADS="1")


def leftovers(d: Path) -> list[str]:
    return [p.name for p in (d / "models").iterdir() if ".tmp-" in p.name]


def assert_same_weights(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    diff = max((got[k] - want[k]).abs().max().item() for k in want)
    assert diff == 0.0, f"resumed weights differ from the uninterrupted run's by up to {diff}"


def resumed_steps(caplog) -> tuple[int, list[int]]:
    """The step the rerun resumed from, and the steps it trained, from its log."""
    text = "\n".join(r.getMessage() for r in caplog.records)
    start = re.search(r"resumed from step (\d+)", text)
    return int(start.group(1)) if start else 0, [int(s) for s in re.findall(r"sft step (\d+)/", text)]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_training_stage_resumes_from_its_last_checkpoint(project, sig, caplog):
    d, reference = project
    shutil.rmtree(d / OUT)
    (d / OUT).mkdir()
    (d / OUT / "config.json").write_text("previous output\n")
    p = start_and_kill(d, sig)
    assert p.returncode != 0
    if sig == signal.SIGTERM:  # handled: unwinds and says so; SIGKILL gives no chance to
        assert "terminated" in p.stderr.read()
    assert (d / OUT / "config.json").read_text() == "previous output\n" and len(list((d / OUT).iterdir())) == 1
    assert not leftovers(d)
    done = max(int(c.name.split("-")[1]) for c in checkpoints(d) if (c / "trainer_state.json").is_file())
    assert 1 <= done < STEPS

    caplog.set_level(logging.INFO, logger="srlm.training")
    assert_same_weights(run_in_process(d), reference)
    start, trained = resumed_steps(caplog)
    assert start >= done  # a checkpoint written after the poll saw `done` is complete too, or skipped
    assert trained == list(range(start + 1, STEPS + 1)), "finished steps were redone, or some skipped"
    assert not leftovers(d) and not checkpoints(d)


@pytest.mark.parametrize("damage", ["truncated weights", "no trainer_state.json", "truncated optimizer state"])
def test_a_damaged_checkpoint_is_skipped_for_the_one_before(project, damage, monkeypatch, caplog):
    d, reference = project

    def crash_at_step_4(self, args, state, control, logs=None, **kw):
        if state.global_step == 4:  # after checkpoint 3, before checkpoint 4 is saved
            raise RuntimeError("crash")

    with monkeypatch.context() as m:
        m.setattr(training.MlflowStepLogger, "on_log", crash_at_step_4)
        with pytest.raises(RuntimeError, match="crash"):
            run_in_process(d)
    assert [c.name for c in checkpoints(d)] == ["checkpoint-2", "checkpoint-3"]  # save_total_limit 2
    newest = checkpoints(d)[-1]
    if damage == "no trainer_state.json":  # killed while saving: the Trainer writes it last
        (newest / "trainer_state.json").unlink()
    else:
        f = newest / ("adapter_model.safetensors" if damage == "truncated weights" else "optimizer.pt")
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    caplog.set_level(logging.INFO, logger="srlm.training")
    assert_same_weights(run_in_process(d), reference)
    assert any("checkpoint-3" in r.getMessage() and "skipped" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert resumed_steps(caplog) == (2, list(range(3, STEPS + 1)))
    assert not checkpoints(d)


def test_checkpoints_of_other_inputs_are_never_resumed(project, monkeypatch):
    """The checkpoint folder is keyed by the params, the examples, the start model and the process layout."""
    from srlm.config import DistributedConfig, SftConfig

    d = project[0]
    monkeypatch.chdir(d)
    model, examples, dist = Path("models/m0"), [{"prompt": "p", "completion": "c"}], DistributedConfig()
    a = training.checkpoint_dir("sft", {"sft": {"lr": 1}}, model, examples, dist)
    assert training.checkpoint_dir("sft", {"sft": {"lr": 1}}, model, examples, dist) == a
    (a / "checkpoint-1").mkdir()
    for other in [({"sft": {"lr": 2}}, model, examples, dist), ({"sft": {"lr": 1}}, model, examples * 2, dist),
                  ({"sft": {"lr": 1}}, model, examples, DistributedConfig(num_processes=2))]:
        b = training.checkpoint_dir("sft", *other)
        assert b != a and training.last_checkpoint(b) is None
    assert not a.exists()  # a new fingerprint removes the stale folders of its stage
    assert SftConfig().save_steps >= 1  # checkpoints are on by default
