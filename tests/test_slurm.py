"""`distributed.launcher: slurm` against a real Slurm: a one-node cluster on this machine
(tools/slurm/one-node-cluster.sh, which `.ci/run` starts). The tiny pipeline up to dpo@1, with its generation
shards spread over two tasks and its training stages on two processes inside Slurm steps, must write exactly
what the local launcher writes; a cancelled step (`scancel`) must end its stage with Slurm's reason, and the
rerun resume from the shards or the checkpoint the step left."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from e2e_project import WALL_CLOCK, dvc, make_project, start_and_kill


def _cluster_up() -> bool:
    if not shutil.which("srun"):
        return False
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(state.rstrip("*") in ("idle", "mixed", "allocated") for state in p.stdout.split())


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not _cluster_up(),
        reason="no Slurm cluster here: `sudo tools/slurm/one-node-cluster.sh` starts a one-node one (CI does)",
    ),
]
DVC = str(Path(sys.executable).parent / "dvc")
FORCE = [DVC, "repro", "--force", "--single-item"]  # --force: run it, not from the run cache
TARGET = "dpo@1"  # everything to M2: generation stages (build_eft, gen_prompts, sample, judge) and training


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overrides(launcher: str) -> dict:
    return {
        "distributed": {
            "launcher": launcher,
            "num_processes": 2,  # sft and dpo on two processes: accelerate, inside the step under Slurm
            "main_process_port": free_port() if launcher == "local" else 29500,
            "generation_tasks_per_node": 2,
        },
        "generation": {"shard_size": 2},  # several shards per call, so that both tasks have some
        "dpo": {"save_steps": 1},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """The same project run to dpo@1 by each launcher."""
    out = {}
    for launcher in ("local", "slurm"):
        d = make_project(tmp_path_factory.mktemp(launcher), tiny_model_dir, overrides(launcher))
        p = dvc(["repro", TARGET], d)
        out[launcher] = (d, p.stdout + p.stderr)
    return out


def outs(d: Path) -> dict:
    """Every stage's output hashes in dvc.lock."""
    lock = yaml.safe_load((d / "dvc.lock").read_text())["stages"]
    return {(name, o["path"]): o["md5"] for name, st in lock.items() for o in st.get("outs", [])}


def test_the_tiny_pipeline_on_slurm_writes_what_the_local_launcher_writes(runs):
    (local, _), (on_slurm, log) = runs["local"], runs["slurm"]
    assert "slurm: " in log and "--ntasks-per-node=2" in log, "the generation shards ran as Slurm steps"
    assert "spread over a step's tasks" in log
    assert "launching 2 processes" in log and "training on 2 processes" in log
    want, got = outs(local), outs(on_slurm)
    assert want.keys() == got.keys() and len(want) >= 20
    differ = sorted(out for out in want if want[out] != got[out] and out[1] not in WALL_CLOCK)
    assert not differ, f"outputs that differ between the launchers: {differ}"
    for path in WALL_CLOCK & {p for _, p in want}:  # the same losses and steps; only the seconds differ
        assert untimed(on_slurm / path) == untimed(local / path), path


def untimed(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.endswith("_s") and "per_second" not in k}


def _cancel(name: str):
    def cancel():
        jobs = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True).stdout.split()
        assert jobs, f"no Slurm job named {name} while the stage was held"
        subprocess.run(["scancel", *jobs], check=True)

    return cancel


def cancelled_run(d: Path, stage: str) -> subprocess.CompletedProcess:
    """`stage` rerun (--force: not from the run cache) and its job `scancel`led while it is held after its
    first shard or checkpoint; the stage must fail with Slurm's reason."""
    cancelled = start_and_kill(FORCE + [stage], d, sig=None, hold_after=1, while_held=_cancel(stage))
    assert cancelled.returncode != 0
    assert f"error: Slurm step {stage} was cancelled" in cancelled.stderr, cancelled.stderr[-3000:]
    return cancelled


def test_a_cancelled_generation_step_fails_its_stage_and_the_rerun_resumes_from_its_shards(runs):
    d, _ = runs["slurm"]
    stage, path = "sample@1", "data/it1/candidates.jsonl"
    before = outs(d)[(stage, path)]
    assert "CANCELLED" in cancelled_run(d, stage).stderr
    assert list((d / ".srlm/progress/sample_1").rglob("generate-*.json")), "the finished shards were kept"
    assert "resumed," in dvc(FORCE[1:] + [stage], d).stderr
    assert outs(d)[(stage, path)] == before


def test_a_cancelled_training_step_fails_its_stage_and_the_rerun_resumes_from_its_checkpoint(runs):
    d, _ = runs["slurm"]
    stage, path = "dpo@1", "models/m2"
    before = outs(d)[(stage, path)]
    cancelled_run(d, stage)
    assert "resumed from step 1" in dvc(FORCE[1:] + [stage], d).stderr
    assert outs(d)[(stage, path)] == before
