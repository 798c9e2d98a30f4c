"""MLflow tracking (one run per stage execution) and DVC metrics files.

The store defaults to a local SQLite file, `mlflow.db` in the project (the workspace's one, also for
queued and --temp experiments); set MLFLOW_TRACKING_URI to use a server. Each stage run is tagged
with its stage, iteration, git commit and DVC experiment, and every model gets an MLflow LoggedModel
entry that records its lineage (weights stay in DVC).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from .io import file_sha256, write_json

DEFAULT_URI = "sqlite:///mlflow.db"
EXPERIMENT = os.environ.get("SRLM_MLFLOW_EXPERIMENT", "self-rewarding")
log = logging.getLogger(__name__)


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the project's mlflow.db. Under DVC that is DVC_ROOT's: a queued or --temp
    experiment runs in a copy under .dvc/tmp/exps that is deleted afterwards, and its runs would go with it."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = os.environ.get("DVC_ROOT")
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}" if root else DEFAULT_URI


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


@contextlib.contextmanager
def stage_run(stage: str, params: dict, iteration: str | None = None, instance: str | None = None):
    """An MLflow run around one stage execution, named like the DVC stage (`judge@1`,
    `eval_judge@m3`); yields the run (or None if tracking is off)."""
    if os.environ.get("SRLM_TRACKING", "on") == "off":
        yield None
        return
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(EXPERIMENT)
    key = iteration if iteration is not None else instance
    name = stage if key is None else f"{stage}@{key}"
    tags = {"stage": stage, "git_commit": git_commit(), "dvc_exp": os.environ.get("DVC_EXP_NAME", "")}
    if iteration is not None:
        tags["iteration"] = str(iteration)
    t0 = time.time()
    with mlflow.start_run(run_name=name, tags=tags) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in _flatten(params).items()})
        yield run
        mlflow.log_metric("wall_time_s", time.time() - t0)


def _active() -> bool:
    """An MLflow run is open (mlflow is only imported by `stage_run`, so stages run without it
    when tracking is off)."""
    return "mlflow" in sys.modules and sys.modules["mlflow"].active_run() is not None


def log_metrics(metrics: dict, step: int | None = None) -> None:
    if not _active():
        return
    import mlflow

    mlflow.log_metrics(
        {
            k.replace("@", "_"): float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        },
        step=step,
    )


def log_artifact(path: str | Path) -> None:
    if not _active():
        return
    import mlflow

    if Path(path).is_file():
        mlflow.log_artifact(str(path))


def record_model(name: str, model_dir: str | Path, lineage: dict) -> None:
    """Register a model in MLflow by reference: its lineage as params and tags, no weight copy."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return
    weights = sorted(Path(model_dir).glob("*.safetensors"))
    tags = {
        "path": str(model_dir),
        "git_commit": git_commit(),
        "weights_sha256": ",".join(file_sha256(w)[:16] for w in weights),
    }
    mlflow.create_external_model(
        name=name,
        source_run_id=run.info.run_id,
        model_type="causal-lm",
        tags=tags,
        params={k: str(v)[:500] for k, v in _flatten(lineage).items()},
    )
    mlflow.log_dict(lineage | {"model": name, **tags}, "lineage.json")


def data_hashes(*paths: str | Path) -> dict:
    return {str(p): file_sha256(p)[:16] for p in paths if Path(p).is_file()}


def _no_nan(obj):
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    return None if isinstance(obj, float) and obj != obj else obj


def write_metrics(path: str | Path, metrics: dict) -> None:
    """A DVC metrics file (compared by `dvc metrics show/diff` and `dvc exp show`), also sent to
    MLflow. An undefined value (NaN, e.g. a correlation over constant scores) is written as null."""
    metrics = _no_nan(metrics)
    write_json(path, metrics)
    log_metrics({k: v for k, v in _flatten(metrics).items() if v is not None})
