"""The tool's own safety: model output is data, never code; remote code only when asked for; the
documented MLflow server listens on localhost only."""

import ast
import re
from pathlib import Path

import pytest

from srlm.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "srlm").rglob("*.py")) + sorted((ROOT / "stages").glob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_code_is_ever_evaluated(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not calls & {"eval", "exec", "compile", "__import__"}
    # pickle and pickle-based loaders could run code hidden in a file: models are read as safetensors
    text = path.read_text()
    assert "pickle" not in text and "weights_only=False" not in text


def test_remote_code_is_off_unless_asked_for(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from srlm.modeling import load_model

    assert ModelConfig().trust_remote_code is False
    seen = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        original = cls.from_pretrained.__func__

        def spy(klass, *a, _original=original, **kw):
            seen.append(kw.get("trust_remote_code"))
            return _original(klass, *a, **kw)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    load_model(tiny_model_dir)
    assert seen and all(v is False for v in seen)


LOCAL = {"127.0.0.1", "localhost"}


def test_the_documented_mlflow_server_binds_to_localhost():
    recipe = re.search(r"^mlflow-ui:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert re.search(r"mlflow (?:ui|server) .*--host (\S+)", recipe).group(1) in LOCAL
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"mlflow (?:ui|server)[^\n`]*", readme)
    # The README must say how to start it: `make mlflow-ui` (the recipe above) or a command checked here.
    assert "make mlflow-ui" in readme or commands
    for cmd in commands:  # without --host, mlflow itself binds to 127.0.0.1
        host = re.search(r"--host[ =](\S+)", cmd)
        assert host is None or host.group(1) in LOCAL, cmd
