"""What every stage script shares: params, threads, logging, and errors that read as messages."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import signal
import sys
from pathlib import Path

from . import artifacts
from .config import ConfigError, load_params, section_dict
from .io import DataError
from .modeling import ModelError, load_tokenizer, resolve_dtype, set_threads, weight_dirs
from .progress import work_dir
from .resume import ResumableGenerator, work
from .slurm import SlurmError, gpu_share, run_step, task_index
from .tracking import pipeline_key

EXPECTED = (ConfigError, DataError, ModelError, FileNotFoundError, SlurmError)
AUDIT_ENV = "SRLM_AUDIT_FILES"  # tests only: see _audit_files


def main(run, needs_iteration: bool = False, needs: str | None = None) -> None:
    """Parse `--iteration` (or `--model`/`--matchup`, by `needs`), load params.yaml, call
    `run(params[, key, entry])`; exit 2 with the message on an expected error (bad params,
    bad data, missing model)."""
    parser = argparse.ArgumentParser(description=(run.__doc__ or "").strip().splitlines()[0] if run.__doc__ else None)
    if needs_iteration:
        parser.add_argument("--iteration", required=True, help="iteration key in params.yaml (1, 2, ...)")
    if needs == "model":
        parser.add_argument("--model", required=True, help="a model of evaluation.models in params.yaml")
    if needs == "matchup":
        parser.add_argument("--matchup", required=True, help="a key of evaluation.matchups in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    _setup_process()
    pipeline_key()  # found now, so the processes a training stage relaunches under accelerate share it
    if os.environ.get(AUDIT_ENV):
        _audit_files(os.environ[AUDIT_ENV])
    # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C, so temporaries are removed on the way out.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        params = load_params(args.params)
        if needs_iteration:
            key = str(args.iteration)
            if key not in {str(k) for k in params.iterations}:
                raise ConfigError(
                    f"params.yaml: iteration {key!r} is not in iterations "
                    f"({', '.join(map(str, params.iterations)) or 'none'})"
                )
            it = {str(k): v for k, v in params.iterations.items()}[key]
            run(params, key, it)
        elif needs == "model":
            if args.model not in params.evaluation.models:
                raise ConfigError(f"params.yaml: model {args.model!r} is not in evaluation.models")
            run(params, args.model)
        elif needs == "matchup":
            if args.matchup not in params.evaluation.matchups:
                raise ConfigError(f"params.yaml: matchup {args.matchup!r} is not in evaluation.matchups")
            run(params, args.matchup, params.evaluation.matchups[args.matchup])
        else:
            run(params)
    except EXPECTED as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        print(
            f"error: no room to write {e.filename or 'an output'} ({e.strerror}). Nothing half-written was "
            f"left; free some space (or raise the quota) and rerun `dvc repro`: finished work in .srlm/progress "
            f"is reused.",
            file=sys.stderr,
        )
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: outputs were left as they were; rerun `dvc repro` to resume", file=sys.stderr)
        sys.exit(130)
    except SystemExit as e:
        if e.code == 128 + signal.SIGTERM:
            print("terminated: outputs were left as they were; rerun `dvc repro` to resume", file=sys.stderr)
        raise


def _setup_process() -> None:
    """What every stage process, and every task of a Slurm step, starts with: the log format and the threads."""
    logging.basicConfig(
        level=os.environ.get("SRLM_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    set_threads()


def _audit_files(log_path: str) -> None:
    """Tests only. Record every file under the working directory that this process opens, for reading or
    writing (a rename counts as writing its destination), and append them to `log_path` at exit as one
    JSON line {stage, read, write}: the end-to-end test checks them against the stage's deps and outs in
    dvc.lock, so a stage cannot read an input that is not in its cache key."""
    import atexit
    import json

    root, seen, on = Path.cwd(), {"read": set(), "write": set()}, [True]
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def note(kind, path):
        if isinstance(path, (str, bytes, os.PathLike)):
            p = Path(os.fsdecode(path))
            p = p if p.is_absolute() else root / p
            if p.is_relative_to(root) and (kind == "write" or p.exists()):  # (a path relative to a dir_fd: not ours)
                seen[kind].add(str(p.relative_to(root)))

    def hook(event, args):
        if not on[0]:
            return
        if event == "open":
            path, mode, flags = args
            note("write" if (mode and any(c in mode for c in "wax+")) or (flags or 0) & writing else "read", path)
        elif event == "os.rename":  # os.replace too
            note("write", args[1])

    def dump():
        on[0] = False
        record = {"stage": os.environ.get("DVC_STAGE", ""), **{k: sorted(v) for k, v in seen.items()}}
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    sys.addaudithook(hook)
    atexit.register(dump)


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def tracked(params, keys: list[str]) -> dict:
    """The values of a stage's `PARAMS` (dotted keys of params.yaml, exactly its `params:` in dvc.yaml,
    which tests/test_dvc_graph.py checks): what its MLflow run logs and its checkpoints are keyed by."""
    out = {}
    for key in keys:
        value = params
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = section_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def generator(params, model: str | Path, name: str):
    """The one place stages get a generator: `model`'s (a pipeline model's name, or a model
    directory given as a Path), behind the `generation` params, keeping its
    progress in shards so that a rerun of stage instance `name` after an interruption resumes
    (srlm.resume). The model itself is loaded only if some shard is left to compute; under
    `distributed.launcher: slurm` the shards are computed by a Slurm step's tasks instead."""

    gen, trust = params.generation, params.model.trust_remote_code
    dtype = resolve_dtype(gen.dtype)  # what `auto` means on this machine: in the progress key and the metrics
    model_dir = model if isinstance(model, Path) else artifacts.model_dir(model)
    tokenizer = load_tokenizer(model_dir, trust)
    key = {"generation": section_dict(gen) | {"dtype": dtype}, "model": str(model), "trust_remote_code": trust}
    engine = {  # srlm.generation.make_generator's arguments: JSON, so that Slurm tasks can build it too
        "backend": gen.backend,
        "model_dir": str(model_dir),
        "batch_size": gen.batch_size,
        "dtype": dtype,
        "trust_remote_code": trust,
        "tensor_parallel_size": gen.tensor_parallel_size,
        "gpu_memory_utilization": gen.gpu_memory_utilization,
    }
    dist = params.distributed
    spread = None
    if dist.launcher == "slurm":  # the missing shards of each call are computed by a Slurm step's tasks

        def spread(order: Path) -> None:
            argv = [sys.executable, "-m", "srlm.stage", "work", str(order)]
            run_step(argv, name, dist.num_machines, dist.generation_tasks_per_node, dist.srun_args)

    directory = work_dir(name, key, weight_dirs(model_dir))
    generator = ResumableGenerator(engine, tokenizer, directory, gen.shard_size, spread=spread)
    generator.dtype = dtype
    return generator


def work_main(argv: list[str]) -> None:
    """`python -m srlm.stage work ORDER`: one task of a Slurm step computing its share of a generation call's
    shards (srlm.resume.work), on its share of the node's GPUs."""
    parser = argparse.ArgumentParser(prog="python -m srlm.stage", description=work_main.__doc__)
    parser.add_argument("command", choices=["work"])
    parser.add_argument("order", help="a work order written by srlm.resume.ResumableGenerator")
    args = parser.parse_args(argv)
    _setup_process()
    if (gpus := gpu_share()) is not None:  # before the engine starts CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    work(args.order, *task_index())


if __name__ == "__main__":
    work_main(sys.argv[1:])
