#!/usr/bin/env bash
# GPU readiness in one short run (about 5 minutes on one GPU). Prints what ran, its exit status and seconds:
#
#   1. bench/gpu_steps.py: SFT, DPO and CREAM in bf16 on the GPU; the transformers backend on the GPU against
#      the CPU; speed of a SmolLM2-135M-shaped model (training steps, sampling).
#   2. The pipeline to pairs@1 in a copy of the project on the tiny test model, with generation.backend
#      $BACKEND (default auto: vLLM where it imports, else transformers on the GPU).
#   3. The unit tests of devices, precision and the backends (the vLLM ones run where vllm is installed).
#   4. The rest of that `dvc repro`, up to the report, within $REST_S seconds (default 240).
#
#     bash bench/gpu_check.sh 2>&1 | tee gpu_check.log
#
# PY: the python (default .venv/bin/python, else python3); it needs the project's dependencies and pytest.
# STEPS_ARGS: arguments for bench/gpu_steps.py (a dry run on a CPU: STEPS_ARGS="--cpu --parts 1 2").
# The tiny model, not the embedded 98 MB one: a GPU machine may receive the project over a small link.
# docs/scaling-up.md has the output of each run on a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
BACKEND=${BACKEND:-auto}
export PATH="$(dirname "$PY"):$PATH" SRLM_TRACKING=off PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
status=0

step() {  # step <name> <command...>: run it, print rc and seconds
  local name=$1 start rc
  shift
  echo "== $name"
  start=$(date +%s%N)
  "$@"
  rc=$?
  local ms=$((($(date +%s%N) - start) / 1000000))
  printf '== %s: rc=%d, %d.%d s\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000 / 100))
  [ "$rc" -eq 0 ] || status=1
}

date -u +"%Y-%m-%d %H:%M UTC"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "
import importlib.util, torch, transformers, trl, peft
vllm = importlib.util.find_spec('vllm') and __import__('vllm').__version__
print('python', __import__('sys').version.split()[0], '| torch', torch.__version__, 'CUDA', torch.version.cuda,
      '| transformers', transformers.__version__, '| trl', trl.__version__, '| peft', peft.__version__,
      '| vllm', vllm or 'not installed')"

step "1. bench/gpu_steps.py" "$PY" bench/gpu_steps.py ${STEPS_ARGS:-}

# The test suite's project (tests/e2e_project.py): a copy on the tiny model, at small sizes.
work=$(mktemp -d)/project
pipeline() (  # a subshell: its cd stays in it
  "$PY" - "$work" "$BACKEND" <<'EOF' || return 1
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from e2e_project import make_project
from tiny import build_tiny_model

dest, backend = Path(sys.argv[1]), sys.argv[2]
model = build_tiny_model(dest.parent / "tiny")
make_project(dest, model, {"generation": {"backend": backend}})
print(f"project in {dest}, model {model}, generation.backend {backend}")
EOF
  cd "$work" && "$PY" -m dvc repro pairs@1 && cat data/it1/metrics/sample.json data/it1/metrics/judge.json
)
step "2. dvc repro pairs@1 (tiny model, generation.backend=$BACKEND)" pipeline

step "3. unit tests" "$PY" -m pytest -q -p no:cacheprovider tests/test_vllm_backend.py tests/test_precision.py \
  tests/test_cream_loss.py tests/test_generation.py tests/test_judging_backend.py tests/test_adapters.py
step "4. the rest of dvc repro (within ${REST_S:-240} s)" bash -c \
  "cd '$work' && timeout ${REST_S:-240} '$PY' -m dvc repro && ls reports"
echo "gpu_check: $([ $status -eq 0 ] && echo all passed || echo some failed)"
exit $status
