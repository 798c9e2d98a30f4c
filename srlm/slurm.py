"""Slurm, for `distributed.launcher: slurm`: a stage's work runs as one job step (`srun`), inside the
allocation `dvc repro` runs in (`salloc`, `sbatch`), or in one srun asks for when there is none. The stage
process waits for the step and fails with the scheduler's own words when a task fails or is cancelled.
No torch here: srlm.launch (training) and srlm.resume (generation shards) build on it."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from typing import Sequence

log = logging.getLogger(__name__)
STEP_ENV = "SRLM_SLURM_STEP"  # set in the tasks of a step this module started: they do the work, not relaunch
# srun's and slurmstepd's own lines: how a step ended (exit codes, signals, CANCELLED, NODE_FAIL, TIMEOUT, OOM)
_SCHEDULER_LINE = re.compile(r"^(srun|slurmstepd\S*): ")


class SlurmError(RuntimeError):
    """A step that did not succeed, with what Slurm said about it."""


def in_step() -> bool:
    """Inside a task of a step started by `run_step`."""
    return bool(os.environ.get(STEP_ENV))


def run_step(
    argv: Sequence[str],
    name: str,
    nodes: int,
    tasks_per_node: int,
    srun_args: Sequence[str] = (),
) -> None:
    """Run `argv` as one Slurm step of `nodes` × `tasks_per_node` tasks and wait for it. Any task failing
    ends the step (`--kill-on-bad-exit`). Raises SlurmError, with srun's and slurmstepd's messages, when a
    task fails, the step or job is cancelled (`scancel`) or the node fails. Ctrl-C or SIGTERM on the
    calling process cancels the step before the interrupt goes on."""
    srun = shutil.which("srun")
    if srun is None:
        raise SlurmError(
            "distributed.launcher is slurm, but there is no `srun` on PATH: run on a Slurm cluster's login or "
            "compute node, or set distributed.launcher: local"
        )
    cmd = [
        srun,
        f"--job-name={name}",
        f"--nodes={nodes}",
        f"--ntasks-per-node={tasks_per_node}",
        f"--ntasks={nodes * tasks_per_node}",
        "--kill-on-bad-exit=1",
        "--export=ALL",
        *srun_args,
        *argv,
    ]
    env = dict(os.environ) | {STEP_ENV: name}
    log.info("slurm: %s", " ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    said: list[str] = []

    def relay():  # the tasks' stderr (progress, logs) goes on to ours; Slurm's own lines are kept
        for line in proc.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            if _SCHEDULER_LINE.match(line):
                said.append(line.strip())

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        rc = proc.wait()
    except BaseException:  # KeyboardInterrupt, or SIGTERM unwinding as SystemExit (srlm.stage)
        _cancel(proc)
        raise
    reader.join(timeout=10)
    if rc != 0:
        raise SlurmError(_reason(name, rc, said))


def _cancel(proc: subprocess.Popen) -> None:
    # srun cancels its step on SIGINT only when two come within a second; SIGTERM ends it at once
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            continue


def _reason(name: str, rc: int, said: list[str]) -> str:
    text = "\n".join(said)
    if "CANCELLED" in text:
        what = "was cancelled (scancel, or the scheduler: time limit, preemption)"
    elif "NODE_FAIL" in text or "NODE FAILURE" in text.upper():
        what = "lost a node"
    elif "TIMEOUT" in text or "DUE TO TIME LIMIT" in text:
        what = "ran out of time"
    elif "oom" in text.lower() or "out of memory" in text.lower():
        what = "ran out of memory"
    else:
        what = "failed"
    said = said[-8:] or ["(srun printed nothing about it)"]
    return (
        f"Slurm step {name} {what} (srun exit code {rc}). Slurm said:\n  "
        + "\n  ".join(said)
        + "\nRerun `dvc repro`: finished shards and training checkpoints in .srlm/progress are reused."
    )


def first_node() -> str:
    """The host name of the step's first node: the main process of a multi-node training step."""
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise SlurmError("not inside a Slurm step: SLURM_STEP_NODELIST is not set")
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SlurmError(f"`scontrol show hostnames {nodelist}` failed: {e}") from e
    return out.split()[0]


def step_port(base: int) -> int:
    """The training rendezvous port of this step: `base` offset by the job and step ids, so two pipelines
    whose steps share a node do not collide. The same in every task of the step."""
    job, step = int(os.environ.get("SLURM_JOB_ID", "0")), int(os.environ.get("SLURM_STEP_ID", "0") or 0)
    return base + (job * 7 + step) % 10000


def task_index() -> tuple[int, int]:
    """(rank, number of tasks) of this task in its step."""
    return int(os.environ.get("SLURM_PROCID", "0")), int(os.environ.get("SLURM_NTASKS", "1"))


def gpu_share() -> str | None:
    """For one of several generation tasks on a node that all see the node's GPUs: this task's equal share
    of CUDA_VISIBLE_DEVICES (task i of k takes the i-th k-th), so each engine has GPUs of its own. None
    when there is nothing to split (one task per node, or Slurm already gave each task its own)."""
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0].split(",")[0] or 1)
    if per_node < 2 or len(visible) < per_node:
        return None
    share, local = len(visible) // per_node, int(os.environ.get("SLURM_LOCALID", "0"))
    return ",".join(visible[local * share : (local + 1) * share])
