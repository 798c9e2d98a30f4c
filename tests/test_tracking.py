"""MLflow tracking against a real store (the default SQLite one) in a toy DVC project whose stages use
srlm.tracking as the pipeline's do: one parent run per `dvc repro` / `dvc exp run` with every stage run
nested under it, cached stages shown and linked to the run that made them, and every model registered
with its lineage and aliases. No torch: these stages train nothing."""

import html
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from e2e_project import dvc, run

ROOT = Path(__file__).resolve().parent.parent

TRAIN = """import sys, yaml
from pathlib import Path
from srlm.tracking import record_model, stage_run, write_metrics
name = sys.argv[1]
lr = yaml.safe_load(open("params.yaml"))["lr"]
with stage_run("train", {"lr": lr}, instance=name):
    Path(f"models/{name}").mkdir(parents=True, exist_ok=True)
    Path(f"models/{name}/model.safetensors").write_text(f"{name} {lr}")
    write_metrics(f"metrics/train_{name}.json", {"loss": lr * 10})
    record_model(name, f"models/{name}", {"parent": "m0" if name == "m1" else "m1"})
"""
EVAL = """import json, sys, yaml
from pathlib import Path
from srlm.tracking import stage_run, write_metrics
name, k = sys.argv[1], yaml.safe_load(open("params.yaml"))["k"]
with stage_run("eval_judge", {"k": k}, instance=name):
    Path(f"data/eval/{name}").mkdir(parents=True, exist_ok=True)
    acc = {"m1": 0.6, "m2": 0.6 if k == 1 else 0.7}[name]
    write_metrics(f"data/eval/{name}/judge_metrics.json", {"expected_pairwise_accuracy": acc})
    write_metrics(f"data/eval/{name}/follow_metrics.json", {"prompt_strict": {"m1": 0.4, "m2": 0.3}[name]})
"""
REPORT = """from pathlib import Path
from types import SimpleNamespace
from srlm.registry import finish_pipeline, headline_metrics
from srlm.tracking import stage_run
import yaml
params = yaml.safe_load(open("params.yaml"))
paths = SimpleNamespace(
    eval_metrics=lambda m, s: f"data/eval/{m}/{s}_metrics.json", matchup_metrics=lambda n: f"none/{n}.json"
)
with stage_run("report", params) as tracked:
    Path("report.md").write_text("# report")
    headline = headline_metrics(["m1", "m2"], [], "expected", paths)
    print("SUMMARY", finish_pipeline(params, headline, Path("report.md"), ["m1", "m2"], last="m2", method="srlm"))
"""
DVC_YAML = """stages:
  train_m1:
    cmd: python train.py m1
    deps: [train.py]
    params: [lr]
    outs: [models/m1]
    metrics: [{metrics/train_m1.json: {cache: false}}]
  train_m2:
    cmd: python train.py m2
    deps: [train.py, models/m1]
    params: [lr]
    outs: [models/m2]
    metrics: [{metrics/train_m2.json: {cache: false}}]
  eval:
    foreach: [m1, m2]
    do:
      cmd: python eval.py ${item}
      deps:
        - eval.py
        - models/${item}
      params: [k]
      outs:
        - data/eval/${item}
  report:
    cmd: python report.py
    deps: [report.py, data/eval, metrics]
    params: [lr, k]
    outs: [report.md]
"""
STAGES = {"train_m1", "train_m2", "eval@m1", "eval@m2", "report"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    d = tmp_path_factory.mktemp("tracking")
    for name, text in (("train.py", TRAIN), ("eval.py", EVAL), ("report.py", REPORT), ("dvc.yaml", DVC_YAML)):
        (d / name).write_text(text)
    (d / "params.yaml").write_text("lr: 0.1\nk: 1\n")
    (d / ".gitignore").write_text("mlflow.db\nmlruns/\nmlartifacts/\n")
    run(["git", "init", "-q"], d)
    dvc(["init", "-q"], d)
    # the default store (the project's mlflow.db), tracking on; srlm from this checkout
    tracked = {"SRLM_TRACKING": "on", "MLFLOW_TRACKING_URI": "", "PYTHONPATH": str(ROOT)}
    first = dvc(["repro"], d, **tracked)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run(git + ["add", "-A"], d)
    run(git + ["commit", "-qm", "run"], d)
    # an experiment that changes only what eval reads: both train stages come from DVC's cache
    second = dvc(["exp", "run", "-n", "k2", "-S", "k=2"], d, **tracked)
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    return SimpleNamespace(d=d, first=first.stdout, second=second.stdout, client=client)


def runs(client, **tags):
    exp = client.get_experiment_by_name("self-rewarding")
    where = " AND ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return client.search_runs([exp.experiment_id], where or "", max_results=1000)


def test_each_pipeline_run_is_one_parent_with_every_stage_nested(project):
    c = project.client
    parents = sorted(runs(c, **{"srlm.kind": "pipeline"}), key=lambda r: r.info.start_time)
    assert [p.info.run_name for p in parents][1] == "k2" and parents[0].info.run_name.startswith("repro-")
    assert all(p.info.status == "FINISHED" for p in parents)
    first, second = (runs(c, **{"mlflow.parentRunId": p.info.run_id}) for p in parents)
    assert {r.data.tags["dvc_stage"] for r in first} == STAGES
    assert not any(r.data.tags.get("srlm.cached") for r in first)
    # every stage run belongs to one pipeline run: none is left at the top level
    stage_runs = [r for r in runs(c) if r.data.tags.get("srlm.kind") != "pipeline"]
    assert all("mlflow.parentRunId" in r.data.tags for r in stage_runs)
    # the parent holds the params, the headline metrics and the report
    p0 = parents[0]
    assert p0.data.params["lr"] == "0.1" and p0.data.metrics["m2.pairwise_accuracy"] == pytest.approx(0.6)
    assert [a.path for a in c.list_artifacts(p0.info.run_id)] == ["report.md"]


def test_a_stage_dvc_reuses_shows_up_cached_and_linked_to_its_producer(project):
    c = project.client
    parent = next(r for r in runs(c, **{"srlm.kind": "pipeline"}) if r.info.run_name == "k2")
    children = {r.data.tags["dvc_stage"]: r for r in runs(c, **{"mlflow.parentRunId": parent.info.run_id})}
    assert set(children) == STAGES
    cached = {s for s, r in children.items() if r.data.tags.get("srlm.cached") == "true"}
    assert cached == {"train_m1", "train_m2"}, project.second
    produced = runs(c, dvc_stage="train_m2", dvc_exp="")  # the first repro's run
    assert children["train_m2"].data.tags["srlm.produced_by"] == produced[0].info.run_id
    assert children["train_m2"].data.metrics["loss"] == pytest.approx(1.0)  # its metrics, copied
    assert children["train_m2"].info.run_name == "train_m2 (cached)"


def test_models_are_registered_with_lineage_and_aliases(project):
    c = project.client
    first = next(r for r in runs(c, **{"srlm.kind": "pipeline"}) if r.info.run_name != "k2")
    name = first.data.tags["srlm.registered_model"]
    assert name == f"srlm-{first.info.run_name}"
    m1, m2 = (c.get_model_version_by_alias(name, a) for a in ("best-follow", "last-iteration"))
    assert (m1.tags["model"], m2.tags["model"]) == ("m1", "m2")
    assert m2.tags["parent"] == "m1" and m2.tags["dvc_stage"] == "train_m2" and m2.tags["method"] == "srlm"
    assert '"models/m1"' in m2.tags["data"] and m2.tags["weights_md5"].endswith(".dir")
    # k=1: m2 judges at 0.6, tied with m1, which comes first; k=2 makes m2 the best judge
    assert c.get_model_version_by_alias(name, "best-judge").tags["model"] == "m1"
    k2 = "srlm-k2"
    assert c.get_model_version_by_alias(k2, "best-judge").tags["model"] == "m2"
    # the cached models are registered too, from the runs that trained them
    assert {v.tags["model"] for v in c.search_model_versions(f"name = '{k2}'")} == {"m1", "m2"}
    assert "(the highest point estimate)" in c.get_registered_model(k2).tags["alias.best-judge"]
    assert c.get_model_version_by_alias(k2, "last-iteration").tags["dvc_exp"] == ""  # trained by the repro


CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.fixture(scope="module")
def mlflow_ui(project):
    """`mlflow ui` on the toy project's store, as `make mlflow-ui` serves it."""
    if CHROMIUM is None:
        pytest.skip("no headless Chromium (Debian: apt-get install chromium): the MLflow UI check needs a browser")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{project.d}/mlflow.db"]
    server = subprocess.Popen(
        cmd + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow ui did not start"
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(30)


def rendered(url: str, expect: str) -> str:
    """The text of the page as headless Chromium renders it (the UI is a JavaScript app); tried again if
    `expect` is not there yet."""
    for _ in range(3):
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
            + ["--virtual-time-budget=30000", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=180,
        ).stdout
        text = html.unescape(re.sub(r"<[^>]+>", " | ", re.sub(r"<(script|style).*?</\1>", "", dom, flags=re.S)))
        if expect in text:
            break
    return re.sub(r"(\s*\|\s*)+", " | ", text.replace("\xa0", " "))  # no-break spaces read as spaces


def test_the_mlflow_ui_lists_the_pipeline_runs_their_stages_and_models(project, mlflow_ui):
    c = project.client
    exp = c.get_experiment_by_name("self-rewarding").experiment_id
    runs_page = rendered(f"{mlflow_ui}/#/experiments/{exp}/runs", "matching runs")
    assert "Training runs" in runs_page and " | k2 | " in runs_page  # opened on the runs, the parents listed
    parent = next(r for r in runs(c, **{"srlm.kind": "pipeline"}) if r.info.run_name == "k2")
    run_page = rendered(f"{mlflow_ui}/#/experiments/{exp}/runs/{parent.info.run_id}", "Child runs")
    children = run_page.split("Child runs", 1)[1]
    for stage in ("train_m1 (cached)", "train_m2 (cached)", "eval_judge@m1", "eval_judge@m2", "report"):
        assert f" {stage} " in children, run_page
    model_page = rendered(f"{mlflow_ui}/#/models/srlm-k2", "last-iteration")
    assert "@ best-judge" in model_page and "@ last-iteration" in model_page and "Version 2" in model_page


TELEMETRY = """import sys
from srlm.tracking import mlflow_client
if sys.argv[1] == "project":
    mlflow_client()
from mlflow.telemetry.utils import is_telemetry_disabled
print(is_telemetry_disabled())
"""


def test_telemetry_is_off_in_what_the_project_starts():
    # a plain user's environment: not CI, not under pytest (MLflow turns telemetry off there by itself)
    drop = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "CI", "PYTEST_CURRENT_TEST", "PYTEST_VERSION")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    seen = {
        how: subprocess.run(
            [sys.executable, "-c", TELEMETRY, how], capture_output=True, text=True, env=env, check=True
        ).stdout.strip()
        for how in ("mlflow alone", "project")
    }
    assert seen == {"mlflow alone": "False", "project": "True"}
    assert "MLFLOW_DISABLE_TELEMETRY=true $(VENV)/bin/mlflow ui" in (ROOT / "Makefile").read_text()
