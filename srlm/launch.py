"""Running a training stage on several processes, machines or a Slurm allocation. With
`distributed.num_processes` > 1 the stage script re-executes itself under `accelerate launch` (FSDP2 or
DeepSpeed ZeRO-3, `distributed.config_file`), and only the main process writes outputs. With
`distributed.launcher: slurm` the stage first becomes one Slurm step (srlm.slurm): one task per node, each
running the script, which then launches that node's processes with the node's rank (docs/scaling-up.md)."""

from __future__ import annotations

import logging
import os
import sys

import torch

from . import slurm
from .config import DistributedConfig

log = logging.getLogger(__name__)


def is_main_process() -> bool:
    """Rank 0, or the only process. The others train and write nothing."""
    return int(os.environ.get("RANK", "0")) == 0


def distribute(dist: DistributedConfig, name: str) -> None:
    """Run the calling stage script (stage instance `name`) where `dist` says. Locally with 1 process,
    return at once. With `launcher: slurm`, run the script as a step of `num_machines` tasks and exit when
    it succeeds (the tasks did the work), or raise SlurmError. With more processes, re-execute the script,
    with its arguments, under `accelerate launch`, so `dvc repro` needs nothing else; the call then returns
    only inside the launched processes."""
    if "LOCAL_RANK" in os.environ:  # already launched (by us, accelerate or torchrun)
        if not is_main_process():
            os.environ["SRLM_TRACKING"] = "off"  # one MLflow run per stage execution: rank 0's
        return
    if dist.launcher == "slurm" and not slurm.in_step():
        slurm.run_step([sys.executable, *sys.argv], name, dist.num_machines, 1, dist.srun_args)
        sys.exit(0)
    if dist.num_processes <= 1:
        return
    machine_rank, port = 0, dist.main_process_port
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", dist.config_file]
    cmd += ["--num_processes", str(dist.num_processes), "--num_machines", str(dist.num_machines)]
    if slurm.in_step():  # this node's share: its rank in the step, the step's first node as the main process
        machine_rank, port = int(os.environ["SLURM_NODEID"]), slurm.step_port(dist.main_process_port)
        if dist.num_machines > 1:
            cmd += ["--main_process_ip", slurm.first_node()]
    cmd += ["--machine_rank", str(machine_rank), "--main_process_port", str(port), sys.argv[0], *sys.argv[1:]]
    env = dict(os.environ)
    if not torch.cuda.is_available() and "SRLM_THREADS" not in env:  # CPU: share the cores, don't oversubscribe
        per_machine = dist.num_processes // dist.num_machines
        env["SRLM_THREADS"] = str(max(1, (os.cpu_count() or 1) // per_machine))
    log.info("launching %d processes: %s", dist.num_processes, " ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)
