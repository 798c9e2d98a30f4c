"""What every stage script shares: params, threads, logging, and errors that read as messages."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .config import ConfigError, load_params
from .io import DataError
from .modeling import ModelError, set_threads

EXPECTED = (ConfigError, DataError, ModelError, FileNotFoundError)


def main(run, needs_iteration: bool = False) -> None:
    """Parse `--iteration`, load params.yaml, call `run(params[, iteration])`; exit 2 with the
    message on an expected error (bad params, bad data, missing model)."""
    parser = argparse.ArgumentParser(description=(run.__doc__ or "").strip().splitlines()[0] if run.__doc__ else None)
    if needs_iteration:
        parser.add_argument("--iteration", required=True, help="iteration key in params.yaml (1, 2, ...)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("SRLM_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    set_threads()
    try:
        params = load_params(args.params)
        if needs_iteration:
            key = str(args.iteration)
            if key not in {str(k) for k in params.iterations}:
                raise ConfigError(f"params.yaml: iteration {key!r} is not in iterations "
                                  f"({', '.join(map(str, params.iterations)) or 'none'})")
            it = {str(k): v for k, v in params.iterations.items()}[key]
            run(params, key, it)
        else:
            run(params)
    except EXPECTED as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def iteration_dir(key: str) -> Path:
    return Path("data") / f"it{key}"


def model_path(name: str) -> Path:
    return Path("models") / name


