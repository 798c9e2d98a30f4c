"""What the benchmarks share."""

import tempfile
from pathlib import Path

from srlm.modeling import prepare_base_model


def model_or_default(path: str) -> Path:
    """`path` if it holds a checkpoint (models/m0 after `dvc repro prepare_model`), else the
    embedded default prepared into a temporary directory."""
    model_dir = Path(path)
    if not (model_dir / "config.json").is_file():
        model_dir = Path(tempfile.mkdtemp()) / "m0"
        print(f"{path} not found: preparing the embedded default in {model_dir}")
        prepare_base_model("smollm2-135m-instruct", model_dir)
    return model_dir
