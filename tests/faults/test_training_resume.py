"""Faults injected into real training stages on a tiny model (LoRA, a checkpoint every step): sft_baseline, and
dpo@1 with CREAM's loss, killed by SIGINT, SIGTERM or SIGKILL right after a checkpoint, or crashed with its
newest checkpoints damaged. The previous output stays intact, nothing half-written is left, and the rerun
resumes from the last complete checkpoint without redoing its steps and writes the same weights as an
uninterrupted run (or starts clean when no checkpoint is usable)."""

import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from e2e_project import make_project
from e2e_project import start_and_kill as kill_when
from srlm import cream, training
from srlm.config import load_params

HELD = 2  # checkpoints complete when the signal lands


@dataclass(frozen=True)
class Stage:
    script: str
    args: tuple
    out: Path
    work: Path
    steps: int
    prefix: str  # of its per-step log lines

    @property
    def cmd(self) -> list[str]:
        return [sys.executable, f"stages/{self.script}.py", *self.args]


SFT = Stage("sft_baseline", (), Path("models/sft_baseline"), Path(".srlm/progress/sft_baseline"), 10, "sft")
DPO = Stage("dpo", ("--iteration", "1"), Path("models/m2"), Path(".srlm/progress/dpo_1"), 6, "dpo")
LORA = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}
CS = [0.1, 0.3, 0.5, 0.6, 0.8, 1.0]  # each pair's consistency C (distinct: a C tells its pair)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("model") / "m0", train_steps=0)


@pytest.fixture(scope="module")
def project(tmp_path_factory, model):
    d = make_project(
        tmp_path_factory.mktemp("train_faults"),
        model,
        {
            "sft": {
                "max_ift_examples": SFT.steps,
                "batch_size": 1,
                "grad_accum": 1,
                "max_length": 96,
                "learning_rate": 1e-3,
                "save_steps": 1,
                "lora": LORA,
            }
        },
    )
    shutil.copytree(model, d / "models/m0")
    (d / "data/seed").mkdir(parents=True)
    lines = (d / "data/builtin/ift.jsonl").read_text().splitlines()[: SFT.steps]
    (d / "data/seed/ift_train.jsonl").write_text("\n".join(lines) + "\n")
    reference = run_in_process(d)
    assert not any((d / SFT.work).glob("*")), "the checkpoints are removed once the model is written"
    return d, reference


