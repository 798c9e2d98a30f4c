"""dvc.yaml is the cache key of every result: a stage must depend on all the code it runs and track
exactly the params it reads, or a cached output can come from old code (or rerun for nothing).

- deps: every `srlm` module a stage script imports, directly or through other modules (imports inside
  functions included), and the templates that srlm/prompts.py reads;
- params: exactly the stage script's `PARAMS`, the keys it passes to `stage.tracked` (its MLflow params
  and its checkpoint key)."""

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def srlm_imports(path: Path) -> set[str]:
    """The srlm modules (as file paths) one file imports anywhere in it."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # from .x import y, inside srlm
                base = "srlm" + (f".{node.module}" if node.module else "")
            else:
                base = node.module or ""
            if base == "srlm":
                names = [f"srlm.{a.name}" for a in node.names]
            elif base.startswith("srlm."):
                names = [base]
            else:
                continue
            out |= {n for n in names if (ROOT / (n.replace(".", "/") + ".py")).is_file()}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("srlm.")}
    return {f"{m.replace('.', '/')}.py" for m in out}


def closure(script: str) -> set[str]:
    todo, seen = [script], set()
    while todo:
        f = todo.pop()
        for dep in srlm_imports(ROOT / f) - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def script_of(stage: dict) -> str:
    return re.match(r"python (stages/\w+\.py)", stage["cmd"]).group(1)


def body(stage: dict) -> dict:
    return stage.get("do", stage)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_depends_on_all_the_code_it_runs(name):
    stage = body(STAGES[name])
    script = script_of(stage)
    deps = {d.split("#")[0].strip() for d in stage["deps"]}
    need = {script} | closure(script)
    if "srlm/prompts.py" in need:
        need.add("srlm/templates")
    missing = sorted(need - deps)
    assert not missing, (
        f"dvc.yaml: stage {name} runs {missing} but does not list them in deps "
        f"(`python tools/sync_dvc_deps.py` rewrites the code deps from the imports)"
    )


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_tracks_exactly_the_params_it_reads(name):
    stage = body(STAGES[name])
    tree = ast.parse((ROOT / script_of(stage)).read_text())
    declared = next(
        ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "PARAMS"
    )
    assert stage.get("params", []) == declared, f"dvc.yaml: {name}'s params differ from its script's PARAMS"


def test_the_import_closure_sees_imports_inside_functions():
    assert "srlm/generation.py" in closure("stages/judge.py")  # imported inside srlm.stage.generator()
    assert {"srlm/config.py", "srlm/io.py", "srlm/modeling.py"} <= closure("stages/report.py")  # via srlm.stage


def test_the_sft_baseline_does_not_rerun_for_a_key_only_m1_reads():
    params = body(STAGES["sft_baseline"])["params"]
    assert "sft" not in params and "sft.max_eft_examples" not in params and "sft.max_ift_examples" in params
