"""`dvc repro` of the whole DAG on the tiny model, then the caching behaviour users rely on."""
import json
import re

import pytest

from e2e_project import dvc, make_project, run

pytestmark = pytest.mark.e2e

ALL_STAGES = ["prepare_model", "prepare_seed", "sft_baseline", "build_eft", "sft"] + \
    [f"{s}@{t}" for t in (1, 2) for s in ("gen_prompts", "sample", "judge", "pairs", "dpo")]


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    d = make_project(tmp_path_factory.mktemp("proj"), tiny_model_dir)
    first = dvc(["repro"], d)
    return d, first.stdout


def test_repro_runs_every_stage_and_produces_m3(project):
    d, out = project
    assert ran(out) == set(ALL_STAGES)
    assert (d / "models/m3/model.safetensors").is_file() and (d / "models/m3/chat_template.jinja").exists() \
        or (d / "models/m3/tokenizer_config.json").is_file()
    for t in (1, 2):
        pairs = [json.loads(line) for line in (d / f"data/it{t}/pairs.jsonl").read_text().splitlines()]
        assert pairs and all(p["chosen_score"] > p["rejected_score"] for p in pairs)
        judge = json.loads((d / f"data/it{t}/metrics/judge.json").read_text())
        assert 0 < judge["parse_rate"] <= 1
        prompts = (d / f"data/it{t}/prompts.jsonl").read_text().splitlines()
        assert len(prompts) == 3
    shown = dvc(["metrics", "show", "--json"], d).stdout
    assert "parse_rate" in shown and "train_loss" in shown
    assert (d / "mlflow.db").is_file()


def test_second_repro_is_a_no_op(project):
    d, _ = project
    again = dvc(["repro"], d)
    assert ran(again.stdout) == set()
    assert "up to date" in dvc(["status"], d).stdout


def test_changing_judge_samples_reruns_only_judge_and_downstream(project):
    d, _ = project
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], d)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "run"], d)
    exp = dvc(["exp", "run", "-S", "judge.samples=2"], d)
    assert ran(exp.stdout) == {"judge@1", "pairs@1", "dpo@1", "sample@2", "judge@2", "pairs@2", "dpo@2"}
    show = dvc(["exp", "show", "--csv"], d).stdout
    assert "judge.samples" in show
