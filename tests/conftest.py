import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # the tests, like the project, send MLflow nothing


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    from srlm.modeling import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="session")
def repro_project(tmp_path_factory, tiny_model_dir):
    """A copy of the project on the tiny model after one `dvc repro` from clean: (dir, stdout, dvc.lock
    as the first run wrote it; later tests run experiments in the same directory). Every stage's files
    are recorded in <dir>/../files.jsonl (srlm.stage._audit_files)."""
    from e2e_project import dvc, make_project

    d = make_project(tmp_path_factory.mktemp("proj"), tiny_model_dir)
    first = dvc(["repro"], d, SRLM_AUDIT_FILES=str(d.parent / "files.jsonl"))
    return d, first.stdout, (d / "dvc.lock").read_text()
