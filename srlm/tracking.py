"""MLflow tracking (one run per stage execution, nested under one run per pipeline run) and DVC metrics
files.

The store defaults to a local SQLite file, `mlflow.db` in the project (the workspace's one, also for
queued and --temp experiments); set MLFLOW_TRACKING_URI to use a server. Each stage run is tagged
with its stage, iteration, git commit and DVC experiment, and every model gets an MLflow LoggedModel
entry that records its lineage (weights stay in DVC).

A pipeline run is one `dvc repro` or one `dvc exp run`: the stages that one DVC process starts. Its
parent run, named after the DVC experiment (or `repro-<commit>`), is made by the first stage that runs
and found by the next ones; the report stage completes it (srlm.registry). MLflow's usage telemetry is
off in every process this module starts mlflow in: the project runs offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from .io import file_sha256, no_nan, write_json

DEFAULT_URI = "sqlite:///mlflow.db"
EXPERIMENT = os.environ.get("SRLM_MLFLOW_EXPERIMENT", "self-rewarding")
PIPELINE_ENV = "SRLM_PIPELINE_RUN"  # the pipeline run's key, inherited by a stage's own child processes
PIPELINE_KEY_TAG = "srlm.pipeline_key"
LOCK_TAG = "srlm.lock_md5"  # a stage run's entry in dvc.lock, hashed: how a later pipeline run finds it
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "fish"}
log = logging.getLogger(__name__)


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the project's mlflow.db. Under DVC that is DVC_ROOT's: a queued or --temp
    experiment runs in a copy under .dvc/tmp/exps that is deleted afterwards, and its runs would go with it."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = os.environ.get("DVC_ROOT")
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}" if root else DEFAULT_URI


def _artifact_root() -> str | None:
    """Beside the project's mlflow.db (the workspace's, also when the experiment is first made by a queued
    run, whose copy of the project DVC deletes); a server given by MLFLOW_TRACKING_URI chooses its own."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return str(Path(os.environ.get("DVC_ROOT", ".")).resolve() / "mlruns" / EXPERIMENT)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pipeline_key() -> str | None:
    """Which `dvc repro` / `dvc exp run` this stage process belongs to: the DVC process that started it
    (DVC runs each stage's command through a shell), by host, pid and start time, so that a reused pid is a
    new key. None outside DVC (a stage script run by hand). Set in the environment, so the processes a
    stage starts itself (`accelerate launch`) share it."""
    if os.environ.get(PIPELINE_ENV):
        return os.environ[PIPELINE_ENV]
    if "DVC_STAGE" not in os.environ:
        return None
    proc = psutil.Process().parent()
    while proc is not None and proc.name() in SHELLS:
        proc = proc.parent()
    if proc is None:
        return None
    os.environ[PIPELINE_ENV] = f"{socket.gethostname()}:{proc.pid}:{proc.create_time():.3f}"
    return os.environ[PIPELINE_ENV]


def pipeline_name() -> str:
    return os.environ.get("DVC_EXP_NAME") or f"repro-{git_commit()[:7]}"


def locked_stages(lock: str | Path = "dvc.lock") -> dict[str, dict]:
    """dvc.lock's stages (DVC writes each one's entry when the stage ends)."""
    if not Path(lock).is_file():
        return {}
    return (yaml.safe_load(Path(lock).read_text()) or {}).get("stages", {})


def lock_entries(lock: str | Path = "dvc.lock") -> dict[str, str]:
    """{stage: md5 of its dvc.lock entry (cmd, deps, params and outs with their hashes)}: the identity of a
    stage's result, the same in every pipeline run that reuses it from the cache."""
    return {k: hashlib.md5(json.dumps(v, sort_keys=True).encode()).hexdigest() for k, v in locked_stages(lock).items()}


