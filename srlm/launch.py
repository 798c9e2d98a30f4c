"""Running a training stage on several processes or machines: with `distributed.num_processes` > 1 the stage
script re-executes itself under `accelerate launch` (FSDP2 or DeepSpeed ZeRO-3, `distributed.config_file`), and
only the main process writes outputs. On machines 1.. of a multi-node run, `python -m srlm.launch worker` joins
the commands machine 0 posts (docs/scaling-up.md)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import torch

from .config import DistributedConfig
from .io import atomic_write_text

log = logging.getLogger(__name__)
JOB_FILE = Path(".srlm") / "launch" / "job.json"  # multi-node: machine 0 posts each training command here


def is_main_process() -> bool:
    """Rank 0, or the only process. The others train and write nothing."""
    return int(os.environ.get("RANK", "0")) == 0


def distribute(dist: DistributedConfig) -> None:
    """Run the calling stage script on `dist.num_processes` processes. With 1, return at once. Otherwise
    re-execute the script, with its arguments, under `accelerate launch`, so `dvc repro` needs nothing
    else; the call then returns only inside the launched processes. This machine's rank comes from
    SRLM_MACHINE_RANK (0 where `dvc repro` runs; see `worker` for the other machines)."""
    if "LOCAL_RANK" in os.environ:  # already launched (by us, accelerate or torchrun)
        if not is_main_process():
            os.environ["SRLM_TRACKING"] = "off"  # one MLflow run per stage execution: rank 0's
        return
    if dist.num_processes <= 1:
        return
    machine_rank = int(os.environ.get("SRLM_MACHINE_RANK", "0"))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        dist.config_file,
        "--num_processes",
        str(dist.num_processes),
        "--num_machines",
        str(dist.num_machines),
        "--machine_rank",
        str(machine_rank),
        "--main_process_port",
        str(dist.main_process_port),
    ]
    if dist.main_process_ip:
        cmd += ["--main_process_ip", dist.main_process_ip]
    cmd += [sys.argv[0], *sys.argv[1:]]
    env = dict(os.environ)
    if not torch.cuda.is_available() and "SRLM_THREADS" not in env:  # CPU: share the cores, don't oversubscribe
        per_machine = dist.num_processes // dist.num_machines
        env["SRLM_THREADS"] = str(max(1, (os.cpu_count() or 1) // per_machine))
    if dist.num_machines > 1 and machine_rank == 0:
        # The other machines' workers run the same command with their rank (project directory shared).
        atomic_write_text(JOB_FILE, json.dumps({"id": uuid.uuid4().hex, "argv": sys.argv, "time": time.time()}))
    log.info("launching %d processes: %s", dist.num_processes, " ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)


def worker(machine_rank: int, poll_s: float = 2.0) -> None:
    """Machines 1..num_machines-1 of a multi-node run: wait for machine 0's training stages to post their
    command, run it as this machine's share of the processes, repeat. Jobs posted before the worker
    started are not joined (their rendezvous may be long over). Stop it with Ctrl-C."""
    if machine_rank < 1:
        raise ValueError("the worker runs on machines 1, 2, ...; machine 0 runs `dvc repro`")
    seen = _job().get("id")
    log.info("worker of machine %d: waiting for training jobs in %s", machine_rank, JOB_FILE.resolve())
    while True:
        job = _job()
        if job.get("id") not in (None, seen):
            seen = job["id"]
            log.info("joining: %s", " ".join(job["argv"]))
            rc = subprocess.call(
                [sys.executable, *job["argv"]], env=os.environ | {"SRLM_MACHINE_RANK": str(machine_rank)}
            )
            log.log(logging.INFO if rc == 0 else logging.ERROR, "job ended with exit code %d", rc)
        time.sleep(poll_s)


def _job() -> dict:
    try:
        return json.loads(JOB_FILE.read_text())
    except (OSError, ValueError):
        return {}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description="Multi-node training: run this on machines 1.. while `dvc repro` "
        "runs on machine 0, in the same (shared) project directory."
    )
    parser.add_argument("command", choices=["worker"])
    parser.add_argument("--machine-rank", type=int, required=True)
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between looks for a new job")
    a = parser.parse_args()
    logging.basicConfig(
        level=os.environ.get("SRLM_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        worker(a.machine_rank, a.poll)
    except KeyboardInterrupt:
        pass
