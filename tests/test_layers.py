"""The library's layers: the pure logic (params, files, prompts, scores, metrics, pairs, seed data) imports
no torch and no model code, so it can be read, tested and reused without either."""
import subprocess
import sys

PURE = ["srlm.config", "srlm.io", "srlm.prompts", "srlm.scores", "srlm.metrics", "srlm.pairing", "srlm.seed"]
ENGINE = ["srlm.modeling", "srlm.generation", "srlm.training"]


def test_the_pure_layer_imports_without_torch_or_model_code():
    code = (f"import sys\nimport {', '.join(PURE)}\n"
            f"heavy = ('torch', 'transformers', 'trl', 'peft', 'vllm')\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in {ENGINE!r})\n"
            f"print(bad)\nassert not bad, bad")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
