"""The library's layers. The base imports no torch and no model code, so it can be read, tested and reused
without either: the pure logic (params, files and the artifacts stages exchange, the generator interface,
prompts, scores, metrics, pairs, seed data, the instruction checkers) and the services the training loop
uses too (progress folders on disk, MLflow tracking, Slurm steps). The engine (models, generation backends,
training, CREAM, launching) builds on it; the pipeline glue (stage runner, resumable generation, judging,
evaluation, report) on both. Imports run one way: down."""

import ast
import subprocess
import sys
from pathlib import Path

BASE = [
    "srlm.config",
    "srlm.io",
    "srlm.artifacts",
    "srlm.sampling",
    "srlm.prompts",
    "srlm.scores",
    "srlm.metrics",
    "srlm.pairing",
    "srlm.seed",
    "srlm.verifiable",
    "srlm.progress",
    "srlm.tracking",
    "srlm.registry",
    "srlm.judge_pairs",
    "srlm.slurm",
]
ENGINE = ["srlm.modeling", "srlm.generation", "srlm.training", "srlm.cream", "srlm.launch"]
GLUE = ["srlm.judging", "srlm.evaluation", "srlm.resume", "srlm.stage", "srlm.report"]
SRLM = Path(__file__).resolve().parent.parent / "srlm"


def test_the_base_layer_imports_without_torch_or_model_code():
    code = (
        f"import sys\nimport {', '.join(BASE)}\n"
        f"heavy = ('torch', 'transformers', 'trl', 'peft', 'vllm')\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in {ENGINE!r})\n"
        f"print(bad)\nassert not bad, bad"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_every_module_has_a_layer():
    modules = {f"srlm.{p.stem}" for p in SRLM.glob("*.py") if p.stem != "__init__"}
    assert modules == set(BASE) | set(ENGINE) | set(GLUE)


def test_imports_run_down_the_layers():
    rank = {m: i for i, layer in enumerate((BASE, ENGINE, GLUE)) for m in layer}
    up = []
    for m, r in rank.items():
        tree = ast.parse((SRLM / f"{m.split('.')[1]}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [f"srlm.{node.module}"] if node.module else [f"srlm.{a.name}" for a in node.names]
                up += [(m, t) for t in targets if rank.get(t, -1) > r]
    assert not up, f"imports up the layers: {up}"