def project_experiment(client) -> str:
    """The project's experiment, made for model training: the UI opens it on its runs, not on GenAI traces."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        try:
            return client.create_experiment(
                EXPERIMENT, _artifact_root(), tags={"mlflow.experimentKind": "custom_model_development"}
            )
        except Exception:  # another process made it first
            exp = client.get_experiment_by_name(EXPERIMENT)
            if exp is None:
                raise
    if exp.tags.get("mlflow.experimentKind") != "custom_model_development":
        client.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", "custom_model_development")
    return exp.experiment_id


def pipeline_run(client, experiment_id: str, key: str) -> str:
    """The id of the parent run of pipeline run `key`, made if this is its first stage."""
    found = client.search_runs([experiment_id], f"tags.`{PIPELINE_KEY_TAG}` = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {PIPELINE_KEY_TAG: key, "srlm.kind": "pipeline", "git_commit": git_commit()}
    tags["dvc_exp"] = os.environ.get("DVC_EXP_NAME", "")
    return client.create_run(experiment_id, run_name=pipeline_name(), tags=tags).info.run_id


def tag_lock_entries(client, experiment_id: str, parent: str) -> dict[str, str]:
    """Tag each finished stage run of pipeline run `parent` with its dvc.lock entry (DVC writes a stage's
    entry when the stage ends, so this is done by a later stage); returns {dvc stage: run id}."""
    entries = lock_entries()
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    ran = {}
    for r in children:
        stage = r.data.tags.get("dvc_stage")
        if stage is None or r.data.tags.get("srlm.cached") == "true":
            continue
        ran[stage] = r.info.run_id
        if r.info.status == "FINISHED" and LOCK_TAG not in r.data.tags and stage in entries:
            client.set_tag(r.info.run_id, LOCK_TAG, entries[stage])
    return ran


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
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
    client = mlflow_client()
    import mlflow

    experiment_id = project_experiment(client)
    mlflow.set_experiment(experiment_id=experiment_id)
    key = iteration if iteration is not None else instance
    name = stage if key is None else f"{stage}@{key}"
    tags = {"stage": stage, "git_commit": git_commit(), "dvc_exp": os.environ.get("DVC_EXP_NAME", "")}
    tags["dvc_stage"] = os.environ.get("DVC_STAGE", name)
    if iteration is not None:
        tags["iteration"] = str(iteration)
    parent = None
    if pipeline_key() is not None:
        parent = pipeline_run(client, experiment_id, pipeline_key())
        tag_lock_entries(client, experiment_id, parent)
        client.update_run(parent, status="RUNNING")
    t0, status = time.time(), "FAILED"
    try:
        with mlflow.start_run(run_name=name, tags=tags, parent_run_id=parent) as run:
            mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
            yield run
            mlflow.log_metric("wall_time_s", time.time() - t0)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:  # the pipeline run's status is its latest stage's: DVC stops at the first that fails
        if parent is not None:
            client.set_terminated(parent, status)


def mlflow_client():
    """A client of the project's store, with MLflow's usage telemetry off (set before mlflow is imported)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.MlflowClient()


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
        "dvc_exp": os.environ.get("DVC_EXP_NAME", ""),
        "weights_sha256": ",".join(file_sha256(w)[:16] for w in weights),
    }
    mlflow.create_external_model(
        name=name,
        source_run_id=run.info.run_id,
        model_type="causal-lm",
        tags=tags,
        params={k: str(v)[:500] for k, v in flatten(lineage).items()},
    )
    mlflow.log_dict(lineage | {"model": name, **tags}, "lineage.json")


def data_hashes(*paths: str | Path) -> dict:
    return {str(p): file_sha256(p)[:16] for p in paths if Path(p).is_file()}


def write_metrics(path: str | Path, metrics: dict) -> None:
    """A DVC metrics file (compared by `dvc metrics show/diff` and `dvc exp show`), also sent to
    MLflow. An undefined value (NaN, e.g. a correlation over constant scores) is written as null."""
    metrics = no_nan(metrics)
    write_json(path, metrics)
    log_metrics({k: v for k, v in flatten(metrics).items() if v is not None})
