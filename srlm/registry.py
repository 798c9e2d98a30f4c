"""A pipeline run's summary in MLflow, written by the report stage when the pipeline is complete.

- The parent run (srlm.tracking.pipeline_run) gets the run's params, its headline metrics and the report.
- Every stage that DVC reused from its cache gets a child marked `srlm.cached`, linked to the run that
  made that result (`srlm.produced_by`, matched by the stage's dvc.lock entry) and carrying its metrics,
  so that the parent lists the whole pipeline.
- Every model is registered as a version of one registered model per pipeline run, `srlm-<run name>`,
  with its lineage as tags (parent model, method, the stage's data and model hashes from dvc.lock) and
  the aliases `last-iteration`, `best-judge` (pairwise accuracy of the judge readout in use) and
  `best-follow` (IFEval prompt-level strict accuracy). These pick the highest point estimate; whether it
  differs from the others beyond noise is in reports/comparisons.json.

The weights stay in DVC: a version points at its MLflow LoggedModel, whose tags name the path; see
docs/tracking.md for loading one by alias.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .tracking import (
    LOCK_TAG,
    flatten,
    lock_entries,
    locked_stages,
    mlflow_client,
    pipeline_key,
    pipeline_name,
    pipeline_run,
    project_experiment,
    tag_lock_entries,
)

ALIASES = {"best-judge": "pairwise accuracy", "best-follow": "IFEval prompt-level strict accuracy"}
log = logging.getLogger(__name__)


def registered_model_name() -> str:
    return f"srlm-{pipeline_name()}"


def headline_metrics(models: list[str], matchups: list[str], readout: str, paths) -> dict[str, float]:
    """`<model>.pairwise_accuracy` (readout `readout`), `<model>.prompt_strict` and `.instruction_strict`,
    `<matchup>.win_rate` (ties half), from the stages' metrics files; `paths` is srlm.artifacts."""
    out = {}
    for m in models:
        judge, follow = (_read(paths.eval_metrics(m, s)) for s in ("judge", "follow"))
        out[f"{m}.pairwise_accuracy"] = judge.get(f"{readout}_pairwise_accuracy")
        out[f"{m}.prompt_strict"] = follow.get("prompt_strict")
        out[f"{m}.instruction_strict"] = follow.get("instruction_strict")
    for name in matchups:
        out[f"{name}.win_rate"] = _read(paths.matchup_metrics(name)).get("win_rate_ties_half")
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _read(path) -> dict:
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}


def finish_pipeline(
    params: dict, headline: dict[str, float], report: Path, models: list[str], last: str, method: str
) -> dict | None:
    """Complete this pipeline run's parent run and register its models (see the module's doc). Returns
    {"parent", "cached", "registered_model", "versions", "aliases"}, or None outside a pipeline run."""
    if pipeline_key() is None:
        return None
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    client = mlflow_client()
    experiment_id = project_experiment(client)
    parent = pipeline_run(client, experiment_id, pipeline_key())
    produced_by = tag_lock_entries(client, experiment_id, parent)
    cached = {}
    for stage, md5 in lock_entries().items():
        if stage not in produced_by:
            cached[stage] = produced_by[stage] = _cached_child(client, experiment_id, parent, stage, md5)
    now = int(time.time() * 1000)
    client.log_batch(
        parent,
        metrics=[Metric(k, v, now, 0) for k, v in headline.items()],
        params=[Param(k, str(v)[:500]) for k, v in flatten(params).items()],
    )
    if Path(report).is_file():
        client.log_artifact(parent, str(report))
    name = registered_model_name()
    try:
        client.create_registered_model(name, tags={"pipeline_run": parent, "method": method})
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    versions = _register(client, experiment_id, name, models, produced_by, parent, method)
    aliases = _aliases(client, name, versions, headline, last)
    client.set_tag(parent, "srlm.registered_model", name)
    return {"parent": parent, "cached": cached, "registered_model": name, "versions": versions, "aliases": aliases}


def _cached_child(client, experiment_id: str, parent: str, stage: str, md5: str) -> str | None:
    """A child for a stage DVC skipped: linked to, and with the metrics of, the run that produced the same
    dvc.lock entry (None when that run is unknown, e.g. it ran with tracking off)."""
    from mlflow.entities import Metric

    found = client.search_runs(
        [experiment_id], f"tags.`{LOCK_TAG}` = '{md5}'", max_results=100, order_by=["attributes.start_time DESC"]
    )
    source = next((r for r in found if r.data.tags.get("srlm.cached") != "true"), None)
    note = "DVC reused this stage's outputs from its cache: " + (
        f"produced by run {source.info.run_id}" if source else "the run that produced them is not in this store"
    )
    tags = {
        "mlflow.parentRunId": parent,
        "dvc_stage": stage,
        "srlm.cached": "true",
        LOCK_TAG: md5,
        "srlm.produced_by": source.info.run_id if source else "",
        "mlflow.note.content": note,
    }
    run = client.create_run(experiment_id, run_name=f"{stage} (cached)", tags=tags)
    if source and source.data.metrics:
        now = int(time.time() * 1000)
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in source.data.metrics.items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    return source.info.run_id if source else None


def _register(client, experiment_id, name, models, produced_by, parent, method) -> dict[str, str]:
    """{model: version} for each model whose producing run and LoggedModel are in the store."""
    lock = locked_stages()
    made_by = {o["path"]: (stage, o) for stage, e in lock.items() for o in e.get("outs", [])}
    versions = {}
    for model in models:
        stage, out = made_by.get(f"models/{model}", (None, None))
        run_id = produced_by.get(stage)
        logged = None
        if run_id:
            found = client.search_logged_models([experiment_id], f"source_run_id = '{run_id}'")
            logged = next((m for m in found if m.name == model), None)
        if logged is None:
            log.warning("model %s is not registered: the run that trained it is not in the MLflow store", model)
            continue
        deps = lock[stage].get("deps", [])
        data = {d["path"]: d.get("md5") for d in deps if d["path"].startswith(("data/", "models/"))}
        tags = {k: str(v)[:500] for k, v in logged.params.items()} | {
            "model": model,
            "method": method,
            "dvc_stage": stage,
            "dvc_exp": logged.tags.get("dvc_exp", ""),
            "weights_md5": out.get("md5", ""),
            "data": json.dumps(data)[:5000],
            "path": logged.tags.get("path", f"models/{model}"),
            "git_commit": logged.tags.get("git_commit", ""),
            "pipeline_run": parent,
        }
        version = client.create_model_version(
            name, source=f"models:/{logged.model_id}", run_id=run_id, tags=tags, model_id=logged.model_id
        )
        versions[model] = version.version
    return versions


def _aliases(client, name: str, versions: dict[str, str], headline: dict[str, float], last: str) -> dict[str, str]:
    """{alias: model}; ties go to the model listed first (srlm.config's evaluation.models order)."""
    chosen = {"last-iteration": last} if last in versions else {}
    for alias, metric in (("best-judge", "pairwise_accuracy"), ("best-follow", "prompt_strict")):
        scored = [(headline[f"{m}.{metric}"], -i, m) for i, m in enumerate(versions) if f"{m}.{metric}" in headline]
        if scored:
            value, _, model = max(scored)
            chosen[alias] = model
            client.set_registered_model_tag(
                name, f"alias.{alias}", f"{model}: {ALIASES[alias]} {value:.3f} (the highest point estimate)"
            )
    for alias, model in chosen.items():
        client.set_registered_model_alias(name, alias, versions[model])
    return chosen
