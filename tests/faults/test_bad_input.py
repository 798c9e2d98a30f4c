"""Bad input reaching real stage processes: each stops before any work with exit status 2 and a message
that names the key, file or record and the fix, and leaves no output behind (so DVC stops the pipeline
there instead of training on nothing)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from e2e_project import env, make_project


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    d = make_project(tmp_path_factory.mktemp("bad_input"), tiny_model_dir)
    shutil.copytree(tiny_model_dir, d / "models/m1")
    (d / "data/it1").mkdir(parents=True)
    return d


def stage(d: Path, script: str, *args: str, params: dict | None = None) -> subprocess.CompletedProcess:
    """Run stages/<script>.py in `d`, with `params` merged into a copy of its params.yaml."""
    p = yaml.safe_load((d / "params.yaml").read_text())
    for section, values in (params or {}).items():
        p[section] = p.get(section, {}) | values if isinstance(values, dict) else values
    (d / "test-params.yaml").write_text(yaml.safe_dump(p))
    return subprocess.run(
        [sys.executable, f"stages/{script}.py", *args, "--params", "test-params.yaml"],
        cwd=d,
        capture_output=True,
        text=True,
        env=env(PYTHONPATH=str(d), SRLM_TRACKING="off"),
    )


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_mistyped_param_stops_the_stage_before_it_reads_anything(project):
    p = stage(project, "judge", "--iteration", "1", params={"judge": {"sampels": 3}})
    assert p.returncode == 2
    assert "error: params.yaml: unknown key 'judge.sampels'; did you mean 'samples'?" in p.stderr
    assert not (project / "data/it1/judgments.jsonl").exists() and "Traceback" not in p.stderr


def test_a_malformed_user_file_names_the_line_and_nothing_is_written(project):
    rows = [
        {"id": "a", "instruction": "Name a river.", "response": "The Nile."},
        {"id": "b", "instruction": "Name a sea.", "response": "The Baltic."},
        {"id": "c", "response": "Everest."},
    ]
    write_jsonl(project / "my_ift.jsonl", rows)
    p = stage(
        project,
        "prepare_seed",
        params={
            "seed_data": {"source": "jsonl", "ift_path": "my_ift.jsonl", "ranked_path": "data/builtin/ranked.jsonl"}
        },
    )
    assert p.returncode == 2
    assert "my_ift.jsonl:3: missing field 'instruction'" in p.stderr
    assert not (project / "data/seed").exists()


def test_an_iteration_without_usable_pairs_stops_with_the_parse_rate(project):
    judged = [
        {
            "prompt_id": f"p{i}",
            "candidate_id": f"p{i}-c{j}",
            "prompt": f"Prompt {i}",
            "response": f"r{j}",
            "score": None,
            "sampled_score": None,
            "expected_score": None,
        }
        for i in range(3)
        for j in range(4)
    ]
    write_jsonl(project / "data/it1/judgments.jsonl", judged)
    p = stage(project, "pairs", "--iteration", "1")
    assert p.returncode == 2
    assert "pairs@1: no usable training data from 12 judged candidates" in p.stderr
    assert "0% of candidates got a valid score" in p.stderr and "'Score: N'" in p.stderr
    assert not (project / "data/it1/pairs.jsonl").exists()


@pytest.mark.parametrize(
    "max_length,needle",
    [
        (16, "every one of the 2 training examples has a prompt of at least dpo.max_length = 16 tokens"),
        (8192, "params.yaml: dpo.max_length = 8192 is longer than the model's context of 4096 tokens"),
    ],
    ids=["prompts-too-long", "beyond-context"],
)
def test_training_data_that_does_not_fit_max_length_stops_dpo_before_training(project, max_length, needle):
    pairs = [
        {
            "id": f"p{i}",
            "kind": "preference",
            "prompt": "Explain how rivers carve valleys over time. " * 3,
            "chosen": "Water erodes rock.",
            "rejected": "No.",
        }
        for i in range(2)
    ]
    write_jsonl(project / "data/it1/pairs.jsonl", pairs)
    p = stage(project, "dpo", "--iteration", "1", params={"dpo": {"max_length": max_length}})
    assert p.returncode == 2, p.stderr[-2000:]
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert not (project / "models/m2").exists() and not list((project / "models").glob(".m2.tmp-*"))


def test_a_missing_model_stops_the_stage_with_the_stage_that_makes_it(project):
    (project / "data/it2").mkdir(exist_ok=True)
    write_jsonl(project / "data/it2/prompts.jsonl", [{"id": "it2-p0000", "prompt": "Name a river."}])
    p = stage(project, "sample", "--iteration", "2")  # M2: dpo@1 has not made it
    assert p.returncode == 2, p.stderr[-2000:]
    assert "error: models/m2: not a model checkpoint (no config.json); run the stage that makes it" in p.stderr
    assert "Traceback" not in p.stderr and not (project / "data/it2/candidates.jsonl").exists()


def test_a_missing_base_model_stops_prepare_model(project):
    p = stage(project, "prepare_model", params={"model": {"base": str(project / "no/such/model")}})
    assert p.returncode == 2, p.stderr[-2000:]
    assert f"error: model.base='{project / 'no/such/model'}': no such directory" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and not (project / "models/m0").exists()