@pytest.fixture(scope="module")
def dpo_project(tmp_path_factory, model):
    """CREAM's dpo@1 from m1 (the untrained tiny model) on 6 pairs with their consistency."""
    d = make_project(
        tmp_path_factory.mktemp("dpo_faults"),
        model,
        {
            "method": "cream",
            "cream": {"loss": "dynamic"},
            "dpo": {
                "epochs": 1,
                "batch_size": 1,
                "grad_accum": 1,
                "max_length": 96,
                "learning_rate": 1e-3,
                "save_steps": 1,
                "lora": LORA,
            },
        },
    )
    shutil.copytree(model, d / "models/m1")
    words = "water sun code data list ideas".split()
    pairs = [
        {
            "id": f"it1-p{i}",
            "kind": "preference",
            "prompt": f"Write about {w}.",
            "chosen": f"{w} is good " * 3,
            "rejected": f"no {w}",
            "chosen_score": 4.0,
            "rejected_score": 1.0,
            "consistency": c,
        }
        for i, (w, c) in enumerate(zip(words, CS))
    ]
    (d / "data/it1").mkdir(parents=True)
    (d / "data/it1/pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    seen = []
    reference = run_in_process(d, DPO, spy=seen)
    assert not any((d / DPO.work).glob("*")), "the checkpoints are removed once the model is written"
    return d, reference, seen


def stage_module(d: Path, st: Stage):
    spec = importlib.util.spec_from_file_location(f"{st.script}_stage", d / f"stages/{st.script}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_in_process(d: Path, st: Stage = SFT, params: str = "params.yaml", spy: list | None = None) -> dict:
    """The stage's run() in this process (the rerun after a fault; cheaper than a new interpreter). `spy`
    collects the consistency values that reach CREAM's loss."""
    cwd, tracking, threads = os.getcwd(), os.environ.get("SRLM_TRACKING"), torch.get_num_threads()
    os.environ["SRLM_TRACKING"] = "off"
    torch.set_num_threads(1)  # as the killed process had: the same float sums, so the same weights
    cream_loss = cream.cream_loss
    if spy is not None:
        cream.cream_loss = lambda m, c, b: spy.extend(c.tolist()) or cream_loss(m, c, b)
    try:
        os.chdir(d)
        p = load_params(params)
        if st.args:
            key = st.args[1]
            stage_module(d, st).run(p, key, {str(k): v for k, v in p.iterations.items()}[key])
        else:
            stage_module(d, st).run(p)
    finally:
        cream.cream_loss = cream_loss
        os.chdir(cwd)
        torch.set_num_threads(threads)
        if tracking is None:
            del os.environ["SRLM_TRACKING"]
        else:
            os.environ["SRLM_TRACKING"] = tracking
    out = d / st.out  # LoRA: the stored adapter's tensors, compared exactly
    return load_file(
        out / ("adapter_model.safetensors" if (out / "adapter_config.json").is_file() else "model.safetensors")
    )


def checkpoints(d: Path, st: Stage = SFT) -> list[Path]:
    return sorted((d / st.work).glob("*/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def start_and_kill(d: Path, sig: int, st: Stage = SFT) -> subprocess.CompletedProcess:
    """Run the stage as its own process, held right after its HELD-th checkpoint; send `sig` there."""

    def complete_and_untouched():
        newest = checkpoints(d, st)[-1]
        assert newest.name == f"checkpoint-{HELD}" and training._checkpoint_problem(newest) is None
        assert previous_output_kept(d, st)

    return kill_when(
        st.cmd, d, sig, HELD, complete_and_untouched, PYTHONPATH=str(d), SRLM_TRACKING="off", SRLM_THREADS="1"
    )


def previous_output_kept(d: Path, st: Stage) -> bool:
    return (d / st.out / "config.json").read_text() == "previous output\n" and len(list((d / st.out).iterdir())) == 1


def leftovers(d: Path) -> list[str]:
    return [p.name for root in (d / "models", d / ".srlm") for p in root.rglob("*") if ".tmp-" in p.name]


def assert_same_weights(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    diff = max((got[k] - want[k]).abs().max().item() for k in want)
    assert diff == 0.0, f"resumed weights differ from the uninterrupted run's by up to {diff}"


def resumed_steps(caplog, st: Stage = SFT) -> tuple[int, list[int]]:
    """The step the rerun resumed from, and the steps it trained, from its log."""
    text = "\n".join(r.getMessage() for r in caplog.records)
    start = re.search(r"resumed from step (\d+)", text)
    return int(start.group(1)) if start else 0, [int(s) for s in re.findall(rf"{st.prefix} step (\d+)/", text)]


EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}


@pytest.mark.parametrize(
    "st,sig",
    [(SFT, signal.SIGINT), (SFT, signal.SIGTERM), (SFT, signal.SIGKILL), (DPO, signal.SIGTERM)],
    ids=["sft-SIGINT", "sft-SIGTERM", "sft-SIGKILL", "cream-dpo-SIGTERM"],
)
def test_a_killed_training_stage_resumes_from_its_last_checkpoint(request, st, sig, caplog):
    d, reference = request.getfixturevalue("project" if st is SFT else "dpo_project")[:2]
    shutil.rmtree(d / st.out, ignore_errors=True)
    (d / st.out).mkdir()
    (d / st.out / "config.json").write_text("previous output\n")
    p = start_and_kill(d, sig, st)
    # The output first: replaced would mean the stage had finished before the signal.
    assert previous_output_kept(d, st), p.stderr[-3000:]
    assert p.returncode == EXIT[sig], p.stderr[-3000:]
    if sig != signal.SIGKILL:  # handled: unwinds and says so; SIGKILL gives no chance to
        assert ("interrupted" if sig == signal.SIGINT else "terminated") in p.stderr, p.stderr[-3000:]
    assert not leftovers(d), p.stderr[-3000:]
    assert [c.name for c in checkpoints(d, st)] == [f"checkpoint-{HELD - 1}", f"checkpoint-{HELD}"]

    caplog.set_level(logging.INFO, logger="srlm.training")
    assert_same_weights(run_in_process(d, st), reference)
    start, trained = resumed_steps(caplog, st)
    assert start == HELD
    assert trained == list(range(HELD + 1, st.steps + 1)), "finished steps were redone, or some skipped"
    assert not leftovers(d) and not checkpoints(d, st)


def crash_after_checkpoint_3(monkeypatch, d: Path) -> None:
    def crash_at_step_4(self, args, state, control, logs=None, **kw):
        if state.global_step == 4:  # after checkpoint 3, before checkpoint 4 is saved
            raise RuntimeError("crash")

    with monkeypatch.context() as m:
        m.setattr(training.MlflowStepLogger, "on_log", crash_at_step_4)
        with pytest.raises(RuntimeError, match="crash"):
            run_in_process(d)
    assert [c.name for c in checkpoints(d)] == ["checkpoint-2", "checkpoint-3"]  # save_total_limit 2


def damage_checkpoint(ckpt: Path, damage: str) -> None:
    if damage == "no trainer_state.json":  # killed while saving: the Trainer writes it last
        (ckpt / "trainer_state.json").unlink()
    else:
        f = ckpt / ("adapter_model.safetensors" if damage == "truncated weights" else "optimizer.pt")
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["truncated weights", "no trainer_state.json", "truncated optimizer state"])
def test_a_damaged_checkpoint_is_skipped_for_the_one_before(project, damage, monkeypatch, caplog):
    d, reference = project
    crash_after_checkpoint_3(monkeypatch, d)
    damage_checkpoint(checkpoints(d)[-1], damage)

    caplog.set_level(logging.INFO, logger="srlm.training")
    assert_same_weights(run_in_process(d), reference)
    assert any(
        "checkpoint-3" in r.getMessage() and "skipped" in r.getMessage() and r.levelno == logging.WARNING
        for r in caplog.records
    )
    assert resumed_steps(caplog) == (2, list(range(3, SFT.steps + 1)))
    assert not checkpoints(d)


def test_with_every_checkpoint_damaged_the_stage_starts_clean(project, monkeypatch, caplog):
    d, reference = project
    crash_after_checkpoint_3(monkeypatch, d)
    for ckpt, damage in zip(checkpoints(d), ["truncated weights", "no trainer_state.json"]):
        damage_checkpoint(ckpt, damage)

    caplog.set_level(logging.INFO, logger="srlm.training")
    assert_same_weights(run_in_process(d), reference)
    skipped = {
        n
        for r in caplog.records
        for n in ("checkpoint-2", "checkpoint-3")
        if n in r.getMessage() and "skipped" in r.getMessage() and r.levelno == logging.WARNING
    }
    assert skipped == {"checkpoint-2", "checkpoint-3"}
    assert resumed_steps(caplog) == (0, list(range(1, SFT.steps + 1)))  # no "resumed from": every step trained
    assert not checkpoints(d)


@pytest.mark.parametrize("method,loss", [("cream", "dynamic"), ("cream", "average"), ("srlm", "dynamic")])
def test_cream_loss_reaches_the_dpo_stage(dpo_project, method, loss):
    """method and cream.loss of params.yaml decide which C, if any, weights each pair in dpo@t's loss."""
    d, _, seen = dpo_project
    if (method, loss) != ("cream", "dynamic"):  # that one is the fixture's reference run
        p = yaml.safe_load((d / "params.yaml").read_text())
        p["method"], p["cream"]["loss"] = method, loss
        (d / "test-params.yaml").write_text(yaml.safe_dump(p))
        seen = []
        run_in_process(d, DPO, "test-params.yaml", spy=seen)
    metrics = json.loads((d / "data/it1/metrics/dpo.json").read_text())
    if method == "srlm":  # plain DPO: CREAM's loss is never called
        assert seen == [] and "consistency_mean" not in metrics
    else:
        want = CS if loss == "dynamic" else [sum(CS) / len(CS)] * len(CS)
        assert sorted(seen) == pytest.approx(want)  # each pair once (1 epoch, batch 1)
        assert metrics["consistency_mean"] == pytest.approx(sum(CS) / len(CS))


def test_checkpoints_of_other_inputs_are_never_resumed(project, monkeypatch):
    """The checkpoint folder is keyed by the params, the examples, the start model and the process layout."""
    from srlm.config import DistributedConfig, SftConfig

    d = project[0]
    monkeypatch.chdir(d)
    model, examples, dist = Path("models/m0"), [{"prompt": "p", "completion": "c"}], DistributedConfig()
    a = training.checkpoint_dir("sft", {"sft": {"lr": 1}}, model, examples, dist)
    assert training.checkpoint_dir("sft", {"sft": {"lr": 1}}, model, examples, dist) == a
    (a / "checkpoint-1").mkdir()
    for other in [
        ({"sft": {"lr": 2}}, model, examples, dist),
        ({"sft": {"lr": 1}}, model, examples * 2, dist),
        ({"sft": {"lr": 1}}, model, examples, DistributedConfig(num_processes=2)),
    ]:
        b = training.checkpoint_dir("sft", *other)
        assert b != a and training.last_checkpoint(b) is None
    assert not a.exists()  # a new fingerprint removes the stale folders of its stage
    assert SftConfig().save_steps >= 1  # checkpoints are on by default


def test_the_checkpoint_fingerprint_covers_the_start_models_files_and_the_training_code(project, monkeypatch, tmp_path):
    from srlm.config import DistributedConfig

    monkeypatch.chdir(project[0])
    model = tmp_path / "m0"
    shutil.copytree(project[0] / "models/m0", model)
    args = ({"sft": {"lr": 1}}, model, [{"prompt": "p", "completion": "c"}], DistributedConfig())
    a = training.checkpoint_dir("sft", *args)
    (a / "checkpoint-1").mkdir()
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight: a start model retrained or edited in place
    weights.write_bytes(bytes(data))
    b = training.checkpoint_dir("sft", *args)
    assert b != a and not a.exists() and training.last_checkpoint(b) is None
    (b / "checkpoint-1").mkdir()
    code = tmp_path / "training.py"  # srlm/training.py as another commit has it
    code.write_text(Path(training.__file__).read_text() + "\n# changed\n")
    monkeypatch.setattr(training, "__file__", str(code))
    c = training.checkpoint_dir("sft", *args)
    assert c != b and not b.exists() and training.last_checkpoint(c) is None
