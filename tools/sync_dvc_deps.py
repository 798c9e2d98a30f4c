"""Rewrite the code deps of every stage in dvc.yaml from the imports of its script: the script, every
`srlm` module it runs (tests/test_dvc_graph.py's closure) and srlm/templates where srlm/prompts.py is
among them. Data and model deps, comments and everything else are kept. Run after changing imports:

    .venv/bin/python tools/sync_dvc_deps.py
"""

import sys
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_dvc_graph import closure, script_of  # noqa: E402  (one definition of "the code a stage runs")


def code_deps(script: str) -> list[str]:
    need = sorted(closure(script))
    return [script, *need, *(["srlm/templates"] if "srlm/prompts.py" in need else [])]


def main() -> None:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    path = ROOT / "dvc.yaml"
    doc = yaml.load(path)
    for stage in doc["stages"].values():
        body = stage.get("do", stage)
        deps = body["deps"]
        keep = [(i, d) for i, d in enumerate(deps) if not str(d).startswith(("srlm/", "stages/"))]
        new = code_deps(script_of(body))
        # data deps after the code, in their order, with their comments
        comments = {d: deps.ca.items.get(i) for i, d in keep}
        deps.clear()
        deps.extend(new + [d for _, d in keep])
        for j, d in enumerate(deps):
            if comments.get(d):
                deps.ca.items[j] = comments[d]
    yaml.dump(doc, path)


if __name__ == "__main__":
    main()
