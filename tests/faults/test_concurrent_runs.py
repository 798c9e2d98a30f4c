"""Two runs at once on one checkout. A second `dvc repro` while one runs stops at the stage that is busy
(DVC's lock on its outputs), touches nothing, and the first finishes; experiments queued and run two at a
time (`dvc queue start -j 2`) each finish, and every MLflow run lands in the workspace's store, not in the
experiment's temporary copy that DVC deletes."""

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e_project import dvc, make_project, run, start_and_kill

DVC = str(Path(sys.executable).parent / "dvc")
PROGRESS = Path(".srlm/progress/sample_1")


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    d = make_project(
        tmp_path_factory.mktemp("concurrent"),
        tiny_model_dir,
        {"generation": {"shard_size": 2, "batch_size": 8}, "sample": {"max_new_tokens": 24}},
    )
    shutil.copytree(tiny_model_dir, d / "models/m1")
    shutil.copytree(tiny_model_dir, d / "models/m0")  # a dep of sample@1: the base a LoRA adapter applies to
    (d / "data/it1").mkdir(parents=True)
    (d / "data/it1/prompts.jsonl").write_text(
        "".join(json.dumps({"id": f"it1-p{i:04d}", "prompt": f"Write about item {i}"}) + "\n" for i in range(12))
    )
    return d


def test_a_second_dvc_repro_while_one_runs_stops_at_the_busy_stage(project):
    d, seen = project, {}
    extra = {"SRLM_TRACKING": "off", "PYTHONPATH": str(d)}

    def second_runs():
        for target in ("sample@1", "judge@1"):  # the same stage, and one that reads its output
            seen[target] = dvc(["repro", "--single-item", target], d, check=False, **extra)
        assert len(list((d / PROGRESS).glob("*/generate-*.json"))) == 2  # the first's progress, untouched
        assert not (d / "data/it1/candidates.jsonl").exists()

    first = start_and_kill([DVC, "repro", "--single-item", "sample@1"], d, None, 2, second_runs, **extra)
    for target, p in seen.items():
        assert p.returncode == 255 and "is busy, it is being blocked by" in p.stderr, (target, p.stderr[-2000:])
        assert "Running stage" not in p.stdout, target
    assert first.returncode == 0, first.stderr[-3000:]
    assert len((d / "data/it1/candidates.jsonl").read_text().splitlines()) == 12 * 4
    assert not (d / PROGRESS).exists()
    assert "sample@1" not in dvc(["status", "sample@1"], d).stdout  # recorded in dvc.lock: up to date


STAGE = """import os, time, yaml
from srlm.progress import clear, work_dir
from srlm.tracking import log_metrics, stage_run
x = yaml.safe_load(open("params.yaml"))["x"]
with stage_run("s", {"x": x}):
    progress = work_dir("s", {"x": x})  # this experiment's own: under its copy of the project
    (progress / "shard").write_text(str(x))
    log_metrics({"x": x})
    time.sleep(2)  # both experiments at once
    open("out.txt", "w").write(str(x))
    clear(progress)
"""


def test_queued_experiments_run_two_at_once_and_keep_their_mlflow_runs(tmp_path):
    d = tmp_path / "q"
    d.mkdir()
    (d / "params.yaml").write_text("x: 1\n")
    (d / "stage.py").write_text(STAGE)
    (d / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: python stage.py\n    deps: [stage.py]\n    params: [x]\n    outs: [out.txt]\n"
    )
    (d / ".gitignore").write_text("mlflow.db\n.srlm/\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run(["git", "init", "-q"], d)
    dvc(["init", "-q"], d)
    tracked = {"SRLM_TRACKING": "on", "MLFLOW_TRACKING_URI": ""}  # the default store: the project's mlflow.db
    dvc(["repro"], d, **tracked)
    run(git + ["add", "-A"], d)
    run(git + ["commit", "-qm", "run"], d)
    for x in (2, 3):
        dvc(["exp", "run", "--queue", "-S", f"x={x}", "-n", f"x{x}"], d)
    try:
        dvc(["queue", "start", "-j", "2"], d, **tracked)  # the workers' stages inherit this environment
        deadline = time.monotonic() + 300
        while True:
            status = dvc(["queue", "status"], d).stdout
            if "Queued" not in status and "Running" not in status:
                break
            assert time.monotonic() < deadline, status
            time.sleep(2)
    finally:
        dvc(["queue", "stop", "--kill"], d, check=False)
    assert status.count("Success") == 2, status
    with sqlite3.connect(d / "mlflow.db") as db:
        runs = db.execute(
            "SELECT r.run_uuid, r.status, t.value,"
            " (SELECT value FROM tags p WHERE p.run_uuid = r.run_uuid AND p.key = 'mlflow.parentRunId')"
            " FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'dvc_exp'"
        ).fetchall()
    # per pipeline run (the repro and each experiment): a parent, and the stage's run nested under it
    parents = {exp: uuid for uuid, _, exp, parent in runs if parent is None}
    stages = sorted((status, exp, parent) for _, status, exp, parent in runs if parent is not None)
    assert stages == [("FINISHED", exp, parents[exp]) for exp in ("", "x2", "x3")], runs
    assert sorted(status for _, status, _, parent in runs if parent is None) == ["FINISHED"] * 3
    shown = dvc(["exp", "show", "--json"], d).stdout
    assert '"x2"' in shown and '"x3"' in shown
    assert not list((d / ".dvc/tmp/exps").glob("tmp*")), "an experiment's copy was left behind"
    assert subprocess.run(["git", "status", "--porcelain"], cwd=d, capture_output=True, text=True).stdout == ""
